"""Cache data files, with random names and never the key itself.

A name from a bucket can therefore never make storefs write outside the cache folder,
and a rename is one journal update: the data file keeps its name. Names read back from the
journal are checked before any use: only the plain 64-hex-digit names made here are taken
(a journal edited to hold '../x' or '/etc/shadow' reads as a missing data file, logged once).
The folders are made 0700 and the files 0600, whatever the umask.

Creating a file is the slow part of a small file's create(2): the filesystem allocates
an inode, and ext4 without a journal skips every inode freed in the last minutes (a cache
that evicts and deletes has many) reading inode tables as it goes, ~0.3 ms a file. A
background thread keeps a few empty data files ready, so a create takes one of those.
Deleting one costs about as much (ext4 frees its blocks and inode), so the same thread
deletes the data files of unlinked files, and `rm -r` does not wait for it. Nor does it share
the machine with those deletes: they wait until the file system has been quiet for a moment
(REAP_QUIET), or until the oldest has waited REAP_LATE_MAX; eviction and a create that finds the
disk full delete them at once (reap_now), before any clean copy goes.
"""

from __future__ import annotations

import collections
import errno
import logging
import os
import re
import secrets
import threading
import time
from collections.abc import Callable

from ..errors import CacheFull, StorefsError

log = logging.getLogger(__name__)

#: empty data files kept ready for creates; refilled once fewer than half are left
SPARES = 64
FILE_MODE = 0o600
FOLDER_MODE = 0o700
#: the names new_name() makes (and the sha256 hex digests earlier versions made)
NAME_RE = re.compile(r"[0-9a-f]{64}")
#: data files of unlinked files are deleted once the file system has been this quiet (seconds) ...
REAP_QUIET = 0.05
#: ... or once the oldest has waited this long: on 2 cores, ext4 deleting them beside an `rm -r` of
#: 2,000 files made each unlink wait (about 600 ms against 330 ms with the deletes after it)
REAP_LATE_MAX = 5.0


class BadDataName(StorefsError):
    """A data-file name that storefs never makes (from a damaged or planted journal): never used as a path."""


def check_name(name: str) -> str:
    """name itself when it is a plain data-file name; BadDataName for anything that could leave the folder."""
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise BadDataName(f"refusing cache data file name {name!r}: not a name storefs makes "
                          "(64 hex digits, no '/' or '..')")
    return name


class DataFiles:
    """The folder of cache data files, fanned out over 256 sub-folders."""

    def __init__(self, root: str, spares: int = SPARES) -> None:
        self.root = os.path.join(root, "data")
        os.makedirs(self.root, mode=FOLDER_MODE, exist_ok=True)
        self._refused: set[str] = set()  # bad names already logged
        self.spares = spares
        self._ready: collections.deque[tuple[str, int]] = collections.deque()
        # to delete in the background: (name, when discarded)
        self._doomed: collections.deque[tuple[str, float]] = collections.deque()
        self._cond = threading.Condition()  # _ready, _doomed and _halt: the files made ahead and to delete
        self._idle: Callable[[], float] | None = None  # seconds since the file system changed something
        self._halt = False
        self._filler: threading.Thread | None = None
        self.taken = 0  # creates served by a ready file (tests check the thread keeps up)
        self._removed_lock = threading.Lock()  # protects _removed_bytes
        self._removed_bytes = 0

    @staticmethod
    def new_name() -> str:
        """A fresh random name (an unlinked-but-open file's name is never given again)."""
        return secrets.token_hex(32)

    def path(self, name: str) -> str:
        """Where the data file of name lives; BadDataName for a name that is not one storefs makes."""
        check_name(name)
        return os.path.join(self.root, name[:2], name)

    def _valid(self, name: str) -> bool:
        """Whether name may be used; a bad one is logged once (it reads as a missing data file)."""
        try:
            check_name(name)
        except BadDataName as e:
            if name not in self._refused:
                self._refused.add(name)
                log.error("%s: the cache journal is damaged or was tampered with", e)
            return False
        return True

    def _create_file(self, p: str) -> int:
        """A new file, 0600 whatever the umask (O_EXCL: never one planted before)."""
        flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW
        try:
            return os.open(p, flags, FILE_MODE)
        except FileNotFoundError:
            os.makedirs(os.path.dirname(p), mode=FOLDER_MODE, exist_ok=True)
            return os.open(p, flags, FILE_MODE)

    def _make(self) -> tuple[str, int]:
        name = self.new_name()
        try:
            fd = self._create_file(self.path(name))
        except OSError as e:
            raise _cache_error(e, "create") from e
        return name, fd

    def create(self, size: int = 0) -> tuple[str, int]:
        """A new empty (or sparse) data file: its name and a read-write descriptor."""
        with self._cond:
            ready = self._ready.popleft() if self._ready else None
            if ready is not None:
                self.taken += 1
            if len(self._ready) < self.spares // 2:
                self._cond.notify()
        if ready is not None:
            name, fd = ready
        else:
            try:
                name, fd = self._make()
            except CacheFull:
                if not self.reap_now():  # the files waiting to be deleted are room
                    raise
                name, fd = self._make()
        if size:
            try:
                os.ftruncate(fd, size)
            except OSError as e:
                os.close(fd)
                self.remove(name)
                raise _cache_error(e, "create") from e
        return name, fd

    def start(self) -> None:
        """Keep empty files ready (after the recovery sweep, which would remove them)."""
        if self.spares <= 0 or self._filler is not None:
            return
        self._halt = False
        self._filler = threading.Thread(target=self._fill_loop, name="storefs-datafiles", daemon=True)
        self._filler.start()

    def stop(self) -> None:
        """Stop refilling and delete the files still unused, and those discarded."""
        with self._cond:
            self._halt = True
            self._cond.notify()
        if self._filler is not None:
            self._filler.join(timeout=5)
            self._filler = None
        with self._cond:
            left, self._ready = list(self._ready), collections.deque()
        for name, fd in left:
            os.close(fd)
            self.remove(name)
        self.reap_now()

    def give_way_to(self, idle: Callable[[], float]) -> None:
        """Delete discarded files only once idle() (seconds since the file system last changed
        something) reaches REAP_QUIET, or when the oldest is REAP_LATE_MAX late."""
        self._idle = idle

    def discard(self, name: str | None) -> None:
        """Delete a data file soon, off the caller's path; a crash first leaves it to the recovery sweep."""
        if not name or not self._valid(name):
            return
        with self._cond:
            if self._filler is not None and not self._halt:
                if not self._doomed:
                    self._cond.notify()
                self._doomed.append((name, time.monotonic()))
                return
        self.remove(name)

    def reap_now(self) -> int:
        """Delete every discarded file on this thread, now (the disk needs the room); how many."""
        with self._cond:
            doomed, self._doomed = list(self._doomed), collections.deque()
        for name, _ in doomed:
            self.remove(name)
        return len(doomed)

    def _reap_wait(self) -> float:
        """Seconds the discarded files should wait for the file system to be quiet (0: delete them now).
        Not called with _cond held: the idle clock has a lock of its own, taken before this one."""
        with self._cond:
            oldest = self._doomed[0][1] if self._doomed else None
        if oldest is None or self._idle is None:
            return 0.0
        late_left = oldest + REAP_LATE_MAX - time.monotonic()
        quiet_left = REAP_QUIET - self._idle()
        return max(0.0, min(quiet_left, late_left))

    def _reap(self) -> None:
        while True:
            with self._cond:
                if not self._doomed:
                    return
                name, _ = self._doomed.popleft()
            self.remove(name)

    def _fill_loop(self) -> None:
        wait: float | None = None  # how long the discarded files wait for quiet, as last looked at
        while True:
            with self._cond:
                while (not self._halt and len(self._ready) >= self.spares // 2
                       and (not self._doomed or wait is not None and wait > 0)):
                    self._cond.wait(wait)
                    wait = None  # woken, or the wait is over: look at the quiet again
                if self._halt:
                    return
            wait = self._reap_wait()
            if wait <= 0:
                self._reap()
                wait = None
            with self._cond:
                want = self.spares - len(self._ready)
            if want <= self.spares // 2:
                continue
            for _ in range(want):
                try:
                    made = self._make()
                except StorefsError as e:  # a full disk: creates make their own and report it
                    log.debug("no ready data file: %s", e)
                    if self.reap_now():  # the discarded files are room
                        continue
                    break
                with self._cond:
                    if self._halt:
                        os.close(made[1])
                        self.remove(made[0])
                        return
                    self._ready.append(made)
            with self._cond:  # nothing to do until a create takes one, the disk has room, or the quiet comes
                if not self._halt and len(self._ready) < self.spares // 2:
                    self._cond.wait(1.0 if wait is None else min(1.0, max(wait, REAP_QUIET / 10)))

    def open(self, name: str) -> int:
        """A read-write descriptor of the data file (never through a symlink); BadDataName for a bad name."""
        self._valid(name)
        try:
            return os.open(self.path(name), os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW)
        except OSError as e:
            raise _cache_error(e, "open") from e

    def exists(self, name: str) -> bool:
        """Whether the data file is there; a bad name is never there (it is logged once)."""
        return self._valid(name) and os.path.exists(self.path(name))

    def size(self, name: str) -> int:
        """Bytes in the data file; BadDataName for a bad name."""
        self._valid(name)
        return os.stat(self.path(name)).st_size

    def remove(self, name: str | None) -> None:
        """Delete the data file if there; a bad name deletes nothing (logged once)."""
        if not name or not self._valid(name):
            return
        p = self.path(name)
        try:
            freed = os.stat(p, follow_symlinks=False).st_blocks * 512
            os.unlink(p)
        except FileNotFoundError:
            return
        with self._removed_lock:
            self._removed_bytes += freed

    def removed_bytes(self) -> int:
        """Disk bytes of the data files removed so far (a running total: eviction's estimate subtracts
        what went since it last measured, so a scrape needs no walk of the folder)."""
        with self._removed_lock:
            return self._removed_bytes

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
        """Every data file on disk, to find orphans left by a crash (files of other names are left alone)."""
        out: set[str] = set()
        for sub in os.scandir(self.root):
            if sub.is_dir(follow_symlinks=False):
                out.update(f.name for f in os.scandir(sub.path) if NAME_RE.fullmatch(f.name))
        return out


def _cache_error(e: OSError, what: str) -> StorefsError:
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return CacheFull(f"cache disk full ({what})")
    return StorefsError(f"cache {what} failed: {e.strerror}")
