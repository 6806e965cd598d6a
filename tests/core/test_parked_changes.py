"""Parked changes on the core tier: a change the provider refuses for good is kept (in the cache and the
journal, readable), not retried, reported by status, passed over by flush, and queued again by retry."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from conditional import ART, ConditionalMemory, read, write
from coretier import build

from storefs.cache.datafiles import DataFiles
from storefs.cache.journal import OP_PUT, Journal, State
from storefs.cache.uploader import Parked
from storefs.config import load_config
from storefs.core import Core
from storefs.daemon import build_core
from storefs.errors import AccessDenied, NameTooLong, ProviderError, ProviderUnavailable, Rejected
from storefs.layout import Layout
from storefs.metrics import render

BAD = f"{ART}/refused.png"
GOOD = f"{ART}/fine.png"
FLUSH_TIMEOUT = 20.0


@pytest.fixture
def mem() -> ConditionalMemory:
    provider = ConditionalMemory("mem")
    provider.write_theirs(f"{ART}/seed.txt", b"makes the folders")
    provider.refuse[BAD] = Rejected("KeyTooLongError: Your key is too long (400)")
    return provider


@pytest.fixture
def core(tmp_path: Path, mem: ConditionalMemory) -> Iterator[Core]:
    c = build(tmp_path, {"mem": mem}, delay="1h")
    try:
        yield c
    finally:
        c.stop()


def test_a_refused_change_is_parked_not_retried(core: Core, mem: ConditionalMemory) -> None:
    write(core, BAD, b"kept here")
    with pytest.raises(Parked):
        core.parts.writeback.sync(BAD)
    row = core.parts.index.get(BAD)
    assert row is not None and row.state == State.PARKED and row.pending
    assert "KeyTooLongError" in (row.last_error or "")
    assert core.parts.writeback.due_in(BAD) is None  # never scheduled again by itself
    assert read(core, BAD) == b"kept here"  # readable through the mount
    st = core.status()
    assert st["parked_changes"] == 1 and st["errors"] == []
    assert st["parked"] == [{"key": BAD, "op": OP_PUT, "provider": "mem", "error": row.last_error}]
    assert "storefs_parked_changes 1" in render(st)
    assert "storefs_conflicts_total 0" in render(st)
    with pytest.raises(ProviderError, match="parked"):
        core.wait_uploaded(BAD, 5)


@pytest.mark.parametrize("refusal", [NameTooLong("key over 1024 bytes"), ProviderError("plain")])
def test_only_permanent_refusals_park(core: Core, mem: ConditionalMemory, refusal: Exception) -> None:
    mem.refuse[BAD] = refusal
    write(core, BAD, b"x")
    if isinstance(refusal, NameTooLong):
        with pytest.raises(Parked):
            core.parts.writeback.sync(BAD)
        assert core.parts.index.get(BAD).state == State.PARKED  # type: ignore[union-attr]
    else:
        with pytest.raises(ProviderError):
            core.parts.writeback.sync(BAD)
        assert core.parts.index.get(BAD).state == State.DIRTY  # type: ignore[union-attr]


def test_access_denied_parks_only_when_the_credentials_check_passes(core: Core, mem: ConditionalMemory) -> None:
    mem.refuse[BAD] = AccessDenied("403 on this key")
    mem.check_fails = AccessDenied("403: the credentials are refused")
    write(core, BAD, b"x")
    with pytest.raises(AccessDenied):
        core.parts.writeback.sync(BAD)  # the credentials: retried, as an outage is
    assert core.parts.index.get(BAD).state == State.DIRTY  # type: ignore[union-attr]
    mem.check_fails = ProviderUnavailable("the check itself failed")
    with pytest.raises(AccessDenied):
        core.parts.writeback.sync(BAD)
    mem.check_fails = None
    with pytest.raises(Parked):
        core.parts.writeback.sync(BAD)  # the key is refused, not the credentials
    assert core.parts.index.get(BAD).state == State.PARKED  # type: ignore[union-attr]


def test_flush_finishes_past_parked_changes_and_retry_queues_them(core: Core, mem: ConditionalMemory) -> None:
    core.start()
    write(core, BAD, b"refused for now")
    write(core, GOOD, b"fine")
    assert core.flush_all(FLUSH_TIMEOUT)
    assert mem.bytes_at(GOOD) == b"fine"
    assert core.status()["parked_changes"] == 1
    assert core.parts.uploader.parked == 1
    assert core.retry(f"{ART}/elsewhere") == 0
    del mem.refuse[BAD]  # the operator fixed the cause
    assert core.retry(ART) == 1
    assert core.flush_all(FLUSH_TIMEOUT)
    assert mem.bytes_at(BAD) == b"refused for now"
    assert core.status()["parked_changes"] == 0
    assert core.parts.index.get(BAD).state == State.CLEAN  # type: ignore[union-attr]


def test_a_later_change_of_the_file_unparks_it(core: Core, mem: ConditionalMemory) -> None:
    write(core, BAD, b"v1")
    with pytest.raises(Parked):
        core.parts.writeback.sync(BAD)
    del mem.refuse[BAD]
    write(core, BAD, b"v2")
    assert core.parts.index.get(BAD).state == State.DIRTY  # type: ignore[union-attr]
    core.parts.writeback.sync(BAD)
    assert mem.bytes_at(BAD) == b"v2"


def test_a_rename_unparks_it(core: Core, mem: ConditionalMemory) -> None:
    write(core, BAD, b"v1")
    with pytest.raises(Parked):
        core.parts.writeback.sync(BAD)
    core.rename(BAD, GOOD)
    assert core.parts.index.get(GOOD).state == State.DIRTY  # type: ignore[union-attr]
    core.parts.writeback.sync(GOOD)
    assert mem.bytes_at(GOOD) == b"v1"


def test_parked_changes_survive_a_rebuild_from_the_journal(tmp_path: Path, mem: ConditionalMemory,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    first = build(tmp_path, {"mem": mem}, delay="1h")
    write(first, BAD, b"kept across remounts")
    with pytest.raises(Parked):
        first.parts.writeback.sync(BAD)
    first.stop()
    first.parts.index.journal.close()
    del mem.refuse[BAD]  # fixed, but nobody said retry: it stays parked
    cfg = load_config(str(tmp_path / "cfg.yaml"))
    again = build_core(cfg, Layout(cfg.layout, cfg.max_file_size), {"mem": mem},
                       Journal(os.path.join(cfg.cache.dir, "journal.db")), DataFiles(cfg.cache.dir))
    assert f"1 changes stay parked (refused by their provider for good), e.g. {BAD}" in caplog.text
    try:
        again.start()
        assert again.flush_all(FLUSH_TIMEOUT)
        st = again.status()
        assert st["parked_changes"] == 1 and st["parked"][0]["key"] == BAD
        assert BAD not in mem.keys_in(f"{ART}/")
        assert read(again, BAD) == b"kept across remounts"
        assert again.retry("") == 1
        assert again.flush_all(FLUSH_TIMEOUT)
        assert mem.bytes_at(BAD) == b"kept across remounts"
    finally:
        again.stop()


def test_a_parked_rename_holds_its_source_and_retry_of_the_target_frees_both(
        core: Core, mem: ConditionalMemory) -> None:
    src = f"{ART}/src.png"
    mem.write_theirs(src, b"renamed")
    assert core.getattr(src).size == 7
    core.rename(src, BAD)
    core.start()
    assert core.flush_all(FLUSH_TIMEOUT)  # the copy is parked, and the source's delete waits with it
    assert {p["key"] for p in core.status()["parked"]} == {src, BAD}
    assert mem.bytes_at(src) == b"renamed"
    del mem.refuse[BAD]
    assert core.retry(BAD) == 2
    assert core.flush_all(FLUSH_TIMEOUT)
    assert mem.bytes_at(BAD) == b"renamed" and src not in mem.keys_in(f"{ART}/")


def test_a_long_refusal_keeps_the_servers_reason_at_its_end() -> None:
    from storefs.core.writeback import MAX_ERROR_TEXT, error_text
    text = error_text(Rejected("s3://bucket/" + "k" * 2000 + ": KeyTooLongError: Your key is too long (400)"))
    assert len(text) == MAX_ERROR_TEXT
    assert text.startswith("Rejected: s3://bucket/kkk") and text.endswith("KeyTooLongError: Your key is too long (400)")
    assert error_text(Rejected("short")) == "Rejected: short"
