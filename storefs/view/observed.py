"""Every provider request timed and watched: latency histograms, and the provider's outage record.

The daemon wraps each provider in ObservedProvider, so lookups, reads and uploads alike pass here.
A request that gets no whole answer (ProviderUnavailable, not ProviderBusy) puts its provider down in
ProviderHealth; any answer (a missing key and a refusal included) ends that. A request that hangs
(a frozen server accepts connections and never answers) fails only after the client's timeouts and
retries; so when a request has made no progress for PROBE_AFTER seconds, a probe is sent, and a
provider that does not answer it within PROBE_TIMEOUT is down from then. While down it is probed
every PROBE_EVERY seconds (one probe in flight per provider, so a dead server is never hammered),
and the first answer brings it back up: the uploader's waiting changes go at once (ProviderHealth.on_back).
A probe is the provider's probe() where it has one (S3: one HEAD, one attempt, short timeouts), else a
HEAD of a key that does not exist: any answer will do.

While a provider is down, a read of data (get_range, read_stream) fails at once with the outage's error
instead of waiting out its own deadline again: the first request that met the outage paid it (the
kernel retries a failed read once on its own). Once the outage is sure (a probe got no answer either,
or a request got none after trying for SURE_AFTER seconds), writes (the uploader's) fail at once too:
the uploader's changes wait for the probe to hear the provider again rather than hang on a frozen
server or retry against a dead one; one request that failed at once stops no other write.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from ..errors import ProviderBusy, ProviderUnavailable
from ..metrics import PROVIDER_LATENCY
from ..providers.base import Provider
from .health import ProviderHealth

log = logging.getLogger(__name__)

#: a request with no progress for this long (seconds) has its provider probed
PROBE_AFTER = 5.0
#: a probe not answered in this long (seconds) puts its provider down
PROBE_TIMEOUT = 5.0
#: a provider that is down is probed this often (seconds), one probe at a time
PROBE_EVERY = 1.0
#: a request that got no answer after trying this long (seconds: S3's retries) confirms an outage as a probe does
SURE_AFTER = 1.0
#: how often (seconds) the watcher looks at the requests under way and at the providers that are down
WATCH_EVERY = 0.5
#: the key a probe asks for (missing or not, any answer will do)
PROBE_KEY = ".storefs-probe"

#: provider method -> the operation its latency is counted under
OPERATIONS = {
    "head": "head", "head_many": "head", "head_dir": "head", "dir_exists": "list", "list": "list", "walk": "list",
    "get_range": "get", "get_range_into": "get", "read_stream": "get", "put_file": "put", "set_meta": "set_meta",
    "copy": "copy",
    "delete": "delete", "delete_many": "delete", "make_dir": "make_dir", "remove_dir": "remove_dir",
}
#: the methods that answer with an iterator: timed until it is used up
STREAMS = frozenset({"list", "walk", "read_stream", "head_many"})
#: the operations that fail at once while their provider is down: data reads (no cache answers for them) ...
FAIL_FAST = frozenset({"get"})
#: ... and, once a probe got no answer either, writes (the uploader retries them when the provider answers
#: again); lookups have their own breaker
FAIL_FAST_CONFIRMED = frozenset({"put", "set_meta", "copy", "delete", "make_dir", "remove_dir"})


def _unanswered(error: BaseException | None) -> bool:
    """Whether a request ended without any answer (ProviderBusy is an answer)."""
    return isinstance(error, ProviderUnavailable) and not isinstance(error, ProviderBusy)


def not_answering(pname: str, error: str) -> ProviderUnavailable:
    """The error of a read or write while pname is down: the same words for the request that met the
    outage and for those that fail at once after it (the kernel's retry of a read), so that the edge,
    which logs a line once however often it repeats at once, logs one."""
    return ProviderUnavailable(f"provider {pname} is not answering: {error}")


class Watcher:
    """The requests under way, per provider, and the probes sent when one hangs (thread-safe)."""

    def __init__(self, health: ProviderHealth, probe_after: float = PROBE_AFTER,
                 probe_timeout: float = PROBE_TIMEOUT, clock: Callable[[], float] = time.monotonic,
                 probe_every: float = PROBE_EVERY) -> None:
        self.health = health
        self.probe_after = probe_after
        self.probe_timeout = probe_timeout
        self.probe_every = probe_every
        self._clock = clock
        self._providers: dict[str, Provider] = {}
        # protects _requests, _probes, _last_probe and _thread
        self._lock = threading.Lock()
        self._requests: dict[int, tuple[str, str, float]] = {}  # id -> (provider, operation, last progress)
        self._probes: dict[str, float] = {}  # provider -> when its probe under way was sent
        self._last_probe: dict[str, float] = {}
        self._ids = itertools.count()
        self._thread: threading.Thread | None = None

    def add(self, provider: Provider) -> None:
        """Watch provider (probes go to it directly, unobserved)."""
        self._providers[provider.name] = provider

    def begin(self, pname: str, op: str) -> int:
        """A request under way; the watcher thread runs while any is, or while a provider is down. A data
        read fails at once (ProviderUnavailable) while pname is down, a write once that is confirmed."""
        error = (self.health.outage(pname) if op in FAIL_FAST
                 else self.health.outage(pname, confirmed=True) if op in FAIL_FAST_CONFIRMED else None)
        now = self._clock()
        with self._lock:
            rid = next(self._ids)
            if error is None:
                self._requests[rid] = (pname, op, now)
            if self._thread is None:
                self._thread = threading.Thread(target=self._watch, name="storefs-watch", daemon=True)
                self._thread.start()
        if error is not None:
            raise not_answering(pname, error)
        return rid

    def progress(self, rid: int) -> None:
        """The request made progress (a page of a listing, a chunk of a read)."""
        now = self._clock()
        with self._lock:
            r = self._requests.get(rid)
            if r is not None:
                self._requests[rid] = (r[0], r[1], now)

    def end(self, rid: int, pname: str, error: BaseException | None, took: float = 0.0) -> None:
        """The request is over (after took seconds): answered (error None or any error but no answer), or not."""
        with self._lock:
            self._requests.pop(rid, None)
        if _unanswered(error):
            self.health.no_answer(pname, str(error), sure=took >= SURE_AFTER)
        else:
            self.health.answered(pname)

    def _watch(self) -> None:
        """Probe providers with a hung request, and providers that are down; ends when no request is under
        way, no provider is down and no probe is out (begin() starts it again)."""
        while True:
            time.sleep(WATCH_EVERY)
            now = self._clock()
            down = {p for p, h in self.health.report(list(self._providers)).items() if h["state"] == "down"}
            with self._lock:
                hung = {p for p, _, seen in self._requests.values() if now - seen >= self.probe_after}
                if not self._requests and not down and not self._probes:
                    self._thread = None
                    return
                due = [p for p in hung | down if p not in self._probes
                       and now - self._last_probe.get(p, float("-inf"))
                       >= (self.probe_every if p in down else self.probe_after)]
                for p in due:
                    self._probes[p] = self._last_probe[p] = now
                late = [p for p, sent in self._probes.items() if now - sent >= self.probe_timeout]
            for p in due:
                threading.Thread(target=self._probe, args=(p,), name=f"storefs-probe-{p}", daemon=True).start()
            for p in late:
                ops = sorted({op for q, op, _ in self._requests_of(p)})
                self.health.no_answer(p, f"no answer to a probe in {self.probe_timeout:g}s"
                                         + (f" ({', '.join(ops)} under way)" if ops else ""), sure=True)

    def _requests_of(self, pname: str) -> list[tuple[str, str, float]]:
        with self._lock:
            return [r for r in self._requests.values() if r[0] == pname]

    def _probe(self, pname: str) -> None:
        """One cheap request: not found, or any other answer, means pname answers."""
        error: BaseException | None = None
        t0 = self._clock()
        provider = self._providers[pname]
        probe = getattr(provider, "probe", None)  # a provider's own cheap probe (S3: one attempt, short timeouts)
        try:
            if probe is not None:
                probe()
            else:
                provider.head(PROBE_KEY)
        except Exception as e:  # an answer or not: end() tells them apart
            error = e
        PROVIDER_LATENCY.observe((pname, "probe"), self._clock() - t0)
        with self._lock:
            self._probes.pop(pname, None)
        if _unanswered(error):
            self.health.no_answer(pname, f"probe: {error}", sure=True)
        else:
            self.health.answered(pname)


class ObservedProvider:
    """A provider whose requests are timed (PROVIDER_LATENCY) and watched (Watcher); the rest is the provider's."""

    _inner: Provider
    _watcher: Watcher

    def __init__(self, inner: Provider, watcher: Watcher) -> None:
        object.__setattr__(self, "_inner", inner)
        object.__setattr__(self, "_watcher", watcher)
        watcher.add(inner)

    def __getattr__(self, attr: str) -> Any:
        value = getattr(self._inner, attr)
        op = OPERATIONS.get(attr)
        if op is None or not callable(value):
            return value
        if attr in STREAMS:
            return lambda *args, **kwargs: self._stream(op, value, args, kwargs)
        return lambda *args, **kwargs: self._call(op, value, args, kwargs)

    def __setattr__(self, attr: str, value: Any) -> None:
        setattr(self._inner, attr, value)

    @property
    def inner(self) -> Provider:
        """The provider itself."""
        return self._inner

    def _call(self, op: str, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        pname = self._inner.name
        rid = self._watcher.begin(pname, op)
        t0 = time.monotonic()
        error: BaseException | None = None
        try:
            return fn(*args, **kwargs)
        except BaseException as e:
            error = e
            if op in FAIL_FAST | FAIL_FAST_CONFIRMED and _unanswered(e):
                raise not_answering(pname, str(e)) from e
            raise
        finally:
            took = time.monotonic() - t0
            PROVIDER_LATENCY.observe((pname, op), took)
            self._watcher.end(rid, pname, error, took)

    def _stream(self, op: str, fn: Callable[..., Iterator[Any]], args: tuple[Any, ...],
                kwargs: dict[str, Any]) -> Iterator[Any]:
        pname = self._inner.name
        rid = self._watcher.begin(pname, op)
        t0 = time.monotonic()
        error: BaseException | None = None
        try:
            for item in fn(*args, **kwargs):
                self._watcher.progress(rid)
                yield item
        except BaseException as e:
            error = e if not isinstance(e, GeneratorExit) else None
            if op in FAIL_FAST and _unanswered(e):
                raise not_answering(pname, str(e)) from e
            raise
        finally:
            took = time.monotonic() - t0
            PROVIDER_LATENCY.observe((pname, op), took)
            self._watcher.end(rid, pname, error, took)


def observe_providers(providers: dict[str, Provider], health: ProviderHealth,
                      watcher: Watcher | None = None) -> dict[str, Provider]:
    """Each provider wrapped in ObservedProvider, reporting to health."""
    watcher = watcher or Watcher(health)
    return {name: ObservedProvider(p, watcher) for name, p in providers.items()}  # type: ignore[misc]
