"""What the providers hold, as one key space: the cached, merged view the core asks.

RemoteView composes the parts of this package: DirCache (listings and heads), ProviderHealth
(down, slow), Refresh (the background) and merge (several providers as one). Local changes are
not here: the core overlays the journal on top of this view.

A request never waits behind a provider that hangs for what the cache holds: while a provider
is slow or down, an expired listing or head (at most stale_max old) answers, and one background
revalidation per folder or key is started; while the providers answer, a request that holds an
expired answer waits for its revalidation, but only until a provider turns slow. A request that
holds nothing still asks the provider.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Hashable
from typing import TypeVar

from .. import keys
from ..errors import NotFound, ProviderUnavailable
from ..providers.base import ObjectInfo, Provider
from .ahead import HeadsAhead
from .dircache import DirCache, Head, Listing, Names
from .health import ProviderHealth
from .merge import Found, merge_listings
from .refresh import Refresh
from .tunables import DEFAULT_TUNABLES, ViewTunables

log = logging.getLogger(__name__)

T = TypeVar("T")
#: the provider kind whose keys are a disk's paths: a file and a folder of one name never both exist there
DISK_KIND = "local"


class RemoteView:
    """Cached, merged reads of the providers' key space (listings, heads)."""

    def __init__(self, providers: dict[str, Provider], order: list[str], ttl: float, negative_ttl: float, *,
                 clock: Callable[[], float] = time.monotonic, tunables: ViewTunables = DEFAULT_TUNABLES,
                 health: ProviderHealth | None = None) -> None:
        self.providers = providers
        self.order = order
        self.ttl = ttl
        self.negative_ttl = negative_ttl
        self.tunables = tunables
        self._clock = clock
        self.health = health if health is not None else ProviderHealth(clock, tunables)
        self.cache = DirCache(ttl, negative_ttl, clock=clock, tunables=tunables)
        self.refresh = Refresh(self.cache, self.health, order, self._fetch, clock=clock, tunables=tunables,
                               dir_meta=self._dir_meta)
        self.ahead = HeadsAhead(self.cache, self.health, providers, self.refresh, clock=clock, tunables=tunables)
        # object stores answer a LIST as fast as a HEAD: a folder's listing then answers every
        # lookup in it, absent names included, for the price of one request
        self._list_lookups = any(p.lookup_by_listing for p in providers.values())

    # -- health ----------------------------------------------------------------------------

    def is_down(self, pname: str) -> bool:
        """Whether pname does not answer promptly (down, or a call to it hangs): callers then use
        what they know, and an answer from the cache is no evidence of a change."""
        return not self.health.answering(pname)

    def mark_up(self, pname: str) -> None:
        """The provider answered someone else (an upload): lookups may ask it again."""
        self.health.mark_up(pname)

    def _answering(self) -> bool:
        return all(self.health.answering(p) for p in self.order)

    def _usable(self, fetched: float) -> bool:
        """Whether an answer fetched then may stand in while the providers do not answer promptly."""
        return self._clock() - fetched <= self.tunables.stale_max

    # -- the background --------------------------------------------------------------------

    def start(self) -> None:
        """Revalidate expired answers for waiting requests off the request path; on object stores
        also refresh listings in use before they expire, and list subfolders ahead of a walk."""
        if self.ttl > 0:
            self.refresh.start(listings=self._list_lookups)
            if self._list_lookups:
                self.ahead.start()

    def stop(self) -> None:
        self.ahead.stop()
        self.refresh.stop()

    def prefetch_below(self, prefix: str, listing: dict[str, tuple[str, ObjectInfo]]) -> None:
        """A folder's listing was read: list its first subfolders not cached yet, in the background."""
        self.refresh.prefetch_below(prefix, listing)

    def due_rechecks(self) -> list[str]:
        """Folders due to be listed again before a miss there waits for it (see Refresh)."""
        return self.refresh.due_rechecks()

    def due_refreshes(self) -> list[str]:
        """Listings due to be fetched again before they expire (see Refresh)."""
        return self.refresh.due_refreshes()

    # -- asking the providers ----------------------------------------------------------------

    def _fetch(self, prefix: str, limit: int | None) -> Names | None:
        """prefix's merged listing from the providers, into the cache; None when limit is given
        and a provider holds more children than that (the folder is then marked big)."""
        epoch, started = self.cache.begin_fetch(prefix)
        per_provider: list[tuple[str, list[ObjectInfo]]] = []
        for pname in self.order:
            infos: list[ObjectInfo] = []
            with self.health.calling(pname) as progress:
                for info in self.providers[pname].list(prefix):
                    progress()
                    infos.append(info)
                    if limit is not None and len(infos) > limit:
                        break
            if limit is not None and len(infos) > limit:
                self.cache.mark_big(prefix)
                return None
            per_provider.append((pname, infos))
        return self.cache.put_listing(prefix, merge_listings(per_provider), epoch, started)

    def _bounded(self, tag: Hashable, fetch: Callable[[], T], stale: T,
                 joined: Callable[[], T | None] = lambda: None) -> T:
        """fetch()'s answer, asked in the background and awaited only while the providers answer
        promptly; stale (what the cache held) once one is slow or down. fetch fills the cache, so
        an answer that comes late still serves the next request. joined: the cache's answer after
        waiting for the same work someone else started."""
        if not self._answering():
            if not any(self.health.is_down(p) for p in self.order):  # a down one fails fast: no use
                self.refresh.revalidate(tag, lambda: self._quietly(fetch))
            return stale
        box: list[tuple[bool, object]] = []

        def task() -> None:
            try:
                box.append((True, fetch()))
            except Exception as e:  # noqa: BLE001 - handed to the request that waits for it
                box.append((False, e))
        done = self.refresh.revalidate(tag, task)
        if done is None:  # no background running: ask here
            try:
                return fetch()
            except ProviderUnavailable:
                return stale
        if not self._await(done):
            return stale
        if box:
            ok, value = box[0]
            if ok:
                return value  # type: ignore[return-value]
            if isinstance(value, ProviderUnavailable):
                return stale
            raise value  # type: ignore[misc]
        answer = joined()
        if answer is not None:
            return answer
        try:  # someone else's work ended without an answer for this request, or was cancelled
            return fetch()
        except ProviderUnavailable:
            return stale

    @staticmethod
    def _quietly(fetch: Callable[[], object]) -> None:
        """fetch() for what it puts in the cache."""
        fetch()

    def _await(self, done: threading.Event) -> bool:
        """Wait for background work while every provider answers; False once one is slow or down."""
        while not done.wait(self.tunables.slow_poll):
            if not self._answering():
                return False
        return True

    # -- listings --------------------------------------------------------------------------

    def listing(self, prefix: str) -> dict[str, tuple[str, ObjectInfo]]:
        """Children of the folder prefix by name ('x' or 'sub/'), with the provider holding each."""
        merged = self._listing(prefix, None)
        assert merged is not None
        return merged

    def _listing(self, prefix: str, limit: int | None) -> Names | None:
        """listing(), or None when limit is given and a provider holds more children than that."""
        names = self.cache.fresh(prefix)
        if names is not None:
            return names
        held = self.cache.held(prefix)
        if held is not None and self._usable(held.fetched):
            return self._revalidated(prefix, limit, held)
        ahead = self.refresh.pending(("list", prefix))
        if ahead is not None and ahead.wait(self.tunables.prefetch_wait):  # a walk caught up with its read-ahead
            names = self.cache.fresh(prefix)
            if names is not None:
                return names
        try:
            return self._fetch(prefix, limit)
        except ProviderUnavailable:
            if held is not None:  # stale beats nothing while the provider is away
                return held.names
            raise

    def _revalidated(self, prefix: str, limit: int | None, held: Listing) -> Names | None:
        """A new listing of prefix for a request that holds an older one (expired, or due for a
        miss recheck); the held one while the providers do not answer promptly."""
        stale: Names | None = held.names
        return self._bounded(("list", prefix), lambda: self._fetch(prefix, limit), stale,
                             joined=lambda: self.cache.fresh(prefix, fetched_after=held.fetched))

    def known_empty(self, key: str) -> None:
        """storefs just made folder key, which no provider had: its listing is empty, no request needed.

        A new artifact folder's first file then costs no listing; a name another client puts
        there meanwhile is found by the miss recheck, as in any listing older than miss_recheck.
        Made while a provider does not answer, the empty listing stands in only until it does.
        """
        if self._list_lookups:  # a provider that does not answer gave no evidence that the folder is new
            self.cache.known_empty(keys.dir_key(key.rstrip("/")), verified=self._answering())

    # -- lookups ---------------------------------------------------------------------------

    def lookup(self, key: str, need_meta: bool = True) -> tuple[str, ObjectInfo] | None:
        """The file or folder at key ('a/b/x', never with a trailing '/'), or None.

        need_meta=False accepts a listing's answer for a file (size and etag, no mode or
        mtime on object stores): enough to check a cached copy, and no HEAD to pay.
        """
        prefix, name = keys.split(key)
        listing = self.cache.fresh(prefix)
        now = self._clock()
        head = self.cache.head(key)
        if head is not None and head.until > now:
            if head.found is not None and head.found[1].is_dir and need_meta:
                return self._with_dir_meta(key, head.found)
            return head.found
        try:
            if self._list_lookups:
                if listing is None and not self.cache.is_big(prefix):
                    listing = self._listing(prefix, self.tunables.lookup_listing_max)
                elif listing is not None and name not in listing and name + "/" not in listing:
                    held = self.cache.held(prefix)
                    if held is not None and now - held.fetched > self.tunables.miss_recheck:
                        listing = self._revalidated(prefix, self.tunables.lookup_listing_max, held)
            elif listing is None:  # an expired listing still knows what was there a moment ago
                held = self.cache.held(prefix)
                if held is not None and self._usable(held.fetched) and not self._answering():
                    listing = held.names
            if listing is not None:
                found = listing.get(name) or listing.get(name + "/")
                if found is None:
                    self.cache.missed(prefix)
                if found is not None and found[1].is_dir and need_meta:
                    return self._with_dir_meta(key, found)
                if (found is None or found[1].is_dir or not need_meta
                        or self.providers[found[0]].listing_has_metadata):
                    return found
                # listings of object stores carry no mtime/mode: one HEAD, then cached like any other;
                # the names after it in a folder being stat'ed are asked for ahead (ahead.py)
                listed: Found = found
                stale: Found | None = head.found if head is not None and head.found is not None and self._usable(
                    head.fetched) else listed
                self.ahead.noticed(prefix, name, listing)
                return self._bounded(("head", key), lambda: self._head_for_meta(key, listed), stale,
                                     joined=lambda: self._fresh_head(key))
            found = self._head_lookup(key, head)
        except ProviderUnavailable:
            if listing is not None:
                return listing.get(name) or listing.get(name + "/")
            if head is not None:
                return head.found
            held = self.cache.held(prefix)
            if held is not None:  # an expired listing still knows what was there a moment ago
                return held.names.get(name) or held.names.get(name + "/")
            raise
        if found is not None and found[1].is_dir and need_meta:
            return self._with_dir_meta(key, found)
        return found

    def _fresh_head(self, key: str) -> Found | None:
        """What a HEAD someone else just made found at key (None: nothing fresh, or absent: ask again)."""
        head = self.cache.head(key)
        return head.found if head is not None and head.until > self._clock() else None

    def _head_for_meta(self, key: str, listed: Found) -> Found | None:
        """The full metadata of a file the listing showed: one HEAD, cached (none if a HEAD ahead
        answered between the lookup's look at the cache and its claim of the work)."""
        head = self.cache.head(key)
        started = self._clock()
        if head is not None and head.until > started:
            return head.found
        try:
            found: Found | None = (listed[0], self.health.call(listed[0], self.providers[listed[0]].head, key))
        except NotFound:
            found = None
        self.cache.put_head(key, found, started)
        return found

    def _head_lookup(self, key: str, head: Head | None) -> Found | None:
        """key asked of each provider (no listing answers for it); while the providers do not
        answer promptly, an expired head of a found key or its folder's listing answers, the newer."""
        stale: list[tuple[float, Found | None]] = []
        if head is not None and head.found is not None and self._usable(head.fetched):
            # (an absent name's head lasts the short negative TTL: asked again inline, as it is
            # asked often; while the provider does not answer, its folder's listing says absent)
            stale.append((head.fetched, head.found))
        prefix, name = keys.split(key)
        held = self.cache.held(prefix)
        if held is not None and self._usable(held.fetched):
            stale.append((held.fetched, held.names.get(name) or held.names.get(name + "/")))
        if not stale:
            return self._ask_each(key)
        return self._bounded(("head", key), lambda: self._ask_each(key), max(stale, key=lambda s: s[0])[1])

    def _ask_each(self, key: str) -> Found | None:
        """key asked of each provider in turn: a HEAD, then a folder probe; cached as a head."""
        started = self._clock()
        found: Found | None = None
        alias = keys.is_alias(key)
        for pname in self.order:
            p = self.providers[pname]
            try:
                found = (pname, self.health.call(pname, p.head, key))
            except NotFound:
                pass
            if found is not None:
                if alias or p.kind != DISK_KIND:  # an object store may hold a folder of the same name too
                    beside = self.health.call(pname, p.dir_exists, keys.dir_key(keys.object_key(key)))
                    if alias and not beside:
                        found = None  # the alias names a file only while a folder of its name exists
                    elif beside and not alias:  # the folder keeps the name
                        found = (pname, ObjectInfo(key=keys.dir_key(key), size=0, mtime_ns=0, is_dir=True))
                break
            if alias:
                continue
            if self.health.call(pname, p.dir_exists, keys.dir_key(key)):
                found = (pname, ObjectInfo(key=keys.dir_key(key), size=0, mtime_ns=0, is_dir=True))
                break
        self.cache.put_head(key, found, started)
        return found

    def dir_meta_cached(self, key: str, found: tuple[str, ObjectInfo]) -> tuple[bool, tuple[str, ObjectInfo]]:
        """(known, folder) without a request: whether found's own metadata is at hand (in the listing
        or from a recent HEAD of its marker, or an older one while the provider does not answer),
        and the folder with it."""
        if found[1].mode is not None:
            return True, found
        hit = self.cache.head(keys.dir_key(key))
        if hit is not None and (hit.until > self._clock()
                                or (self._usable(hit.fetched) and not self.health.answering(found[0]))):
            return True, hit.found or found
        return False, found

    def _with_dir_meta(self, key: str, found: Found) -> Found:
        """A folder with its own mode, owner, times and xattrs where the listing had none: one HEAD
        of its marker (cached like a head), since object-store listings carry no folder metadata;
        a HEAD of it the background has under way (a walk's read-ahead) is waited for instead."""
        if found[1].mode is not None:
            return found
        hkey = keys.dir_key(key)
        hit = self.cache.head(hkey)
        if hit is not None and hit.until > self._clock():
            return hit.found or found
        ahead = self.refresh.pending(("head", hkey))
        if ahead is not None and self._answering() and ahead.wait(self.tunables.prefetch_wait):
            hit = self.cache.head(hkey)
            if hit is not None and hit.until > self._clock():
                return hit.found or found
        try:
            if hit is not None and self._usable(hit.fetched):
                out = self._bounded(("head", hkey), lambda: self._dir_meta(hkey, found), hit.found,
                                    joined=lambda: self._fresh_head(hkey))
            else:
                out = self._dir_meta(hkey, found)
        except ProviderUnavailable:
            return found
        return out or found

    def _dir_meta(self, hkey: str, found: Found) -> Found | None:
        """HEAD of the marker hkey ('a/b/') of the folder found: the folder with its own metadata,
        cached for a TTL (None, also cached: it has no marker, or one without metadata)."""
        pname, info = found
        started = self._clock()
        meta = self.health.call(pname, self.providers[pname].head_dir, hkey)
        out = None if meta is None else (pname, ObjectInfo(
            key=hkey, size=0, is_dir=True, mtime_ns=meta.mtime_ns or info.mtime_ns, mode=meta.mode, uid=meta.uid,
            gid=meta.gid, ctime_ns=meta.ctime_ns, atime_ns=meta.atime_ns, xattrs=dict(meta.xattrs)))
        self.cache.put_head(hkey, out, started, self.ttl)
        return out

    # -- changes ---------------------------------------------------------------------------

    def record(self, key: str, found: tuple[str, ObjectInfo] | None) -> None:
        """storefs itself just changed key in a provider (found: what is there now, None: gone).

        What it knows is fresher than any cached listing, so the listing of its folder is
        updated rather than dropped, and a listing being fetched meanwhile gets the change
        laid over it: the next lookup in that folder costs no request.
        """
        self.cache.record(key, found, several_providers=len(self.order) > 1)

    def drop_below(self, key: str) -> tuple[list[str], list[str]]:
        """Drop every listing and head at and below key (`storefs refresh`): (folder prefixes whose
        listings went, keys the dropped answers named)."""
        return self.cache.drop_below(key)

    def forget(self, key: str) -> None:
        """Drop what is cached about key and its folder, after another program changed it."""
        self.cache.forget(key)
