"""What a previous run (perhaps killed) left: pending rows resumed (parked ones stay parked), orphaned
cache files dropped."""

from __future__ import annotations

import logging

from ..cache.datafiles import DataFiles
from ..cache.index import EntryIndex
from ..cache.journal import OP_PUT, State

log = logging.getLogger(__name__)


def recover(index: EntryIndex, data: DataFiles) -> None:
    """Resume what a previous run left pending, and drop orphans (before any other part runs)."""
    known = set()
    with index.transaction():
        for e in list(index.entries.values()):
            if e.op == OP_PUT and (not e.data_name or not data.exists(e.data_name)):
                log.error("cache data of dirty %s is missing; the provider keeps its older copy", e.key)
                index.remove(e.key)
                continue
            if e.data_name:
                known.add(e.data_name)
            changed = e.state == State.UPLOADING
            size = e.size
            if e.op == OP_PUT and e.data_name:  # writes after the last close reached the file, not the row
                size = data.size(e.data_name)
                changed = changed or size != e.size
            if changed:
                index.update(e.key, size=size, state=State.DIRTY)
    for name in data.names() - known:
        data.remove(name)
    pending = index.pending()
    if pending:
        log.info("recovered %d pending changes from the journal", len(pending))
    parked = [e.key for e in pending if e.state == State.PARKED]
    if parked:
        log.warning("%d changes stay parked (refused by their provider for good), e.g. %s: see `storefs status`, "
                    "then `storefs retry` once the cause is fixed", len(parked), parked[0])
