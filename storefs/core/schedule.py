"""When pending rows go to the uploader: the quiet delay after each change, and flush's hurry."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from ..cache.uploader import Uploader

log = logging.getLogger(__name__)


class Activity:
    """When the file system last changed something: uploads give way to a burst of changes."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._lock = threading.Lock()  # protects _changed_at
        self._changed_at = 0.0

    def mark(self) -> None:
        """A change happened now."""
        with self._lock:
            self._changed_at = self.clock()

    def idle(self) -> float:
        """Seconds since the last change through the file system."""
        with self._lock:
            return self.clock() - self._changed_at


class Schedule:
    """The quiet delay of each pending key, in front of the uploader."""

    def __init__(self, uploader: Uploader, activity: Activity, delay: float) -> None:
        self.uploader = uploader
        self.activity = activity
        self.delay = delay
        self.clock = activity.clock
        self._lock = threading.Lock()  # protects _quiet_until and _flushing
        self._quiet_until: dict[str, float] = {}
        self._flushing = 0

    def changed(self, key: str) -> None:
        """key has a new pending change: its upload waits for the quiet delay."""
        self.activity.mark()
        with self._lock:
            self._quiet_until[key] = self.clock() + self.delay
        self.uploader.schedule(key, self.delay)

    def touched(self, key: str, new_row: bool) -> None:
        """A folder's times moved: its quiet delay moves; it enters the queue if its row is new, or
        if an upload of its older times runs now (it goes once more after that)."""
        with self._lock:
            self._quiet_until[key] = self.clock() + self.delay
        if new_row or self.uploader.is_busy(key):
            self.uploader.schedule(key, self.delay)

    def now(self, key: str) -> None:
        """Run key's pending operation at once (a marker whose contents landed, a leftover to delete)."""
        self.uploader.schedule(key, 0.0)

    def hurry(self, key: str) -> None:
        """Upload key now, skipping its quiet delay (fsync, `storefs url`)."""
        self.settled(key)
        self.uploader.schedule(key, 0.0)

    def settled(self, key: str) -> None:
        """key has nothing pending any more: forget its quiet delay."""
        with self._lock:
            self._quiet_until.pop(key, None)

    def quiet_left(self, key: str) -> float:
        """Seconds until key's quiet delay ends (0 during a flush, which wants everything now)."""
        with self._lock:
            if self._flushing:
                return 0.0
            return self._quiet_until.get(key, 0.0) - self.clock()

    def is_busy(self, key: str) -> bool:
        """Whether an upload of key runs now."""
        return self.uploader.is_busy(key)

    def flushing(self, on: bool) -> None:
        """A flush starts (on) or ends: quiet delays count for nothing meanwhile."""
        with self._lock:
            self._flushing += 1 if on else -1
