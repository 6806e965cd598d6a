"""The folder indexes stay right whichever way an entry is put again or amended; rows change only by amend."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from storefs.cache.index import EntryIndex
from storefs.cache.journal import OP_COPY, OP_DELETE, OP_PUT, Entry, Journal, State


def _counts(ix: EntryIndex) -> tuple[dict, dict, dict]:
    return ({p: dict(c) for p, c in ix._children.items()}, dict(ix._pending_below), dict(ix._copy_sources))


def test_putting_an_entry_again_keeps_the_indexes_and_writes_the_row(tmp_path: Path) -> None:
    """A create indexes the row unjournaled and its close puts the same object again: the close
    must journal it and leave the indexes as one put of it would; an amend of what is indexed
    (pending or not, tombstone, copy source) re-indexes at once."""
    ix = EntryIndex(Journal(str(tmp_path / "j.db")))
    e = Entry("t/image/b/a/x.png", "local", state=State.DIRTY, op=OP_PUT, size=1)
    ix.put(e, persist=False)
    once = _counts(ix)
    assert once[0]["t/image/b/a/"] == {"x.png": 1} and once[1][""] == 1
    assert EntryIndex(Journal(str(tmp_path / "j.db"))).get(e.key) is None

    ix.amend(e, size=5)
    ix.put(e)
    ix.put(e)
    assert _counts(ix) == once
    again = EntryIndex(Journal(str(tmp_path / "j.db")))
    assert again.get(e.key).size == 5 and _counts(again) == once

    ix.amend(e, op=None, state=State.CLEAN)  # uploaded: no longer pending
    assert _counts(ix) == ({}, {}, {})
    ix.put(e)
    assert _counts(ix) == ({}, {}, {})

    ix.amend(e, op=OP_DELETE, state=State.DIRTY)  # a tombstone is pending but no child
    assert _counts(ix)[0] == {} and _counts(ix)[1][""] == 1

    ix.amend(e, op=OP_COPY, copy_src="t/image/b/a/y.png")
    assert _counts(ix)[2] == {"t/image/b/a/y.png": 1} and _counts(ix)[0]["t/image/b/a/"] == {"x.png": 1}
    ix.amend(e, copy_src="t/image/b/a/z.png")
    assert _counts(ix)[2] == {"t/image/b/a/z.png": 1}

    ix.remove(e.key)
    assert _counts(ix) == ({}, {}, {})


def test_a_close_after_the_create_does_not_walk_the_folders_again(tmp_path: Path, monkeypatch) -> None:
    """Each close of a new file puts its row again; re-indexing it walked every ancestor folder
    twice (drop and add), a tenth of a small file's time in the daemon."""
    import storefs.cache.index as index

    walks: list[str] = []
    real = index.ancestors
    monkeypatch.setattr(index, "ancestors", lambda key: walks.append(key) or real(key))
    ix = EntryIndex(Journal(str(tmp_path / "j.db")))
    e = Entry("t/image/b/a/x.png", "local", state=State.DIRTY, op=OP_PUT)
    ix.put(e, persist=False)
    walks.clear()
    ix.amend(e, size=9)
    ix.put(e)
    ix.amend(e, op=OP_PUT, mtime_ns=2_000_000_000)  # a folder's times move on every create: its op stays
    assert walks == []
    ix.amend(e, op=OP_DELETE)
    assert walks


def test_a_row_changes_only_through_the_index(tmp_path: Path) -> None:
    """Rows are frozen: a module that set a field in place would leave the folder indexes behind."""
    ix = EntryIndex(Journal(str(tmp_path / "j.db")))
    e = Entry("t/image/b/a/x.png", "local", state=State.DIRTY, op=OP_PUT)
    ix.put(e)
    with pytest.raises(dataclasses.FrozenInstanceError):
        e.op = None  # type: ignore[misc]
    new = ix.update(e.key, op=None, state=State.CLEAN)
    assert ix.get(e.key) is new and e.op == OP_PUT and _counts(ix) == ({}, {}, {})
    assert EntryIndex(Journal(str(tmp_path / "j.db"))).get(e.key).state is State.CLEAN
