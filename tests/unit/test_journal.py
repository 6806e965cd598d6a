"""The journal keeps recording when the cache disk fills up (SQLite may roll back on SQLITE_FULL)."""

from __future__ import annotations

import dataclasses
import os
import sqlite3
from pathlib import Path

from storefs.cache.journal import Entry, Journal, State


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
        j.put(Entry("t/image/b/a/x", "local", op="put", state=State.DIRTY))
        j.remove("t/image/b/a/gone")
        j.put(Entry("t/image/b/a/y", "local", op="delete", state=State.DIRTY))
    assert j.apply(), "the batch went in on the reserved space"
    j._conn = real
    assert sorted(e.key for e in j.load()) == ["t/image/b/a/x", "t/image/b/a/y"]
    assert not os.path.exists(j._ballast_path), "the reserved space was used"
    j.restore_ballast()
    assert os.path.exists(j._ballast_path)


def test_journal_survives_reopen(tmp_path: Path) -> None:
    j = Journal(str(tmp_path / "journal.db"))
    j.put(Entry("k", "local", op="put", state=State.DIRTY, xattrs={"user.prompt": "🦊".encode()}))
    j.close()
    e = Journal(str(tmp_path / "journal.db")).load()[0]
    assert e.key == "k" and e.op == "put" and e.xattrs == {"user.prompt": "🦊".encode()}


def test_states_come_back_as_the_enum_and_older_journals_open(tmp_path: Path) -> None:
    """Rows keep their State through a reopen; a journal from before ctime/atime/rdev (whose
    eviction clock was called atime) opens with its rows and the clock kept."""
    path = tmp_path / "old.db"
    c = sqlite3.connect(path)
    c.executescript("CREATE TABLE entries (key TEXT PRIMARY KEY, provider TEXT NOT NULL, kind TEXT NOT NULL,"
                    " state TEXT NOT NULL, op TEXT, data_name TEXT, size INTEGER NOT NULL DEFAULT 0,"
                    " mtime REAL NOT NULL DEFAULT 0, mode INTEGER NOT NULL DEFAULT 33188, uid INTEGER, gid INTEGER,"
                    " xattrs TEXT, generation INTEGER NOT NULL DEFAULT 0, remote INTEGER NOT NULL DEFAULT 0,"
                    " copy_src TEXT, chunks BLOB, etag TEXT, attempts INTEGER NOT NULL DEFAULT 0, last_error TEXT,"
                    " atime REAL NOT NULL DEFAULT 0);"
                    "INSERT INTO entries (key, provider, kind, state, op, atime)"
                    " VALUES ('t/image/b/a/x', 'local', 'file', 'uploading', 'put', 5.0);")
    c.commit()
    c.close()
    j = Journal(str(path), ballast=0)
    (e,) = j.load()
    assert e.state is State.UPLOADING and (e.used, e.atime_ns, e.ctime_ns, e.rdev) == (5.0, 0, 0, 0)
    j.put(dataclasses.replace(e, state=State.DIRTY, atime_ns=7_000_000_001, rdev=259))
    j.close()
    (again,) = Journal(str(path), ballast=0).load()
    assert again.state is State.DIRTY and (again.atime_ns, again.rdev, again.used) == (7_000_000_001, 259, 5.0)


#: the entries table of the storefs before times were kept in nanoseconds (float seconds in REAL columns)
SECONDS_SCHEMA = (
    "CREATE TABLE entries (key TEXT PRIMARY KEY, provider TEXT NOT NULL, kind TEXT NOT NULL, state TEXT NOT NULL,"
    " op TEXT, data_name TEXT, size INTEGER NOT NULL DEFAULT 0, mtime REAL NOT NULL DEFAULT 0,"
    " mode INTEGER NOT NULL DEFAULT 33188, uid INTEGER, gid INTEGER, xattrs TEXT,"
    " generation INTEGER NOT NULL DEFAULT 0, remote INTEGER NOT NULL DEFAULT 0, copy_src TEXT, chunks BLOB,"
    " etag TEXT, attempts INTEGER NOT NULL DEFAULT 0, last_error TEXT, used REAL NOT NULL DEFAULT 0,"
    " ctime REAL NOT NULL DEFAULT 0, atime REAL NOT NULL DEFAULT 0, rdev INTEGER NOT NULL DEFAULT 0);")


def test_a_journal_of_float_seconds_opens_with_its_times_in_nanoseconds(tmp_path: Path) -> None:
    """The previous version's REAL time columns become integer nanoseconds (to the microsecond a float
    held), its rows and pending changes kept; from then on a time keeps every nanosecond."""
    path = tmp_path / "seconds.db"
    c = sqlite3.connect(path)
    c.executescript(SECONDS_SCHEMA)
    c.execute("INSERT INTO entries (key, provider, kind, state, op, mtime, ctime, atime, used, rdev)"
              " VALUES ('t/x', 'local', 'file', 'dirty', 'put', 1683263105.123457, 1683263106.5, 0, 9.5, 3)")
    c.commit()
    c.close()
    j = Journal(str(path), ballast=0)
    (e,) = j.load()
    assert (e.key, e.state, e.op, e.used, e.rdev) == ("t/x", State.DIRTY, "put", 9.5, 3)
    assert (e.mtime_ns, e.ctime_ns, e.atime_ns) == (1683263105_123457000, 1683263106_500000000, 0)
    j.put(dataclasses.replace(e, mtime_ns=1683263105_123456789))
    j.close()
    (again,) = Journal(str(path), ballast=0).load()  # a second open finds nothing left to convert
    assert again.mtime_ns == 1683263105_123456789
    columns = {row[1]: row[2] for row in sqlite3.connect(path).execute("PRAGMA table_info(entries)")}
    assert columns["mtime_ns"] == "INTEGER" and not {"mtime", "ctime", "atime"} & set(columns)


def test_conflicts_are_kept_newest_first_capped_and_counted(tmp_path: Path, monkeypatch) -> None:
    from storefs.cache import journal as journal_mod
    from storefs.cache.journal import ConflictRecord
    monkeypatch.setattr(journal_mod, "MAX_CONFLICTS_KEPT", 3)
    j = Journal(str(tmp_path / "journal.db"), ballast=0)
    assert j.conflicts() == (0, [])
    for i in range(5):
        j.add_conflict(ConflictRecord(at=float(i), op="put", key=f"k{i}", conflict_key=f"k{i}.conflict", provider="s3"))
    j.close()
    total, records = Journal(str(tmp_path / "journal.db"), ballast=0).conflicts()
    assert total == 5
    assert [r.key for r in records] == ["k4", "k3", "k2"]
    assert records[0] == ConflictRecord(at=4.0, op="put", key="k4", conflict_key="k4.conflict", provider="s3")


def test_parked_rows_come_back_parked(tmp_path: Path) -> None:
    j = Journal(str(tmp_path / "journal.db"), ballast=0)
    j.put(Entry("k", "s3", op="put", state=State.PARKED, last_error="Rejected: KeyTooLongError"))
    j.close()
    (e,) = Journal(str(tmp_path / "journal.db"), ballast=0).load()
    assert e.state is State.PARKED and e.pending and e.last_error == "Rejected: KeyTooLongError"
