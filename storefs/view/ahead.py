"""HEADs ahead of a stat storm: `ls -l`, `find -ls` or a file manager stat every name a listing gave.

An object store's listing carries no mode, owner or mtime, so each of those stats costs one HEAD,
and a program asks for them one at a time. Once lookups in one folder start needing HEADs, the
names that follow in the listing (the order readdir gave them in, so the order they are stat'ed in)
are asked for in the background, several threads at a time, each asking for a batch the provider
can answer at once (S3 pipelines a batch of HEADs on one connection), and land in the head cache;
a lookup that meets one of them under way waits for it instead of asking again (the work is tagged
as Refresh's revalidations are, ("head", key)).

Only a folder that needs it starts it (a plain `ls -f` stats nothing, so it sends no HEAD); at most
heads_ahead_max names are queued at a time, and a lookup past them (a bigger folder) queues the next.
"""

from __future__ import annotations

import collections
import itertools
import logging
import threading
import time
from collections.abc import Callable

from ..errors import NotFound, ProviderUnavailable
from ..providers.base import ObjectInfo, Provider
from .dircache import DirCache, Names
from .health import ProviderHealth
from .refresh import Refresh
from .tunables import DEFAULT_TUNABLES, ViewTunables

log = logging.getLogger(__name__)

#: folders whose listing order is kept while their names are asked for ahead (a stat storm is one folder at a time)
FOLDERS_KEPT = 4


class HeadsAhead:
    """The queue of names to HEAD ahead of lookups, and the threads that ask for them."""

    def __init__(self, cache: DirCache, health: ProviderHealth, providers: dict[str, Provider], refresh: Refresh, *,
                 clock: Callable[[], float] = time.monotonic, tunables: ViewTunables = DEFAULT_TUNABLES) -> None:
        self._cache = cache
        self._health = health
        self._providers = providers
        self._refresh = refresh
        self._clock = clock
        self._t = tunables
        self._lock = threading.Lock()  # protects _queue, _waiting, _order, _threads and _stopped
        self._wake = threading.Condition(self._lock)
        self._queue: collections.deque[tuple[str, str]] = collections.deque()  # (key, provider), in stat order
        self._waiting: set[str] = set()  # keys queued or being asked for, until their answer lands
        #: per folder being stat'ed: the listing its names were queued from and each name's place in it
        self._order: dict[str, tuple[Names, dict[str, int]]] = {}
        self._threads: list[threading.Thread] = []
        self._stopped = True

    def start(self) -> None:
        """Accept work (threads start with the first folder that needs them)."""
        with self._lock:
            self._stopped = False

    def stop(self) -> None:
        """Drop what is queued; a HEAD under way ends with its request (never waited for: an unmount
        must not wait behind a provider that hangs), then its thread ends."""
        with self._lock:
            self._stopped = True
            self._queue.clear()
            self._waiting.clear()
            self._order.clear()
            self._wake.notify_all()

    def noticed(self, prefix: str, name: str, listing: Names) -> None:
        """A lookup of name in folder prefix needs a HEAD: queue the names after it that will too (up to
        heads_ahead_max; a lookup past them, in a bigger folder, queues the next ones)."""
        with self._lock:
            if self._stopped or prefix + name in self._waiting:
                return
            order = self._order.get(prefix)
        if order is None or order[0] is not listing:
            order = (listing, {n: i for i, n in enumerate(listing)})
        place = order[1].get(name)
        if place is None:
            return
        now = self._clock()
        todo: list[tuple[str, str]] = []
        for n, (pname, info) in itertools.islice(listing.items(), place + 1, None):
            if info.is_dir or self._providers[pname].listing_has_metadata:
                continue
            key = prefix + n
            head = self._cache.head(key)
            if head is None or head.until <= now:
                todo.append((key, pname))
                if len(todo) >= self._t.heads_ahead_max:
                    break
        if len(todo) < self._t.heads_ahead_min:
            return
        log.debug("%s: %d names to HEAD ahead of their lookups", prefix, len(todo))
        with self._lock:
            if self._stopped:
                return
            self._order[prefix] = order
            while len(self._order) > FOLDERS_KEPT:
                del self._order[next(iter(self._order))]
            todo = [item for item in todo if item[0] not in self._waiting]
            self._waiting.update(key for key, _ in todo)
            self._queue.extend(todo)
            while len(self._threads) < self._t.heads_ahead_threads:
                t = threading.Thread(target=self._work, name="storefs-heads-ahead", daemon=True)
                self._threads.append(t)
                t.start()
            self._wake.notify_all()

    def queued(self) -> int:
        """Names waiting for a thread (for tests and status)."""
        with self._lock:
            return len(self._queue)

    def _next(self) -> list[tuple[str, str]] | None:
        """The next names to ask for (one provider's, in stat order, as many as it asks for at once, at most
        heads_ahead_batch); None once stopped,
        or after a while with nothing to do (the thread ends)."""
        with self._lock:
            while not self._queue:
                if self._stopped or not self._wake.wait(self._t.heads_ahead_idle):
                    if not self._queue:
                        self._threads = [t for t in self._threads if t is not threading.current_thread()]
                        return None
            batch = [self._queue.popleft()]
            pname = batch[0][1]
            most = min(self._t.heads_ahead_batch, self._providers[pname].heads_at_once)
            while self._queue and len(batch) < most and self._queue[0][1] == pname:
                batch.append(self._queue.popleft())
            return batch

    def _work(self) -> None:
        while (batch := self._next()) is not None:
            pname = batch[0][1]
            if not self._health.answering(pname):
                with self._lock:  # the provider is away: the lookups ask themselves, and see why
                    self._queue.clear()
                    self._waiting.clear()
                continue
            mine = self._claim([key for key, _ in batch])
            left = dict.fromkeys(mine)  # claimed, not yet released (in order)
            try:
                if mine:
                    self._ask(pname, mine, left)
            except ProviderUnavailable:
                pass  # marked down by the health; a lookup that needs it asks and reports the outage
            except Exception:  # noqa: BLE001 - a failed HEAD ahead leaves the lookups to ask themselves
                log.exception("HEADs ahead of %s... failed", mine[0])
            finally:
                for key in left:
                    self._refresh.release(("head", key))
                with self._lock:
                    self._waiting.difference_update(key for key, _ in batch)

    def _claim(self, names: list[str]) -> list[str]:
        """The names no lookup is asking for and no fresh head answers, now claimed (Refresh tags)."""
        now = self._clock()
        mine: list[str] = []
        for key in names:
            tag = ("head", key)
            if not self._refresh.claim(tag):
                continue  # a lookup is asking already
            head = self._cache.head(key)
            if head is None or head.until <= now:
                mine.append(key)
            else:
                self._refresh.release(tag)
        return mine

    def _ask(self, pname: str, names: list[str], left: dict[str, None]) -> None:
        """HEADs of names (pipelined where the provider can), each cached and released as it comes: the
        lookup waiting for one goes on without waiting for the rest. An error that is one name's alone is
        left to that name's lookup to meet and report."""
        started = self._clock()
        with self._health.calling(pname) as progress:
            for key, found in self._providers[pname].head_many(names):
                progress()
                if isinstance(found, ObjectInfo):
                    self._cache.put_head(key, (pname, found), started)
                elif isinstance(found, NotFound):
                    self._cache.put_head(key, None, started)
                left.pop(key, None)
                self._refresh.release(("head", key))
