"""`storefs migrate`: copy every key from one provider to another, verified, resumable, in parallel.

Each key goes: source read into a temp file while hashed (sha256) -> state row 'copying' with
that hash -> put_file on the destination -> read back and compared (size, sha256, mtime) ->
row 'verified' -> source deleted (only with --delete-source). The state file (SQLite, WAL)
outlives a kill -9: on the next run a verified key whose source is unchanged (size, etag,
mtime of the listing) is skipped, and a key left 'copying' is checked on the destination and
marked verified without a second copy when the bytes are already there.

To a local provider, object metadata never makes a setuid or setgid file or folder (the bits
are dropped), and the files are owned by whoever runs the migration: the uid/gid metadata is
applied only by root, and only with --keep-owner (anyone who can write an object could
otherwise plant a root-owned setuid program on this host).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import logging
import os
import shutil
import sqlite3
import stat
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from ..errors import NotEmpty, NotFound, StorefsError, UsageError
from ..keys import parents
from ..providers.base import NS_PER_SECOND, ObjectInfo, ObjectMeta, Provider
from .common import AdminError, Store, content_type, normalize_prefix
from .escape import printable
from .mounts import storage_identity
from .progress import Progress, format_size

log = logging.getLogger(__name__)

DEFAULT_JOBS = 4
DIR_MODE = 0o040755
FILE_MODE = 0o100644
#: mode bits object metadata never sets on a local destination
PRIVILEGE_BITS = stat.S_ISUID | stat.S_ISGID
ROOT_STATE_DIR = "/var/lib/storefs"
USER_STATE_HOME = "~/.local/state"  # XDG_STATE_HOME's default
STATE_SUBFOLDER = "storefs"
STATE_DIR_MODE = 0o700  # the state names every key migrated
STATE_DIGEST_CHARS = 12
LOCK_SUFFIX = ".lock"
#: the state database and what SQLite keeps beside it in WAL mode
SQLITE_SIDE_FILES = ("", "-wal", "-shm")


class VerifyError(StorefsError):
    """The destination does not hold what was read from the source."""


@dataclass
class Row:
    """A key's line in the state file."""

    key: str
    size: int
    etag: str | None
    mtime: float    # seconds: the state file's REAL column (a changed mtime shows as a changed float)
    sha256: str | None
    state: str      # 'copying' (sent, or being sent) or 'verified'
    copies: int     # how many times the bytes were sent: the proof that a resume did not copy twice


class MigrationState:
    """The SQLite state file of one source -> destination migration; safe to use from several threads."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._lock = threading.Lock()  # protects the SQLite connection (the copy threads share it)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL survives a kill -9 of this process
        self._db.execute("""CREATE TABLE IF NOT EXISTS keys (
            key TEXT PRIMARY KEY, size INTEGER NOT NULL, etag TEXT, mtime REAL NOT NULL, sha256 TEXT,
            state TEXT NOT NULL, copies INTEGER NOT NULL DEFAULT 0, updated REAL NOT NULL)""")

    def get(self, key: str) -> Row | None:
        with self._lock:
            r = self._db.execute("SELECT key, size, etag, mtime, sha256, state, copies FROM keys WHERE key = ?",
                                 (key,)).fetchone()
        return Row(*r) if r else None

    def copying(self, key: str, src: ObjectInfo, sha256: str) -> None:
        """Recorded before the bytes are sent, so a crash mid-send leaves a row to check on restart."""
        with self._lock:
            self._db.execute(
                "INSERT INTO keys (key, size, etag, mtime, sha256, state, copies, updated) "
                "VALUES (?, ?, ?, ?, ?, 'copying', 1, ?) ON CONFLICT(key) DO UPDATE SET size = excluded.size, "
                "etag = excluded.etag, mtime = excluded.mtime, sha256 = excluded.sha256, state = 'copying', "
                "copies = copies + 1, updated = excluded.updated",
                (key, src.size, src.etag, src.mtime_ns / NS_PER_SECOND, sha256, time.time()))

    def verified(self, key: str) -> None:
        with self._lock:
            self._db.execute("UPDATE keys SET state = 'verified', updated = ? WHERE key = ?", (time.time(), key))

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _same_source(row: Row, src: ObjectInfo) -> bool:
    """The source is what the row was made from (a changed source is copied again)."""
    return row.size == src.size and row.etag == src.etag and row.mtime == src.mtime_ns / NS_PER_SECOND


def _sha256_of(provider: Provider, key: str) -> tuple[int, str]:
    """Size and sha256 of the object's bytes as the provider serves them now."""
    h, n = hashlib.sha256(), 0
    for data in provider.read_stream(key):
        h.update(data)
        n += len(data)
    return n, h.hexdigest()


@dataclass
class Counts:
    copied: int = 0
    skipped: int = 0     # verified by an earlier run
    resumed: int = 0     # copied by an interrupted run, verified now without sending the bytes again
    failed: int = 0
    deleted: int = 0     # source keys removed (--delete-source)
    folders: int = 0     # empty folders created on the destination


class Migration:
    """One run: the key list of the source, the worker threads, the state file and the counters."""

    def __init__(self, store: Store, src: str, dst: str, state: MigrationState, tmp_dir: str,
                 delete_source: bool, progress: Progress | None, keep_owner: bool = False) -> None:
        self.store = store
        self.src_name, self.dst_name = src, dst
        self.src, self.dst = store.providers[src], store.providers[dst]
        #: a local destination makes real files: no setuid/setgid, owners only as asked by root
        self.to_host = self.dst.kind == "local"
        self.keep_owner = keep_owner
        self.state = state
        self.tmp_dir = tmp_dir
        self.delete_source = delete_source
        self.progress = progress
        self.counts = Counts()
        self._lock = threading.Lock()  # protects counts (the copy threads add to it)

    def _count(self, field: str, files: int = 0, nbytes: int = 0) -> None:
        with self._lock:
            setattr(self.counts, field, getattr(self.counts, field) + 1)
        if self.progress is not None and (files or nbytes):
            self.progress.add(files, nbytes)

    def _meta(self, key: str, listed: ObjectInfo) -> tuple[ObjectInfo, ObjectMeta]:
        """The source's head and the metadata the destination gets; fails if the source moved on."""
        head = self.src.head(key)
        if head.size != listed.size or (listed.etag and head.etag and head.etag != listed.etag):
            raise StorefsError(f"{key} changed on {self.src_name} while migrating (run again to copy it)")
        uid, gid = self._owner(head.uid, head.gid)
        return head, ObjectMeta(mtime_ns=head.mtime_ns, mode=self._mode(head.mode or FILE_MODE), uid=uid, gid=gid,
                                content_type=content_type(self.store, head), xattrs=dict(head.xattrs))

    def _mode(self, mode: int) -> int:
        """The mode the destination gets: on a local provider never setuid or setgid."""
        return mode & ~PRIVILEGE_BITS if self.to_host else mode

    def _owner(self, uid: int | None, gid: int | None) -> tuple[int | None, int | None]:
        """The owner the destination gets: on a local provider only with --keep-owner (checked to be root)."""
        if self.to_host and not self.keep_owner:
            return None, None
        return uid, gid

    def _verify(self, key: str, head: ObjectInfo, sha256: str) -> bool:
        """Whether the destination holds the source's bytes (read back) and mtime (to the nanosecond)."""
        try:
            info = self.dst.head(key)
        except NotFound:
            return False
        if info.size != head.size or info.mtime_ns != head.mtime_ns:
            return False
        return _sha256_of(self.dst, key) == (head.size, sha256)

    def _copy(self, key: str, listed: ObjectInfo) -> None:
        head, meta = self._meta(key, listed)
        h, n = hashlib.sha256(), 0
        with tempfile.NamedTemporaryFile(dir=self.tmp_dir, prefix="part-") as tmp:
            for data in self.src.read_stream(key):
                h.update(data)
                tmp.write(data)
                n += len(data)
                if self.progress is not None:
                    self.progress.add(nbytes=len(data))
            tmp.flush()
            if n != head.size:
                raise StorefsError(f"{key}: read {n} bytes from {self.src_name}, expected {head.size} "
                                   "(changed while migrating? run again)")
            sha = h.hexdigest()
            self.state.copying(key, listed, sha)
            self.dst.put_file(key, tmp.name, meta)
        if not self._verify(key, head, sha):
            raise VerifyError(f"{key}: the copy on {self.dst_name} does not match the source "
                              "(size, sha256 or mtime)")
        self.state.verified(key)

    def _delete_source(self, key: str, listed: ObjectInfo) -> None:
        """Only a key whose copy is still there with the same size goes."""
        if self.dst.head(key).size != listed.size:
            raise VerifyError(f"{key}: the copy on {self.dst_name} changed since it was verified; source kept")
        self.src.delete(key)
        self._count("deleted")

    def one(self, listed: ObjectInfo) -> None:
        """Bring one key over; every failure is counted and reported, never raised."""
        key = listed.key
        try:
            row = self.state.get(key)
            if row is not None and _same_source(row, listed) and row.state == "verified":
                self._count("skipped", 1, listed.size)
            elif (row is not None and _same_source(row, listed) and row.sha256
                  and self._verify(key, self._meta(key, listed)[0], row.sha256)):
                self.state.verified(key)
                self._count("resumed", 1, listed.size)
            else:
                self._copy(key, listed)
                self._count("copied", 1)
            if self.delete_source:
                self._delete_source(key, listed)
        except StorefsError as e:
            print(printable(f"storefs: migrate {key}: {e}"), file=sys.stderr, flush=True)
            self._count("failed", 1)

    def folders(self, dirs: list[ObjectInfo], files: list[ObjectInfo]) -> None:
        """Empty folders of the source become folders (markers) on the destination; others are implied."""
        implied = {a for info in [*files, *dirs] for a in parents(info.key)}
        for d in dirs:
            if d.key in implied:
                continue
            try:
                uid, gid = self._owner(d.uid, d.gid) if self.keep_owner else (None, None)
                self.dst.make_dir(d.key, ObjectMeta(mtime_ns=d.mtime_ns or time.time_ns(),
                                                    mode=self._mode(d.mode or DIR_MODE),
                                                    uid=uid, gid=gid, content_type="application/x-directory"))
                self._count("folders")
            except StorefsError as e:
                print(printable(f"storefs: migrate folder {d.key}: {e}"), file=sys.stderr)
                self._count("failed")

    def remove_source_folders(self, prefix: str, dirs: list[ObjectInfo], files: list[ObjectInfo]) -> None:
        """After a clean run, the source's folders below prefix that hold no file any more, deepest first."""
        start = prefix + "/" if prefix else ""
        still = {a for info in self.src.walk(start) if not info.is_dir for a in parents(info.key)}
        folders = {d.key for d in dirs} | {a for f in files for a in parents(f.key)}
        for folder in sorted(folders, key=lambda f: (f.count("/"), f), reverse=True):
            if folder.startswith(start) and folder != start and folder not in still:
                with contextlib.suppress(NotEmpty):
                    self.src.remove_dir(folder)


def state_dir() -> str:
    """Where resume state lives, apart from the cache (which may be wiped): $XDG_STATE_HOME/storefs, else
    /var/lib/storefs for root (systemd's StateDirectory=storefs) and ~/.local/state/storefs for others."""
    base = os.environ.get("XDG_STATE_HOME", "")
    if os.path.isabs(base):  # the XDG spec: a relative value is ignored
        return os.path.join(base, STATE_SUBFOLDER)
    if os.geteuid() == 0:
        return ROOT_STATE_DIR
    return os.path.join(os.path.expanduser(USER_STATE_HOME), STATE_SUBFOLDER)


def state_path(store: Store, src: str, dst: str) -> str:
    """One state file per (source, destination) pair, named by the storage both name (folder, or endpoint,
    bucket and prefix): two configs that call different buckets `s3` keep apart, a renamed section does not."""
    pair = repr((storage_identity(store.cfg.providers[src]), storage_identity(store.cfg.providers[dst])))
    digest = hashlib.sha256(pair.encode("utf-8", "surrogateescape")).hexdigest()[:STATE_DIGEST_CHARS]
    return os.path.join(state_dir(), f"migrate-{src}-to-{dst}-{digest}.db")


def legacy_state_path(store: Store, src: str, dst: str) -> str:
    """Where earlier storefs versions kept the state: the cache folder, lost with it."""
    return os.path.join(store.cfg.cache.dir, f"migrate-{src}-to-{dst}.db")


def adopt_legacy_state(old: str, new: str) -> bool:
    """Move a state file (and its SQLite WAL and shared memory) from the cache folder to new, once,
    unless a state is there already; whether it moved. A run still using the old file blocks it."""
    if not os.path.exists(old) or os.path.exists(new):
        return False
    with _exclusive(old):
        for suffix in SQLITE_SIDE_FILES:
            if os.path.exists(old + suffix):
                shutil.move(old + suffix, new + suffix)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(old + LOCK_SUFFIX)
    return True


@contextlib.contextmanager
def _exclusive(path: str) -> Iterator[None]:
    """One run per state file at a time: two runs would both copy every key."""
    fd = os.open(path + LOCK_SUFFIX, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise AdminError(f"another storefs migrate is using {path}") from None
        yield
    finally:
        os.close(fd)


def cmd_migrate(args: argparse.Namespace) -> int:
    prefix = normalize_prefix(args.prefix)
    if args.jobs < 1:
        raise UsageError(f"--jobs: must be 1 or more, got {args.jobs}")
    if args.keep_owner and os.geteuid() != 0:
        raise UsageError("--keep-owner: only root may give files to other users (run it as root, or without "
                         "--keep-owner: the files then belong to you)")
    with Store.open(args.config) as store:
        store.provider(args.source, "--from")
        store.provider(args.dest, "--to")
        if args.source == args.dest:
            raise UsageError(f"--from and --to are both {args.source!r}")
        path = os.path.abspath(args.state) if args.state else state_path(store, args.source, args.dest)
        os.makedirs(os.path.dirname(path), mode=STATE_DIR_MODE, exist_ok=True)
        if not args.state:
            old = legacy_state_path(store, args.source, args.dest)
            if adopt_legacy_state(old, path):
                print(f"storefs: moved the resume state {old} to {path} (out of the cache folder)", file=sys.stderr)
        with _exclusive(path):
            return _run(store, args, prefix, path)


def _run(store: Store, args: argparse.Namespace, prefix: str, path: str) -> int:
    src = store.providers[args.source]
    files: list[ObjectInfo] = []
    dirs: list[ObjectInfo] = []
    for info in src.walk(prefix + "/" if prefix else ""):
        (dirs if info.is_dir else files).append(info)
    store.require_prefix(prefix, bool(files or dirs))
    total = sum(f.size for f in files)
    print(f"migrate {args.source} -> {args.dest}: {len(files)} files ({format_size(total)}), {len(dirs)} folders "
          f"below {prefix or 'the root'}; state {path}", file=sys.stderr, flush=True)
    tmp_dir = path + ".tmp"
    shutil.rmtree(tmp_dir, ignore_errors=True)  # parts left by a killed run
    os.makedirs(tmp_dir, exist_ok=True)
    state = MigrationState(path)
    progress = None if args.quiet else Progress("migrate", len(files), total)
    run = Migration(store, args.source, args.dest, state, tmp_dir, args.delete_source, progress,
                    keep_owner=args.keep_owner)
    interrupted = False
    t0 = time.monotonic()
    try:
        run.folders(dirs, files)
        slots = threading.BoundedSemaphore(args.jobs * 4)  # a bounded queue, not a million futures
        with ThreadPoolExecutor(args.jobs, thread_name_prefix="migrate") as pool:
            try:
                for info in sorted(files, key=lambda f: f.key):
                    slots.acquire()
                    fut: Future[None] = pool.submit(run.one, info)
                    fut.add_done_callback(lambda _f: slots.release())
            except KeyboardInterrupt:
                interrupted = True
                pool.shutdown(wait=True, cancel_futures=True)
        if args.delete_source and not interrupted and not run.counts.failed:
            run.remove_source_folders(prefix, dirs, files)
    finally:
        if progress is not None:
            progress.close()
        state.close()
        shutil.rmtree(tmp_dir, ignore_errors=True)
    c = run.counts
    took = time.monotonic() - t0
    print(f"migrate {args.source} -> {args.dest}: {len(files)} files ({format_size(total)}) in {took:.1f}s: "
          f"{c.copied} copied, {c.skipped} skipped (verified before), {c.resumed} verified without copying, "
          f"{c.failed} failed; {c.folders} folders created"
          + (f"; {c.deleted} source files deleted" if args.delete_source else ""))
    if interrupted:
        print("storefs: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    return 1 if c.failed else 0
