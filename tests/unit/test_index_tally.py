"""EntryIndex.tally (what status and /metrics count without a scan) and its folder indexes stay equal
to a recount of the rows through any mix of puts, amends and removes: the amends of times alone skip
the count, and one walk up a key keeps both folder indexes."""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

from storefs.cache.index import TALLIED_FIELDS, EntryIndex
from storefs.cache.journal import OP_COPY, OP_DELETE, OP_META, OP_PUT, Entry, Journal, State
from storefs.keys import ancestors


def _recount(ix: EntryIndex) -> dict[str, int]:
    c: Counter[str] = Counter()
    for e in ix.entries.values():
        c["cached_files"] += bool(e.data_name)
        c["dirty_files"] += e.op == OP_PUT
        c["dirty_bytes"] += e.size if e.op == OP_PUT else 0
        c["parked_changes"] += e.op is not None and e.state == State.PARKED
    return {k: v for k, v in c.items() if v}


def _folders(ix: EntryIndex) -> tuple[dict[str, dict[str, int]], dict[str, int]]:
    children: dict[str, Counter[str]] = {}
    below: Counter[str] = Counter()
    for e in ix.entries.values():
        if e.pending:
            for prefix, name in ancestors(e.key):
                if not e.is_tombstone:
                    children.setdefault(prefix, Counter())[name] += 1
                below[prefix] += 1
    return {p: dict(c) for p, c in children.items()}, dict(below)


def _tally(ix: EntryIndex) -> dict[str, int]:
    return {k: v for k, v in ix.tally.items() if v}


def test_the_tally_follows_every_change(tmp_path: Path) -> None:
    ix = EntryIndex(Journal(str(tmp_path / "j.db")))
    rng = random.Random(22)
    keys = [f"t/image/b/a/f{i}" for i in range(8)] + [f"t/image/b/c/d/g{i}" for i in range(4)] + ["t/image/b/e/"]
    ops = [None, OP_PUT, OP_META, OP_DELETE, OP_COPY]
    states = [State.CLEAN, State.DIRTY, State.UPLOADING, State.PARKED]
    for _ in range(600):
        key = rng.choice(keys)
        e = ix.get(key)
        roll = rng.random()
        if e is None or roll < 0.15:
            ix.put(Entry(key, "local", op=rng.choice(ops), state=rng.choice(states), size=rng.randrange(100),
                         data_name=rng.choice([None, "ab" * 32])), persist=rng.random() < 0.5)
        elif roll < 0.25:
            ix.remove(key)
        elif roll < 0.6:  # what a write or a read amends: times, chunks, the generation
            ix.amend(e, mtime_ns=rng.randrange(10**9), ctime_ns=rng.randrange(10**9), generation=e.generation + 1)
        else:
            ix.amend(e, **rng.choice([{"size": rng.randrange(100)}, {"op": rng.choice(ops)},
                                      {"state": rng.choice(states)}, {"data_name": rng.choice([None, "cd" * 32])},
                                      {"size": rng.randrange(100), "mtime_ns": 5, "state": State.DIRTY}]))
        assert _tally(ix) == _recount(ix)
        assert ({p: dict(c) for p, c in ix._children.items()}, dict(ix._pending_below)) == _folders(ix)
    assert {"size", "op", "state", "data_name"} <= TALLIED_FIELDS
