"""Keeps the cache folder under cache.max_size by dropping clean copies, least recently used.

Dirty and open entries are never candidates. Writers that would push the cache past its
limit wait (bounded) for uploads to turn dirty data into clean, evictable copies, and
then get ENOSPC: nothing already closed is ever dropped to make room.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Protocol

from ..errors import CacheFull
from .journal import Entry

log = logging.getLogger(__name__)

LOW_WATER = 0.9  # evict down to this share of max_size, so eviction does not run on every write


class Owner(Protocol):
    """What the evictor needs from the core."""

    def eviction_candidates(self) -> list[Entry]:
        """Clean, closed cached copies, least recently used first."""

    def evict(self, e: Entry) -> bool:
        """Drop e's cached copy if it is still clean and closed; True if it was dropped."""


class Evictor:
    """A thread that measures the cache and evicts, and the gate writers pass through."""

    def __init__(self, owner: Owner, max_size: int, measure: Callable[[], int], wait: float = 30.0,
                 interval: float = 2.0, after_pass: Callable[[], None] | None = None) -> None:
        self._after_pass = after_pass
        self._owner = owner
        self.max_size = max_size
        self._measure = measure
        self._wait = wait
        self._interval = interval
        self._cond = threading.Condition()  # used, and the writers waiting for room
        self.used = measure()
        self.evicted = 0
        self._stopping = False
        self._kicked = False
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="storefs-evict", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread:
            self._thread.join(5)

    def account(self, nbytes: int) -> None:
        """Bytes fetched into the cache by reads: counted, never waited for."""
        with self._cond:
            self.used += nbytes

    def reserve(self, nbytes: int) -> None:
        """Account for nbytes about to be written; wait for room, or raise CacheFull."""
        with self._cond:
            deadline = time.monotonic() + self._wait
            # our bytes count only once admitted: a re-measure of the disk must not forget them
            while self.used + nbytes > self.max_size:
                self._kicked = True
                self._cond.notify_all()
                left = deadline - time.monotonic()
                if left <= 0:
                    raise CacheFull(f"cache is full ({self.used} of {self.max_size} bytes are dirty or open); "
                                    "waited for uploads to free room")
                self._cond.wait(min(left, 0.5))
            self.used += nbytes

    def _run(self) -> None:
        while True:
            with self._cond:
                if not self._kicked and not self._stopping:
                    self._cond.wait(self._interval)
                if self._stopping:
                    return
                due = self._kicked or self.used > self.max_size * LOW_WATER
                self._kicked = False
            if not due:  # measuring walks the cache folder: only when the estimate says so
                continue
            try:
                self._pass()
            except Exception:
                log.exception("cache eviction pass failed")

    def _pass(self) -> None:
        used = self._measure()
        if used > self.max_size * LOW_WATER:
            target = self.max_size * LOW_WATER
            for e in self._owner.eviction_candidates():
                if used <= target:
                    break
                if self._owner.evict(e):
                    used -= e.size
                    self.evicted += 1
            used = self._measure()
        with self._cond:
            self.used = used
            self._cond.notify_all()
        if self._after_pass is not None and used < self.max_size * LOW_WATER:
            self._after_pass()
