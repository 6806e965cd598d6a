"""LocalProvider: round trips, atomic writes, kept metadata, and keys that must not escape base_path."""

from __future__ import annotations

import errno
import os
import stat

import pytest

from storefs.errors import Conflict, NotEmpty, NotFound, ProviderError, Rejected
from storefs.providers import ObjectMeta
from storefs.providers import local as local_mod
from storefs.providers.local import TMP_PREFIX, LocalProvider

MTIME = 1700000000_123456789  # integer ns: a local disk keeps every one


@pytest.fixture
def base(tmp_path):
    return tmp_path / "data"


@pytest.fixture
def prov(base):
    p = LocalProvider("local", str(base), create=True)
    p.check()
    return p


@pytest.fixture
def src(tmp_path):
    f = tmp_path / "src.bin"
    f.write_bytes(bytes(range(256)) * 4096 + b"tail")  # > 1 MiB: several copy chunks
    return f


def _has_user_xattrs(path) -> bool:
    probe = path / "xattr-probe"
    probe.write_bytes(b"")
    try:
        os.setxattr(probe, "user.probe", b"1")
        return True
    except OSError as e:
        if e.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
            return False
        raise
    finally:
        probe.unlink()


def _temps(base) -> list[str]:
    return [str(p) for p in base.rglob(TMP_PREFIX + "*")]


def test_check_creates_folder_and_refuses_a_file(tmp_path):
    LocalProvider("l", str(tmp_path / "a" / "b"), create=True, create_parents=True).check()
    assert (tmp_path / "a" / "b").is_dir()
    (tmp_path / "f").write_bytes(b"x")
    with pytest.raises(ProviderError, match=str(tmp_path / "f")):
        LocalProvider("l", str(tmp_path / "f")).check()
    assert not _temps(tmp_path)


def test_put_head_get_range(prov, base, src):
    data = src.read_bytes()
    info = prov.put_file("t1/image/b1/a1/x.png", str(src), ObjectMeta(mtime_ns=MTIME, mode=0o100640))
    assert prov.head("t1/image/b1/a1/x.png") == info
    assert info.key == "t1/image/b1/a1/x.png" and info.size == len(data) and not info.is_dir
    assert info.mtime_ns == MTIME and stat.S_IMODE(info.mode) == 0o640 and stat.S_ISREG(info.mode)
    assert info.etag and info.content_type is None
    assert (base / "t1/image/b1/a1/x.png").read_bytes() == data
    assert prov.get_range("t1/image/b1/a1/x.png", 0, 10) == data[:10]
    assert prov.get_range("t1/image/b1/a1/x.png", len(data) - 2, 100) == b"il"
    assert prov.get_range("t1/image/b1/a1/x.png", len(data) + 5, 10) == b""
    assert prov.dir_exists("t1/image/") and prov.dir_exists("t1/image/b1/a1/")
    assert not prov.dir_exists("t1/video/") and not prov.dir_exists("t1/image/b1/a1/x.png/")
    assert not _temps(base)


def test_overwrite_changes_etag(prov, src, tmp_path):
    first = prov.put_file("a/x", str(src), ObjectMeta(mtime_ns=MTIME))
    small = tmp_path / "small"
    small.write_bytes(b"new")
    second = prov.put_file("a/x", str(small), ObjectMeta(mtime_ns=MTIME + 1))
    assert second.size == 3 and second.etag != first.etag
    assert prov.get_range("a/x", 0, 100) == b"new"


def test_head_and_get_range_missing(prov, base):
    with pytest.raises(NotFound):
        prov.head("nope/x")
    with pytest.raises(NotFound):
        prov.get_range("nope/x", 0, 1)
    (base / "d").mkdir()
    with pytest.raises(NotFound):
        prov.head("d")  # a folder is not a file
    with pytest.raises(NotFound):
        prov.get_range("d", 0, 1)


def test_list(prov, base, src):
    meta = ObjectMeta(mtime_ns=MTIME)
    prov.put_file("t1/image/b1/a1/x.png", str(src), meta)
    prov.put_file("t1/image/b1/a1/y.txt", str(src), meta)
    prov.make_dir("t1/image/b1/a1/sub/", ObjectMeta(mtime_ns=MTIME, mode=0o040750))
    (base / "t1/image/b1/a1" / (TMP_PREFIX + "deadbeef")).write_bytes(b"half")
    os.mkfifo(base / "t1/image/b1/a1/fifo")
    got = {i.key: i for i in prov.list("t1/image/b1/a1/")}
    assert set(got) == {"t1/image/b1/a1/x.png", "t1/image/b1/a1/y.txt", "t1/image/b1/a1/sub/", "t1/image/b1/a1/fifo"}
    fifo = got.pop("t1/image/b1/a1/fifo")  # a FIFO is an object too: its type in the mode, zero bytes
    assert stat.S_ISFIFO(fifo.mode) and fifo.size == 0 and not fifo.is_dir
    assert got["t1/image/b1/a1/sub/"].is_dir and got["t1/image/b1/a1/sub/"].name == "sub"
    assert got["t1/image/b1/a1/sub/"].mtime_ns == MTIME
    assert stat.S_IMODE(got["t1/image/b1/a1/sub/"].mode) == 0o750
    x = got["t1/image/b1/a1/x.png"]
    assert x.size == src.stat().st_size and x.mtime_ns == MTIME and x.xattrs == {}
    assert x.etag == prov.head("t1/image/b1/a1/x.png").etag
    assert {i.key for i in prov.list("t1/image/b1/a1")} == set(got) | {fifo.key}  # prefix without '/'
    assert [i.key for i in prov.list("")] == ["t1/"]
    assert list(prov.list("missing/folder/")) == []
    assert list(prov.list("t1/image/b1/a1/x.png/")) == []


def test_copy_keeps_metadata_or_replaces_it(prov, base, src):
    prov.put_file("a/x", str(src), ObjectMeta(mtime_ns=MTIME, mode=0o100600))
    c = prov.copy("a/x", "b/c/y")
    assert (base / "b/c/y").read_bytes() == src.read_bytes()
    assert c.mtime_ns == MTIME and stat.S_IMODE(c.mode) == 0o600 and c.size == src.stat().st_size
    r = prov.copy("a/x", "b/z", ObjectMeta(mtime_ns=12_345_500_000_000, mode=0o100644))
    assert r.mtime_ns == 12_345_500_000_000 and stat.S_IMODE(r.mode) == 0o644
    assert prov.head("a/x").mtime_ns == MTIME  # source untouched
    with pytest.raises(NotFound):
        prov.copy("a/missing", "b/w")
    assert not (base / "b/w").exists() and not _temps(base)


def test_failing_write_leaves_no_temp_file(prov, base, src, monkeypatch):
    prov.put_file("a/x", str(src), ObjectMeta(mtime_ns=MTIME))

    def boom(a, b, **kw):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(local_mod.os, "replace", boom)
    with pytest.raises(ProviderError, match="a/y"):
        prov.copy("a/x", "a/y")
    with pytest.raises(ProviderError, match="No space"):
        prov.put_file("a/x", str(src), ObjectMeta(mtime_ns=1_000_000_000))
    monkeypatch.undo()
    assert not _temps(base) and not (base / "a/y").exists()
    assert prov.head("a/x").mtime_ns == MTIME  # the old object is still whole
    with pytest.raises(ProviderError):
        prov.put_file("a/z", str(base / "no-such-source"), ObjectMeta(mtime_ns=MTIME))
    assert not _temps(base)


def test_set_meta(prov, src):
    prov.put_file("a/x", str(src), ObjectMeta(mtime_ns=MTIME, mode=0o100644))
    info = prov.set_meta("a/x", ObjectMeta(mtime_ns=42_250_000_000, mode=0o100400, uid=os.getuid(), gid=os.getgid()))
    assert info.mtime_ns == 42_250_000_000 and stat.S_IMODE(info.mode) == 0o400
    assert info.uid == os.getuid() and info.gid == os.getgid()
    with pytest.raises(NotFound):
        prov.set_meta("a/missing", ObjectMeta(mtime_ns=1_000_000_000))


def test_xattrs_kept_on_put_copy_set_meta(prov, base, src, tmp_path):
    if not _has_user_xattrs(tmp_path):
        pytest.skip("the tmp filesystem has no user xattrs")
    meta = ObjectMeta(mtime_ns=MTIME, xattrs={"user.prompt": b"a cat", "user.seed": b"42"})
    assert prov.put_file("a/x", str(src), meta).xattrs == meta.xattrs
    os.setxattr(base / "a/x", "user.storefs.state", b"clean")  # never reported, never removed
    assert prov.head("a/x").xattrs == meta.xattrs
    assert prov.copy("a/x", "a/y").xattrs == meta.xattrs
    assert prov.copy("a/x", "a/z", ObjectMeta(mtime_ns=MTIME, xattrs={"user.k": b"v"})).xattrs == {"user.k": b"v"}
    info = prov.set_meta("a/x", ObjectMeta(mtime_ns=MTIME, mode=0o100444, xattrs={"user.prompt": b"a dog"}))
    assert info.xattrs == {"user.prompt": b"a dog"} and stat.S_IMODE(info.mode) == 0o444
    assert os.getxattr(base / "a/x", "user.storefs.state") == b"clean"
    assert all(i.xattrs == {} for i in prov.list("a/"))


def test_delete_keeps_folder(prov, base, src):
    prov.put_file("a/b/x", str(src), ObjectMeta(mtime_ns=MTIME))
    prov.delete("a/b/x")
    prov.delete("a/b/x")  # already gone: fine
    prov.delete("nope/x")
    assert not (base / "a/b/x").exists() and prov.dir_exists("a/b/")
    assert list(prov.list("a/b/")) == []


def test_make_dir_and_remove_dir(prov, base, src):
    prov.make_dir("t1/image/", ObjectMeta(mtime_ns=MTIME, mode=0o040700))
    st = (base / "t1/image").stat()
    assert stat.S_IMODE(st.st_mode) == 0o700 and st.st_mtime_ns == MTIME
    prov.make_dir("t1/image/", ObjectMeta(mtime_ns=MTIME, mode=0o040755))  # exists: fine
    prov.put_file("t1/image/x", str(src), ObjectMeta(mtime_ns=MTIME))
    with pytest.raises(NotEmpty):
        prov.remove_dir("t1/image/")
    prov.delete("t1/image/x")
    (base / "t1/image" / (TMP_PREFIX + "0123")).write_bytes(b"stale")
    prov.remove_dir("t1/image/")
    assert not (base / "t1/image").exists()
    prov.remove_dir("t1/image/")  # missing: fine
    with pytest.raises(ProviderError):
        prov.remove_dir("")  # never the base folder itself
    assert base.is_dir()


@pytest.mark.parametrize("key", ["../x", "/abs", "a/../../b", "a/./b", "a//b", "a/b\0c", "..", "a/.."])
def test_escaping_keys_refused(prov, src, key):
    with pytest.raises(ProviderError):
        prov.head(key)
    with pytest.raises(ProviderError):
        prov.put_file(key, str(src), ObjectMeta(mtime_ns=MTIME))
    with pytest.raises(ProviderError):
        prov.delete(key)
    with pytest.raises(ProviderError):
        list(prov.list(key + "/"))


def test_symlinks_are_objects_never_followed(prov, base, src, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    secret = outside / "secret"
    secret.write_bytes(b"secret")
    os.chmod(secret, 0o600)
    os.utime(secret, ns=(10**18, 10**18))
    (base / "t1").mkdir()
    (base / "t1/dirlink").symlink_to(outside)
    (base / "t1/filelink").symlink_to(secret)
    got = {i.key: i for i in prov.list("t1/")}
    assert set(got) == {"t1/dirlink", "t1/filelink"}  # links, not folders: nothing below them is listed
    assert all(stat.S_ISLNK(i.mode) and not i.is_dir for i in got.values())
    assert got["t1/filelink"].size == len(str(secret))
    assert list(prov.list("t1/dirlink/")) == []
    assert not prov.dir_exists("t1/dirlink/") and prov.head_dir("t1/dirlink/") is None
    assert prov.get_range("t1/filelink", 0, 1000) == str(secret).encode()  # the target, never the file
    linked = prov.set_meta("t1/filelink", ObjectMeta(mtime_ns=1_000_000_000, mode=0o100777))
    assert linked.mtime_ns == 1_000_000_000 and stat.S_ISLNK(linked.mode)
    assert prov.copy("t1/filelink", "t1/stolen").size == len(str(secret))
    assert os.readlink(base / "t1/stolen") == str(secret)
    for key in ("t1/dirlink/secret", "t1/dirlink/new"):
        with pytest.raises(NotFound):
            prov.head(key)
        with pytest.raises(NotFound):
            prov.get_range(key, 0, 10)
        with pytest.raises(ProviderError):
            prov.put_file(key, str(src), ObjectMeta(mtime_ns=MTIME))
        prov.delete(key)  # nothing of ours there: nothing to delete
    with pytest.raises(ProviderError):
        prov.make_dir("t1/dirlink/sub/", ObjectMeta(mtime_ns=MTIME, mode=0o040777))
    with pytest.raises(ProviderError):
        prov.make_dir("t1/dirlink/", ObjectMeta(mtime_ns=MTIME, mode=0o040777))
    prov.remove_dir("t1/dirlink/")  # a symlink is no folder of ours: nothing to remove
    # writing over a file symlink replaces the link, never the file it points to
    prov.put_file("t1/filelink", str(src), ObjectMeta(mtime_ns=MTIME))
    assert not (base / "t1/filelink").is_symlink()
    prov.delete("t1/stolen")
    assert secret.read_bytes() == b"secret" and stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert secret.stat().st_mtime_ns == 10**18
    assert sorted(p.name for p in outside.iterdir()) == ["secret"]
    assert (base / "t1/dirlink").is_symlink() and not (base / "t1/stolen").exists()


def test_tmp_names_reserved_and_url(prov, src, base):
    with pytest.raises(ProviderError):
        prov.put_file("a/" + TMP_PREFIX + "x", str(src), ObjectMeta(mtime_ns=MTIME))
    prov.put_file("a/b c.png", str(src), ObjectMeta(mtime_ns=MTIME))
    assert prov.url("a/b c.png") == "file://" + str(base) + "/a/b%20c.png"
    assert prov.kind == "local"


def test_filesystem_without_xattrs_warns_once(prov, src, monkeypatch, caplog):
    def unsupported(*a, **k):
        raise OSError(errno.ENOTSUP, "Operation not supported")

    monkeypatch.setattr(local_mod.os, "setxattr", unsupported)
    monkeypatch.setattr(local_mod.os, "listxattr", unsupported)
    meta = ObjectMeta(mtime_ns=MTIME, xattrs={"user.prompt": b"x"})
    assert prov.put_file("a/x", str(src), meta).xattrs == {}
    assert prov.set_meta("a/x", meta).mtime_ns == MTIME
    assert sum("no user xattrs" in r.getMessage() for r in caplog.records) == 1


# -- issue 20: conditions ----------------------------------------------------------------------

def test_etag_names_one_version_even_with_the_same_size_and_mtime(prov, base, tmp_path):
    """Two writes of equal size with the same mtime in their metadata are different versions (a new inode)."""
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_bytes(b"version A")
    b.write_bytes(b"version B")
    first = prov.put_file("t/x", str(a), ObjectMeta(mtime_ns=MTIME))
    second = prov.put_file("t/x", str(b), ObjectMeta(mtime_ns=MTIME))
    assert first.etag != second.etag and prov.head("t/x").etag == second.etag
    with pytest.raises(Conflict):
        prov.put_file("t/x", str(a), ObjectMeta(mtime_ns=MTIME), if_match=first.etag)
    assert (base / "t" / "x").read_bytes() == b"version B" and _temps(base) == []


def test_an_etag_from_before_conditional_writes_still_names_its_version(prov, base, tmp_path):
    """A cache journal written by an older storefs holds mtime-size etags: an edit of such a file
    replaces it (no false conflict), and a stale one still meets the conflict."""
    src = tmp_path / "s"
    src.write_bytes(b"ours")
    prov.put_file("t/x", str(src), ObjectMeta(mtime_ns=MTIME))
    st = os.stat(base / "t" / "x")
    legacy = f"{st.st_mtime_ns:x}-{st.st_size:x}"
    prov.put_file("t/x", str(src), ObjectMeta(mtime_ns=MTIME + 5), if_match=legacy)
    with pytest.raises(Conflict):
        prov.put_file("t/x", str(src), ObjectMeta(mtime_ns=MTIME), if_match=legacy)  # the file changed since


def test_a_change_made_in_place_by_another_program_is_caught(prov, base, tmp_path):
    src = tmp_path / "s"
    src.write_bytes(b"ours")
    seen = prov.put_file("t/x", str(src), ObjectMeta(mtime_ns=MTIME))
    with open(base / "t" / "x", "r+b") as f:  # an editor writing in place: same inode, new mtime
        f.write(b"THEM")
    for change in (lambda: prov.put_file("t/x", str(src), ObjectMeta(mtime_ns=MTIME), if_match=seen.etag),
                   lambda: prov.copy("t/x", "t/y", if_match=seen.etag),
                   lambda: prov.delete("t/x", if_match=seen.etag)):
        with pytest.raises(Conflict):
            change()
    assert (base / "t" / "x").read_bytes() == b"THEM" and not (base / "t" / "y").exists()


def test_if_absent_links_never_replaces(prov, base, tmp_path):
    """if_absent puts the finished entry in place with link(2): a file, a symlink or a folder already there wins."""
    src = tmp_path / "s"
    src.write_bytes(b"ours")
    (base / "t").mkdir(parents=True)
    (base / "t" / "file").write_bytes(b"theirs")
    os.symlink("elsewhere", base / "t" / "link")
    (base / "t" / "dir").mkdir()
    for name in ("file", "link"):
        with pytest.raises(Conflict):
            prov.put_file(f"t/{name}", str(src), ObjectMeta(mtime_ns=MTIME), if_absent=True)
    with pytest.raises(ProviderError, match="a folder is there"):
        prov.put_file("t/dir", str(src), ObjectMeta(mtime_ns=MTIME), if_absent=True)
    assert (base / "t" / "file").read_bytes() == b"theirs" and os.readlink(base / "t" / "link") == "elsewhere"
    link = tmp_path / "target"
    link.write_bytes(b"a/target")
    info = prov.put_file("t/newlink", str(link), ObjectMeta(mtime_ns=MTIME, mode=stat.S_IFLNK | 0o777), if_absent=True)
    assert os.readlink(base / "t" / "newlink") == "a/target" and stat.S_ISLNK(info.mode)
    assert _temps(base) == []


def test_if_absent_without_hard_links_checks_just_before(prov, base, tmp_path, monkeypatch, caplog):
    """A base_path on a file system without link(2) still takes new files (checked, then renamed), with a warning."""
    src = tmp_path / "s"
    src.write_bytes(b"ours")

    def no_links(*args, **kw):
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(local_mod.os, "link", no_links)
    prov.put_file("t/x", str(src), ObjectMeta(mtime_ns=MTIME), if_absent=True)
    with pytest.raises(Conflict):
        prov.put_file("t/x", str(src), ObjectMeta(mtime_ns=MTIME), if_absent=True)
    prov.put_file("t/y", str(src), ObjectMeta(mtime_ns=MTIME), if_absent=True)
    assert (base / "t" / "x").read_bytes() == b"ours" and _temps(base) == []
    assert caplog.text.count("has no hard links") == 1


def test_a_name_the_file_system_refuses_is_a_permanent_refusal(prov, src):
    """ENAMETOOLONG is Rejected (the core parks the change), not an error to retry forever."""
    with pytest.raises(Rejected, match="refuses the name"):
        prov.put_file("t/" + "n" * 300, str(src), ObjectMeta(mtime_ns=MTIME))
    with pytest.raises(Rejected):
        prov.put_file("t/" + "d" * 300 + "/x", str(src), ObjectMeta(mtime_ns=MTIME))
