"""The values the core hands around: what getattr answers, who asks, open handles, and what a key is."""

from __future__ import annotations

import os
import stat
import threading
from dataclasses import dataclass
from typing import ClassVar, NamedTuple

from ..cache.journal import Entry
from ..cache.openfile import OpenFile
from ..config import Config
from ..providers.base import ObjectInfo

#: where a remote object lives: (provider name, what its listing or HEAD said)
Remote = tuple[str, ObjectInfo]


class Attr(NamedTuple):
    """What getattr answers; times in integer nanoseconds since the epoch, as stat(2) has them;
    ctime and atime of 0 read as the mtime (objects that never stored them). A NamedTuple: one is
    made per getattr and per readdir entry, at a quarter of a frozen dataclass's cost."""

    is_dir: bool
    size: int
    mtime_ns: int
    mode: int
    uid: int
    gid: int
    ctime_ns: int = 0
    atime_ns: int = 0
    rdev: int = 0


class Listing(NamedTuple):
    """A folder's names as one readdir stream pages through them, with the provider listing they
    were merged from: what listing_attrs needs to answer each name's stat without a request."""

    key: str
    names: list[str]
    remote: dict[str, Remote]


class Caller:
    """Who asks for a change: the kernel's uid, gid and pid of the calling process.

    The kernel checks modes itself (default_permissions); the core applies the rules the
    kernel leaves to the file system (who may chmod, chown, set times, clear set-id bits).
    Supplementary groups are read from /proc only when a rule needs them.
    """

    __slots__ = ("uid", "gid", "pid", "_groups")

    def __init__(self, uid: int, gid: int, pid: int = 0) -> None:
        self.uid, self.gid, self.pid = uid, gid, pid
        self._groups: frozenset[int] | None = None

    @property
    def is_root(self) -> bool:
        return self.uid == 0

    def in_group(self, gid: int) -> bool:
        """Whether gid is the caller's group or one of its supplementary groups."""
        if gid == self.gid:
            return True
        if self._groups is None:
            self._groups = _proc_groups(self.pid)
        return gid in self._groups

    def may(self, attr: Attr, want: int) -> bool:
        """Whether the mode bits of attr grant want (os.R_OK/W_OK/X_OK bits) to this caller."""
        if self.is_root:
            return True
        if self.uid == attr.uid:
            bits = (attr.mode >> 6) & 7
        elif self.in_group(attr.gid):
            bits = (attr.mode >> 3) & 7
        else:
            bits = attr.mode & 7
        return bits & want == want


def _proc_groups(pid: int) -> frozenset[int]:
    """The supplementary groups of process pid (none when it is gone or /proc hides it)."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("Groups:"):
                    return frozenset(int(g) for g in line.split()[1:])
    except (OSError, ValueError):
        pass
    return frozenset()


#: internal changes (recovery, the daemon's own admin calls) act with every right
TRUSTED = Caller(0, 0)


@dataclass
class Handle:
    """One open(2) of a file: the shared open node, and what this opening may do."""

    node: OpenFile
    writable: bool
    kills_setid: bool = False  # opened for writing by a non-root user: a write clears set-user/group-ID


# ---- what a key is now: a tagged type, one class per kind ---------------------------------


@dataclass(frozen=True)
class Folder:
    """A folder: the root, one the journal knows (entry), one a provider lists (remote), or both."""

    entry: Entry | None = None
    remote: Remote | None = None
    is_dir: ClassVar[bool] = True
    node: ClassVar[None] = None


@dataclass(frozen=True)
class CachedFile:
    """A file with a journal row: pending, or a clean cached copy (remote: what its provider said)."""

    entry: Entry
    remote: Remote | None = None
    is_dir: ClassVar[bool] = False
    node: ClassVar[None] = None


@dataclass(frozen=True)
class OpenNode:
    """A file open right now: its open node holds the row and the live size."""

    node: OpenFile
    is_dir: ClassVar[bool] = False
    remote: ClassVar[None] = None

    @property
    def entry(self) -> Entry:
        return self.node.entry


@dataclass(frozen=True)
class RemoteFile:
    """A file only a provider holds: nothing of it is cached."""

    remote: Remote
    is_dir: ClassVar[bool] = False
    entry: ClassVar[None] = None
    node: ClassVar[None] = None


Found = Folder | CachedFile | OpenNode | RemoteFile


class Counters:
    """Byte and call counts for status and metrics, bumped by every FUSE thread: each thread counts in
    its own dict (no lock on the write path, which bumps them per request), summed when read."""

    NAMES = ("bytes_written", "bytes_read", "bytes_fetched", "bytes_warmed", "write_calls", "read_calls")

    def __init__(self) -> None:
        self._local = threading.local()
        self._lock = threading.Lock()  # protects _threads (the list of per-thread dicts)
        self._threads: list[dict[str, int]] = []

    def _mine(self) -> dict[str, int]:
        mine: dict[str, int] | None = getattr(self._local, "counts", None)
        if mine is None:
            mine = self._local.counts = dict.fromkeys(self.NAMES, 0)
            with self._lock:
                self._threads.append(mine)
        return mine

    def add(self, name: str, n: int, calls: str | None = None) -> None:
        """Add n to name (and one call to calls, when given), in this thread's counts."""
        mine = self._mine()
        mine[name] += n
        if calls is not None:
            mine[calls] += 1

    def snapshot(self) -> dict[str, int]:
        """Every count, summed over the threads that ever counted."""
        with self._lock:
            threads = list(self._threads)
        return {name: sum(t[name] for t in threads) for name in self.NAMES}


@dataclass(frozen=True)
class Settings:
    """The mount options the core reads, fixed for the life of the mount."""

    cfg: Config
    read_only: bool
    atime_mode: str
    file_mode: int  # what objects without ownership metadata show (uid, gid, umask, file_mode, dir_mode)
    dir_mode: int
    root: str  # the key of the mount root (a single-tenant mount)
    uid: int
    gid: int
    mounted_at_ns: int  # the mtime of folders no provider dates (as rclone shows them)
    delay: float  # the quiet delay before an upload
    chunk_size: int

    @classmethod
    def from_config(cls, cfg: Config, mounted_at_ns: int) -> Settings:
        """The settings of a mount of cfg started at mounted_at_ns (wall clock, ns)."""
        fc = cfg.fuse
        return cls(cfg=cfg, read_only=fc.read_only, atime_mode=fc.atime,
                   file_mode=stat.S_IFREG | fc.default_file_mode(), dir_mode=stat.S_IFDIR | fc.default_dir_mode(),
                   root=cfg.tenant or "", uid=os.getuid() if fc.uid is None else fc.uid,
                   gid=os.getgid() if fc.gid is None else fc.gid, mounted_at_ns=mounted_at_ns,
                   delay=cfg.cache.writeback_delay, chunk_size=cfg.cache.chunk_size)

    def owner_id(self, value: int | None, default: int) -> int:
        """An object's uid or gid, or the mount's default where it stores none."""
        return default if value is None else value
