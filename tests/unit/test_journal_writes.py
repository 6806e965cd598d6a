"""A put or remove outside a transaction is one statement committed on its own: durable at once,
joined to an open transaction otherwise, and kept through a full disk with the reserved space."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest

from storefs.cache.journal import Entry, Journal, State
from storefs.errors import CacheFull


class FullStatements:
    """A connection whose next `fails` writes of entries fail as on a full disk (SQLite rolls the statement back)."""

    def __init__(self, conn: sqlite3.Connection, fails: int) -> None:
        self.conn = conn
        self.fails = fails
        self.statements: list[str] = []

    def execute(self, sql: str, args: tuple = ()) -> sqlite3.Cursor:
        self.statements.append(sql.split()[0])
        if self.fails and sql.startswith(("INSERT INTO entries", "DELETE FROM entries")):
            self.fails -= 1
            raise sqlite3.OperationalError("database or disk is full")
        return self.conn.execute(sql, args)

    @property
    def in_transaction(self) -> bool:
        return self.conn.in_transaction


def _row(key: str) -> Entry:
    return Entry(key, "local", op="put", state=State.DIRTY, size=3)


def test_a_lone_put_is_one_statement_and_committed_at_once(tmp_path: Path) -> None:
    j = Journal(str(tmp_path / "journal.db"))
    real = j._conn
    j._conn = spy = FullStatements(real, 0)  # type: ignore[assignment]
    j.put(_row("t/image/b/a/x"))
    j.remove("t/image/b/a/gone")
    assert spy.statements == ["INSERT", "DELETE"]  # no BEGIN, no COMMIT: SQLite's autocommit
    assert not real.in_transaction
    other = sqlite3.connect(str(tmp_path / "journal.db"))  # another connection sees it: committed
    assert other.execute("SELECT key FROM entries").fetchall() == [("t/image/b/a/x",)]
    other.close()

    with j.transaction():  # inside a transaction the same calls join it
        j.put(_row("t/image/b/a/y"))
        assert real.in_transaction
        j.remove("t/image/b/a/x")
    assert spy.statements[2:] == ["BEGIN", "INSERT", "DELETE", "COMMIT"] and not real.in_transaction
    j._conn = real
    assert [e.key for e in j.load()] == ["t/image/b/a/y"]


def test_a_lone_put_on_a_full_disk_is_written_in_the_reserved_space(tmp_path: Path) -> None:
    j = Journal(str(tmp_path / "journal.db"))
    real = j._conn
    j._conn = FullStatements(real, 1)  # type: ignore[assignment]
    j.put(_row("t/image/b/a/x"))
    j._conn = real
    assert [e.key for e in j.load()] == ["t/image/b/a/x"]
    assert not os.path.exists(j._ballast_path), "the reserved space was used"


def test_a_lone_remove_on_a_disk_still_full_is_cache_full(tmp_path: Path) -> None:
    j = Journal(str(tmp_path / "journal.db"))
    j.put(_row("t/image/b/a/x"))
    real = j._conn
    j._conn = FullStatements(real, 2)  # type: ignore[assignment]
    with pytest.raises(CacheFull):
        j.remove("t/image/b/a/x")
    j._conn = real
    assert [e.key for e in j.load()] == ["t/image/b/a/x"], "nothing half done"
    assert not real.in_transaction


def test_a_put_of_a_key_already_there_replaces_every_column(tmp_path: Path) -> None:
    j = Journal(str(tmp_path / "journal.db"))
    full = Entry("t/image/b/a/x", "local", op="copy", state=State.DIRTY, size=3, copy_src="t/image/b/a/old",
                 etag='"abc"', xattrs={"user.k": b"v"}, last_error="refused", attempts=2, generation=4)
    j.put(full)
    j.put(_row("t/image/b/a/y"))
    bare = Entry("t/image/b/a/x", "s3", op="delete", state=State.DIRTY, generation=5)
    j.put(bare)  # changed in place: the fields it leaves out go back to their defaults, none kept
    assert sorted(j.load(), key=lambda e: e.key) == [bare, _row("t/image/b/a/y")]
