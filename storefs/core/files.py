"""Open files: the handle table, create, open, read, write, truncate, flush, fsync and release.

A file opened twice shares one OpenFile (the node, in CoreState.nodes under the core lock);
each open(2) gets its own Handle here. Writes go to the cache file; flush (close) puts the
row in the journal and schedules its upload.
"""

from __future__ import annotations

import bisect
import errno
import itertools
import logging
import os
import stat
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from .. import keys
from ..cache.eviction import Evictor
from ..cache.journal import OP_COPY, OP_PUT, Entry, State
from ..cache.openfile import OpenFile, default_warm_limit
from ..errors import Exists, IsADirectory, NotFound, StorefsError, TooLarge
from ..providers.base import NS_PER_SECOND, write_all
from .conflicts import known_etag
from .schedule import Schedule
from .tree import Tree
from .types import TRUSTED, Caller, Counters, Found, Handle

log = logging.getLogger(__name__)

PERM_BITS = 0o7777
#: relatime: an access time older than this moves on the next read even if nothing changed (as Linux)
RELATIME_MAX_AGE_NS = 24 * 3600 * NS_PER_SECOND
READAHEAD_THREADS = 8
#: a reader going through a folder's cached copies (cp -r, tar, rsync) finds the next this many, in name
#: order, already asked of the cache disk; asked again once it has passed half of them
FOLDER_AHEAD_FILES = 16
#: at most this much of each is asked (the start of a big one: the kernel's own read-ahead follows its reader)
FOLDER_AHEAD_BYTES = 1 << 20
#: how long a folder's read-ahead is remembered (a reader that starts over is read ahead again after it)
FOLDER_AHEAD_MEMORY = 5.0
#: folders whose read-ahead (and sorted names) are remembered
FOLDERS_AHEAD_KEPT = 64
#: past every name: a folder read ahead to its end, or whose read-ahead is under way
PAST_EVERY_NAME = "\U0010ffff"



def source_key(e: Entry) -> str:
    """The key e's bytes are read from: its copy's source while the copy is pending."""
    return e.copy_src if e.op == OP_COPY and e.copy_src else e.key

class Files:
    """The open files of the mount and their handles (thread-safe)."""

    def __init__(self, tree: Tree, schedule: Schedule, evictor: Evictor, counters: Counters,
                 wait_uploaded: Callable[[str, float | None], None]) -> None:
        self.tree = tree
        self.state = tree.state
        self.index = tree.index
        self.data = tree.data
        self.schedule = schedule
        self.evictor = evictor
        self.counters = counters
        self._wait_uploaded = wait_uploaded
        cfg = tree.cfg
        self.chunk_size = cfg.cache.chunk_size
        self.readahead = cfg.cache.readahead
        self.warm_limit = default_warm_limit()
        self.seq_window = 2 * cfg.fuse.read_ahead  # how far out of order a sequential reader's requests come
        self.lock = threading.Lock()  # protects _handles (taken under the core lock or alone)
        self._handles: dict[int, Handle] = {}
        self._fh = itertools.count(1)
        self._readahead = ThreadPoolExecutor(max_workers=READAHEAD_THREADS, thread_name_prefix="storefs-readahead")
        self._ahead_lock = threading.Lock()  # protects _ahead and _orders (taken alone)
        #: folder prefix -> (the name whose open asks for more, the last name asked, when)
        self._ahead: OrderedDict[str, tuple[str, str, float]] = OrderedDict()
        #: folder prefix -> (the cached listing, its names sorted)
        self._orders: OrderedDict[str, tuple[object, list[str]]] = OrderedDict()

    def stop(self) -> None:
        """Drop the read-ahead that has not started (the mount is going away)."""
        self._readahead.shutdown(wait=False, cancel_futures=True)

    # ---- the handle table -----------------------------------------------------------

    def _new_handle(self, node: OpenFile, writable: bool, kills_setid: bool = False) -> int:
        """A handle on node. Called with the core lock held (the node's counts are under it)."""
        node.open_count += 1
        if writable:
            node.writers += 1
        with self.lock:
            fh = next(self._fh)
            self._handles[fh] = Handle(node, writable, kills_setid and writable)
        return fh

    def _handle(self, fh: int) -> Handle:
        with self.lock:
            h = self._handles.get(fh)
        if h is None:
            raise StorefsError(f"bad file handle {fh}", code=errno.EBADF)
        return h

    def node_of(self, fh: int) -> OpenFile | None:
        """The open node of handle fh, or None for a handle that is not (or no longer) open."""
        with self.lock:
            h = self._handles.get(fh)
        return None if h is None else h.node

    # ---- create and open ---------------------------------------------------------------

    def create(self, key: str, mode: int, uid: int, gid: int, exclusive: bool) -> int:
        """A new file at key, open for writing; an existing one is truncated unless exclusive."""
        tree = self.tree
        tree.writable(key)
        tree.layout.check_file(keys.as_path(key))
        tree.layout.check_content_type(keys.as_path(key))
        parent_key = keys.parent(key)
        found = tree.require_dir(parent_key)
        parent = tree.prepared(parent_key, found) or found
        f = tree.find(key)
        if f is not None:
            if exclusive:
                raise Exists(key)
            if f.is_dir:
                raise IsADirectory(key)
            fh = self.open(key, os.O_RDWR, Caller(uid, gid))
            self.truncate(key, 0, fh)
            return fh
        tree.check_new(key)
        uid, gid, _ = tree.new_owner(parent, uid, gid)
        name, fd = self.data.create()  # outside the lock: with no file ready, the disk makes one
        now = time.time_ns()
        with self.state.lock:
            old = self.index.get(key)
            e = Entry(key, tree.route(key, 0), kind="file", state=State.DIRTY, op=OP_PUT, data_name=name,
                      mtime_ns=now, ctime_ns=now, atime_ns=now, mode=stat.S_IFREG | (mode & PERM_BITS),
                      uid=uid, gid=gid, generation=(old.generation + 1) if old else 1, etag=known_etag(old, None),
                      remote=bool(old and (old.remote or self.schedule.is_busy(key))))
            # journaled at the first flush (close): a crash before that loses a file nobody
            # closed, as on a disk, and the recovery sweep removes its orphaned data file
            self.index.put(e, persist=False)
            tree.touch_dir(parent_key, parent, now)
            node = OpenFile(e, fd, None, self.chunk_size)
            node.dirty = True
            self.state.nodes[key] = node
            self.state.recreated(key)
            return self._new_handle(node, True, uid != 0)

    def open(self, key: str, flags: int, caller: Caller = TRUSTED) -> int:
        """A handle on the file at key; its bytes come from the provider as they are read."""
        tree = self.tree
        writable = (flags & os.O_ACCMODE) != os.O_RDONLY
        if writable or flags & os.O_TRUNC:
            tree.writable(key)
        f = tree.find_existing(key)
        if f.is_dir:
            raise IsADirectory(key)
        # listings carry no xattrs: where f came from one, ask for them now (S3 infos are HEADs), not under the lock
        xattrs = None
        if f.entry is None and f.remote is not None and tree.providers[f.remote[0]].listing_has_metadata:
            xattrs = tree.remote_xattrs(f.remote[0], key)
        with self.state.lock:
            node = self.state.nodes.get(key) or self._open_node(key, f, xattrs)
            fh = self._new_handle(node, writable, not caller.is_root)
            if (flags & os.O_ACCMODE) != os.O_WRONLY and tree.settings.atime_mode != "noatime":
                self._accessed(node.entry)
        if writable and flags & os.O_TRUNC:
            self.truncate(key, 0, fh)
        elif not writable and node.complete and self.readahead:
            self._folder_ahead(key)
        return fh

    # ---- reading a folder's cached copies ahead -------------------------------------------

    def _folder_ahead(self, key: str) -> None:
        """A cached copy was opened for reading: the next ones of its folder are asked of the cache
        disk in the background, so a reader going through them does not wait for the disk file by file."""
        prefix, name = keys.split(key)
        now = time.monotonic()
        with self._ahead_lock:
            seen = self._ahead.get(prefix)
            if seen is not None and now - seen[2] < FOLDER_AHEAD_MEMORY and name < seen[0]:
                return
            done = seen[1] if seen is not None and now - seen[2] < FOLDER_AHEAD_MEMORY else ""
            self._ahead[prefix] = (PAST_EVERY_NAME, done, now)  # under way: no other open asks meanwhile
            self._ahead.move_to_end(prefix)
            while len(self._ahead) > FOLDERS_AHEAD_KEPT:
                self._ahead.popitem(last=False)
        self._readahead.submit(self._read_folder_ahead, prefix, name, done, now)

    def _sorted_names(self, prefix: str) -> list[str]:
        """The files of folder prefix in name order, from its cached listing however old (only cached
        copies the journal holds are read ahead) and the pending local changes; no provider is asked."""
        held = self.tree.remote.cache.held(prefix)
        listed = None if held is None else held.names
        with self.state.lock:
            local = self.index.children(prefix)
        with self._ahead_lock:
            kept = self._orders.get(prefix)
        if kept is not None and kept[0] is listed:
            names = kept[1]
        else:
            names = sorted(n for n in (listed or ()) if not n.endswith("/"))
            with self._ahead_lock:
                self._orders[prefix] = (listed, names)
                self._orders.move_to_end(prefix)
                while len(self._orders) > FOLDERS_AHEAD_KEPT:
                    self._orders.popitem(last=False)
        if local:
            names = sorted(set(names).union(n for n in local if not n.endswith("/")))
        return names

    def _read_folder_ahead(self, prefix: str, name: str, done: str, asked: float) -> None:
        """Ask the cache disk for the data files of the FOLDER_AHEAD_FILES cached copies after name (a
        read-ahead thread); the name half-way through them is where the reader asks for more."""
        trigger, last = PAST_EVERY_NAME, done
        try:
            names = self._sorted_names(prefix)
            i = bisect.bisect_right(names, name)
            end = min(len(names), i + FOLDER_AHEAD_FILES)
            start = max(i, bisect.bisect_right(names, done)) if done else i
            if i + FOLDER_AHEAD_FILES // 2 < len(names):
                trigger = names[i + FOLDER_AHEAD_FILES // 2]
            for n in names[start:end]:
                k = prefix + n
                with self.state.lock:
                    e = self.index.get(k)
                    is_open = k in self.state.nodes
                if e is not None and not is_open and e.data_name and e.chunks is None and not e.is_tombstone:
                    self._readahead.submit(self._warm, e.data_name, min(e.size, FOLDER_AHEAD_BYTES))
                last = n
        except Exception:  # a thread of the pool: nobody else would hear of it
            log.exception("reading %s ahead failed", prefix)
        finally:
            with self._ahead_lock:
                self._ahead[prefix] = (trigger, last, asked)

    def _warm(self, data_name: str, size: int) -> None:
        """Have the kernel read the first size bytes of a data file into the page cache (no wait: its
        next reader finds them there)."""
        try:
            fd = os.open(self.data.path(data_name), os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        except (OSError, StorefsError):
            return  # evicted or removed meanwhile: nothing to read ahead
        try:
            os.posix_fadvise(fd, 0, size, os.POSIX_FADV_WILLNEED)
        finally:
            os.close(fd)

    def _accessed(self, e: Entry) -> None:
        """A read moves atime as the mount's atime option says (relatime: once after each change, or
        once a day). Kept by the mount and stored with the object's next upload or journal commit: a
        read alone never rewrites an object in its provider (on S3, a copy of the whole object)."""
        now = time.time_ns()
        last = e.atime_ns or e.mtime_ns
        if self.tree.settings.atime_mode == "relatime" and last > max(e.mtime_ns, e.ctime_ns) \
                and now - last < RELATIME_MAX_AGE_NS:
            return
        self.index.amend(e, atime_ns=now)

    def _open_node(self, key: str, f: Found, xattrs: dict[str, bytes] | None) -> OpenFile:
        """Open the cache data of key, creating a sparse one to fill from the provider.
        Called with the core lock held: xattrs were asked before it (None: the info's own)."""
        e = self.index.get(key)
        if e is not None and e.is_tombstone:
            e = None
        if e is None:
            if f.remote is None:
                raise NotFound(key)  # its cached copy was dropped meanwhile, and no provider said more
            pname, info = f.remote
            e = Entry(key, pname, kind="file", state=State.CLEAN, size=info.size, mtime_ns=info.mtime_ns,
                      ctime_ns=info.ctime_ns or 0, atime_ns=info.atime_ns or 0, rdev=info.rdev or 0,
                      mode=info.mode or self.tree.settings.file_mode, uid=info.uid, gid=info.gid,
                      xattrs=dict(info.xattrs) if xattrs is None else xattrs, remote=True, etag=info.etag)
        if e.data_name and self.data.exists(e.data_name):
            fd = self.data.open(e.data_name)
        else:
            data_name, fd = self.data.create(e.size)
            n = (e.size + self.chunk_size - 1) // self.chunk_size
            self.index.amend(e, data_name=data_name, chunks=bytes(n) if n else None)
        node = OpenFile(e, fd, self.filler(e), self.chunk_size, self._readahead, self.readahead,
                        self.warm_limit, self._count_warmed, self.seq_window)
        self.state.nodes[key] = node
        return node

    def _count_warmed(self, n: int) -> None:
        self.counters.add("bytes_warmed", n)

    def _fetched(self, n: int) -> None:
        self.counters.add("bytes_fetched", n)
        self.evictor.account(n)

    def fetcher(self, e: Entry) -> Callable[[int, int], bytes]:
        """How the bytes of e are read from its provider (a pending copy reads its source)."""
        providers = self.tree.providers

        def fetch(offset: int, length: int) -> bytes:
            data = providers[e.provider].get_range(source_key(e), offset, length)
            self._fetched(len(data))
            if len(data) < length:  # the object shrank underneath us: keep the file size honest
                data = data + bytes(length - len(data))
            return data
        return fetch

    def filler(self, e: Entry) -> Callable[[int, int, int], None]:
        """How bytes of e land in its cache file from its provider, as they arrive (a pending copy reads its
        source); past the object's end, if it shrank underneath us, zeros keep the file size honest."""
        providers = self.tree.providers

        def fill(offset: int, length: int, fd: int) -> None:
            n = providers[e.provider].get_range_into(source_key(e), offset, length, fd)
            self._fetched(n)
            if n < length:
                write_all(fd, memoryview(bytes(length - n)), offset + n)
        return fill

    # ---- reads and writes ---------------------------------------------------------------

    def read_source(self, fh: int, size: int, offset: int) -> tuple[int, int]:
        """A read as (descriptor, length) of cached bytes, for the FUSE edge to send without copying."""
        fd, n = self._handle(fh).node.read_source(size, offset)
        self.counters.add("bytes_read", n, calls="read_calls")
        return fd, n

    def write(self, fh: int, data: bytes, offset: int) -> int:
        """Write data at offset into the cache file of fh: at max_file_size, as ext4 at its size limit,
        the bytes below the limit land and the count is short; a write that starts at the limit is EFBIG."""
        h = self._handle(fh)
        node = h.node
        end = offset + len(data)
        if end > node.size:
            end = min(end, self._room(node, offset))
            data = data[:end - offset]
            if end > node.size:
                self.evictor.reserve(end - node.size)
        if not node.complete:
            node.ensure_all()
        if not node.dirty:
            self._mark_dirty(node)
            if h.kills_setid:
                self._kill_setid(node.entry)
        n = node.write(data, offset)
        self._modified(node.entry)
        self.counters.add("bytes_written", n, calls="write_calls")
        return n

    def _modified(self, e: Entry) -> None:
        """The bytes changed: mtime and ctime move (the row is journaled at close). No indexed field
        changes, so the folder indexes are not touched and the core lock is not needed (as for the bytes)."""
        now = time.time_ns()
        self.index.amend(e, mtime_ns=now, ctime_ns=now)

    def _check_size(self, key: str, size: int) -> None:
        limit = self.tree.layout.max_size(keys.as_path(key))
        if size > limit:
            raise TooLarge(f"{key}: {size} bytes would pass the limit of {limit} bytes for this type")

    def _room(self, node: OpenFile, offset: int) -> int:
        """Where a write at offset into node must end (its size limit), or TooLarge when it starts there."""
        key = node.entry.key
        kept = node.size_limit
        if kept is None or kept[0] != key:  # the limit goes with the type in the key: asked again after a rename
            kept = node.size_limit = (key, self.tree.layout.max_size(keys.as_path(key)))
        limit = kept[1]
        if offset >= limit:
            raise TooLarge(f"{key}: a write at byte {offset} would pass the limit of {limit} bytes for this type")
        return limit

    def _kill_setid(self, e: Entry) -> None:
        """A write by a non-root user clears set-user-ID, and set-group-ID where group-exec is set (as Linux)."""
        clear = stat.S_ISUID | (stat.S_ISGID if e.mode & stat.S_IXGRP else 0)
        with self.state.lock:
            if e.mode & clear:
                self.index.amend(e, mode=e.mode & ~clear, ctime_ns=time.time_ns())

    def _mark_dirty(self, node: OpenFile) -> None:
        """First change since the journal last heard: uploads under way must not mark it clean."""
        with self.state.lock:
            e = node.entry
            self.index.amend(e, generation=e.generation + 1, state=State.DIRTY, op=OP_PUT, copy_src=None)
            node.dirty = True

    def truncate(self, key: str, length: int, fh: int | None = None) -> None:
        """Cut or extend the file at key (or of the open handle fh) to length bytes."""
        self.tree.writable(key)
        if fh is not None:
            self._truncate_node(self._handle(fh).node, length)
            return
        f = self.tree.find_existing(key)
        if f.is_dir:
            raise IsADirectory(key)
        tmp = self.open(key, os.O_RDWR)
        try:
            self._truncate_node(self._handle(tmp).node, length)
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
        self._modified(node.entry)
        if length == 0:
            node.mark_complete()

    # ---- close ---------------------------------------------------------------------

    def flush(self, fh: int) -> None:
        """close(2) returns after this: the journal must know every change by now."""
        node = self.node_of(fh)
        if node is None or not node.dirty:
            return
        with self.state.lock:
            e = node.entry
            self.index.amend(e, size=node.size, chunks=node.chunk_bitmap())
            node.dirty = False
            if not node.unlinked:
                self.index.put(e)
                self.schedule.changed(e.key)

    def fsync(self, fh: int) -> None:
        """The file's bytes and its journal row on disk (and at the provider with fsync: upload)."""
        h = self._handle(fh)
        self.flush(fh)
        os.fsync(h.node.fd)
        self.index.journal.sync()
        if self.tree.cfg.cache.fsync == "upload" and not h.node.unlinked:
            self._wait_uploaded(h.node.entry.key, None)

    def release(self, fh: int) -> None:
        """The last close of a handle: the node closes with its last handle, and its row is journaled."""
        with self.state.lock:
            with self.lock:
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
                if k is not None and self.state.nodes.get(k) is node:
                    del self.state.nodes[k]
            if node.unlinked:
                if self.index.get(e.key) is not e:
                    self.data.discard(e.data_name)
                return
            # an atime moved by a read alone is not worth a commit: it goes with the row's next one
            changed = node.dirty or node.chunks_changed or self.index.get(e.key) is not e
            if node.dirty:  # written but never flushed (flush is optional in FUSE)
                self.index.amend(e, size=node.size)
                node.dirty = False
            if changed:  # flush already journaled a plain write-and-close
                self.index.amend(e, chunks=node.chunk_bitmap(), used=time.time())
                self.index.put(e)
            if e.pending:
                self.schedule.changed(e.key)
