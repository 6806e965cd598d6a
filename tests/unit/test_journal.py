"""The journal keeps recording when the cache disk fills up (SQLite may roll back on SQLITE_FULL)."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from storefs.cache.journal import Entry, Journal


class FullOnce:
    """A connection whose first COMMIT fails as on a full disk, rolling the transaction back."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self.failed = False

    def execute(self, sql: str, args: tuple = ()) -> sqlite3.Cursor:
        if sql == "COMMIT" and not self.failed:
            self.failed = True
            self.conn.execute("ROLLBACK")
            raise sqlite3.OperationalError("database or disk is full")
        return self.conn.execute(sql, args)

    @property
    def in_transaction(self) -> bool:
        return self.conn.in_transaction


def test_full_disk_replays_the_transaction_in_the_reserved_space(tmp_path: Path) -> None:
    j = Journal(str(tmp_path / "journal.db"))
    assert os.path.exists(j._ballast_path)
    real = j._conn
    j._conn = FullOnce(real)  # type: ignore[assignment]
    with j.transaction():
        j.put(Entry("t/image/b/a/x", "local", op="put", state="dirty"))
        j.remove("t/image/b/a/gone")
        j.put(Entry("t/image/b/a/y", "local", op="delete", state="dirty"))
    j._conn = real
    assert sorted(e.key for e in j.load()) == ["t/image/b/a/x", "t/image/b/a/y"]
    assert not os.path.exists(j._ballast_path), "the reserved space was used"
    j.restore_ballast()
    assert os.path.exists(j._ballast_path)


def test_journal_survives_reopen(tmp_path: Path) -> None:
    j = Journal(str(tmp_path / "journal.db"))
    j.put(Entry("k", "local", op="put", state="dirty", xattrs={"user.prompt": "🦊".encode()}))
    j.close()
    e = Journal(str(tmp_path / "journal.db")).load()[0]
    assert e.key == "k" and e.op == "put" and e.xattrs == {"user.prompt": "🦊".encode()}
