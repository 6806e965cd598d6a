"""The S3 provider's retry policy on a fake clock: what retries, how often, and the bounds it states."""

from __future__ import annotations

import pytest

from storefs import errors
from storefs.providers.s3.http import Timeouts
from storefs.providers.s3.retry import BACKOFF_CAP, RetryPolicy


class Clock:
    """A clock that moves only when the policy sleeps or an attempt says it took time."""

    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def policy(clock: Clock, **kw) -> RetryPolicy:
    settings = {"connect_timeout": 5.0, "read_timeout": 30.0, "max_attempts": 5, "read_deadline": 20.0, **kw}
    return RetryPolicy(**settings, clock=clock, sleep=clock.sleep, jitter=lambda: 1.0)


def failing(clock: Clock, exc: Exception, times: int, cost: float = 0.0):
    """An attempt that fails `times` times (each taking `cost` seconds, or its read timeout if shorter, as a
    hung server would), then answers 'ok'; it notes its timeouts."""
    seen: list[Timeouts] = []

    def attempt(timeouts: Timeouts) -> str:
        seen.append(timeouts)
        clock.now += min(cost, timeouts.read)
        if len(seen) <= times:
            raise exc
        return "ok"
    return attempt, seen


def test_only_unavailable_retries_and_writes_stop_after_max_attempts():
    clock = Clock()
    p = policy(clock)
    attempt, seen = failing(clock, errors.ProviderUnavailable("busy"), 2)
    assert p.run(p.write, "k", attempt) == "ok" and len(seen) == 3
    assert seen[0] == Timeouts(5.0, 30.0) and clock.slept == [0.2, 0.4]
    for exc in (errors.NotFound("k"), errors.AccessDenied("k"), errors.ProviderError("k"), errors.TooLarge("k")):
        attempt, seen = failing(clock, exc, 1)
        with pytest.raises(type(exc)):
            p.run(p.write, "k", attempt)
        assert len(seen) == 1
    attempt, seen = failing(clock, errors.ProviderUnavailable("busy"), 99)
    with pytest.raises(errors.ProviderUnavailable, match=r"busy \(gave up after 5 attempts"):
        p.run(p.write, "k", attempt)
    assert len(seen) == 5


def test_reads_and_lookups_stop_at_their_deadline_and_cut_their_timeouts_to_it():
    clock = Clock()
    p = policy(clock, read_deadline=3.0)
    attempt, seen = failing(clock, errors.ProviderUnavailable("down"), 99, cost=1.0)
    with pytest.raises(errors.ProviderUnavailable, match=r"gave up after 3 attempts, 3\.0s"):
        p.run(p.read, "k", attempt)
    assert clock.now <= 3.0 + 0.2 and seen[2].read == pytest.approx(3.0 - 2.6)
    assert (seen[0].connect, seen[0].read) == (3.0, 3.0)
    assert seen[1].read == pytest.approx(3.0 - 1.2) and seen[1].until is not None
    clock = Clock()
    p = policy(clock)
    attempt, seen = failing(clock, errors.ProviderUnavailable("down"), 99, cost=0.5)
    with pytest.raises(errors.ProviderUnavailable):
        p.run(p.lookup, "k", attempt)
    assert (seen[0].connect, seen[0].read) == (3.0, 5.0) and clock.now <= 5.0 + 0.2 and len(seen) > 2


def test_a_read_deadline_of_zero_is_one_attempt():
    clock = Clock()
    p = policy(clock, read_deadline=0)
    attempt, seen = failing(clock, errors.ProviderUnavailable("down"), 99)
    with pytest.raises(errors.ProviderUnavailable, match="after 1 attempt,"):
        p.run(p.read, "k", attempt)
    assert len(seen) == 1 and seen[0] == Timeouts(5.0, 30.0)


def test_the_stated_bounds():
    p = policy(Clock())
    assert p.write.bound() == pytest.approx(5 * 35 + 0.2 + 0.4 + 0.8 + 1.6)  # 178 s with the defaults
    assert p.lookup.bound() == pytest.approx(5.2) and p.read.bound() == pytest.approx(20.2)
    assert p.check.bound() == pytest.approx(2 * (3 + 4) + 0.2)
    assert p.botocore_retries() == {"total_max_attempts": 5, "mode": "standard"}
    clock = Clock()
    q = policy(clock, max_attempts=12)
    attempt, _ = failing(clock, errors.ProviderUnavailable("busy"), 99)
    with pytest.raises(errors.ProviderUnavailable):
        q.run(q.write, "k", attempt)
    assert max(clock.slept) == BACKOFF_CAP and clock.now <= q.write.bound()
