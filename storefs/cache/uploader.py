"""Background threads that carry pending journal rows to their providers.

The uploader knows nothing of files or providers: it schedules keys, runs one operation
per key at a time through the three functions of UploadJobs (given at start), and retries
failures with capped exponential backoff and jitter. What an operation means is the core's business.

A failure that says the provider did not answer at all (the `unanswered` predicate given by the
daemon) is not retried on that timer: the key waits until kick() (the provider answered a probe or
another request), with max_backoff as the fallback, so that an outage costs no attempts hanging on
a frozen server and the queue moves the moment the server is back. A kick that came while the
attempt ran (the provider came back meanwhile) has the key retried at the usual backoff instead.
While every provider is surely down (the `all_down` function), a key that falls due waits for the
kick without an attempt: an attempt would fail at once, and a burst of writes during an outage would
pay a journal update and a log line per file for nothing.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)

#: the first retry waits about this long (seconds, before jitter); each failure doubles it
BACKOFF_FIRST = 0.25
#: doublings stop here (the cap, max_backoff, is reached long before)
BACKOFF_MAX_DOUBLINGS = 16

#: a burst of file activity holds back uploads that are due (never retries, never a flush's) ...
YIELD_QUIET = 0.05  # ... until the file system has been this quiet (seconds) ...
YIELD_MAX = 5.0     # ... or the upload is this late: on 2 cores, boto3 and the FUSE threads share one
                    # interpreter lock, and uploads running under a burst of creates halve its pace


#: seconds stop() waits for the operations under way, unless told otherwise
STOP_TIMEOUT = 10.0


class Parked(Exception):
    """sync's answer for an operation the provider refused for good: the core has recorded it, and
    it waits for an operator (not retried, not counted as done) until the key is scheduled again."""


@dataclass(frozen=True)
class UploadJobs:
    """The three functions the uploader runs for a key (the core's writeback part gives them)."""

    #: 0 when key's pending operation can run now, seconds to wait, or None if nothing is pending
    due_in: Callable[[str], float | None]
    #: carry key's pending operation to its provider; raise to have it retried, Parked to have it wait
    sync: Callable[[str], None]
    #: record a failed attempt (journal and status): key, the error, attempts so far
    failed: Callable[[str, BaseException, int], None]


class Uploader:
    """A pool of threads draining a schedule of keys, one operation per key at a time."""

    def __init__(self, workers: int = 4, max_backoff: float = 60.0,
                 idle: Callable[[], float] | None = None,
                 unanswered: Callable[[BaseException], bool] | None = None,
                 all_down: Callable[[], bool] | None = None) -> None:
        self._idle = idle  # seconds since the last change through the file system
        self._unanswered = unanswered  # whether a failure means the provider did not answer (wait for kick())
        self._all_down = all_down  # whether every provider is surely down (due keys wait for kick(), untried)
        self._workers = max(1, workers)
        self._max_backoff = max_backoff
        # one lock over the queue (_heap, _due, _in_flight, _attempts, counts), with two conditions on it:
        self._lock = threading.RLock()
        self._cond = threading.Condition(self._lock)  # workers wait here for due work
        # flush's progress loop waits here: a finished operation wakes it, never the idle workers
        self._changed = threading.Condition(self._lock)
        self._timer_taken = False  # one idle worker sleeps until the next due time; the rest until woken
        self._heap: list[tuple[float, int, str]] = []
        self._due: dict[str, float] = {}
        self._in_flight: set[str] = set()
        self._attempts: dict[str, int] = {}
        self._requeue_after_flight: set[str] = set()  # scheduled again while running
        self._held: set[str] = set()  # keys waiting for kick() (their provider did not answer)
        self._kicks = 0  # kick() calls so far: an attempt that saw one begin meanwhile is not held
        self._seq = itertools.count()
        self._hurried_at = float("-inf")  # keys due by then are a flush's: they never give way
        self._threads: list[threading.Thread] = []
        self._stopping = False
        self.uploaded = 0
        self.failures = 0
        self.retries = 0  # operations run again after a failed attempt
        self.parked = 0  # operations the provider refused for good (not retried)
        #: how long stop() waits for the operations under way (`storefs unmount --timeout` shortens it)
        self.stop_timeout = STOP_TIMEOUT

    def start(self, jobs: UploadJobs) -> None:
        """Start the workers, which run jobs for each scheduled key."""
        for i in range(self._workers):
            t = threading.Thread(target=self._run, args=(jobs,), name=f"storefs-upload-{i}", daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self, timeout: float | None = None) -> None:
        """Stop taking work; operations under way finish (their rows stay pending otherwise), waited for
        timeout seconds at most (default stop_timeout)."""
        timeout = self.stop_timeout if timeout is None else timeout
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
            self._changed.notify_all()
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))

    def schedule(self, key: str, delay: float = 0.0) -> None:
        """Run key's pending operation after delay (a later close pushes the quiet delay back)."""
        due = time.monotonic() + delay
        with self._cond:
            self._due[key] = due
            sooner = not self._heap or due < self._heap[0][0]
            heapq.heappush(self._heap, (due, next(self._seq), key))
            if sooner:  # the worker timed on the next due time must wake earlier
                self._cond.notify_all()

    def hurry(self) -> None:
        """Drop every quiet delay: flush and unmount want everything now (backoffs stay)."""
        with self._cond:
            now = time.monotonic()
            self._hurried_at = now
            for key, due in list(self._due.items()):
                if due > now and not self._attempts.get(key):
                    self._due[key] = now
                    heapq.heappush(self._heap, (now, next(self._seq), key))
            self._cond.notify_all()

    def kick(self) -> None:
        """A provider answers again: the keys that wait for it run now (a key of another provider that is
        still down fails once more and waits again)."""
        with self._cond:
            self._kicks += 1
            if not self._held:
                return
            now = time.monotonic()
            for key in self._held:
                if key in self._due:
                    self._due[key] = now
                    heapq.heappush(self._heap, (now, next(self._seq), key))
            log.info("a provider answers again: %d waiting change(s) go now", len(self._held))
            self._held.clear()
            self._cond.notify_all()

    def held(self) -> int:
        """How many keys wait for their provider to answer again (kick())."""
        with self._cond:
            return len(self._held)

    def in_flight(self) -> set[str]:
        with self._cond:
            return set(self._in_flight)

    def retries_due(self) -> dict[str, tuple[int, float]]:
        """Keys waiting for a retry after failed attempts: attempts so far, and when (monotonic seconds)
        the next one runs; a key whose attempt is under way is not waiting."""
        with self._cond:
            return {k: (n, self._due[k]) for k, n in self._attempts.items()
                    if n and k in self._due and k not in self._in_flight}

    def is_busy(self, key: str) -> bool:
        with self._cond:
            return key in self._in_flight

    def scheduled(self) -> int:
        with self._cond:
            return len(self._due) + len(self._in_flight)

    def wait_change(self, timeout: float) -> None:
        """Sleep until some operation finishes (or timeout), for flush's progress loop."""
        with self._cond:
            self._changed.wait(timeout)

    def _backoff(self, attempts: int) -> float:
        """The pause before the next attempt: doubling from BACKOFF_FIRST, capped, with jitter."""
        pause: float = min(self._max_backoff, BACKOFF_FIRST * 2.0 ** min(attempts, BACKOFF_MAX_DOUBLINGS))
        return pause * random.uniform(0.5, 1.0)

    def _next(self) -> str | None:
        with self._cond:
            while not self._stopping:
                now = time.monotonic()
                while self._heap:
                    due, _, key = self._heap[0]
                    if self._due.get(key) != due or key in self._in_flight:
                        heapq.heappop(self._heap)
                        if key in self._in_flight and self._due.get(key) == due:
                            # run again once the current operation is over
                            self._due.pop(key, None)
                            self._requeue_after_flight.add(key)
                        continue
                    break
                hold = self._hold(now) if self._heap and self._heap[0][0] <= now else 0.0
                if self._heap and self._heap[0][0] <= now and hold <= 0.0:
                    _, _, key = heapq.heappop(self._heap)
                    del self._due[key]
                    self._in_flight.add(key)
                    if self._heap:
                        self._cond.notify()  # the next key may be due too, or needs a timed watcher
                    return key
                if self._timer_taken or not self._heap:
                    self._cond.wait()
                else:
                    self._timer_taken = True
                    try:
                        self._cond.wait(hold or self._heap[0][0] - now)
                    finally:
                        self._timer_taken = False
            return None

    def _hold(self, now: float) -> float:
        """How long the due key on top should give way to file activity (0: run it now)."""
        if self._idle is None:
            return 0.0
        due, _, key = self._heap[0]
        if due <= self._hurried_at or now - due >= YIELD_MAX or self._attempts.get(key):
            return 0.0
        idle = self._idle()
        if idle >= YIELD_QUIET:
            return 0.0
        return max(0.005, min(YIELD_QUIET - idle, due + YIELD_MAX - now))

    def _run(self, jobs: UploadJobs) -> None:
        while True:
            key = self._next()
            if key is None:
                return
            retry_in: float | None = None
            hold = False
            with self._cond:
                kicks = self._kicks
            try:
                wait = jobs.due_in(key)
                if wait is None:
                    with self._cond:
                        self._attempts.pop(key, None)
                elif wait > 0:
                    retry_in = wait
                elif self._all_down is not None and self._all_down():
                    hold = True  # no provider answers: the change waits for the kick, untried
                    retry_in = self._max_backoff
                else:
                    if self._attempts.get(key):
                        with self._cond:
                            self.retries += 1
                    jobs.sync(key)
                    with self._cond:
                        self._attempts.pop(key, None)
                        self.uploaded += 1
                    # sync may leave work behind (the file changed meanwhile): look again
                    if jobs.due_in(key) is not None:
                        retry_in = 0.0
            except Parked:
                with self._cond:
                    self._attempts.pop(key, None)
                    self.parked += 1
            except Exception as e:  # every other failure is retried: the row stays pending
                with self._cond:
                    n = self._attempts.get(key, 0) + 1
                    self._attempts[key] = n
                    self.failures += 1
                    hold = self._unanswered is not None and self._unanswered(e) and self._kicks == kicks
                if hold:
                    retry_in = self._max_backoff
                    log.warning("sync of %s failed (attempt %d; retried when the provider answers again, "
                                "%.0fs at most): %s", key, n, retry_in, e)
                else:
                    retry_in = self._backoff(n)
                    log.warning("sync of %s failed (attempt %d, retry in %.1fs): %s", key, n, retry_in, e)
                try:
                    jobs.failed(key, e, n)
                except Exception:
                    log.exception("recording the failure of %s failed", key)
            with self._cond:
                self._in_flight.discard(key)
                again = key in self._requeue_after_flight
                self._requeue_after_flight.discard(key)
                if again:
                    retry_in = 0.0 if retry_in is None else min(retry_in, 0.0)
                if hold and not again and self._kicks == kicks:
                    self._held.add(key)
                else:
                    self._held.discard(key)
                    if hold and not again:  # kicked while its failure was recorded: the provider is back
                        retry_in = self._backoff(self._attempts.get(key, 1))
                if retry_in is not None:
                    due = time.monotonic() + retry_in
                    old = self._due.get(key)
                    if old is None or due < old:
                        self._due[key] = due
                        sooner = not self._heap or due < self._heap[0][0]
                        heapq.heappush(self._heap, (due, next(self._seq), key))
                        if sooner:
                            self._cond.notify_all()
                self._changed.notify_all()
