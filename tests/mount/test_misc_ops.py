"""Metadata and housekeeping: chmod, chown, touch, xattrs, statfs/df, status, rmdir, folder renames."""

from __future__ import annotations

import calendar
import errno
import os
import stat
import time

import pytest

from storefs.control import pid_alive
from storefs.testing.data import ART, create_file, expect_errno, payload
from storefs.testing.mount import run

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def art(store):
    (store.mnt / ART).mkdir(parents=True)
    return store.mnt / ART


def test_chmod_persisted(store, art):
    create_file(art / "a", b"a")
    create_file(art / "b", b"b")
    run(["chmod", "600", str(art / "a")])
    os.chmod(art / "b", 0o751)
    assert stat.S_IMODE(os.stat(art / "a").st_mode) == 0o600
    assert stat.S_IMODE(os.stat(art / "b").st_mode) == 0o751
    store.flush()
    # chmod of a clean (uploaded) file is a metadata change that must persist too
    os.chmod(art / "a", 0o640)
    store.remount(empty_cache=True)
    assert stat.S_IMODE(os.stat(store.mnt / ART / "a").st_mode) == 0o640
    assert stat.S_IMODE(os.stat(store.mnt / ART / "b").st_mode) == 0o751
    assert (store.mnt / ART / "a").read_bytes() == b"a"


def test_chown_to_self(store, art):
    uid, gid = os.getuid(), os.getgid()
    create_file(art / "f", b"f")
    os.chown(art / "f", uid, gid)
    run(["chown", f"{uid}:{gid}", str(art / "f")])
    st = os.stat(art / "f")
    assert (st.st_uid, st.st_gid) == (uid, gid)
    store.remount(empty_cache=True)
    st = os.stat(store.mnt / ART / "f")
    assert (st.st_uid, st.st_gid) == (uid, gid)


def test_touch_mtime_persisted_and_atime_kept(store, art):
    path = art / "t.txt"
    create_file(path, b"t")
    atime, mtime = 1_500_000_000.25, 1_550_000_000.75
    os.utime(path, (atime, mtime))
    st = os.stat(path)
    assert abs(st.st_mtime - mtime) < 1e-3
    before_atime = st.st_atime

    t0 = time.time()
    run(["touch", "-m", str(path)])  # mtime := now, atime untouched (UTIME_OMIT)
    st = os.stat(path)
    assert t0 - 2 <= st.st_mtime <= time.time() + 2, f"touch -m set mtime to {st.st_mtime}"
    assert st.st_atime > 1_000_000, f"touch -m set atime to {st.st_atime} (UTIME_OMIT taken as a time?)"
    # atime either kept, or (a file system that keeps no atime, like s3fs and rclone) shown as mtime
    assert abs(st.st_atime - before_atime) < 1e-3 or abs(st.st_atime - st.st_mtime) < 1e-3, \
        f"touch -m changed atime {before_atime} -> {st.st_atime} (mtime {st.st_mtime})"

    when = "2001-02-03 04:05:06.5"
    expect = calendar.timegm((2001, 2, 3, 4, 5, 6)) + 0.5
    run(["touch", "-d", when, str(path)], env={**os.environ, "TZ": "UTC"})
    assert abs(os.stat(path).st_mtime - expect) < 1e-3
    run(["touch", "-m", "-d", "2002-02-03 04:05:06", str(art / "new-by-touch")], env={**os.environ, "TZ": "UTC"})
    expect_new = calendar.timegm((2002, 2, 3, 4, 5, 6))

    store.flush()
    meta = store.provider_meta(f"{ART}/t.txt")
    assert meta is not None and abs(meta["mtime"] - expect) < 1e-3, meta
    store.remount(empty_cache=True)
    assert abs(os.stat(store.mnt / ART / "t.txt").st_mtime - expect) < 1e-3
    assert abs(os.stat(store.mnt / ART / "new-by-touch").st_mtime - expect_new) < 1e-3
    assert (store.mnt / ART / "new-by-touch").read_bytes() == b""

    # touch of an uncached, clean file: metadata only, content kept
    run(["touch", "-d", "2003-01-01 00:00:00", str(store.mnt / ART / "t.txt")], env={**os.environ, "TZ": "UTC"})
    store.remount(empty_cache=True)
    assert os.stat(store.mnt / ART / "t.txt").st_mtime == calendar.timegm((2003, 1, 1, 0, 0, 0))
    assert (store.mnt / ART / "t.txt").read_bytes() == b"t"


def test_user_xattrs_persisted(store, art):
    path = art / "x.bin"
    create_file(path, b"x")
    os.setxattr(path, "user.color", b"blue")
    run(["setfattr", "-n", "user.tag", "-v", "hello world", str(path)])
    os.setxattr(path, "user.gone", b"soon")
    os.removexattr(path, "user.gone")
    assert os.getxattr(path, "user.color") == b"blue"
    assert os.getxattr(path, "user.tag") == b"hello world"
    names = os.listxattr(path)
    assert "user.color" in names and "user.tag" in names and "user.gone" not in names
    expect_errno(errno.ENODATA, os.getxattr, path, "user.gone")
    out = run(["getfattr", "-d", str(path)]).stdout
    assert 'user.color="blue"' in out and 'user.tag="hello world"' in out, out

    store.flush()
    os.setxattr(path, "user.after", b"upload")  # on a clean file: metadata update
    store.remount(empty_cache=True)
    path = store.mnt / ART / "x.bin"
    assert os.getxattr(path, "user.color") == b"blue"
    assert os.getxattr(path, "user.tag") == b"hello world"
    assert os.getxattr(path, "user.after") == b"upload"
    assert "user.gone" not in os.listxattr(path)
    assert path.read_bytes() == b"x"


def test_statfs_and_df(store, art):
    sv = os.statvfs(store.mnt)
    assert sv.f_bsize > 0 and sv.f_blocks > 0 and sv.f_namemax >= 255
    assert sv.f_bavail <= sv.f_blocks
    out = run(["stat", "-f", str(store.mnt)]).stdout
    assert "Block size" in out, out
    out = run(["df", "-h", str(store.mnt)]).stdout
    assert str(store.mnt) in out, out
    run(["df", "-i", str(store.mnt)])


@pytest.mark.storefs_config(writeback_delay="30s")
def test_status_json(store, art):
    st = store.status()
    for field in ("pid", "dirty_files", "dirty_bytes", "uploading", "errors", "cache_dir"):
        assert field in st, f"status --json lacks {field}: {st}"
    assert isinstance(st["pid"], int) and pid_alive(st["pid"])
    assert isinstance(st["errors"], list) and st["errors"] == []
    assert os.path.realpath(st["cache_dir"]) == os.path.realpath(store.cache)
    assert st["dirty_files"] == 0 and st["dirty_bytes"] == 0

    create_file(art / "a", payload("a", 10_000))
    create_file(art / "b", payload("b", 5_000))
    st = store.status()
    assert st["dirty_files"] == 2, st  # 30 s write-back delay: still dirty
    assert st["dirty_bytes"] == 15_000, st
    store.flush()
    st = store.status()
    assert st["dirty_files"] == 0 and st["dirty_bytes"] == 0 and st["uploading"] == 0, st
    # the human form works too
    out = store.storefs("status", str(store.mnt)).stdout
    assert str(st["pid"]) in out


def test_rmdir_non_empty_is_enotempty(store, art):
    sub = art / "sub"
    sub.mkdir()
    create_file(sub / "f", b"f")
    expect_errno(errno.ENOTEMPTY, os.rmdir, sub)
    expect_errno(errno.ENOTEMPTY, os.rmdir, art)
    expect_errno(errno.ENOTEMPTY, os.rmdir, store.mnt / "t1/image")
    store.remount(empty_cache=True)  # now the files are known only from the provider's listing
    expect_errno(errno.ENOTEMPTY, os.rmdir, store.mnt / ART / "sub")
    expect_errno(errno.ENOTEMPTY, os.rmdir, store.mnt / ART)
    assert (store.mnt / ART / "sub" / "f").read_bytes() == b"f"
    # empty folders can go
    os.unlink(store.mnt / ART / "sub" / "f")
    os.rmdir(store.mnt / ART / "sub")
    store.flush()
    assert not store.provider_exists(f"{ART}/sub")
    store.remount(empty_cache=True)
    assert os.listdir(store.mnt / ART) == []


def test_unlink_of_an_open_file_known_from_the_listing(store, art):
    """An open file is unlinked (libfuse renames it .fuse_hiddenN): it leaves the listing at once, its
    folder can go, the handle still reads, and the delete reaches the provider."""
    sub = art / "sub"
    sub.mkdir()
    create_file(sub / "f", b"elsewhere")
    store.remount(empty_cache=True)  # known only from the provider's listing
    fd = os.open(store.mnt / ART / "sub" / "f", os.O_RDONLY)
    try:
        assert os.read(fd, 4) == b"else"
        os.unlink(store.mnt / ART / "sub" / "f")
        assert os.listdir(store.mnt / ART / "sub") == []
        os.rmdir(store.mnt / ART / "sub")
        assert os.pread(fd, 5, 4) == b"where"
    finally:
        os.close(fd)
    store.flush()
    assert not store.provider_exists(f"{ART}/sub/f")
    store.remount(empty_cache=True)
    assert os.listdir(store.mnt / ART) == []


@pytest.mark.parametrize("uploaded_first", [False, True], ids=["dirty", "uploaded"])
def test_rename_artifact_to_other_board(store, art, uploaded_first):
    files = {"a.bin": payload("a", 100_000), "sub/b.bin": payload("b", 10), "sub/deep/c": b"",
             ".hidden": b"h"}
    for rel, data in files.items():
        (art / rel).parent.mkdir(parents=True, exist_ok=True)
        create_file(art / rel, data)
    (art / "emptysub").mkdir()
    (store.mnt / "t1/image/b2").mkdir()
    if uploaded_first:
        store.flush()
        assert len(store.provider_keys(ART)) == len(files)
    new = "t1/image/b2/a1"
    os.rename(art, store.mnt / new)
    assert not art.exists()
    assert sorted(os.listdir(store.mnt / "t1/image/b1")) == []
    for rel, data in files.items():
        assert (store.mnt / new / rel).read_bytes() == data
    store.flush()
    assert store.provider_keys(ART) == []
    assert not store.provider_exists(ART)
    assert store.provider_keys(new) == sorted(f"{new}/{rel}" for rel in files)
    store.remount(empty_cache=True)
    assert not (store.mnt / ART).exists()
    assert (store.mnt / new / "emptysub").is_dir()
    for rel, data in files.items():
        assert (store.mnt / new / rel).read_bytes() == data


def test_rename_folder_inside_artifact(store, art):
    (art / "d1" / "x").mkdir(parents=True)
    create_file(art / "d1" / "x" / "f", b"f")
    store.flush()
    run(["mv", str(art / "d1"), str(art / "d2")])
    assert (art / "d2" / "x" / "f").read_bytes() == b"f"
    assert not (art / "d1").exists()
    store.flush()
    assert store.provider_keys(ART) == [f"{ART}/d2/x/f"]
    assert not store.provider_exists(f"{ART}/d1")


def test_listing_answers_stat_without_a_lookup_per_name(store, art):
    """readdirplus: `ls -l` of a folder the mount knows costs one listing, not a lookup per
    file, and shows exactly what stat shows, before and after a remount with an empty cache."""
    for i in range(30):
        create_file(art / f"f{i:02d}.bin", payload(f"plus{i}", 1000 + i))
        os.chmod(art / f"f{i:02d}.bin", 0o600 + i % 8)
    (art / "sub").mkdir()
    os.utime(art / "f03.bin", (1_600_000_000, 1_600_000_000))
    store.flush()

    def listed() -> dict[str, tuple[int, int, int]]:
        with os.scandir(art if art.exists() else store.mnt / ART) as it:
            return {e.name: (e.stat().st_size, e.stat().st_mode, int(e.stat().st_mtime)) for e in it}

    time.sleep(1.3)  # the kernel forgets what it knew (attr_timeout / entry_timeout 1 s)
    before = store.status()["operations"].get("getattr", 0)
    seen = listed()
    looked_up = store.status()["operations"].get("getattr", 0) - before
    assert looked_up < 10, f"{looked_up} lookups for a listed folder of 31 names"
    assert seen["f03.bin"][2] == 1_600_000_000 and seen["f05.bin"][:2] == (1005, stat.S_IFREG | 0o605)
    assert stat.S_ISDIR(seen["sub"][1])
    for name, attrs in seen.items():
        st = os.stat(art / name)
        assert (st.st_size, st.st_mode, int(st.st_mtime)) == attrs, name
    store.remount(empty_cache=True)
    time.sleep(1.3)
    again = listed()
    assert stat.S_ISDIR(again.pop("sub")[1])  # (SeaweedFS keeps no metadata on folder markers)
    assert again == {name: attrs for name, attrs in seen.items() if name != "sub"}
