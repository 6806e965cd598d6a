"""Work off the request path: listings in use fetched again before they expire, folders files are
being created in listed again before a miss would wait for it, subfolders listed ahead of a walk,
and revalidations a lookup asked for (each at most once at a time).

Nothing here decides what a request answers: the background only fills the cache.
"""

from __future__ import annotations

import functools
import heapq
import logging
import threading
import time
from collections.abc import Callable, Hashable
from concurrent.futures import ThreadPoolExecutor

from ..errors import ProviderUnavailable
from .dircache import DirCache, Names
from .health import ProviderHealth
from .merge import Found
from .tunables import DEFAULT_TUNABLES, ViewTunables

log = logging.getLogger(__name__)

#: how long stop() waits for the refresher thread to end
STOP_WAIT = 5.0
#: the refresher thread never wakes more often than this, nor less often than MAX_TICK (seconds)
MIN_TICK = 0.05
MAX_TICK = 1.0


class Refresh:
    """The refresher thread and the thread pools of background listings and revalidations."""

    def __init__(self, cache: DirCache, health: ProviderHealth, order: list[str],
                 fetch: Callable[[str, int | None], Names | None], *,
                 clock: Callable[[], float] = time.monotonic, tunables: ViewTunables = DEFAULT_TUNABLES,
                 dir_meta: Callable[[str, Found], object] | None = None) -> None:
        self._cache = cache
        self._health = health
        self._order = order
        self._fetch = fetch  # fetches prefix's listing from the providers into the cache (None: too big)
        self._dir_meta = dir_meta  # HEADs a folder's marker ('a/b/', as listed) into the head cache
        self._clock = clock
        self._t = tunables
        self._halt = threading.Event()
        self._thread: threading.Thread | None = None
        self._prefetcher: ThreadPoolExecutor | None = None
        self._revalidator: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()  # protects _pending and _prefetched_for
        self._pending: dict[Hashable, threading.Event] = {}  # background work under way, set when it ends
        self._prefetched_for: dict[str, float] = {}  # parents whose subfolders were listed ahead, until when

    def answering(self) -> bool:
        """Whether every provider answers promptly (the background asks nothing of one that does not)."""
        return all(self._health.answering(p) for p in self._order)

    # -- lifecycle -------------------------------------------------------------------------

    def start(self, listings: bool) -> None:
        """Start revalidating for waiting requests; with listings (object stores), also the refresher
        thread and the listings ahead of a walk (once)."""
        if self._revalidator is not None:
            return
        self._halt.clear()
        self._revalidator = ThreadPoolExecutor(self._t.revalidate_threads, thread_name_prefix="storefs-revalidate")
        if listings:
            self._prefetcher = ThreadPoolExecutor(self._t.prefetch_threads, thread_name_prefix="storefs-prefetch")
            self._thread = threading.Thread(target=self._loop, name="storefs-listings", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """End the background work; what is queued is dropped, what runs ends with its request."""
        self._halt.set()
        for pool in (self._prefetcher, self._revalidator):
            if pool is not None:
                pool.shutdown(wait=False, cancel_futures=True)
        self._prefetcher = self._revalidator = None
        with self._lock:
            pending = list(self._pending)
        for tag in pending:  # cancelled ones: nobody may wait on them
            self._done(tag)
        if self._thread is not None:
            self._thread.join(timeout=STOP_WAIT)
            self._thread = None

    def pending(self, tag: Hashable) -> threading.Event | None:
        """The end of the background work tagged tag, if it is under way."""
        with self._lock:
            return self._pending.get(tag)

    def idle(self) -> bool:
        """Whether no background work is under way."""
        with self._lock:
            return not self._pending

    # -- handing work to the pools ---------------------------------------------------------

    def revalidate(self, tag: Hashable, task: Callable[[], None]) -> threading.Event | None:
        """Run task in the background unless work tagged tag is under way; the event set when it
        ends (None when the background is not running: the caller does the work itself)."""
        pool = self._revalidator
        if pool is None:
            return None
        with self._lock:
            ahead = self._pending.get(tag)
            if ahead is not None:
                return ahead
            done = self._pending[tag] = threading.Event()
        self._submit(pool, tag, task)
        return done

    def claim(self, tag: Hashable) -> bool:
        """Mark work tagged tag as under way (False: it is already): whoever asks for the same work
        meanwhile waits for release(tag) instead of doing it again."""
        with self._lock:
            if tag in self._pending:
                return False
            self._pending[tag] = threading.Event()
            return True

    def release(self, tag: Hashable) -> None:
        """The work claimed as tag is over: its waiters go on."""
        self._done(tag)

    def _claim(self, prefixes: list[str]) -> list[str]:
        """The prefixes with no background listing under way, now marked as under way."""
        with self._lock:
            todo = [p for p in prefixes if ("list", p) not in self._pending]
            for p in todo:
                self._pending["list", p] = threading.Event()
        return todo

    def _submit(self, pool: ThreadPoolExecutor, tag: Hashable, task: Callable[[], object]) -> None:
        """Hand work (already marked in _pending) to the pool."""
        def run() -> None:
            try:
                if not self._halt.is_set():
                    task()
            except ProviderUnavailable:
                pass  # a request that needs the answer asks again, and reports the outage
            except Exception:  # noqa: BLE001 - a failed background task leaves the work to be done on demand
                log.exception("background work %r failed", tag)
            finally:
                self._done(tag)
        try:
            pool.submit(run)
        except RuntimeError:  # shut down meanwhile (unmount): nobody may wait on it
            self._done(tag)

    def _done(self, tag: Hashable) -> None:
        with self._lock:
            done = self._pending.pop(tag, None)
        if done is not None:
            done.set()

    # -- listing ahead ---------------------------------------------------------------------

    def prefetch_below(self, prefix: str, names: Names) -> None:
        """A folder's listing was read: list its first subfolders not cached yet, in the background.

        Such listings are not marked in use, so they expire unless a request reads them.
        """
        pool = self._prefetcher
        if pool is None or not self.answering():
            return
        now = self._clock()
        with self._lock:
            # once per parent per TTL: an `ls` run again and again never lists subfolders in a loop
            if self._prefetched_for.get(prefix, 0.0) > now:
                return
            self._prefetched_for[prefix] = now + self._cache.ttl
            if len(self._prefetched_for) > self._t.max_listings:
                self._prefetched_for = {k: t for k, t in self._prefetched_for.items() if t > now}
        wanted: list[str] = []
        markers: list[tuple[str, Found]] = []
        for name in names:
            if name.endswith("/"):
                sub = prefix + name
                if len(markers) < self._t.prefetch_subfolders and self._marker_due(sub, names[name], now):
                    markers.append((sub, names[name]))
                hit = self._cache.held(sub)
                if (hit is None or hit.until <= now) and not self._cache.is_big(sub):
                    wanted.append(sub)
                    if len(wanted) >= self._t.prefetch_subfolders:
                        break
        # a walk descends into each subfolder in turn: its own metadata first, then its listing
        self.warm_markers(markers)
        for sub in self._claim(wanted):
            self._submit(pool, ("list", sub), functools.partial(self.prefetch, sub))

    def _marker_due(self, sub: str, found: Found, until: float) -> bool:
        """Whether folder sub's marker (its mode, owner and times, which an object store's listing
        lacks) is to be asked for: its HEAD is not cached or expires by until."""
        if self._dir_meta is None or found[1].mode is not None:
            return False
        hit = self._cache.head(sub)
        return hit is None or hit.until <= until

    def warm_markers(self, markers: list[tuple[str, Found]]) -> None:
        """HEAD the markers of these folders in the background (a lookup meeting one under way waits for it)."""
        pool, dir_meta = self._prefetcher, self._dir_meta
        if pool is None or dir_meta is None:
            return
        for sub, found in markers:
            tag = ("head", sub)
            if self.claim(tag):
                self._submit(pool, tag, functools.partial(dir_meta, sub, found))

    def keep_markers_warm(self, prefix: str, names: Names | None, before: Names) -> None:
        """A listing in use was fetched again: so are the markers of its subfolders whose metadata
        was known (a cached HEAD, or storefs made them and the listing carried it) and would expire
        before it, up to prefetch_subfolders, so their lookups answer without a request."""
        if names is None or self._dir_meta is None:
            return
        until = self._clock() + self._cache.ttl
        markers: list[tuple[str, Found]] = []
        for name, found in names.items():
            if not name.endswith("/"):
                continue
            old = before.get(name)
            known = (old is not None and old[1].mode is not None) or self._cache.head(prefix + name) is not None
            if known and self._marker_due(prefix + name, found, until):
                markers.append((prefix + name, found))
                if len(markers) >= self._t.prefetch_subfolders:
                    break
        self.warm_markers(markers)

    def prefetch(self, prefix: str) -> None:
        """What a background listing ahead of a walk does."""
        self._fetch(prefix, self._t.lookup_listing_max)  # bigger ones: HEADs anyway

    def recheck(self, prefix: str) -> None:
        """What a background recheck ahead of creates does."""
        self.prefetch(prefix)
        self._cache.touch(prefix)  # still a folder in use: refreshed before it expires, as before the recheck

    def refresh_listing(self, prefix: str) -> None:
        """What the refresher thread does for a listing due for a refresh (and its subfolders' markers)."""
        held = self._cache.held(prefix)
        self.keep_markers_warm(prefix, self._fetch(prefix, self._t.refresh_max_names), held.names if held else {})

    # -- the refresher thread --------------------------------------------------------------

    def tick(self) -> float:
        """How often the refresher thread looks for due work: a recheck starts at most this late, still
        slow_after ahead of the miss that would wait for it."""
        t = self._t
        return max(MIN_TICK, min(MAX_TICK, self._cache.ttl * t.refresh_ahead / 3, t.recheck_ahead - t.slow_after))

    def _loop(self) -> None:
        tick = self.tick()
        while not self._halt.wait(tick):
            self.recheck_ahead()
            for prefix in self.due_refreshes():
                if self._halt.is_set():
                    return
                try:
                    self.refresh_listing(prefix)
                except ProviderUnavailable:
                    break  # the provider is away: listings stay as they are until it answers
                except Exception:  # noqa: BLE001 - a failed refresh leaves the listing to expire
                    log.exception("background refresh of %r failed", prefix)

    def recheck_ahead(self) -> None:
        """List again, in the background, the folders files are being created in, before a miss
        there has to wait for its recheck (a create's lookup of its new name is such a miss)."""
        pool = self._prefetcher
        if pool is None:
            return
        for prefix in self._claim(self.due_rechecks()):
            self._submit(pool, ("list", prefix), functools.partial(self.recheck, prefix))

    def due_rechecks(self) -> list[str]:
        """Folders whose listing answered a miss since it was fetched and is nearly old enough to
        be rechecked at the next one."""
        if not self.answering():
            return []
        now, t = self._clock(), self._t
        return [prefix for prefix, hit in self._cache.listings()
                if hit.missed > hit.fetched and now - hit.fetched >= t.miss_recheck - t.recheck_ahead
                and hit.until > now and len(hit.names) <= t.lookup_listing_max]  # bigger: a HEAD per name

    def due_refreshes(self) -> list[str]:
        """Folders whose listing expires soon and that answered a request since it was fetched,
        or within keep_warm_ttls of now (then only the keep_warm_max used last)."""
        if not self.answering():
            return []
        now, t = self._clock(), self._t
        ahead, warm = self._cache.ttl * t.refresh_ahead, self._cache.ttl * t.keep_warm_ttls
        due, left = [], []
        listings = self._cache.listings()
        for prefix, hit in listings:
            if not (0.0 < hit.until - now <= ahead and len(hit.names) <= t.refresh_max_names):
                continue
            if hit.used > hit.fetched:
                due.append(prefix)
            elif hit.used and now - hit.used <= warm:
                left.append((hit.used, prefix))
        if left:
            recent = heapq.nlargest(t.keep_warm_max, (hit.used for _, hit in listings))[-1]
            due += [prefix for used, prefix in left if used >= recent]
        return due
