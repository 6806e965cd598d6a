"""Recovery and the core's cache data files: what a crash leaves is swept or resumed, deletes go to the background."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from test_core_local import make_ns, mkdirs, write_file

from storefs.cache.datafiles import DataFiles


def on_disk(d: DataFiles) -> set[str]:
    return d.names()


def test_ready_files_left_by_a_crash_are_swept_at_the_next_start(tmp_path: Path) -> None:
    ns, _ = make_ns(tmp_path, delay="1h")
    ns.start()
    mkdirs(ns, "t/image/b/a")
    write_file(ns, "t/image/b/a/kept", b"kept")
    data = ns.parts.tree.data
    deadline = time.monotonic() + 10
    while len(on_disk(data)) < data.spares:  # the kept file and the ready ones
        assert time.monotonic() < deadline, f"{len(on_disk(data))} ready files, expected {data.spares}"
        time.sleep(0.01)
    # no stop(): the process "dies" with its ready files on disk
    ns2, p2 = make_ns(tmp_path, delay="0s")
    assert on_disk(ns2.parts.tree.data) == {ns2.parts.index.get("t/image/b/a/kept").data_name}
    ns2.start()
    assert ns2.flush_all(20)
    assert (tmp_path / "data/t/image/b/a/kept").read_bytes() == b"kept"
    ns2.stop()
    assert on_disk(ns2.parts.tree.data) == {ns2.parts.index.get("t/image/b/a/kept").data_name}


def test_unlinked_files_lose_their_data_files_on_the_background_thread(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # deleting a data file costs as much as making one: rm -r should not wait for it
    removed: list[tuple[str, str]] = []
    remove = DataFiles.remove

    def recording(self: DataFiles, name: str | None) -> None:
        removed.append((threading.current_thread().name, name or ""))
        remove(self, name)

    monkeypatch.setattr(DataFiles, "remove", recording)
    ns, _ = make_ns(tmp_path, delay="1h")
    ns.start()
    mkdirs(ns, "t/image/b/a")
    names = []
    for i in range(5):
        write_file(ns, f"t/image/b/a/f{i}", b"x" * 1000)
        names.append(ns.parts.index.get(f"t/image/b/a/f{i}").data_name)
    for i in range(5):
        ns.unlink(f"t/image/b/a/f{i}")
    deadline = time.monotonic() + 10
    while set(names) & on_disk(ns.parts.tree.data):
        assert time.monotonic() < deadline, "data files of unlinked files still on disk"
        time.sleep(0.01)
    assert sorted(n for t, n in removed if n in names) == sorted(names)
    assert {t for t, n in removed if n in names} == {"storefs-datafiles"}
    ns.stop()


def test_recovery_reads_a_planted_name_as_missing_data(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A journal edited to point outside the cache: the mount comes up, nothing outside is touched."""
    from storefs.cache.journal import OP_PUT, Entry, Journal, State
    victim = tmp_path / "victim"
    victim.write_bytes(b"keep me")
    (tmp_path / "cache").mkdir()
    j = Journal(str(tmp_path / "cache" / "journal.db"))
    j.put(Entry("t/image/b/a/dirty.png", "local", state=State.DIRTY, op=OP_PUT, data_name="../../victim", size=7))
    j.put(Entry("t/image/b/a/clean.png", "local", data_name=str(victim), size=7, remote=True))
    j.close()
    ns, _p = make_ns(tmp_path)
    try:
        assert ns.parts.index.get("t/image/b/a/dirty.png") is None, "a dirty entry without data is dropped"
        refusals = [r for r in caplog.records if "refusing cache data file name" in r.getMessage()]
        assert refusals and len({r.getMessage() for r in refusals}) == len(refusals), "each bad name logged once"
    finally:
        ns.stop()
    assert victim.read_bytes() == b"keep me"
