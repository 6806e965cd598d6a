"""Keeps the cache folder under cache.max_size, and its disk's free space above cache.min_free,
by dropping clean copies, least recently used.

Dirty and open entries are never candidates. Writers that would push the cache past its
limit wait (bounded) for uploads to turn dirty data into clean, evictable copies, and
then get ENOSPC: nothing already closed is ever dropped to make room.

The disk is watched from the evictor's thread only (statvfs each pass); the FUSE threads keep
an estimate of the free space up to date and kick the thread when it falls below min_free. A
write the estimate says will not fit waits for one pass to make room, if clean copies are left
to drop, and is then let through: the disk itself answers ENOSPC when it is truly full.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from ..errors import CacheFull
from .journal import Entry

log = logging.getLogger(__name__)

LOW_WATER = 0.9  # evict down to this share of max_size, so eviction does not run on every write
FREE_HEADROOM = 1 / LOW_WATER  # and up to this multiple of min_free free, for the same reason
NO_DISK_WATCH = -1  # min_free when the disk is not watched


class Owner(Protocol):
    """What the evictor needs from the core."""

    def eviction_candidates(self) -> list[Entry]:
        """Clean, closed cached copies, least recently used first."""

    def evict(self, e: Entry) -> bool:
        """Drop e's cached copy if it is still clean and closed; True if it was dropped."""


def disk_space(path: str, statvfs: Callable[[str], Any] = os.statvfs) -> tuple[int, int]:
    """(size, free) in bytes of the filesystem holding path; free as a writer without root's reserve sees it."""
    st = statvfs(path)
    return st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize


class Evictor:
    """A thread that measures the cache and its disk and evicts, and the gate writers pass through."""

    def __init__(self, owner: Owner, max_size: int, measure: Callable[[], int], wait: float = 30.0,
                 interval: float = 2.0, after_pass: Callable[[], None] | None = None, *,
                 min_free: int = NO_DISK_WATCH, free: Callable[[], int] | None = None,
                 removed: Callable[[], int] = lambda: 0, reap: Callable[[], int] = lambda: 0) -> None:
        self._after_pass = after_pass
        self._removed = removed  # running total of bytes deleted from the cache (DataFiles.removed_bytes)
        self._reap = reap  # deletes the data files of unlinked files now (DataFiles.reap_now): how many
        self._owner = owner
        self.max_size = max_size
        self._measure = measure
        self._free_now = free
        self.min_free = min_free if free is not None else NO_DISK_WATCH
        self._wait = wait
        self._interval = interval
        self._cond = threading.Condition()  # used, free, _disk_need, _stuck, and the writers waiting for room
        self._removed_at_measure = removed()  # that total when `used` was last measured
        self.used = measure()
        self.free = free() if free is not None else 0  # an estimate between passes: reads and writes take from it
        self._disk_need = 0  # bytes the largest waiting writer needs on the disk
        self._stuck = False  # the last pass left the disk short with nothing more to evict
        self.evicted = 0
        self._stopping = False
        self._kicked = False
        self._thread: threading.Thread | None = None

    def estimate(self) -> int:
        """Bytes the cache holds now, without walking it: the last measure, plus what was written and
        fetched since, less what was deleted since (for status and /metrics; eviction re-measures)."""
        removed = self._removed()
        with self._cond:
            return max(0, self.used - (removed - self._removed_at_measure))

    @property
    def watches_disk(self) -> bool:
        return self.min_free != NO_DISK_WATCH

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="storefs-evict", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread:
            self._thread.join(5)

    def _kick(self) -> None:
        """Wake the evictor thread now (called with _cond held)."""
        self._kicked = True
        self._cond.notify_all()

    def _took(self, nbytes: int) -> None:
        """nbytes more on the disk (called with _cond held): crossing below min_free, the thread makes room now."""
        self.used += nbytes
        if self.watches_disk:
            # only the crossing kicks: while the disk stays short the thread's interval paces the passes,
            # so each write to a disk that dirty data fills does not walk the cache folder
            crossed = self.free >= self.min_free > self.free - nbytes
            self.free -= nbytes
            if crossed:
                self._kick()

    def account(self, nbytes: int) -> None:
        """Bytes fetched into the cache by reads: counted, never waited for."""
        with self._cond:
            self._took(nbytes)

    def reserve(self, nbytes: int) -> None:
        """Account for nbytes about to be written; wait for room, or raise CacheFull."""
        with self._cond:
            deadline = time.monotonic() + self._wait
            # our bytes count only once admitted: a re-measure of the disk must not forget them
            while True:
                over = self.used + nbytes > self.max_size
                # the disk: one pass may drop clean copies for us; with none left the disk answers for itself
                short = self.watches_disk and self.free < nbytes and not self._stuck
                if not over and not short:
                    break
                left = deadline - time.monotonic()
                if left <= 0:
                    if not over:
                        break
                    raise CacheFull(f"cache is full ({self.used} of {self.max_size} bytes are dirty or open); "
                                    "waited for uploads to free room")
                if short:
                    self._disk_need = max(self._disk_need, nbytes)
                self._kick()
                self._cond.wait(min(left, 0.5))
            self._took(nbytes)

    def _due(self) -> bool:
        """Whether a pass is needed (called with _cond held): from the estimates, without touching the disk."""
        return (self._kicked or self.used > self.max_size * LOW_WATER
                or (self.watches_disk and (self.free < self.min_free or self._stuck)))

    def _run(self) -> None:
        while True:
            with self._cond:
                if not self._kicked and not self._stopping:
                    self._cond.wait(self._interval)
                if self._stopping:
                    return
                due = self._due()
                self._kicked = False
            if not due:  # measuring walks the cache folder: only when the estimate says so
                continue
            try:
                self._pass()
            except Exception:
                log.exception("cache eviction pass failed")

    def _disk_free(self) -> int:
        return self._free_now() if self._free_now is not None else 0

    def _to_free(self, free: int) -> int:
        """Bytes to drop for the disk: up to the headroom once under min_free, and what a waiting writer needs."""
        if not self.watches_disk:
            return 0
        with self._cond:
            need = self._disk_need
        want = max(int(self.min_free * FREE_HEADROOM) if free < self.min_free else 0, need)
        return max(0, want - free)

    def _measured(self) -> tuple[int, int, int, float, int]:
        """(bytes removed so far, cache use, disk free, bytes over the low water mark, bytes the disk is short)."""
        removed = self._removed()
        used = self._measure()
        free = self._disk_free()
        over = used - self.max_size * LOW_WATER if used > self.max_size * LOW_WATER else 0
        return removed, used, free, over, self._to_free(free)

    def _pass(self) -> None:
        removed, used, free, over, short = self._measured()
        if (over > 0 or short > 0) and self._reap():  # unlinked files' data goes before any clean copy
            removed, used, free, over, short = self._measured()
        left_short = False
        if over > 0 or short > 0:
            ran_out = True
            for e in self._owner.eviction_candidates():
                if over <= 0 and short <= 0:
                    ran_out = False
                    break
                if self._owner.evict(e):
                    over -= e.size
                    short -= e.size
                    self.evicted += 1
            removed = self._removed()
            used = self._measure()
            free = self._disk_free()
            left_short = ran_out and self._to_free(free) > 0
        self._note_stuck(left_short, free)
        with self._cond:
            self.used = used
            self._removed_at_measure = removed
            if self.watches_disk:
                self.free = free
                self._disk_need = 0
                self._stuck = left_short
            self._cond.notify_all()
        if self._after_pass is not None and used < self.max_size * LOW_WATER:
            self._after_pass()

    def _note_stuck(self, stuck: bool, free: int) -> None:
        """Say once when the disk stays short with nothing left to evict, and once when it has room again."""
        if stuck and not self._stuck:
            log.warning("cache disk has %d bytes free (cache.min_free: %d) and no clean copy is left to evict: "
                        "dirty and open files hold the rest until they are uploaded and closed", free, self.min_free)
        elif self._stuck and not stuck:
            log.info("cache disk has room again (%d bytes free)", free)

    def make_room(self) -> int:
        """Evict now until the cache and its disk are within limits or nothing more can go (at mount, just after
        __init__ measured both); how many clean copies went."""
        with self._cond:
            due = self._due()
        if not due:  # the estimates were measured just now: no second walk of the cache folder
            if self._after_pass is not None:
                self._after_pass()
            return 0
        before = self.evicted
        while True:
            n = self.evicted
            self._pass()
            if self.evicted == n:
                return self.evicted - before
