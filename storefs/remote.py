"""What the providers hold, seen through short-lived caches of listings and heads.

Several providers may be configured; the view merges them, the default provider first:
when a key exists in two, the first provider in that order wins. Local changes are not
here: the namespace overlays the journal on top of this view.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict

from .errors import NotFound, ProviderUnavailable
from .providers.base import ObjectInfo, Provider

log = logging.getLogger(__name__)

MAX_LISTINGS = 256
MAX_HEADS = 50_000
#: after a provider failed to answer, lookups skip it this long instead of waiting on it again
DOWN_FOR = 5.0
MAX_DOWN_FOR = 30.0


class RemoteView:
    """Cached, merged reads of the providers' key space (listings, heads)."""

    def __init__(self, providers: dict[str, Provider], order: list[str], ttl: float, negative_ttl: float) -> None:
        self.providers = providers
        self.order = order
        self.ttl = ttl
        self.negative_ttl = negative_ttl
        self._lock = threading.Lock()
        self._listings: OrderedDict[str, tuple[float, dict[str, ObjectInfo]]] = OrderedDict()
        self._heads: OrderedDict[str, tuple[float, tuple[str, ObjectInfo] | None]] = OrderedDict()
        self._down_until: dict[str, float] = {}
        self._failures: dict[str, int] = {}
        self._epochs: dict[str, int] = {}  # bumped by forget(), so a listing racing a change is not cached as fresh

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
        now = time.monotonic()
        with self._lock:
            hit = self._listings.get(prefix)
            if hit and hit[0] > now:
                self._listings.move_to_end(prefix)
                return hit[1]
        merged: dict[str, tuple[str, ObjectInfo]] = {}
        with self._lock:
            epoch = self._epochs.get(prefix, 0)
        try:
            for pname in reversed(self.order):  # earlier providers overwrite later ones
                for info in self._call(pname, lambda p=pname: list(self.providers[p].list(prefix))):
                    name = info.name + ("/" if info.is_dir else "")
                    merged[name] = (pname, info)
        except ProviderUnavailable:
            if hit:  # stale beats nothing while the provider is away
                return hit[1]
            raise
        with self._lock:
            # a change that landed while we listed makes this listing old already: keep it
            # for outages, but do not serve it as fresh
            fresh = self._epochs.get(prefix, 0) == epoch
            # the TTL runs from when the listing is complete: a big folder takes longer than it
            self._listings[prefix] = (time.monotonic() + self.ttl if fresh else 0.0, merged)
            self._listings.move_to_end(prefix)
            while len(self._listings) > MAX_LISTINGS:
                self._listings.popitem(last=False)
        return merged

    def _cached_listing(self, prefix: str) -> dict[str, tuple[str, ObjectInfo]] | None:
        with self._lock:
            hit = self._listings.get(prefix)
            return hit[1] if hit and hit[0] > time.monotonic() else None

    def lookup(self, key: str) -> tuple[str, ObjectInfo] | None:
        """The file or folder at key ('a/b/x', never with a trailing '/'), or None."""
        parent, _, name = key.rpartition("/")
        prefix = parent + "/" if parent else ""
        listing = self._cached_listing(prefix)
        now = time.monotonic()
        with self._lock:
            hit = self._heads.get(key)
            if hit and hit[0] > now:
                return hit[1]
        if listing is not None:
            found = listing.get(name) or listing.get(name + "/")
            if found is None or found[1].is_dir or self.providers[found[0]].listing_has_metadata:
                return found
            # listings of object stores carry no mtime/mode: one HEAD, then cached like any other
            try:
                info = self._call(found[0], self.providers[found[0]].head, key)
            except NotFound:
                return None
            except ProviderUnavailable:
                return found
            with self._lock:
                self._heads[key] = (now + self.ttl, (found[0], info))
            return found[0], info
        found: tuple[str, ObjectInfo] | None = None
        try:
            for pname in self.order:
                p = self.providers[pname]
                try:
                    found = (pname, self._call(pname, p.head, key))
                    break
                except NotFound:
                    pass
                if self._call(pname, p.dir_exists, key + "/"):
                    found = (pname, ObjectInfo(key=key + "/", size=0, mtime=0.0, is_dir=True))
                    break
        except ProviderUnavailable:
            if hit:
                return hit[1]
            with self._lock:  # an expired listing still knows what was there a moment ago
                stale = self._listings.get(prefix)
            if stale is not None:
                return stale[1].get(name) or stale[1].get(name + "/")
            raise
        with self._lock:
            self._heads[key] = (now + (self.ttl if found else self.negative_ttl), found)
            while len(self._heads) > MAX_HEADS:
                self._heads.popitem(last=False)
        return found

    def forget(self, key: str) -> None:
        """Drop what is cached about key and its folder, after storefs itself changed it."""
        key = key.rstrip("/")
        parent, _, _ = key.rpartition("/")
        with self._lock:
            for cache, k in ((self._heads, key), (self._listings, parent + "/" if parent else ""),
                             (self._listings, key + "/")):
                hit = cache.get(k)
                if hit is not None:  # expired, not dropped: while a provider is away it still answers
                    cache[k] = (0.0, hit[1])  # type: ignore[index]
            for prefix in (parent + "/" if parent else "", key + "/"):
                self._epochs[prefix] = self._epochs.get(prefix, 0) + 1
            if len(self._epochs) > 4 * MAX_LISTINGS:
                self._epochs.clear()  # a fetch under way then caches as expired: harmless

    def forget_all(self) -> None:
        with self._lock:
            self._heads.clear()
            self._listings.clear()
