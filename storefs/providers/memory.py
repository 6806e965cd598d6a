"""Objects in a dict in this process: a provider for tests and the floor benchmark, never for a mount's data.

It behaves as an object store does (folders are marker keys 'prefix/' or implicit prefixes of
other keys, a symlink is an object whose bytes are its target, special files are zero-byte
objects with their type in mode) and keeps every metadata field exactly as it was given. It
answers in microseconds, so a benchmark on it measures storefs alone; `latency`, `fail_with` and
`gate` make it slow, failing or hanging on demand for the core's tests.
"""

from __future__ import annotations

import bisect
import copy
import hashlib
import stat
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from ..errors import Conflict, NotEmpty, NotFound, ProviderError
from .base import ObjectInfo, ObjectMeta, Provider

#: file types stored as zero bytes whatever the source file holds (their meaning is in mode and rdev)
_NODE_TYPES = frozenset({stat.S_IFIFO, stat.S_IFSOCK, stat.S_IFCHR, stat.S_IFBLK})
#: the character after '/': bisecting to prefix + this skips every key below prefix
_AFTER_SLASH = chr(ord("/") + 1)


@dataclass(frozen=True)
class _Object:
    """One stored object: its bytes, a private copy of its metadata, and its etag."""

    data: bytes
    meta: ObjectMeta
    etag: str


def _check_key(key: str, provider: str) -> None:
    """Refuse what the contract rules out ('/'-leading, empty components, NUL): a caller's bug, not a miss."""
    if not isinstance(key, str) or key.startswith("/") or "\0" in key or "//" in key:
        raise ProviderError(f"memory provider {provider}: refusing key {key!r}")


def _dir_key(prefix: str) -> str:
    """'a/b' and 'a/b/' both name folder 'a/b/'; '' stays the root."""
    return prefix if not prefix or prefix.endswith("/") else prefix + "/"


class MemoryProvider(Provider):
    """A thread-safe in-memory object store with the Provider contract, plus latency and failure on demand."""

    kind = "memory"
    listing_has_metadata = True
    lookup_by_listing = False
    atomic_conditions = True  # compared and applied under one lock

    def __init__(self, name: str = "memory", *, latency: float = 0.0, fail_with: Exception | None = None,
                 lookup_by_listing: bool = False) -> None:
        self.name = name
        #: True makes storefs look names up by listing their folder, as it does on object stores
        self.lookup_by_listing = lookup_by_listing
        #: seconds every request-like call (all but url/watch/close) sleeps first, outside the lock
        self.latency = latency
        #: when set, every request-like call raises it (after the latency), as a broken backend would
        self.fail_with: Exception | None = fail_with
        #: how many times each method was called (faults included), so tests can assert on round trips
        self.calls: Counter[str] = Counter()
        #: while cleared, every request-like call waits (outside the lock) until it is set: a server that hangs
        self.gate = threading.Event()
        self.gate.set()
        #: how many calls wait at the gate now
        self.waiting = 0
        #: protects _objects, _keys (always the sorted keys of _objects), calls and waiting
        self._lock = threading.Lock()
        self._objects: dict[str, _Object] = {}
        self._keys: list[str] = []

    # -- inner workings --------------------------------------------------------------------

    def _enter(self, method: str) -> None:
        """Count the call, then apply the injected hang, latency and failure, as a remote call would suffer them."""
        with self._lock:
            self.calls[method] += 1
        if not self.gate.is_set():
            with self._lock:
                self.waiting += 1
            try:
                self.gate.wait()
            finally:
                with self._lock:
                    self.waiting -= 1
        if self.latency > 0:
            time.sleep(self.latency)
        if self.fail_with is not None:
            raise self.fail_with

    def _file_key(self, key: str) -> str:
        """A key that can hold an object's bytes: not the root, not a folder."""
        _check_key(key, self.name)
        if not key or key.endswith("/"):
            raise ProviderError(f"memory provider {self.name}: {key!r} is not a file key")
        return key

    def _store(self, key: str, obj: _Object) -> None:
        """Insert or replace under the lock, keeping _keys sorted."""
        if key not in self._objects:
            bisect.insort(self._keys, key)
        self._objects[key] = obj

    def _drop(self, key: str) -> None:
        """Remove under the lock; a missing key is no error."""
        if self._objects.pop(key, None) is not None:
            del self._keys[bisect.bisect_left(self._keys, key)]

    def _below(self, prefix: str) -> tuple[int, int]:
        """Index range of _keys starting with folder prefix ('' or 'a/b/'), under the lock."""
        if not prefix:
            return 0, len(self._keys)
        lo = bisect.bisect_left(self._keys, prefix)
        return lo, bisect.bisect_left(self._keys, prefix[:-1] + _AFTER_SLASH, lo)

    @staticmethod
    def _info(key: str, obj: _Object) -> ObjectInfo:
        """The ObjectInfo of a file object: every field as stored, in fresh containers callers may change."""
        m = obj.meta
        return ObjectInfo(key=key, size=len(obj.data), mtime_ns=m.mtime_ns, mode=m.mode, uid=m.uid, gid=m.gid,
                          etag=obj.etag, content_type=m.content_type, xattrs=dict(m.xattrs), ctime_ns=m.ctime_ns,
                          atime_ns=m.atime_ns, rdev=m.rdev)

    @staticmethod
    def _dir_info(key: str, marker: _Object | None) -> ObjectInfo:
        """A folder entry: the marker's metadata (typed S_IFDIR, as S3 reads a marker), or bare for an implicit one."""
        if marker is None:
            return ObjectInfo(key=key, size=0, mtime_ns=0, is_dir=True)
        m = marker.meta
        return ObjectInfo(key=key, size=0, mtime_ns=m.mtime_ns, is_dir=True, mode=stat.S_IFDIR | stat.S_IMODE(m.mode),
                          uid=m.uid, gid=m.gid, etag=marker.etag, content_type=m.content_type,
                          xattrs=dict(m.xattrs), ctime_ns=m.ctime_ns, atime_ns=m.atime_ns)

    @staticmethod
    def _etag(data: bytes) -> str:
        """md5 of the bytes, as S3 gives a single-part object: same bytes, same etag."""
        return hashlib.md5(data, usedforsecurity=False).hexdigest()

    def _expect(self, key: str, if_match: str | None, if_absent: bool) -> None:
        """Under the lock: Conflict (or NotFound) unless the object at key is what the condition names."""
        obj = self._objects.get(key)
        if if_absent and obj is not None:
            raise Conflict(f"memory provider {self.name}: {key}: another writer stored it first")
        if if_match is not None:
            if obj is None:
                raise NotFound(key)
            if obj.etag != if_match:
                raise Conflict(f"memory provider {self.name}: {key}: changed by another writer")

    # -- Provider: reads -------------------------------------------------------------------

    def check(self, *, writable: bool = False) -> None:
        """Nothing to reach; fails only when a failure is injected."""
        self._enter("check")

    def head(self, key: str) -> ObjectInfo:
        """The object's metadata; a folder (marker or implicit) is no file: NotFound."""
        self._enter("head")
        _check_key(key, self.name)
        with self._lock:
            obj = None if not key or key.endswith("/") else self._objects.get(key)
        if obj is None:
            raise NotFound(key)
        return self._info(key, obj)

    def dir_exists(self, prefix: str) -> bool:
        """The root always; else a marker or any key below the prefix."""
        self._enter("dir_exists")
        _check_key(prefix, self.name)
        prefix = _dir_key(prefix)
        if not prefix:
            return True
        with self._lock:
            lo, hi = self._below(prefix)
            return lo < hi

    def head_dir(self, prefix: str) -> ObjectInfo | None:
        """The marker's metadata; None for the root, an implicit folder or a missing one."""
        self._enter("head_dir")
        _check_key(prefix, self.name)
        key = _dir_key(prefix)
        if not key:
            return None
        with self._lock:
            marker = self._objects.get(key)
        return None if marker is None else self._dir_info(key, marker)

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        """Immediate children with their metadata, taken as one snapshot under the lock and yielded outside it."""
        self._enter("list")
        _check_key(prefix, self.name)
        prefix = _dir_key(prefix)
        entries: list[ObjectInfo] = []
        with self._lock:
            i, hi = self._below(prefix)
            while i < hi:
                key = self._keys[i]
                rest = key[len(prefix):]
                cut = rest.find("/")
                if not rest:  # the marker of prefix itself
                    i += 1
                elif cut < 0:
                    entries.append(self._info(key, self._objects[key]))
                    i += 1
                else:  # a child folder: one entry, then jump past everything below it
                    child = prefix + rest[:cut + 1]
                    entries.append(self._dir_info(child, self._objects.get(child)))
                    i = bisect.bisect_left(self._keys, child[:-1] + _AFTER_SLASH, i, hi)
        yield from entries

    def walk(self, prefix: str) -> Iterator[ObjectInfo]:
        """Every file and every folder (markers and implicit ones) below prefix, from one flat snapshot."""
        self._enter("walk")
        _check_key(prefix, self.name)
        prefix = _dir_key(prefix)
        entries: list[ObjectInfo] = []
        seen: set[str] = set()
        with self._lock:
            lo, hi = self._below(prefix)
            for key in self._keys[lo:hi]:
                rest = key[len(prefix):]
                parts = rest.split("/")
                for n in range(1, len(parts)):
                    folder = prefix + "/".join(parts[:n]) + "/"
                    if folder not in seen:
                        seen.add(folder)
                        entries.append(self._dir_info(folder, self._objects.get(folder)))
                if rest and not key.endswith("/"):
                    entries.append(self._info(key, self._objects[key]))
        yield from entries

    def get_range(self, key: str, offset: int, length: int) -> bytes:
        """A slice of the bytes: short at the end, b"" past it; a link gives its target, a node nothing."""
        self._enter("get_range")
        key = self._file_key(key)
        with self._lock:
            obj = self._objects.get(key)
        if obj is None:
            raise NotFound(key)
        return obj.data[offset:offset + length] if length > 0 and offset >= 0 else b""

    def read_stream(self, key: str, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        """The bytes in pieces of chunk_size, from the version current at the first read (as one GET streams)."""
        self._enter("read_stream")
        key = self._file_key(key)
        with self._lock:
            obj = self._objects.get(key)
        if obj is None:
            raise NotFound(key)
        view = memoryview(obj.data)
        for start in range(0, len(view), max(1, chunk_size)):
            yield bytes(view[start:start + chunk_size])

    # -- Provider: writes ------------------------------------------------------------------

    def put_file(self, key: str, src_path: str, meta: ObjectMeta, *, if_match: str | None = None,
                 if_absent: bool = False) -> ObjectInfo:
        """Read the source outside the lock, then check the condition and swap the object in at once."""
        self._enter("put_file")
        key = self._file_key(key)
        kind = stat.S_IFMT(meta.mode)
        if kind == stat.S_IFDIR:
            raise ProviderError(f"memory provider {self.name}: {key}: a folder is made with make_dir")
        data = b""
        if kind not in _NODE_TYPES:
            try:
                with open(src_path, "rb") as f:
                    data = f.read()
            except OSError as e:
                raise ProviderError(f"memory provider {self.name}: {key}: cannot read source file: "
                                    f"{e.strerror or e}") from e
        obj = _Object(data, copy.deepcopy(meta), self._etag(data))
        with self._lock:
            self._expect(key, if_match, if_absent)
            self._store(key, obj)
        return self._info(key, obj)

    def set_meta(self, key: str, meta: ObjectMeta) -> ObjectInfo:
        """Replace the whole metadata (xattrs included) and keep the bytes and their etag."""
        self._enter("set_meta")
        key = self._file_key(key)
        with self._lock:
            old = self._objects.get(key)
            if old is None:
                raise NotFound(key)
            obj = _Object(old.data, copy.deepcopy(meta), old.etag)
            self._store(key, obj)
        return self._info(key, obj)

    def copy(self, src: str, dst: str, meta: ObjectMeta | None = None, *, if_match: str | None = None) -> ObjectInfo:
        """The same bytes under dst with src's metadata, or with meta instead; if_match: only while src is it."""
        self._enter("copy")
        src, dst = self._file_key(src), self._file_key(dst)
        with self._lock:
            old = self._objects.get(src)
            if old is None:
                raise NotFound(src)
            self._expect(src, if_match, False)
            obj = _Object(old.data, copy.deepcopy(old.meta if meta is None else meta), old.etag)
            self._store(dst, obj)
        return self._info(dst, obj)

    def delete(self, key: str, *, if_match: str | None = None) -> None:
        """Remove the object (a marker too, given its 'prefix/' key); already gone is fine; if_match: only it."""
        self._enter("delete")
        _check_key(key, self.name)
        with self._lock:
            if if_match is not None and key in self._objects:
                self._expect(key, if_match, False)
            self._drop(key)

    def delete_many(self, keys: Iterable[str]) -> None:
        """Remove all of them in one pass under the lock; missing ones are fine."""
        self._enter("delete_many")
        keys = list(keys)
        for key in keys:
            _check_key(key, self.name)
        with self._lock:
            for key in keys:
                self._drop(key)

    def make_dir(self, prefix: str, meta: ObjectMeta) -> None:
        """Store (or replace) the marker 'prefix/' with the folder's metadata; never the root."""
        self._enter("make_dir")
        _check_key(prefix, self.name)
        key = _dir_key(prefix)
        if not key:
            raise ProviderError(f"memory provider {self.name}: refusing to change the root folder")
        obj = _Object(b"", copy.deepcopy(meta), self._etag(b""))
        with self._lock:
            self._store(key, obj)

    def remove_dir(self, prefix: str) -> None:
        """Drop the marker; NotEmpty while any key lies below it (as rmdir on a local disk); missing is fine."""
        self._enter("remove_dir")
        _check_key(prefix, self.name)
        key = _dir_key(prefix)
        if not key:
            raise ProviderError(f"memory provider {self.name}: refusing to change the root folder")
        with self._lock:
            lo, hi = self._below(key)
            if any(k != key for k in self._keys[lo:min(hi, lo + 2)]):
                raise NotEmpty(key)
            self._drop(key)

    def url(self, key: str, expires: int = 3600) -> str | None:
        """No URL: the objects live only in this process."""
        return None
