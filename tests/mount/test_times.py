"""POSIX times (issue 18): ctime on every change, atime by the mount's atime option (relatime,
strictatime, noatime) and never by writes, a folder's times on entries created / removed /
renamed in it, a folder's own mode, owner, times and user.* xattrs, through empty-cache remounts.

Times are compared as st_*_ns with a short pause between changes. Reads are `open + read +
close` (Path.read_bytes), as programs read. ext4 is the reference where the issue is silent:
moving a folder keeps its mtime, rename moves the ctime of the renamed entry.
"""

from __future__ import annotations

import os
import stat
import time

import pytest

from storefs.providers.s3.codec import parse_mtime
from storefs.testing.backends import is_s3, s3_head
from storefs.testing.data import ART, create_file, settle
from storefs.testing.mount import run
from storefs.testing.users import THIRD

pytestmark = pytest.mark.timeout(240)

A_NS = 1_000_000_000_250_000_000  # explicit atime
M_NS = 1_100_000_000_500_000_000  # explicit mtime
STORED_NS = 0  # every provider keeps times to the nanosecond (tests/mount/test_times_ns.py)


def _close(a: int, b: int, tol: int = STORED_NS) -> bool:
    return abs(a - b) <= tol


def _append(path: os.PathLike, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def _overwrite(path: os.PathLike, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.pwrite(fd, data, 0)
    finally:
        os.close(fd)


def test_file_ctime_mtime_atime_rules(store):
    """ctime moves on write, truncate, chmod, chown, setxattr, rename and utimens; mtime only on
    data changes; writes and appends leave atime; everything stored persists."""
    art = store.mnt / ART
    art.mkdir(parents=True)
    f = art / "f.bin"
    create_file(f, b"")
    prev = os.stat(f)
    atime0 = prev.st_atime_ns
    assert prev.st_ctime_ns >= prev.st_mtime_ns - STORED_NS

    def step(what: str, fn, *, data: bool, path=None) -> os.stat_result:
        nonlocal prev, f
        settle()
        fn()
        if path is not None:
            f = path
        st = os.stat(f)
        assert st.st_ctime_ns > prev.st_ctime_ns, f"{what}: ctime did not move ({prev.st_ctime_ns} -> {st.st_ctime_ns})"
        if data:
            assert st.st_mtime_ns > prev.st_mtime_ns, f"{what}: mtime did not move"
            assert st.st_ctime_ns >= st.st_mtime_ns, f"{what}: ctime {st.st_ctime_ns} < mtime {st.st_mtime_ns}"
        else:
            assert st.st_mtime_ns == prev.st_mtime_ns, f"{what}: mtime moved ({prev.st_mtime_ns} -> {st.st_mtime_ns})"
        prev = st
        return st

    st = step("write", lambda: _overwrite(f, b"hello world"), data=True)
    assert st.st_atime_ns == atime0, "a write moved atime"
    st = step("append", lambda: _append(f, b"!!"), data=True)
    assert st.st_atime_ns == atime0, "an append moved atime"
    assert f.read_bytes() == b"hello world!!"
    prev = os.stat(f)
    step("truncate", lambda: os.truncate(f, 5), data=True)
    step("chmod", lambda: os.chmod(f, 0o640), data=False)
    step("chown", lambda: os.chown(f, THIRD, THIRD), data=False)
    step("setxattr", lambda: os.setxattr(f, "user.k", b"v"), data=False)
    step("removexattr", lambda: os.removexattr(f, "user.k"), data=False)
    g = art / "g.bin"
    step("rename", lambda: os.rename(f, g), data=False, path=g)
    settle()
    t_before = time.time_ns()
    os.utime(g, ns=(A_NS, M_NS))
    st = os.stat(g)
    assert (st.st_atime_ns, st.st_mtime_ns) == (A_NS, M_NS)
    assert st.st_ctime_ns > prev.st_ctime_ns and st.st_ctime_ns >= t_before - 10**7, "utimens: ctime did not move"
    assert st.st_mode == stat.S_IFREG | 0o640 and (st.st_uid, st.st_gid) == (THIRD, THIRD)
    kept = os.stat(g)
    assert g.read_bytes() == b"hello"
    after_read = os.stat(g)  # relatime: atime older than ctime -> the read moves it
    assert after_read.st_atime_ns > A_NS, "relatime: a read after a change did not move atime"

    # one more file never read after its utime: atime must persist exactly
    h = art / "h.bin"
    create_file(h, b"keep")
    os.chown(h, THIRD, 0)
    os.chmod(h, 0o604)
    os.utime(h, ns=(A_NS, M_NS))
    h_st = os.stat(h)

    store.flush()
    if is_s3(store):
        md = s3_head(store, f"{ART}/h.bin")["Metadata"]
        for name in ("mtime", "ctime", "atime"):
            assert name in md, f"x-amz-meta-{name} missing: {md}"
        assert (parse_mtime(md["mtime"]), parse_mtime(md["atime"])) == (M_NS, A_NS), md
        assert parse_mtime(md["ctime"]) == h_st.st_ctime_ns, (md, h_st)
    else:
        st = os.lstat(store.data / ART / "h.bin")
        assert (st.st_atime_ns, st.st_mtime_ns) == (A_NS, M_NS)

    store.remount(empty_cache=True)
    for p, want in ((g, kept), (h, h_st)):
        st = os.stat(p)
        assert (st.st_mode, st.st_uid, st.st_gid, st.st_size) == (want.st_mode, want.st_uid, want.st_gid,
                                                                  want.st_size), p
        assert _close(st.st_mtime_ns, M_NS), (p, st.st_mtime_ns)
        if is_s3(store):  # the local provider's files keep the kernel's ctime, which nobody can set
            assert _close(st.st_ctime_ns, want.st_ctime_ns), (p, st.st_ctime_ns, want.st_ctime_ns)
        else:
            assert st.st_ctime_ns >= want.st_mtime_ns
    st = os.stat(h)
    assert _close(st.st_atime_ns, A_NS), f"atime not kept: {st.st_atime_ns} != {A_NS}"
    assert h.read_bytes() == b"keep" and g.read_bytes() == b"hello"


def _remount_with_atime(store, mode: str | None) -> None:
    store.unmount()
    store.extra_config["fuse"] = {} if mode is None else {"atime": mode}
    store.start()


def test_atime_options(store):
    """relatime (default): the first read after a change moves atime, the next does not;
    strictatime: every read does; noatime: no read does."""
    art = store.mnt / ART
    art.mkdir(parents=True)
    f = art / "f.bin"
    create_file(f, b"")
    a0 = os.stat(f).st_atime_ns
    settle()
    _overwrite(f, b"data")
    st = os.stat(f)
    assert st.st_atime_ns == a0 and st.st_mtime_ns > a0
    settle()
    assert f.read_bytes() == b"data"
    a1 = os.stat(f).st_atime_ns
    assert a1 > st.st_mtime_ns, "relatime: the first read after a write did not move atime"
    settle()
    assert f.read_bytes() == b"data"
    assert os.stat(f).st_atime_ns == a1, "relatime: a second read moved atime"
    settle()
    _append(f, b"+")
    st = os.stat(f)
    assert st.st_atime_ns == a1, "an append moved atime"
    settle()
    assert f.read_bytes() == b"data+"
    a2 = os.stat(f).st_atime_ns
    assert a2 > st.st_mtime_ns, "relatime: the first read after an append did not move atime"

    _remount_with_atime(store, "strictatime")
    last = os.stat(f).st_atime_ns
    for i in range(3):
        settle()
        assert f.read_bytes() == b"data+"
        now = os.stat(f).st_atime_ns
        assert now > last, f"strictatime: read {i + 1} did not move atime"
        last = now

    _remount_with_atime(store, "noatime")
    settle()
    _append(f, b"-")  # mtime > atime: relatime would move atime on the next read
    before = os.stat(f).st_atime_ns
    for i in range(2):
        settle()
        assert f.read_bytes() == b"data+-"
        assert os.stat(f).st_atime_ns == before, f"noatime: read {i + 1} moved atime"


def _folder_step(d, what: str, fn, prev: os.stat_result, *, mtime: bool = True) -> os.stat_result:
    settle()
    fn()
    st = os.stat(d)
    assert st.st_ctime_ns > prev.st_ctime_ns, f"{what}: the folder's ctime did not move"
    if mtime:
        assert st.st_mtime_ns > prev.st_mtime_ns, f"{what}: the folder's mtime did not move"
    else:
        assert st.st_mtime_ns == prev.st_mtime_ns, f"{what}: the folder's mtime moved"
    return st


def test_folder_times_and_metadata(meta_store):
    """A folder's mtime/ctime follow its entries; its mode, owner, times and user.* xattrs are its
    own, through the attribute cache, and through an empty-cache remount where the provider keeps
    folder metadata (local, moto); on SeaweedFS (which drops it) every operation still works."""
    s = meta_store
    art = s.mnt / ART
    art.mkdir(parents=True)
    d = art / "d"
    other = art / "other"
    d.mkdir()
    other.mkdir()
    st = os.stat(d)
    st = _folder_step(d, "create", lambda: create_file(d / "f.png", b"f"), st)
    st = _folder_step(d, "rename inside", lambda: os.rename(d / "f.png", d / "g.png"), st)
    o = os.stat(other)
    st = _folder_step(d, "rename out", lambda: os.rename(d / "g.png", other / "g.png"), st)
    o2 = os.stat(other)
    assert o2.st_mtime_ns > o.st_mtime_ns and o2.st_ctime_ns > o.st_ctime_ns, "rename in: target folder times"
    st = _folder_step(d, "mkdir", lambda: os.mkdir(d / "sub"), st)
    st = _folder_step(d, "rmdir", lambda: os.rmdir(d / "sub"), st)
    create_file(d / "h.png", b"h")
    st = os.stat(d)
    st = _folder_step(d, "unlink", lambda: os.unlink(d / "h.png"), st)
    st = _folder_step(d, "chmod", lambda: os.chmod(d, 0o750), st, mtime=False)
    st = _folder_step(d, "chown", lambda: os.chown(d, THIRD, THIRD), st, mtime=False)
    st = _folder_step(d, "setfattr", lambda: run(["setfattr", "-n", "user.x", "-v", "hello", str(d)]), st,
                      mtime=False)
    assert run(["getfattr", "--only-values", "-n", "user.x", str(d)]).stdout == "hello"
    assert os.getxattr(d, "user.x") == b"hello"
    create_file(d / "keep.png", b"k")
    os.utime(d, ns=(A_NS, M_NS))
    st = os.stat(d)
    assert (st.st_atime_ns, st.st_mtime_ns) == (A_NS, M_NS)

    # moving a folder keeps its mtime (as on ext4), also into another folder
    m = art / "m"
    m.mkdir()
    create_file(m / "in.png", b"in")
    os.utime(m, ns=(A_NS, M_NS + 1_000_000_000))
    settle()
    os.rename(m, art / "m2")
    os.rename(art / "m2", other / "m3")
    assert os.stat(other / "m3").st_mtime_ns == M_NS + 1_000_000_000
    assert (other / "m3" / "in.png").read_bytes() == b"in"

    time.sleep(1.2)  # the kernel's attribute cache (attr_timeout 1s) has expired: the core answers
    st = os.stat(d)
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o750, THIRD, THIRD)
    assert st.st_mtime_ns == M_NS and os.getxattr(d, "user.x") == b"hello"
    assert os.stat(other / "m3").st_mtime_ns == M_NS + 1_000_000_000
    d_st = st

    s.remount(empty_cache=True)
    # stat before any listing: a listing reads the folder, which may move its atime (ext4's relatime)
    st = os.stat(d)
    m3 = os.stat(other / "m3")
    assert stat.S_ISDIR(st.st_mode) and stat.S_ISDIR(m3.st_mode)
    if s.keeps_folder_meta:
        assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o750, THIRD, THIRD), s.kind
        assert _close(st.st_mtime_ns, M_NS), f"folder mtime not kept: {st.st_mtime_ns}"
        if s.kind == "moto":
            assert _close(st.st_ctime_ns, d_st.st_ctime_ns), f"folder ctime not kept: {st.st_ctime_ns}"
        assert os.getxattr(d, "user.x") == b"hello"
        assert run(["getfattr", "--only-values", "-n", "user.x", str(d)]).stdout == "hello"
        assert _close(m3.st_mtime_ns, M_NS + 1_000_000_000), f"moved folder's mtime not kept: {m3.st_mtime_ns}"
        if s.kind == "moto":
            assert _close(st.st_atime_ns, A_NS), f"folder atime not kept: {st.st_atime_ns}"
        else:
            # a local folder's atime is the disk's own, which the mount shows as it is: the watcher
            # storefs puts on base_path (inotify, through watchdog) reads every folder when the mount
            # starts, which moves a 2001 atime under relatime, as any find(1) would (README)
            disk = os.stat(s.data / ART / "d")
            assert _close(st.st_atime_ns, disk.st_atime_ns), \
                f"folder atime {st.st_atime_ns} != disk's {disk.st_atime_ns}"
    assert sorted(os.listdir(d)) == ["keep.png"] and sorted(os.listdir(other)) == ["g.png", "m3"]
    assert (other / "m3" / "in.png").read_bytes() == b"in"
    if s.keeps_folder_meta:
        # attributes that come with a listing (readdirplus) are the folder's own too
        m3 = os.stat(other / "m3")
        assert _close(m3.st_mtime_ns, M_NS + 1_000_000_000), f"listed folder's mtime not kept: {m3.st_mtime_ns}"
        assert (stat.S_IMODE(os.stat(d).st_mode), os.stat(d).st_uid) == (0o750, THIRD)
    # whatever the provider kept, folder metadata changes still work after the remount
    os.chmod(d, 0o700)
    run(["setfattr", "-n", "user.y", "-v", "again", str(d)])
    os.utime(d, ns=(A_NS, M_NS))
    st = os.stat(d)
    assert stat.S_IMODE(st.st_mode) == 0o700 and st.st_mtime_ns == M_NS
    assert os.getxattr(d, "user.y") == b"again"
    s.flush()
