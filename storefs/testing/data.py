"""Data for the mount tests: deterministic payloads, trees of files with modes and mtimes, and
small wrappers that go through the kernel (create, read, expect an errno)."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import random
import stat
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

ART = "t1/image/b1/a1"  # a valid artifact folder, relative to the mountpoint

def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def payload(seed: Any, size: int) -> bytes:
    """size deterministic pseudo-random bytes, distinct for distinct seeds."""
    return random.Random(str(seed)).randbytes(size)


# sizes for generated trees: empty, tiny, around page and chunk boundaries, and ~3 MiB
TREE_SIZES = [0, 1, 17, 4095, 4096, 4097, 65536, 131072 + 5, 1000000, 3 * 1024 * 1024 + 123]
BASE_MTIME = 1_600_000_000


def make_tree(root: str | os.PathLike, seed: str = "tree") -> dict[str, dict]:
    """A small tree of nested folders and binary files with chosen modes and mtimes.

    Returns {relative path: {"sha256", "size", "mode", "mtime"}} for the files.
    """
    root = Path(root)
    rnd = random.Random(seed)
    layout = ["top.bin", "empty.dat", "sub/a.bin", "sub/b.png", "sub/deeper/c.bin", "sub/deeper/d",
              "sub/deeper/deepest/e.bin", "other/f.bin", "other/g h.txt", "other/.hidden"]
    modes = [0o644, 0o600, 0o755, 0o640, 0o444]
    expected: dict[str, dict] = {}
    for i, rel in enumerate(layout):
        size = 0 if rel == "empty.dat" else TREE_SIZES[i % len(TREE_SIZES)]
        data = payload(f"{seed}/{rel}", size)
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        mode = modes[i % len(modes)]
        os.chmod(p, mode)
        mtime = BASE_MTIME + rnd.randrange(10_000_000) + 0.5  # a half second survives any float form
        os.utime(p, (mtime, mtime))
        expected[rel] = {"sha256": sha256(data), "size": size, "mode": mode, "mtime": mtime}
    (root / "emptydir").mkdir(exist_ok=True)
    return expected


def tree_state(root: str | os.PathLike) -> dict[str, dict]:
    """{relative path: {"sha256", "size", "mode", "mtime"}} for every regular file below root."""
    root = Path(root)
    out: dict[str, dict] = {}
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            p = Path(dirpath) / name
            st = os.lstat(p)
            assert stat.S_ISREG(st.st_mode), p
            rel = str(p.relative_to(root))
            out[rel] = {"sha256": file_sha256(p), "size": st.st_size, "mode": stat.S_IMODE(st.st_mode),
                        "mtime": st.st_mtime}
    return out


def assert_same_tree(expected: dict[str, dict], actual: dict[str, dict], *, check_mode: bool = True,
                     check_mtime: bool = True) -> None:
    assert sorted(actual) == sorted(expected), "file lists differ"
    problems = []
    for rel, exp in expected.items():
        got = actual[rel]
        if got["size"] != exp["size"] or got["sha256"] != exp["sha256"]:
            problems.append(f"{rel}: content differs (size {got['size']} != {exp['size']})")
        if check_mode and got["mode"] != exp["mode"]:
            problems.append(f"{rel}: mode {oct(got['mode'])} != {oct(exp['mode'])}")
        if check_mtime and abs(got["mtime"] - exp["mtime"]) > 0.001:
            problems.append(f"{rel}: mtime {got['mtime']} != {exp['mtime']}")
    assert not problems, "\n".join(problems)


def make_tarball(src: str | os.PathLike, dest: str | os.PathLike) -> None:
    """A tar of src's contents (modes and mtimes kept), built with Python's tarfile."""
    with tarfile.open(dest, "w:gz") as tar:
        for entry in sorted(os.listdir(src)):
            tar.add(os.path.join(src, entry), arcname=entry)


def expect_errno(err: int, fn: Any, *args: Any, **kw: Any) -> None:
    """fn(*args) must raise OSError with errno err."""
    try:
        result = fn(*args, **kw)
    except OSError as e:
        assert e.errno == err, f"{fn.__name__}{args}: got {errno.errorcode.get(e.errno or 0, e.errno)} ({e}), " \
                               f"expected {errno.errorcode[err]}"
        return
    if isinstance(result, int) and fn is os.open:
        os.close(result)
    raise AssertionError(f"{fn.__name__}{args} succeeded, expected {errno.errorcode[err]}")


def create_file(path: str | os.PathLike, data: bytes = b"x") -> None:
    """open(O_CREAT|O_WRONLY) + write + close through the kernel."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


@contextlib.contextmanager
def opened(path: str | os.PathLike, flags: int, mode: int = 0o644) -> Iterator[int]:
    fd = os.open(path, flags, mode)
    try:
        yield fd
    finally:
        os.close(fd)


def read_all_fd(fd: int, size: int) -> bytes:
    chunks = []
    off = 0
    while off < size:
        b = os.pread(fd, min(1 << 20, size - off), off)
        if not b:
            break
        chunks.append(b)
        off += len(b)
    return b"".join(chunks)





def settle(seconds: float = 0.02) -> None:
    """A short pause, so that two timestamps taken around it differ even at coarse clocks."""
    time.sleep(seconds)
