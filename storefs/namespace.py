"""The file-system semantics of storefs: the providers' keys overlaid with the journal.

Every operation decides here what the user sees at once (from the cache and journal)
and what must later reach a provider (a pending journal row the uploader carries out).
Nothing here knows FUSE or boto3: paths come in as keys, failures leave as
storefs.errors exceptions.

Locks, in the order they may be taken (never the other way round):

1. Namespace._lock: the open nodes and handles, the index's rows (and so the journal's
   writes), the quiet delays and recent deletes. No provider request is made under it:
   what an operation needs from a provider is asked first, then the lock is taken and the
   index re-checked (a row that appeared meanwhile wins).
2. Journal._lock (its SQLite connection and open transaction), Uploader._cond (its queue),
   DataFiles._cond (the data files made ahead and to delete), Evictor._cond (the cache's
   measured use), OpenFile._lock (one file's chunk fetches): leaves, each taken briefly,
   under 1 or alone; none calls into the namespace while holding its own (the uploader and
   the evictor call it with theirs released).
3. RemoteView._lock (cached listings and heads): never held across a provider call, and
   taken without 1 held.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import logging
import os
import stat
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from .cache.datafiles import DataFiles
from .cache.eviction import Evictor
from .cache.index import EntryIndex
from .cache.journal import OP_COPY, OP_DELETE, OP_META, OP_MKDIR, OP_PUT, OP_RMDIR, TOMBSTONES, Entry, Journal, State
from .cache.openfile import OpenFile, default_warm_limit
from .cache.uploader import Uploader
from .config import Config
from .errors import (
    AccessRefused,
    Exists,
    IsADirectory,
    NameTooLong,
    NoAttribute,
    NotADirectory,
    NotEmpty,
    NotFound,
    NotPermitted,
    NotSupported,
    ProviderError,
    ProviderUnavailable,
    ReadOnly,
    StorefsError,
    TooLarge,
)
from .layout import Layout
from .providers.base import ObjectInfo, ObjectMeta, Provider
from .remote import RemoteView

log = logging.getLogger(__name__)

LINK_MODE = stat.S_IFLNK | 0o777  # what s3fs stores for a symlink (decimal 41471)
SETID_BITS = stat.S_ISUID | stat.S_ISGID
PERM_BITS = 0o7777
#: relatime: an access time older than this moves on the next read even if nothing changed (as Linux)
RELATIME_MAX_AGE = 24 * 3600.0
#: the kinds of node mknod makes, besides regular files
SPECIAL_TYPES = (stat.S_IFIFO, stat.S_IFSOCK, stat.S_IFCHR, stat.S_IFBLK)
OCTET_STREAM = "application/octet-stream"
MAX_LINKS_KEPT = 10_000  # link targets read from providers, kept in memory
DIR_CONTENT_TYPE = "application/x-directory"
HIDDEN_PREFIX = ".fuse_hidden"  # libfuse's name for an unlinked file that is still open
STOREFS_XATTRS = ("user.storefs.content_type", "user.storefs.state", "user.storefs.provider",
                  "user.storefs.url", "user.storefs.size", "user.storefs.etag")


@dataclass(frozen=True)
class Attr:
    """What getattr answers; ctime and atime of 0 read as the mtime (objects that never stored them)."""

    is_dir: bool
    size: int
    mtime: float
    mode: int
    uid: int
    gid: int
    ctime: float = 0.0
    atime: float = 0.0
    rdev: int = 0


class Caller:
    """Who asks for a change: the kernel's uid, gid and pid of the calling process.

    The kernel checks modes itself (default_permissions); the core applies the rules the
    kernel leaves to the file system (who may chmod, chown, set times, clear set-id bits).
    Supplementary groups are read from /proc only when a rule needs them.
    """

    __slots__ = ("uid", "gid", "pid", "_groups")

    def __init__(self, uid: int, gid: int, pid: int = 0) -> None:
        self.uid, self.gid, self.pid = uid, gid, pid
        self._groups: frozenset[int] | None = None

    @property
    def is_root(self) -> bool:
        return self.uid == 0

    def in_group(self, gid: int) -> bool:
        """Whether gid is the caller's group or one of its supplementary groups."""
        if gid == self.gid:
            return True
        if self._groups is None:
            self._groups = _proc_groups(self.pid)
        return gid in self._groups

    def may(self, attr: Attr, want: int) -> bool:
        """Whether the mode bits of attr grant want (os.R_OK/W_OK/X_OK bits) to this caller."""
        if self.is_root:
            return True
        if self.uid == attr.uid:
            bits = (attr.mode >> 6) & 7
        elif self.in_group(attr.gid):
            bits = (attr.mode >> 3) & 7
        else:
            bits = attr.mode & 7
        return bits & want == want


def _proc_groups(pid: int) -> frozenset[int]:
    """The supplementary groups of process pid (none when it is gone or /proc hides it)."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("Groups:"):
                    return frozenset(int(g) for g in line.split()[1:])
    except (OSError, ValueError):
        pass
    return frozenset()


#: internal changes (recovery, the daemon's own admin calls) act with every right
TRUSTED = Caller(0, 0)


@dataclass
class Handle:
    node: OpenFile
    writable: bool
    kills_setid: bool = False  # opened for writing by a non-root user: a write clears set-user/group-ID


@dataclass
class Found:
    """What a key is right now: a file or a folder, from the cache, journal or a provider."""

    is_dir: bool
    entry: Entry | None = None
    node: OpenFile | None = None
    remote: tuple[str, ObjectInfo] | None = None


def _parent(key: str) -> str:
    return key.rpartition("/")[0]


def _plausible(name: str) -> bool:
    """Cheap check that a name could be a key (lookups run it on every miss of the kernel)."""
    if name.isprintable():
        if len(name) > 63 and len(name.encode("utf-8", "surrogateescape")) > 255:
            raise NameTooLong(f"{name[:40]}...: names are at most 255 bytes")
        try:
            name.encode("utf-8")
        except UnicodeEncodeError:
            return False  # bytes that are not UTF-8 (surrogate escapes)
        return True
    return False  # newline or another control character


class Namespace:
    """The core: lookups, listings and changes of the mounted tree (thread-safe)."""

    def __init__(self, config: Config, layout: Layout, providers: dict[str, Provider],
                 journal: Journal, data: DataFiles) -> None:
        self.cfg = config
        self.layout = layout
        self.providers = providers
        self.data = data
        self.index = EntryIndex(journal)
        fc = config.fuse
        self.read_only = fc.read_only
        self.index.read_only = fc.read_only
        self.atime_mode = fc.atime
        # what objects without ownership metadata show (mount options uid, gid, umask, file_mode, dir_mode)
        self.file_mode = stat.S_IFREG | fc.default_file_mode()
        self.dir_mode = stat.S_IFDIR | fc.default_dir_mode()
        order = [config.default_provider] + [p for p in providers if p != config.default_provider]
        self.remote = RemoteView(providers, order, config.fuse.dir_cache_ttl, config.fuse.negative_timeout)
        self._changed_at = 0.0  # monotonic time of the last change through the file system
        self.uploader = Uploader(self, config.cache.uploaders, config.cache.retry_max_delay,
                                 idle=lambda: time.monotonic() - self._changed_at)
        self.delay = config.cache.writeback_delay
        self.chunk_size = config.cache.chunk_size
        self.readahead = config.cache.readahead
        self.warm_limit = default_warm_limit()
        self.seq_window = 2 * config.fuse.read_ahead  # how far out of order a sequential reader's requests come
        self.root = config.tenant or ""  # the key of the mount root (a single-tenant mount)
        self.uid = os.getuid() if fc.uid is None else fc.uid
        self.gid = os.getgid() if fc.gid is None else fc.gid
        self.mounted_at = time.time()  # the mtime of folders no provider dates (as rclone shows them)
        self._lock = threading.RLock()  # the index's rows, _nodes, _handles, _quiet_until, _just_deleted
        self._nodes: dict[str, OpenFile] = {}
        self._handles: dict[int, Handle] = {}
        self._fh = itertools.count(1)
        self._quiet_until: dict[str, float] = {}
        self._flushing = 0
        self._just_deleted: dict[str, float] = {}  # keys whose delete landed a moment ago
        self._deleted_pruned = 0.0
        self._links: dict[str, tuple[str | None, bytes]] = {}  # key -> (etag, target) of links read lately
        self._readahead = ThreadPoolExecutor(max_workers=8, thread_name_prefix="storefs-readahead")
        self.counters = {"bytes_written": 0, "bytes_read": 0, "bytes_fetched": 0, "bytes_warmed": 0,
                         "write_calls": 0, "read_calls": 0}
        self._recover()
        self.evictor = Evictor(self, config.cache.max_size, lambda: self.data.usage()[0], config.cache.space_wait,
                               after_pass=self.index.journal.restore_ballast)

    # ---- lifecycle -------------------------------------------------------------

    def _recover(self) -> None:
        """Resume what a previous run (perhaps killed) left pending, and drop orphans."""
        known = set()
        with self.index.transaction():
            for e in list(self.index.entries.values()):
                if e.op == OP_PUT and (not e.data_name or not self.data.exists(e.data_name)):
                    log.error("cache data of dirty %s is missing; the provider keeps its older copy", e.key)
                    self.index.remove(e.key)
                    continue
                if e.data_name:
                    known.add(e.data_name)
                changed = e.state == State.UPLOADING
                if e.op == OP_PUT:  # writes after the last close reached the file, not the row
                    size = self.data.size(e.data_name)  # type: ignore[arg-type]
                    changed = changed or size != e.size
                    e.size = size
                if changed:
                    e.state = State.DIRTY
                    self.index.refresh(e)
        for name in self.data.names() - known:
            self.data.remove(name)
        pending = self.index.pending()
        if pending:
            log.info("recovered %d pending changes from the journal", len(pending))

    def start(self) -> None:
        """Start the uploader threads (called from FUSE init, never before a fork); a read-only
        mount uploads nothing, so pending rows of an earlier mount wait for a writable one."""
        self.data.start()
        if not self.read_only:
            self.uploader.start()
        self.evictor.start()
        self.remote.start()
        # off the FUSE init thread: a watcher walks its folder, and a link planted there that points
        # into this very mount would make it wait on the kernel, which waits for init to return
        threading.Thread(target=self._watch_providers, name="storefs-watch", daemon=True).start()
        if not self.read_only:
            for e in self.index.pending():
                self.uploader.schedule(e.key, 0.0)

    def _watch_providers(self) -> None:
        """Hear of changes other programs make to the providers (where a provider can tell)."""
        for name, p in self.providers.items():
            try:
                p.watch(lambda key, name=name: self.changed_outside(name, key))
            except Exception:
                log.exception("watching provider %s for outside changes failed", name)

    def _writable(self, key: str) -> None:
        """Every change of a read-only mount answers EROFS (one log line at the edge)."""
        if self.read_only:
            raise ReadOnly(f"{key or '/'}: the mount is read-only")

    def stop(self) -> None:
        self.uploader.stop()
        self.evictor.stop()
        self.remote.stop()
        self._readahead.shutdown(wait=False, cancel_futures=True)
        self.data.stop()

    # ---- lookups ----------------------------------------------------------------

    def _find(self, key: str, offline_dir: bool = False) -> Found | None:
        """What key is now. While its provider does not answer, an unknown key is absent
        (so creates keep working), or a folder when offline_dir (a parent being written into)."""
        if key == self.root:
            return Found(is_dir=True)
        if not _plausible(key.rpartition("/")[2]):
            return None  # storefs never lists such a name, and never asks a provider for it
        clean: Entry | None = None
        kept: Entry | None = None  # a folder's metadata this mount set, for providers that keep none
        with self._lock:
            node = self._nodes.get(key)
            if node is not None:
                return Found(is_dir=False, entry=node.entry, node=node)
            e = self.index.get(key)
            if e is not None and not e.is_tombstone:
                if e.pending:
                    return Found(is_dir=False, entry=e)
                clean = e  # a cached copy: good while the provider still has the same object
            d = self.index.get(key + "/")
            if d is not None and not d.is_tombstone:
                if d.pending:
                    return Found(is_dir=True, entry=d)
                kept = d
            if self.index.has_live_below(key + "/"):
                return Found(is_dir=True, entry=kept)
            file_gone = e is not None and clean is None
            dir_gone = d is not None and d.is_tombstone
        try:
            r = self.remote.lookup(key, need_meta=clean is None)
        except ProviderUnavailable:
            if clean is not None:
                return Found(is_dir=False, entry=clean)
            if kept is not None or offline_dir or self.index.any_below(key + "/"):
                return Found(is_dir=True, entry=kept)  # the cache holds something below it: it is a folder
            return None
        if kept is not None and (r is None or not r[1].is_dir):
            self._forget_dir(kept)  # removed (or replaced by a file) elsewhere
            kept = None
        if clean is not None and (r is None or r[1].is_dir or not self._still_valid(clean, r[1])):
            if self.remote.is_down(clean.provider):
                return Found(is_dir=False, entry=clean)  # an old listing answered: no evidence
            log.info("%s changed in its provider; dropping the cached copy", key)
            self.evict(clean)
            clean = None
        if r is None:
            return None
        if r[1].is_dir:
            if dir_gone:
                return None
            # the provider's own folder metadata wins where it keeps some; the cache fills in where it does not
            return Found(is_dir=True, remote=r, entry=kept if r[1].mode is None else None)
        if clean is not None:
            return Found(is_dir=False, entry=clean, remote=r)
        return None if file_gone else Found(is_dir=False, remote=r)

    def _forget_dir(self, d: Entry) -> None:
        """Drop the kept metadata of a folder that is gone from its provider."""
        with self._lock:
            if self.index.get(d.key) is d and not d.pending:
                self.index.remove(d.key)

    def changed_outside(self, provider: str, key: str) -> None:
        """Another program changed key in a provider: forget what we cached about it."""
        key = key.rstrip("/")
        self.remote.forget(key)
        with self._lock:
            e = self.index.get(key)
        if e is None or e.pending or e.provider != provider:
            return
        try:
            info = self.providers[provider].head(key)
        except StorefsError:
            info = None
        if info is None or not self._still_valid(e, info):
            self.evict(e)

    def eviction_candidates(self) -> list[Entry]:
        with self._lock:
            found = [e for e in self.index.entries.values()
                     if e.op is None and e.data_name and e.key not in self._nodes]
        return sorted(found, key=lambda e: e.used)

    def evict(self, e: Entry) -> bool:
        """Drop a clean cached copy (its object stays in the provider); never an open or dirty one."""
        with self._lock:
            if e.pending or e.key in self._nodes or self.index.get(e.key) is not e:
                return False
            self.index.remove(e.key)
            self.data.remove(e.data_name)
            return True

    def _attr(self, f: Found) -> Attr:
        e = f.entry
        if f.node is not None:
            return Attr(False, f.node.size, e.mtime, e.mode, self._id(e.uid, self.uid),  # type: ignore[union-attr]
                        self._id(e.gid, self.gid), e.ctime, e.atime, e.rdev)  # type: ignore[union-attr]
        if e is not None:
            return Attr(f.is_dir, 0 if f.is_dir else e.size, e.mtime, e.mode,
                        self._id(e.uid, self.uid), self._id(e.gid, self.gid), e.ctime, e.atime, e.rdev)
        if f.remote is not None:
            info = f.remote[1]
            mode = info.mode or (self.dir_mode if f.is_dir else self.file_mode)
            return Attr(f.is_dir, 0 if f.is_dir else info.size, info.mtime or self.mounted_at, mode,
                        self._id(info.uid, self.uid), self._id(info.gid, self.gid), info.ctime or 0.0,
                        info.atime or 0.0, info.rdev or 0)
        return Attr(True, 0, self.mounted_at, self.dir_mode, self.uid, self.gid)

    @staticmethod
    def _id(value: int | None, default: int) -> int:
        return default if value is None else value

    def getattr(self, key: str, fh: int | None = None) -> Attr:
        if fh is not None:
            h = self._handles.get(fh)
            if h is not None:
                return self._attr(Found(is_dir=False, entry=h.node.entry, node=h.node))
        f = self._find(key)
        if f is None:
            raise NotFound(key)
        return self._attr(f)

    def readdir(self, key: str) -> list[str]:
        return self._children(key)[0]

    def readdir_attrs(self, key: str) -> list[tuple[str, Attr | None]]:
        """Children with what getattr would answer for each, where that costs no request (None
        otherwise): the kernel then stats a listed folder without a lookup per name."""
        names, listing = self._children(key)
        prefix = key + "/" if key else ""
        out: list[tuple[str, Attr | None]] = []
        for name in names:
            k = prefix + name
            with self._lock:  # the same order of evidence as _find
                node = self._nodes.get(k)
                e = self.index.get(k)
                d = self.index.get(k + "/")
                below = node is None and self.index.has_live_below(k + "/")
            r = listing.get(name) or listing.get(name + "/")
            f: Found | None = None
            if node is not None:
                f = Found(is_dir=False, entry=node.entry, node=node)
            elif e is not None and not e.is_tombstone:
                if e.pending or (r is not None and not r[1].is_dir and self._still_valid(e, r[1])):
                    f = Found(is_dir=False, entry=e)
            elif d is not None and not d.is_tombstone and (d.pending or below or (r is not None and r[1].is_dir)):
                f = Found(is_dir=True, entry=d if d.pending or r is None or r[1].mode is None else None,
                          remote=r if r is not None and r[1].is_dir else None)
            elif below:
                f = Found(is_dir=True)
            elif r is not None and e is None and d is None:
                if r[1].is_dir:
                    known, meta = self.remote.dir_meta_cached(k, r)
                    f = Found(is_dir=True, remote=meta) if known else None  # else: one HEAD, at its lookup
                elif self.providers[r[0]].listing_has_metadata:
                    f = Found(is_dir=False, remote=r)
            out.append((name, None if f is None else self._attr(f)))
        return out

    def _children(self, key: str) -> tuple[list[str], dict[str, tuple[str, ObjectInfo]]]:
        """The names in folder key, and the provider listing they were merged from."""
        f = self._find(key)
        if f is None:
            raise NotFound(key)
        if not f.is_dir:
            raise NotADirectory(key)
        prefix = key + "/" if key else ""
        names: set[str] = set()
        with self._lock:  # before the provider: what is pending now may be uploaded while we list
            local = self.index.children(prefix)
        try:
            listing = self.remote.listing(prefix)
        except ProviderUnavailable:
            if not (f.entry is not None or self.index.has_live_below(prefix)):
                raise
            listing = {}  # a folder this mount made: what the journal knows is all there is
        self.remote.prefetch_below(prefix, listing)
        for name in listing:
            with self._lock:
                e = self.index.get(prefix + name)
            if e is not None and e.is_tombstone:
                continue
            if e is None and prefix + name.rstrip("/") in self._just_deleted:
                continue  # a listing from before the delete landed (its tombstone is gone already)
            try:
                self.layout.check_name(name.rstrip("/"))
            except StorefsError as err:
                log.warning("skipping %r in a listing: %s", prefix + name, repr(str(err))[1:-1])
                continue
            names.add(name.rstrip("/"))
        with self._lock:  # ... but not what was deleted meanwhile
            names.update(n.rstrip("/") for n in local
                         if not ((e := self.index.get(prefix + n)) is not None and e.is_tombstone))
        return sorted(names), listing

    def _require_dir(self, key: str) -> Found:
        f = self._find(key, offline_dir=True)
        if f is None:
            raise NotFound(f"{key or '/'}: parent folder does not exist")
        if not f.is_dir:
            raise NotADirectory(key)
        return f

    def _new_owner(self, parent: Found, uid: int, gid: int) -> tuple[int, int, bool]:
        """Owner of a new entry, and whether the folder passes its group on (set-group-ID folders, as ext4)."""
        a = self._attr(parent)
        if a.mode & stat.S_ISGID:
            return uid, a.gid, True
        return uid, gid, False

    def _dir_row(self, key: str, f: Found) -> Entry:
        """A journal row for folder key as it is now, to carry a change of its metadata or times."""
        if f.entry is not None:
            return f.entry
        pname = f.remote[0] if f.remote else self.cfg.default_provider
        info = f.remote[1] if f.remote else None
        xattrs: dict[str, bytes] = dict(info.xattrs) if info else {}
        if info is not None and key != self.root and self.providers[pname].listing_has_metadata:
            xattrs = self._dir_xattrs(pname, key)  # a disk's listing leaves xattrs out
        return Entry(key + "/", pname, kind="dir", state=State.DIRTY, op=OP_MKDIR, remote=True,
                     mtime=(info.mtime if info else 0.0) or self.mounted_at, ctime=(info.ctime or 0.0) if info else 0.0,
                     atime=(info.atime or 0.0) if info else 0.0, mode=(info.mode if info else None) or self.dir_mode,
                     uid=info.uid if info else None, gid=info.gid if info else None, xattrs=xattrs)

    def _dir_xattrs(self, pname: str, key: str) -> dict[str, bytes]:
        try:
            info = self.providers[pname].head_dir(key + "/")
        except NotFound:
            return {}
        return dict(info.xattrs) if info else {}

    def _prepared(self, key: str, f: Found | None) -> Found | None:
        """Folder f (at key) with the row a change of its times would start from, built now: building
        it may ask the provider (a disk's xattrs), which never happens under the core lock."""
        if f is None or key == self.root or f.entry is not None:
            return f
        with self._lock:
            row = self.index.get(key + "/")
        if row is not None and not row.is_tombstone:
            return f  # _touch_dir takes the row itself
        return Found(is_dir=True, entry=self._dir_row(key, f), remote=f.remote)

    def _touch_dir(self, key: str, f: Found | None, now: float) -> None:
        """An entry was created, removed or renamed in folder key: its mtime and ctime move, as on
        a disk, and reach the provider with its marker. Called with the core lock held."""
        if key == self.root or f is None:
            return
        row = self.index.get(key + "/")
        if row is None or row.is_tombstone:
            row = self._dir_row(key, f if row is None else Found(is_dir=True))
            new_row = True
        else:
            new_row = row.op is None
        row.mtime = row.ctime = now
        row.op = row.op or OP_MKDIR
        row.state = State.DIRTY
        row.generation += 1
        # a later touch of a row already journaled only moves its times: not worth a commit per create,
        # nor a new place in the upload queue (its quiet delay moves, which the queue asks about)
        self.index.put(row, persist=new_row)
        self._quiet_until[row.key] = time.monotonic() + self.delay
        if new_row or self.uploader.is_busy(row.key):  # busy: its upload is of older times, once more after it
            self.uploader.schedule(row.key, self.delay)

    # ---- folders ----------------------------------------------------------------

    def mkdir(self, key: str, mode: int, uid: int, gid: int) -> None:
        self._writable(key)
        self.layout.check_dir("/" + key)
        parent = self._prepared(_parent(key), self._require_dir(_parent(key)))
        if self._find(key) is not None:
            raise Exists(key)
        uid, gid, inherit = self._new_owner(parent, uid, gid)
        perm = (mode & PERM_BITS) | (stat.S_ISGID if inherit else 0)
        now = time.time()
        with self._lock, self.index.transaction():
            old = self.index.get(key + "/")
            e = Entry(key + "/", self.cfg.default_provider, kind="dir", state=State.DIRTY, op=OP_MKDIR,
                      mtime=now, ctime=now, atime=now, mode=stat.S_IFDIR | perm, uid=uid, gid=gid,
                      remote=bool(old and old.remote), generation=(old.generation + 1) if old else 1)
            self.index.put(e)
            self._touch_dir(_parent(key), parent, now)
        if old is None:
            self.remote.known_empty(key)
        self._schedule(e.key)

    def rmdir(self, key: str) -> None:
        self._writable(key)
        if key == self.root:
            raise NotPermitted("cannot remove the mount root")
        f = self._find(key)
        if f is None:
            raise NotFound(key)
        if not f.is_dir:
            raise NotADirectory(key)
        names = self.readdir(key)
        if names:
            log.debug("rmdir %s: not empty, holds %s", key, sorted(names)[:5])
            raise NotEmpty(key)
        parent = self._prepared(_parent(key), self._find(_parent(key)))
        remote = self._provider_has_dir(key, f)
        with self._lock, self.index.transaction():
            self._drop_dir(key, f, remote)
            self._touch_dir(_parent(key), parent, time.time())

    def _provider_has_dir(self, key: str, f: Found) -> bool:
        """Whether a provider may hold folder key (asked, without the core lock, only when the cache
        knows the folder through its children alone): its removal then needs a tombstone."""
        if f.remote is not None or f.entry is not None:
            return True
        with self._lock:
            old = self.index.get(key + "/")
            if old is not None and (old.remote or self.uploader.is_busy(old.key)):
                return True
        try:
            return self.remote.lookup(key) is not None
        except ProviderUnavailable:
            return True  # removing a marker that is not there is harmless

    def _drop_dir(self, key: str, f: Found, remote: bool) -> None:
        """Remove the empty folder key locally, leaving a tombstone if a provider may have it
        (remote, from _provider_has_dir, asked before the lock was taken)."""
        old = self.index.get(key + "/")
        remote = remote or f.remote is not None or (old is not None and (old.remote or self.uploader.is_busy(old.key)))
        if remote:
            provider = old.provider if old else (f.remote[0] if f.remote else self.cfg.default_provider)
            self.index.put(Entry(key + "/", provider, kind="dir", state=State.DIRTY, op=OP_RMDIR, remote=True,
                                 generation=(old.generation + 1) if old else 1))
            self._schedule(key + "/")
        elif old is not None:
            self.index.remove(key + "/")

    # ---- files: open, read, write, close ---------------------------------------

    def create(self, key: str, mode: int, uid: int, gid: int, exclusive: bool) -> int:
        self._writable(key)
        self.layout.check_file("/" + key)
        self.layout.check_content_type("/" + key)
        parent = self._prepared(_parent(key), self._require_dir(_parent(key)))
        f = self._find(key)
        if f is not None:
            if exclusive:
                raise Exists(key)
            if f.is_dir:
                raise IsADirectory(key)
            fh = self.open(key, os.O_RDWR, Caller(uid, gid))
            self.truncate(key, 0, fh)
            return fh
        uid, gid, _ = self._new_owner(parent, uid, gid)
        name, fd = self.data.create()  # outside the lock: with no file ready, the disk makes one
        now = time.time()
        with self._lock:
            old = self.index.get(key)
            e = Entry(key, self._route(key, 0), kind="file", state=State.DIRTY, op=OP_PUT, data_name=name,
                      mtime=now, ctime=now, atime=now, mode=stat.S_IFREG | (mode & PERM_BITS), uid=uid, gid=gid,
                      generation=(old.generation + 1) if old else 1,
                      remote=bool(old and (old.remote or self.uploader.is_busy(key))))
            # journaled at the first flush (close): a crash before that loses a file nobody
            # closed, as on a disk, and the recovery sweep removes its orphaned data file
            self.index.put(e, persist=False)
            self._touch_dir(_parent(key), parent, now)
            node = OpenFile(e, fd, None, self.chunk_size)
            node.dirty = True
            self._nodes[key] = node
            self._just_deleted.pop(key, None)
            return self._new_handle(node, True, uid != 0)

    def symlink(self, key: str, target: bytes, caller: Caller) -> None:
        """A link as s3fs stores it: an object whose body is the target, never interpreted here."""
        self._make_node(key, LINK_MODE, caller, target, 0)

    def mknod(self, key: str, mode: int, rdev: int, caller: Caller) -> None:
        """A FIFO, socket or device node: a zero-byte object whose mode carries the type (s3fs's form).
        The kernel serves FIFO and socket I/O; device nodes are shown, never opened (the mount is nodev)."""
        kind = stat.S_IFMT(mode)
        if kind in (0, stat.S_IFREG):
            self.release(self.create(key, mode, caller.uid, caller.gid, exclusive=True))
            return
        if kind not in SPECIAL_TYPES:
            raise StorefsError(f"{key}: mknod of file type {kind:o}", code=errno.EINVAL)
        if kind in (stat.S_IFCHR, stat.S_IFBLK):
            if not caller.is_root:
                raise NotPermitted(f"{key}: only root makes device nodes")
            if os.geteuid() != 0 and self.providers[self._route(key, 0)].kind == "local":
                raise NotPermitted(f"{key}: a local folder takes device nodes only from a daemon run as root")
        device = rdev if kind in (stat.S_IFCHR, stat.S_IFBLK) else 0
        self._make_node(key, kind | (mode & PERM_BITS), caller, b"", device)

    def _make_node(self, key: str, mode: int, caller: Caller, body: bytes, rdev: int) -> None:
        """A new link or special file, complete at once: journaled and scheduled like a closed file."""
        self._writable(key)
        self.layout.check_file("/" + key)
        parent = self._prepared(_parent(key), self._require_dir(_parent(key)))
        if self._find(key) is not None:
            raise Exists(key)
        uid, gid, _ = self._new_owner(parent, caller.uid, caller.gid)
        name, fd = self.data.create()
        try:
            if body:
                os.pwrite(fd, body, 0)
        finally:
            os.close(fd)
        now = time.time()
        with self._lock, self.index.transaction():
            old = self.index.get(key)
            e = Entry(key, self._route(key, len(body)), kind="file", state=State.DIRTY, op=OP_PUT, data_name=name,
                      size=len(body), mtime=now, ctime=now, atime=now, mode=mode, uid=uid, gid=gid, rdev=rdev,
                      generation=(old.generation + 1) if old else 1,
                      remote=bool(old and (old.remote or self.uploader.is_busy(key))))
            self.index.put(e)
            self._touch_dir(_parent(key), parent, now)
            self._just_deleted.pop(key, None)
        self._schedule(key)

    def readlink(self, key: str) -> bytes:
        """The target of the link at key, as it was given: from the cache, else from its provider."""
        f = self._find(key)
        if f is None:
            raise NotFound(key)
        if not stat.S_ISLNK(self._attr(f).mode):
            raise StorefsError(f"{key}: not a symbolic link", code=errno.EINVAL, quiet=True)
        e = f.entry
        if e is not None and e.data_name and e.chunks is None and (e.op == OP_PUT or e.op is None):
            with contextlib.suppress(FileNotFoundError):
                with open(self.data.path(e.data_name), "rb") as fobj:
                    return fobj.read(e.size)
        if e is not None:
            return self._fetcher(e)(0, e.size)
        pname, info = f.remote  # type: ignore[misc]
        hit = self._links.get(key)
        if hit is not None and hit[0] == info.etag and info.etag:
            return hit[1]
        target = self.providers[pname].get_range(key, 0, info.size)
        if len(self._links) >= MAX_LINKS_KEPT:
            self._links.clear()
        self._links[key] = (info.etag, target)
        return target

    def _route(self, key: str, size: int) -> str:
        return self.cfg.provider_for(self.layout.type_of("/" + key), size)

    def _new_handle(self, node: OpenFile, writable: bool, kills_setid: bool = False) -> int:
        fh = next(self._fh)
        node.open_count += 1
        if writable:
            node.writers += 1
        self._handles[fh] = Handle(node, writable, kills_setid and writable)
        return fh

    def open(self, key: str, flags: int, caller: Caller = TRUSTED) -> int:
        writable = (flags & os.O_ACCMODE) != os.O_RDONLY
        if writable or flags & os.O_TRUNC:
            self._writable(key)
        f = self._find(key)
        if f is None:
            raise NotFound(key)
        if f.is_dir:
            raise IsADirectory(key)
        with self._lock:
            node = self._nodes.get(key) or self._open_node(key, f)
            fh = self._new_handle(node, writable, not caller.is_root)
            if (flags & os.O_ACCMODE) != os.O_WRONLY and self.atime_mode != "noatime":
                self._accessed(node.entry)
        if writable and flags & os.O_TRUNC:
            self.truncate(key, 0, fh)
        return fh

    def _accessed(self, e: Entry) -> None:
        """A read moves atime as the mount's atime option says (relatime: once after each change, or
        once a day). Kept by the mount and stored with the object's next upload or journal commit: a
        read alone never rewrites an object in its provider (on S3, a copy of the whole object)."""
        now = time.time()
        last = e.atime or e.mtime
        if self.atime_mode == "relatime" and last > max(e.mtime, e.ctime) and now - last < RELATIME_MAX_AGE:
            return
        e.atime = now

    def _open_node(self, key: str, f: Found) -> OpenFile:
        """Open the cache data of key, creating a sparse one to fill from the provider."""
        e = self.index.get(key)
        if e is not None and e.is_tombstone:
            e = None
        if e is None:
            pname, info = f.remote  # type: ignore[misc]
            # listings carry no xattrs: where this info came from one, ask for them (S3 infos are HEADs)
            xattrs = (self._remote_xattrs(pname, key) if self.providers[pname].listing_has_metadata
                      else dict(info.xattrs))
            e = Entry(key, pname, kind="file", state=State.CLEAN, size=info.size, mtime=info.mtime,
                      ctime=info.ctime or 0.0, atime=info.atime or 0.0, rdev=info.rdev or 0,
                      mode=info.mode or self.file_mode, uid=info.uid, gid=info.gid, xattrs=xattrs,
                      remote=True, etag=info.etag)
        if e.data_name and self.data.exists(e.data_name):
            fd = self.data.open(e.data_name)
        else:
            e.data_name, fd = self.data.create(e.size)
            n = (e.size + self.chunk_size - 1) // self.chunk_size
            e.chunks = bytes(n) if n else None
        node = OpenFile(e, fd, self._fetcher(e), self.chunk_size, self._readahead, self.readahead,
                        self.warm_limit, self._count_warmed, self.seq_window)
        self._nodes[key] = node
        return node

    def _count_warmed(self, n: int) -> None:
        self.counters["bytes_warmed"] += n

    @staticmethod
    def _still_valid(e: Entry, info: ObjectInfo) -> bool:
        if e.etag and info.etag:
            return e.etag == info.etag
        return e.size == info.size and abs(e.mtime - info.mtime) < 1e-3

    def _fetcher(self, e: Entry) -> Callable[[int, int], bytes]:
        def fetch(offset: int, length: int) -> bytes:
            src = e.copy_src if e.op == OP_COPY and e.copy_src else e.key
            data = self.providers[e.provider].get_range(src, offset, length)
            self.counters["bytes_fetched"] += len(data)
            self.evictor.account(len(data))
            if len(data) < length:  # the object shrank underneath us: keep the file size honest
                data = data + bytes(length - len(data))
            return data
        return fetch

    def _handle(self, fh: int) -> Handle:
        h = self._handles.get(fh)
        if h is None:
            raise StorefsError(f"bad file handle {fh}", code=errno.EBADF)
        return h

    def read_source(self, fh: int, size: int, offset: int) -> tuple[int, int]:
        """A read as (descriptor, length) of cached bytes, for the FUSE edge to send without copying."""
        fd, n = self._handle(fh).node.read_source(size, offset)
        self.counters["bytes_read"] += n
        self.counters["read_calls"] += 1
        return fd, n

    def write(self, fh: int, data: bytes, offset: int) -> int:
        h = self._handle(fh)
        node = h.node
        end = offset + len(data)
        if end > node.size:
            self._check_size(node.entry.key, end)
            self.evictor.reserve(end - node.size)
        if not node.complete:
            node.ensure_all()
        if not node.dirty:
            self._mark_dirty(node)
            if h.kills_setid:
                self._kill_setid(node.entry)
        n = node.write(data, offset)
        self.counters["bytes_written"] += n
        self.counters["write_calls"] += 1
        return n

    def _check_size(self, key: str, size: int) -> None:
        limit = self.layout.max_size("/" + key)
        if size > limit:
            raise TooLarge(f"{key}: {size} bytes would pass the limit of {limit} bytes for this type")

    @staticmethod
    def _kill_setid(e: Entry) -> None:
        """A write by a non-root user clears set-user-ID, and set-group-ID where group-exec is set (as Linux)."""
        clear = stat.S_ISUID | (stat.S_ISGID if e.mode & stat.S_IXGRP else 0)
        if e.mode & clear:
            e.mode &= ~clear
            e.ctime = time.time()

    def _mark_dirty(self, node: OpenFile) -> None:
        """First change since the journal last heard: uploads under way must not mark it clean."""
        with self._lock:
            e = node.entry
            e.generation += 1
            e.state = State.DIRTY
            e.op = OP_PUT
            e.copy_src = None
            node.dirty = True

    def truncate(self, key: str, length: int, fh: int | None = None) -> None:
        self._writable(key)
        if fh is not None:
            node = self._handle(fh).node
            self._truncate_node(node, length)
            return
        f = self._find(key)
        if f is None:
            raise NotFound(key)
        if f.is_dir:
            raise IsADirectory(key)
        tmp = self.open(key, os.O_RDWR)
        try:
            self._truncate_node(self._handles[tmp].node, length)
            self.flush(tmp)
        finally:
            self.release(tmp)

    def _truncate_node(self, node: OpenFile, length: int) -> None:
        if length > node.size:
            self._check_size(node.entry.key, length)
        if length == node.size and node.entry.op == OP_PUT:
            return
        if length > 0 and not node.complete:
            node.ensure_all()
        if not node.dirty:
            self._mark_dirty(node)
        node.truncate(length)
        if length == 0:
            node.mark_complete()

    def flush(self, fh: int) -> None:
        """close(2) returns after this: the journal must know every change by now."""
        h = self._handles.get(fh)
        if h is None:
            return
        node = h.node
        if node.dirty:
            with self._lock:
                e = node.entry
                e.size = node.size
                e.chunks = node.chunk_bitmap()
                node.dirty = False
                if not node.unlinked:
                    self.index.put(e)
                    self._schedule(e.key)

    def fsync(self, fh: int) -> None:
        h = self._handle(fh)
        self.flush(fh)
        os.fsync(h.node.fd)
        self.index.journal.sync()
        if self.cfg.cache.fsync == "upload" and not h.node.unlinked:
            self.wait_uploaded(h.node.entry.key, timeout=None)

    def release(self, fh: int) -> None:
        with self._lock:
            h = self._handles.pop(fh, None)
            if h is None:
                return
            node = h.node
            node.open_count -= 1
            if h.writable:
                node.writers -= 1
            if node.open_count > 0:
                return
            node.close()
            e = node.entry
            for k in (e.key, node.hidden_key):
                if k is not None and self._nodes.get(k) is node:
                    del self._nodes[k]
            if node.unlinked:
                if self.index.get(e.key) is not e:
                    self.data.discard(e.data_name)
                return
            # an atime moved by a read alone is not worth a commit: it goes with the row's next one
            changed = node.dirty or node.chunks_changed or self.index.get(e.key) is not e
            if node.dirty:  # written but never flushed (flush is optional in FUSE)
                e.size = node.size
                node.dirty = False
            if changed:  # flush already journaled a plain write-and-close
                e.chunks = node.chunk_bitmap()
                e.used = time.time()
                self.index.put(e)
            if e.pending:
                self._schedule(e.key)

    # ---- unlink and rename ------------------------------------------------------

    def unlink(self, key: str) -> None:
        self._writable(key)
        f = self._find(key)
        if f is None:
            raise NotFound(key)
        if f.is_dir:
            raise IsADirectory(key)
        hidden = key.rpartition("/")[2].startswith(HIDDEN_PREFIX)  # its unlink already touched the folder
        parent = None if hidden else self._prepared(_parent(key), self._find(_parent(key)))
        with self._lock, self.index.transaction():
            self._unlink_locked(key, f)
            self._touch_dir(_parent(key), parent, time.time())

    def _unlink_locked(self, key: str, f: Found) -> None:
        node = self._nodes.pop(key, None)
        if node is not None:
            node.unlinked = True
        e = self.index.get(key)
        remote = f.remote is not None or (e is not None and (e.remote or self.uploader.is_busy(key)))
        if e is not None and node is None:
            self.data.discard(e.data_name)
        if remote:
            provider = e.provider if e else f.remote[0]  # type: ignore[index]
            self.index.put(Entry(key, provider, kind="file", state=State.DIRTY, op=OP_DELETE, remote=True,
                                 generation=(e.generation + 1) if e else 1))
            self._schedule(key)
        elif e is not None:
            self.index.remove(key)

    def _hide(self, old: str, hidden: str) -> None:
        """libfuse's unlink of an open file: a rename to .fuse_hiddenN, unlinked at the last close.

        For storefs that is an unlink now, with the open file still reachable under the hidden
        name for fstat and friends; the hidden name is never journaled, listed or uploaded.
        """
        self._writable(old)
        f = self._find(old)
        if f is None:
            raise NotFound(old)
        parent = self._prepared(_parent(old), self._find(_parent(old)))
        with self._lock, self.index.transaction():
            node = self._nodes.get(old)
            self._unlink_locked(old, f)
            self._touch_dir(_parent(old), parent, time.time())
            if node is not None:
                node.hidden_key = hidden
                self._nodes[hidden] = node

    def rename(self, old: str, new: str) -> None:
        self._writable(old)
        if old == new:
            return
        if new.rpartition("/")[2].startswith(HIDDEN_PREFIX):
            self._hide(old, new)
            return
        src = self._find(old)
        if src is None:
            raise NotFound(old)
        self.layout.check_rename("/" + old, "/" + new, src.is_dir)
        if not src.is_dir:
            self.layout.check_content_type("/" + new)
        new_parent = self._prepared(_parent(new), self._require_dir(_parent(new)))
        old_parent = self._prepared(_parent(old), self._find(_parent(old)))
        dst = self._find(new)
        if src.is_dir:
            if new.startswith(old + "/"):
                raise StorefsError(f"cannot move {old} into itself", code=errno.EINVAL)
            if dst is not None and not dst.is_dir:
                raise NotADirectory(new)
            if dst is not None and self.readdir(new):
                raise NotEmpty(new)
        elif dst is not None and dst.is_dir:
            raise IsADirectory(new)
        moves = self._collect_tree(old) if src.is_dir else []
        # what needs a provider's answer is asked now: never under the core lock
        remote_dirs = {path: self._provider_has_dir(path, f)
                       for path, is_dir, f in [(old, src.is_dir, src)] + moves if is_dir}
        dir_rows = {path: self._prepared(path, f) for path, is_dir, f in [(old, src.is_dir, src)] + moves if is_dir}
        dst_remote = dst is not None and dst.is_dir and self._provider_has_dir(new, dst)
        with self._lock, self.index.transaction():
            if dst is not None:
                if dst.is_dir:
                    self._drop_dir(new, dst, dst_remote)
                else:
                    self._unlink_locked(new, dst)
            if src.is_dir:
                self._move_tree(old, new, src, moves, remote_dirs, dir_rows)
            else:
                self._move_file(old, new, src)
            now = time.time()
            self._touch_dir(_parent(old), old_parent, now)
            if _parent(new) != _parent(old):
                self._touch_dir(_parent(new), new_parent, now)

    def _move_file(self, old: str, new: str, src: Found) -> None:
        node = self._nodes.pop(old, None)
        e = self.index.get(old)
        if e is not None and e.is_tombstone:
            e = None
        if e is None and node is not None:
            e = node.entry  # opened from the provider, not journaled yet
        if e is not None:
            src_remote = e.remote or self.uploader.is_busy(old) or (src.remote is not None)
            if self.index.get(old) is e:
                self.index.remove(old)
            dst_old = self.index.get(new)
            e.key = new
            e.ctime = time.time()
            e.remote = bool(dst_old and dst_old.remote)
            if e.op in (None, OP_META):
                e.op, e.copy_src = OP_COPY, old
            e.state = State.DIRTY
            e.generation = max(e.generation, dst_old.generation if dst_old else 0) + 1
            self.index.put(e)
        else:
            pname, info = src.remote  # type: ignore[misc]
            src_remote = True
            dst_old = self.index.get(new)
            e = Entry(new, pname, kind="file", state=State.DIRTY, op=OP_COPY, copy_src=old, size=info.size,
                      mtime=info.mtime, ctime=time.time(), atime=info.atime or 0.0, rdev=info.rdev or 0,
                      mode=info.mode or self.file_mode, uid=info.uid, gid=info.gid,
                      xattrs=self._remote_xattrs(pname, old), remote=bool(dst_old and dst_old.remote),
                      generation=(dst_old.generation + 1) if dst_old else 1)
            self.index.put(e)
        if src_remote:
            old_gen = self.index.get(old)
            self.index.put(Entry(old, e.provider, kind="file", state=State.DIRTY, op=OP_DELETE, remote=True,
                                 generation=(old_gen.generation + 1) if old_gen else 1))
            self._schedule(old)
        if node is not None:
            self._nodes[new] = node
        self._schedule(new)

    def _collect_tree(self, key: str) -> list[tuple[str, bool, Found]]:
        """Everything below folder key (files and folders), from the journal and the providers."""
        out: list[tuple[str, bool, Found]] = []
        stack = [key]
        while stack:
            d = stack.pop()
            for name in self.readdir(d):
                child = f"{d}/{name}"
                f = self._find(child)
                if f is None:
                    continue
                out.append((child, f.is_dir, f))
                if f.is_dir:
                    stack.append(child)
        return out

    def _move_tree(self, old: str, new: str, src: Found, moves: list[tuple[str, bool, Found]],
                   remote_dirs: dict[str, bool], dir_rows: dict[str, Found | None]) -> None:
        for path, is_dir, f in [(old, True, src)] + moves:
            target = new + path[len(old):]
            if is_dir:  # a moved folder keeps its mode, owner, times and xattrs
                d = self.index.get(path + "/")
                row = self._dir_row(path, (dir_rows[path] or f) if d is None or d.is_tombstone
                                    else Found(is_dir=True, entry=d))
                self.index.put(Entry(target + "/", row.provider, kind="dir", state=State.DIRTY, op=OP_MKDIR,
                                     mtime=row.mtime, ctime=time.time(), atime=row.atime, mode=row.mode,
                                     uid=row.uid, gid=row.gid, xattrs=dict(row.xattrs)))
                self._schedule(target + "/")
            else:
                self._move_file(path, target, f)
        for path, is_dir, f in reversed([(old, True, src)] + moves):
            if is_dir:
                self._drop_dir(path, f, remote_dirs[path])

    # ---- metadata ---------------------------------------------------------------

    def _meta_entry(self, key: str) -> Entry:
        """The journal row that will carry a metadata change of key (made if needed)."""
        f = self._find(key)
        if f is None:
            raise NotFound(key)
        if f.is_dir:
            return self._dir_row(key, f)
        if f.entry is not None:
            return f.entry
        pname, _ = f.remote  # type: ignore[misc]
        info = self.providers[pname].head(key)
        return Entry(key, pname, kind="file", state=State.CLEAN, size=info.size, mtime=info.mtime,
                     ctime=info.ctime or 0.0, atime=info.atime or 0.0, rdev=info.rdev or 0,
                     mode=info.mode or self.file_mode, uid=info.uid, gid=info.gid, xattrs=dict(info.xattrs),
                     remote=True, etag=info.etag)

    def _change_meta(self, key: str, change: Callable[[Entry], None]) -> None:
        """Apply change to key's row (it raises to refuse); ctime moves, the provider hears of it.
        What the row must start from is asked of the provider first, without the core lock."""
        self._writable(key)
        e = self._meta_entry(key)
        with self._lock:
            cur = self.index.get(e.key)
            if cur is not None and cur is not e:
                if cur.is_tombstone:
                    raise NotFound(key)
                e = cur  # changed meanwhile: the newer row carries this change too
            change(e)
            e.ctime = time.time()
            if e.op is None:
                e.op = OP_MKDIR if e.kind == "dir" else OP_META
            e.state = State.DIRTY
            e.generation += 1
            self.index.put(e)
            self._schedule(e.key)

    def _owner(self, e: Entry) -> tuple[int, int]:
        return self._id(e.uid, self.uid), self._id(e.gid, self.gid)

    def chmod(self, key: str, mode: int, caller: Caller = TRUSTED) -> None:
        """Only the owner or root changes a mode; anyone who writes a file may drop its set-ID bits
        (the kernel asks for exactly that after such a write). A set-group-ID bit the caller's
        groups do not allow is dropped, as Linux does."""
        def change(e: Entry) -> None:
            new = mode & PERM_BITS
            cur = e.mode & PERM_BITS
            uid, gid = self._owner(e)
            if not caller.is_root and caller.uid != uid:
                if (new | SETID_BITS) != (cur | SETID_BITS) or new & SETID_BITS & ~cur:
                    raise NotPermitted(f"{key}: only the owner (uid {uid}) or root may change its mode")
            elif (new & stat.S_ISGID and not caller.is_root and e.kind != "dir" and not caller.in_group(gid)):
                new &= ~stat.S_ISGID
            e.mode = (e.mode & ~PERM_BITS) | new
        self._change_meta(key, change)

    def chown(self, key: str, uid: int, gid: int, caller: Caller = TRUSTED) -> None:
        """Only root gives a file away; its owner may change its group to one of the owner's groups.
        A changed owner drops set-user-ID (and set-group-ID with group-exec) of a file, as Linux."""
        def change(e: Entry) -> None:
            owner, group = self._owner(e)
            new_uid = owner if uid in (-1, None) else uid
            new_gid = group if gid in (-1, None) else gid
            if not caller.is_root:
                if new_uid != owner:
                    raise NotPermitted(f"{key}: only root may change its owner")
                if new_gid != group and (caller.uid != owner or not caller.in_group(new_gid)):
                    raise NotPermitted(f"{key}: only its owner may change its group, to one of the owner's groups")
            if (new_uid, new_gid) != (owner, group) and e.kind != "dir":
                e.mode &= ~(stat.S_ISUID | (stat.S_ISGID if e.mode & stat.S_IXGRP else 0))
            e.uid, e.gid = new_uid, new_gid
        self._change_meta(key, change)

    def utimens(self, key: str, atime: float | None, mtime: float | None, caller: Caller = TRUSTED,
                explicit: bool = True) -> None:
        """Set access and modification times (None: leave it). Explicit times only by the owner or
        root; "now" by anyone who may write the file (utimensat(2))."""
        if atime is None and mtime is None:
            return
        def change(e: Entry) -> None:
            if not caller.is_root:
                uid, gid = self._owner(e)
                if explicit and caller.uid != uid:
                    raise NotPermitted(f"{key}: only the owner (uid {uid}) or root may set its times")
                if (not explicit and caller.uid != uid
                        and not caller.may(Attr(False, 0, 0.0, e.mode, uid, gid), os.W_OK)):
                    raise AccessRefused(f"{key}: setting the times to now needs write permission")
            if mtime is not None:
                e.mtime = mtime
            if atime is not None:
                e.atime = atime
        self._change_meta(key, change)

    def _remote_xattrs(self, pname: str, key: str) -> dict[str, bytes]:
        try:
            return dict(self.providers[pname].head(key).xattrs)
        except NotFound:
            return {}

    def _xattrs(self, key: str) -> tuple[Found, dict[str, bytes]]:
        f = self._find(key)
        if f is None:
            raise NotFound(key)
        if f.entry is not None:
            return f, f.entry.xattrs
        if f.remote is not None and not f.is_dir:
            return f, self._remote_xattrs(f.remote[0], key)
        if f.remote is not None and key != self.root:
            pname, info = f.remote
            return f, (self._dir_xattrs(pname, key) if self.providers[pname].listing_has_metadata
                       else dict(info.xattrs))
        return f, {}

    def getxattr(self, key: str, name: str) -> bytes:
        if not name.startswith("user."):
            raise NoAttribute(name)
        f, xattrs = self._xattrs(key)
        if name.startswith("user.storefs."):
            value = self._storefs_xattr(key, f, name)
            if value is None:
                raise NoAttribute(name)
            return value.encode()
        if name not in xattrs:
            raise NoAttribute(name)
        return xattrs[name]

    def _storefs_xattr(self, key: str, f: Found, name: str) -> str | None:
        e = f.entry
        pname = e.provider if e else (f.remote[0] if f.remote else self.cfg.default_provider)
        attr = name[len("user.storefs."):]
        if attr == "provider":
            return pname
        if f.is_dir:
            return None
        if attr == "content_type":
            return self.layout.content_type("/" + key)
        if attr == "state":
            if e is None or e.op is None:
                return State.CLEAN
            return State.UPLOADING if self.uploader.is_busy(key) else State.DIRTY
        if attr == "url":
            return self.providers[pname].url(key)  # the provider's own expiry (S3: presign_expiry)
        if attr == "size":
            return str(f.remote[1].size) if f.remote else (str(e.size) if e and e.remote and e.op is None else None)
        if attr == "etag":
            return (f.remote[1].etag if f.remote else (e.etag if e else None)) or None
        return None

    def listxattr(self, key: str) -> list[str]:
        f, xattrs = self._xattrs(key)
        names = list(xattrs)
        if not f.is_dir:
            names += [n for n in STOREFS_XATTRS if self._storefs_xattr(key, f, n) is not None]
        else:
            names.append("user.storefs.provider")
        return names

    def setxattr(self, key: str, name: str, value: bytes) -> None:
        if not name.startswith("user."):
            # cp -a and rsync -X try ACLs and security labels and shrug at ENOTSUP: no log line
            raise NotSupported(f"{name}: only user.* attributes are stored", quiet=True)
        if name.startswith("user.storefs."):
            raise NotPermitted(f"{name} is read-only")
        self._writable(key)
        if key == self.root:
            raise NotSupported(f"{key or '/'}: the mount root keeps no attributes")
        self._change_meta(key, lambda e: e.xattrs.__setitem__(name, bytes(value)))

    def removexattr(self, key: str, name: str) -> None:
        self._writable(key)
        _, xattrs = self._xattrs(key)
        if name not in xattrs:
            raise NoAttribute(name)
        self._change_meta(key, lambda e: e.xattrs.pop(name, None))

    # ---- uploads (the uploader's Reconciler) --------------------------------------

    def _schedule(self, key: str) -> None:
        self._changed_at = now = time.monotonic()
        self._quiet_until[key] = now + self.delay
        self.uploader.schedule(key, self.delay)

    def due_in(self, key: str) -> float | None:
        with self._lock:
            e = self.index.get(key)
            if e is None or not e.pending:
                self._quiet_until.pop(key, None)
                return None
            node = self._nodes.get(key)
            if node is not None and e.op == OP_PUT and (node.writers > 0 or node.dirty):
                return max(self.delay, 0.5)  # uploaded after the last close
            if not self._flushing:
                quiet = self._quiet_until.get(key, 0.0) - time.monotonic()
                if quiet > 0:
                    return quiet
            if e.op != OP_COPY and self.index.is_copy_source(key):
                return 0.2  # a copy still reads the provider's object at this key
            if e.op == OP_RMDIR and self.index.pending_below(key) > 0:
                return 0.2
            if e.op == OP_MKDIR and self.index.pending_below(key) > 0:
                return 0.5  # a folder's marker lands after its contents, which would move its times on a disk
            return 0.0

    def _meta_of(self, e: Entry) -> ObjectMeta:
        if e.kind == "dir":
            ct = DIR_CONTENT_TYPE
        elif stat.S_ISREG(e.mode):
            ct = self.layout.content_type("/" + e.key)
        else:
            ct = OCTET_STREAM  # links and special files, as s3fs stores them
        return ObjectMeta(mtime=e.mtime, mode=e.mode, uid=e.uid, gid=e.gid, content_type=ct, xattrs=dict(e.xattrs),
                          ctime=e.ctime or None, atime=e.atime or None, rdev=e.rdev or None)

    def sync(self, key: str) -> None:
        with self._lock:
            e = self.index.get(key)
            if e is None or not e.pending:
                return
            op, gen, meta = e.op, e.generation, self._meta_of(e)
            provider = self.providers[e.provider]
            # routing rules see the final size: a file that grew past a boundary moves
            target = self._route(key, e.size) if e.kind == "file" and op in (OP_PUT, OP_COPY) else e.provider
            data_path = self.data.path(e.data_name) if e.data_name and e.chunks is None else None
            copy_src, was_remote = e.copy_src, e.remote
            e.state = State.UPLOADING
        info: ObjectInfo | None = None
        try:
            if target != e.provider:
                info = self._move_across(key, e, provider, self.providers[target], op, copy_src,
                                         data_path, was_remote, meta)
            elif op == OP_PUT:
                info = provider.put_file(key, data_path, meta)  # type: ignore[arg-type]
            elif op == OP_META:
                info = provider.set_meta(key, meta)
            elif op == OP_COPY:
                info = provider.copy(copy_src, key, meta)  # type: ignore[arg-type]
            elif op == OP_DELETE:
                provider.delete(key)
            elif op == OP_MKDIR:
                provider.make_dir(key, meta)
            elif op == OP_RMDIR:
                provider.remove_dir(key)
        except NotFound:
            if op in (OP_META, OP_COPY):
                log.error("%s of %s failed: the object is gone from %s; dropping the change",
                          op, key, provider.name)
                self._settle(key, e, gen, op, None, gone=True)
                return
            raise
        except BaseException:
            with self._lock:
                if e.state == State.UPLOADING:
                    e.state = State.DIRTY
            raise
        self.remote.mark_up(target)
        self._settle(key, e, gen, op, info, provider=target)

    def _move_across(self, key: str, e: Entry, source: Provider, target: Provider, op: str,
                     copy_src: str | None, data_path: str | None, was_remote: bool,
                     meta: ObjectMeta) -> ObjectInfo:
        """Upload key to the provider its routing rule now selects, and leave no copy behind."""
        staged = None
        if data_path is None:  # a rename of data that lives only in the source provider
            staged = self._stage(source, copy_src or key, e.size)
            data_path = self.data.path(staged)
        try:
            if op == OP_PUT and was_remote:
                source.delete(key)  # the cache holds the bytes: deleting first never loses them
            log.info("%s goes to provider %s (routing rules, %d bytes)", key, target.name, e.size)
            return target.put_file(key, data_path, meta)
        finally:
            if staged:
                self.data.remove(staged)

    def _stage(self, source: Provider, key: str, size: int) -> str:
        """Copy an object into a scratch cache file (its name returned), for another provider."""
        name, fd = self.data.create(size)
        try:
            for off in range(0, size, self.chunk_size):
                os.pwrite(fd, source.get_range(key, off, min(self.chunk_size, size - off)), off)
        finally:
            os.close(fd)
        return name

    def _settle(self, key: str, e: Entry, gen: int, op: str, info: ObjectInfo | None, gone: bool = False,
                provider: str | None = None) -> None:
        """Record a finished operation, unless the entry changed while it ran."""
        with self._lock:
            cur = self.index.get(key)
            if provider is not None and provider != e.provider:
                e.provider = provider  # the object now lives there (and only there)
            if cur is e and e.generation == gen:
                node = self._nodes.get(key)
                self._parent_may_follow(key)
                if e.kind == "dir" and op == OP_MKDIR and not gone:
                    # kept, clean: SeaweedFS drops folder-marker metadata, and the mount shows what it set
                    e.op, e.state, e.remote, e.attempts, e.last_error = None, State.CLEAN, True, 0, None
                    self.index.put(e)
                elif op in TOMBSTONES or gone or (e.data_name is None and node is None) or e.kind == "dir":
                    if op in TOMBSTONES:
                        self._note_deleted(key.rstrip("/"))
                    self.index.remove(key)
                else:
                    e.op, e.state, e.copy_src, e.remote = None, State.CLEAN, None, True
                    e.attempts, e.last_error = 0, None
                    if info is not None:
                        e.etag, e.size, e.mtime = info.etag, info.size, info.mtime if info.mtime else e.mtime
                    self.index.put(e)
                self._quiet_until.pop(key, None)
            elif cur is e:
                e.state = State.DIRTY
                if op not in TOMBSTONES:
                    e.remote = True
            elif op not in TOMBSTONES and not gone:
                # the key was renamed or removed while its bytes travelled: the provider now
                # holds an object nobody wants there, unless a newer change overwrites it
                if cur is None:
                    self.index.put(Entry(key, e.provider, kind=e.kind, state=State.DIRTY,
                                         op=OP_RMDIR if e.kind == "dir" else OP_DELETE, remote=True))
                    self.uploader.schedule(key, 0.0)
                else:
                    cur.remote = True
                    self.index.put(cur)
        pname = provider or e.provider
        if gone:
            self.remote.forget(key)
        elif op in TOMBSTONES:
            self.remote.record(key, None)
        elif info is not None:
            self.remote.record(key, (pname, info))
        elif op == OP_MKDIR:
            self.remote.record(key, (pname, ObjectInfo(key=key.rstrip("/") + "/", size=0, mtime=e.mtime,
                                                       is_dir=True, mode=e.mode, uid=e.uid, gid=e.gid,
                                                       ctime=e.ctime or None, atime=e.atime or None,
                                                       xattrs=dict(e.xattrs))))
        else:
            self.remote.forget(key)

    def _parent_may_follow(self, key: str) -> None:
        """The last pending entry below a folder whose marker waits for its contents has landed:
        the marker goes now rather than at its next check."""
        parent = _parent(key.rstrip("/"))
        row = self.index.get(parent + "/") if parent else None
        if row is not None and row.op == OP_MKDIR and self.index.pending_below(parent + "/") <= 1:
            self.uploader.schedule(row.key, 0.0)

    def _note_deleted(self, key: str) -> None:
        """Remember a delete that landed, for as long as a listing fetched before it may be served."""
        now = time.monotonic()
        self._just_deleted[key] = now
        if len(self._just_deleted) > 10_000 or now - self._deleted_pruned > 1.0:
            keep = self.cfg.fuse.dir_cache_ttl + 2.0
            self._just_deleted = {k: t for k, t in self._just_deleted.items() if now - t < keep}
            self._deleted_pruned = now

    def failed(self, key: str, error: BaseException, attempts: int) -> None:
        with self._lock:
            e = self.index.get(key)
            if e is None:
                return
            e.attempts = attempts
            e.last_error = f"{type(error).__name__}: {error}"[:500]
            if e.state == State.UPLOADING:
                e.state = State.DIRTY
            self.index.put(e)

    def wait_uploaded(self, key: str, timeout: float | None) -> None:
        """Block until key has reached its provider (fsync: upload, and `storefs url`), uploading
        it now; ProviderError if that fails three times or takes longer than timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            self._quiet_until.pop(key, None)
        self.uploader.schedule(key, 0.0)
        while True:
            with self._lock:
                e = self.index.get(key)
                if e is None or not e.pending:
                    return
                if e.attempts and e.last_error and e.attempts >= 3:
                    raise ProviderError(f"upload of {key} failed: {e.last_error}")
            if deadline is not None and time.monotonic() > deadline:
                raise ProviderError(f"upload of {key} did not finish in time")
            self.uploader.wait_change(0.2)

    # ---- flush and status -----------------------------------------------------------

    def waiting(self) -> tuple[list[Entry], list[Entry]]:
        """Pending entries that can be uploaded, and those held open for writing."""
        with self._lock:
            ready, held = [], []
            for e in self.index.pending():
                node = self._nodes.get(e.key)
                (held if node is not None and node.writers > 0 else ready).append(e)
            return ready, held

    def _ready_count(self) -> int:
        """len(waiting()[0]) from counters and the open files, not a scan of every entry."""
        with self._lock:
            held = 0
            for key, node in self._nodes.items():
                if node.writers > 0:
                    e = self.index.get(key)
                    held += e is not None and e.pending
            return self.index.pending_count() - held

    def flush_all(self, timeout: float | None, progress: Callable[[dict], None] | None = None) -> bool:
        """Wait until every closed change has reached its provider; False on timeout."""
        if self.read_only:
            return True  # nothing of this mount's own to upload; an earlier mount's changes wait for a writable one
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            self._flushing += 1
        try:
            self.uploader.hurry()
            last = scanned = 0.0
            while True:
                # woken by every finished upload: a count, and the full scan that decides only
                # when the count says done or at most 5 times a second
                now = time.monotonic()
                if self._ready_count() <= 0 or now - scanned >= 0.2:
                    if not self.waiting()[0]:
                        return True
                    self.uploader.hurry()  # changes closed meanwhile skip their quiet delay too
                    scanned = now
                if progress is not None and now - last >= 0.5:
                    progress(self.status())
                    last = now
                if deadline is not None and now > deadline:
                    return False
                self.uploader.wait_change(0.2)
        finally:
            with self._lock:
                self._flushing -= 1

    def status(self) -> dict:
        with self._lock:
            pending = self.index.pending()
            dirty = [e for e in pending if e.op == OP_PUT]
            errors = [{"key": e.key, "op": e.op, "attempts": e.attempts, "error": e.last_error}
                      for e in pending if e.last_error]
            cached = sum(1 for e in self.index.entries.values() if e.data_name)
            open_files = len(self._nodes)
        return {
            "pending": len(pending),
            "dirty_files": len(dirty),
            "dirty_bytes": sum(e.size for e in dirty),
            "uploading": len(self.uploader.in_flight()),
            "queue": self.uploader.scheduled(),
            "uploads_done": self.uploader.uploaded,
            "upload_failures": self.uploader.failures,
            "errors": errors[:100],
            "cached_files": cached,
            "cache_evictions": self.evictor.evicted,
            "open_files": open_files,
            **self.counters,
        }

    def statfs(self) -> dict[str, int]:
        st = os.statvfs(self.data.root)
        return {"f_bsize": st.f_bsize, "f_frsize": st.f_frsize, "f_blocks": st.f_blocks,
                "f_bfree": st.f_bfree, "f_bavail": st.f_bavail, "f_files": st.f_files,
                "f_ffree": st.f_ffree, "f_favail": st.f_favail, "f_namemax": 255}
