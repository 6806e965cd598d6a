"""A memory provider that honours put/copy/delete conditions exactly as storefs.providers.base says, and
refuses chosen keys on demand: the other writer and the strict server of the conflict and parked tests;
plus writing and reading a whole file through the core."""

from __future__ import annotations

import os
import tempfile

from storefs.core import Core
from storefs.errors import Conflict, NotFound
from storefs.providers.base import ObjectInfo, ObjectMeta
from storefs.providers.memory import MemoryProvider

ART = "t/image/b/a"


class ConditionalMemory(MemoryProvider):
    """MemoryProvider plus if_absent / if_match (checked under its lock), refusals and a failing check()."""

    def __init__(self, name: str = "mem") -> None:
        super().__init__(name)
        #: key -> the error every put_file or copy to it raises (a server refusing it)
        self.refuse: dict[str, Exception] = {}
        #: when set, check() raises it (credentials refused)
        self.check_fails: Exception | None = None

    def _etag_at(self, key: str) -> str | None:
        with self._lock:
            obj = self._objects.get(key)
        return None if obj is None else obj.etag

    def _condition(self, key: str, if_match: str | None, if_absent: bool) -> None:
        now = self._etag_at(key)
        if if_absent and now is not None:
            raise Conflict(f"{key}: an object is there (412)")
        if if_match is not None:
            if now is None:
                raise NotFound(key)
            if now != if_match:
                raise Conflict(f"{key}: etag {now}, not {if_match} (412)")

    def check(self) -> None:
        super().check()
        if self.check_fails is not None:
            raise self.check_fails

    def put_file(self, key: str, src_path: str, meta: ObjectMeta, *, if_match: str | None = None,
                 if_absent: bool = False) -> ObjectInfo:
        if key in self.refuse:
            raise self.refuse[key]
        self._condition(key, if_match, if_absent)
        return super().put_file(key, src_path, meta)

    def copy(self, src: str, dst: str, meta: ObjectMeta | None = None, *,
             if_match: str | None = None) -> ObjectInfo:
        if dst in self.refuse:
            raise self.refuse[dst]
        if if_match is not None:
            now = self._etag_at(src)
            if now is None:
                raise NotFound(src)
            if now != if_match:
                raise Conflict(f"{src}: etag {now}, not {if_match} (412)")
        return super().copy(src, dst, meta)

    def delete(self, key: str, *, if_match: str | None = None) -> None:
        if if_match is not None:
            now = self._etag_at(key)
            if now is not None and now != if_match:
                raise Conflict(f"{key}: etag {now}, not {if_match} (412)")
        super().delete(key)

    def write_theirs(self, key: str, data: bytes) -> None:
        """Another writer (another host's mount, an S3 client) puts data at key, unconditionally."""
        with tempfile.NamedTemporaryFile() as src:
            src.write(data)
            src.flush()
            super().put_file(key, src.name, ObjectMeta(mtime_ns=2_000_000_000, mode=0o100644, uid=0, gid=0))

    def bytes_at(self, key: str) -> bytes:
        return self.get_range(key, 0, 1 << 20)

    def keys_in(self, prefix: str) -> list[str]:
        return sorted(i.key for i in self.list(prefix) if not i.is_dir)


def write(core: Core, key: str, data: bytes) -> None:
    """Create (or truncate) key through the core, write data, close."""
    fh = core.create(key, 0o644, 0, 0, exclusive=False)
    core.truncate(key, 0, fh)
    core.write(fh, data, 0)
    core.release(fh)


def read(core: Core, key: str) -> bytes:
    """The bytes of key as the mount serves them."""
    fh = core.open(key, os.O_RDONLY)
    try:
        fd, n = core.read_source(fh, 1 << 20, 0)
        return os.pread(fd, n, 0)
    finally:
        core.release(fh)
