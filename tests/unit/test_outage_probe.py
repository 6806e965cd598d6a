"""While a provider does not answer: the uploader's changes wait for a kick (not a retry timer), a probe
goes out about once a second (never two at a time), its first answer ends the outage and kicks the
queue, and reads and writes fail at once meanwhile."""

from __future__ import annotations

import threading
import time

import pytest

from storefs.cache.uploader import Uploader, UploadJobs
from storefs.daemon import unanswered
from storefs.errors import NotFound, ProviderBusy, ProviderError, ProviderUnavailable
from storefs.providers.memory import MemoryProvider
from storefs.providers.s3.retry import PROBE_READ, QUICK_CONNECT, RetryPolicy
from storefs.view import observed
from storefs.view.health import ProviderHealth
from storefs.view.observed import ObservedProvider, Watcher
from storefs.view.tunables import ViewTunables


class Flaky:
    """Upload jobs whose sync raises `error` while `down` is set, and records every attempt's time."""

    def __init__(self, error: BaseException) -> None:
        self.error = error
        self.down = threading.Event()
        self.down.set()
        self.pending = {"k"}
        self.attempts: list[float] = []
        self.failed_once = threading.Event()
        self.done = threading.Event()
        self.during_sync: list[threading.Event] = []  # set while an attempt runs, waited on if present

    def due_in(self, key: str) -> float | None:
        return 0.0 if key in self.pending else None

    def sync(self, key: str) -> None:
        self.attempts.append(time.monotonic())
        for ev in self.during_sync:
            ev.wait(5)
        if self.down.is_set():
            raise self.error
        self.pending.discard(key)
        self.done.set()

    def failed(self, key: str, error: BaseException, attempts: int) -> None:
        self.failed_once.set()

    def jobs(self) -> UploadJobs:
        return UploadJobs(due_in=self.due_in, sync=self.sync, failed=self.failed)


def _uploader(rec: Flaky) -> Uploader:
    up = Uploader(workers=1, max_backoff=60.0, unanswered=unanswered)
    up.start(rec.jobs())
    up.schedule("k", 0.0)
    return up


def test_a_change_whose_provider_did_not_answer_waits_for_the_kick_then_goes_at_once() -> None:
    rec = Flaky(ProviderUnavailable("cannot reach it"))
    up = _uploader(rec)
    try:
        assert rec.failed_once.wait(5)
        time.sleep(1.0)  # four times the first backoff: a timed retry would have run
        assert len(rec.attempts) == 1 and up.held() == 1
        (n, due), = up.retries_due().values()  # status shows it waiting, with the fallback as its next try
        assert n == 1 and due - time.monotonic() > 50
        rec.down.clear()
        t0 = time.monotonic()
        up.kick()
        assert rec.done.wait(5)
        assert rec.attempts[-1] - t0 < 0.2 and up.held() == 0 and up.retries == 1
    finally:
        up.stop()


def test_while_every_provider_is_down_a_due_change_waits_untried_for_the_kick() -> None:
    rec = Flaky(ProviderUnavailable("cannot reach it"))
    rec.down.clear()  # it would succeed: no attempt is made all the same
    down = threading.Event()
    down.set()
    up = Uploader(workers=1, max_backoff=60.0, unanswered=unanswered, all_down=down.is_set)
    up.start(rec.jobs())
    try:
        up.schedule("k", 0.0)
        deadline = time.monotonic() + 5
        while not up.held() and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.3)
        assert up.held() == 1 and rec.attempts == [] and up.failures == 0
        down.clear()
        up.kick()
        assert rec.done.wait(5) and len(rec.attempts) == 1 and up.held() == 0
    finally:
        up.stop()


@pytest.mark.parametrize("error", [ProviderBusy("503 SlowDown"), ProviderError("damaged body"), OSError("disk")],
                         ids=["busy", "error", "oserror"])
def test_a_provider_that_answers_with_an_error_keeps_the_backoff(error: BaseException) -> None:
    rec = Flaky(error)
    up = _uploader(rec)
    try:
        assert rec.failed_once.wait(5)
        rec.down.clear()
        assert rec.done.wait(5), "no retry on the backoff timer"  # the first backoff is 0.125-0.25 s
        assert up.held() == 0 and len(rec.attempts) == 2
    finally:
        up.stop()


def test_a_kick_during_the_attempt_is_not_lost() -> None:
    """The provider came back while the attempt that failed was under way: no wait for a kick that
    already came, the retry goes on the backoff."""
    rec = Flaky(ProviderUnavailable("cannot reach it"))
    gate = threading.Event()
    rec.during_sync.append(gate)
    up = _uploader(rec)
    try:
        deadline = time.monotonic() + 5
        while not rec.attempts and time.monotonic() < deadline:
            time.sleep(0.01)
        up.kick()  # while the first attempt runs
        gate.set()
        assert rec.failed_once.wait(5)
        rec.down.clear()
        assert rec.done.wait(5) and len(rec.attempts) == 2 and up.held() == 0
    finally:
        up.stop()


def test_the_end_of_an_outage_is_told_once_and_lifts_the_lookup_breaker() -> None:
    health = ProviderHealth(tunables=ViewTunables(down_for=30.0, max_down_for=30.0))
    back: list[str] = []
    health.on_back(back.append)
    health.mark_down("s3", "refused")
    assert health.is_down("s3") and health.outage("s3") == "refused"
    health.answered("s3")
    health.answered("s3")
    assert back == ["s3"]
    assert not health.is_down("s3") and health.outage("s3") is None


class DeadServer(MemoryProvider):
    """probe() fails (no answer) while `dead` is set, and notes when each probe ran and how many overlap."""

    def __init__(self, probe_takes: float = 0.0) -> None:
        super().__init__("mem")
        self.dead = threading.Event()
        self.probe_takes = probe_takes
        self.probes: list[float] = []
        self.running = 0
        self.most_at_once = 0
        self._lock = threading.Lock()

    def probe(self) -> None:
        with self._lock:
            self.probes.append(time.monotonic())
            self.running += 1
            self.most_at_once = max(self.most_at_once, self.running)
        try:
            time.sleep(self.probe_takes)
            if self.dead.is_set():
                raise ProviderUnavailable("connection refused")
        finally:
            with self._lock:
                self.running -= 1


def _watched(monkeypatch: pytest.MonkeyPatch, inner: DeadServer, probe_every: float = 0.2
             ) -> tuple[ProviderHealth, ObservedProvider]:
    monkeypatch.setattr(observed, "WATCH_EVERY", 0.02)
    health = ProviderHealth()
    return health, ObservedProvider(inner, Watcher(health, probe_every=probe_every, probe_timeout=10.0))


def _unreachable(*args: object, **kwargs: object) -> None:
    raise ProviderUnavailable("cannot reach it")


def test_a_down_provider_is_probed_about_every_interval_and_its_answer_kicks(monkeypatch: pytest.MonkeyPatch) -> None:
    inner = DeadServer()
    health, p = _watched(monkeypatch, inner)
    back = threading.Event()
    health.on_back(lambda _name: back.set())
    inner.dead.set()
    inner.put_file = _unreachable  # type: ignore[method-assign,assignment]
    with pytest.raises(ProviderUnavailable):
        p.put_file("k", "/nonexistent", None)
    time.sleep(1.0)
    assert 3 <= len(inner.probes) <= 6 and inner.most_at_once == 1, inner.probes  # every 0.2 s, never more
    assert not back.is_set()
    inner.dead.clear()
    t0 = time.monotonic()
    assert back.wait(2)
    assert time.monotonic() - t0 < 0.5 and health.outage("mem") is None


def test_one_probe_at_a_time_while_a_probe_hangs(monkeypatch: pytest.MonkeyPatch) -> None:
    inner = DeadServer(probe_takes=0.7)
    health, p = _watched(monkeypatch, inner, probe_every=0.05)
    inner.dead.set()
    health.no_answer("mem", "refused")
    with pytest.raises(ProviderUnavailable):
        p.get_range("k", 0, 10)  # fails at once, and starts the watcher
    time.sleep(1.6)
    assert inner.most_at_once == 1 and 2 <= len(inner.probes) <= 3, inner.probes


def test_reads_fail_at_once_while_down_writes_once_a_probe_confirmed_it(monkeypatch: pytest.MonkeyPatch) -> None:
    inner = DeadServer()
    inner.dead.set()
    health, p = _watched(monkeypatch, inner, probe_every=60.0)
    calls: list[str] = []
    inner.get_range = lambda *a: calls.append("get") or b""  # type: ignore[method-assign,assignment,func-returns-value]
    inner.delete = lambda *a, **k: calls.append("delete")  # type: ignore[method-assign,assignment,func-returns-value]
    health.no_answer("mem", "refused")  # one request got no answer
    t0 = time.monotonic()
    with pytest.raises(ProviderUnavailable, match="refused"):
        p.get_range("k", 0, 4)
    with pytest.raises(ProviderUnavailable, match="refused"):
        list(p.read_stream("k"))
    assert time.monotonic() - t0 < 0.1 and calls == []
    p.delete("k")  # one failed upload stops no other write ...
    assert calls == ["delete"]
    health.no_answer("mem", "probe: refused", sure=True)  # ... a probe that got no answer does
    with pytest.raises(ProviderUnavailable, match="probe: refused"):
        p.delete("k")
    assert calls == ["delete"]
    with pytest.raises(NotFound):
        p.head("missing")  # a lookup asks (its own breaker decides), and its answer ends the outage
    assert p.get_range("k", 0, 4) == b"" and calls == ["delete", "get"]
    p.delete("k")
    assert calls == ["delete", "get", "delete"]


def test_a_request_that_tried_a_while_without_answer_makes_the_outage_sure(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(observed, "SURE_AFTER", 0.05)
    inner = DeadServer()
    inner.dead.set()
    health, p = _watched(monkeypatch, inner, probe_every=60.0)
    calls: list[str] = []

    def slow_refusal(*args: object, **kwargs: object) -> None:
        calls.append("delete")
        time.sleep(0.1)  # S3's retries
        raise ProviderUnavailable("gave up after 5 attempts")
    inner.delete = slow_refusal  # type: ignore[method-assign,assignment]
    with pytest.raises(ProviderUnavailable):
        p.delete("a")
    with pytest.raises(ProviderUnavailable, match="gave up after 5 attempts"):
        p.delete("b")  # at once: the first one tried long enough
    assert calls == ["delete"]


def test_the_s3_probe_is_one_short_attempt() -> None:
    policy = RetryPolicy(connect_timeout=5.0, read_timeout=30.0, max_attempts=5, read_deadline=8.0)
    assert policy.probe.attempts == 1 and policy.probe.deadline is None
    assert (policy.probe.timeouts.connect, policy.probe.timeouts.read) == (QUICK_CONNECT, PROBE_READ)
    tries: list[int] = []

    def refused(_t: object) -> None:
        tries.append(1)
        raise ProviderUnavailable("connection refused")
    with pytest.raises(ProviderUnavailable):
        policy.run(policy.probe, "bucket b", refused)
    assert tries == [1]
