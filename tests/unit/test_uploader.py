"""Uploader scheduling: quiet delays, giving way to file activity, flush's hurry, retries."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator

import pytest

from storefs.cache import uploader as uploader_mod
from storefs.cache.uploader import Uploader, UploadJobs


class Recorder:
    """The upload jobs of a fake core: records when each key was synced, failing the first `fail` attempts."""

    def __init__(self, fail: int = 0) -> None:
        self.synced: dict[str, float] = {}
        self.pending: set[str] = set()
        self.fail = fail
        self.done = threading.Event()
        self.failed_once = threading.Event()  # the uploader has recorded a failed attempt

    def due_in(self, key: str) -> float | None:
        return 0.0 if key in self.pending else None

    def sync(self, key: str) -> None:
        if self.fail:
            self.fail -= 1
            raise OSError("provider away")
        self.pending.discard(key)
        self.synced[key] = time.monotonic()
        if not self.pending:
            self.done.set()

    def failed(self, key: str, error: BaseException, attempts: int) -> None:
        self.failed_once.set()

    def jobs(self) -> UploadJobs:
        return UploadJobs(due_in=self.due_in, sync=self.sync, failed=self.failed)


class Activity:
    """The file system's activity clock: busy() marks a change now."""

    def __init__(self) -> None:
        self.at = time.monotonic()

    def busy(self) -> None:
        self.at = time.monotonic()

    def idle(self) -> float:
        return time.monotonic() - self.at


def keep_busy(act: Activity, stop: threading.Event) -> threading.Thread:
    def run() -> None:
        while not stop.is_set():
            act.busy()
            time.sleep(0.005)
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


@contextlib.contextmanager
def uploading_during_a_burst(rec: Recorder,
                             workers: int) -> Iterator[tuple[Uploader, threading.Event, threading.Thread]]:
    """A started uploader while a burst of file activity goes on (until the event is set)."""
    act, stop = Activity(), threading.Event()
    up = Uploader(workers=workers, idle=act.idle)
    up.start(rec.jobs())
    burst = keep_busy(act, stop)
    try:
        yield up, stop, burst
    finally:
        stop.set()
        burst.join()
        up.stop()


def test_due_uploads_give_way_to_a_burst_then_run(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(uploader_mod, "YIELD_MAX", 30.0)
    rec = Recorder()
    rec.pending = {"a", "b"}
    with uploading_during_a_burst(rec, workers=4) as (up, stop, burst):
        up.schedule("a", 0.0)
        up.schedule("b", 0.0)
        time.sleep(0.5)
        assert rec.synced == {}  # the burst goes on: nothing uploads
        stop.set()
        burst.join()
        quiet = time.monotonic()
        assert rec.done.wait(5)
        assert min(rec.synced.values()) >= quiet


def test_giving_way_is_bounded_and_flush_never_waits(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(uploader_mod, "YIELD_MAX", 0.4)
    rec = Recorder()
    rec.pending = {"late", "flushed"}
    with uploading_during_a_burst(rec, workers=2) as (up, _stop, _burst):
        up.schedule("flushed", 10.0)  # a quiet delay flush drops
        time.sleep(0.1)
        t0 = time.monotonic()
        up.hurry()
        up.schedule("late", 0.0)  # scheduled after the flush began: it gives way
        deadline = time.monotonic() + 5
        while "flushed" not in rec.synced and time.monotonic() < deadline:
            time.sleep(0.01)
        assert rec.synced["flushed"] - t0 < 0.35  # hurried: it did not give way
        assert rec.done.wait(5)
        assert 0.35 <= rec.synced["late"] - t0 < 2.0  # gave way for YIELD_MAX, then ran under the burst


def test_retries_do_not_give_way(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(uploader_mod, "YIELD_MAX", 30.0)
    rec, act, stop = Recorder(fail=1), Activity(), threading.Event()
    rec.pending = {"k"}
    up = Uploader(workers=1, idle=act.idle)
    up.start(rec.jobs())
    up.schedule("k", 0.0)
    assert rec.failed_once.wait(5)  # the first attempt fails at once (nothing is busy yet)
    burst = keep_busy(act, stop)
    try:
        assert rec.done.wait(5)  # the retry (after its backoff) runs under the burst
        assert up.retries == 1
    finally:
        stop.set()
        burst.join()
        up.stop()


def test_a_parked_operation_is_neither_retried_nor_counted_as_done() -> None:
    from storefs.cache.uploader import Parked

    class Refused(Recorder):
        calls = 0

        def sync(self, key: str) -> None:
            self.calls += 1
            self.done.set()
            raise Parked("refused for good")

    rec = Refused()
    rec.pending = {"k"}
    up = Uploader(workers=1)
    up.start(rec.jobs())
    try:
        up.schedule("k", 0.0)
        assert rec.done.wait(5)
        deadline = time.monotonic() + 5
        while up.scheduled() and time.monotonic() < deadline:
            up.wait_change(0.05)
        time.sleep(0.6)  # longer than the first backoff: a retry would have run by now
        assert (rec.calls, up.parked, up.uploaded, up.failures, up.scheduled()) == (1, 1, 0, 0, 0)
        assert not rec.failed_once.is_set()
    finally:
        up.stop()
