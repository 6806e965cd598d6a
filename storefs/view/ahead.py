"""HEADs ahead of a stat storm: `ls -l`, `find -ls` or a file manager stat every name a listing gave.

An object store's listing carries no mode, owner or mtime, so each of those stats costs one HEAD,
and a program asks for them one at a time. Once lookups in one folder start needing HEADs, the
names that follow in the listing (the order readdir gave them in, so the order they are stat'ed in)
are asked for in the background, several at a time, and land in the head cache; a lookup that
meets one of them under way waits for it instead of asking again (the work is tagged as
Refresh's revalidations are, ("head", key)).

Only a folder that needs it starts it (a plain `ls -f` stats nothing, so it sends no HEAD), once
per folder per listing TTL, and never for more names than the head cache keeps.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable

from ..errors import NotFound, ProviderUnavailable
from ..providers.base import Provider
from .dircache import DirCache, Names
from .health import ProviderHealth
from .refresh import Refresh
from .tunables import DEFAULT_TUNABLES, ViewTunables

log = logging.getLogger(__name__)


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
        self._lock = threading.Lock()  # protects _queue, _started_for, _threads and _stopped
        self._wake = threading.Condition(self._lock)
        self._queue: collections.deque[tuple[str, str]] = collections.deque()  # (key, provider), in stat order
        self._started_for: dict[str, float] = {}  # folders whose names were queued, until when
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
            self._wake.notify_all()

    def noticed(self, prefix: str, name: str, listing: Names) -> None:
        """A lookup of name in folder prefix needs a HEAD: queue the names after it that will too."""
        now = self._clock()
        with self._lock:
            if self._stopped or self._started_for.get(prefix, 0.0) > now:
                return
            self._started_for[prefix] = now + self._cache.ttl
            if len(self._started_for) > self._t.max_listings:
                self._started_for = {p: t for p, t in self._started_for.items() if t > now}
        todo: list[tuple[str, str]] = []
        seen = False
        for n, (pname, info) in listing.items():
            if not seen:
                seen = n == name
                continue
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

    def _next(self) -> tuple[str, str] | None:
        """The next name to ask for; None once stopped, or after a while with nothing to do (the thread ends)."""
        with self._lock:
            while not self._queue:
                if self._stopped or not self._wake.wait(self._t.heads_ahead_idle):
                    if not self._queue:
                        self._threads = [t for t in self._threads if t is not threading.current_thread()]
                        return None
            return self._queue.popleft()

    def _work(self) -> None:
        while (item := self._next()) is not None:
            key, pname = item
            if not self._health.answering(pname):
                with self._lock:  # the provider is away: the lookups ask themselves, and see why
                    self._queue.clear()
                continue
            tag = ("head", key)
            if not self._refresh.claim(tag):
                continue  # a lookup is asking already
            try:
                head = self._cache.head(key)
                if head is None or head.until <= self._clock():
                    self._head(key, pname)
            except ProviderUnavailable:
                pass  # marked down by the health; a lookup that needs it asks and reports the outage
            except Exception:  # noqa: BLE001 - a failed HEAD ahead leaves the lookup to ask itself
                log.exception("HEAD ahead of %s failed", key)
            finally:
                self._refresh.release(tag)

    def _head(self, key: str, pname: str) -> None:
        started = self._clock()
        try:
            found = (pname, self._health.call(pname, self._providers[pname].head, key))
        except NotFound:
            found = None
        self._cache.put_head(key, found, started)
