"""Cache data files: creates take a file made ahead of time, and no ready file outlives the mount."""

from __future__ import annotations

import errno
import os
import time
from pathlib import Path

import pytest

from storefs.cache import datafiles
from storefs.cache.datafiles import DataFiles
from storefs.errors import CacheFull


def on_disk(d: DataFiles) -> set[str]:
    return d.names()


def wait_ready(d: DataFiles, n: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while len(on_disk(d)) < n:
        assert time.monotonic() < deadline, f"{len(on_disk(d))} ready files, expected {n}"
        time.sleep(0.01)


def test_creates_take_ready_files_which_are_made_again(tmp_path: Path) -> None:
    d = DataFiles(str(tmp_path), spares=8)
    d.start()
    try:
        wait_ready(d, 8)
        made = []
        for _ in range(12):  # more than are ready: the rest are refilled, or made on the spot
            name, fd = d.create()
            os.write(fd, b"bytes")
            made.append((name, fd))
        assert d.taken >= 8
        assert len({name for name, _ in made}) == 12
        for name, fd in made:
            assert os.pread(fd, 10, 0) == b"bytes"
            assert os.path.getsize(d.path(name)) == 5
            os.close(fd)
        wait_ready(d, 12 + 4)  # refilled to at least half again
    finally:
        d.stop()


def test_a_sparse_create_from_a_ready_file_has_its_size(tmp_path: Path) -> None:
    d = DataFiles(str(tmp_path), spares=4)
    d.start()
    try:
        wait_ready(d, 4)
        name, fd = d.create(3 << 20)
        assert d.taken == 1
        assert os.fstat(fd).st_size == 3 << 20 and os.fstat(fd).st_blocks == 0
        os.close(fd)
    finally:
        d.stop()


def test_stop_deletes_the_ready_files_and_keeps_the_used_ones(tmp_path: Path) -> None:
    d = DataFiles(str(tmp_path), spares=6)
    d.start()
    wait_ready(d, 6)
    name, fd = d.create()
    os.close(fd)
    d.stop()
    assert on_disk(d) == {name}


def test_without_the_thread_creates_make_their_own_files(tmp_path: Path) -> None:
    d = DataFiles(str(tmp_path), spares=0)
    d.start()
    name, fd = d.create(10)
    os.close(fd)
    assert d.taken == 0 and on_disk(d) == {name}
    d.stop()


def test_a_full_disk_is_reported_by_the_create(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    d = DataFiles(str(tmp_path), spares=4)

    def full(*args: object, **kw: object) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "open", full)
    d.start()  # the filler finds no room and waits
    with pytest.raises(CacheFull):
        d.create()
    d.stop()
    monkeypatch.undo()
    assert on_disk(d) == set()



def test_stop_deletes_the_data_files_discarded_but_not_deleted_yet(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    d = DataFiles(str(tmp_path), spares=4)
    monkeypatch.setattr(d, "_reap", lambda: None)  # the thread is behind
    d.start()
    name, fd = d.create()
    os.close(fd)
    d.discard(name)
    assert name in on_disk(d)
    d.stop()
    assert on_disk(d) == set()
    other = DataFiles(str(tmp_path), spares=0)  # no thread: deleted at once
    name, fd = other.create()
    os.close(fd)
    other.discard(name)
    assert on_disk(other) == set()


def discarded(d: DataFiles, n: int) -> list[str]:
    """n data files made, closed and discarded (as unlinks do)."""
    names = []
    for _ in range(n):
        name, fd = d.create()
        os.close(fd)
        d.discard(name)
        names.append(name)
    return names


def gone(d: DataFiles, names: list[str], why: str) -> None:
    deadline = time.monotonic() + 10
    while set(names) & on_disk(d):
        assert time.monotonic() < deadline, why
        time.sleep(0.01)


def test_unlinked_files_data_waits_for_a_quiet_moment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A burst of unlinks (rm -r) does not share the machine with ext4 deleting their data files:
    they go once the file system is quiet, or once the oldest is REAP_LATE_MAX late."""
    d = DataFiles(str(tmp_path), spares=4)
    idle = [0.0]  # seconds since the file system changed something: busy
    d.give_way_to(lambda: idle[0])
    d.start()
    try:
        names = discarded(d, 3)
        time.sleep(0.3)
        assert set(names) <= on_disk(d), "deleted during the burst"
        idle[0] = datafiles.REAP_QUIET  # quiet now
        gone(d, names, "not deleted once quiet")
        monkeypatch.setattr(datafiles, "REAP_LATE_MAX", 0.2)
        idle[0] = 0.0  # a burst that does not end: the files go when the oldest is late
        gone(d, discarded(d, 1), "never deleted under a burst that goes on")
    finally:
        d.stop()


def test_room_is_made_from_the_files_waiting_to_be_deleted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    d = DataFiles(str(tmp_path), spares=0)
    d.give_way_to(lambda: 0.0)  # a burst: nothing is deleted in the background
    d._filler = object()  # type: ignore[assignment]  # as if the thread ran: discards wait for it
    assert set(discarded(d, 2)) <= on_disk(d)
    real_open, fails = os.open, [1]

    def full_once(*args: object, **kw: object) -> int:
        if fails[0]:
            fails[0] -= 1
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_open(*args, **kw)  # type: ignore[arg-type]
    monkeypatch.setattr(os, "open", full_once)
    name, fd = d.create()  # the disk is full: the waiting deletes go first, then the create
    os.close(fd)
    monkeypatch.undo()
    assert on_disk(d) == {name}
    assert d.reap_now() == 0
    d._filler = None
    d.stop()


# ---- host security: names read back from the journal, file modes ----------------------------------

BAD_NAMES = ["../../victim", "/etc/passwd", "..", "ab/../../x", "a" * 64 + "/x", "A" * 64, "0" * 63, "",
             "0" * 64 + "\n", "./" + "0" * 62]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_bad_names_are_never_used_as_paths(tmp_path: Path, name: str, caplog: pytest.LogCaptureFixture) -> None:
    from storefs.cache.datafiles import BadDataName, check_name
    d = DataFiles(str(tmp_path / "cache"), spares=0)
    victim = tmp_path / "victim"
    victim.write_bytes(b"keep me")
    with pytest.raises(BadDataName, match="refusing cache data file name"):
        check_name(name)
    with pytest.raises(BadDataName):
        d.path(name)
    if name:  # an empty name is "no data file", as before
        assert d.exists(name) is False
        d.remove(name)
        d.discard(name)
        with pytest.raises(BadDataName):
            d.open(name)
        with pytest.raises(BadDataName):
            d.size(name)
        refusals = [r for r in caplog.records if "refusing cache data file name" in r.getMessage()]
        assert len(refusals) == 1, "a bad name is logged once, however often it is used"
    assert victim.read_bytes() == b"keep me"


def test_good_names_pass_and_older_sha256_names_too(tmp_path: Path) -> None:
    import hashlib

    from storefs.cache.datafiles import check_name
    d = DataFiles(str(tmp_path), spares=0)
    name, fd = d.create()
    os.close(fd)
    assert check_name(name) == name and d.exists(name)
    old = hashlib.sha256(b"key\0salt").hexdigest()  # what earlier versions named data files
    assert check_name(old) == old


def test_data_files_and_folders_are_private_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        d = DataFiles(str(tmp_path / "cache"), spares=0)
        name, fd = d.create()
        os.write(fd, b"abc")
        os.close(fd)
        os.close(d.create()[1])
    finally:
        os.umask(old)
    for dirpath, _dirs, files in os.walk(d.root):
        assert os.stat(dirpath).st_mode & 0o777 == 0o700, dirpath
        for f in files:
            assert os.stat(os.path.join(dirpath, f)).st_mode & 0o777 == 0o600, f


def test_a_data_file_replaced_by_a_symlink_is_not_followed(tmp_path: Path) -> None:
    from storefs.errors import StorefsError
    d = DataFiles(str(tmp_path / "cache"), spares=0)
    name, fd = d.create()
    os.close(fd)
    victim = tmp_path / "victim"
    victim.write_bytes(b"keep me")
    os.unlink(d.path(name))
    os.symlink(victim, d.path(name))
    with pytest.raises(StorefsError):
        d.open(name)


def test_journal_files_are_0600_whatever_the_umask(tmp_path: Path) -> None:
    from storefs.cache.journal import Entry, Journal
    (tmp_path / "c").mkdir()
    stale = tmp_path / "c" / "journal.db-wal"  # left 0644 by an older storefs
    old = os.umask(0)
    try:
        j = Journal(str(tmp_path / "c" / "journal.db"))
        j.put(Entry("t/image/b/a/x.png", "local"))
        assert not stale.exists() or stale.stat().st_mode & 0o777 == 0o600
        made = sorted(p.name for p in (tmp_path / "c").iterdir())
        modes = {p.name: p.stat().st_mode & 0o777 for p in (tmp_path / "c").iterdir()}
        j.close()
    finally:
        os.umask(old)
    assert {"journal.db", "journal.db-wal", "journal.db-shm", "journal.db-redo0", "journal.db-redo1"} <= set(made)
    assert set(modes.values()) == {0o600}, modes
