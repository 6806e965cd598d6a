"""ProviderHealth: down with backoff after a failure to answer, slow while a call hangs, never for good."""

from __future__ import annotations

import pytest

from storefs import errors
from storefs.errors import AccessDenied, NotFound, ProviderUnavailable
from storefs.view.health import ProviderHealth
from storefs.view.tunables import ViewTunables

TUNABLES = ViewTunables(down_for=5.0, max_down_for=30.0, slow_after=0.5)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def fail(exc: Exception) -> None:
    raise exc


def test_a_failure_to_answer_backs_off_doubling_up_to_the_maximum() -> None:
    clock = Clock()
    h = ProviderHealth(clock, TUNABLES)
    waits = [h.mark_down("s3") for _ in range(6)]
    assert waits == [5.0, 10.0, 20.0, 30.0, 30.0, 30.0]
    assert h.is_down("s3") and not h.is_down("local")
    clock.now += 30.1
    assert not h.is_down("s3")  # never for the life of the daemon


def test_only_unreachable_marks_down_and_an_answer_resets_the_backoff() -> None:
    clock = Clock()
    h = ProviderHealth(clock, TUNABLES)
    for exc in (NotFound("k"), AccessDenied("k")):
        with pytest.raises(type(exc)):
            h.call("s3", fail, exc)
    assert h.answering("s3")  # one bad object or refusal fails its own request only
    with pytest.raises(ProviderUnavailable):
        h.call("s3", fail, ProviderUnavailable("no route"))
    assert h.is_down("s3")
    with pytest.raises(ProviderUnavailable, match="not answering"):
        h.call("s3", lambda: None)  # fails fast while down
    clock.now += 5.1
    assert h.call("s3", lambda: 7) == 7
    with pytest.raises(ProviderUnavailable):
        h.call("s3", fail, ProviderUnavailable("no route"))
    clock.now += 5.1  # the first wait again: the answer in between reset the backoff
    assert not h.is_down("s3")


def test_mark_up_ends_being_down() -> None:
    h = ProviderHealth(Clock(), TUNABLES)
    h.mark_down("s3")
    h.mark_up("s3")
    assert h.answering("s3")


def test_a_call_without_progress_makes_its_provider_slow_until_it_ends() -> None:
    clock = Clock()
    h = ProviderHealth(clock, TUNABLES)
    with h.calling("s3") as progress:
        clock.now += 0.4
        assert h.answering("s3")
        progress()  # a listing page arrived
        clock.now += 0.4
        assert not h.is_slow("s3")
        clock.now += 0.2
        assert h.is_slow("s3") and not h.answering("s3") and not h.is_down("s3")
        assert h.answering("local")
    assert h.answering("s3")


@pytest.mark.parametrize("exc", [
    errors.ProviderBusy("503 SlowDown after its retries", retry_after=2.0),
    errors.ProviderError("unexpected answer: too many headers"),  # malformed or oversized answers
    errors.Rejected("400 InvalidArgument"), errors.Conflict("412"), errors.MetadataTooLarge("2 KiB"),
    errors.NameTooLong("1,024 bytes"), errors.TooLarge("EntityTooLarge"), errors.LayoutError("'\\'")])
def test_an_answer_of_any_kind_fails_its_request_alone(exc: Exception) -> None:
    h = ProviderHealth(Clock(), TUNABLES)
    for _ in range(3):
        with pytest.raises(type(exc)):
            h.call("s3", fail, exc)
        with pytest.raises(type(exc)), h.calling("s3"):
            raise exc
    assert h.answering("s3") and h.call("s3", lambda: 1) == 1
