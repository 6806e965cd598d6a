"""Layout violations are refused at the operation, with their errno, and never reach the provider.

Default layout: tenant / type / board / artifact, files only inside an artifact (depth >= 5),
type in image, video, audio, model, metadata; level names: letters, digits, `._-`, no leading
dot. A file at any of the four levels -> EPERM; an unknown type or a bad name -> EINVAL.
"""

from __future__ import annotations

import errno
import os

import pytest

from storefs.testing.data import ART, create_file, expect_errno
from storefs.testing.mount import run

pytestmark = pytest.mark.timeout(180)

# a file directly at each layout level (relative to the mountpoint)
FILE_AT_LEVEL = {
    "tenant": "f.txt",
    "type": "t1/f.txt",
    "board": "t1/image/f.txt",
    "artifact": "t1/image/b1/f.txt",
}

BAD_DIRS = {
    "unknown type": "t1/bogus",
    "unknown type, wrong case": "t1/Image",
    "tenant with leading dot": ".t1",
    "tenant with a space": "t 1",
    "board with leading dot": "t1/image/.b1",
    "board with a space": "t1/image/b 1",
    "artifact with leading dot": "t1/image/b1/.a1",
    "artifact with a space": "t1/image/b1/a 1",
    "artifact with a bad character": "t1/image/b1/a:1",
    "tenant name too long": "t" * 129,
}


@pytest.fixture
def layout_store(store):
    """A store with one valid artifact holding one uploaded file; returns (store, keys before)."""
    (store.mnt / ART).mkdir(parents=True)
    create_file(store.mnt / ART / "ok.txt", b"ok")
    store.flush()
    before = store.provider_keys("")
    assert before == [f"{ART}/ok.txt"]
    return store, before


def assert_provider_unchanged(store, before, *gone: str) -> None:
    store.flush()
    assert store.provider_keys("") == before
    for path in gone:
        assert not store.provider_exists(path), f"{path} reached the provider"


@pytest.mark.parametrize("level", list(FILE_AT_LEVEL))
def test_create_file_at_layout_level_is_eperm(layout_store, level):
    store, before = layout_store
    rel = FILE_AT_LEVEL[level]
    expect_errno(errno.EPERM, os.open, store.mnt / rel, os.O_WRONLY | os.O_CREAT, 0o644)
    assert not (store.mnt / rel).exists()
    assert os.path.basename(rel) not in os.listdir((store.mnt / rel).parent)
    # the same through a real program
    res = run(["cp", str(store.mnt / ART / "ok.txt"), str(store.mnt / rel)], check=False)
    assert res.returncode != 0 and "not permitted" in res.stderr, res.stderr
    assert_provider_unchanged(store, before, rel)


@pytest.mark.parametrize("level", list(FILE_AT_LEVEL))
def test_mknod_and_symlink_at_layout_level_refused(layout_store, level):
    store, before = layout_store
    rel = FILE_AT_LEVEL[level]
    expect_errno(errno.EPERM, os.mknod, store.mnt / rel, 0o644 | 0o100000)
    assert not (store.mnt / rel).exists()
    assert_provider_unchanged(store, before, rel)


@pytest.mark.parametrize("case", list(BAD_DIRS))
def test_mkdir_bad_level_name_is_einval(layout_store, case):
    store, before = layout_store
    rel = BAD_DIRS[case]
    expect_errno(errno.EINVAL, os.mkdir, store.mnt / rel)
    assert not os.path.lexists(store.mnt / rel)
    res = run(["mkdir", "-p", str(store.mnt / rel / "deeper")], check=False)
    assert res.returncode != 0, f"mkdir -p {rel}/deeper succeeded"
    assert_provider_unchanged(store, before, rel)


def test_names_inside_an_artifact_are_free(layout_store):
    """Inside an artifact any name goes: dot files, spaces, sub-folders, rsync temporaries."""
    store, before = layout_store
    base = store.mnt / ART
    names = [".hidden", "with space.txt", ".x.AbC123", "sub/.git/HEAD", "sub/deep/a:b"]
    for rel in names:
        (base / rel).parent.mkdir(parents=True, exist_ok=True)
        create_file(base / rel, rel.encode())
    store.flush()
    assert store.provider_keys(ART) == sorted([f"{ART}/ok.txt"] + [f"{ART}/{n}" for n in names])
    for rel in names:
        assert store.provider_read(f"{ART}/{rel}") == rel.encode()


@pytest.mark.parametrize("level", list(FILE_AT_LEVEL))
def test_rename_file_to_layout_level_is_eperm(layout_store, level):
    store, before = layout_store
    rel = FILE_AT_LEVEL[level]
    src = store.mnt / ART / "ok.txt"
    expect_errno(errno.EPERM, os.rename, src, store.mnt / rel)
    assert src.read_bytes() == b"ok"
    assert not (store.mnt / rel).exists()
    # mv falls back to copy + delete on some errors; it must fail and keep the file
    res = run(["mv", str(src), str(store.mnt / rel)], check=False)
    assert res.returncode != 0
    assert src.read_bytes() == b"ok"
    assert_provider_unchanged(store, before, rel)


def test_rename_not_yet_uploaded_file_to_board_level_is_eperm(store):
    (store.mnt / ART).mkdir(parents=True)
    create_file(store.mnt / ART / "new.txt", b"new")
    expect_errno(errno.EPERM, os.rename, store.mnt / ART / "new.txt", store.mnt / "t1/image/new.txt")
    store.flush()
    assert store.provider_keys("") == [f"{ART}/new.txt"]
    assert store.provider_read(f"{ART}/new.txt") == b"new"


def test_rename_dir_to_bad_name_is_einval(layout_store):
    store, before = layout_store
    expect_errno(errno.EINVAL, os.rename, store.mnt / "t1/image/b1", store.mnt / "t1/image/.b1")
    expect_errno(errno.EINVAL, os.rename, store.mnt / "t1/image", store.mnt / "t1/bogus")
    assert (store.mnt / ART / "ok.txt").read_bytes() == b"ok"
    assert_provider_unchanged(store, before, "t1/image/.b1", "t1/bogus")


def test_valid_layout_levels_accepted(store):
    for typ in ("image", "video", "audio", "model", "metadata"):
        path = store.mnt / "tenant-1" / typ / "board_2" / "artifact.3"
        path.mkdir(parents=True)
        create_file(path / "f.bin", typ.encode())
    store.flush()
    assert len(store.provider_keys("tenant-1")) == 5
    assert store.provider_read("tenant-1/model/board_2/artifact.3/f.bin") == b"model"
