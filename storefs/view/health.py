"""Whether each provider answers: down after a failure (a circuit breaker with backoff), slow while
a call to it has made no progress for a moment.

Only a request that got no whole answer counts (ProviderUnavailable: connection refused, reset,
timed out). Anything that is an answer fails its own request and says nothing of the provider:
a missing key, a refusal (4xx), a server busy for now (ProviderBusy: 5xx, 429, SlowDown, after its
retries; callers still answer from their cache as for an outage), an answer this client cannot
read (malformed, too many headers, a body too large), a conflict or a limit. Being down never
lasts longer than max_down_for: the next call after that asks the provider again.

Apart from that backoff (which only decides whether lookups wait), each provider has an outage record
for `storefs status` and the provider-down gauge: since when (wall clock) it has not answered and the
last error, from the first request that got no answer (a lookup, an upload, or a probe sent when a
request hangs: storefs.view.observed) until the next request that gets one. While that record stands,
reads of data that is not cached fail at once (the first read that met the outage paid its deadline),
and the functions given to on_back() are called when it ends: the uploader then retries the changes
that wait for the provider (the probe of storefs.view.observed notices its return within a second).
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from ..errors import ProviderBusy, ProviderUnavailable
from .tunables import DEFAULT_TUNABLES, ViewTunables

log = logging.getLogger(__name__)

T = TypeVar("T")


class ProviderHealth:
    """Per provider: down until when (with backoff), and the calls to it under way."""

    def __init__(self, clock: Callable[[], float] = time.monotonic,
                 tunables: ViewTunables = DEFAULT_TUNABLES, wall: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._wall = wall
        self._t = tunables
        self._lock = threading.Lock()  # protects _down_until, _failures, _calls, _outages and _confirmed
        self._down_until: dict[str, float] = {}
        self._outages: dict[str, tuple[float, str]] = {}  # provider -> (wall time it stopped answering, last error)
        self._confirmed: set[str] = set()  # providers in outage that a probe or a long try confirmed
        self._failures: dict[str, int] = {}  # failures in a row, for the backoff
        self._calls: dict[int, tuple[str, float]] = {}  # call id -> (provider, when it last made progress)
        self._ids = itertools.count()
        self._on_back: list[Callable[[str], None]] = []  # set up before any request: read without the lock

    def on_back(self, fn: Callable[[str], None]) -> None:
        """Have fn(pname) called (on the thread that saw the answer, no lock held) when pname answers after
        an outage, so that what waits for it goes at once (the uploader's waiting changes)."""
        self._on_back.append(fn)

    def outage(self, pname: str, confirmed: bool = False) -> str | None:
        """The last error while pname's last request (or probe) got no answer and none has since, else None:
        a read of data that is not cached then fails at once rather than wait out its deadline again.
        confirmed: only once a probe got no answer either, or a request that tried for a while (one request
        that failed at once is not enough to stop the others)."""
        with self._lock:
            outage = self._outages.get(pname)
            if confirmed and pname not in self._confirmed:
                return None
        return None if outage is None else outage[1]

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

    def no_answer(self, pname: str, error: str, sure: bool = False) -> None:
        """A request to pname got no answer: it is down (for status) from now, or since it first was; sure:
        a probe got none either, or the request tried for a while (outage(confirmed=True) answers then)."""
        with self._lock:
            since = self._outages.get(pname, (self._wall(), ""))[0]
            new = pname not in self._outages
            self._outages[pname] = (since, error)
            if sure:
                self._confirmed.add(pname)
        if new:
            log.warning("provider %s is not answering: %s", pname, error)

    def answered(self, pname: str) -> None:
        """A request to pname got an answer: its outage (if any) is over, and lookups may ask it again."""
        with self._lock:
            outage = self._outages.pop(pname, None)
            self._confirmed.discard(pname)
            if outage is not None:
                self._down_until.pop(pname, None)
                self._failures.pop(pname, None)
        if outage is not None:
            log.info("provider %s answers again (it did not since %s)", pname, _when(outage[0]))
            for fn in self._on_back:
                try:
                    fn(pname)
                except Exception:
                    log.exception("telling that provider %s answers again failed", pname)

    def report(self, names: list[str]) -> dict[str, dict[str, Any]]:
        """Per provider, for `storefs status`: up or down, since when (epoch seconds) and why, and
        whether a call to it has hung for a moment (slow)."""
        out: dict[str, dict[str, Any]] = {}
        for pname in names:
            with self._lock:
                outage = self._outages.get(pname)
            since, error = outage if outage is not None else (None, None)
            out[pname] = {"state": "up" if outage is None else "down", "since": since, "error": error,
                          "slow": self.is_slow(pname)}
        return out

    def mark_down(self, pname: str, error: str | None = None) -> float:
        """pname failed to answer: calls fail fast for a while, longer after each failure in a row."""
        self.no_answer(pname, error or "no answer")
        with self._lock:
            was_down = self._down_until.get(pname, 0.0) > self._clock()
            n = self._failures.get(pname, 0) + 1
            self._failures[pname] = n
            wait = min(self._t.max_down_for, self._t.down_for * 2.0 ** (n - 1))
            self._down_until[pname] = self._clock() + wait
        if not was_down:  # calls under way when it went down fail together: one line
            log.info("provider %s: lookups are served from the cache for %.0fs", pname, wait)
        return wait

    def mark_up(self, pname: str) -> None:
        """pname answered someone else (an upload): lookups may ask it again."""
        with self._lock:
            was_down = self._down_until.pop(pname, None) is not None
            self._failures.pop(pname, None)
        self.answered(pname)
        if was_down:
            log.debug("provider %s: lookups ask it again", pname)

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
            self.mark_down(pname, str(error))

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
                back = answered in self._outages
        if answered is not None and back:
            self.answered(answered)


def _when(epoch: float) -> str:
    """An epoch time for a log line, in UTC."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))
