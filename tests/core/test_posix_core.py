"""The core's POSIX rules, in-process on the memory provider (no FUSE): owners, modes, times, links, read-only."""

from __future__ import annotations

import os
import sqlite3
import stat
import time
from pathlib import Path

import pytest
from coretier import build

from storefs.core import Caller, Core
from storefs.errors import AccessRefused, NotPermitted, ReadOnly, StorefsError
from storefs.providers.memory import MemoryProvider

ART = "t/image/b/a"
ALICE = Caller(1001, 1001)
BOB = Caller(1002, 1002)
ROOT = Caller(0, 0)


def make(tmp: Path, fuse: str = "{}", provider: MemoryProvider | None = None) -> tuple[Core, MemoryProvider]:
    """A core on provider (a new memory provider unless given: a second mount of the same store)."""
    provider = provider or MemoryProvider("mem")
    return build(tmp, {"mem": provider}, fuse=fuse), provider


@pytest.fixture
def ns(tmp_path: Path):
    n, _ = make(tmp_path)
    n.start()
    parts = ART.split("/")
    for i in range(1, len(parts) + 1):
        n.mkdir("/".join(parts[:i]), 0o777, 0, 0)
    try:
        yield n
    finally:
        n.stop()


def new_file(ns: Core, name: str, who: Caller, mode: int = 0o644, data: bytes = b"x") -> str:
    key = f"{ART}/{name}"
    fh = ns.create(key, mode, who.uid, who.gid, exclusive=True)
    ns.write(fh, data, 0)
    ns.flush(fh)
    ns.release(fh)
    return key


def test_only_the_owner_or_root_changes_a_mode(ns: Core) -> None:
    key = new_file(ns, "a.png", ALICE)
    with pytest.raises(NotPermitted):
        ns.chmod(key, 0o666, BOB)
    ns.chmod(key, 0o600, ALICE)
    assert stat.S_IMODE(ns.getattr(key).mode) == 0o600
    ns.chmod(key, 0o640, ROOT)
    assert stat.S_IMODE(ns.getattr(key).mode) == 0o640


def test_a_writer_may_only_drop_set_id_bits_of_a_file_it_does_not_own(ns: Core) -> None:
    key = new_file(ns, "s.png", ALICE)
    ns.chmod(key, 0o6777, ROOT)
    ns.chmod(key, 0o777, BOB)  # what the kernel sends after BOB's write (file_remove_privs)
    assert stat.S_IMODE(ns.getattr(key).mode) == 0o777
    with pytest.raises(NotPermitted):
        ns.chmod(key, 0o4777, BOB)  # adding a bit is the owner's right
    with pytest.raises(NotPermitted):
        ns.chmod(key, 0o700, BOB)


def test_a_write_by_a_non_root_user_clears_set_user_id(ns: Core) -> None:
    key = new_file(ns, "w.png", ALICE, 0o666)
    ns.chmod(key, 0o6775, ROOT)
    fh = ns.open(key, os.O_WRONLY, BOB)
    ns.write(fh, b"more", 1)
    ns.flush(fh)
    ns.release(fh)
    assert stat.S_IMODE(ns.getattr(key).mode) == 0o775  # setgid goes too: group-exec is set
    ns.chmod(key, 0o6775, ROOT)
    fh = ns.open(key, os.O_WRONLY, ROOT)
    ns.write(fh, b"root", 0)
    ns.release(fh)
    assert stat.S_IMODE(ns.getattr(key).mode) == 0o6775  # root's writes keep them, as on Linux


def test_only_root_gives_a_file_away_and_the_owner_picks_one_of_its_groups(ns: Core) -> None:
    key = new_file(ns, "o.png", ALICE)
    with pytest.raises(NotPermitted):
        ns.chown(key, BOB.uid, -1, ALICE)
    with pytest.raises(NotPermitted):
        ns.chown(key, -1, 4242, ALICE)  # not one of ALICE's groups
    with pytest.raises(NotPermitted):
        ns.chown(key, -1, BOB.gid, BOB)  # not the owner
    ns.chown(key, -1, ALICE.gid, ALICE)
    ns.chmod(key, 0o6755, ROOT)
    ns.chown(key, BOB.uid, BOB.gid, ROOT)
    a = ns.getattr(key)
    assert (a.uid, a.gid) == (BOB.uid, BOB.gid)
    assert stat.S_IMODE(a.mode) == 0o755  # an owner change drops set-ID bits


def test_explicit_times_need_the_owner_and_now_needs_write_permission(ns: Core) -> None:
    key = new_file(ns, "t.png", ALICE, 0o644)
    with pytest.raises(NotPermitted):
        ns.utimens(key, 1_000_000_000, 2_000_000_000, BOB, explicit=True)
    with pytest.raises(AccessRefused):
        ns.utimens(key, time.time_ns(), time.time_ns(), BOB, explicit=False)
    ns.chmod(key, 0o666, ALICE)
    ns.utimens(key, time.time_ns(), time.time_ns(), BOB, explicit=False)
    ns.utimens(key, 5_000_000_000, 1_000_000_000_500_000_000, ALICE, explicit=True)
    a = ns.getattr(key)
    assert (a.atime_ns, a.mtime_ns) == (5_000_000_000, 1_000_000_000_500_000_000)


def test_ctime_moves_with_every_change_and_folders_with_their_entries(ns: Core) -> None:
    folder = ns.getattr(ART)
    time.sleep(0.01)
    key = new_file(ns, "c.png", ALICE)
    before = ns.getattr(key).ctime_ns
    time.sleep(0.01)
    for change in (lambda: ns.chmod(key, 0o600, ALICE), lambda: ns.setxattr(key, "user.k", b"v"),
                   lambda: ns.chown(key, -1, ALICE.gid, ROOT), lambda: ns.utimens(key, None, 7_000_000_000, ROOT)):
        change()
        now = ns.getattr(key).ctime_ns
        assert now > before
        before = now
    assert ns.getattr(key).mtime_ns == 7_000_000_000
    created = ns.getattr(ART)
    assert created.mtime_ns > folder.mtime_ns and created.ctime_ns > folder.ctime_ns
    time.sleep(0.01)
    ns.unlink(key)
    assert ns.getattr(ART).mtime_ns > created.mtime_ns


def test_relatime_moves_atime_once_after_a_change(tmp_path: Path) -> None:
    n, _ = make(tmp_path)
    parts = ART.split("/")
    for i in range(1, len(parts) + 1):
        n.mkdir("/".join(parts[:i]), 0o755, 0, 0)
    key = new_file(n, "r.png", ROOT)
    n.utimens(key, 100_000_000_000, 200_000_000_000, ROOT)  # atime before mtime: the next read moves it
    n.release(n.open(key, os.O_RDONLY))
    first = n.getattr(key).atime_ns
    assert first > 200.0
    n.release(n.open(key, os.O_RDONLY))
    assert n.getattr(key).atime_ns == first
    fh = n.open(key, os.O_WRONLY)
    n.write(fh, b"y", 0)
    n.release(fh)
    assert n.getattr(key).atime_ns == first  # writes never move atime


def test_noatime_never_moves_atime(tmp_path: Path) -> None:
    n, _ = make(tmp_path, "{atime: noatime}")
    parts = ART.split("/")
    for i in range(1, len(parts) + 1):
        n.mkdir("/".join(parts[:i]), 0o755, 0, 0)
    key = new_file(n, "n.png", ROOT)
    n.utimens(key, 100_000_000_000, 200_000_000_000, ROOT)
    n.release(n.open(key, os.O_RDONLY))
    assert n.getattr(key).atime_ns == 100_000_000_000


def test_links_and_special_files_keep_their_type_and_target(ns: Core) -> None:
    target = b"../../other/\xff\xfename"  # bytes as given, never interpreted
    ns.symlink(f"{ART}/l", target, ALICE)
    a = ns.getattr(f"{ART}/l")
    assert stat.S_ISLNK(a.mode) and a.size == len(target) and a.uid == ALICE.uid
    assert ns.readlink(f"{ART}/l") == target
    ns.mknod(f"{ART}/fifo", stat.S_IFIFO | 0o640, 0, ALICE)
    assert stat.S_ISFIFO(ns.getattr(f"{ART}/fifo").mode)
    with pytest.raises(NotPermitted):
        ns.mknod(f"{ART}/dev", stat.S_IFCHR | 0o600, os.makedev(1, 3), ALICE)
    with pytest.raises(StorefsError):
        ns.readlink(f"{ART}/fifo")
    assert ns.flush_all(30)
    ns.rename(f"{ART}/l", f"{ART}/l2")
    assert ns.flush_all(30)
    e = ns.parts.index.get(f"{ART}/l2")
    if e is not None:
        ns.parts.tree.evict(e)
    assert ns.readlink(f"{ART}/l2") == target


def test_set_group_id_folders_pass_their_group_on(ns: Core) -> None:
    ns.mkdir(f"{ART}/shared", 0o2775, ROOT.uid, 500)
    ns.mkdir(f"{ART}/shared/sub", 0o755, ALICE.uid, ALICE.gid)
    sub = ns.getattr(f"{ART}/shared/sub")
    assert sub.gid == 500 and sub.mode & stat.S_ISGID
    fh = ns.create(f"{ART}/shared/f.png", 0o644, ALICE.uid, ALICE.gid, exclusive=True)
    ns.release(fh)
    assert ns.getattr(f"{ART}/shared/f.png").gid == 500


def test_a_read_only_mount_refuses_every_change_and_writes_no_journal_row(tmp_path: Path) -> None:
    rw, store = make(tmp_path)
    parts = ART.split("/")
    for i in range(1, len(parts) + 1):
        rw.mkdir("/".join(parts[:i]), 0o755, 0, 0)
    rw.start()
    key = new_file(rw, "ro.png", ROOT, data=b"kept")
    assert rw.flush_all(30)
    rw.stop()
    rw.parts.index.journal.close()
    os.unlink(tmp_path / "cache" / "journal.db")
    ro, _ = make(tmp_path, "{read_only: true}", store)
    ro.start()
    try:
        changes = [lambda: ro.create(f"{ART}/n.png", 0o644, 0, 0, exclusive=True),
                   lambda: ro.open(key, os.O_WRONLY), lambda: ro.open(key, os.O_RDONLY | os.O_TRUNC),
                   lambda: ro.mkdir(f"{ART}/d", 0o755, 0, 0), lambda: ro.unlink(key),
                   lambda: ro.rename(key, f"{ART}/m.png"), lambda: ro.chmod(key, 0o600),
                   lambda: ro.chown(key, 1, 1), lambda: ro.utimens(key, 1_000_000_000, 1_000_000_000),
                   lambda: ro.setxattr(key, "user.a", b"b"), lambda: ro.truncate(key, 0),
                   lambda: ro.symlink(f"{ART}/s", b"x", ROOT), lambda: ro.rmdir(ART),
                   lambda: ro.mknod(f"{ART}/p", stat.S_IFIFO | 0o644, 0, ROOT)]
        for change in changes:
            with pytest.raises(ReadOnly):
                change()
        fh = ro.open(key, os.O_RDONLY)
        fd, n = ro.read_source(fh, 4, 0)
        assert os.pread(fd, n, 0) == b"kept"
        ro.release(fh)
        assert ro.flush_all(1)
    finally:
        ro.stop()
    rows = sqlite3.connect(tmp_path / "cache" / "journal.db").execute("SELECT count(*) FROM entries").fetchone()
    assert rows == (0,)
