"""The crash-safe record of every cache entry and of what must still reach a provider.

Every change that the provider has not seen yet is a row here before the FUSE call that
made it returns (create, close, rename, unlink, chmod ...), so a `kill -9` loses nothing:
the next mount reads the rows back and resumes the uploads.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import sqlite3
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from enum import StrEnum

from ..errors import CacheFull

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
_XATTRS, _REMOTE = _COLUMNS.index("xattrs"), _COLUMNS.index("remote")


def _encode_xattrs(x: dict[str, bytes]) -> str | None:
    return json.dumps({k: base64.b64encode(v).decode() for k, v in x.items()}) if x else None


def _decode_xattrs(s: str | None) -> dict[str, bytes]:
    return {k: base64.b64decode(v) for k, v in json.loads(s).items()} if s else {}


class Journal:
    """SQLite in WAL mode behind one lock; writes are grouped into explicit transactions."""

    def __init__(self, path: str, ballast: int = BALLAST_BYTES) -> None:
        self.path = path
        self._ballast_path = path + ".ballast"
        self._ballast_size = ballast
        self._lock = threading.RLock()  # the SQLite connection and its open transaction (_depth, _stmts)
        os.makedirs(os.path.dirname(path) or ".", mode=0o700, exist_ok=True)
        for own in (path, path + "-wal", path + "-shm"):  # SQLite gives -wal/-shm the mode of the database
            if own == path or os.path.exists(own):
                fd = os.open(own, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
                os.fchmod(fd, 0o600)  # an older cache's 0644 files too
                os.close(fd)
        try:
            self._open()
            self.restore_ballast()
        except sqlite3.OperationalError:
            # a full disk fails the opening (SQLite cannot grow its -shm file): the reserved space is for this,
            # and stays free for the mount's first writes until eviction has made room (restore_ballast)
            if not self._release_ballast():
                raise
            self._open()
        self._depth = 0

    def _open(self) -> None:
        """Connect and bring the schema up to date; a failure leaves no connection open."""
        self._conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
        try:
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")
            self._conn.executescript(SCHEMA)
            self._conn.executescript(UPLOADS_SCHEMA)
            self._upgrade()
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

    def _execute(self, sql: str, args: tuple[object, ...] = ()) -> None:
        """Run one statement of the open transaction; on a full disk, use the reserved space.

        SQLite may roll the whole transaction back on SQLITE_FULL, so the statements so far
        are kept and replayed in a new transaction after the ballast is gone.
        """
        if sql != "COMMIT":
            self._stmts.append((sql, args))
        try:
            self._conn.execute(sql, args)
        except sqlite3.OperationalError as e:
            if not _is_full(e) or not self._release_ballast():
                raise
            if not self._conn.in_transaction:
                self._conn.execute("BEGIN IMMEDIATE")
                for s, a in self._stmts:
                    self._conn.execute(s, a)
            elif sql != "COMMIT":
                self._conn.execute(sql, args)
            if sql == "COMMIT":
                self._conn.execute("COMMIT")

    def load(self) -> list[Entry]:
        """Every row, for the in-memory index built at mount."""
        with self._lock:
            cur = self._conn.execute(f"SELECT {', '.join(_COLUMNS)} FROM entries")
            out = []
            for row in cur:
                values = dict(zip(_COLUMNS, row, strict=True))
                values["xattrs"] = _decode_xattrs(values["xattrs"])
                values["remote"] = bool(values["remote"])
                values["state"] = State(values["state"])
                out.append(Entry(**values))
            return out

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """Group several writes into one commit (nested uses join the outer one)."""
        with self._lock:
            if self._depth == 0:
                self._conn.execute("BEGIN IMMEDIATE")
                self._stmts: list[tuple[str, tuple[object, ...]]] = []
            self._depth += 1
            try:
                yield
            except BaseException:
                self._depth -= 1
                if self._depth == 0:
                    self._conn.execute("ROLLBACK")
                raise
            self._depth -= 1
            if self._depth == 0:
                try:
                    self._execute("COMMIT")
                except sqlite3.OperationalError as e:
                    with contextlib.suppress(sqlite3.Error):
                        self._conn.execute("ROLLBACK")
                    if _is_full(e):
                        raise CacheFull("cache disk is full: the journal cannot record the change") from e
                    raise

    def _write(self, sql: str, args: tuple[object, ...]) -> None:
        """One statement: in the open transaction, else committed on its own (SQLite's autocommit: one
        call instead of BEGIN, statement and COMMIT); on a full disk, once more with the reserved space."""
        with self._lock:
            if self._depth:
                self._execute(sql, args)
                return
            try:
                try:
                    self._conn.execute(sql, args)
                except sqlite3.OperationalError as e:
                    if not _is_full(e) or not self._release_ballast():
                        raise
                    self._conn.execute(sql, args)  # SQLite rolled the statement back: nothing is half done
            except sqlite3.OperationalError as e:
                if _is_full(e):
                    raise CacheFull("cache disk is full: the journal cannot record the change") from e
                raise

    def put(self, e: Entry) -> None:
        """Insert or replace the row of e.key."""
        values = [getattr(e, c) for c in _COLUMNS]
        values[_XATTRS] = _encode_xattrs(e.xattrs)
        values[_REMOTE] = int(e.remote)
        self._write(_PUT_SQL, tuple(values))

    def remove(self, key: str) -> None:
        self._write("DELETE FROM entries WHERE key = ?", (key,))

    def add_conflict(self, c: ConflictRecord) -> None:
        """Remember a conflict, keeping the newest MAX_CONFLICTS_KEPT."""
        with self.transaction():
            self._execute("INSERT INTO conflicts (at, op, key, conflict_key, provider, detail) "
                          "VALUES (?, ?, ?, ?, ?, ?)", (c.at, c.op, c.key, c.conflict_key, c.provider, c.detail))
            self._execute("DELETE FROM conflicts WHERE id <= (SELECT MAX(id) FROM conflicts) - ?",
                          (MAX_CONFLICTS_KEPT,))

    def conflicts(self, limit: int = MAX_CONFLICTS_KEPT) -> tuple[int, list[ConflictRecord]]:
        """How many conflicts this cache ever met, and the newest limit of them, newest first."""
        with self._lock:
            row = self._conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'conflicts'").fetchone()
            cur = self._conn.execute("SELECT at, op, key, conflict_key, provider, detail FROM conflicts "
                                     "ORDER BY id DESC LIMIT ?", (limit,))
            return (int(row[0]) if row else 0), [ConflictRecord(*r) for r in cur]

    def add_upload(self, u: UploadRecord) -> None:
        """Remember an open multipart upload (committed before its first part is sent)."""
        with self.transaction():
            self._execute("INSERT OR REPLACE INTO uploads (provider, upload_id, key, started) VALUES (?, ?, ?, ?)",
                          (u.provider, u.upload_id, u.key, u.started))

    def remove_upload(self, provider: str, upload_id: str) -> None:
        """Forget a multipart upload that was completed or aborted (no error if it is not recorded)."""
        with self.transaction():
            self._execute("DELETE FROM uploads WHERE provider = ? AND upload_id = ?", (provider, upload_id))

    def uploads(self) -> list[UploadRecord]:
        """Every recorded open multipart upload, oldest first."""
        with self._lock:
            cur = self._conn.execute("SELECT provider, key, upload_id, started FROM uploads ORDER BY started")
            return [UploadRecord(*row) for row in cur]

    def sync(self) -> None:
        """Make every committed row durable on disk (fsync semantics), not only crash-safe."""
        with self._lock:
            self._conn.execute("PRAGMA wal_checkpoint(FULL)")

    def close(self) -> None:
        with self._lock:
            self._conn.close()
