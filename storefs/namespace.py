"""The file-system semantics of storefs: the providers' keys overlaid with the journal.

Every operation decides here what the user sees at once (from the cache and journal)
and what must later reach a provider (a pending journal row the uploader carries out).
Nothing here knows FUSE or boto3: paths come in as keys, failures leave as
storefs.errors exceptions.
"""

from __future__ import annotations

import itertools
from concurrent.futures import ThreadPoolExecutor
import logging
import os
import stat
import threading
import time
from dataclasses import dataclass
from typing import Callable

from .cache.datafiles import DataFiles
from .cache.index import EntryIndex
from .cache.journal import (OP_COPY, OP_DELETE, OP_META, OP_MKDIR, OP_PUT, OP_RMDIR,
                            TOMBSTONES, Entry, Journal)
from .cache.openfile import OpenFile, default_warm_limit
from .cache.eviction import Evictor
from .cache.uploader import Uploader
from .config import Config
from .errors import (Exists, IsADirectory, NameTooLong, NoAttribute, NotADirectory, NotEmpty, NotFound,
                     NotPermitted, NotSupported, ProviderError, ProviderUnavailable, StorefsError,
                     TooLarge)
from .layout import Layout
from .providers.base import ObjectInfo, ObjectMeta, Provider
from .remote import RemoteView

log = logging.getLogger(__name__)

DIR_MODE = stat.S_IFDIR | 0o755
FILE_MODE = stat.S_IFREG | 0o644
HIDDEN_PREFIX = ".fuse_hidden"  # libfuse's name for an unlinked file that is still open
STOREFS_XATTRS = ("user.storefs.content_type", "user.storefs.state", "user.storefs.provider",
                  "user.storefs.url", "user.storefs.size", "user.storefs.etag")


@dataclass(frozen=True)
class Attr:
    """What getattr answers."""

    is_dir: bool
    size: int
    mtime: float
    mode: int
    uid: int
    gid: int


@dataclass
class Handle:
    node: OpenFile
    writable: bool


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
        self.uid, self.gid = os.getuid(), os.getgid()
        self.mounted_at = time.time()  # the mtime of folders no provider dates (as rclone shows them)
        self._lock = threading.RLock()
        self._nodes: dict[str, OpenFile] = {}
        self._handles: dict[int, Handle] = {}
        self._fh = itertools.count(1)
        self._quiet_until: dict[str, float] = {}
        self._flushing = 0
        self._just_deleted: dict[str, float] = {}  # keys whose delete landed a moment ago
        self._deleted_pruned = 0.0
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
                changed = e.state == "uploading"
                if e.op == OP_PUT:  # writes after the last close reached the file, not the row
                    size = self.data.size(e.data_name)  # type: ignore[arg-type]
                    changed = changed or size != e.size
                    e.size = size
                if changed:
                    e.state = "dirty"
                    self.index.refresh(e)
        for name in self.data.names() - known:
            self.data.remove(name)
        pending = self.index.pending()
        if pending:
            log.info("recovered %d pending changes from the journal", len(pending))

    def start(self) -> None:
        """Start the uploader threads (called from FUSE init, never before a fork)."""
        self.data.start()
        self.uploader.start()
        self.evictor.start()
        self.remote.start()
        for name, p in self.providers.items():
            p.watch(lambda key, name=name: self.changed_outside(name, key))
        for e in self.index.pending():
            self.uploader.schedule(e.key, 0.0)

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
                return Found(is_dir=True, entry=d)
            if self.index.has_live_below(key + "/"):
                return Found(is_dir=True)
            file_gone = e is not None and clean is None
            dir_gone = d is not None
        try:
            r = self.remote.lookup(key, need_meta=clean is None)
        except ProviderUnavailable:
            if clean is not None:
                return Found(is_dir=False, entry=clean)
            if offline_dir or self.index.any_below(key + "/"):
                return Found(is_dir=True)  # the cache holds something below it: it is a folder
            return None
        if clean is not None and (r is None or r[1].is_dir or not self._still_valid(clean, r[1])):
            if self.remote.is_down(clean.provider):
                return Found(is_dir=False, entry=clean)  # an old listing answered: no evidence
            log.info("%s changed in its provider; dropping the cached copy", key)
            self.evict(clean)
            clean = None
        if r is None:
            return None
        if r[1].is_dir:
            return None if dir_gone else Found(is_dir=True, remote=r)
        if clean is not None:
            return Found(is_dir=False, entry=clean, remote=r)
        return None if file_gone else Found(is_dir=False, remote=r)

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
        return sorted(found, key=lambda e: e.atime)

    def evict(self, e: Entry) -> bool:
        """Drop a clean cached copy (its object stays in the provider); never an open or dirty one."""
        with self._lock:
            if e.pending or e.key in self._nodes or self.index.get(e.key) is not e:
                return False
            self.index.remove(e.key)
            self.data.remove(e.data_name)
            return True

    def _attr(self, f: Found) -> Attr:
        if f.node is not None:
            e = f.entry
            return Attr(False, f.node.size, e.mtime, e.mode, self._id(e.uid, self.uid), self._id(e.gid, self.gid))
        if f.entry is not None:
            e = f.entry
            return Attr(f.is_dir, 0 if f.is_dir else e.size, e.mtime, e.mode,
                        self._id(e.uid, self.uid), self._id(e.gid, self.gid))
        if f.remote is not None:
            info = f.remote[1]
            mode = info.mode or (DIR_MODE if f.is_dir else FILE_MODE)
            return Attr(f.is_dir, 0 if f.is_dir else info.size, info.mtime or self.mounted_at, mode,
                        self._id(info.uid, self.uid), self._id(info.gid, self.gid))
        return Attr(True, 0, self.mounted_at, DIR_MODE, self.uid, self.gid)

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
            elif d is not None and not d.is_tombstone:
                f = Found(is_dir=True, entry=d)
            elif below:
                f = Found(is_dir=True)
            elif r is not None and e is None and d is None:
                if r[1].is_dir:
                    f = Found(is_dir=True, remote=r)
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

    def _require_dir(self, key: str) -> None:
        f = self._find(key, offline_dir=True)
        if f is None:
            raise NotFound(f"{key or '/'}: parent folder does not exist")
        if not f.is_dir:
            raise NotADirectory(key)

    # ---- folders ----------------------------------------------------------------

    def mkdir(self, key: str, mode: int, uid: int, gid: int) -> None:
        self.layout.check_dir("/" + key)
        self._require_dir(_parent(key))
        if self._find(key) is not None:
            raise Exists(key)
        with self._lock:
            old = self.index.get(key + "/")
            e = Entry(key + "/", self.cfg.default_provider, kind="dir", state="dirty", op=OP_MKDIR,
                      mtime=time.time(), mode=stat.S_IFDIR | (mode & 0o7777), uid=uid, gid=gid,
                      remote=bool(old and old.remote), generation=(old.generation + 1) if old else 1)
            self.index.put(e)
        if old is None:
            self.remote.known_empty(key)
        self._schedule(e.key)

    def rmdir(self, key: str) -> None:
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
        with self._lock:
            self._drop_dir(key, f)

    def _drop_dir(self, key: str, f: Found) -> None:
        """Remove the empty folder key locally, leaving a tombstone if a provider has it."""
        old = self.index.get(key + "/")
        remote = f.remote is not None or (old is not None and (old.remote or self.uploader.is_busy(old.key)))
        if not remote:  # known here only through its children: ask the provider
            try:
                remote = self.remote.lookup(key) is not None
            except ProviderUnavailable:
                remote = True  # removing a marker that is not there is harmless
        if remote:
            provider = old.provider if old else (f.remote[0] if f.remote else self.cfg.default_provider)
            self.index.put(Entry(key + "/", provider, kind="dir", state="dirty", op=OP_RMDIR, remote=True,
                                 generation=(old.generation + 1) if old else 1))
            self._schedule(key + "/")
        elif old is not None:
            self.index.remove(key + "/")

    # ---- files: open, read, write, close ---------------------------------------

    def create(self, key: str, mode: int, uid: int, gid: int, exclusive: bool) -> int:
        self.layout.check_file("/" + key)
        self.layout.check_content_type("/" + key)
        self._require_dir(_parent(key))
        f = self._find(key)
        if f is not None:
            if exclusive:
                raise Exists(key)
            if f.is_dir:
                raise IsADirectory(key)
            fh = self.open(key, os.O_RDWR)
            self.truncate(key, 0, fh)
            return fh
        name, fd = self.data.create()  # outside the lock: with no file ready, the disk makes one
        with self._lock:
            old = self.index.get(key)
            e = Entry(key, self._route(key, 0), kind="file", state="dirty", op=OP_PUT, data_name=name,
                      mtime=time.time(), mode=stat.S_IFREG | (mode & 0o7777), uid=uid, gid=gid,
                      generation=(old.generation + 1) if old else 1,
                      remote=bool(old and (old.remote or self.uploader.is_busy(key))))
            # journaled at the first flush (close): a crash before that loses a file nobody
            # closed, as on a disk, and the recovery sweep removes its orphaned data file
            self.index.put(e, persist=False)
            node = OpenFile(e, fd, None, self.chunk_size)
            node.dirty = True
            self._nodes[key] = node
            self._just_deleted.pop(key, None)
            return self._new_handle(node, True)

    def _route(self, key: str, size: int) -> str:
        return self.cfg.provider_for(self.layout.type_of("/" + key), size)

    def _new_handle(self, node: OpenFile, writable: bool) -> int:
        fh = next(self._fh)
        node.open_count += 1
        if writable:
            node.writers += 1
        self._handles[fh] = Handle(node, writable)
        return fh

    def open(self, key: str, flags: int) -> int:
        writable = (flags & os.O_ACCMODE) != os.O_RDONLY
        f = self._find(key)
        if f is None:
            raise NotFound(key)
        if f.is_dir:
            raise IsADirectory(key)
        with self._lock:
            node = self._nodes.get(key) or self._open_node(key, f)
            fh = self._new_handle(node, writable)
        if writable and flags & os.O_TRUNC:
            self.truncate(key, 0, fh)
        return fh

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
            e = Entry(key, pname, kind="file", state="clean", size=info.size, mtime=info.mtime,
                      mode=info.mode or FILE_MODE, uid=info.uid, gid=info.gid, xattrs=xattrs,
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
            raise StorefsError(f"bad file handle {fh}", code=9)  # EBADF
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
        n = node.write(data, offset)
        self.counters["bytes_written"] += n
        self.counters["write_calls"] += 1
        return n

    def _check_size(self, key: str, size: int) -> None:
        limit = self.layout.max_size("/" + key)
        if size > limit:
            raise TooLarge(f"{key}: {size} bytes would pass the limit of {limit} bytes for this type")

    def _mark_dirty(self, node: OpenFile) -> None:
        """First change since the journal last heard: uploads under way must not mark it clean."""
        with self._lock:
            e = node.entry
            e.generation += 1
            e.state = "dirty"
            e.op = OP_PUT
            e.copy_src = None
            node.dirty = True

    def truncate(self, key: str, length: int, fh: int | None = None) -> None:
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
            changed = node.dirty or node.chunks_changed or self.index.get(e.key) is not e
            if node.dirty:  # written but never flushed (flush is optional in FUSE)
                e.size = node.size
                node.dirty = False
            if changed:  # flush already journaled a plain write-and-close
                e.chunks = node.chunk_bitmap()
                e.atime = time.time()
                self.index.put(e)
            if e.pending:
                self._schedule(e.key)

    # ---- unlink and rename ------------------------------------------------------

    def unlink(self, key: str) -> None:
        f = self._find(key)
        if f is None:
            raise NotFound(key)
        if f.is_dir:
            raise IsADirectory(key)
        with self._lock, self.index.transaction():
            self._unlink_locked(key, f)

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
            self.index.put(Entry(key, provider, kind="file", state="dirty", op=OP_DELETE, remote=True,
                                 generation=(e.generation + 1) if e else 1))
            self._schedule(key)
        elif e is not None:
            self.index.remove(key)
        self._keep_parent(key)

    def _hide(self, old: str, hidden: str) -> None:
        """libfuse's unlink of an open file: a rename to .fuse_hiddenN, unlinked at the last close.

        For storefs that is an unlink now, with the open file still reachable under the hidden
        name for fstat and friends; the hidden name is never journaled, listed or uploaded.
        """
        f = self._find(old)
        if f is None:
            raise NotFound(old)
        with self._lock, self.index.transaction():
            node = self._nodes.get(old)
            self._unlink_locked(old, f)
            if node is not None:
                node.hidden_key = hidden
                self._nodes[hidden] = node

    def _keep_parent(self, key: str) -> None:
        """A folder emptied by unlink or rename stays, as on a disk; on an object store
        that needs a marker, since a prefix with no keys is no folder at all."""
        parent = _parent(key)
        name = key.rpartition("/")[2]
        if (not parent or name.startswith(HIDDEN_PREFIX) or self.index.get(parent + "/") is not None
                or self.index.has_live_below(parent + "/")):
            return
        try:
            listing = self.remote.listing(parent + "/")
        except ProviderUnavailable:
            listing = {}
        for other in listing:
            if other.rstrip("/") == name:
                continue
            row = self.index.get(parent + "/" + other)
            if row is None or not row.is_tombstone:
                return
        self.index.put(Entry(parent + "/", self.cfg.default_provider, kind="dir", state="dirty", op=OP_MKDIR,
                             mtime=time.time(), mode=DIR_MODE, remote=True))
        self._schedule(parent + "/")

    def rename(self, old: str, new: str) -> None:
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
        self._require_dir(_parent(new))
        dst = self._find(new)
        if src.is_dir:
            if new.startswith(old + "/"):
                raise StorefsError(f"cannot move {old} into itself", code=22)
            if dst is not None and not dst.is_dir:
                raise NotADirectory(new)
            if dst is not None and self.readdir(new):
                raise NotEmpty(new)
        elif dst is not None and dst.is_dir:
            raise IsADirectory(new)
        moves = self._collect_tree(old) if src.is_dir else []
        with self._lock, self.index.transaction():
            if dst is not None:
                if dst.is_dir:
                    self._drop_dir(new, dst)
                else:
                    self._unlink_locked(new, dst)
            if src.is_dir:
                self._move_tree(old, new, src, moves)
            else:
                self._move_file(old, new, src)

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
            e.remote = bool(dst_old and dst_old.remote)
            if e.op in (None, OP_META):
                e.op, e.copy_src = OP_COPY, old
            e.state = "dirty"
            e.generation = max(e.generation, dst_old.generation if dst_old else 0) + 1
            self.index.put(e)
        else:
            pname, info = src.remote  # type: ignore[misc]
            src_remote = True
            dst_old = self.index.get(new)
            e = Entry(new, pname, kind="file", state="dirty", op=OP_COPY, copy_src=old, size=info.size,
                      mtime=info.mtime, mode=info.mode or FILE_MODE, uid=info.uid, gid=info.gid,
                      xattrs=self._remote_xattrs(pname, old), remote=bool(dst_old and dst_old.remote),
                      generation=(dst_old.generation + 1) if dst_old else 1)
            self.index.put(e)
        if src_remote:
            old_gen = self.index.get(old)
            self.index.put(Entry(old, e.provider, kind="file", state="dirty", op=OP_DELETE, remote=True,
                                 generation=(old_gen.generation + 1) if old_gen else 1))
            self._schedule(old)
        if node is not None:
            self._nodes[new] = node
        self._schedule(new)
        self._keep_parent(old)

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

    def _move_tree(self, old: str, new: str, src: Found, moves: list[tuple[str, bool, Found]]) -> None:
        for path, is_dir, f in [(old, True, src)] + moves:
            target = new + path[len(old):]
            if is_dir:
                d = self.index.get(path + "/")
                self.index.put(Entry(target + "/", d.provider if d else self.cfg.default_provider, kind="dir",
                                     state="dirty", op=OP_MKDIR, mtime=d.mtime if d else time.time(),
                                     mode=d.mode if d else DIR_MODE, uid=d.uid if d else None,
                                     gid=d.gid if d else None))
                self._schedule(target + "/")
            else:
                self._move_file(path, target, f)
        for path, is_dir, f in reversed([(old, True, src)] + moves):
            if is_dir:
                self._drop_dir(path, f)

    # ---- metadata ---------------------------------------------------------------

    def _meta_entry(self, key: str) -> Entry:
        """The journal row that will carry a metadata change of key (made if needed)."""
        f = self._find(key)
        if f is None:
            raise NotFound(key)
        if f.entry is not None:
            return f.entry
        if f.is_dir:
            pname = f.remote[0] if f.remote else self.cfg.default_provider
            info = f.remote[1] if f.remote else None
            return Entry(key + "/", pname, kind="dir", state="dirty", op=OP_MKDIR, remote=True,
                         mtime=info.mtime if info else time.time(), mode=(info.mode if info else None) or DIR_MODE,
                         uid=info.uid if info else None, gid=info.gid if info else None)
        pname, _ = f.remote  # type: ignore[misc]
        info = self.providers[pname].head(key)
        return Entry(key, pname, kind="file", state="clean", size=info.size, mtime=info.mtime,
                     mode=info.mode or FILE_MODE, uid=info.uid, gid=info.gid, xattrs=dict(info.xattrs),
                     remote=True, etag=info.etag)

    def _change_meta(self, key: str, change: Callable[[Entry], None]) -> None:
        with self._lock:
            e = self._meta_entry(key)
            change(e)
            if e.op is None:
                e.op = OP_META
            e.state = "dirty"
            e.generation += 1
            self.index.put(e)
            self._schedule(e.key)

    def chmod(self, key: str, mode: int) -> None:
        self._change_meta(key, lambda e: setattr(e, "mode", (e.mode & ~0o7777) | (mode & 0o7777)))

    def chown(self, key: str, uid: int, gid: int) -> None:
        def change(e: Entry) -> None:
            if uid != -1:
                e.uid = uid
            if gid != -1:
                e.gid = gid
        self._change_meta(key, change)

    def utimens(self, key: str, mtime: float | None) -> None:
        if mtime is None:
            return
        self._change_meta(key, lambda e: setattr(e, "mtime", mtime))

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
                return "clean"
            return "uploading" if self.uploader.is_busy(key) else "dirty"
        if attr == "url":
            return self.providers[pname].url(key, int(3600))
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
        if self._find(key) is None:
            raise NotFound(key)
        if self._find(key).is_dir:  # type: ignore[union-attr]
            raise NotSupported(f"{key}: attributes are kept on files only")
        self._change_meta(key, lambda e: e.xattrs.__setitem__(name, bytes(value)))

    def removexattr(self, key: str, name: str) -> None:
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
            return 0.0

    def _meta_of(self, e: Entry) -> ObjectMeta:
        ct = "application/x-directory" if e.kind == "dir" else self.layout.content_type("/" + e.key)
        return ObjectMeta(mtime=e.mtime, mode=e.mode, uid=e.uid, gid=e.gid, content_type=ct, xattrs=dict(e.xattrs))

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
            e.state = "uploading"
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
                if e.state == "uploading":
                    e.state = "dirty"
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
                if op in TOMBSTONES or gone or (e.data_name is None and node is None) or e.kind == "dir":
                    if op in TOMBSTONES:
                        self._note_deleted(key.rstrip("/"))
                    self.index.remove(key)
                else:
                    e.op, e.state, e.copy_src, e.remote = None, "clean", None, True
                    e.attempts, e.last_error = 0, None
                    if info is not None:
                        e.etag, e.size, e.mtime = info.etag, info.size, info.mtime if info.mtime else e.mtime
                    self.index.put(e)
                self._quiet_until.pop(key, None)
            elif cur is e:
                e.state = "dirty"
                if op not in TOMBSTONES:
                    e.remote = True
            elif op not in TOMBSTONES and not gone:
                # the key was renamed or removed while its bytes travelled: the provider now
                # holds an object nobody wants there, unless a newer change overwrites it
                if cur is None:
                    self.index.put(Entry(key, e.provider, kind=e.kind, state="dirty",
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
                                                       is_dir=True, mode=e.mode, uid=e.uid, gid=e.gid)))
        else:
            self.remote.forget(key)

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
            if e.state == "uploading":
                e.state = "dirty"
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
