"""Answers that change nothing: getattr, folder listings (with the attrs they carry), link targets."""

from __future__ import annotations

import contextlib
import errno
import logging
import stat
import threading

from .. import keys
from ..cache.journal import OP_PUT
from ..errors import NotADirectory, NotFound, ProviderUnavailable, StorefsError
from ..providers.base import ObjectInfo
from .files import Files
from .tree import Tree, still_valid
from .types import Attr, Folder, Listing, OpenNode, Remote

log = logging.getLogger(__name__)

MAX_LINKS_KEPT = 10_000  # link targets read from providers, kept in memory


class Lookup:
    """getattr, readdir and readlink on top of the tree (thread-safe)."""

    def __init__(self, tree: Tree, files: Files) -> None:
        self.tree = tree
        self.files = files
        self._links_lock = threading.Lock()  # protects _links
        self._links: dict[str, tuple[str | None, bytes]] = {}  # key -> (etag, target) of links read lately

    def getattr(self, key: str, fh: int | None = None) -> Attr:
        """What stat shows of key (of the open file fh where given: its size may be unflushed)."""
        if fh is not None:
            node = self.files.node_of(fh)
            if node is not None:
                return self.tree.attr(OpenNode(node))
        return self.tree.attr(self.tree.find_existing(key))

    def readdir(self, key: str) -> list[str]:
        """The names in folder key."""
        return self.children(key)[0]

    def readdir_attrs(self, key: str) -> list[tuple[str, Attr | None]]:
        """Children with what getattr would answer for each, where that costs no request (None
        otherwise): the kernel then stats a listed folder without a lookup per name."""
        listing = self.listing(key)
        return list(zip(listing.names, self.listing_attrs(listing, 0, len(listing.names)), strict=True))

    def listing(self, key: str) -> Listing:
        """Folder key's names and the provider listing behind them, for a readdir stream to page through."""
        return Listing(key, *self.children(key))

    def listing_attrs(self, listing: Listing, start: int, stop: int) -> list[Attr | None]:
        """What getattr would answer for names[start:stop] of listing, where that costs no request
        (None otherwise): a readdirplus reply carries only the few dozen a kernel buffer holds."""
        tree, state, index = self.tree, self.tree.state, self.tree.index
        key, remote = listing.key, listing.remote
        names = listing.names[start:stop]
        out: list[Attr | None] = []
        has_meta: dict[str, bool] = {}  # provider name -> whether its listing carries mode and mtime
        ks = [keys.child(key, name) for name in names]
        with state.lock:  # the same order of evidence as Tree.find; one hold for the batch, no request in it
            rows = [(node := state.nodes.get(k), index.get(k), index.get(dk := keys.dir_key(k)),
                     node is None and index.has_live_below(dk)) for k in ks]
        # each case answers as tree.attr would for the Found that Tree.find makes of the same evidence,
        # without making that Found (a frozen dataclass costs a microsecond a name)
        open_attr, entry_attr, remote_attr = tree.open_attr, tree.entry_attr, tree.remote_attr
        for name, k, (node, e, d, below) in zip(names, ks, rows, strict=True):
            r = remote.get(name) or remote.get(keys.dir_key(name))
            a: Attr | None = None
            if node is not None:
                a = open_attr(node)
            elif e is not None and not e.is_tombstone:
                if e.pending or (r is not None and not r[1].is_dir and still_valid(e, r[1])):
                    a = entry_attr(e, False)
            elif d is not None and not d.is_tombstone and (d.pending or below or (r is not None and r[1].is_dir)):
                if d.pending or r is None or r[1].mode is None:
                    a = entry_attr(d, True)
                elif r[1].is_dir:
                    a = remote_attr(r[1], True)
                else:
                    a = tree.attr(Folder())
            elif below:
                a = tree.attr(Folder())
            elif r is not None and e is None and d is None:
                if r[1].is_dir:
                    known, meta = tree.remote.dir_meta_cached(k, r)
                    if known:  # else: one HEAD, at its lookup
                        a = tree.attr(Folder(remote=meta))
                else:
                    full = has_meta.get(r[0])
                    if full is None:  # asked once per provider: each is wrapped twice (aliases, health)
                        full = has_meta[r[0]] = tree.providers[r[0]].listing_has_metadata
                    if full:
                        a = remote_attr(r[1], False)
            out.append(a)
        return out

    def children(self, key: str) -> tuple[list[str], dict[str, Remote]]:
        """The names in folder key, and the provider listing they were merged from."""
        tree, state, index = self.tree, self.tree.state, self.tree.index
        f = tree.find_existing(key)
        if not f.is_dir:
            raise NotADirectory(key)
        prefix = keys.prefix(key)
        names: set[str] = set()
        with state.lock:  # before the provider: what is pending now may be uploaded while we list
            local = index.children(prefix)
        listing: dict[str, tuple[str, ObjectInfo]]
        try:
            listing = tree.remote.listing(prefix)
        except ProviderUnavailable:
            if not (f.entry is not None or index.has_live_below(prefix)):
                raise
            listing = {}  # a folder this mount made: what the journal knows is all there is
        tree.remote.prefetch_below(prefix, listing)
        with state.lock:
            rows = [index.get(prefix + name) for name in listing]
            gone = state.deleted_lately(prefix + name.rstrip("/")
                                        for name, e in zip(listing, rows, strict=True) if e is None)
        for name, e in zip(listing, rows, strict=True):
            plain = name.rstrip("/")
            if e is not None and e.is_tombstone:
                continue
            if e is None and gone and prefix + plain in gone:
                continue  # a listing from before the delete landed (its tombstone is gone already)
            try:
                tree.layout.check_name(plain)
            except StorefsError as err:
                log.warning("skipping %r in a listing: %s", prefix + name, repr(str(err))[1:-1])
                continue
            names.add(plain)
        with state.lock:  # ... but not what was deleted meanwhile
            names.update(n.rstrip("/") for n in local
                         if not ((e := index.get(prefix + n)) is not None and e.is_tombstone))
        return sorted(names), listing

    def readlink(self, key: str) -> bytes:
        """The target of the link at key, as it was given: from the cache, else from its provider."""
        f = self.tree.find_existing(key)
        if not stat.S_ISLNK(self.tree.attr(f).mode):
            raise StorefsError(f"{key}: not a symbolic link", code=errno.EINVAL, quiet=True)
        e = f.entry
        if e is not None and e.data_name and e.chunks is None and (e.op == OP_PUT or e.op is None):
            with contextlib.suppress(FileNotFoundError):
                with open(self.tree.data.path(e.data_name), "rb") as fobj:
                    return fobj.read(e.size)
        if e is not None:
            return self.files.fetcher(e)(0, e.size)
        if f.remote is None:
            raise NotFound(key)
        pname, info = f.remote
        with self._links_lock:
            hit = self._links.get(key)
        if hit is not None and hit[0] == info.etag and info.etag:
            return hit[1]
        target = self.tree.providers[pname].get_range(key, 0, info.size)
        with self._links_lock:
            if len(self._links) >= MAX_LINKS_KEPT:
                self._links.clear()
            self._links[key] = (info.etag, target)
        return target
