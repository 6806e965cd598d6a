"""The core's shared state: the journal's rows in memory, the open nodes, and the one lock over them.

Locks, in the order they may be taken (never the other way round):

1. CoreState.lock: the index's rows (and so the journal's writes), the open nodes by key,
   the recent deletes. No provider request is made under it: what an operation needs from a
   provider is asked first, then the lock is taken and the index re-checked (a row that
   appeared meanwhile wins).
2. Files.lock (the handle table), Schedule._lock (quiet delays, flush count), Activity._lock
   (time of the last change), Counters._lock, Lookup._links_lock (link targets read lately):
   leaves, taken briefly, under 1 or alone.
3. Journal._lock (its SQLite connection and open transaction), Uploader._cond (its queue),
   DataFiles._cond (the data files made ahead and to delete), Evictor._cond (the cache's
   measured use), OpenFile._lock (one file's chunk fetches): leaves, each taken briefly,
   under 1 or alone; none calls into the core while holding its own (the uploader and the
   evictor call it with theirs released).
4. The view's locks (storefs/view/: DirCache._lock over listings and heads, ProviderHealth._lock,
   Refresh._lock): leaves, never held across a provider call, and taken without 1 held.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable

from ..cache.index import EntryIndex
from ..cache.openfile import OpenFile

log = logging.getLogger(__name__)

#: recent deletes kept before a prune, whatever their age
MAX_RECENT_DELETES = 10_000
#: seconds between prunes of the recent deletes
PRUNE_INTERVAL = 1.0
#: a landed delete hides a key from listings this long past the listing cache's ttl
DELETE_MEMORY_SLACK = 2.0


class CoreState:
    """The rows, open nodes and recent deletes every part reads, behind the core lock."""

    def __init__(self, index: EntryIndex, listing_ttl: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.index = index
        #: the core lock: index rows, nodes and just_deleted (see the lock order above)
        self.lock = threading.RLock()
        self.nodes: dict[str, OpenFile] = {}  # open files by key (and by libfuse's hidden name)
        self._just_deleted: dict[str, float] = {}  # keys whose delete landed a moment ago
        self._deleted_pruned = 0.0
        self._keep_deleted = listing_ttl + DELETE_MEMORY_SLACK
        self._clock = clock

    def note_deleted(self, key: str) -> None:
        """Remember a delete that landed, for as long as a listing fetched before it may be served.
        Called with the lock held."""
        now = self._clock()
        self._just_deleted[key] = now
        if len(self._just_deleted) > MAX_RECENT_DELETES or now - self._deleted_pruned > PRUNE_INTERVAL:
            self._just_deleted = {k: t for k, t in self._just_deleted.items() if now - t < self._keep_deleted}
            self._deleted_pruned = now

    def recently_deleted(self, key: str) -> bool:
        """Whether a delete of key landed a moment ago (a listing from before it may still show it)."""
        with self.lock:
            at = self._just_deleted.get(key)
            return at is not None and self._clock() - at < self._keep_deleted

    def deleted_lately(self, keys: Iterable[str]) -> set[str]:
        """Of keys, those whose delete landed a moment ago: recently_deleted for a whole listing in
        one pass. Called with the lock held."""
        just = self._just_deleted
        if not just:
            return set()
        now, keep = self._clock(), self._keep_deleted
        return {k for k in keys if (at := just.get(k)) is not None and now - at < keep}

    def recreated(self, key: str) -> None:
        """key exists again: listings show it. Called with the lock held."""
        self._just_deleted.pop(key, None)
