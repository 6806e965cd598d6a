"""Names and attributes a user can trip on, through a real mount on each provider: `mv f .fuse_hidden...`
keeps the file, `cp -a` and `rsync -X` out of the mount copy no `user.storefs.*` attribute, and a write
that crosses max_file_size ends short at the limit, as on ext4, with EFBIG for the next one."""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from storefs.testing.data import ART, create_file, expect_errno, payload
from storefs.testing.mount import StorefsMount, run

pytestmark = pytest.mark.timeout(180)

#: the shape of libfuse's hidden names (".fuse_hidden%08x%08x"), typed by a user
LIBFUSE_LIKE = ".fuse_hidden0000000100000002"
LIMIT = 2_500_000  # not a multiple of the kernel's 1 MiB write requests


@pytest.fixture
def art(store: StorefsMount) -> Path:
    (store.mnt / ART).mkdir(parents=True)
    return store.mnt / ART


def own_attrs(path: Path) -> list[str]:
    return [n for n in os.listxattr(path) if n.startswith("user.storefs.")]


def test_mv_to_a_libfuse_like_name_keeps_the_file(store: StorefsMount, art: Path) -> None:
    create_file(art / "f", b"kept as named")
    create_file(art / "g", b"also kept")
    store.flush()  # uploaded first: the rename must reach the provider as a move, not a delete
    run(["mv", str(art / "f"), str(art / LIBFUSE_LIKE)])
    run(["mv", str(art / "g"), str(art / ".fuse_hiddenX")])
    assert sorted(os.listdir(art)) == sorted([LIBFUSE_LIKE, ".fuse_hiddenX"])
    assert (art / LIBFUSE_LIKE).read_bytes() == b"kept as named"
    store.flush()
    assert store.provider_read(f"{ART}/{LIBFUSE_LIKE}") == b"kept as named"
    assert store.provider_read(f"{ART}/.fuse_hiddenX") == b"also kept"
    assert not store.provider_exists(f"{ART}/f") and not store.provider_exists(f"{ART}/g")
    store.remount(empty_cache=True)
    art = store.mnt / ART
    assert sorted(os.listdir(art)) == sorted([LIBFUSE_LIKE, ".fuse_hiddenX"])
    assert (art / LIBFUSE_LIKE).read_bytes() == b"kept as named"
    assert (art / ".fuse_hiddenX").read_bytes() == b"also kept"


def test_copies_out_of_the_mount_carry_no_storefs_attributes(store: StorefsMount, art: Path, tmp_path: Path) -> None:
    """cp -a and rsync -X copy what listxattr names: the user's attributes, never a presigned URL."""
    src = art / "pic.png"
    create_file(src, b"png bytes")
    os.setxattr(src, "user.tag", b"mine")
    store.flush()
    assert os.getxattr(src, "user.storefs.url")  # by name, it answers
    assert own_attrs(src) == [] and own_attrs(art) == []
    assert "user.storefs" not in run(["getfattr", "-d", "-m", "-", str(src)]).stdout
    out = tmp_path / "out"
    out.mkdir()
    run(["cp", "-a", str(src), str(out / "cp.png")])
    copies = [out / "cp.png"]
    if shutil.which("rsync"):
        run(["rsync", "-aX", str(art) + "/", str(out / "rsync")])
        copies.append(out / "rsync" / "pic.png")
    for copy in copies:
        assert copy.read_bytes() == b"png bytes", copy
        assert os.getxattr(copy, "user.tag") == b"mine", copy
        assert own_attrs(copy) == [], copy
        assert "user.storefs" not in run(["getfattr", "-d", "-m", "-", str(copy)]).stdout
    if len(copies) == 1:
        pytest.skip("rsync is not installed: cp -a checked, rsync -X not")


@pytest.fixture
def limited(backend: Any, tmp_path: Path):  # type: ignore[no-untyped-def]
    """A mount whose files may hold LIMIT bytes."""
    from conftest import require_fuse
    require_fuse()
    m = StorefsMount(tmp_path, backend)
    m.extra_config["max_file_size"] = LIMIT
    try:
        m.start()
        (m.mnt / ART).mkdir(parents=True)
        yield m
    finally:
        m.cleanup()


def test_a_write_across_max_file_size_is_short_and_the_next_is_efbig(limited: StorefsMount, tmp_path: Path) -> None:
    """The kernel sends a 3 MiB write(2) as 1 MiB requests: the first two land, the third ends at the
    limit, and write(2) returns the bytes that landed (ext4 at its size limit does the same)."""
    m = limited
    data = payload("limit", 3 * 1024 * 1024)
    path = m.mnt / ART / "big.bin"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        assert os.write(fd, data) == LIMIT
        expect_errno(errno.EFBIG, os.write, fd, data[LIMIT:])
        assert os.pwrite(fd, b"x", LIMIT - 1) == 1  # below the limit, writes go on
    finally:
        os.close(fd)
    assert os.stat(path).st_size == LIMIT
    src = tmp_path / "src.bin"
    src.write_bytes(data)
    res = run(["cp", str(src), str(m.mnt / ART / "cp.bin")], check=False)
    assert res.returncode != 0 and "File too large" in res.stderr, res.stderr
    assert os.stat(m.mnt / ART / "cp.bin").st_size == LIMIT
    m.remount(empty_cache=True)
    assert m.provider_read(f"{ART}/big.bin") == data[:LIMIT - 1] + b"x"
    assert m.provider_read(f"{ART}/cp.bin") == data[:LIMIT]
    assert (m.mnt / ART / "big.bin").read_bytes() == data[:LIMIT - 1] + b"x"
