"""HEADs ahead of a stat storm (storefs.view.ahead): `ls -l` of a folder an object store listed
costs a HEAD per name; once lookups there need them, the names after are asked for several at a time."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from storefs.providers.base import ObjectInfo
from storefs.providers.local import LocalProvider
from storefs.view import RemoteView, ViewTunables
from storefs.view.dircache import Head

HEAD_SECONDS = 0.005  # what one HEAD costs the test provider
NAMES = 300
PREFIX = "t/image/b/a/"


class SlowHeads(LocalProvider):
    """A folder listed as an object store lists it (no metadata), with a HEAD that takes HEAD_SECONDS."""

    lookup_by_listing = True
    listing_has_metadata = False

    def __init__(self, name: str, base: str) -> None:
        super().__init__(name, base, create=True)
        self.lock = threading.Lock()
        self.heads: list[str] = []
        self.inside = 0
        self.most = 0

    def head(self, key: str) -> ObjectInfo:
        with self.lock:
            self.heads.append(key)
            self.inside += 1
            self.most = max(self.most, self.inside)
        try:
            time.sleep(HEAD_SECONDS)
            return super().head(key)
        finally:
            with self.lock:
                self.inside -= 1


def make(tmp_path: Path, **tunables: int) -> tuple[RemoteView, SlowHeads]:
    base = tmp_path / "data"
    (base / PREFIX).mkdir(parents=True)
    for i in range(NAMES):
        (base / PREFIX / f"f{i:04d}.png").write_bytes(b"x")
    p = SlowHeads("s3", str(base))
    v = RemoteView({"s3": p}, ["s3"], ttl=60.0, negative_ttl=0.0, tunables=ViewTunables(**tunables))
    v.start()
    return v, p


def test_a_stat_of_every_listed_name_asks_each_once_and_several_at_a_time(tmp_path: Path) -> None:
    v, p = make(tmp_path)
    try:
        names = list(v.listing(PREFIX))
        assert p.heads == []  # a listing alone (ls -f) asks for no HEAD
        t0 = time.monotonic()
        for name in names:  # ls -l: a lookup of each, in the listing's order
            found = v.lookup(PREFIX + name)
            assert found is not None and found[1].mode is not None, name  # with what only a HEAD says
        took = time.monotonic() - t0
    finally:
        v.stop()
    assert sorted(p.heads) == sorted(PREFIX + n for n in names)  # each name asked for once
    assert p.most > 1
    assert took < NAMES * HEAD_SECONDS / 3, took  # one at a time takes NAMES * HEAD_SECONDS


def test_a_small_folder_is_not_asked_ahead(tmp_path: Path) -> None:
    v, p = make(tmp_path, heads_ahead_min=NAMES)
    try:
        names = list(v.listing(PREFIX))
        for name in names[:5]:
            v.lookup(PREFIX + name)
        time.sleep(0.2)
    finally:
        v.stop()
    assert len(p.heads) == 5 and p.most == 1


def test_a_folder_bigger_than_what_is_queued_at_once_is_asked_ahead_all_the_way(tmp_path: Path) -> None:
    v, p = make(tmp_path, heads_ahead_max=40)  # 300 names: a lookup past each 40 queues the next
    try:
        names = list(v.listing(PREFIX))
        t0 = time.monotonic()
        for name in names:
            found = v.lookup(PREFIX + name)
            assert found is not None and found[1].mode is not None, name
        took = time.monotonic() - t0
    finally:
        v.stop()
    assert sorted(p.heads) == sorted(PREFIX + n for n in names)
    assert took < NAMES * HEAD_SECONDS / 3, took


class Batches(SlowHeads):
    """A provider that answers HEADs in batches (as S3's pipelined ones), each batch costing one HEAD's time."""

    heads_at_once = 8

    def __init__(self, name: str, base: str) -> None:
        super().__init__(name, base)
        self.batches: list[int] = []

    def head_many(self, keys):  # type: ignore[no-untyped-def]
        self.batches.append(len(keys))
        time.sleep(HEAD_SECONDS)
        for key in keys:
            yield key, LocalProvider.head(self, key)


def test_a_provider_that_asks_for_names_in_batches_gets_batches(tmp_path: Path) -> None:
    base = tmp_path / "data"
    (base / PREFIX).mkdir(parents=True)
    for i in range(NAMES):
        (base / PREFIX / f"f{i:04d}.png").write_bytes(b"x")
    p = Batches("s3", str(base))
    v = RemoteView({"s3": p}, ["s3"], ttl=60.0, negative_ttl=0.0, tunables=ViewTunables(heads_ahead_batch=32))
    v.start()
    try:
        names = list(v.listing(PREFIX))
        for name in names:
            found = v.lookup(PREFIX + name)
            assert found is not None and found[1].mode is not None, name
    finally:
        v.stop()
    assert max(p.batches) == 8  # the provider's batch, not the tunable's larger one
    assert sum(p.batches) + len(p.heads) == NAMES  # each name asked once: in a batch or by its own lookup


def test_a_head_that_lands_between_a_lookups_look_and_its_claim_is_not_asked_again(tmp_path: Path) -> None:
    """The race CI met under load: a HEAD ahead answered and released its claim after the lookup had
    looked at the cache and before the lookup claimed the work, so the lookup asked again."""
    v, p = make(tmp_path, heads_ahead_min=NAMES + 1)  # nothing asked ahead: the interleaving is made by hand
    try:
        name = next(iter(v.listing(PREFIX)))
        key = PREFIX + name
        looked = v.cache.head

        def head_landing_after_the_look(k: str) -> Head | None:
            if k == key and v.cache.head is head_landing_after_the_look:
                v.cache.head = looked  # type: ignore[method-assign]
                answer = looked(k)
                v.cache.put_head(k, ("s3", LocalProvider.head(p, k)), time.monotonic())  # the HEAD ahead lands
                return answer
            return looked(k)

        v.cache.head = head_landing_after_the_look  # type: ignore[method-assign]
        found = v.lookup(key)
    finally:
        v.stop()
    assert found is not None and found[1].mode is not None
    assert p.heads == []  # answered by the HEAD that landed, not asked again
