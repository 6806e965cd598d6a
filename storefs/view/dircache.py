"""What the providers held a moment ago: folder listings and heads, each good for a TTL.

fsspec's DirCache is the model: dicts behind one lock, nothing else. No provider is ever
called from here, so the lock is never held across a request. Expired entries are kept (until
pushed out by newer ones): while a provider does not answer, they still say what was there.
storefs' own changes (record) are laid over the cached listings, and over listings whose fetch
was under way when they landed.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from .. import keys
from .merge import Found
from .tunables import DEFAULT_TUNABLES, ViewTunables

log = logging.getLogger(__name__)

#: a folder's children by name ('x' or 'sub/'), each with the provider holding it
Names = dict[str, Found]


@dataclass
class Listing:
    """One cached folder listing and how it has been used."""

    #: never changed in place (a change makes a new dict): a reader may be walking this one
    names: Names
    #: expires then (0.0: expired by a change elsewhere)
    until: float
    #: when its fetch began: a change recorded after that may be missing from it
    fetched: float
    #: when it last answered a request
    used: float = 0.0
    #: when it last answered that a name is absent
    missed: float = 0.0


@dataclass(frozen=True)
class Head:
    """One cached lookup of a single key (found is None: absent)."""

    until: float
    fetched: float
    found: Found | None


class DirCache:
    """Listings and heads with a TTL (a negative TTL for absent keys), bounded in size."""

    def __init__(self, ttl: float, negative_ttl: float, *, clock: Callable[[], float] = time.monotonic,
                 tunables: ViewTunables = DEFAULT_TUNABLES) -> None:
        self.ttl = ttl
        self.negative_ttl = negative_ttl
        self._clock = clock
        self._t = tunables
        self._lock = threading.Lock()  # protects every dict below; never held across a provider call
        self._listings: OrderedDict[str, Listing] = OrderedDict()  # least recently used first
        self._heads: OrderedDict[str, Head] = OrderedDict()  # oldest first
        self._epochs: dict[str, int] = {}  # bumped by a change elsewhere: a listing racing it is not fresh
        self._big: dict[str, float] = {}  # folders too big to list for a lookup, until when
        # storefs' own recent changes by folder and name: laid over listings fetched while they landed
        self._recorded: dict[str, dict[str, tuple[float, Found | None]]] = {}
        self._recorded_pruned = 0.0
        self._dropped: dict[str, float] = {}  # folders `storefs refresh` dropped, and when: older fetches are stale

    # -- listings ------------------------------------------------------------------------

    def fresh(self, prefix: str, fetched_after: float | None = None) -> Names | None:
        """prefix's listing if it has not expired (and began after fetched_after), marked as used."""
        now = self._clock()
        with self._lock:
            hit = self._listings.get(prefix)
            if hit is None or hit.until <= now or (fetched_after is not None and hit.fetched < fetched_after):
                return None
            self._listings.move_to_end(prefix)
            hit.used = now
            return hit.names

    def held(self, prefix: str) -> Listing | None:
        """A copy of prefix's listing however old, or None."""
        with self._lock:
            hit = self._listings.get(prefix)
            return None if hit is None else dataclasses.replace(hit)

    def listings(self) -> list[tuple[str, Listing]]:
        """Copies of every cached listing, least recently used first (for the background refresh)."""
        with self._lock:
            return [(prefix, dataclasses.replace(hit)) for prefix, hit in self._listings.items()]

    def touch(self, prefix: str) -> None:
        """prefix's listing answered a request (or stays in use)."""
        with self._lock:
            hit = self._listings.get(prefix)
            if hit is not None:
                hit.used = self._clock()

    def missed(self, prefix: str) -> None:
        """prefix's listing just answered that a name is absent."""
        with self._lock:
            hit = self._listings.get(prefix)
            if hit is not None:
                hit.missed = self._clock()

    def begin_fetch(self, prefix: str) -> tuple[int, float]:
        """(epoch, started) to hand to put_listing once the fetch of prefix is complete."""
        with self._lock:
            return self._epochs.get(prefix, 0), self._clock()

    def put_listing(self, prefix: str, names: Names, epoch: int, started: float) -> Names:
        """Cache a fetched listing, with the changes recorded since its fetch began laid over it."""
        with self._lock:
            # another program's change noticed while we listed makes this listing old already:
            # keep it for outages, but do not serve it as fresh; storefs' own changes are known
            fresh = self._epochs.get(prefix, 0) == epoch and not any(
                prefix.startswith(p) and started <= t for p, t in self._dropped.items())
            self._prune()
            # a change recorded before the fetch began is in it already; a later one may not be
            since = {n: v for n, v in self._recorded.get(prefix, {}).items() if v[0] >= started}
            if since:
                names = overlay(names, since)
            old = self._listings.get(prefix)
            # the TTL runs from when the listing is complete: a big folder takes longer than it
            self._listings[prefix] = Listing(names, self._clock() + self.ttl if fresh else 0.0, started,
                                             used=old.used if old else 0.0, missed=old.missed if old else 0.0)
            self._listings.move_to_end(prefix)
            self._trim()
        return names

    def known_empty(self, prefix: str, verified: bool = True) -> None:
        """Cache an empty listing for a folder storefs just made, unless one is cached already;
        unverified (the providers did not answer whether the name was free), it is held expired:
        it answers only while they still do not answer, and is listed first once they do."""
        now = self._clock()
        with self._lock:
            if prefix not in self._listings:
                self._listings[prefix] = Listing({}, now + self.ttl if verified else 0.0, now)
                self._trim()

    def is_big(self, prefix: str) -> bool:
        """Whether prefix was found too big to list for a lookup, within the TTL."""
        with self._lock:
            return self._big.get(prefix, 0.0) > self._clock()

    def mark_big(self, prefix: str) -> None:
        """prefix holds more than a lookup lists: lookups in it ask for their name for a TTL."""
        with self._lock:
            self._big[prefix] = self._clock() + self.ttl

    # -- heads ---------------------------------------------------------------------------

    def head(self, key: str) -> Head | None:
        """What a lookup of key found, however old, or None."""
        with self._lock:
            return self._heads.get(key)

    def put_head(self, key: str, found: Found | None, started: float, ttl: float | None = None) -> None:
        """Cache a lookup's answer for ttl; by default the TTL when found, the negative TTL when absent."""
        if ttl is None:
            ttl = self.ttl if found is not None else self.negative_ttl
        with self._lock:
            self._put_head(key, found, started, ttl)

    def _put_head(self, key: str, found: Found | None, started: float, ttl: float) -> None:
        self._heads[key] = Head(self._clock() + ttl, started, found)
        self._heads.move_to_end(key)
        while len(self._heads) > self._t.max_heads:
            self._heads.popitem(last=False)

    # -- changes ---------------------------------------------------------------------------

    def record(self, key: str, found: Found | None, several_providers: bool) -> None:
        """storefs itself just changed key (found: what is there now, None: gone): the cached
        listing of its folder is updated rather than dropped, and kept for listings under way."""
        removed_dir = found is None and key.endswith("/")
        key = key.rstrip("/")
        prefix, name = keys.split(key)
        now = self._clock()
        with self._lock:
            beside = self._file_beside(prefix, name) if removed_dir else None
            if beside is not None:
                # the folder went; the file beside it, shown as name.storefs-file, takes its own name again
                changes = {name: (now, beside), keys.name(keys.alias(key)): (now, None)}
                self._put_head(key, beside, now, self.ttl)
                self._put_head(keys.alias(key), None, now, self.ttl)
                self._recorded.setdefault(prefix, {}).update(changes)
                shown = self._listings[prefix]  # _file_beside found the file in it
                shown.names = overlay(shown.names, changes)
            elif found is None and several_providers:
                self._heads.pop(key, None)  # another provider may hold the key too
                self._forget_listing(prefix)
            else:
                if removed_dir:  # an object store may hold a file of its name, which the mount has not seen
                    self._heads.pop(key, None)
                else:
                    self._put_head(key, found, now, self.ttl)  # storefs knows: absent for a TTL too
                self._recorded.setdefault(prefix, {})[name] = (now, found)
                hit = self._listings.get(prefix)
                if hit is not None:
                    if len(hit.names) > self._t.max_listing_update:
                        hit.until = 0.0
                    else:
                        hit.names = overlay(hit.names, {name: (now, found)})
            if found is None or not found[1].is_dir:  # a folder's marker landing leaves its children as they are
                self._forget_listing(keys.dir_key(key))
            self._prune()

    def _file_beside(self, prefix: str, name: str) -> Found | None:
        """The file prefix's cached listing shows beside folder name (as name.storefs-file), under its
        own key, or None. Called with the lock held."""
        hit = self._listings.get(prefix)
        found = hit.names.get(name + keys.FILE_SUFFIX) if hit is not None else None
        if found is None:
            return None
        return found[0], dataclasses.replace(found[1], key=prefix + name)

    def forget(self, key: str) -> None:
        """Expire what is cached about key and its folder, after another program changed it."""
        key = key.rstrip("/")
        prefix, name = keys.split(key)
        with self._lock:
            self._big.pop(prefix, None)
            hit = self._heads.get(key)
            if hit is not None:
                self._heads[key] = dataclasses.replace(hit, until=0.0)
            self._heads.pop(keys.dir_key(key), None)  # the folder's own metadata
            for p in (prefix, keys.dir_key(key)):
                self._forget_listing(p)
                self._recorded.get(p, {}).pop(name, None)
            self._prune()

    def drop_below(self, key: str) -> tuple[list[str], list[str]]:
        """Drop the listings and heads at and below key (a file or folder, '' the root), and expire the
        listing of its folder, which carries key's size and etag: the next lookup asks the provider.
        Returns the folder prefixes whose listings were dropped and every key they or a head named."""
        key = key.rstrip("/")
        below = keys.prefix(key)  # '' (the root): everything
        named: list[str] = []
        with self._lock:
            prefixes = [p for p in self._listings if p.startswith(below)]
            for p in prefixes:
                named += [p + n.rstrip("/") for n in self._listings.pop(p).names]
                self._epochs[p] = self._epochs.get(p, 0) + 1  # a fetch under way is not fresh either
            for p in [p for p in self._big if p.startswith(below)]:
                del self._big[p]
            self._dropped[below] = self._clock()  # a listing being fetched now is from before
            heads = [k for k in self._heads if k == key or k.startswith(below)]
            for k in heads:
                del self._heads[k]
            if key:
                self._forget_listing(keys.split(key)[0])
        return prefixes, [k.rstrip("/") for k in heads] + named

    def _forget_listing(self, prefix: str) -> None:
        hit = self._listings.get(prefix)
        if hit is not None:  # expired, not dropped: while a provider is away it still answers
            hit.until = 0.0
        self._epochs[prefix] = self._epochs.get(prefix, 0) + 1

    # -- bounds ----------------------------------------------------------------------------

    def _trim(self) -> None:
        while len(self._listings) > self._t.max_listings:
            self._listings.popitem(last=False)

    def _prune(self) -> None:
        now = self._clock()
        if now > self._recorded_pruned + self._t.prune_every:
            keep_after = now - self._t.record_keep
            self._recorded = {p: kept for p, names in self._recorded.items()
                              if (kept := {n: v for n, v in names.items() if v[0] > keep_after})}
            self._recorded_pruned = now
            self._dropped = {p: t for p, t in self._dropped.items() if t > keep_after}
        if len(self._epochs) > 4 * self._t.max_listings:
            self._epochs.clear()  # a fetch under way then caches as expired: harmless
        if len(self._big) > self._t.max_listings:
            self._big = {k: t for k, t in self._big.items() if t > now}


def overlay(names: Names, changes: dict[str, tuple[float, Found | None]]) -> Names:
    """A copy of names with storefs' own changes applied (a reader may be walking the original)."""
    out = dict(names)
    for name, (_, found) in changes.items():
        out.pop(name, None)
        out.pop(name + "/", None)
        if found is not None:
            out[name + ("/" if found[1].is_dir else "")] = found
    return out
