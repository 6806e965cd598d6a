"""What is still to upload and how the mount is doing: flush, status, statfs, waiting for one upload."""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .. import keys
from ..cache.datafiles import DataFiles
from ..cache.eviction import Evictor
from ..cache.journal import OP_PUT, Entry, State
from ..errors import ProviderError
from .schedule import Schedule
from .state import CoreState
from .types import Counters

if TYPE_CHECKING:
    from ..view.health import ProviderHealth

log = logging.getLogger(__name__)

#: attempts after which wait_uploaded gives up on an upload that keeps failing
WAIT_MAX_ATTEMPTS = 3
#: seconds between full scans of the pending rows while flushing (a count decides in between)
FLUSH_SCAN_INTERVAL = 0.2
#: seconds between progress reports of a flush
FLUSH_PROGRESS_INTERVAL = 0.5
#: seconds a waiter sleeps at most between looks at the uploader
WAIT_STEP = 0.2
#: errors status lists at most (parked changes and conflicts too)
MAX_ERRORS_SHOWN = 100
NAME_MAX = 255


class Status:
    """Flush, status and the waits on uploads (thread-safe)."""

    def __init__(self, state: CoreState, schedule: Schedule, evictor: Evictor, counters: Counters,
                 data: DataFiles, read_only: bool, *, health: ProviderHealth | None = None,
                 providers: list[str] | None = None) -> None:
        self.health = health
        self.providers = list(providers or [])
        self.state = state
        self.index = state.index
        self.schedule = schedule
        self.uploader = schedule.uploader
        self.evictor = evictor
        self.counters = counters
        self.data = data
        self.read_only = read_only

    def waiting(self) -> tuple[list[Entry], list[Entry]]:
        """Pending entries that can be uploaded, and those held open for writing (parked ones are neither:
        they wait for `storefs retry`)."""
        with self.state.lock:
            ready: list[Entry] = []
            held: list[Entry] = []
            for e in self.index.pending():
                if e.state == State.PARKED:
                    continue
                node = self.state.nodes.get(e.key)
                (held if node is not None and node.writers > 0 else ready).append(e)
            return ready, held

    def ready_count(self) -> int:
        """len(waiting()[0]) from counters and the open files, not a scan of every entry (parked
        changes count here: flush's full scan, five times a second, tells them apart)."""
        with self.state.lock:
            held = 0
            for key, node in self.state.nodes.items():
                if node.writers > 0:
                    e = self.index.get(key)
                    held += e is not None and e.pending
            return self.index.pending_count() - held

    def pending_keys(self) -> list[str]:
        """Keys `storefs cleanup` must not delete: changes not uploaded yet, and sources of pending copies
        (as the provider spells them: a file beside a folder of its name is known here by its alias)."""
        with self.state.lock:
            rows = self.index.pending()
        return sorted({keys.object_key(k) for e in rows for k in (e.key, e.copy_src) if k})

    def wait_uploaded(self, key: str, timeout: float | None) -> None:
        """Block until key has reached its provider (fsync: upload, and `storefs url`), uploading
        it now; ProviderError if that fails three times or takes longer than timeout."""
        clock = self.schedule.clock
        deadline = None if timeout is None else clock() + timeout
        self.schedule.hurry(key)
        while True:
            with self.state.lock:
                e = self.index.get(key)
                if e is None or not e.pending:
                    return
                if e.state == State.PARKED:
                    raise ProviderError(f"upload of {key} is parked: {e.last_error} (fix the cause, then "
                                        "`storefs retry`)")
                if e.attempts and e.last_error and e.attempts >= WAIT_MAX_ATTEMPTS:
                    raise ProviderError(f"upload of {key} failed: {e.last_error}")
            if deadline is not None and clock() > deadline:
                raise ProviderError(f"upload of {key} did not finish in time")
            self.uploader.wait_change(WAIT_STEP)

    def flush_all(self, timeout: float | None, progress: Callable[[dict[str, Any]], None] | None = None) -> bool:
        """Wait until every closed change has reached its provider or is parked; False on timeout."""
        if self.read_only:
            return True  # nothing of this mount's own to upload; an earlier mount's changes wait for a writable one
        clock = self.schedule.clock
        deadline = None if timeout is None else clock() + timeout
        self.schedule.flushing(True)
        try:
            self.uploader.hurry()
            last = scanned = 0.0
            while True:
                # woken by every finished upload: a count, and the full scan that decides only
                # when the count says done or at most 5 times a second
                now = clock()
                if self.ready_count() <= 0 or now - scanned >= FLUSH_SCAN_INTERVAL:
                    if not self.waiting()[0]:
                        self.index.journal.apply()  # the journal's file as current as the mount (nothing waits)
                        return True
                    self.uploader.hurry()  # changes closed meanwhile skip their quiet delay too
                    scanned = now
                if progress is not None and now - last >= FLUSH_PROGRESS_INTERVAL:
                    progress(self.status())
                    last = now
                if deadline is not None and now > deadline:
                    return False
                self.uploader.wait_change(WAIT_STEP)
        finally:
            self.schedule.flushing(False)

    def _retries(self) -> tuple[set[str], dict[str, tuple[int, float]]]:
        """Keys being uploaded now, and keys waiting for a retry with their next try as epoch seconds."""
        in_flight = self.uploader.in_flight()
        mono, wall = self.schedule.clock(), time.time()
        due = {k: (n, wall + max(0.0, at - mono)) for k, (n, at) in self.uploader.retries_due().items()}
        return in_flight, due

    def counts(self) -> dict[str, Any]:
        """The numbers /metrics shows, from counters only: the same cost whatever the cache holds."""
        with self.state.lock:
            tally = {name: int(self.index.tally[name])
                     for name in ("cached_files", "dirty_files", "dirty_bytes", "parked_changes")}
            pending = self.index.pending_count()
            open_files = len(self.state.nodes)
        in_flight, due = self._retries()
        return {
            "pending": pending, **tally, "uploading": len(in_flight), "waiting_retry": len(due),
            "queue": self.uploader.scheduled(), "uploads_done": self.uploader.uploaded,
            "upload_failures": self.uploader.failures, "upload_retries": self.uploader.retries,
            "conflicts_total": self.index.journal.conflicts(0)[0], "cache_evictions": self.evictor.evicted,
            "open_files": open_files, "provider_health": self._health(), **self.counters.snapshot(),
        }

    def _health(self) -> dict[str, dict[str, Any]]:
        return self.health.report(self.providers) if self.health is not None else {}

    def status(self) -> dict[str, Any]:
        """The counts and lists `storefs status` shows: what waits, what failed, whether each provider answers."""
        in_flight, due = self._retries()
        health = self._health()
        with self.state.lock:
            pending = self.index.pending()
            dirty = [e for e in pending if e.op == OP_PUT]
            errors = [{"key": e.key, "op": e.op, "attempts": e.attempts, "error": e.last_error,
                       "state": "uploading" if e.key in in_flight else "waiting",
                       "next_try": due[e.key][1] if e.key in due else None}
                      for e in pending if e.last_error and e.state != State.PARKED]
            parked = [{"key": e.key, "op": e.op, "provider": e.provider, "error": e.last_error}
                      for e in sorted(pending, key=lambda e: e.key) if e.state == State.PARKED]
            cached = sum(1 for e in self.index.entries.values() if e.data_name)
            providers = {k: e.provider for k in in_flight if (e := self.index.get(k)) is not None}
            open_files = len(self.state.nodes)
        conflicts_total, conflicts = self.index.journal.conflicts(MAX_ERRORS_SHOWN)
        return {
            "pending": len(pending),
            "dirty_files": len(dirty),
            "dirty_bytes": sum(e.size for e in dirty),
            "uploading": len(in_flight),
            "uploading_unanswered": sum(1 for p in providers.values() if health.get(p, {}).get("state") == "down"),
            "waiting_retry": len(due),
            "next_try": min((at for _, at in due.values()), default=None),
            "provider_health": health,
            "queue": self.uploader.scheduled(),
            "uploads_done": self.uploader.uploaded,
            "upload_failures": self.uploader.failures,
            "upload_retries": self.uploader.retries,
            "errors": errors[:MAX_ERRORS_SHOWN],
            "parked": parked[:MAX_ERRORS_SHOWN],
            "parked_changes": len(parked),
            "conflicts": [dataclasses.asdict(c) for c in conflicts],
            "conflicts_total": conflicts_total,
            "cached_files": cached,
            "cache_evictions": self.evictor.evicted,
            "open_files": open_files,
            **self.counters.snapshot(),
        }

    def statfs(self) -> dict[str, int]:
        """The cache disk's numbers: what a program may write before the cache is full."""
        st = os.statvfs(self.data.root)
        return {"f_bsize": st.f_bsize, "f_frsize": st.f_frsize, "f_blocks": st.f_blocks,
                "f_bfree": st.f_bfree, "f_bavail": st.f_bavail, "f_files": st.f_files,
                "f_ffree": st.f_ffree, "f_favail": st.f_favail, "f_namemax": NAME_MAX}
