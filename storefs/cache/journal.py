"""The crash-safe record of every cache entry and of what must still reach a provider.

Every change that the provider has not seen yet is recorded here before the FUSE call that
made it returns (create, close, rename, unlink, chmod ...), so a `kill -9` loses nothing:
the next mount reads the rows back and resumes the uploads. A change is first a record of the
redo log (storefs.cache.redolog), which a thread applies to SQLite in batches.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from enum import StrEnum

from ..errors import CacheFull
from .redolog import RedoLog

log = logging.getLogger(__name__)

# What must still happen at the provider for a row; None once the row is clean.
OP_PUT = "put"        # upload the cache file's bytes and metadata
OP_META = "meta"      # replace the metadata of the object already there
OP_COPY = "copy"      # server-side copy from copy_src (a rename of uploaded data)
OP_DELETE = "delete"  # remove the object (a tombstone: hides the key meanwhile)
OP_MKDIR = "mkdir"    # persist an empty directory (marker object)
OP_RMDIR = "rmdir"    # remove the directory marker (a tombstone for the folder)

TOMBSTONES = frozenset({OP_DELETE, OP_RMDIR})

SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    key        TEXT PRIMARY KEY,
    provider   TEXT NOT NULL,
    kind       TEXT NOT NULL,
    state      TEXT NOT NULL,
    op         TEXT,
    data_name  TEXT,
    size       INTEGER NOT NULL DEFAULT 0,
    mtime_ns   INTEGER NOT NULL DEFAULT 0,
    mode       INTEGER NOT NULL DEFAULT 33188,
    uid        INTEGER,
    gid        INTEGER,
    xattrs     TEXT,
    generation INTEGER NOT NULL DEFAULT 0,
    remote     INTEGER NOT NULL DEFAULT 0,
    copy_src   TEXT,
    chunks     BLOB,
    etag       TEXT,
    attempts   INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    used       REAL NOT NULL DEFAULT 0,
    ctime_ns   INTEGER NOT NULL DEFAULT 0,
    atime_ns   INTEGER NOT NULL DEFAULT 0,
    rdev       INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS conflicts (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    at           REAL NOT NULL,
    op           TEXT NOT NULL,
    key          TEXT NOT NULL,
    conflict_key TEXT,
    provider     TEXT NOT NULL,
    detail       TEXT
);
"""

#: conflicts the journal remembers (the newest); the count of all of them is kept regardless
MAX_CONFLICTS_KEPT = 1000

#: the multipart uploads storefs opened and has not yet completed or aborted (storefs.core.multipart);
#: a table of its own, created in an older journal at open like any missing table
UPLOADS_SCHEMA = """
CREATE TABLE IF NOT EXISTS uploads (
    provider  TEXT NOT NULL,
    upload_id TEXT NOT NULL,
    key       TEXT NOT NULL,
    started   REAL NOT NULL,
    PRIMARY KEY (provider, upload_id)
);
"""

#: columns added since the first schema: (name, declaration), added to older journals at open
ADDED_COLUMNS = (("rdev", "INTEGER NOT NULL DEFAULT 0"), ("mtime_ns", "INTEGER NOT NULL DEFAULT 0"),
                 ("ctime_ns", "INTEGER NOT NULL DEFAULT 0"), ("atime_ns", "INTEGER NOT NULL DEFAULT 0"))

#: POSIX times older journals kept as float seconds (REAL), now integer nanoseconds in <name>_ns
SECONDS_COLUMNS = ("mtime", "ctime", "atime")


#: disk space set aside for the journal (see Journal.restore_ballast)
BALLAST_BYTES = 8 * 1024 * 1024


def _is_full(e: sqlite3.OperationalError) -> bool:
    return "full" in str(e).lower()


class State(StrEnum):
    """Where a row stands with its provider; stored in the journal as its text."""

    CLEAN = "clean"          # the provider has what the cache has (or nothing is pending)
    DIRTY = "dirty"          # a change waits for its upload
    UPLOADING = "uploading"  # an uploader is carrying the change out now
    PARKED = "parked"        # the provider refused the change for good: kept, not retried until `storefs retry`


@dataclass(frozen=True)
class ConflictRecord:
    """One conflict: another writer changed key first; where storefs' own version went (if anywhere)."""

    at: float                  # wall-clock seconds
    op: str                    # the operation that met it: put, meta, copy (a rename), delete
    key: str
    conflict_key: str | None   # the conflict copy holding storefs' bytes; None when nothing was uploaded
    provider: str
    detail: str | None = None  # what happened to storefs' change, in a few words


@dataclass(frozen=True)
class UploadRecord:
    """A multipart upload storefs opened at a provider: kept until it is completed or aborted."""

    provider: str
    key: str        # the provider's key (its own prefix not included)
    upload_id: str
    started: float  # wall-clock seconds


@dataclass(frozen=True)
class Entry:
    """One key storefs holds locally: cached data, a pending change, or a tombstone.

    Frozen: a row changes only through EntryIndex.amend, which keeps the folder indexes in step."""

    key: str
    provider: str
    kind: str = "file"            # "file" or "dir" (dir keys end with "/")
    state: State = State.CLEAN
    op: str | None = None         # see OP_* above
    data_name: str | None = None  # cache data file; None when no bytes are cached
    size: int = 0
    mtime_ns: int = 0             # POSIX times in integer nanoseconds since the epoch
    mode: int = 0o100644
    uid: int | None = None
    gid: int | None = None
    xattrs: dict[str, bytes] = field(default_factory=dict)
    generation: int = 0
    remote: bool = False          # the provider may hold an object at this key
    copy_src: str | None = None
    chunks: bytes | None = None   # bitmap of cached chunks; None when complete
    etag: str | None = None
    attempts: int = 0
    last_error: str | None = None
    used: float = 0.0             # when the cache last used it (least-recently-used eviction)
    ctime_ns: int = 0             # status change (0: as mtime) ...
    atime_ns: int = 0             # ... and last access (0: as mtime)
    rdev: int = 0                 # device number of a character or block device node

    @property
    def is_tombstone(self) -> bool:
        """Tombstones hide a key until its deletion has reached the provider."""
        return self.op in TOMBSTONES

    @property
    def pending(self) -> bool:
        """Whether the provider still has to hear about this entry."""
        return self.op is not None


_COLUMNS = [f.name for f in fields(Entry)]
#: an upsert rather than INSERT OR REPLACE: a row already there is changed in place, where REPLACE deletes
#: it and inserts it anew at the table's end, so that every commit wrote the row's old page, the last
#: page and a page of the key's index to the WAL (a third of the commit)
_PUT_SQL = (f"INSERT INTO entries ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))}) "
            f"ON CONFLICT (key) DO UPDATE SET {', '.join(f'{c} = excluded.{c}' for c in _COLUMNS[1:])}")
_XATTRS, _REMOTE, _STATE = _COLUMNS.index("xattrs"), _COLUMNS.index("remote"), _COLUMNS.index("state")

#: the last record of the redo log that SQLite holds (one row); a replay skips those up to it
REDO_SCHEMA = """
CREATE TABLE IF NOT EXISTS redo (
    id      INTEGER PRIMARY KEY CHECK (id = 0),
    applied INTEGER NOT NULL
);
"""
_SET_APPLIED = "INSERT INTO redo (id, applied) VALUES (0, ?) ON CONFLICT (id) DO UPDATE SET applied = excluded.applied"
#: the statements a redo record carries, by the short code it names them with
_PUT, _REMOVE = "put", "remove"
_SQL = {_PUT: _PUT_SQL, _REMOVE: "DELETE FROM entries WHERE key = ?"}

#: a batch of the redo log goes to SQLite this long after its first record at the latest (seconds) ...
APPLY_DELAY = 0.1
#: ... or as soon as it holds this many statements
APPLY_BATCH = 1024
#: after SQLite refused a batch (a full disk), the next try waits this long (seconds)
APPLY_RETRY = 1.0
#: errno values of a full disk
FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


def _encode_xattrs(x: dict[str, bytes]) -> str | None:
    return json.dumps({k: base64.b64encode(v).decode() for k, v in x.items()}) if x else None


def _decode_xattrs(s: str | None) -> dict[str, bytes]:
    return {k: base64.b64decode(v) for k, v in json.loads(s).items()} if s else {}


class Journal:
    """SQLite in WAL mode, fed through a redo log: a change is appended to the log before the call that
    made it returns, and a thread of the journal's own applies the log to SQLite in batches.

    Locks, in this order: _apply_lock (one apply at a time) before _lock (the redo log, the records
    not applied yet, an open transaction: _depth, _stmts) or _db_lock (the SQLite connection); _lock
    and _db_lock are never held together, so an apply's SQLite work never holds up a change.
    """

    def __init__(self, path: str, ballast: int = BALLAST_BYTES) -> None:
        self.path = path
        self._ballast_path = path + ".ballast"
        self._ballast_size = ballast
        self._lock = threading.RLock()
        self._wake = threading.Condition(self._lock)  # the applier waits here for records
        self._db_lock = threading.Lock()
        self._apply_lock = threading.Lock()
        os.makedirs(os.path.dirname(path) or ".", mode=0o700, exist_ok=True)
        for own in (path, path + "-wal", path + "-shm"):  # SQLite gives -wal/-shm the mode of the database
            if own == path or os.path.exists(own):
                fd = os.open(own, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
                os.fchmod(fd, 0o600)  # an older cache's 0644 files too
                os.close(fd)
        self._redo = RedoLog(path)
        try:
            try:
                self._open()
                self.restore_ballast()
            except sqlite3.OperationalError:
                # a full disk fails the opening (SQLite cannot grow its -shm file) or the replay: the reserved
                # space is for this, and stays free for the mount's first writes until eviction has made room
                # (restore_ballast)
                if not self._release_ballast():
                    raise
                self._open()
        except BaseException:
            self._redo.close()
            raise
        self._depth = 0
        self._stmts: list[tuple[str, tuple[object, ...]]] = []
        self._pending: list[tuple[int, tuple[tuple[str, tuple[object, ...]], ...]]] = []  # (number, statements)
        self._waiting = 0         # statements in _pending
        self._first_at = 0.0      # when the oldest of _pending was logged (monotonic)
        self._retry_at = 0.0      # no apply before this, after one the disk refused
        self._refused = False     # the last apply failed (logged once until one succeeds)
        self._closing = False
        #: started with the first record, not here: the daemon opens its journal before it forks into the
        #: background, and a thread does not survive a fork
        self._thread: threading.Thread | None = None

    def _open(self) -> None:
        """Connect, bring the schema up to date and replay the redo log; a failure leaves no connection open."""
        self._conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
        try:
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")
            self._conn.executescript(SCHEMA)
            self._conn.executescript(UPLOADS_SCHEMA)
            self._conn.executescript(REDO_SCHEMA)
            self._upgrade()
            self._replay()
        except BaseException:
            self._conn.close()
            raise

    def _upgrade(self) -> None:
        """Bring a journal written by an older storefs to this schema, keeping its rows."""
        have = {row[1] for row in self._conn.execute("PRAGMA table_info(entries)")}
        if "used" not in have:  # the eviction clock was called atime before POSIX atime was kept
            self._conn.execute("ALTER TABLE entries RENAME COLUMN atime TO used")
            have = (have - {"atime"}) | {"used"}
        for name, decl in ADDED_COLUMNS:
            if name not in have:
                self._conn.execute(f"ALTER TABLE entries ADD COLUMN {name} {decl}")
        old = [name for name in SECONDS_COLUMNS if name in have]
        if old:
            self._seconds_to_ns(old)

    def _seconds_to_ns(self, names: list[str]) -> None:
        """Move times kept as float seconds into their integer-nanosecond columns (a float holds about
        microseconds at today's epoch, which is all such a journal had) and drop the old columns."""
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            for name in names:
                self._conn.execute(f"UPDATE entries SET {name}_ns = CAST(ROUND({name} * 1000000) AS INTEGER) * 1000")
                self._conn.execute(f"ALTER TABLE entries DROP COLUMN {name}")
            self._conn.execute("COMMIT")
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        log.info("journal upgraded: times kept in nanoseconds")

    def restore_ballast(self) -> None:
        """Set disk space aside for the journal, so a full cache disk cannot stop it recording."""
        if self._ballast_size <= 0 or os.path.exists(self._ballast_path):
            return
        try:
            fd = os.open(self._ballast_path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                os.posix_fallocate(fd, 0, self._ballast_size)
            finally:
                os.close(fd)
        except OSError:
            with contextlib.suppress(OSError):
                os.unlink(self._ballast_path)

    def _release_ballast(self) -> bool:
        try:
            os.unlink(self._ballast_path)
        except FileNotFoundError:
            return False
        log.warning("cache disk is full: the journal uses its reserved space")
        return True

    def _replay(self) -> None:
        """Apply what the redo log holds beyond what SQLite has (a kill -9 or a crash before the applier
        caught up), then empty the log; numbering goes on from there."""
        row = self._conn.execute("SELECT applied FROM redo WHERE id = 0").fetchone()
        applied = row[0] if row else 0
        records = [r for r in self._redo.read() if r[0] > applied]
        if records:
            try:
                self._commit(records)
            except CacheFull as e:  # the opening's own error, which the daemon explains with the disk's space
                raise e.__cause__ or e from None
            log.info("journal: %d changes taken from its redo log", sum(len(stmts) for _, stmts in records))
        self._seq = records[-1][0] if records else applied
        self._redo.clear()

    def _commit(self, records: list[tuple[int, tuple[tuple[str, tuple[object, ...]], ...]]]) -> None:
        """Records of the redo log into SQLite, in one transaction that also notes the last one applied."""
        statements = [(_SQL[code], args) for _, stmts in records for code, args in stmts]
        statements.append((_SET_APPLIED, (records[-1][0],)))
        self._transact(statements)

    def _transact(self, statements: list[tuple[str, tuple[object, ...]]]) -> None:
        """Statements in one SQLite transaction; on a full disk once more with the reserved space, then CacheFull."""
        conn = self._conn
        for attempt in (0, 1):
            try:
                conn.execute("BEGIN IMMEDIATE")
                for sql, args in statements:
                    conn.execute(sql, args)
                conn.execute("COMMIT")
                return
            except sqlite3.OperationalError as e:
                if conn.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        conn.execute("ROLLBACK")
                if attempt or not _is_full(e) or not self._release_ballast():
                    if _is_full(e):
                        raise CacheFull("cache disk is full: the journal cannot record the change") from e
                    raise

    # ---- writes: appended to the redo log ------------------------------------------------

    def _log(self, stmts: tuple[tuple[str, tuple[object, ...]], ...]) -> None:
        """One record of the redo log (called with _lock held): when this returns, a kill -9 cannot lose it."""
        number = self._seq + 1
        try:
            try:
                self._redo.append(number, stmts)
            except OSError as e:
                if e.errno not in FULL_ERRNOS or not self._release_ballast():
                    raise
                self._redo.append(number, stmts)
        except OSError as e:
            if e.errno in FULL_ERRNOS:
                raise CacheFull("cache disk is full: the journal cannot record the change") from e
            raise
        self._seq = number
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="storefs-journal", daemon=True)
            self._thread.start()
        if not self._pending:
            self._first_at = time.monotonic()
            self._wake.notify()
        self._pending.append((number, stmts))
        self._waiting += len(stmts)
        if self._waiting >= APPLY_BATCH:
            self._wake.notify()

    def _write(self, stmt: tuple[str, tuple[object, ...]]) -> None:
        """One statement: joined to the open transaction, else a record of its own."""
        with self._lock:
            if self._depth:
                self._stmts.append(stmt)
            else:
                self._log((stmt,))

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """Group several writes into one record (nested uses join the outer one): all of them survive a
        crash, or none."""
        with self._lock:
            if self._depth == 0:
                self._stmts = []
            self._depth += 1
            try:
                yield
            except BaseException:
                self._depth -= 1
                if self._depth == 0:
                    self._stmts = []
                raise
            self._depth -= 1
            if self._depth == 0 and self._stmts:
                stmts, self._stmts = tuple(self._stmts), []
                self._log(stmts)

    def put(self, e: Entry) -> None:
        """Insert or replace the row of e.key (the values e holds now)."""
        values = [getattr(e, c) for c in _COLUMNS]
        values[_XATTRS] = _encode_xattrs(e.xattrs)
        values[_REMOTE] = int(e.remote)
        values[_STATE] = str(e.state)
        self._write((_PUT, tuple(values)))

    def remove(self, key: str) -> None:
        self._write((_REMOVE, (key,)))

    # ---- applying the log to SQLite ------------------------------------------------------

    def _run(self) -> None:
        """The applier: a batch goes to SQLite APPLY_DELAY after its first record, or at APPLY_BATCH statements."""
        while True:
            with self._lock:
                while True:
                    if self._closing:
                        return
                    now = time.monotonic()
                    if not self._pending:
                        self._wake.wait()
                    elif now < self._retry_at:
                        self._wake.wait(self._retry_at - now)
                    elif self._waiting >= APPLY_BATCH or now >= self._first_at + APPLY_DELAY:
                        break
                    else:
                        self._wake.wait(self._first_at + APPLY_DELAY - now)
            try:
                self.apply()
            except Exception:  # the records stay in the log files (the next open replays them): the thread lives on
                log.exception("journal: applying its redo log failed; tried again in %.0f s", APPLY_RETRY)
                with self._lock:
                    self._retry_at = time.monotonic() + APPLY_RETRY

    def apply(self) -> bool:
        """Write every logged change into SQLite now; False when the disk refused (the log keeps them)."""
        with self._apply_lock:
            with self._lock:
                batch, self._pending, self._waiting = self._pending, [], 0
                if not batch:
                    return True
                self._redo.switch()
            try:
                with self._db_lock:
                    self._commit(batch)
            except (sqlite3.Error, CacheFull) as e:
                with self._lock:
                    self._pending[:0] = batch
                    self._waiting = sum(len(stmts) for _, stmts in self._pending)
                    self._retry_at = time.monotonic() + APPLY_RETRY
                    first = not self._refused
                    self._refused = True
                if first:
                    log.error("journal: %d changes wait in its redo log, SQLite refused them (%s); tried again "
                              "every %.0f s", sum(len(s) for _, s in batch), e, APPLY_RETRY)
                return False
            with self._lock:
                self._redo.applied(batch[-1][0])
                if self._refused:
                    self._refused = False
                    log.info("journal: its redo log is applied again")
            return True

    # ---- reads and the tables written directly -----------------------------------------

    def load(self) -> list[Entry]:
        """Every row, for the in-memory index built at mount."""
        self.apply()
        with self._db_lock:
            cur = self._conn.execute(f"SELECT {', '.join(_COLUMNS)} FROM entries")
            out = []
            for row in cur:
                values = dict(zip(_COLUMNS, row, strict=True))
                values["xattrs"] = _decode_xattrs(values["xattrs"])
                values["remote"] = bool(values["remote"])
                values["state"] = State(values["state"])
                out.append(Entry(**values))
            return out

    def _direct(self, *statements: tuple[str, tuple[object, ...]]) -> None:
        """The tables the redo log does not carry (conflicts, multipart uploads: rare), committed at once."""
        with self._db_lock:
            self._transact(list(statements))

    def add_conflict(self, c: ConflictRecord) -> None:
        """Remember a conflict, keeping the newest MAX_CONFLICTS_KEPT."""
        self._direct(("INSERT INTO conflicts (at, op, key, conflict_key, provider, detail) VALUES (?, ?, ?, ?, ?, ?)",
                      (c.at, c.op, c.key, c.conflict_key, c.provider, c.detail)),
                     ("DELETE FROM conflicts WHERE id <= (SELECT MAX(id) FROM conflicts) - ?", (MAX_CONFLICTS_KEPT,)))

    def conflicts(self, limit: int = MAX_CONFLICTS_KEPT) -> tuple[int, list[ConflictRecord]]:
        """How many conflicts this cache ever met, and the newest limit of them, newest first."""
        with self._db_lock:
            row = self._conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'conflicts'").fetchone()
            cur = self._conn.execute("SELECT at, op, key, conflict_key, provider, detail FROM conflicts "
                                     "ORDER BY id DESC LIMIT ?", (limit,))
            return (int(row[0]) if row else 0), [ConflictRecord(*r) for r in cur]

    def add_upload(self, u: UploadRecord) -> None:
        """Remember an open multipart upload (committed before its first part is sent)."""
        self._direct(("INSERT OR REPLACE INTO uploads (provider, upload_id, key, started) VALUES (?, ?, ?, ?)",
                      (u.provider, u.upload_id, u.key, u.started)))

    def remove_upload(self, provider: str, upload_id: str) -> None:
        """Forget a multipart upload that was completed or aborted (no error if it is not recorded)."""
        self._direct(("DELETE FROM uploads WHERE provider = ? AND upload_id = ?", (provider, upload_id)))

    def uploads(self) -> list[UploadRecord]:
        """Every recorded open multipart upload, oldest first."""
        with self._db_lock:
            cur = self._conn.execute("SELECT provider, key, upload_id, started FROM uploads ORDER BY started")
            return [UploadRecord(*row) for row in cur]

    def sync(self) -> None:
        """Make every recorded change durable on disk (fsync semantics), not only crash-safe."""
        if self.apply():
            with self._db_lock:
                self._conn.execute("PRAGMA wal_checkpoint(FULL)")
        else:
            with self._lock:
                self._redo.fsync()

    def close(self) -> None:
        """Stop the applier and apply what is left; what SQLite refuses stays in the redo log for the next open."""
        with self._lock:
            if self._closing:
                return
            self._closing = True
            self._wake.notify_all()
        if self._thread is not None:
            self._thread.join()
        done = self.apply()
        with self._lock:
            if done:
                self._redo.clear()
            self._redo.close()
        with self._db_lock:
            self._conn.close()
