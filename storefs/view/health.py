"""Whether each provider answers: down after a failure (a circuit breaker with backoff), slow while
a call to it has made no progress for a moment.

Only a request that got no whole answer counts (ProviderUnavailable: connection refused, reset,
timed out). Anything that is an answer fails its own request and says nothing of the provider:
a missing key, a refusal (4xx), a server busy for now (ProviderBusy: 5xx, 429, SlowDown, after its
retries; callers still answer from their cache as for an outage), an answer this client cannot
read (malformed, too many headers, a body too large), a conflict or a limit. Being down never
lasts longer than max_down_for: the next call after that asks the provider again.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from ..errors import ProviderBusy, ProviderUnavailable
from .tunables import DEFAULT_TUNABLES, ViewTunables

log = logging.getLogger(__name__)

T = TypeVar("T")


class ProviderHealth:
    """Per provider: down until when (with backoff), and the calls to it under way."""

    def __init__(self, clock: Callable[[], float] = time.monotonic,
                 tunables: ViewTunables = DEFAULT_TUNABLES) -> None:
        self._clock = clock
        self._t = tunables
        self._lock = threading.Lock()  # protects _down_until, _failures and _calls
        self._down_until: dict[str, float] = {}
        self._failures: dict[str, int] = {}  # failures in a row, for the backoff
        self._calls: dict[int, tuple[str, float]] = {}  # call id -> (provider, when it last made progress)
        self._ids = itertools.count()

    def is_down(self, pname: str) -> bool:
        """Whether pname failed to answer a moment ago (callers then use what they know)."""
        with self._lock:
            return self._down_until.get(pname, 0.0) > self._clock()

    def is_slow(self, pname: str) -> bool:
        """Whether a call to pname has made no progress for slow_after (a server that hangs)."""
        stuck = self._clock() - self._t.slow_after
        with self._lock:
            return any(p == pname and seen <= stuck for p, seen in self._calls.values())

    def answering(self, pname: str) -> bool:
        """Neither down nor slow: a request may wait for pname's answer."""
        return not self.is_down(pname) and not self.is_slow(pname)

    def mark_down(self, pname: str) -> float:
        """pname failed to answer: calls fail fast for a while, longer after each failure in a row."""
        with self._lock:
            n = self._failures.get(pname, 0) + 1
            self._failures[pname] = n
            wait = min(self._t.max_down_for, self._t.down_for * 2.0 ** (n - 1))
            self._down_until[pname] = self._clock() + wait
        log.warning("provider %s is not answering; serving from the cache for %.0fs", pname, wait)
        return wait

    def mark_up(self, pname: str) -> None:
        """pname answered someone else (an upload): lookups may ask it again."""
        with self._lock:
            was_down = self._down_until.pop(pname, None) is not None
            self._failures.pop(pname, None)
        if was_down:
            log.info("provider %s answers again", pname)

    @contextmanager
    def calling(self, pname: str) -> Iterator[Callable[[], None]]:
        """A call to pname under way: fails fast while pname is down, marks it down on
        ProviderUnavailable; yields a function the caller calls whenever the call makes progress
        (a listing page arrived), so a long listing is not taken for a hang."""
        call = self._begin(pname)

        def progress() -> None:
            now = self._clock()
            with self._lock:
                if call in self._calls:
                    self._calls[call] = (pname, now)
        try:
            yield progress
        except ProviderUnavailable as e:
            self._failed(call, pname, e)
            raise
        except BaseException:
            self._end(call, answered=pname)
            raise
        self._end(call, answered=pname)

    def call(self, pname: str, fn: Callable[..., T], *args: object) -> T:
        """fn(*args), a request to pname, tracked as calling() does (written out: lookups on a
        local disk take microseconds, and a context manager would double them)."""
        call = self._begin(pname)
        try:
            result = fn(*args)
        except ProviderUnavailable as e:
            self._failed(call, pname, e)
            raise
        except BaseException:
            self._end(call, answered=pname)  # an answer all the same (not found, refused)
            raise
        self._end(call, answered=pname)
        return result

    def _failed(self, call: int, pname: str, error: ProviderUnavailable) -> None:
        """The call ended unanswered (pname is down) or busy (pname answered: its backoff starts over)."""
        if isinstance(error, ProviderBusy):
            self._end(call, answered=pname)
        else:
            self._end(call)
            self.mark_down(pname)

    def _begin(self, pname: str) -> int:
        """Register a call to pname, or fail fast while it is down."""
        now = self._clock()
        with self._lock:
            if self._down_until.get(pname, 0.0) > now:
                raise ProviderUnavailable(f"provider {pname} is not answering")
            call = next(self._ids)
            self._calls[call] = (pname, now)
        return call

    def _end(self, call: int, answered: str | None = None) -> None:
        """The call is over; answered: its provider answered, so its backoff starts over."""
        with self._lock:
            self._calls.pop(call, None)
            if answered is not None:
                self._failures.pop(answered, None)
