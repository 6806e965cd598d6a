"""The core as one object for the FUSE edge and the daemon: it holds the parts and only delegates."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..cache.eviction import Evictor
from ..cache.index import EntryIndex
from ..cache.journal import Entry
from ..cache.uploader import Uploader
from ..config import Config
from ..providers.base import Provider
from .attrs import Attrs
from .files import Files
from .lifecycle import Lifecycle
from .lookup import Lookup
from .names import Names
from .schedule import Schedule
from .state import CoreState
from .status import Status
from .tree import Tree
from .types import TRUSTED, Attr, Caller, Counters, Listing
from .writeback import Writeback


@dataclass(frozen=True)
class CoreParts:
    """Every part of a core, as storefs.daemon.build_core wired them (tests reach in through here)."""

    state: CoreState
    schedule: Schedule
    uploader: Uploader
    evictor: Evictor
    counters: Counters
    tree: Tree
    files: Files
    lookup: Lookup
    names: Names
    attrs: Attrs
    writeback: Writeback
    status: Status
    lifecycle: Lifecycle

    @property
    def index(self) -> EntryIndex:
        return self.state.index


class Core:
    """The facade: MountCore for the edge, plus flush and status for the daemon; no logic of its own."""

    def __init__(self, parts: CoreParts) -> None:
        self.parts = parts
        self.providers: dict[str, Provider] = parts.tree.providers

    @property
    def root(self) -> str:
        return self.parts.tree.root

    @property
    def cfg(self) -> Config:
        return self.parts.tree.cfg

    # ---- lifetime ----
    def start(self) -> None:
        self.parts.lifecycle.start()

    def stop(self) -> None:
        self.parts.lifecycle.stop()

    # ---- lookups ----
    def getattr(self, key: str, fh: int | None = None) -> Attr:
        return self.parts.lookup.getattr(key, fh)

    def readdir(self, key: str) -> list[str]:
        return self.parts.lookup.readdir(key)

    def readdir_attrs(self, key: str) -> list[tuple[str, Attr | None]]:
        return self.parts.lookup.readdir_attrs(key)

    def listing(self, key: str) -> Listing:
        return self.parts.lookup.listing(key)

    def listing_attrs(self, listing: Listing, start: int, stop: int) -> list[Attr | None]:
        return self.parts.lookup.listing_attrs(listing, start, stop)

    def readlink(self, key: str) -> bytes:
        return self.parts.lookup.readlink(key)

    def statfs(self) -> dict[str, int]:
        return self.parts.status.statfs()

    # ---- open files ----
    def create(self, key: str, mode: int, uid: int, gid: int, exclusive: bool) -> int:
        return self.parts.files.create(key, mode, uid, gid, exclusive)

    def open(self, key: str, flags: int, caller: Caller = TRUSTED) -> int:
        return self.parts.files.open(key, flags, caller)

    def read_source(self, fh: int, size: int, offset: int) -> tuple[int, int]:
        return self.parts.files.read_source(fh, size, offset)

    def write(self, fh: int, data: bytes, offset: int) -> int:
        return self.parts.files.write(fh, data, offset)

    def truncate(self, key: str, length: int, fh: int | None = None) -> None:
        self.parts.files.truncate(key, length, fh)

    def flush(self, fh: int) -> None:
        self.parts.files.flush(fh)

    def fsync(self, fh: int) -> None:
        self.parts.files.fsync(fh)

    def release(self, fh: int) -> None:
        self.parts.files.release(fh)

    # ---- names ----
    def mkdir(self, key: str, mode: int, uid: int, gid: int) -> None:
        self.parts.names.mkdir(key, mode, uid, gid)

    def rmdir(self, key: str) -> None:
        self.parts.names.rmdir(key)

    def unlink(self, key: str) -> None:
        self.parts.names.unlink(key)

    def rename(self, old: str, new: str) -> None:
        self.parts.names.rename(old, new)

    def symlink(self, key: str, target: bytes, caller: Caller) -> None:
        self.parts.names.symlink(key, target, caller)

    def mknod(self, key: str, mode: int, rdev: int, caller: Caller) -> None:
        self.parts.names.mknod(key, mode, rdev, caller)

    # ---- metadata ----
    def chmod(self, key: str, mode: int, caller: Caller = TRUSTED) -> None:
        self.parts.attrs.chmod(key, mode, caller)

    def chown(self, key: str, uid: int, gid: int, caller: Caller = TRUSTED) -> None:
        self.parts.attrs.chown(key, uid, gid, caller)

    def utimens(self, key: str, atime_ns: int | None, mtime_ns: int | None, caller: Caller = TRUSTED,
                explicit: bool = True) -> None:
        self.parts.attrs.utimens(key, atime_ns, mtime_ns, caller, explicit)

    def getxattr(self, key: str, name: str) -> bytes:
        return self.parts.attrs.getxattr(key, name)

    def listxattr(self, key: str) -> list[str]:
        return self.parts.attrs.listxattr(key)

    def setxattr(self, key: str, name: str, value: bytes) -> None:
        self.parts.attrs.setxattr(key, name, value)

    def removexattr(self, key: str, name: str) -> None:
        self.parts.attrs.removexattr(key, name)

    # ---- the daemon's side: flush, status, URLs ----
    def flush_all(self, timeout: float | None, progress: Callable[[dict[str, Any]], None] | None = None) -> bool:
        return self.parts.status.flush_all(timeout, progress)

    def status(self) -> dict[str, Any]:
        return self.parts.status.status()

    def waiting(self) -> tuple[list[Entry], list[Entry]]:
        return self.parts.status.waiting()

    def wait_uploaded(self, key: str, timeout: float | None) -> None:
        self.parts.status.wait_uploaded(key, timeout)

    def pending_keys(self) -> list[str]:
        return self.parts.status.pending_keys()

    def retry(self, key: str) -> int:
        return self.parts.writeback.retry(key)
