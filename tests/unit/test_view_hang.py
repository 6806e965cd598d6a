"""A provider that hangs never stalls what the view already knows (stale-while-revalidate).

The memory provider's gate makes its calls hang; the injected clock says how long they have.
"""

from __future__ import annotations

import tempfile
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from storefs.errors import AccessDenied, ProviderUnavailable
from storefs.providers.base import ObjectMeta
from storefs.providers.memory import MemoryProvider
from storefs.view import RemoteView, ViewTunables

TTL = 30.0
T = ViewTunables()
#: how long (real seconds) a test waits for a thread to reach a point it must reach
PATIENCE = 5.0
#: what an answer from the cache takes at the most, with room for a loaded machine (it takes microseconds)
QUICK = 0.5


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Run:
    """fn() in a thread of its own, its answer or exception kept."""

    def __init__(self, fn: Callable[[], object]) -> None:
        self.result: list[object] = []
        self.error: list[BaseException] = []
        self.thread = threading.Thread(target=self._run, args=(fn,), daemon=True)
        self.thread.start()

    def _run(self, fn: Callable[[], object]) -> None:
        try:
            self.result.append(fn())
        except BaseException as e:  # noqa: BLE001 - looked at by the test
            self.error.append(e)

    def join(self) -> object:
        self.thread.join(PATIENCE)
        assert not self.thread.is_alive(), "still waiting"
        if self.error:
            raise self.error[0]
        return self.result[0]


def wait_until(cond: Callable[[], bool]) -> None:
    deadline = time.monotonic() + PATIENCE
    while not cond():
        assert time.monotonic() < deadline, "never happened"
        time.sleep(0.002)


def store(p: MemoryProvider, *keys: str) -> None:
    with tempfile.NamedTemporaryFile() as src:
        src.write(b"data")
        src.flush()
        for key in keys:
            p.put_file(key, src.name, ObjectMeta(mtime_ns=1_000_000_000))


@pytest.fixture
def world(request: pytest.FixtureRequest) -> Iterator[tuple[RemoteView, MemoryProvider, Clock]]:
    """A started view on one memory provider that looks names up by listing (as object stores do),
    with t/a/1.png in it and t/a/ listed; `lookup_by_listing=False` via indirect parametrization."""
    by_listing, tunables = getattr(request, "param", (True, T))
    clock = Clock()
    p = MemoryProvider("mem", lookup_by_listing=by_listing)
    store(p, "t/a/1.png")
    v = RemoteView({"mem": p}, ["mem"], ttl=TTL, negative_ttl=0.0, clock=clock, tunables=tunables)
    v.start()
    assert set(v.listing("t/a/")) == {"1.png"}
    try:
        yield v, p, clock
    finally:
        p.gate.set()
        v.stop()


def hang(v: RemoteView, p: MemoryProvider, clock: Clock) -> Run:
    """Close the gate and have a request wait at it long enough for the provider to count as slow."""
    p.gate.clear()
    stuck = Run(lambda: v.lookup("u/x"))  # nothing cached: it asks, and waits
    wait_until(lambda: p.waiting == 1)
    clock.now += T.slow_after + 0.01
    assert v.is_down("mem")  # not answering promptly: the core uses what it knows
    return stuck


def quickly(fn: Callable[[], object]) -> object:
    t0 = time.monotonic()
    out = fn()
    assert time.monotonic() - t0 < QUICK
    return out


def test_while_a_call_hangs_an_expired_listing_answers_and_one_refresh_starts(
        world: tuple[RemoteView, MemoryProvider, Clock]) -> None:
    v, p, clock = world
    store(p, "t/a/2.png")  # another client's file, not in the listing yet
    clock.now += TTL + 1
    stuck = hang(v, p, clock)
    lists = p.calls["list"]
    for i in range(20):
        assert quickly(lambda i=i: v.lookup(f"t/a/new{i}.png")) is None  # a create's lookup of its name
        assert quickly(lambda: v.lookup("t/a/1.png")) is not None
        assert set(quickly(lambda: v.listing("t/a/"))) == {"1.png"}  # type: ignore[arg-type]
    wait_until(lambda: p.waiting == 2)  # the one background refresh of t/a/, at the gate too
    assert p.calls["list"] == lists + 1
    p.gate.set()
    assert stuck.join() is None
    wait_until(lambda: v.cache.fresh("t/a/") is not None)  # the late answer fills the cache
    assert v.lookup("t/a/2.png") is not None
    assert v.health.answering("mem")


def asks_while_it_hangs(v: RemoteView, p: MemoryProvider, clock: Clock, key: str) -> bool:
    """Whether a lookup of key, made while the provider hangs, waits for the provider."""
    stuck = hang(v, p, clock)
    asking = Run(lambda: v.lookup(key))
    wait_until(lambda: p.waiting == 2 or not asking.thread.is_alive())
    asking.thread.join(QUICK)  # an answer from the cache comes by now, even if a refresh reached the gate first
    waited = asking.thread.is_alive()
    p.gate.set()
    assert asking.join() is None and stuck.join() is None
    return waited


def test_a_request_that_holds_nothing_still_asks_the_provider(
        world: tuple[RemoteView, MemoryProvider, Clock]) -> None:
    v, p, clock = world
    assert asks_while_it_hangs(v, p, clock, "w/x")


def test_a_request_waits_for_a_revalidation_only_until_the_provider_turns_slow(
        world: tuple[RemoteView, MemoryProvider, Clock]) -> None:
    v, p, clock = world
    clock.now += TTL + 1
    p.gate.clear()
    creating = Run(lambda: v.lookup("t/a/new.png"))  # its folder's listing expired: revalidated first
    wait_until(lambda: p.waiting == 1)
    time.sleep(20 * T.slow_poll)
    assert creating.thread.is_alive()  # the provider may still answer: the request waits for it
    clock.now += T.slow_after + 0.01
    assert creating.join() is None  # slow now: the expired listing answers
    p.gate.set()
    wait_until(lambda: v.cache.fresh("t/a/") is not None)


def test_the_ttl_holds_while_the_provider_answers(world: tuple[RemoteView, MemoryProvider, Clock]) -> None:
    v, p, clock = world
    store(p, "t/a/2.png")
    clock.now += TTL - 1
    assert set(v.listing("t/a/")) == {"1.png"}  # fresh: the cache answers
    clock.now += 2
    lists = p.calls["list"]
    assert set(v.listing("t/a/")) == {"1.png", "2.png"}  # expired: listed again, and the request waited
    assert p.calls["list"] == lists + 1


@pytest.mark.parametrize("world", [(True, ViewTunables(stale_max=60.0))], indirect=True)
def test_answers_older_than_stale_max_wait_for_the_provider(
        world: tuple[RemoteView, MemoryProvider, Clock]) -> None:
    v, p, clock = world
    clock.now += 59
    assert not asks_while_it_hangs(v, p, clock, "t/a/new.png")
    wait_until(lambda: p.waiting == 0 and v.refresh.idle())
    clock.now += 61
    assert asks_while_it_hangs(v, p, clock, "t/a/new.png")


def test_a_failed_revalidation_fails_its_own_request_only(
        world: tuple[RemoteView, MemoryProvider, Clock]) -> None:
    v, p, clock = world
    clock.now += TTL + 1
    p.fail_with = AccessDenied("t/a/")
    with pytest.raises(AccessDenied):
        v.lookup("t/a/x.png")
    assert v.health.answering("mem")  # a refusal says nothing of the provider
    p.fail_with = None
    assert v.lookup("t/a/1.png") is not None

    clock.now += TTL + 1
    store(p, "t/a/3.png")
    p.fail_with = ProviderUnavailable("connection refused")
    assert v.lookup("t/a/3.png") is None  # unreachable: the expired listing answers
    assert v.lookup("t/a/1.png") is not None
    assert v.is_down("mem")
    p.fail_with = None
    clock.now += T.down_for + 0.1  # being down ends: the provider is asked again
    assert v.lookup("t/a/3.png") is not None


@pytest.mark.parametrize("world", [(False, T)], indirect=True)
def test_a_provider_asked_by_head_answers_from_the_held_listing_while_it_hangs(
        world: tuple[RemoteView, MemoryProvider, Clock]) -> None:
    v, p, clock = world
    clock.now += TTL + 1
    stuck = hang(v, p, clock)
    calls = sum(p.calls.values())
    assert quickly(lambda: v.lookup("t/a/new.png")) is None
    assert quickly(lambda: v.lookup("t/a/1.png")) is not None
    assert sum(p.calls.values()) == calls
    p.gate.set()
    assert stuck.join() is None


def test_a_folder_made_while_the_provider_hangs_takes_creates_until_it_is_listed(
        world: tuple[RemoteView, MemoryProvider, Clock]) -> None:
    v, p, clock = world
    store(p, "t/a/new/theirs.png")  # another client made the folder too, unknown to this view
    stuck = hang(v, p, clock)
    v.known_empty("t/a/new")  # made here: the provider could not say whether the name was free
    assert quickly(lambda: v.lookup("t/a/new/mine.png")) is None  # a create in it does not wait
    assert quickly(lambda: v.lookup("t/a/new/theirs.png")) is None
    p.gate.set()
    assert stuck.join() is None
    wait_until(v.refresh.idle)
    assert v.lookup("t/a/new/theirs.png") is not None  # once it answers, the folder is listed


def test_a_folder_made_while_the_provider_answers_costs_no_listing(
        world: tuple[RemoteView, MemoryProvider, Clock]) -> None:
    v, p, clock = world
    lists = p.calls["list"]
    v.known_empty("t/a/new")
    assert v.lookup("t/a/new/mine.png") is None
    assert p.calls["list"] == lists


@pytest.mark.parametrize("world", [(False, T)], indirect=True)
def test_a_provider_asked_by_head_is_waited_for_only_until_it_turns_slow(
        world: tuple[RemoteView, MemoryProvider, Clock]) -> None:
    v, p, clock = world
    clock.now += TTL + 1
    p.gate.clear()
    looking = Run(lambda: v.lookup("t/a/1.png"))  # its folder's expired listing knows it
    wait_until(lambda: p.waiting == 1)
    time.sleep(20 * T.slow_poll)
    assert looking.thread.is_alive()  # the provider may still answer: the request waits for it
    clock.now += T.slow_after + 0.01
    assert looking.join() is not None


@pytest.mark.parametrize("world", [(False, T)], indirect=True)
def test_a_folder_found_by_head_is_cached_with_its_metadata(
        world: tuple[RemoteView, MemoryProvider, Clock]) -> None:
    v, p, clock = world
    p.make_dir("t/b/", ObjectMeta(mtime_ns=5_000_000_000, mode=0o40750))
    calls = sum(p.calls.values())
    for _ in range(3):
        found = v.lookup("t/b")
        assert found is not None and found[1].is_dir and found[1].mode is not None
        assert found[1].mode & 0o777 == 0o750
    assert sum(p.calls.values()) == calls + 3  # a HEAD, a folder probe and the marker's HEAD, once
