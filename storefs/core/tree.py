"""What a key is now, from the open nodes, the journal and the providers, and the rows folders keep.

Every part asks the tree first: find() merges the evidence (an open file, a pending row, a
cached copy, a provider's listing) in one order. The rows that carry a folder's times are
built here too, before the core lock is taken, since building one may ask a provider.
"""

from __future__ import annotations

import logging
import stat
from typing import TYPE_CHECKING, Any

from .. import keys
from ..cache.datafiles import DataFiles
from ..cache.journal import OP_MKDIR, Entry, State
from ..errors import (
    LayoutError,
    NameTooLong,
    NotADirectory,
    NotFound,
    ProviderUnavailable,
    ReadOnly,
    StorefsError,
)
from ..layout import Layout
from ..providers.base import ObjectInfo, Provider
from ..view import RemoteView
from .schedule import Schedule
from .state import CoreState
from .types import Attr, CachedFile, Folder, Found, OpenNode, RemoteFile, Settings

if TYPE_CHECKING:
    from ..cache.openfile import OpenFile

log = logging.getLogger(__name__)

#: a cached row without an etag still matches its object when the mtimes differ by less (1 ms)
SAME_MTIME_NS = 1_000_000
#: a name longer than this many characters may pass 255 bytes: only then are its bytes counted
NAME_CHARS_SAFE = 63
NAME_MAX_BYTES = 255


def plausible(name: str) -> bool:
    """Cheap check that a name could be a key (lookups run it on every miss of the kernel)."""
    if name.isprintable():
        if len(name) > NAME_CHARS_SAFE and len(name.encode("utf-8", "surrogateescape")) > NAME_MAX_BYTES:
            raise NameTooLong(f"{name[:40]}...: names are at most {NAME_MAX_BYTES} bytes")
        try:
            name.encode("utf-8")
        except UnicodeEncodeError:
            return False  # bytes that are not UTF-8 (surrogate escapes)
        return True
    return False  # newline or another control character


def still_valid(e: Entry, info: ObjectInfo) -> bool:
    """Whether a cached row still describes the provider's object (same etag, else size and mtime)."""
    if e.etag and info.etag:
        return e.etag == info.etag
    return e.size == info.size and abs(e.mtime_ns - info.mtime_ns) < SAME_MTIME_NS


class Tree:
    """Finding keys, and the folder rows changes of a folder's contents move (thread-safe)."""

    def __init__(self, settings: Settings, state: CoreState, layout: Layout, providers: dict[str, Provider],
                 remote: RemoteView, data: DataFiles, schedule: Schedule) -> None:
        self.settings = settings
        self.cfg = settings.cfg
        self.root = settings.root
        self.state = state
        self.index = state.index
        self.layout = layout
        self.providers = providers
        self.remote = remote
        self.data = data
        self.schedule = schedule

    # ---- rules every change passes ------------------------------------------------------

    def writable(self, key: str) -> None:
        """Every change of a read-only mount answers EROFS (one log line at the edge)."""
        if self.settings.read_only:
            raise ReadOnly(f"{key or '/'}: the mount is read-only")

    def route(self, key: str, size: int) -> str:
        """The provider a file of this size at key goes to (the routing rules)."""
        return self.cfg.provider_for(self.layout.type_of(keys.as_path(key)), size)

    # ---- provider limits, checked at the operation ----------------------------------------

    def stored_in(self, key: str, is_dir: bool = False) -> list[str]:
        """The providers that may store key: for a file, every one its type's routing rules pick at
        any size (a file that grows past a rule's size still fits); a folder adds its marker's."""
        type_ = self.layout.type_of(keys.as_path(key))
        out: list[str] = [self.cfg.default_provider] if is_dir else []
        for rule in self.cfg.routing_rules:
            if rule.type is not None and rule.type != type_:
                continue
            if rule.provider not in out:
                out.append(rule.provider)
            if rule.size_gt is None and rule.size_lt is None:
                return out  # this rule takes every size: no later rule is reached
        if self.cfg.default_provider not in out:
            out.append(self.cfg.default_provider)
        return out

    def check_key(self, key: str, is_dir: bool = False) -> None:
        """Refuse a key one of its providers cannot store as given (NameTooLong, LayoutError), before
        anything is written. Provider.check_key is pure and local by contract: it never blocks, so
        callers may run it anywhere (they do it before taking the core lock all the same)."""
        stored = keys.dir_key(key) if is_dir else key
        for pname in self.stored_in(key, is_dir):
            self.providers[pname].check_key(stored)

    def check_new(self, key: str, is_dir: bool = False) -> None:
        """A new entry at key (nothing is there): no alias name of storefs' own, and a key its providers store."""
        if keys.is_alias(key):
            raise LayoutError(f"{keys.name(key)}: names ending in {keys.FILE_SUFFIX} are storefs' own "
                              "(a file beside a folder of the same name); no such file is here")
        self.check_key(key, is_dir)

    # ---- finding a key ----------------------------------------------------------------

    def find(self, key: str, offline_dir: bool = False) -> Found | None:
        """What key is now. While its provider does not answer, an unknown key is absent
        (so creates keep working), or a folder when offline_dir (a parent being written into)."""
        if key == self.root:
            return Folder()
        if not plausible(keys.name(key)):
            return None  # storefs never lists such a name, and never asks a provider for it
        clean: Entry | None = None
        kept: Entry | None = None  # a folder's metadata this mount set, for providers that keep none
        dkey = keys.dir_key(key)
        with self.state.lock:
            node = self.state.nodes.get(key)
            if node is not None:
                return OpenNode(node)
            e = self.index.get(key)
            if e is not None and not e.is_tombstone:
                if e.pending:
                    return CachedFile(e)
                clean = e  # a cached copy: good while the provider still has the same object
            d = self.index.get(dkey)
            if d is not None and not d.is_tombstone:
                if d.pending:
                    return Folder(entry=d)
                kept = d
            if self.index.has_live_below(dkey):
                return Folder(entry=kept)
            file_gone = e is not None and clean is None
            dir_gone = d is not None and d.is_tombstone
        try:
            r = self.remote.lookup(key, need_meta=clean is None)
        except ProviderUnavailable:
            if clean is not None:
                return CachedFile(clean)
            if kept is not None or offline_dir or self.index.any_below(dkey):
                return Folder(entry=kept)  # the cache holds something below it: it is a folder
            return None
        if kept is not None and (r is None or not r[1].is_dir):
            self.forget_dir(kept)  # removed (or replaced by a file) elsewhere
            kept = None
        if clean is not None and (r is None or r[1].is_dir or not still_valid(clean, r[1])):
            if self.remote.is_down(clean.provider):
                return CachedFile(clean)  # an old listing answered: no evidence
            log.info("%s changed in its provider; dropping the cached copy", key)
            self.evict(clean)
            clean = None
        if r is None:
            return None
        if r[1].is_dir:
            if dir_gone:
                return None
            # the provider's own folder metadata wins where it keeps some; the cache fills in where it does not
            return Folder(entry=kept if r[1].mode is None else None, remote=r)
        if clean is not None:
            return CachedFile(clean, r)
        return None if file_gone else RemoteFile(r)

    def find_existing(self, key: str) -> Found:
        """find(key), or NotFound."""
        f = self.find(key)
        if f is None:
            raise NotFound(key)
        return f

    def require_dir(self, key: str) -> Found:
        """Folder key, which a new entry goes into (known offline too, as long as the cache has it)."""
        f = self.find(key, offline_dir=True)
        if f is None:
            raise NotFound(f"{key or '/'}: parent folder does not exist")
        if not f.is_dir:
            raise NotADirectory(key)
        return f

    def forget_dir(self, d: Entry) -> None:
        """Drop the kept metadata of a folder that is gone from its provider."""
        with self.state.lock:
            if self.index.get(d.key) is d and not d.pending:
                self.index.remove(d.key)

    # ---- what getattr shows -------------------------------------------------------------

    def attr(self, f: Found) -> Attr:
        """What getattr answers for f."""
        if isinstance(f, OpenNode):
            return self.open_attr(f.node)
        if f.entry is not None:
            return self.entry_attr(f.entry, f.is_dir)
        if f.remote is not None:
            return self.remote_attr(f.remote[1], f.is_dir)
        s = self.settings
        return Attr(True, 0, s.mounted_at_ns, s.dir_mode, s.uid, s.gid)

    # the three below are attr's cases, for a readdirplus batch that knows its case without a Found

    def open_attr(self, node: OpenFile) -> Attr:
        """What getattr answers for an open file: its row with the live size."""
        s, o = self.settings, node.entry
        return Attr(False, node.size, o.mtime_ns, o.mode, s.owner_id(o.uid, s.uid), s.owner_id(o.gid, s.gid),
                    o.ctime_ns, o.atime_ns, o.rdev)

    def entry_attr(self, e: Entry, is_dir: bool) -> Attr:
        """What getattr answers for a file or folder with journal row e."""
        s = self.settings
        return Attr(is_dir, 0 if is_dir else e.size, e.mtime_ns, e.mode,
                    s.owner_id(e.uid, s.uid), s.owner_id(e.gid, s.gid), e.ctime_ns, e.atime_ns, e.rdev)

    def remote_attr(self, info: ObjectInfo, is_dir: bool) -> Attr:
        """What getattr answers for a file or folder only its provider's listing or HEAD describes."""
        s = self.settings
        mode = info.mode or (s.dir_mode if is_dir else s.file_mode)
        return Attr(is_dir, 0 if is_dir else info.size, info.mtime_ns or s.mounted_at_ns, mode,
                    s.owner_id(info.uid, s.uid), s.owner_id(info.gid, s.gid), info.ctime_ns or 0,
                    info.atime_ns or 0, info.rdev or 0)

    def owner(self, e: Entry) -> tuple[int, int]:
        """The uid and gid a row shows (the mount's defaults where it stores none)."""
        s = self.settings
        return s.owner_id(e.uid, s.uid), s.owner_id(e.gid, s.gid)

    def new_owner(self, parent: Found, uid: int, gid: int) -> tuple[int, int, bool]:
        """Owner of a new entry, and whether the folder passes its group on (set-group-ID folders, as ext4)."""
        a = self.attr(parent)
        if a.mode & stat.S_ISGID:
            return uid, a.gid, True
        return uid, gid, False

    # ---- the rows that carry a folder's metadata ---------------------------------------------

    def remote_xattrs(self, pname: str, key: str) -> dict[str, bytes]:
        """The xattrs of the object at key (one HEAD): never called under the core lock."""
        try:
            return dict(self.providers[pname].head(key).xattrs)
        except NotFound:
            return {}

    def dir_xattrs(self, pname: str, key: str) -> dict[str, bytes]:
        """The xattrs of folder key's marker (one HEAD): never called under the core lock."""
        try:
            info = self.providers[pname].head_dir(keys.dir_key(key))
        except NotFound:
            return {}
        return dict(info.xattrs) if info else {}

    def dir_row(self, key: str, f: Found) -> Entry:
        """A journal row for folder key as it is now, to carry a change of its metadata or times.
        May ask the provider (a disk's xattrs) unless f already has its row: never under the core lock."""
        if f.entry is not None:
            return f.entry
        s = self.settings
        pname = f.remote[0] if f.remote else self.cfg.default_provider
        info = f.remote[1] if f.remote else None
        xattrs: dict[str, bytes] = dict(info.xattrs) if info else {}
        if info is not None and key != self.root and self.providers[pname].listing_has_metadata:
            xattrs = self.dir_xattrs(pname, key)  # a disk's listing leaves xattrs out
        return Entry(keys.dir_key(key), pname, kind="dir", state=State.DIRTY, op=OP_MKDIR, remote=True,
                     mtime_ns=(info.mtime_ns if info else 0) or s.mounted_at_ns,
                     ctime_ns=(info.ctime_ns or 0) if info else 0,
                     atime_ns=(info.atime_ns or 0) if info else 0, mode=(info.mode if info else None) or s.dir_mode,
                     uid=info.uid if info else None, gid=info.gid if info else None, xattrs=xattrs)

    def prepared(self, key: str, f: Found | None) -> Found | None:
        """Folder f (at key) with the row a change of its times would start from, built now: building
        it may ask the provider (a disk's xattrs), which never happens under the core lock."""
        if f is None or key == self.root or f.entry is not None:
            return f
        with self.state.lock:
            row = self.index.get(keys.dir_key(key))
        if row is not None and not row.is_tombstone:
            return f  # touch_dir takes the row itself
        return Folder(entry=self.dir_row(key, f), remote=f.remote)

    def touch_dir(self, key: str, f: Found | None, now_ns: int) -> None:
        """An entry was created, removed or renamed in folder key: its mtime and ctime move, as on
        a disk, and reach the provider with its marker. Called with the core lock held, with f
        from prepared() (so no provider is asked here)."""
        if key == self.root or f is None:
            return
        row = self.index.get(keys.dir_key(key))
        if row is None or row.is_tombstone:
            # the prepared row, else (a tombstone to replace, a row gone since) one built without a request
            row = f.entry if row is None and f.entry is not None else self.bare_dir_row(key)
            new_row = True
        else:
            new_row = row.op is None
        self.index.amend(row, mtime_ns=now_ns, ctime_ns=now_ns, op=row.op or OP_MKDIR, state=State.DIRTY,
                         generation=row.generation + 1)
        # a later touch of a row already journaled only moves its times: not worth a commit per create,
        # nor a new place in the upload queue (its quiet delay moves, which the queue asks about)
        self.index.put(row, persist=new_row)
        self.schedule.touched(row.key, new_row)

    def bare_dir_row(self, key: str) -> Entry:
        """A row for folder key that knows nothing of it but that it exists (what getattr shows of such a folder)."""
        s = self.settings
        return Entry(keys.dir_key(key), self.cfg.default_provider, kind="dir", state=State.DIRTY, op=OP_MKDIR,
                     remote=True, mtime_ns=s.mounted_at_ns, mode=s.dir_mode)

    # ---- cached copies (the evictor's side, and changes made by other programs) ---------------

    def changed_outside(self, provider: str, key: str) -> None:
        """Another program changed key in a provider: forget what we cached about it."""
        key = key.rstrip("/")
        self.remote.forget(key)
        with self.state.lock:
            e = self.index.get(key)
        if e is None or e.pending or e.provider != provider:
            return
        try:
            info = self.providers[provider].head(key)
        except StorefsError:
            info = None
        if info is None or not still_valid(e, info):
            self.evict(e)

    def refresh(self, key: str) -> dict[str, Any]:
        """Drop what the mount holds of the providers' side at and below key (`storefs refresh`): cached
        listings and heads, and clean closed cached copies with the attributes they carry, so the next
        access asks the providers. Pending changes, open files and folders' kept metadata stay."""
        prefixes, named = self.remote.drop_below(key)
        below = keys.prefix(key)
        with self.state.lock:
            clean = [e for k, e in self.index.entries.items()
                     if (k == key or k.startswith(below)) and e.kind == "file" and not e.pending
                     and k not in self.state.nodes]
        evicted = [e.key for e in clean if self.evict(e)]
        log.info("refresh %s: dropped %d listings, %d cached names, %d cached copies", key or "/", len(prefixes),
                 len(named), len(evicted))
        return {"listings": len(prefixes), "names": len(set(named)), "cached_files": len(evicted),
                "keys": sorted({key, *(p.rstrip("/") for p in prefixes), *named, *evicted})}

    def eviction_candidates(self) -> list[Entry]:
        """Clean, closed cached copies, least recently used first."""
        with self.state.lock:
            found = [e for e in self.index.entries.values()
                     if e.op is None and e.data_name and e.key not in self.state.nodes]
        return sorted(found, key=lambda e: e.used)

    def evict(self, e: Entry) -> bool:
        """Drop a clean cached copy (its object stays in the provider); never an open or dirty one."""
        with self.state.lock:
            if e.pending or e.key in self.state.nodes or self.index.get(e.key) is not e:
                return False
            self.index.remove(e.key)
            self.data.remove(e.data_name)
            return True
