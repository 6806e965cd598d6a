"""A change is a record of the redo log when the call returns, and goes to SQLite in a batch: a kill -9
loses none of it, a full disk uses the reserved space first, and SQLite refusing a batch loses nothing."""

from __future__ import annotations

import errno
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from storefs.cache import journal as journal_mod
from storefs.cache import redolog
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


def _sqlite_keys(path: Path) -> list[str]:
    """What another connection reads in SQLite (the journal's applied state)."""
    other = sqlite3.connect(str(path))
    try:
        return [k for (k,) in other.execute("SELECT key FROM entries ORDER BY key")]
    finally:
        other.close()


def _logged(path: Path) -> list[tuple[int, tuple]]:
    return sorted(r for p in (str(path) + s for s in redolog.SUFFIXES) for r in redolog.read_records(p))


@pytest.fixture
def no_applier_timer(monkeypatch: pytest.MonkeyPatch) -> None:
    """Batches go to SQLite only when a test applies them."""
    monkeypatch.setattr(journal_mod, "APPLY_DELAY", 3600.0)


def test_a_change_is_logged_when_the_call_returns_and_applied_in_one_transaction(tmp_path: Path,
                                                                                 no_applier_timer: None) -> None:
    path = tmp_path / "journal.db"
    j = Journal(str(path))
    j.put(_row("t/image/b/a/x"))
    j.remove("t/image/b/a/gone")
    with j.transaction():  # one record for the transaction, whatever it holds
        j.put(_row("t/image/b/a/y"))
        with j.transaction():
            j.remove("t/image/b/a/x")
    records = _logged(path)
    assert [(n, [code for code, _ in stmts]) for n, stmts in records] == [
        (1, ["put"]), (2, ["remove"]), (3, ["put", "remove"])]
    assert _sqlite_keys(path) == [], "not applied yet"

    real = j._conn
    j._conn = spy = FullStatements(real, 0)  # type: ignore[assignment]
    assert j.apply()
    j._conn = real
    assert spy.statements == ["BEGIN", "INSERT", "DELETE", "INSERT", "DELETE", "INSERT", "COMMIT"]
    assert _sqlite_keys(path) == ["t/image/b/a/y"]
    j.put(_row("t/image/b/a/z"))  # to the other file, while the first is applied
    assert [n for n, _ in redolog.read_records(str(path) + redolog.SUFFIXES[1])] == [4]
    assert j.apply()
    j.remove("t/image/b/a/y")  # the first file is reused: what is left of records 1-3 behind it is not read
    assert [n for n, _ in redolog.read_records(str(path) + redolog.SUFFIXES[0])] == [5]
    j.close()
    assert _logged(path) == [] and _sqlite_keys(path) == ["t/image/b/a/z"]


def test_an_exception_in_a_transaction_logs_none_of_it(tmp_path: Path, no_applier_timer: None) -> None:
    path = tmp_path / "journal.db"
    j = Journal(str(path))
    with pytest.raises(RuntimeError), j.transaction():
        j.put(_row("t/image/b/a/x"))
        raise RuntimeError("the change failed half way")
    j.put(_row("t/image/b/a/y"))
    assert [[code for code, _ in stmts] for _, stmts in _logged(path)] == [["put"]]
    assert [e.key for e in j.load()] == ["t/image/b/a/y"]
    j.close()


KILLED = """
import os, signal, sys
from storefs.cache import journal
from storefs.cache.journal import Entry, Journal, State
journal.APPLY_DELAY = float(sys.argv[2])
j = Journal(sys.argv[1])
for i in range(300):
    j.put(Entry(f"t/image/b/a/f{i:03d}", "s3", op="put", state=State.DIRTY, size=i, xattrs={"user.n": b"%d" % i}))
    if i % 3 == 0:
        with j.transaction():
            j.remove(f"t/image/b/a/f{i:03d}")
            j.put(Entry(f"t/image/b/a/g{i:03d}", "s3", op="delete", state=State.DIRTY, remote=True))
    if i == 150:
        j.apply()
os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.mark.parametrize("delay", [3600.0, 0.0])
def test_a_kill_9_loses_no_change_whose_call_returned(tmp_path: Path, delay: float) -> None:
    """Killed with half its changes applied and half only logged (or the applier running flat out): the
    next open has every one; a record cut short at the end of the log is left out."""
    path = tmp_path / "journal.db"
    proc = subprocess.run([sys.executable, "-c", KILLED, str(path), str(delay)], capture_output=True, text=True,
                          cwd=Path(__file__).parents[2], timeout=60)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    with open(str(path) + redolog.SUFFIXES[0], "ab") as f:
        f.write(b"\x40\x00\x00\x00garbage")  # a write the kill cut short
    expected = {f"t/image/b/a/f{i:03d}": i for i in range(300) if i % 3} | {f"t/image/b/a/g{i:03d}": 0
                                                                             for i in range(0, 300, 3)}
    j = Journal(str(path))
    rows = {e.key: e for e in j.load()}
    assert {k: e.size for k, e in rows.items()} == expected
    assert rows["t/image/b/a/f299"].xattrs == {"user.n": b"299"} and rows["t/image/b/a/g000"].op == "delete"
    assert rows["t/image/b/a/g000"].state is State.DIRTY
    assert _logged(path) == [], "the replayed log is emptied"
    j.put(_row("t/image/b/a/after"))  # numbering goes on past the replayed records
    j.close()
    assert len(Journal(str(path)).load()) == len(expected) + 1


def test_a_change_on_a_full_disk_is_logged_in_the_reserved_space(tmp_path: Path, no_applier_timer: None,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "journal.db"
    j = Journal(str(path))
    j.put(_row("t/image/b/a/before"))
    real = os.pwrite
    fails = [1]

    def full_once(fd: int, data: bytes, at: int) -> int:
        if fails[0]:
            fails[0] -= 1
            real(fd, data[:7], at)  # the disk took part of it
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd, data, at)

    monkeypatch.setattr(redolog.os, "pwrite", full_once)
    j.put(_row("t/image/b/a/x"))
    assert not os.path.exists(j._ballast_path), "the reserved space was used"
    fails[0] = 2
    with pytest.raises(CacheFull):
        j.remove("t/image/b/a/x")
    monkeypatch.setattr(redolog.os, "pwrite", real)
    j.put(_row("t/image/b/a/y"))
    assert [[code for code, _ in stmts] for _, stmts in _logged(path)] == [["put"], ["put"], ["put"]], \
        "nothing of the refused change is in the log, and the records after it read"
    j.close()
    assert sorted(e.key for e in Journal(str(path)).load()) == ["t/image/b/a/before", "t/image/b/a/x",
                                                                "t/image/b/a/y"]


def test_a_batch_sqlite_refuses_stays_logged_until_it_goes_in(tmp_path: Path, no_applier_timer: None,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "journal.db"
    j = Journal(str(path), ballast=0)
    j.put(_row("t/image/b/a/x"))
    real = j._conn
    j._conn = FullStatements(real, 2)  # type: ignore[assignment]
    assert not j.apply() and not j.apply(), "refused twice (no reserved space to fall back on)"
    assert not real.in_transaction
    assert sum("SQLite refused them" in r.getMessage() for r in caplog.records) == 1, "logged once"
    j.put(_row("t/image/b/a/y"))  # changes go on meanwhile
    assert [n for n, _ in _logged(path)] == [1, 2]
    assert j.apply(), "the disk has room again"
    j._conn = real
    assert _sqlite_keys(path) == ["t/image/b/a/x", "t/image/b/a/y"]
    j.close()


def test_a_put_of_a_key_already_there_replaces_every_column(tmp_path: Path) -> None:
    j = Journal(str(tmp_path / "journal.db"))
    full = Entry("t/image/b/a/x", "local", op="copy", state=State.DIRTY, size=3, copy_src="t/image/b/a/old",
                 etag='"abc"', xattrs={"user.k": b"v"}, last_error="refused", attempts=2, generation=4)
    j.put(full)
    j.put(_row("t/image/b/a/y"))
    bare = Entry("t/image/b/a/x", "s3", op="delete", state=State.DIRTY, generation=5)
    j.put(bare)  # changed in place: the fields it leaves out go back to their defaults, none kept
    assert sorted(j.load(), key=lambda e: e.key) == [bare, _row("t/image/b/a/y")]
