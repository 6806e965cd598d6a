"""LocalProvider (issue 18): symlinks and special files as real ones, times, folder metadata,
setuid/setgid from metadata, and links planted in base_path that must never lead outside it."""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest

from storefs.errors import AccessDenied, NotFound, ProviderError
from storefs.providers import ObjectMeta
from storefs.providers import local as local_mod
from storefs.providers.local import TMP_PREFIX, LocalProvider

MTIME = 1700000000_123456789  # integer ns: a local disk keeps every one
ATIME = 1600000000_500000001
LINK = stat.S_IFLNK | 0o777
NOBODY = 65534


@pytest.fixture
def base(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def prov(base: Path) -> LocalProvider:
    p = LocalProvider("local", str(base), create=True)
    p.check()
    return p


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A folder beside base_path with a file that storefs must never read, change or delete."""
    d = tmp_path / "outside"
    d.mkdir()
    (d / "secret").write_bytes(b"secret")
    os.chmod(d / "secret", 0o600)
    os.utime(d / "secret", ns=(10**18, 10**18))
    return d


def write(tmp_path: Path, data: bytes, name: str = "src") -> str:
    p = tmp_path / name
    p.write_bytes(data)
    return str(p)


def _untouched(outside: Path) -> None:
    assert sorted(p.name for p in outside.iterdir()) == ["secret"]
    secret = outside / "secret"
    st = secret.stat()
    assert secret.read_bytes() == b"secret" and stat.S_IMODE(st.st_mode) == 0o600 and st.st_mtime_ns == 10**18


def _temps(base: Path) -> list[str]:
    return [str(p) for p in base.rglob(TMP_PREFIX + "*")]


def _with_timeout(fn, seconds: float = 5.0):
    """Run fn in a thread; fail (instead of hanging the suite) when it does not return in time."""
    out: dict = {}

    def run() -> None:
        try:
            out["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - re-raised below
            out["error"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), "the call hung"
    if "error" in out:
        raise out["error"]
    return out["value"]


# -- symlinks ------------------------------------------------------------------------------

@pytest.mark.parametrize("target", [b"../blobs/abc123", b"/etc/passwd", b"dangling/nowhere", b"caf\xe9 \xff",
                                    b"x" * 4095, b"a b/../../c"])
def test_symlink_round_trip(prov, base, tmp_path, target):
    meta = ObjectMeta(mtime_ns=MTIME, mode=LINK, uid=os.getuid(), gid=os.getgid(), atime_ns=ATIME)
    info = prov.put_file("snap/main/model.bin", write(tmp_path, target), meta)
    assert prov.head("snap/main/model.bin") == info
    assert (info.mode, info.size, info.mtime_ns, info.uid, info.gid) == (LINK, len(target), MTIME, os.getuid(),
                                                                     os.getgid())
    assert info.atime_ns == ATIME and info.xattrs == {} and info.rdev is None
    disk = base / "snap/main/model.bin"  # (a readlink moves the link's atime: relatime)
    assert disk.is_symlink() and os.readlink(os.fsencode(disk)) == target
    assert prov.get_range("snap/main/model.bin", 0, 10_000) == target
    assert prov.get_range("snap/main/model.bin", 3, 4) == target[3:7]
    assert prov.get_range("snap/main/model.bin", len(target), 10) == b""
    assert b"".join(prov.read_stream("snap/main/model.bin")) == target
    (listed,) = prov.list("snap/main/")
    assert (listed.key, listed.mode, listed.size, listed.is_dir) == ("snap/main/model.bin", LINK, len(target), False)
    assert not _temps(base)


def test_symlink_replaces_file_atomically_and_back(prov, base, tmp_path):
    prov.put_file("a/x", write(tmp_path, b"data"), ObjectMeta(mtime_ns=MTIME))
    prov.put_file("a/x", write(tmp_path, b"target"), ObjectMeta(mtime_ns=MTIME, mode=LINK))
    assert os.readlink(base / "a/x") == "target"
    prov.put_file("a/x", write(tmp_path, b"data again"), ObjectMeta(mtime_ns=MTIME))
    assert not (base / "a/x").is_symlink() and (base / "a/x").read_bytes() == b"data again"
    with pytest.raises(ProviderError):
        prov.put_file("a/y", write(tmp_path, b""), ObjectMeta(mtime_ns=MTIME, mode=LINK))
    with pytest.raises(ProviderError):
        prov.put_file("a/y", write(tmp_path, b"a\0b"), ObjectMeta(mtime_ns=MTIME, mode=LINK))
    with pytest.raises(ProviderError):
        prov.put_file("a/y", write(tmp_path, b"x" * 4096), ObjectMeta(mtime_ns=MTIME, mode=LINK))
    assert not (base / "a/y").exists() and not (base / "a/y").is_symlink() and not _temps(base)


def test_symlink_meta_copy_delete_touch_only_the_link(prov, base, tmp_path, outside):
    secret = outside / "secret"
    prov.put_file("l/link", write(tmp_path, os.fsencode(secret)), ObjectMeta(mtime_ns=MTIME, mode=LINK))
    info = prov.set_meta("l/link", ObjectMeta(mtime_ns=42_500000000, atime_ns=41_250000000, mode=stat.S_IFLNK | 0o600,
                                              uid=NOBODY, gid=NOBODY, xattrs={"user.k": b"v"}))
    st = os.lstat(base / "l/link")
    # a link has no mode of its own
    assert (info.mtime_ns, info.atime_ns, info.mode) == (42_500_000_000, 41_250_000_000, LINK)
    assert (st.st_uid, st.st_gid, st.st_mtime_ns) == (NOBODY, NOBODY, 42_500_000_000) or os.geteuid() != 0
    copied = prov.copy("l/link", "l/copy")
    assert stat.S_ISLNK(copied.mode) and os.readlink(base / "l/copy") == str(secret)
    assert copied.mtime_ns == 42_500_000_000
    replaced = prov.copy("l/link", "l/copy2", ObjectMeta(mtime_ns=7_000_000_000, mode=0o100644))
    assert stat.S_ISLNK(replaced.mode) and replaced.mtime_ns == 7_000_000_000  # the copy is what the source is
    prov.delete("l/link")
    prov.delete("l/copy")
    prov.delete("l/copy2")
    assert list(prov.list("l/")) == []
    _untouched(outside)


# -- links planted in base_path must never lead outside it ----------------------------------

def test_planted_link_to_etc_as_a_folder(prov, base, tmp_path):
    (base / "t/image/b").mkdir(parents=True)
    (base / "t/image/b/a").symlink_to("/etc")
    for key in ("t/image/b/a/passwd", "t/image/b/a/hostname"):
        with pytest.raises(NotFound):
            prov.head(key)
        with pytest.raises(NotFound):
            prov.get_range(key, 0, 100)
        with pytest.raises(NotFound):
            list(prov.read_stream(key))
        with pytest.raises(NotFound):
            prov.set_meta(key, ObjectMeta(mtime_ns=1_000_000_000, mode=0o100777))
        with pytest.raises(NotFound):
            prov.copy(key, "t/stolen")
        prov.delete(key)
    assert list(prov.list("t/image/b/a/")) == []
    assert not prov.dir_exists("t/image/b/a/") and prov.head_dir("t/image/b/a/") is None
    with pytest.raises(ProviderError):
        prov.put_file("t/image/b/a/storefs-was-here", write(tmp_path, b"x"), ObjectMeta(mtime_ns=MTIME))
    with pytest.raises(ProviderError):
        prov.make_dir("t/image/b/a/sub/", ObjectMeta(mtime_ns=MTIME, mode=0o40777))
    prov.remove_dir("t/image/b/a/")
    assert os.path.exists("/etc/passwd") and not os.path.exists("/etc/storefs-was-here")
    assert (base / "t/image/b/a").is_symlink() and not (base / "t/stolen").exists()
    (a,) = prov.list("t/image/b/")
    assert stat.S_ISLNK(a.mode) and prov.get_range("t/image/b/a", 0, 100) == b"/etc"


def test_planted_link_as_an_intermediate_folder(prov, base, tmp_path, outside):
    (outside / "image").mkdir()
    (outside / "image/x.png").write_bytes(b"outside png")
    base.joinpath("t").symlink_to(outside)
    for key in ("t/secret", "t/image/x.png"):
        with pytest.raises(NotFound):
            prov.head(key)
        with pytest.raises(NotFound):
            prov.get_range(key, 0, 100)
        prov.delete(key)
        with pytest.raises(ProviderError):
            prov.put_file(key, write(tmp_path, b"overwrite"), ObjectMeta(mtime_ns=MTIME))
        with pytest.raises(NotFound):
            prov.set_meta(key, ObjectMeta(mtime_ns=1_000_000_000))
        with pytest.raises(NotFound):
            prov.copy(key, "mine")
    prov.put_file("mine", write(tmp_path, b"mine"), ObjectMeta(mtime_ns=MTIME))
    for key in ("t/secret", "t/new", "t/image/new"):
        with pytest.raises(ProviderError):
            prov.copy("mine", key)
    for prefix in ("t/", "t/image/"):
        assert list(prov.list(prefix)) == [] and not prov.dir_exists(prefix) and prov.head_dir(prefix) is None
        with pytest.raises(ProviderError):
            prov.make_dir(prefix + "sub/", ObjectMeta(mtime_ns=MTIME, mode=0o40777))
        prov.remove_dir(prefix)
    assert [p.name for p in (outside / "image").iterdir()] == ["x.png"]
    assert (outside / "image/x.png").read_bytes() == b"outside png"
    (outside / "image/x.png").unlink()
    (outside / "image").rmdir()
    _untouched(outside)


def test_link_made_through_the_provider_is_never_followed(prov, base, tmp_path, outside):
    """A link stored as an object (as the mount makes one) stays a link for every later call."""
    prov.put_file("t/a", write(tmp_path, os.fsencode(outside)), ObjectMeta(mtime_ns=MTIME, mode=LINK))
    prov.put_file("t/f", write(tmp_path, os.fsencode(outside / "secret")), ObjectMeta(mtime_ns=MTIME, mode=LINK))
    with pytest.raises(NotFound):
        prov.head("t/a/secret")
    with pytest.raises(ProviderError):
        prov.put_file("t/a/new", write(tmp_path, b"x"), ObjectMeta(mtime_ns=MTIME))
    prov.delete("t/a/secret")
    prov.set_meta("t/f", ObjectMeta(mtime_ns=5_000_000_000, mode=0o100666, xattrs={"user.x": b"1"}))
    assert prov.get_range("t/f", 0, 1000) == os.fsencode(outside / "secret")
    prov.delete("t/f")
    _untouched(outside)


def test_folder_renamed_by_another_program_is_never_written_into(prov, base, tmp_path):
    prov.put_file("a/b/x", write(tmp_path, b"1"), ObjectMeta(mtime_ns=MTIME))
    os.rename(base / "a", base / "moved")
    prov.put_file("a/b/y", write(tmp_path, b"2"), ObjectMeta(mtime_ns=MTIME))
    assert sorted(p.name for p in (base / "moved/b").iterdir()) == ["x"]
    assert (base / "a/b/y").read_bytes() == b"2"
    with pytest.raises(NotFound):
        prov.head("a/b/x")


def test_base_path_swapped_for_a_link_keeps_the_held_folder(prov, base, tmp_path, outside):
    prov.put_file("k", write(tmp_path, b"mine"), ObjectMeta(mtime_ns=MTIME))
    os.rename(base, tmp_path / "old-data")
    base.symlink_to(outside)
    with pytest.raises(NotFound):
        prov.head("secret")  # still the folder storefs opened, now at old-data
    assert prov.get_range("k", 0, 10) == b"mine"
    prov.put_file("secret", write(tmp_path, b"not the secret"), ObjectMeta(mtime_ns=MTIME))
    assert (tmp_path / "old-data/secret").read_bytes() == b"not the secret"
    _untouched(outside)


# -- FIFOs, sockets, devices --------------------------------------------------------------

def test_planted_fifo_never_hangs(prov, base):
    (base / "d").mkdir()
    os.mkfifo(base / "d/pipe", 0o644)
    info = prov.head("d/pipe")
    assert stat.S_ISFIFO(info.mode) and info.size == 0 and info.rdev is None
    assert _with_timeout(lambda: prov.get_range("d/pipe", 0, 100)) == b""
    assert _with_timeout(lambda: list(prov.read_stream("d/pipe"))) == []
    copied = _with_timeout(lambda: prov.copy("d/pipe", "d/pipe2"))
    assert stat.S_ISFIFO(copied.mode) and stat.S_ISFIFO(os.lstat(base / "d/pipe2").st_mode)


@pytest.mark.parametrize("kind", [stat.S_IFIFO, stat.S_IFSOCK])
def test_fifo_and_socket_as_real_ones(prov, base, tmp_path, kind):
    meta = ObjectMeta(mtime_ns=MTIME, atime_ns=ATIME, mode=kind | 0o640, uid=os.getuid(), gid=os.getgid())
    info = prov.put_file("n/node", write(tmp_path, b"ignored"), meta)
    st = os.lstat(base / "n/node")
    assert stat.S_IFMT(st.st_mode) == kind and stat.S_IMODE(st.st_mode) == 0o640
    assert (info.mode, info.size, info.mtime_ns, info.rdev) == (kind | 0o640, 0, MTIME, None)
    assert info.atime_ns == ATIME
    assert _with_timeout(lambda: prov.get_range("n/node", 0, 10)) == b""
    info = prov.set_meta("n/node", ObjectMeta(mtime_ns=5_000_000_000, mode=kind | 0o600))
    assert (info.mode, info.mtime_ns) == (kind | 0o600, 5_000_000_000)
    assert info.atime_ns == ATIME  # no atime given: kept
    (listed,) = prov.list("n/")
    assert listed.mode == kind | 0o600 and listed.size == 0
    prov.delete("n/node")
    assert not os.path.lexists(base / "n/node") and not _temps(base)


def test_socket_bound_by_a_program_is_reported(prov, base):
    (base / "s").mkdir()
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(base / "s/sock"))
        info = prov.head("s/sock")
        assert stat.S_ISSOCK(info.mode) and info.size == 0
        assert prov.get_range("s/sock", 0, 10) == b""


@pytest.mark.skipif(os.geteuid() != 0, reason="device nodes need root")
@pytest.mark.parametrize("kind", [stat.S_IFCHR, stat.S_IFBLK])
def test_device_nodes_as_root_are_never_opened(prov, base, tmp_path, kind, monkeypatch):
    rdev = os.makedev(1, 3) if kind == stat.S_IFCHR else os.makedev(7, 200)
    meta = ObjectMeta(mtime_ns=MTIME, mode=kind | 0o600, uid=0, gid=0, rdev=rdev)
    info = prov.put_file("dev/node", write(tmp_path, b""), meta)
    st = os.lstat(base / "dev/node")
    assert stat.S_IFMT(st.st_mode) == kind and st.st_rdev == rdev
    assert (info.mode, info.rdev, info.size) == (kind | 0o600, rdev, 0)
    assert prov.head("dev/node").rdev == rdev
    (listed,) = prov.list("dev/")
    assert listed.rdev == rdev
    opened: list = []
    real_open = os.open

    def spy(path, flags, *a, **kw):
        if not flags & os.O_PATH:
            opened.append(path)
        return real_open(path, flags, *a, **kw)

    monkeypatch.setattr(local_mod.os, "open", spy)
    assert prov.get_range("dev/node", 0, 10) == b"" and list(prov.read_stream("dev/node")) == []
    assert opened == []
    monkeypatch.undo()
    assert prov.copy("dev/node", "dev/copy").rdev == rdev


def test_device_node_without_root_is_access_denied(prov, base, tmp_path, monkeypatch):
    def refused(*a, **kw):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(local_mod.os, "mknod", refused)
    with pytest.raises(AccessDenied, match="root"):
        prov.put_file("dev/x", write(tmp_path, b""), ObjectMeta(mtime_ns=MTIME, mode=stat.S_IFCHR | 0o600,
                                                               rdev=os.makedev(1, 3)))
    assert not _temps(base) and not os.path.lexists(base / "dev/x")


def test_put_file_refuses_a_folder_type(prov, tmp_path):
    with pytest.raises(ProviderError):
        prov.put_file("a/d", write(tmp_path, b""), ObjectMeta(mtime_ns=MTIME, mode=stat.S_IFDIR | 0o755))


# -- times ---------------------------------------------------------------------------------

def test_times_of_files(prov, base, tmp_path):
    info = prov.put_file("a/x", write(tmp_path, b"abc"), ObjectMeta(mtime_ns=MTIME, atime_ns=ATIME))
    st = os.lstat(base / "a/x")
    assert (st.st_atime_ns, st.st_mtime_ns) == (ATIME, MTIME)  # every nanosecond lands on the disk
    assert (info.ctime_ns, info.atime_ns) == (st.st_ctime_ns, st.st_atime_ns)
    assert info.ctime_ns > MTIME  # the disk's own
    assert prov.put_file("a/y", write(tmp_path, b"abc"), ObjectMeta(mtime_ns=MTIME)).atime_ns == MTIME
    before = prov.head("a/x")
    assert prov.get_range("a/x", 0, 3) == b"abc" and b"".join(prov.read_stream("a/x")) == b"abc"
    assert prov.head("a/x").atime_ns == before.atime_ns  # storefs' own reads are no access
    time.sleep(0.01)
    info = prov.set_meta("a/x", ObjectMeta(mtime_ns=5_250_000_000))
    assert (info.mtime_ns, info.atime_ns) == (5_250_000_000, ATIME) and info.ctime_ns > before.ctime_ns
    info = prov.set_meta("a/x", ObjectMeta(mtime_ns=5_250_000_000, atime_ns=6_750_000_000))
    assert info.atime_ns == 6_750_000_000
    (listed,) = [i for i in prov.list("a/") if i.key == "a/x"]
    assert (listed.mtime_ns, listed.atime_ns, listed.ctime_ns) == (info.mtime_ns, info.atime_ns, info.ctime_ns)
    copied = prov.copy("a/x", "a/z")
    assert (copied.mtime_ns, copied.atime_ns) == (5_250_000_000, 6_750_000_000)


# -- folders ---------------------------------------------------------------------------------

def _xattrs_ok(path: Path) -> bool:
    try:
        os.setxattr(path, "user.probe", b"1")
        os.removexattr(path, "user.probe")
        return True
    except OSError:
        return False


def test_folder_metadata_and_head_dir(prov, base, tmp_path):
    meta = ObjectMeta(mtime_ns=MTIME, atime_ns=ATIME, mode=stat.S_IFDIR | 0o750, uid=os.getuid(), gid=os.getgid(),
                      xattrs={"user.project": b"cats", "user.k": b"v"})
    prov.make_dir("t/image/", meta)
    keeps_xattrs = _xattrs_ok(base)
    d = prov.head_dir("t/image/")
    assert d is not None and d.is_dir and d.key == "t/image/" and d.size == 0
    assert (d.mode, d.uid, d.gid, d.mtime_ns) == (stat.S_IFDIR | 0o750, os.getuid(), os.getgid(), MTIME)
    assert d.atime_ns == ATIME
    assert d.ctime_ns == os.lstat(base / "t/image").st_ctime_ns
    assert d.xattrs == (meta.xattrs if keeps_xattrs else {})
    assert prov.head_dir("t/image") == d  # without the slash
    # an existing folder takes new metadata: mode, times, xattrs replaced
    prov.make_dir("t/image/", ObjectMeta(mtime_ns=12_500_000_000, mode=stat.S_IFDIR | 0o500, xattrs={"user.k": b"w"}))
    d2 = prov.head_dir("t/image/")
    assert (d2.mode, d2.mtime_ns) == (stat.S_IFDIR | 0o500, 12_500_000_000)
    assert d2.atime_ns == ATIME  # none given: kept
    assert d2.xattrs == ({"user.k": b"w"} if keeps_xattrs else {})
    (listed,) = prov.list("t/")
    assert (listed.mode, listed.mtime_ns, listed.atime_ns, listed.ctime_ns) == (d2.mode, d2.mtime_ns, d2.atime_ns,
                                                                                d2.ctime_ns)
    assert prov.head_dir("") is not None and prov.head_dir("") .is_dir
    assert prov.head_dir("missing/") is None
    prov.put_file("t/file", write(tmp_path, b"x"), ObjectMeta(mtime_ns=MTIME))
    assert prov.head_dir("t/file/") is None
    with pytest.raises(ProviderError):
        prov.make_dir("t/file/", ObjectMeta(mtime_ns=MTIME, mode=stat.S_IFDIR | 0o755))
    with pytest.raises(ProviderError):
        prov.make_dir("t/file/sub/", ObjectMeta(mtime_ns=MTIME, mode=stat.S_IFDIR | 0o755))
    with pytest.raises(NotFound):
        prov.head("t/image")  # a folder is not a file


def test_remove_dir_clears_stale_temp_links_and_nodes(prov, base):
    prov.make_dir("d/", ObjectMeta(mtime_ns=MTIME, mode=stat.S_IFDIR | 0o755))
    os.symlink("/etc", base / "d" / (TMP_PREFIX + "link"))
    os.mkfifo(base / "d" / (TMP_PREFIX + "fifo"))
    prov.remove_dir("d/")
    assert not os.path.lexists(base / "d")


# -- setuid / setgid from metadata ----------------------------------------------------------

SUID_FILE = stat.S_IFREG | stat.S_ISUID | stat.S_ISGID | 0o755
SGID_DIR = stat.S_IFDIR | stat.S_ISGID | 0o775


def test_setid_bits_stripped_when_not_root(prov, base, tmp_path, monkeypatch):
    monkeypatch.setattr(local_mod.os, "geteuid", lambda: 1000)
    own = {"uid": os.getuid(), "gid": os.getgid()}
    info = prov.put_file("a/x", write(tmp_path, b"#!/bin/sh\n"), ObjectMeta(mtime_ns=MTIME, mode=SUID_FILE, **own))
    assert stat.S_IMODE(info.mode) == 0o755
    info = prov.set_meta("a/x", ObjectMeta(mtime_ns=MTIME, mode=SUID_FILE, **own))
    assert stat.S_IMODE(info.mode) == 0o755
    info = prov.copy("a/x", "a/y", ObjectMeta(mtime_ns=MTIME, mode=SUID_FILE, **own))
    assert stat.S_IMODE(info.mode) == 0o755
    prov.make_dir("d/", ObjectMeta(mtime_ns=MTIME, mode=SGID_DIR, **own))
    assert stat.S_IMODE(os.lstat(base / "d").st_mode) == 0o775
    info = prov.put_file("a/p", write(tmp_path, b""), ObjectMeta(mtime_ns=MTIME, mode=stat.S_IFIFO | 0o6644, **own))
    assert stat.S_IMODE(info.mode) == 0o644


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root")
def test_setid_bits_as_root_only_with_the_owner_applied(prov, base, tmp_path):
    info = prov.put_file("a/x", write(tmp_path, b"#!/bin/sh\n"), ObjectMeta(mtime_ns=MTIME, mode=SUID_FILE,
                                                                          uid=NOBODY, gid=NOBODY))
    st = os.lstat(base / "a/x")
    assert stat.S_IMODE(st.st_mode) == 0o6755 and (st.st_uid, st.st_gid) == (NOBODY, NOBODY)
    assert stat.S_IMODE(info.mode) == 0o6755
    # no owner in the metadata: a root-owned setuid file from metadata is never made
    info = prov.put_file("a/y", write(tmp_path, b"#!/bin/sh\n"), ObjectMeta(mtime_ns=MTIME, mode=SUID_FILE))
    assert stat.S_IMODE(info.mode) == 0o755
    prov.make_dir("d/", ObjectMeta(mtime_ns=MTIME, mode=SGID_DIR, uid=NOBODY, gid=NOBODY))
    assert stat.S_IMODE(os.lstat(base / "d").st_mode) == 0o2775
    # a copy without metadata keeps the source's owner, so root may keep the bits
    assert stat.S_IMODE(prov.copy("a/x", "a/z").mode) == 0o6755


_AS_NOBODY = r"""
import json, os, stat, sys
sys.path.insert(0, sys.argv[1])
from storefs.errors import AccessDenied
from storefs.providers import ObjectMeta
from storefs.providers.local import LocalProvider

NS = 1_000_000_000  # times are integer nanoseconds
base, src = sys.argv[2], sys.argv[3]
p = LocalProvider("l", base, create=True)
p.check()
out = {}
out["file"] = p.put_file("a/x", src, ObjectMeta(mtime_ns=NS, mode=0o106755, uid=os.getuid(), gid=os.getgid())).mode
p.make_dir("d/", ObjectMeta(mtime_ns=1_000_000_000, mode=0o42775, uid=os.getuid(), gid=os.getgid()))
out["dir"] = os.lstat(os.path.join(base, "d")).st_mode
try:
    p.put_file("dev", src, ObjectMeta(mtime_ns=1_000_000_000, mode=stat.S_IFCHR | 0o600, rdev=os.makedev(1, 3)))
    out["device"] = "made"
except AccessDenied as e:
    out["device"] = "AccessDenied: " + str(e)
out["lnk"] = p.put_file("l", src, ObjectMeta(mtime_ns=1_000_000_000, mode=0o120777)).mode
print(json.dumps(out))
"""


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"), reason="needs root and setpriv")
def test_as_a_real_non_root_user():
    python = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else None
    if python is None:
        pytest.skip("no system python3 that another user may run")
    repo = str(Path(__file__).resolve().parents[2])
    work = tempfile.mkdtemp(prefix="storefs-nobody-")
    try:
        os.chown(work, NOBODY, NOBODY)
        src = os.path.join(work, "src")
        Path(src).write_bytes(b"target")
        os.chown(src, NOBODY, NOBODY)
        r = subprocess.run(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "--", python,
                            "-c", _AS_NOBODY, repo, os.path.join(work, "data"), src],
                           capture_output=True, text=True, timeout=60)
        if r.returncode != 0 and "Permission denied" in r.stderr and "storefs" not in r.stderr:
            pytest.skip(f"uid {NOBODY} cannot run {python} or read the repository")
        assert r.returncode == 0, r.stderr
        out = json.loads(r.stdout)
        assert out["file"] == stat.S_IFREG | 0o755 and out["dir"] == stat.S_IFDIR | 0o775
        assert out["device"].startswith("AccessDenied") and "root" in out["device"]
        assert out["lnk"] == LINK
    finally:
        shutil.rmtree(work, ignore_errors=True)
