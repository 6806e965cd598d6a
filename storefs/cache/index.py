"""The journal's rows in memory, indexed by folder, so lookups never wait on SQLite.

Every change goes through put/remove/amend (rows are frozen everywhere else), which keep three
indexes in step: the children that pending changes give each folder (what listings overlay on the
provider's), the pending operations below each folder (an rmdir waits for them), and
the keys that pending copies read from (those keys are frozen until the copy lands).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections import Counter
from typing import Any

from ..keys import ancestors
from .journal import OP_COPY, OP_PUT, Entry, Journal, State

log = logging.getLogger(__name__)

#: the fields the folder indexes are computed from: amending one re-indexes the row
INDEXED_FIELDS = frozenset({"key", "op", "copy_src"})
#: the fields EntryIndex.tally and the folder indexes are computed from (_count, _add)
TALLIED_FIELDS = INDEXED_FIELDS | {"data_name", "size", "state"}
#: every field of a row: amend refuses another name (a renamed field, as mtime became mtime_ns, fails loudly)
ENTRY_FIELDS = frozenset(f.name for f in dataclasses.fields(Entry))


class EntryIndex:
    """All journal rows, with the folder indexes the core needs."""

    def __init__(self, journal: Journal, read_only: bool = False) -> None:
        self.journal = journal
        #: a read-only mount keeps every row in memory only: its journal is never written
        self.read_only = read_only
        self.entries: dict[str, Entry] = {}
        self._children: dict[str, Counter[str]] = {}
        self._pending_below: Counter[str] = Counter()
        self._copy_sources: Counter[str] = Counter()
        #: cached copies, dirty files, their bytes, parked changes: what status and /metrics count without a scan
        self.tally: Counter[str] = Counter()
        for e in journal.load():
            self._add(e)

    def transaction(self) -> contextlib.AbstractContextManager[None]:
        """One journal commit for several changes (a folder rename is atomic)."""
        return self.journal.transaction()

    def get(self, key: str) -> Entry | None:
        return self.entries.get(key)

    def put(self, e: Entry, persist: bool = True) -> None:
        """Persist e and index it (replacing the row of the same key); persist=False indexes
        only, for a state no crash needs to bring back (a file created but not yet closed)."""
        if persist and not self.read_only:
            self.journal.put(e)
        old = self.entries.get(e.key)
        if old is e:
            return  # the same row again (a close after the create): amend kept the folder indexes right
        if old is not None:
            self._drop(old)
        self._add(e)

    def remove(self, key: str) -> None:
        old = self.entries.get(key)
        if old is None:
            return
        if not self.read_only:
            self.journal.remove(key)
        self._drop(old)

    def amend(self, e: Entry, **changes: Any) -> None:
        """The one place a row's fields change once it is made: when e is the row indexed at its key,
        the folder indexes follow at once. Persisting is put()'s job (some changes never are, as atime)."""
        if not ENTRY_FIELDS.issuperset(changes):
            raise TypeError(f"Entry has no field {', '.join(sorted(set(changes) - ENTRY_FIELDS))}")
        if TALLIED_FIELDS.isdisjoint(changes):  # times, chunks, the generation: no index or count moves
            for name, value in changes.items():
                object.__setattr__(e, name, value)
            return
        reindex = (not INDEXED_FIELDS.isdisjoint(changes) and self.entries.get(e.key) is e
                   and any(getattr(e, name) != changes[name] for name in INDEXED_FIELDS.intersection(changes)))
        if reindex:
            self._drop(e)
        tallied = not reindex and self.entries.get(e.key) is e
        if tallied:
            self._count(e, -1)
        for name, value in changes.items():
            object.__setattr__(e, name, value)  # Entry is frozen to everyone else
        if tallied:
            self._count(e, 1)
        if reindex:
            self._add(e)

    def update(self, key: str, **changes: Any) -> Entry:
        """Replace key's row by a copy with changes, persisted and re-indexed; the new row is returned."""
        new = dataclasses.replace(self.entries[key], **changes)
        self.put(new)
        return new

    def _add(self, e: Entry) -> None:
        self.entries[e.key] = e
        self._count(e, 1)
        if e.pending:
            live = not e.is_tombstone
            children, below = self._children, self._pending_below
            for prefix, name in ancestors(e.key):  # one walk up for both indexes
                if live:
                    c = children.get(prefix)
                    if c is None:
                        c = children[prefix] = Counter()
                    c[name] += 1
                below[prefix] += 1
        if e.op == OP_COPY and e.copy_src:
            self._copy_sources[e.copy_src] += 1

    def _drop(self, e: Entry) -> None:
        was_tomb, was_pending = e.is_tombstone, e.pending
        copy_src = e.copy_src if e.op == OP_COPY else None
        del self.entries[e.key]
        self._count(e, -1)
        if was_pending:
            children, below = self._children, self._pending_below
            for prefix, name in ancestors(e.key):  # one walk up for both indexes
                if not was_tomb:
                    c = children.get(prefix)
                    if c is not None:
                        c[name] -= 1
                        if c[name] <= 0:
                            del c[name]
                            if not c:
                                del children[prefix]
                below[prefix] -= 1
                if below[prefix] <= 0:
                    del below[prefix]
        if copy_src:
            self._copy_sources[copy_src] -= 1
            if self._copy_sources[copy_src] <= 0:
                del self._copy_sources[copy_src]

    def _count(self, e: Entry, sign: int) -> None:
        """Add (sign 1) or take away (-1) what row e counts in tally: cached copies, dirty files and
        their bytes, parked changes (a few additions, where Counter.update costs a dict and a loop)."""
        t = self.tally
        if e.data_name:
            t["cached_files"] += sign
        if e.op == OP_PUT:
            t["dirty_files"] += sign
            t["dirty_bytes"] += sign * e.size
        if e.op is not None and e.state == State.PARKED:
            t["parked_changes"] += sign

    def children(self, prefix: str) -> list[str]:
        """Names that pending local changes put directly in prefix ('a/b/'); folders end with '/'.

        Clean cached copies are not here: for them the provider's listing is the truth, so a
        file another client deleted does not linger in this mount's listings.
        """
        return list(self._children.get(prefix, ()))

    def has_live_below(self, prefix: str) -> bool:
        return bool(self._children.get(prefix))

    def any_below(self, prefix: str) -> bool:
        """Whether any row (a clean cached copy too) lies below prefix; for lookups while a provider is away."""
        return any(k.startswith(prefix) and not e.is_tombstone for k, e in self.entries.items())

    def pending_below(self, prefix: str) -> int:
        """Pending operations strictly below the folder prefix."""
        return self._pending_below.get(prefix, 0)

    def is_copy_source(self, key: str) -> bool:
        return self._copy_sources.get(key, 0) > 0

    def pending_count(self) -> int:
        """How many entries are pending, without a scan (every key lies below the root '')."""
        return self._pending_below.get("", 0)

    def pending(self) -> list[Entry]:
        return [e for e in self.entries.values() if e.pending]

