"""DirCache: listings and heads with their TTLs, bounds, and storefs' own changes laid over them."""

from __future__ import annotations

from storefs import keys
from storefs.providers.base import ObjectInfo
from storefs.view.dircache import DirCache
from storefs.view.tunables import ViewTunables


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def file(key: str) -> tuple[str, ObjectInfo]:
    return ("p", ObjectInfo(key=key, size=1, mtime_ns=1_000_000_000))


def cache(clock: Clock, **tunables: int) -> DirCache:
    return DirCache(10.0, 1.0, clock=clock, tunables=ViewTunables(**tunables))  # type: ignore[arg-type]


def put(c: DirCache, prefix: str, *names: str) -> None:
    epoch, started = c.begin_fetch(prefix)
    c.put_listing(prefix, {n: file(prefix + n) for n in names}, epoch, started)


def test_split_key() -> None:
    assert keys.split("a/b/x") == ("a/b/", "x")
    assert keys.split("a/b/") == ("a/", "b")
    assert keys.split("x") == ("", "x")


def test_a_listing_is_fresh_for_the_ttl_then_held_expired() -> None:
    clock = Clock()
    c = cache(clock)
    put(c, "a/", "x")
    clock.now += 9.9
    assert c.fresh("a/") == {"x": file("a/x")}
    clock.now += 0.2
    assert c.fresh("a/") is None
    held = c.held("a/")
    assert held is not None and set(held.names) == {"x"} and held.fetched == 100.0


def test_found_heads_last_the_ttl_absent_ones_the_negative_ttl() -> None:
    clock = Clock()
    c = cache(clock)
    c.put_head("a/x", file("a/x"), clock.now)
    c.put_head("a/y", None, clock.now)
    clock.now += 2
    x, y = c.head("a/x"), c.head("a/y")
    assert x is not None and x.until > clock.now
    assert y is not None and y.until < clock.now and y.found is None


def test_sizes_are_bounded_least_recently_used_listing_first() -> None:
    clock = Clock()
    c = cache(clock, max_listings=2, max_heads=2)
    put(c, "a/")
    put(c, "b/")
    assert c.fresh("a/") is not None  # a used: b is the least recently used
    put(c, "c/")
    assert [p for p, _ in c.listings()] == ["a/", "c/"]
    for k in ("x", "y", "z"):
        c.put_head(k, None, clock.now)
    assert c.head("x") is None and c.head("z") is not None


def test_own_changes_update_the_listing_and_are_laid_over_a_fetch_under_way() -> None:
    clock = Clock()
    c = cache(clock)
    put(c, "a/", "old")
    c.record("a/new", file("a/new"), several_providers=False)
    assert set(c.fresh("a/") or {}) == {"old", "new"}
    epoch, started = c.begin_fetch("a/")  # a listing of a/ begins ...
    clock.now += 1
    c.record("a/old", None, several_providers=False)  # ... storefs deletes a file meanwhile ...
    names = c.put_listing("a/", {"old": file("a/old"), "new": file("a/new")}, epoch, started)
    assert set(names) == {"new"}  # ... and the listing that lands shows the delete
    head = c.head("a/old")
    assert head is not None and head.found is None and head.until > clock.now  # gone, for a whole TTL


def test_a_change_elsewhere_expires_and_a_listing_racing_it_is_not_fresh() -> None:
    clock = Clock()
    c = cache(clock)
    put(c, "a/", "x")
    epoch, started = c.begin_fetch("a/")
    c.forget("a/x")
    assert c.fresh("a/") is None and c.held("a/") is not None  # expired, still held for outages
    c.put_listing("a/", {"x": file("a/x")}, epoch, started)
    assert c.fresh("a/") is None
    put(c, "a/", "x")
    assert c.fresh("a/") is not None


def test_a_big_listing_is_expired_not_copied_by_a_change() -> None:
    clock = Clock()
    c = cache(clock, max_listing_update=2)
    put(c, "a/", "1", "2", "3")
    c.record("a/4", file("a/4"), several_providers=False)
    assert c.fresh("a/") is None


def test_a_delete_with_several_providers_forgets_the_listing() -> None:
    """Another provider may hold the key too: only a new listing can tell."""
    clock = Clock()
    c = cache(clock)
    put(c, "a/", "x")
    c.record("a/x", None, several_providers=True)
    assert c.fresh("a/") is None and c.head("a/x") is None


def test_known_empty_never_replaces_a_listing() -> None:
    clock = Clock()
    c = cache(clock)
    put(c, "a/", "x")
    c.known_empty("a/")
    c.known_empty("b/")
    assert c.fresh("a/") == {"x": file("a/x")} and c.fresh("b/") == {}


def test_used_and_missed_survive_a_new_fetch() -> None:
    clock = Clock()
    c = cache(clock)
    put(c, "a/")
    clock.now += 1
    c.missed("a/")
    c.touch("a/")
    put(c, "a/")
    held = c.held("a/")
    assert held is not None and held.used == held.missed == 101.0


def test_big_folders_are_remembered_for_a_ttl() -> None:
    clock = Clock()
    c = cache(clock)
    c.mark_big("a/")
    assert c.is_big("a/")
    clock.now += 10.1
    assert not c.is_big("a/")


def test_an_unverified_empty_folder_is_held_expired() -> None:
    clock = Clock()
    c = cache(clock)
    c.known_empty("a/", verified=False)
    held = c.held("a/")
    assert c.fresh("a/") is None and held is not None and held.names == {}


def test_drop_below_forgets_listings_and_heads_at_and_below_a_folder_and_expires_its_folder() -> None:
    clock = Clock()
    c = cache(clock)
    put(c, "a/", "x", "b/")
    put(c, "a/b/", "y", "c/")
    put(c, "a/b/c/", "z")
    put(c, "a/bb/", "w")  # a sibling whose name starts alike: kept
    c.put_head("a/b/y", file("a/b/y"), clock.now)
    c.put_head("a/b/", file("a/b/"), clock.now)
    c.put_head("a/x", file("a/x"), clock.now)
    prefixes, named = c.drop_below("a/b")
    assert sorted(prefixes) == ["a/b/", "a/b/c/"]
    assert sorted(named) == ["a/b", "a/b/c", "a/b/c/z", "a/b/y", "a/b/y"]
    assert c.held("a/b/") is None and c.held("a/b/c/") is None
    assert c.head("a/b/y") is None and c.head("a/b/") is None
    assert c.fresh("a/bb/") == {"w": file("a/bb/w")} and c.head("a/x") is not None
    assert c.fresh("a/") is None and c.held("a/") is not None  # expired: it carries b's own entry


def test_drop_below_the_root_forgets_everything() -> None:
    clock = Clock()
    c = cache(clock)
    put(c, "", "a/")
    put(c, "a/", "x")
    c.put_head("a/x", file("a/x"), clock.now)
    prefixes, _ = c.drop_below("")
    assert sorted(prefixes) == ["", "a/"]
    assert c.held("") is None and c.head("a/x") is None


def test_a_listing_fetched_while_drop_below_ran_is_not_fresh() -> None:
    clock = Clock()
    c = cache(clock)
    epoch, started = c.begin_fetch("a/b/")
    c.drop_below("a/b")
    c.put_listing("a/b/", {"old": file("a/b/old")}, epoch, started)
    assert c.fresh("a/b/") is None
