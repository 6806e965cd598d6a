"""The S3 provider's one retry policy: which failures retry, how often, how long between, and for how long in all.

Two kinds of failure retry: ProviderUnavailable (the request got no whole answer) and
ProviderBusy (the server answered that it is overloaded: 5xx, 429, SlowDown, RequestTimeout);
every other error is raised at once, and giving up raises the last error's own kind. Between
attempts: min(2 s, 0.1 s * 2**n) times a random factor in [0.5, 1) (n = 1, 2, ...); after a
busy answer at least BUSY_PAUSE, or the Retry-After the server sent when that is longer. A
Retry-After longer than RETRY_AFTER_MAX, or past the class's deadline, ends the operation at
once (the uploader's own backoff, or the caller, takes over) instead of asking again too soon.
Each operation belongs to one class, derived from the config keys connect_timeout (C),
read_timeout (R), max_attempts (N) and read_deadline (D); the end-to-end bounds are:

- lookup (HEAD, a listing page of list/dir_exists/head_dir): until a deadline of min(5 s, D);
  each attempt connects within min(C, 3 s) and waits at most min(R, 5 s) per socket read, both
  cut to what is left of the deadline, and no attempt starts after it: a lookup fails within
  min(5 s, D) plus at most 0.2 s, so a mount falls back on its cache while a server is away.
- read (a ranged GET, a page of walk, a piece of read_stream): the same with the deadline D
  and C, R per attempt: within D plus at most 0.2 s.
- write (PUT, COPY, DELETE, a batch delete): N attempts, each connecting within C and waiting
  at most R per socket read: at most N * (C + R) plus the pauses (at most RETRY_AFTER_MAX
  each): 195 s with the defaults (C = 5 s, R = 30 s, N = 5).
- check (the bucket at mount time): 2 attempts of min(C, 3 s) + min(R, 4 s) and one pause: at most 19 s.
- probe (a HEAD of the bucket while the provider is down, once a second at most): one attempt of
  min(C, 3 s) + min(R, 5 s), no retry: a dead server costs one refused connection per probe.

The bounds hold every wait on the socket; a server that keeps sending a body a few bytes at
a time, or takes a big PUT body slowly but steadily, can stretch one attempt past them.

A read_deadline of 0 gives lookups and reads one attempt with their timeouts and no deadline.
boto3's own requests (the parts of a multipart upload or copy) retry in botocore's standard
mode with the same N attempts, C and R, and botocore's back-off (up to 20 s between tries);
a multipart transfer's end-to-end time grows with its size.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any, TypeVar

from ... import errors
from .http import MIN_WAIT, Timeouts

log = logging.getLogger(__name__)

T = TypeVar("T")

#: a lookup answers the FUSE layer directly: it gives up after this many seconds (or read_deadline, if shorter)
LOOKUP_DEADLINE = 5.0
#: a lookup or check connects within this many seconds (or connect_timeout, if shorter)
QUICK_CONNECT = 3.0
#: check() waits at most this long for each read (or read_timeout, if shorter), twice
CHECK_READ = 4.0
CHECK_ATTEMPTS = 2
#: a probe waits at most this long (or read_timeout, if shorter) for its answer, once
PROBE_READ = 5.0
BACKOFF_BASE = 0.1
BACKOFF_CAP = 2.0
#: the shortest pause after a busy answer (SlowDown, 503, 429): a throttled server needs a moment
BUSY_PAUSE = 0.5
#: the longest Retry-After waited for within one operation; a longer one ends the operation
RETRY_AFTER_MAX = 5.0


@dataclass(frozen=True)
class Limits:
    """How one class of operation retries: attempts (None: until the deadline), deadline, per-attempt timeouts."""

    name: str
    attempts: int | None
    deadline: float | None
    timeouts: Timeouts

    def bound(self) -> float:
        """Seconds the operation may take in all, retries included (with the caveat on slow bodies above)."""
        if self.deadline is not None:
            return self.deadline + 2 * MIN_WAIT
        n = self.attempts or 1
        return n * (self.timeouts.connect + self.timeouts.read) + (n - 1) * RETRY_AFTER_MAX


def backoff(retry: int) -> float:
    """The longest pause before retry number `retry` (1, 2, ...); the pause taken is 0.5 to 1 times it."""
    return min(BACKOFF_CAP, BACKOFF_BASE * 2.0 ** retry)


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (seconds, or an HTTP date); None when absent or unreadable."""
    if not value:
        return None
    text = value.strip()
    try:
        return max(0.0, float(text))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(text).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


class RetryPolicy:
    """Runs each request of the provider under its class's limits (see the module docstring)."""

    def __init__(self, connect_timeout: float, read_timeout: float, max_attempts: int, read_deadline: float, *,
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep,
                 jitter: Callable[[], float] = random.random) -> None:
        self._clock, self._sleep, self._jitter = clock, sleep, jitter
        c, r, d = float(connect_timeout), float(read_timeout), float(read_deadline)
        if d > 0:
            lookup_deadline = min(LOOKUP_DEADLINE, d)
            self.lookup = Limits("lookup", None, lookup_deadline,
                                 Timeouts(min(c, QUICK_CONNECT), min(r, lookup_deadline)))
            self.read = Limits("read", None, d, Timeouts(min(c, d), min(r, d)))
        else:
            self.lookup = Limits("lookup", 1, None, Timeouts(min(c, QUICK_CONNECT), min(r, LOOKUP_DEADLINE)))
            self.read = Limits("read", 1, None, Timeouts(c, r))
        self.write = Limits("write", max(1, int(max_attempts)), None, Timeouts(c, r))
        self.check = Limits("check", CHECK_ATTEMPTS, None, Timeouts(min(c, QUICK_CONNECT), min(r, CHECK_READ)))
        self.probe = Limits("probe", 1, None, Timeouts(min(c, QUICK_CONNECT), min(r, PROBE_READ)))

    @classmethod
    def from_config(cls, cfg: Any) -> RetryPolicy:
        """The policy of one `providers.NAME` section of type s3."""
        return cls(cfg.connect_timeout, cfg.read_timeout, cfg.max_attempts, cfg.read_deadline)

    def botocore_retries(self) -> dict[str, Any]:
        """botocore's retry settings for boto3's requests (multipart parts): the write class's attempts."""
        return {"total_max_attempts": self.write.attempts, "mode": "standard"}

    def run(self, limits: Limits, what: str, attempt: Callable[[Timeouts], T]) -> T:
        """attempt(timeouts) until it succeeds, fails for good, or limits say stop; storefs errors only."""
        start = self._clock()
        end = None if limits.deadline is None else start + limits.deadline
        tries = 0
        while True:
            timeouts = limits.timeouts
            if end is not None:
                left = max(MIN_WAIT, end - self._clock())
                timeouts = Timeouts(min(timeouts.connect, left), min(timeouts.read, left), time.monotonic() + left)
            tries += 1
            try:
                return attempt(timeouts)
            except errors.ProviderUnavailable as e:  # ProviderBusy too
                err = e
            delay = self._pause(tries, err)
            out_of_tries = limits.attempts is not None and tries >= limits.attempts
            if out_of_tries or delay > RETRY_AFTER_MAX or (end is not None and self._clock() + delay >= end):
                raise _gave_up(err, tries, self._clock() - start, delay if delay > RETRY_AFTER_MAX else None)
            log.debug("%s: %s; retry %d in %.2fs", what, err, tries, delay)
            self._sleep(delay)

    def _pause(self, tries: int, err: errors.ProviderUnavailable) -> float:
        """Seconds to wait before the next attempt: the backoff, or more after a busy answer."""
        delay = backoff(tries) * (0.5 + self._jitter() / 2)
        if isinstance(err, errors.ProviderBusy):
            delay = max(delay, BUSY_PAUSE, err.retry_after or 0.0)
        return delay


def _gave_up(err: errors.ProviderUnavailable, tries: int, took: float,
             asked: float | None) -> errors.ProviderUnavailable:
    """The last error again, of its own kind, saying how long the operation tried."""
    why = f"the server asks to wait {asked:.0f}s, " if asked is not None else ""
    message = f"{err} (gave up after {why}{tries} attempt{'s' if tries > 1 else ''}, {took:.1f}s)"
    if isinstance(err, errors.ProviderBusy):
        return errors.ProviderBusy(message, retry_after=err.retry_after)
    return errors.ProviderUnavailable(message)
