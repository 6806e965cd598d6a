"""RemoteView: how many provider requests lookups cost, and how soon others' changes show.

Time is an injected clock the tests move; the tunables are passed in, never patched.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from storefs.providers.base import ObjectInfo
from storefs.providers.local import LocalProvider
from storefs.view import RemoteView, ViewTunables

T = ViewTunables()


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class ListingProvider(LocalProvider):
    """A local folder that answers lookups by listing, as object stores do, counting requests."""

    lookup_by_listing = True

    def __init__(self, name: str, base: str) -> None:
        super().__init__(name, base)
        self.lists = 0
        self.heads = 0

    def list(self, prefix: str) -> Iterator[ObjectInfo]:  # type: ignore[override]
        self.lists += 1
        return super().list(prefix)

    def head(self, key: str) -> ObjectInfo:
        self.heads += 1
        return super().head(key)


def put(base: Path, key: str, data: bytes = b"x") -> None:
    (base / key).parent.mkdir(parents=True, exist_ok=True)
    (base / key).write_bytes(data)


def make_view(tmp_path: Path, clock: Clock, tunables: ViewTunables = T,
              ttl: float = 30.0) -> tuple[RemoteView, ListingProvider, Path]:
    base = tmp_path / "data"
    base.mkdir()
    p = ListingProvider("s3", str(base))
    return RemoteView({"s3": p}, ["s3"], ttl=ttl, negative_ttl=0.0, clock=clock, tunables=tunables), p, base


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def view(tmp_path: Path, clock: Clock) -> tuple[RemoteView, ListingProvider, Path]:
    return make_view(tmp_path, clock)


def test_one_listing_answers_every_name_in_a_folder(view: tuple[RemoteView, ListingProvider, Path]) -> None:
    v, p, base = view
    put(base, "t/image/b/a/1.png")
    assert v.lookup("t/image/b/a/1.png") is not None
    for i in range(20):
        assert v.lookup(f"t/image/b/a/new{i}.png") is None
    assert p.lists == 1 and p.heads == 0


def test_a_name_missing_from_an_older_listing_is_checked_again(
        view: tuple[RemoteView, ListingProvider, Path], clock: Clock) -> None:
    v, p, base = view
    assert v.lookup("t/image/b/a/late.png") is None
    put(base, "t/image/b/a/late.png")  # another client uploads it
    clock.now += T.miss_recheck / 2
    assert v.lookup("t/image/b/a/late.png") is None  # a listing this young is trusted
    assert v.lookup("t/image/b/a/other.png") is None
    assert p.lists == 1
    clock.now += T.miss_recheck
    assert v.lookup("t/image/b/a/late.png") is not None
    assert p.lists == 2
    assert v.lookup("t/image/b/a/other.png") is None  # the new listing answers the next misses
    assert p.lists == 2


def test_a_folder_made_here_is_known_empty_until_the_miss_recheck(
        view: tuple[RemoteView, ListingProvider, Path], clock: Clock) -> None:
    v, p, base = view
    v.known_empty("t/image/b/new")
    for i in range(20):
        assert v.lookup(f"t/image/b/new/f{i}.png") is None
    assert v.listing("t/image/b/new/") == {}
    assert p.lists == 0 and p.heads == 0
    put(base, "t/image/b/new/theirs.png")  # another client writes into it
    clock.now += T.miss_recheck + 0.1
    assert v.lookup("t/image/b/new/theirs.png") is not None  # found as in any older listing
    assert p.lists == 1


def _view_noting_threads(base: Path, ttl: float,
                         tunables: ViewTunables = T) -> tuple[RemoteView, list[str]]:
    """A view on the real clock whose provider notes the thread each listing is asked from."""
    base.mkdir()
    p = ListingProvider("s3", str(base))
    listed_by: list[str] = []
    real_list = p.list

    def list_noting_thread(prefix: str) -> Iterator[ObjectInfo]:
        listed_by.append(threading.current_thread().name)
        return real_list(prefix)
    p.list = list_noting_thread  # type: ignore[method-assign]
    return RemoteView({"s3": p}, ["s3"], ttl=ttl, negative_ttl=0.0, tunables=tunables), listed_by


def test_a_folder_files_are_being_created_in_is_due_for_a_recheck_ahead_of_its_misses(
        tmp_path: Path, clock: Clock, monkeypatch: pytest.MonkeyPatch) -> None:
    v, p, base = make_view(tmp_path, clock, ViewTunables(lookup_listing_max=2))
    for i in range(3):
        put(base, f"t/image/b/big/{i}.png")
    assert len(v.listing("t/image/b/big/")) == 3  # read whole by `ls`; too big to list for a lookup
    v.known_empty("t/image/b/new")
    put(base, "t/image/b/quiet/1.png")
    assert v.lookup("t/image/b/quiet/1.png") is not None  # listed, then only hits: never due
    for _ in range(3):
        clock.now += 0.4
        assert v.lookup(f"t/image/b/new/f{clock.now}.png") is None  # a create's lookup of its new name
        assert v.lookup(f"t/image/b/big/f{clock.now}.png") is None
        assert v.lookup("t/image/b/quiet/1.png") is not None
    assert v.due_rechecks() == []  # 1.2 s old: not nearly due yet
    clock.now = 1000.0 + T.miss_recheck - T.recheck_ahead
    assert v.due_rechecks() == ["t/image/b/new/"]  # not the big folder: its lookups are HEADs
    put(base, "t/image/b/new/theirs.png")  # another client writes into it
    real_list = p.list

    def list_taking_time(prefix: str) -> Iterator[ObjectInfo]:
        clock.now += 0.01
        return real_list(prefix)
    monkeypatch.setattr(p, "list", list_taking_time)
    v.refresh.recheck("t/image/b/new/")  # what the refresher thread hands its pool
    assert p.lists == 3
    assert v.due_rechecks() == []  # no miss since that listing
    clock.now += T.miss_recheck
    assert v.due_rechecks() == []  # creates stopped: no more listings
    clock.now += v.ttl * (1 - T.refresh_ahead)
    # still a folder in use: refreshed once more before it expires (a walk after the creates finds it)
    assert "t/image/b/new/" in v.due_refreshes()
    v.refresh.refresh_listing("t/image/b/new/")
    assert p.lists == 4
    assert v.lookup("t/image/b/new/theirs.png") is not None
    assert v.lookup("t/image/b/new/another.png") is None  # a miss, but the listing is young
    assert p.lists == 4
    v.health.mark_down("s3")
    clock.now += T.miss_recheck
    assert v.due_rechecks() == []  # nothing is asked of a provider that just failed


def test_a_recheck_that_hangs_makes_no_create_wait(tmp_path: Path, clock: Clock) -> None:
    """The server hangs under a recheck ahead of creates: by the time a miss would wait for that
    recheck, the provider is already slow, so the miss answers from the cache at once."""
    v, p, _ = make_view(tmp_path, clock)
    folder = "t/image/b/new"
    v.known_empty(folder)  # listed (empty) at 1000.0
    clock.now += 0.1
    assert v.lookup(f"{folder}/first.png") is None  # a create's miss: the folder is due for rechecks
    entered, thaw = threading.Event(), threading.Event()
    real_list = p.list

    def hanging_list(prefix: str) -> Iterator[ObjectInfo]:
        entered.set()
        thaw.wait(30)
        return real_list(prefix)
    p.list = hanging_list  # type: ignore[method-assign]
    v.start()
    try:
        clock.now = 1000.0 + T.miss_recheck - T.recheck_ahead + v.refresh.tick()  # the latest a recheck starts
        v.refresh.recheck_ahead()
        assert entered.wait(10)
        clock.now = 1000.0 + T.miss_recheck + 0.001  # the next miss is due for its recheck
        answers: list[object] = []
        asker = threading.Thread(target=lambda: answers.append(v.lookup(f"{folder}/second.png")), daemon=True)
        asker.start()
        asker.join(10)  # the fake clock stands still: a lookup waiting for the hung recheck never returns
        assert answers == [None], "a create's miss waited for a recheck that hangs"
    finally:
        thaw.set()
        v.stop()


def test_creates_in_a_folder_never_wait_for_its_miss_recheck(tmp_path: Path) -> None:
    tunables = ViewTunables(miss_recheck=1.0, recheck_ahead=0.6)
    base = tmp_path / "data"
    v, listed_by = _view_noting_threads(base, ttl=30.0, tunables=tunables)
    v.start()
    try:
        v.known_empty("t/image/b/new")
        t0, i, theirs_seen = time.monotonic(), 0, None
        while time.monotonic() - t0 < 4 * tunables.miss_recheck:
            i += 1
            assert v.lookup(f"t/image/b/new/f{i}.png") is None  # creating file after file
            if i == 10:
                put(base, "t/image/b/new/theirs.png")  # another client writes into it
                put_at = time.monotonic()
            if theirs_seen is None and i > 10 and v.lookup("t/image/b/new/theirs.png") is not None:
                theirs_seen = time.monotonic() - put_at
            time.sleep(0.01)
        assert len(listed_by) >= 3, listed_by  # listed again and again while files were created
        # all by the rechecks ahead: none waited for (that would be a storefs-revalidate thread)
        assert all(name.startswith("storefs-prefetch") for name in listed_by), listed_by
        assert theirs_seen is not None and theirs_seen < tunables.miss_recheck + 0.5, theirs_seen
    finally:
        v.stop()


def test_a_folder_already_listed_or_made_while_the_provider_is_down_is_not_assumed_empty(
        view: tuple[RemoteView, ListingProvider, Path], clock: Clock) -> None:
    v, p, base = view
    put(base, "t/image/b/old/1.png")
    assert set(v.listing("t/image/b/old/")) == {"1.png"}
    v.known_empty("t/image/b/old")
    assert set(v.listing("t/image/b/old/")) == {"1.png"}
    v.health.mark_down("s3")  # the provider did not answer a moment ago
    v.known_empty("t/image/b/other")
    clock.now += T.down_for + 1
    put(base, "t/image/b/other/1.png")
    assert v.lookup("t/image/b/other/1.png") is not None
    assert p.lists == 2


def _settle(v: RemoteView, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not v.refresh.idle():
        assert time.monotonic() < deadline, "background listings still running"
        time.sleep(0.01)


def test_reading_a_folder_lists_its_subfolders_in_the_background(tmp_path: Path, clock: Clock) -> None:
    v, p, base = make_view(tmp_path, clock, ViewTunables(prefetch_subfolders=5))
    for i in range(8):
        put(base, f"t/image/b/a{i}/f.png")
    v.start()
    try:
        listing = v.listing("t/image/b/")
        v.prefetch_below("t/image/b/", listing)
        _settle(v)
        assert p.lists == 1 + 5
        v.prefetch_below("t/image/b/", listing)  # read again within the TTL: nothing more
        _settle(v)
        assert p.lists == 6
        assert v.due_refreshes() == []  # never marked in use: they expire unless read
        for i in range(8):  # a walk finds 5 listed, and lists the other 3
            assert set(v.listing(f"t/image/b/a{i}/")) == {"f.png"}
            assert v.lookup(f"t/image/b/a{i}/f.png") is not None
        assert p.lists == 9
    finally:
        v.stop()


def test_no_background_listing_while_the_provider_is_down(
        view: tuple[RemoteView, ListingProvider, Path], clock: Clock) -> None:
    v, p, base = view
    put(base, "t/image/b/a/f.png")
    v.start()
    try:
        listing = v.listing("t/image/b/")
        v.health.mark_down("s3")
        v.prefetch_below("t/image/b/", listing)
        _settle(v)
        assert p.lists == 1
    finally:
        v.stop()


def test_own_changes_update_the_cached_listing(view: tuple[RemoteView, ListingProvider, Path]) -> None:
    v, p, base = view
    assert v.lookup("t/image/b/a/x.png") is None
    put(base, "t/image/b/a/x.png")
    v.record("t/image/b/a/x.png", ("s3", p.head("t/image/b/a/x.png")))
    assert v.lookup("t/image/b/a/x.png") is not None
    v.record("t/image/b/a/x.png", None)
    assert v.lookup("t/image/b/a/x.png") is None
    assert p.lists == 1


def test_a_listing_in_use_is_refreshed_before_it_expires(
        view: tuple[RemoteView, ListingProvider, Path], clock: Clock) -> None:
    v, p, base = view
    put(base, "t/image/b/a/1.png")
    assert set(v.listing("t/image/b/a/")) == {"1.png"}
    clock.now += v.ttl * (1 - T.refresh_ahead) - 1
    assert v.due_refreshes() == []  # not used since it was fetched
    assert v.lookup("t/image/b/a/1.png") is not None  # used
    assert v.due_refreshes() == []  # not close to expiring yet
    clock.now += 2
    assert v.due_refreshes() == ["t/image/b/a/"]
    put(base, "t/image/b/a/2.png")  # another client adds a file
    v.refresh.refresh_listing("t/image/b/a/")
    assert p.lists == 2
    assert v.due_refreshes() == []  # fresh again, and not used since
    clock.now += v.ttl - 1
    assert set(v.listing("t/image/b/a/")) == {"1.png", "2.png"}  # from the cache, no request waits
    assert p.lists == 2


def test_a_listing_left_alone_is_not_refreshed(
        view: tuple[RemoteView, ListingProvider, Path], clock: Clock) -> None:
    v, p, base = view
    v.listing("t/image/b/a/")
    for step in range(1, 40):
        clock.now = 1000.0 + step
        assert v.due_refreshes() == []


def test_a_folder_used_lately_is_kept_listed_for_a_while_then_let_expire(tmp_path: Path, clock: Clock) -> None:
    """A job writes a batch and a walk comes a minute later: the folders it used stay listed for
    keep_warm_ttls TTLs after their last use (never older than the TTL), then expire, so an
    idle mount stops asking; only the keep_warm_max folders used last are kept so."""
    tunables = ViewTunables(keep_warm_max=2)
    v, p, base = make_view(tmp_path, clock, tunables)
    for name in ("a", "b", "c"):
        put(base, f"t/image/b/{name}/1.png")
        assert v.lookup(f"t/image/b/{name}/1.png") is not None  # fetched ...
        assert v.lookup(f"t/image/b/{name}/1.png") is not None  # ... then used
        clock.now += 1
    last_use = clock.now - 1  # c's
    refreshes = 0
    while clock.now < last_use + v.ttl * (tunables.keep_warm_ttls + 2):
        clock.now += 0.25
        due = v.due_refreshes()
        assert "t/image/b/a/" not in due  # the third folder used last: not kept warm
        for prefix in due:
            v.refresh.refresh_listing(prefix)
            refreshes += prefix == "t/image/b/c/"
    # refreshed about every 0.8 TTL for keep_warm_ttls TTLs, then left to expire
    assert (int(tunables.keep_warm_ttls / (1 - tunables.refresh_ahead)) - 1 <= refreshes
            <= int(tunables.keep_warm_ttls) + 1)
    for name in ("a", "c"):  # expired now: no request while idle
        held = v.cache.held(f"t/image/b/{name}/")
        assert held is not None and held.until < clock.now


def test_the_refresher_thread_keeps_a_used_listing_fresh(tmp_path: Path) -> None:
    base = tmp_path / "data"
    v, listed_by = _view_noting_threads(base, ttl=1.5)
    v.start()
    try:
        v.listing("t/image/b/a/")
        put(base, "t/image/b/a/new.png")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and len(listed_by) < 3:
            v.listing("t/image/b/a/")  # keeps using it
            time.sleep(0.05)
        assert len(listed_by) >= 3
        assert set(listed_by[1:]) == {"storefs-listings"}  # no request waited for a listing
        assert "new.png" in v.listing("t/image/b/a/")
    finally:
        v.stop()


class MarkerProvider(ListingProvider):
    """Folders listed without their own metadata, as an object store lists them: each folder's
    mode and times cost a HEAD of its marker (head_dir), noted with the thread that asked."""

    def __init__(self, name: str, base: str) -> None:
        super().__init__(name, base)
        self.markers_by: list[str] = []

    def list(self, prefix: str) -> Iterator[ObjectInfo]:  # type: ignore[override]
        for info in super().list(prefix):
            yield ObjectInfo(key=info.key, size=0, mtime_ns=0, is_dir=True) if info.is_dir else info

    def head_dir(self, prefix: str) -> ObjectInfo | None:
        self.markers_by.append(threading.current_thread().name)
        return super().head_dir(prefix)


def _marker_view(tmp_path: Path, clock: Clock | None = None, ttl: float = 30.0) -> tuple[RemoteView, MarkerProvider]:
    base = tmp_path / "data"
    for i in range(6):
        put(base, f"t/image/b/a{i}/f.png")
    p = MarkerProvider("s3", str(base))
    kw = {} if clock is None else {"clock": clock}
    return RemoteView({"s3": p}, ["s3"], ttl=ttl, negative_ttl=0.0, **kw), p  # type: ignore[arg-type]


def test_a_walk_finds_its_subfolders_own_metadata_asked_for_ahead(tmp_path: Path) -> None:
    """find or os.walk descends into each subfolder in turn, and its lookup needs the folder's own
    mode and times: reading the parent HEADs their markers in the background, so no lookup waits
    for one, one at a time."""
    v, p = _marker_view(tmp_path)
    v.start()
    try:
        listing = v.listing("t/image/b/")
        v.prefetch_below("t/image/b/", listing)
        _settle(v)
        assert len(p.markers_by) == 6 and all(n.startswith("storefs-prefetch") for n in p.markers_by)
        for i in range(6):
            found = v.lookup(f"t/image/b/a{i}")
            assert found is not None and found[1].is_dir and found[1].mode is not None
        assert len(p.markers_by) == 6  # every lookup answered from what was asked ahead
    finally:
        v.stop()


def test_a_lookup_meeting_a_marker_head_under_way_waits_for_it(tmp_path: Path) -> None:
    v, p = _marker_view(tmp_path)
    gate = threading.Event()
    real = p.head_dir

    def slow_head_dir(prefix: str) -> ObjectInfo | None:
        gate.wait(5)
        return real(prefix)
    p.head_dir = slow_head_dir  # type: ignore[method-assign]
    v.start()
    try:
        listing = v.listing("t/image/b/")
        v.prefetch_below("t/image/b/", listing)
        threading.Timer(0.2, gate.set).start()
        found = v.lookup("t/image/b/a0")
        assert found is not None and found[1].mode is not None
        _settle(v)
        assert len(p.markers_by) == 6 and all(n.startswith("storefs-prefetch") for n in p.markers_by)
    finally:
        gate.set()
        v.stop()


def test_a_refreshed_listing_keeps_its_known_subfolders_metadata_warm(tmp_path: Path, clock: Clock) -> None:
    """A job made folders (their metadata known from storefs' own change) or stat'ed them, and a walk
    comes a minute later: each time the parent's listing is kept warm, so are those folders' markers;
    folders nobody looked at are not asked for."""
    v, p = _marker_view(tmp_path, clock)
    v.start()
    try:
        v.lookup("t/image/b/a0")  # lists the parent, HEADs a0's marker inline
        assert p.markers_by == ["MainThread"]
        made = ObjectInfo(key="t/image/b/a1/", size=0, mtime_ns=1, is_dir=True, mode=0o40755, uid=0, gid=0)
        v.record("t/image/b/a1", ("s3", made))  # storefs made a1: the listing carries its metadata
        p.markers_by.clear()
        for _ in range(5):  # the parent in use, kept listed a minute and more
            clock.now += v.ttl * (1 - T.refresh_ahead) + 0.1
            v.listing("t/image/b/")
            assert v.due_refreshes() == ["t/image/b/"]
            v.refresh.refresh_listing("t/image/b/")
            _settle(v)
        # a0 and a1, each time
        assert len(p.markers_by) == 10 and all(n.startswith("storefs-prefetch") for n in p.markers_by)
        for i in (0, 1):
            found = v.lookup(f"t/image/b/a{i}")
            assert found is not None and found[1].mode is not None
        assert len(p.markers_by) == 10
    finally:
        v.stop()
