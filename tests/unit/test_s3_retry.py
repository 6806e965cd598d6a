"""The S3 provider's retry policy on a fake clock: what retries, how often, and the bounds it states."""

from __future__ import annotations

import pytest

from storefs import errors
from storefs.providers.s3.http import Timeouts
from storefs.providers.s3.retry import BACKOFF_CAP, BUSY_PAUSE, RETRY_AFTER_MAX, RetryPolicy, parse_retry_after


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
    assert p.write.bound() == pytest.approx(5 * 35 + 4 * RETRY_AFTER_MAX)  # 195 s with the defaults
    assert p.lookup.bound() == pytest.approx(5.2) and p.read.bound() == pytest.approx(20.2)
    assert p.check.bound() == pytest.approx(2 * (3 + 4) + RETRY_AFTER_MAX)
    assert p.botocore_retries() == {"total_max_attempts": 5, "mode": "standard"}
    clock = Clock()
    q = policy(clock, max_attempts=12)
    attempt, _ = failing(clock, errors.ProviderUnavailable("busy"), 99)
    with pytest.raises(errors.ProviderUnavailable):
        q.run(q.write, "k", attempt)
    assert max(clock.slept) == BACKOFF_CAP and clock.now <= q.write.bound()


def test_a_busy_answer_pauses_at_least_the_minimum_and_gives_up_as_busy():
    clock = Clock()
    p = policy(clock)
    attempt, seen = failing(clock, errors.ProviderBusy("SlowDown"), 2)
    assert p.run(p.write, "k", attempt) == "ok" and len(seen) == 3
    assert clock.slept == [BUSY_PAUSE, BUSY_PAUSE]  # not the 0.2 s and 0.4 s of a connection failure
    attempt, seen = failing(clock, errors.ProviderBusy("SlowDown"), 99)
    with pytest.raises(errors.ProviderBusy, match=r"SlowDown \(gave up after 5 attempts") as info:
        p.run(p.write, "k", attempt)
    assert type(info.value) is errors.ProviderBusy  # it answered: ProviderHealth does not take it for "down"
    for exc in (errors.Rejected("k"), errors.Conflict("k"), errors.MetadataTooLarge("k"), errors.NameTooLong("k")):
        attempt, seen = failing(clock, exc, 1)
        with pytest.raises(type(exc)):
            p.run(p.write, "k", attempt)
        assert len(seen) == 1


def test_retry_after_is_honoured_within_the_deadline_and_a_long_one_ends_the_operation():
    clock = Clock()
    p = policy(clock)
    attempt, seen = failing(clock, errors.ProviderBusy("503", retry_after=3.0), 1)
    assert p.run(p.write, "k", attempt) == "ok" and clock.slept == [3.0]
    clock = Clock()
    p = policy(clock)
    attempt, seen = failing(clock, errors.ProviderBusy("503", retry_after=60.0), 99)
    with pytest.raises(errors.ProviderBusy, match="asks to wait 60s") as info:
        p.run(p.write, "k", attempt)
    assert len(seen) == 1 and clock.slept == [] and info.value.retry_after == 60.0  # the uploader waits instead
    clock = Clock()
    p = policy(clock)
    attempt, seen = failing(clock, errors.ProviderBusy("503", retry_after=4.0), 99, cost=1.5)
    with pytest.raises(errors.ProviderBusy):
        p.run(p.lookup, "k", attempt)  # 1.5 + 4 would pass the lookup's 5 s deadline: no second try
    assert len(seen) == 1 and clock.now == pytest.approx(1.5)


def test_parse_retry_after():
    assert parse_retry_after("3") == 3.0 and parse_retry_after(" 1.5 ") == 1.5 and parse_retry_after("-2") == 0.0
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # a date in the past: now
    import time
    from email.utils import formatdate
    assert 50 < parse_retry_after(formatdate(time.time() + 60, usegmt=True)) <= 60
