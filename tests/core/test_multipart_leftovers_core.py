"""Multipart uploads cut short: the journal notes each one while it is open, the next start aborts those an
earlier run left (in the background; a provider that does not answer keeps its rows for a later try), and a
clean stop aborts those still open. Only the uploads the journal noted are ever aborted."""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from coretier import build

from storefs.cache.journal import SCHEMA, Journal, UploadRecord
from storefs.core.multipart import OpenUploads
from storefs.errors import NotFound, ProviderError, ProviderUnavailable, Rejected
from storefs.providers.memory import MemoryProvider

WAIT = 10.0  # seconds a background abort may take here, at most
KEY = "t/image/b/a/big.mp4"


class MultipartMemory(MemoryProvider):
    """A memory provider that records the aborts asked of it; fail[upload_id] is raised instead, once each
    while it is a list, and block (while cleared) holds every abort, as a slow server would."""

    def __init__(self, name: str = "mem") -> None:
        super().__init__(name)
        self.aborted: list[tuple[str, str]] = []
        self.fail: dict[str, list[Exception]] = {}
        self.block = threading.Event()
        self.block.set()
        self.asked = threading.Event()  # set by the first abort asked for

    def abort_upload(self, key: str, upload_id: str) -> None:
        self.asked.set()
        self.block.wait()
        faults = self.fail.get(upload_id)
        if faults:
            raise faults.pop(0)
        self.aborted.append((key, upload_id))


def wait_for(what: str, done: Callable[[], bool], timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, f"{what}: not after {timeout:.0f}s"
        time.sleep(0.01)


def ids(journal: Journal) -> set[str]:
    return {u.upload_id for u in journal.uploads()}


def note(path: Path, *records: tuple[str, str, str]) -> None:
    """What an earlier run left in the journal at path: (provider, key, upload_id) of uploads it opened."""
    j = Journal(str(path))
    for n, (provider, key, upload_id) in enumerate(records):
        j.add_upload(UploadRecord(provider, key, upload_id, 1_700_000_000.0 + n))
    j.close()


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[Journal]:
    j = Journal(str(tmp_path / "journal.db"))
    yield j
    j.close()


def test_the_next_start_aborts_what_an_earlier_run_left_open(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Through the core as the daemon builds it: the rows an earlier run left are aborted after start, an id the
    server no longer knows counts as aborted, and one INFO line gives the count."""
    caplog.set_level(logging.INFO, logger="storefs.core.multipart")
    note(tmp_path / "cache/journal.db", ("mem", KEY, "u1"), ("mem", "t/image/b/a/other.mp4", "u2"),
         ("mem", KEY, "gone"))
    mem = MultipartMemory()
    mem.fail["gone"] = [NotFound("NoSuchUpload")]
    core = build(tmp_path, {"mem": mem})
    journal = core.parts.index.journal
    assert ids(journal) == {"u1", "u2", "gone"}  # nothing is sent before the start
    core.start()
    try:
        def logged() -> list[str]:
            return [r.getMessage() for r in caplog.records if r.name == "storefs.core.multipart"]
        # the rows go as each abort ends; the count is logged after the last
        wait_for("the leftover uploads aborted and counted", lambda: not ids(journal) and bool(logged()))
        assert sorted(mem.aborted) == sorted([(KEY, "u1"), ("t/image/b/a/other.mp4", "u2")])
        assert logged() == ["aborted 3 multipart uploads an earlier run left unfinished"]
        mem.uploads.started(KEY, "mine")  # the build gave the provider the journal's log
        assert ids(journal) == {"mine"}
        mem.uploads.ended(KEY, "mine")
        assert not ids(journal)
    finally:
        core.stop()


def test_an_upload_this_run_opens_is_not_taken_for_a_leftover(journal: Journal) -> None:
    note(Path(journal.path), ("mem", KEY, "old"))
    mem = MultipartMemory()
    mem.block.clear()
    uploads = OpenUploads(journal, {"mem": mem}, read_only=False)
    uploads.start()
    assert mem.asked.wait(WAIT)
    mem.uploads.started(KEY, "new")  # while the start's aborts are under way
    mem.block.set()
    wait_for("the leftover aborted", lambda: ids(journal) == {"new"})
    assert mem.aborted == [(KEY, "old")]
    mem.uploads.ended(KEY, "new")
    uploads.stop()
    assert mem.aborted == [(KEY, "old")] and not ids(journal)


def test_a_provider_that_does_not_answer_keeps_its_rows_until_it_does(journal: Journal,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="storefs.core.multipart")
    note(Path(journal.path), ("mem", KEY, "u1"))
    mem = MultipartMemory()
    mem.fail["u1"] = [ProviderUnavailable("cannot reach it")] * 2
    uploads = OpenUploads(journal, {"mem": mem}, read_only=False, retry_delay=0.05)
    uploads.start()
    wait_for("the abort after the provider answered", lambda: mem.aborted == [(KEY, "u1")])
    wait_for("its row dropped and the abort counted", lambda: not ids(journal) and len(
        [r for r in caplog.records if r.name == "storefs.core.multipart"]) >= 2)
    uploads.stop()
    assert [r.getMessage() for r in caplog.records if r.name == "storefs.core.multipart"] == [
        "aborted 0 multipart uploads an earlier run left unfinished; 1 more once their provider answers",
        "aborted 1 more multipart uploads an earlier run left unfinished"]


def test_a_refused_abort_and_an_unknown_provider_keep_their_rows_for_the_next_mount(journal: Journal) -> None:
    note(Path(journal.path), ("mem", KEY, "refused"), ("renamed", KEY, "elsewhere"), ("mem", KEY, "fine"))
    mem = MultipartMemory()
    mem.fail["refused"] = [Rejected("AccessDenied: no s3:AbortMultipartUpload")]
    uploads = OpenUploads(journal, {"mem": mem}, read_only=False)
    uploads.start()
    wait_for("the abort that works", lambda: ids(journal) == {"refused", "elsewhere"})
    assert mem.aborted == [(KEY, "fine")]
    again = OpenUploads(journal, {"mem": mem}, read_only=False)  # the next mount: the server now lets it
    again.start()
    wait_for("the refused one aborted at the next start", lambda: ids(journal) == {"elsewhere"})
    assert mem.aborted == [(KEY, "fine"), (KEY, "refused")]
    uploads.stop()
    again.stop()


def test_a_read_only_mount_aborts_nothing(journal: Journal) -> None:
    note(Path(journal.path), ("mem", KEY, "u1"))
    mem = MultipartMemory()
    uploads = OpenUploads(journal, {"mem": mem}, read_only=True)
    uploads.start()
    uploads.stop()
    assert not mem.asked.is_set() and ids(journal) == {"u1"}


def test_a_clean_stop_aborts_what_is_still_open_and_opens_no_more(journal: Journal) -> None:
    mem = MultipartMemory()
    uploads = OpenUploads(journal, {"mem": mem}, read_only=False)
    uploads.start()
    mem.uploads.started(KEY, "done")
    mem.uploads.ended(KEY, "done")
    mem.uploads.started(KEY, "cut")  # an upload the stop cuts short
    uploads.stop()
    assert mem.aborted == [(KEY, "cut")] and not ids(journal)
    with pytest.raises(ProviderError, match="stopping"):
        mem.uploads.started(KEY, "late")
    assert not ids(journal)


def test_a_stop_waits_for_its_aborts_no_longer_than_its_bound(journal: Journal) -> None:
    mem = MultipartMemory()
    mem.block.clear()  # a server that does not answer
    uploads = OpenUploads(journal, {"mem": mem}, read_only=False, stop_timeout=0.2)
    mem.uploads.started(KEY, "cut")
    t0 = time.monotonic()
    uploads.stop()
    assert time.monotonic() - t0 < WAIT
    mem.block.set()  # the abort ends after the stop: the journal is not written any more, the row stays
    wait_for("the late abort", lambda: mem.aborted == [(KEY, "cut")])
    assert ids(journal) == {"cut"}


def test_an_older_journal_gets_the_table(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    c = sqlite3.connect(path)
    c.executescript(SCHEMA)  # what a storefs before the uploads table wrote
    c.close()
    j = Journal(str(path))
    assert j.uploads() == []
    j.add_upload(UploadRecord("mem", KEY, "u1", 1.5))
    j.close()
    j = Journal(str(path))
    assert j.uploads() == [UploadRecord("mem", KEY, "u1", 1.5)]
    j.remove_upload("mem", "u1")
    j.remove_upload("mem", "u1")  # forgetting twice is fine
    assert j.uploads() == []
    j.close()
