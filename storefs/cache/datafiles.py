"""Cache data files, named by a salted hash of their key and never by the key itself.

A name from a bucket can therefore never make storefs write outside the cache folder,
and a rename is one journal update: the data file keeps its name.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import secrets
import shutil

from ..errors import CacheFull, StorefsError

log = logging.getLogger(__name__)


class DataFiles:
    """The folder of cache data files, fanned out over 256 sub-folders."""

    def __init__(self, root: str) -> None:
        self.root = os.path.join(root, "data")
        os.makedirs(self.root, exist_ok=True)

    @staticmethod
    def new_name(key: str) -> str:
        """A fresh name for key's bytes; salted so an unlinked-but-open file never collides."""
        return hashlib.sha256(f"{key}\0{secrets.token_hex(8)}".encode("utf-8", "surrogateescape")).hexdigest()

    def path(self, name: str) -> str:
        return os.path.join(self.root, name[:2], name)

    def create(self, name: str, size: int = 0) -> int:
        """Create an empty (or sparse) data file and return a read-write descriptor."""
        p = self.path(name)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        try:
            fd = os.open(p, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            if size:
                os.ftruncate(fd, size)
        except OSError as e:
            raise _cache_error(e, "create") from e
        return fd

    def open(self, name: str) -> int:
        try:
            return os.open(self.path(name), os.O_RDWR | os.O_CLOEXEC)
        except OSError as e:
            raise _cache_error(e, "open") from e

    def exists(self, name: str) -> bool:
        return os.path.exists(self.path(name))

    def size(self, name: str) -> int:
        return os.stat(self.path(name)).st_size

    def remove(self, name: str | None) -> None:
        if not name:
            return
        try:
            os.unlink(self.path(name))
        except FileNotFoundError:
            pass

    def copy(self, src: str, dst: str) -> None:
        """Duplicate a data file (for a copy of a file that is open elsewhere)."""
        try:
            shutil.copyfile(self.path(src), self.path(dst))
        except OSError as e:
            raise _cache_error(e, "copy") from e

    def usage(self) -> tuple[int, int]:
        """Bytes used on disk by data files, and the free bytes of the cache filesystem."""
        used = 0
        for sub in os.scandir(self.root):
            if sub.is_dir():
                for f in os.scandir(sub.path):
                    used += f.stat().st_blocks * 512
        st = os.statvfs(self.root)
        return used, st.f_bavail * st.f_frsize

    def names(self) -> set[str]:
        """Every data file on disk, to find orphans left by a crash."""
        out = set()
        for sub in os.scandir(self.root):
            if sub.is_dir():
                out.update(f.name for f in os.scandir(sub.path))
        return out


def _cache_error(e: OSError, what: str) -> StorefsError:
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return CacheFull(f"cache disk full ({what})")
    return StorefsError(f"cache {what} failed: {e.strerror}")
