"""Symlinks, FIFOs, sockets, device nodes and hard links (issue 18), used as programs use them:
ln -s / readlink / cd / ls / find -L, cp -a, rsync -a, tar, git, a Hugging Face-style cache,
cat and echo through a FIFO, a bound Unix socket, mknod; each checked again after an
empty-cache remount, and in the storage format s3fs shares (a link is an object whose body is
the target and whose x-amz-meta-mode is S_IFLNK|0777; a special file is a zero-byte object with
the type in its mode; on the local provider real links and special files).
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import socket
import stat
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from storefs.testing.backends import S_IFLNK_0777, is_s3, plant, s3_head
from storefs.testing.data import ART, create_file, expect_errno, payload
from storefs.testing.mount import run
from storefs.testing.users import NOBODY, as_user, expect_statuses, user_run

pytestmark = pytest.mark.timeout(300)


# --------------------------------------------------------------------------- tree helpers


def tree(root: str | os.PathLike) -> dict[str, tuple]:
    """Every entry below root without following links: folder -> ("d", mode), file -> ("f",
    sha256, mode), link -> ("l", target), other -> (type bits, mode)."""
    root = os.fspath(root)
    out: dict[str, tuple] = {}

    def walk(d: str) -> None:
        with os.scandir(d) as it:
            for e in it:
                rel = os.path.relpath(e.path, root)
                st = e.stat(follow_symlinks=False)
                if stat.S_ISLNK(st.st_mode):
                    out[rel] = ("l", os.readlink(e.path))
                elif stat.S_ISDIR(st.st_mode):
                    out[rel] = ("d", stat.S_IMODE(st.st_mode))
                    walk(e.path)
                elif stat.S_ISREG(st.st_mode):
                    with open(e.path, "rb") as f:
                        out[rel] = ("f", hashlib.sha256(f.read()).hexdigest(), stat.S_IMODE(st.st_mode))
                else:
                    out[rel] = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode))

    walk(root)
    return out


def make_link_tree(root: Path) -> None:
    """Files, folders and the links real projects carry (relative, into folders, upwards,
    dangling, absolute, `latest -> checkpoint`, node_modules/.bin)."""
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / "checkpoint-1000").mkdir()
    (root / "node_modules" / "pkg" / "bin").mkdir(parents=True)
    (root / "node_modules" / ".bin").mkdir()
    (root / "a.txt").write_bytes(b"alpha\n")
    (root / "sub" / "b.bin").write_bytes(payload("b", 70_000))
    (root / "sub" / "deeper" / "c.txt").write_bytes(b"c")
    (root / "checkpoint-1000" / "model.bin").write_bytes(payload("ckpt", 5000))
    (root / "node_modules" / "pkg" / "bin" / "cli.js").write_bytes(b"#!/usr/bin/env node\n")
    os.chmod(root / "node_modules" / "pkg" / "bin" / "cli.js", 0o755)
    os.symlink("a.txt", root / "link_rel")
    os.symlink("sub/b.bin", root / "link_sub")
    os.symlink("../a.txt", root / "sub" / "up")
    os.symlink("sub", root / "dirlink")
    os.symlink("nowhere/missing", root / "dangling")
    os.symlink("/nonexistent/abs/target", root / "abs")
    os.symlink("checkpoint-1000", root / "latest")
    os.symlink("../pkg/bin/cli.js", root / "node_modules" / ".bin" / "cli")


# --------------------------------------------------------------------------- ln -s, readlink, lstat


def test_symlinks_and_s3fs_form(store):
    """ln -s (relative, absolute, dangling, to a folder), readlink, lstat, cd/ls/find -L through a
    folder link, rename and unlink of links; links kept as s3fs keeps them (both ways) and as
    real links on the local provider; all again after an empty-cache remount."""
    art = store.mnt / ART
    art.mkdir(parents=True)
    data = payload("target", 10_000)
    create_file(art / "target.png", data)
    (art / "dir").mkdir()
    create_file(art / "dir" / "inner.txt", b"inner\n")
    abs_target = str(art / "target.png")
    links = {"rel": "target.png", "abs": abs_target, "dangling": "missing.png", "dirlink": "dir",
             "deep": "dir/inner.txt", "abs_dangling": "/nonexistent/x", "unicode": "dir/ñ-é 😀.txt"}
    run(["ln", "-s", "target.png", str(art / "rel")])
    run(["ln", "-s", abs_target, str(art / "abs")])
    for name in ("dangling", "dirlink", "deep", "abs_dangling", "unicode"):
        os.symlink(links[name], art / name)
    create_file(art / "dir" / "ñ-é 😀.txt", b"u")
    os.symlink("target.png", art / "moved_src")
    os.symlink("target.png", art / "gone")

    def check() -> None:
        for name, target in links.items():
            st = os.lstat(art / name)
            assert stat.S_ISLNK(st.st_mode), f"{name}: not a link ({oct(st.st_mode)})"
            assert st.st_size == len(target.encode()), f"{name}: size {st.st_size} != {len(target.encode())}"
            assert stat.S_IMODE(st.st_mode) == 0o777
            assert os.readlink(art / name) == target
        assert (art / "rel").read_bytes() == data and (art / "abs").read_bytes() == data
        assert stat.S_ISREG(os.stat(art / "rel").st_mode) and os.stat(art / "rel").st_size == len(data)
        assert (art / "deep").read_bytes() == b"inner\n"
        assert (art / "unicode").read_bytes() == b"u"
        expect_errno(errno.ENOENT, os.stat, art / "dangling")
        assert os.path.lexists(art / "dangling") and not os.path.exists(art / "dangling")
        out = run(["sh", "-c", "cd dirlink && pwd && cat inner.txt && ls"], cwd=str(art)).stdout
        assert out.splitlines() == [f"{art}/dirlink", "inner", "inner.txt", "ñ-é 😀.txt"]
        assert run(["ls", str(art / "dirlink") + "/"]).stdout.split("\n")[0] == "inner.txt"
        found = sorted(run(["find", "-L", str(art), "-type", "f"]).stdout.splitlines())
        assert f"{art}/dirlink/inner.txt" in found and f"{art}/rel" in found
        long = run(["ls", "-l", str(art)]).stdout
        assert any(line.startswith("l") and "rel -> target.png" in line for line in long.splitlines()), long
        with os.scandir(art) as it:
            kinds = {e.name: e.is_symlink() for e in it}
        assert all(kinds[name] for name in links) and not kinds["target.png"] and not kinds["dir"]

    check()
    # rename and unlink act on the link, never on its target
    os.rename(art / "moved_src", art / "moved")
    assert os.readlink(art / "moved") == "target.png" and not os.path.lexists(art / "moved_src")
    os.unlink(art / "gone")
    assert not os.path.lexists(art / "gone") and (art / "target.png").read_bytes() == data
    os.rename(art / "dirlink", art / "dirlink2")
    assert os.readlink(art / "dirlink2") == "dir" and (art / "dir" / "inner.txt").exists()
    os.rename(art / "dirlink2", art / "dirlink")
    # a link's own times and owner (cp -a and tar set them with lutimes / lchown)
    os.utime(art / "rel", ns=(1_500_000_000_000_000_000, 1_500_000_000_000_000_000), follow_symlinks=False)
    os.chown(art / "rel", 65533, 65533, follow_symlinks=False)
    st = os.lstat(art / "rel")
    assert (st.st_mtime_ns, st.st_uid, st.st_gid) == (1_500_000_000_000_000_000, 65533, 65533)
    assert os.stat(art / "target.png").st_uid == 0, "lchown changed the target"

    store.flush()
    if is_s3(store):
        for name, target in links.items():
            h = s3_head(store, f"{ART}/{name}")
            assert h is not None, f"no object for link {name}"
            assert h["Metadata"].get("mode") == str(S_IFLNK_0777), (name, h["Metadata"])
            assert h["ContentType"] == "application/octet-stream", (name, h["ContentType"])
            assert store.provider_read(f"{ART}/{name}") == target.encode(), name
        md = s3_head(store, f"{ART}/rel")["Metadata"]
        assert md.get("uid") == "65533" and float(md["mtime"]) == 1_500_000_000
        # a link as s3fs writes it, planted behind storefs's back
        plant(store, f"{ART}/planted", b"target.png", {"mode": str(S_IFLNK_0777), "mtime": "1600000000"})
        plant(store, f"{ART}/planted_dir", b"dir", {"mode": str(S_IFLNK_0777), "mtime": "1600000000",
                                                      "uid": "0", "gid": "0"})
    else:
        for name, target in links.items():
            p = store.data / ART / name
            assert p.is_symlink() and os.readlink(p) == target, name
        st = os.lstat(store.data / ART / "rel")
        assert (st.st_mtime_ns, st.st_uid) == (1_500_000_000_000_000_000, 65533)
        os.symlink("target.png", store.data / ART / "planted")
        os.symlink("dir", store.data / ART / "planted_dir")
    links["moved"] = "target.png"
    store.remount(empty_cache=True)
    check()
    assert not os.path.lexists(art / "gone") and not os.path.lexists(art / "moved_src")
    assert os.readlink(art / "planted") == "target.png" and (art / "planted").read_bytes() == data
    assert stat.S_ISLNK(os.lstat(art / "planted").st_mode) and os.lstat(art / "planted").st_size == len("target.png")
    assert os.listdir(art / "planted_dir") == os.listdir(art / "dir")
    st = os.lstat(art / "rel")
    assert (st.st_mtime_ns, st.st_uid, st.st_gid) == (1_500_000_000_000_000_000, 65533, 65533)


# --------------------------------------------------------------------------- real programs


def test_link_trees_with_tools(store, tmp_path):
    """cp -a, rsync -a and tar -x of a tree with links into the mount, cp -a and tar -c back out,
    a git clone of a repository with links, and a Hugging Face-style cache; all again after an
    empty-cache remount."""
    src = tmp_path / "src"
    make_link_tree(src)
    want = tree(src)
    art = store.mnt / ART
    art.mkdir(parents=True)

    run(["cp", "-a", str(src), str(art / "cpa")])
    run(["rsync", "-a", f"{src}/", f"{art}/rs/"])
    run(["tar", "-C", str(src), "-cf", str(tmp_path / "src.tar"), "."])
    (art / "tx").mkdir()
    run(["tar", "-C", str(art / "tx"), "-xf", str(tmp_path / "src.tar")])

    # a git repository with a file link and a folder link, cloned into the mount
    repo = tmp_path / "repo"
    genv = {**os.environ, "HOME": str(tmp_path), "GIT_CONFIG_NOSYSTEM": "1", "GIT_AUTHOR_NAME": "t",
            "GIT_AUTHOR_EMAIL": "t@example.com", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com"}
    make_link_tree(repo)
    run(["git", "init", "-q", "-b", "main", str(repo)], env=genv)
    run(["git", "-C", str(repo), "add", "-A"], env=genv)
    run(["git", "-C", str(repo), "commit", "-q", "-m", "links"], env=genv)
    run(["git", "clone", "-q", f"file://{repo}", str(art / "repo")], env=genv)
    repo_files = {k: v for k, v in tree(repo).items() if not k.startswith(".git")}

    # a Hugging Face hub cache: blobs named by hash, snapshot entries linking to them
    hub = art / "hub" / "models--org--tiny"
    blobs = {"config.json": b'{"hidden": 8}\n', "model.safetensors": payload("weights", 300_000),
             "tokenizer/vocab.txt": b"a\nb\n"}
    rev = "0123456789abcdef0123456789abcdef01234567"
    (hub / "blobs").mkdir(parents=True)
    (hub / "refs").mkdir()
    (hub / "refs" / "main").write_text(rev)
    for name, body in blobs.items():
        sha = hashlib.sha256(body).hexdigest()
        (hub / "blobs" / sha).write_bytes(body)
        link = hub / "snapshots" / rev / name
        link.parent.mkdir(parents=True, exist_ok=True)
        os.symlink("../" * (name.count("/") + 2) + f"blobs/{sha}", link)

    def check() -> None:
        for name in ("cpa", "rs", "tx"):
            got = tree(art / name)
            assert got == want, f"{name}: {sorted(set(got.items()) ^ set(want.items()))}"
        out = tmp_path / f"out-{time.monotonic_ns()}"
        run(["cp", "-a", str(art / "cpa"), str(out)])
        assert tree(out) == want
        back = tmp_path / f"back-{time.monotonic_ns()}"
        back.mkdir()
        run(["tar", "-C", str(art / "tx"), "-cf", str(back) + ".tar", "."])
        run(["tar", "-C", str(back), "-xf", str(back) + ".tar"])
        assert tree(back) == want
        want_bytes = (src / "checkpoint-1000" / "model.bin").read_bytes()
        assert (art / "cpa" / "latest" / "model.bin").read_bytes() == want_bytes
        assert os.readlink(art / "rs" / "node_modules" / ".bin" / "cli") == "../pkg/bin/cli.js"
        assert os.access(art / "rs" / "node_modules" / ".bin" / "cli", os.X_OK)

        assert run(["git", "-C", str(art / "repo"), "status", "--porcelain"], env=genv).stdout == ""
        got = {k: v for k, v in tree(art / "repo").items() if not k.startswith(".git")}
        assert {k: v[:2] for k, v in got.items()} == {k: v[:2] for k, v in repo_files.items()}
        assert os.readlink(art / "repo" / "latest") == "checkpoint-1000"
        assert run(["git", "-C", str(art / "repo"), "ls-files", "-s", "latest"], env=genv).stdout.startswith("120000")

        snap = hub / "snapshots" / rev
        for name, body in blobs.items():
            assert (snap / name).read_bytes() == body, name
            assert stat.S_ISLNK(os.lstat(snap / name).st_mode)
            assert os.path.realpath(snap / name) == str(hub / "blobs" / hashlib.sha256(body).hexdigest())
        assert (hub / "refs" / "main").read_text() == rev

    check()
    store.remount(empty_cache=True)
    check()


# --------------------------------------------------------------------------- links planted in base_path


@pytest.mark.parametrize("provider_kind", ["local"])
def test_local_planted_links_never_followed(shared_store):
    """Links planted in the local provider's folder that point outside it are shown as links and
    never followed by storefs: renaming or removing them through the mount touches only the link,
    and a folder swapped for a link behind the mount's back takes no uploads outside base_path."""
    s = shared_store
    base = s.data
    outside = Path(tempfile.mkdtemp(prefix="storefs-outside-"))
    try:
        os.chmod(outside, 0o755)  # root's: uid 65534 may not write there itself
        (outside / "keep.txt").write_bytes(b"keep")
        passwd = Path("/etc/passwd").read_bytes()
        art = s.mnt / ART
        art.mkdir(parents=True)
        os.chmod(art, 0o777)
        create_file(art / "f.png", b"f")
        s.flush()
        os.symlink("/etc/passwd", base / ART / "pw")
        os.symlink("/etc", base / ART / "etcdir")
        os.symlink(str(outside), base / "t1/image/b1/evil")
        s.remount(empty_cache=True)

        for name, target in (("pw", "/etc/passwd"), ("etcdir", "/etc")):
            assert stat.S_ISLNK(os.lstat(art / name).st_mode) and os.readlink(art / name) == target
        assert stat.S_ISLNK(os.lstat(s.mnt / "t1/image/b1/evil").st_mode)
        assert os.readlink(s.mnt / "t1/image/b1/evil") == str(outside)
        listed = run(["find", str(s.mnt)]).stdout
        assert "passwd" not in listed and "keep.txt" not in listed and "hostname" not in listed

        os.rename(art / "pw", art / "pw2")
        assert os.readlink(art / "pw2") == "/etc/passwd"
        s.flush()
        assert os.readlink(base / ART / "pw2") == "/etc/passwd" and not os.path.lexists(base / ART / "pw")
        os.unlink(art / "pw2")
        run(["rm", "-rf", str(art / "etcdir"), str(s.mnt / "t1/image/b1/evil")])
        s.flush()
        assert not os.path.lexists(base / ART / "pw2")
        assert not os.path.lexists(base / ART / "etcdir") and not os.path.lexists(base / "t1/image/b1/evil")
        assert Path("/etc/passwd").read_bytes() == passwd and os.path.isdir("/etc")
        assert sorted(os.listdir(outside)) == ["keep.txt"]

        # a folder the kernel still knows as a folder is swapped for a link to `outside` in base_path:
        # what uid 65534 writes into it must not land outside (wherever else it goes)
        sub = art / "swap"
        sub.mkdir()
        os.chmod(sub, 0o777)
        create_file(sub / "first.png", b"1")
        s.flush()
        os.stat(sub)
        os.rename(base / ART / "swap", base / ART / "swap.real")
        os.symlink(str(outside), base / ART / "swap")
        res = as_user(NOBODY, [("write", sub / "x.png", b"escape"), ("mkdir", sub / "newdir")])
        deadline = time.monotonic() + 3  # a few write-back delays: uploads would have happened by now
        while time.monotonic() < deadline:
            assert sorted(os.listdir(outside)) == ["keep.txt"], f"storefs wrote outside base_path ({res})"
            time.sleep(0.1)
        # put a real folder back so that whatever is pending may land inside base_path
        os.unlink(base / ART / "swap")
        os.rename(base / ART / "swap.real", base / ART / "swap")
        s.flush(timeout=60)
        assert sorted(os.listdir(outside)) == ["keep.txt"]
        assert Path("/etc/passwd").read_bytes() == passwd
    finally:
        shutil.rmtree(outside, ignore_errors=True)


# --------------------------------------------------------------------------- FIFOs, sockets, devices, hard links


def _fifo_roundtrip(path: Path) -> None:
    """cat reads the FIFO in the background while the shell writes a line into it."""
    reader = subprocess.Popen(["cat", str(path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        run(["sh", "-c", f"echo hi > '{path}'"], timeout=20)
        out, err = reader.communicate(timeout=20)
    finally:
        if reader.poll() is None:
            reader.kill()
            reader.wait()
    assert out == b"hi\n", (out, err)


@pytest.fixture
def umask022():
    """mknod, mkfifo and bind modes go through the umask, as everywhere: a known one for the test."""
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def test_fifo_socket_device_and_hard_link(shared_store, umask022):
    """mkfifo, bind and mknod make special files whose I/O the kernel serves (devices never open:
    the mount is nodev), only root makes devices, hard links answer EPERM; zero-byte objects with
    the type bits in their mode (real special files on the local provider); after a remount too."""
    s = shared_store
    art = s.mnt / ART
    art.mkdir(parents=True)
    os.chmod(art, 0o777)
    create_file(art / "f.png", b"f")
    fifo, sock, chr_dev, blk_dev = art / "fifo", art / "sock", art / "null", art / "loop"
    os.mkfifo(fifo, 0o644)
    st = os.lstat(fifo)
    assert stat.S_ISFIFO(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o644 and st.st_size == 0
    _fifo_roundtrip(fifo)

    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        srv.bind(str(sock))
        srv.listen(1)
        assert stat.S_ISSOCK(os.lstat(sock).st_mode)
        cli = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        cli.settimeout(10)
        cli.connect(str(sock))  # the kernel finds the listening socket through the mount's inode
        conn, _ = srv.accept()
        cli.sendall(b"ping")
        assert conn.recv(4) == b"ping"
        conn.close()
        cli.close()
    finally:
        srv.close()

    os.mknod(chr_dev, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    os.mknod(blk_dev, stat.S_IFBLK | 0o660, os.makedev(7, 0))
    st = os.lstat(chr_dev)
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(1, 3) and stat.S_IMODE(st.st_mode) == 0o644
    st = os.lstat(blk_dev)
    assert stat.S_ISBLK(st.st_mode) and st.st_rdev == os.makedev(7, 0)
    # the mount is nodev: the kernel refuses to open device nodes on it (EACCES, as on any nodev mount)
    assert "nodev" in next(line for line in open("/proc/self/mounts") if f" {s.mnt} " in line)
    expect_errno(errno.EACCES, os.open, chr_dev, os.O_RDONLY)
    expect_errno(errno.EACCES, os.open, blk_dev, os.O_RDONLY)

    expect_errno(errno.EPERM, os.link, art / "f.png", art / "hard")
    expect_errno(errno.EPERM, os.link, fifo, art / "hard2")
    assert run(["ln", str(art / "f.png"), str(art / "hard3")], check=False).returncode != 0

    ops = [("mknod", art / "u_null", stat.S_IFCHR | 0o666, 1, 3),  # only root makes devices
           ("mkfifo", art / "u_fifo", 0o600),
           ("bind", art / "u_sock"),
           ("lstat", art / "u_fifo"),
           ("link", art / "f.png", art / "u_hard")]
    res = as_user(NOBODY, ops)
    expect_statuses(res, ["EPERM", "ok", "ok", "ok", "EPERM"], ops)
    assert stat.S_ISFIFO(res[3][1]["mode"]) and res[3][1]["uid"] == NOBODY
    assert stat.S_ISSOCK(os.lstat(art / "u_sock").st_mode) and os.lstat(art / "u_sock").st_uid == NOBODY
    assert not os.path.lexists(art / "u_null")

    s.flush()
    # a FIFO as s3fs writes it (a real one on the local provider), planted behind storefs's back
    if is_s3(s):
        plant(s, f"{ART}/p_fifo", b"", {"mode": str(stat.S_IFIFO | 0o640), "mtime": "1600000000"})
    else:
        os.mkfifo(s.data / ART / "p_fifo", 0o640)
    kinds = {"fifo": (stat.S_IFIFO, 0o644, 0), "sock": (stat.S_IFSOCK, None, 0),
             "null": (stat.S_IFCHR, 0o644, os.makedev(1, 3)), "loop": (stat.S_IFBLK, 0o640, os.makedev(7, 0)),
             "u_fifo": (stat.S_IFIFO, 0o600, 0)}
    for name, (kind, mode, rdev) in kinds.items():
        if is_s3(s):
            h = s3_head(s, f"{ART}/{name}")
            assert h is not None and h["ContentLength"] == 0, (name, h)
            m = int(h["Metadata"]["mode"])
            assert stat.S_IFMT(m) == kind and (mode is None or stat.S_IMODE(m) == mode), (name, h["Metadata"])
            if rdev:
                assert int(h["Metadata"].get("rdev", -1)) == rdev, (name, h["Metadata"])
        else:
            st = os.lstat(s.data / ART / name)
            assert stat.S_IFMT(st.st_mode) == kind and (mode is None or stat.S_IMODE(st.st_mode) == mode), name
            if rdev:
                assert st.st_rdev == rdev, name
    if is_s3(s):
        assert s3_head(s, f"{ART}/u_fifo")["Metadata"].get("uid") == str(NOBODY)
    else:
        assert os.lstat(s.data / ART / "u_fifo").st_uid == NOBODY

    s.remount(empty_cache=True)
    kinds["p_fifo"] = (stat.S_IFIFO, 0o640, 0)
    for name, (kind, mode, rdev) in kinds.items():
        st = os.lstat(art / name)
        assert stat.S_IFMT(st.st_mode) == kind, (name, oct(st.st_mode))
        assert mode is None or stat.S_IMODE(st.st_mode) == mode, (name, oct(st.st_mode))
        assert st.st_rdev == rdev, (name, st.st_rdev)
        assert st.st_size == 0
    assert os.lstat(art / "u_fifo").st_uid == NOBODY and os.lstat(art / "u_sock").st_uid == NOBODY
    _fifo_roundtrip(fifo)
    _fifo_roundtrip(art / "p_fifo")
    expect_errno(errno.EACCES, os.open, chr_dev, os.O_RDONLY)
    expect_errno(errno.EPERM, os.link, art / "f.png", art / "hard")
    # special files go away like files
    for name in ("fifo", "sock", "null", "loop"):
        os.unlink(art / name)
    assert sorted(os.listdir(art)) == ["f.png", "p_fifo", "u_fifo", "u_sock"]
    s.flush()
    assert not s.provider_exists(f"{ART}/fifo") and not s.provider_exists(f"{ART}/null")
    assert user_run(NOBODY, ["cat", str(art / "f.png")]).stdout == "f"
