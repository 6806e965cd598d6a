"""RemoteView: how many provider requests lookups cost, and how soon others' changes show."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from storefs import remote
from storefs.providers.base import ObjectInfo
from storefs.providers.local import LocalProvider
from storefs.remote import RemoteView


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


@pytest.fixture
def view(tmp_path: Path) -> tuple[RemoteView, ListingProvider, Path]:
    base = tmp_path / "data"
    base.mkdir()
    p = ListingProvider("s3", str(base))
    return RemoteView({"s3": p}, ["s3"], ttl=30.0, negative_ttl=0.0), p, base


def test_one_listing_answers_every_name_in_a_folder(view: tuple[RemoteView, ListingProvider, Path]) -> None:
    v, p, base = view
    put(base, "t/image/b/a/1.png")
    assert v.lookup("t/image/b/a/1.png") is not None
    for i in range(20):
        assert v.lookup(f"t/image/b/a/new{i}.png") is None
    assert p.lists == 1 and p.heads == 0


def test_a_name_missing_from_an_older_listing_is_checked_again(
        view: tuple[RemoteView, ListingProvider, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    v, p, base = view
    clock = [1000.0]
    monkeypatch.setattr(remote.time, "monotonic", lambda: clock[0])
    assert v.lookup("t/image/b/a/late.png") is None
    put(base, "t/image/b/a/late.png")  # another client uploads it
    clock[0] += remote.MISS_RECHECK / 2
    assert v.lookup("t/image/b/a/late.png") is None  # a listing this young is trusted
    assert v.lookup("t/image/b/a/other.png") is None
    assert p.lists == 1
    clock[0] += remote.MISS_RECHECK
    assert v.lookup("t/image/b/a/late.png") is not None
    assert p.lists == 2
    assert v.lookup("t/image/b/a/other.png") is None  # the new listing answers the next misses
    assert p.lists == 2


def test_own_changes_update_the_cached_listing(view: tuple[RemoteView, ListingProvider, Path]) -> None:
    v, p, base = view
    assert v.lookup("t/image/b/a/x.png") is None
    put(base, "t/image/b/a/x.png")
    v.record("t/image/b/a/x.png", ("s3", p.head("t/image/b/a/x.png")))
    assert v.lookup("t/image/b/a/x.png") is not None
    v.record("t/image/b/a/x.png", None)
    assert v.lookup("t/image/b/a/x.png") is None
    assert p.lists == 1
