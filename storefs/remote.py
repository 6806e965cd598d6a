"""What the providers hold, seen through short-lived caches of listings and heads.

Several providers may be configured; the view merges them, the default provider first:
when a key exists in two, the first provider in that order wins. Local changes are not
here: the namespace overlays the journal on top of this view.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from .errors import NotFound, ProviderUnavailable
from .providers.base import ObjectInfo, Provider

log = logging.getLogger(__name__)

MAX_LISTINGS = 256
MAX_HEADS = 50_000
#: a lookup of an unknown name lists its folder when the folder holds no more than this; bigger
#: folders get one HEAD per name (listing 100,000 keys to answer for one is no bargain)
LOOKUP_LISTING_MAX = 1000
#: a cached listing this big is expired, not copied, when storefs changes a name in it
MAX_LISTING_UPDATE = 5000
#: how long storefs' own changes are kept for listings fetched while they landed (a long listing of
#: a big folder may run this long)
RECORD_KEEP = 120.0
#: a name missing from a cached listing older than this is checked with a new listing of its folder
#: (at most once per folder per this long): a file another client just uploaded opens by its path
#: within seconds, while listings keep answering everything else for their whole TTL
MISS_RECHECK = 2.0
#: a folder whose listing answered a miss since it was fetched (files being created there) is listed
#: again in the background this long before its next miss would have to wait for the recheck
RECHECK_AHEAD = 0.5
#: a listing in use since it was fetched is fetched again in the background this long before it
#: expires (as a share of the TTL), so a folder being worked in never makes a request wait for its
#: listing
REFRESH_AHEAD = 0.2
#: ... and so is a folder left alone, for this many TTLs after it last answered a request (a job
#: writes a batch, and a walk, rsync or `ls -R` comes a minute later), then it is let expire
KEEP_WARM_TTLS = 4.0
#: at most this many folders are kept fresh for having been used lately (the most recent)
KEEP_WARM_MAX = 256
#: background refreshes skip listings bigger than this (a 100,000-key folder is listed on demand)
REFRESH_MAX_NAMES = 5000
#: after a provider failed to answer, lookups skip it this long instead of waiting on it again
DOWN_FOR = 5.0
MAX_DOWN_FOR = 30.0
#: a folder's listing, once read, has its first subfolders listed in the background, this many
#: at a time: a walk (find, du, rsync, ls -R) lists them next, one round trip each, in turn
PREFETCH_SUBFOLDERS = 64
PREFETCH_THREADS = 8
#: a request for a listing being fetched in the background waits for it this long at most
PREFETCH_WAIT = 5.0


class RemoteView:
    """Cached, merged reads of the providers' key space (listings, heads)."""

    def __init__(self, providers: dict[str, Provider], order: list[str], ttl: float, negative_ttl: float) -> None:
        self.providers = providers
        self.order = order
        self.ttl = ttl
        self.negative_ttl = negative_ttl
        self._lock = threading.Lock()  # every cache below; never held across a provider call
        self._listings: OrderedDict[str, tuple[float, dict[str, ObjectInfo]]] = OrderedDict()
        self._fetched: dict[str, float] = {}  # when each cached listing's fetch began
        self._used: dict[str, float] = {}  # when each cached listing last answered a request
        self._missed: dict[str, float] = {}  # when each cached listing last answered that a name is absent
        self._halt = threading.Event()
        self._refresher: threading.Thread | None = None
        self._prefetcher: ThreadPoolExecutor | None = None
        self._prefetching: dict[str, threading.Event] = {}  # set when that folder's background listing ends
        self._prefetched_for: dict[str, float] = {}  # parents whose subfolders were listed ahead, until when
        self._heads: OrderedDict[str, tuple[float, tuple[str, ObjectInfo] | None]] = OrderedDict()
        self._down_until: dict[str, float] = {}
        self._failures: dict[str, int] = {}
        self._epochs: dict[str, int] = {}  # bumped by forget(), so a listing racing a change is not cached as fresh
        self._big: dict[str, float] = {}  # folders too big to list for a lookup, until when
        # storefs' own recent changes by folder and name: laid over listings fetched while they landed
        self._recorded: dict[str, dict[str, tuple[float, tuple[str, ObjectInfo] | None]]] = {}
        self._recorded_pruned = 0.0
        # object stores answer a LIST as fast as a HEAD: a folder's listing then answers every
        # lookup in it, absent names included, for the price of one request
        self._list_lookups = any(p.lookup_by_listing for p in providers.values())

    def is_down(self, pname: str) -> bool:
        """Whether pname failed to answer a moment ago (callers then use what they know)."""
        return self._down_until.get(pname, 0.0) > time.monotonic()

    def _call(self, pname: str, fn, *args):  # type: ignore[no-untyped-def]
        """Call a provider, failing fast while it is known to be down."""
        if self.is_down(pname):
            raise ProviderUnavailable(f"provider {pname} is not answering")
        try:
            result = fn(*args)
        except ProviderUnavailable:
            n = self._failures.get(pname, 0) + 1
            self._failures[pname] = n
            wait = min(MAX_DOWN_FOR, DOWN_FOR * 2 ** (n - 1))
            self._down_until[pname] = time.monotonic() + wait
            log.warning("provider %s is not answering; serving from the cache for %.0fs", pname, wait)
            raise
        self._failures.pop(pname, None)
        return result

    def mark_up(self, pname: str) -> None:
        """The provider answered someone else (an upload): lookups may ask it again."""
        if self._down_until.pop(pname, None) is not None:
            log.info("provider %s answers again", pname)
        self._failures.pop(pname, None)

    def listing(self, prefix: str) -> dict[str, tuple[str, ObjectInfo]]:
        """Children of the folder prefix by name ('x' or 'sub/'), with the provider holding each."""
        merged = self._listing(prefix, None)
        assert merged is not None
        return merged

    def _listing(self, prefix: str, limit: int | None,
                 refresh: bool = False) -> dict[str, tuple[str, ObjectInfo]] | None:
        """listing(), or None when limit is given and a provider holds more children than that."""
        now = time.monotonic()
        with self._lock:
            hit = self._listings.get(prefix)
            if hit and hit[0] > now and not refresh:
                self._listings.move_to_end(prefix)
                self._used[prefix] = now
                return hit[1]
            ahead = None if refresh else self._prefetching.get(prefix)
        if ahead is not None and ahead.wait(PREFETCH_WAIT):  # a walk caught up with its read-ahead
            with self._lock:
                hit = self._listings.get(prefix)
                if hit and hit[0] > time.monotonic():
                    self._listings.move_to_end(prefix)
                    self._used[prefix] = now
                    return hit[1]
        merged: dict[str, tuple[str, ObjectInfo]] = {}
        with self._lock:
            epoch = self._epochs.get(prefix, 0)
            started = time.monotonic()
        try:
            for pname in reversed(self.order):  # earlier providers overwrite later ones
                infos = self._call(pname, lambda p=pname: list(itertools.islice(
                    self.providers[p].list(prefix), None if limit is None else limit + 1)))
                if limit is not None and len(infos) > limit:
                    with self._lock:
                        self._big[prefix] = time.monotonic() + self.ttl
                    return None
                for info in infos:
                    name = info.name + ("/" if info.is_dir else "")
                    merged[name] = (pname, info)
        except ProviderUnavailable:
            if hit:  # stale beats nothing while the provider is away
                return hit[1]
            raise
        with self._lock:
            # another program's change noticed while we listed makes this listing old already:
            # keep it for outages, but do not serve it as fresh; storefs' own changes are known
            fresh = self._epochs.get(prefix, 0) == epoch
            self._prune()
            # a change recorded before the fetch began is in it already; a later one may not be
            since = {n: v for n, v in self._recorded.get(prefix, {}).items() if v[0] >= started}
            if since:
                merged = self._overlay(merged, since)
            # the TTL runs from when the listing is complete: a big folder takes longer than it
            self._listings[prefix] = (time.monotonic() + self.ttl if fresh else 0.0, merged)
            self._fetched[prefix] = started
            self._listings.move_to_end(prefix)
            self._trim()
        return merged

    def _trim(self) -> None:
        while len(self._listings) > MAX_LISTINGS:
            gone = self._listings.popitem(last=False)[0]
            self._fetched.pop(gone, None)
            self._used.pop(gone, None)
            self._missed.pop(gone, None)

    def _cached_listing(self, prefix: str) -> dict[str, tuple[str, ObjectInfo]] | None:
        now = time.monotonic()
        with self._lock:
            hit = self._listings.get(prefix)
            if hit and hit[0] > now:
                self._used[prefix] = now
                return hit[1]
            return None

    # ---- keeping listings in use fresh ------------------------------------------------

    def start(self) -> None:
        """Refresh listings in use before they expire, and list subfolders ahead of a walk, off the
        request path (object stores only)."""
        if self._list_lookups and self.ttl > 0 and self._refresher is None:
            self._halt.clear()
            self._refresher = threading.Thread(target=self._refresh_loop, name="storefs-listings", daemon=True)
            self._refresher.start()
            self._prefetcher = ThreadPoolExecutor(PREFETCH_THREADS, thread_name_prefix="storefs-prefetch")

    def stop(self) -> None:
        self._halt.set()
        if self._prefetcher is not None:
            self._prefetcher.shutdown(wait=False, cancel_futures=True)
            self._prefetcher = None
        for prefix in list(self._prefetching):  # cancelled ones: nobody may wait on them
            self._prefetched(prefix)
        if self._refresher is not None:
            self._refresher.join(timeout=5)
            self._refresher = None

    def prefetch_below(self, prefix: str, listing: dict[str, tuple[str, ObjectInfo]]) -> None:
        """A folder's listing was read: list its first subfolders not cached yet, in the background.

        Such listings are not marked in use, so they expire unless a request reads them.
        """
        pool = self._prefetcher
        if pool is None or any(self.is_down(p) for p in self.order):
            return
        now = time.monotonic()
        with self._lock:
            # once per parent per TTL: an `ls` run again and again never lists subfolders in a loop
            if self._prefetched_for.get(prefix, 0.0) > now:
                return
            self._prefetched_for[prefix] = now + self.ttl
            todo = []
            for name in listing:
                if name.endswith("/"):
                    sub = prefix + name
                    hit = self._listings.get(sub)
                    if (hit is None or hit[0] <= now) and sub not in self._prefetching \
                            and self._big.get(sub, 0.0) <= now:
                        todo.append(sub)
                        self._prefetching[sub] = threading.Event()
                        if len(todo) >= PREFETCH_SUBFOLDERS:
                            break
        self._submit(pool, todo, self._prefetch)

    def _submit(self, pool: ThreadPoolExecutor, prefixes: list[str], task: Callable[[str], None]) -> None:
        """Hand background listings (already marked in _prefetching) to the pool."""
        for prefix in prefixes:
            try:
                pool.submit(task, prefix)
            except RuntimeError:  # shut down meanwhile (unmount): nobody may wait on it
                self._prefetched(prefix)

    def _prefetch(self, prefix: str) -> None:
        try:
            if not self._halt.is_set():
                self._listing(prefix, LOOKUP_LISTING_MAX, refresh=True)  # bigger ones: HEADs anyway
        except ProviderUnavailable:
            pass  # a request that needs the listing asks again, and reports the outage
        except Exception:  # noqa: BLE001 - a failed prefetch leaves the listing to be fetched on demand
            log.exception("background listing of %r failed", prefix)
        finally:
            self._prefetched(prefix)

    def _prefetched(self, prefix: str) -> None:
        with self._lock:
            done = self._prefetching.pop(prefix, None)
        if done is not None:
            done.set()

    def _refresh_loop(self) -> None:
        tick = max(0.05, min(1.0, self.ttl * REFRESH_AHEAD / 3, RECHECK_AHEAD / 2))
        while not self._halt.wait(tick):
            self._recheck_ahead()
            for prefix in self.due_refreshes():
                if self._halt.is_set():
                    return
                try:
                    self._listing(prefix, REFRESH_MAX_NAMES, refresh=True)
                except ProviderUnavailable:
                    break  # the provider is away: listings stay as they are until it answers
                except Exception:  # noqa: BLE001 - a failed refresh leaves the listing to expire
                    log.exception("background refresh of %r failed", prefix)

    def _recheck_ahead(self) -> None:
        """List again, in the background, the folders files are being created in, before a miss
        there has to wait for its recheck (a create's lookup of its new name is such a miss)."""
        pool = self._prefetcher
        if pool is None:
            return
        todo = self.due_rechecks()
        with self._lock:
            todo = [prefix for prefix in todo if prefix not in self._prefetching]
            for prefix in todo:
                self._prefetching[prefix] = threading.Event()
        self._submit(pool, todo, self._recheck_in_background)

    def _recheck_in_background(self, prefix: str) -> None:
        self._prefetch(prefix)
        with self._lock:  # still a folder in use: refreshed before it expires, as before the recheck
            if prefix in self._listings:
                self._used[prefix] = time.monotonic()

    def due_rechecks(self) -> list[str]:
        """Folders whose listing answered a miss since it was fetched and is nearly old enough to
        be rechecked at the next one."""
        now = time.monotonic()
        if any(self.is_down(p) for p in self.order):
            return []
        with self._lock:
            return [prefix for prefix, missed in self._missed.items()
                    if missed > (fetched := self._fetched.get(prefix, now))
                    and now - fetched >= MISS_RECHECK - RECHECK_AHEAD
                    and (hit := self._listings.get(prefix)) is not None and hit[0] > now
                    and len(hit[1]) <= LOOKUP_LISTING_MAX]  # bigger folders: a HEAD per name

    def due_refreshes(self) -> list[str]:
        """Folders whose listing expires soon and that answered a request since it was fetched,
        or within KEEP_WARM_TTLS of now (then only the KEEP_WARM_MAX used last)."""
        now = time.monotonic()
        ahead, warm = self.ttl * REFRESH_AHEAD, self.ttl * KEEP_WARM_TTLS
        if any(self.is_down(p) for p in self.order):
            return []
        with self._lock:
            due, left = [], []
            for prefix, (until, listing) in self._listings.items():
                if not (0.0 < until - now <= ahead and len(listing) <= REFRESH_MAX_NAMES):
                    continue
                used = self._used.get(prefix, 0.0)
                if used > self._fetched.get(prefix, now):
                    due.append(prefix)
                elif used and now - used <= warm:
                    left.append((used, prefix))
            if left:
                recent = heapq.nlargest(KEEP_WARM_MAX, self._used.values())[-1]
                due += [prefix for used, prefix in left if used >= recent]
            return due

    def lookup(self, key: str, need_meta: bool = True) -> tuple[str, ObjectInfo] | None:
        """The file or folder at key ('a/b/x', never with a trailing '/'), or None.

        need_meta=False accepts a listing's answer for a file (size and etag, no mode or
        mtime on object stores): enough to check a cached copy, and no HEAD to pay.
        """
        parent, _, name = key.rpartition("/")
        prefix = parent + "/" if parent else ""
        listing = self._cached_listing(prefix)
        now = time.monotonic()
        with self._lock:
            hit = self._heads.get(key)
            if hit and hit[0] > now:
                return hit[1]
            big = self._big.get(prefix, 0.0) > now
        found: tuple[str, ObjectInfo] | None = None
        try:
            if listing is None and self._list_lookups and not big:
                listing = self._listing(prefix, LOOKUP_LISTING_MAX)
            elif (listing is not None and self._list_lookups and name not in listing
                  and name + "/" not in listing and now - self._fetched.get(prefix, now) > MISS_RECHECK):
                listing = self._recheck(prefix)
            if listing is not None:
                found = listing.get(name) or listing.get(name + "/")
                if found is None:
                    with self._lock:
                        self._missed[prefix] = now
                if found is not None and found[1].is_dir and need_meta:
                    return self._with_dir_meta(key, found)
                if (found is None or found[1].is_dir or not need_meta
                        or self.providers[found[0]].listing_has_metadata):
                    return found
                # listings of object stores carry no mtime/mode: one HEAD, then cached like any other
                try:
                    found = (found[0], self._call(found[0], self.providers[found[0]].head, key))
                except NotFound:
                    found = None
            else:
                found = self._head_lookup(key)
        except ProviderUnavailable:
            if listing is not None:
                return listing.get(name) or listing.get(name + "/")
            if hit:
                return hit[1]
            with self._lock:  # an expired listing still knows what was there a moment ago
                stale = self._listings.get(prefix)
            if stale is not None:
                return stale[1].get(name) or stale[1].get(name + "/")
            raise
        if found is not None and found[1].is_dir and need_meta:
            return self._with_dir_meta(key, found)
        with self._lock:
            self._heads[key] = (now + (self.ttl if found else self.negative_ttl), found)
            while len(self._heads) > MAX_HEADS:
                self._heads.popitem(last=False)
        return found

    def dir_meta_cached(self, key: str, found: tuple[str, ObjectInfo]) -> tuple[bool, tuple[str, ObjectInfo]]:
        """(known, folder) without a request: whether found's own metadata is at hand (in the listing
        or from a recent HEAD of its marker), and the folder with it."""
        if found[1].mode is not None:
            return True, found
        with self._lock:
            hit = self._heads.get(key + "/")
        if hit is not None and hit[0] > time.monotonic():
            return True, hit[1] or found
        return False, found

    def _with_dir_meta(self, key: str, found: tuple[str, ObjectInfo]) -> tuple[str, ObjectInfo]:
        """A folder with its own mode, owner, times and xattrs where the listing had none: one HEAD
        of its marker (cached like a head), since object-store listings carry no folder metadata."""
        pname, info = found
        if info.mode is not None:
            return found
        hkey = key + "/"
        now = time.monotonic()
        with self._lock:
            hit = self._heads.get(hkey)
        if hit is not None and hit[0] > now:
            return hit[1] or found
        try:
            meta = self._call(pname, self.providers[pname].head_dir, hkey)
        except ProviderUnavailable:
            return found
        out = None if meta is None else (pname, ObjectInfo(
            key=hkey, size=0, is_dir=True, mtime=meta.mtime or info.mtime, mode=meta.mode, uid=meta.uid,
            gid=meta.gid, ctime=meta.ctime, atime=meta.atime, xattrs=dict(meta.xattrs)))
        with self._lock:
            self._heads[hkey] = (now + self.ttl, out)
            while len(self._heads) > MAX_HEADS:
                self._heads.popitem(last=False)
        return out or found

    def _recheck(self, prefix: str) -> dict[str, tuple[str, ObjectInfo]] | None:
        """A new listing of prefix for a miss: the one being fetched in the background, if any."""
        with self._lock:
            ahead = self._prefetching.get(prefix)
        if ahead is not None and ahead.wait(PREFETCH_WAIT):
            now = time.monotonic()
            with self._lock:
                hit = self._listings.get(prefix)
                if hit and hit[0] > now and now - self._fetched.get(prefix, 0.0) <= MISS_RECHECK:
                    self._used[prefix] = now
                    return hit[1]
        return self._listing(prefix, LOOKUP_LISTING_MAX, refresh=True)

    def _head_lookup(self, key: str) -> tuple[str, ObjectInfo] | None:
        """key asked of each provider in turn: a HEAD, then a folder probe."""
        for pname in self.order:
            p = self.providers[pname]
            try:
                return (pname, self._call(pname, p.head, key))
            except NotFound:
                pass
            if self._call(pname, p.dir_exists, key + "/"):
                return (pname, ObjectInfo(key=key + "/", size=0, mtime=0.0, is_dir=True))
        return None

    def known_empty(self, key: str) -> None:
        """storefs just made folder key, which no provider had: its listing is empty, no request needed.

        A new artifact folder's first file then costs no listing; a name another client puts
        there meanwhile is found by the miss recheck, as in any listing older than MISS_RECHECK.
        """
        prefix = key.rstrip("/") + "/"
        if not self._list_lookups or any(self.is_down(p) for p in self.order):
            return  # a provider that does not answer gave no evidence that the folder is new
        now = time.monotonic()
        with self._lock:
            if prefix in self._listings:
                return
            self._listings[prefix] = (now + self.ttl, {})
            self._fetched[prefix] = now
            self._trim()

    def record(self, key: str, found: tuple[str, ObjectInfo] | None) -> None:
        """storefs itself just changed key in a provider (found: what is there now, None: gone).

        What it knows is fresher than any cached listing, so the listing of its folder is
        updated rather than dropped, and a listing being fetched meanwhile gets the change
        laid over it: the next lookup in that folder costs no request.
        """
        key = key.rstrip("/")
        parent, _, name = key.rpartition("/")
        prefix = parent + "/" if parent else ""
        now = time.monotonic()
        with self._lock:
            if found is None and len(self.order) > 1:
                self._heads.pop(key, None)  # another provider may hold the key too
                self._forget_listing(prefix)
            else:
                self._heads[key] = (now + self.ttl, found)
                self._recorded.setdefault(prefix, {})[name] = (now, found)
                hit = self._listings.get(prefix)
                if hit is not None:
                    if len(hit[1]) > MAX_LISTING_UPDATE:
                        self._listings[prefix] = (0.0, hit[1])
                    else:
                        self._listings[prefix] = (hit[0], self._overlay(hit[1], {name: (now, found)}))
            if found is None or not found[1].is_dir:  # a folder's marker landing leaves its children as they are
                self._forget_listing(key + "/")
            self._prune()

    @staticmethod
    def _overlay(listing: dict[str, tuple[str, ObjectInfo]],
                 changes: dict[str, tuple[float, tuple[str, ObjectInfo] | None]]) -> dict[str, tuple[str, ObjectInfo]]:
        """A copy of listing with storefs' own changes applied (a reader may be walking the original)."""
        out = dict(listing)
        for name, (_, found) in changes.items():
            out.pop(name, None)
            out.pop(name + "/", None)
            if found is not None:
                out[name + ("/" if found[1].is_dir else "")] = found
        return out

    def _forget_listing(self, prefix: str) -> None:
        hit = self._listings.get(prefix)
        if hit is not None:  # expired, not dropped: while a provider is away it still answers
            self._listings[prefix] = (0.0, hit[1])
        self._epochs[prefix] = self._epochs.get(prefix, 0) + 1

    def _prune(self) -> None:
        now = time.monotonic()
        if now > self._recorded_pruned + 10.0:
            keep_after = now - RECORD_KEEP
            self._recorded = {p: kept for p, names in self._recorded.items()
                              if (kept := {n: v for n, v in names.items() if v[0] > keep_after})}
            self._recorded_pruned = now
        if len(self._epochs) > 4 * MAX_LISTINGS:
            self._epochs.clear()  # a fetch under way then caches as expired: harmless
        if len(self._big) > MAX_LISTINGS:
            self._big = {k: t for k, t in self._big.items() if t > now}
        if len(self._missed) > MAX_LISTINGS:
            self._missed = {k: t for k, t in self._missed.items() if k in self._listings}
        if len(self._prefetched_for) > MAX_LISTINGS:
            self._prefetched_for = {k: t for k, t in self._prefetched_for.items() if t > now}

    def forget(self, key: str) -> None:
        """Drop what is cached about key and its folder, after another program changed it."""
        key = key.rstrip("/")
        parent, _, _ = key.rpartition("/")
        prefix = parent + "/" if parent else ""
        with self._lock:
            self._big.pop(prefix, None)
            hit = self._heads.get(key)
            if hit is not None:
                self._heads[key] = (0.0, hit[1])
            self._heads.pop(key + "/", None)  # the folder's own metadata
            for p in (prefix, key + "/"):
                self._forget_listing(p)
                self._recorded.get(p, {}).pop(key.rpartition("/")[2], None)
            self._prune()
