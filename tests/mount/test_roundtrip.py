"""Round trips through real programs: cp -a, mv, rm -r, mkdir -p, tar x, rsync -a.

Each test writes through the mount, then remounts on an empty cache, so what it reads back
comes from the provider: content (sha256), mode and mtime must all have been persisted.
"""

from __future__ import annotations

import os
import re

import pytest

from storefs.testing.data import ART, assert_same_tree, make_tarball, make_tree, tree_state
from storefs.testing.mount import run

pytestmark = pytest.mark.timeout(300)


def keys_for(prefix: str, expected: dict) -> list[str]:
    return sorted(f"{prefix}/{rel}" for rel in expected)


def test_cp_a(store, tmp_path):
    src = tmp_path / "src"
    expected = make_tree(src, "cp")
    run(["mkdir", "-p", str(store.mnt / ART)])
    run(["cp", "-a", f"{src}/.", str(store.mnt / ART / "tree")])
    assert_same_tree(expected, tree_state(store.mnt / ART / "tree"))  # served from the cache

    store.flush()
    assert store.provider_keys(f"{ART}/tree") == keys_for(f"{ART}/tree", expected)
    assert store.provider_read(f"{ART}/tree/sub/a.bin") == (src / "sub/a.bin").read_bytes()

    store.remount(empty_cache=True)
    assert_same_tree(expected, tree_state(store.mnt / ART / "tree"))
    assert (store.mnt / ART / "tree" / "emptydir").is_dir(), "empty directory was not persisted"


def test_mv_in_and_within(store, tmp_path):
    src = tmp_path / "src"
    expected = make_tree(src, "mv")
    run(["mkdir", "-p", str(store.mnt / ART), str(store.mnt / "t1/image/b1/a2")])
    # from another file system: mv copies (keeping mode and mtime) and deletes the source
    run(["mv", str(src), str(store.mnt / ART / "moved")])
    assert not src.exists()
    assert_same_tree(expected, tree_state(store.mnt / ART / "moved"))
    store.flush()
    assert store.provider_keys(ART) == keys_for(f"{ART}/moved", expected)

    # within the mount: a folder to another artifact, and a file renamed inside it
    run(["mv", str(store.mnt / ART / "moved"), str(store.mnt / "t1/image/b1/a2/renamed")])
    run(["mv", str(store.mnt / "t1/image/b1/a2/renamed/top.bin"), str(store.mnt / "t1/image/b1/a2/renamed/top2.bin")])
    expected["top2.bin"] = expected.pop("top.bin")
    assert not (store.mnt / ART / "moved").exists()

    store.flush()
    assert store.provider_keys(ART) == []
    assert store.provider_keys("t1/image/b1/a2") == keys_for("t1/image/b1/a2/renamed", expected)

    store.remount(empty_cache=True)
    assert not (store.mnt / ART / "moved").exists()
    assert_same_tree(expected, tree_state(store.mnt / "t1/image/b1/a2/renamed"))


def test_rm_r(store, tmp_path):
    src = tmp_path / "src"
    expected = make_tree(src, "rm")
    run(["mkdir", "-p", str(store.mnt / ART)])
    run(["cp", "-a", f"{src}/.", str(store.mnt / ART / "a")])
    run(["cp", "-a", f"{src}/.", str(store.mnt / ART / "b")])
    store.flush()
    assert store.provider_keys(f"{ART}/a") == keys_for(f"{ART}/a", expected)

    run(["rm", "-r", str(store.mnt / ART / "a")])
    assert not (store.mnt / ART / "a").exists()
    store.flush()
    assert store.provider_keys(f"{ART}/a") == []
    assert not store.provider_exists(f"{ART}/a")
    assert store.provider_keys(f"{ART}/b") == keys_for(f"{ART}/b", expected)

    store.remount(empty_cache=True)
    assert sorted(os.listdir(store.mnt / ART)) == ["b"]
    assert_same_tree(expected, tree_state(store.mnt / ART / "b"))

    # rm -r of a whole artifact whose files are no longer cached
    run(["rm", "-r", str(store.mnt / ART)])
    store.flush()
    assert store.provider_keys(ART) == []
    store.remount(empty_cache=True)
    assert not (store.mnt / ART).exists()


def test_rm_r_before_upload(store, tmp_path):
    src = tmp_path / "src"
    make_tree(src, "rm-early")
    run(["mkdir", "-p", str(store.mnt / ART)])
    run(["cp", "-a", f"{src}/.", str(store.mnt / ART / "gone")])
    run(["rm", "-r", str(store.mnt / ART / "gone")])
    store.flush()
    assert store.provider_keys(ART) == []
    store.remount(empty_cache=True)
    assert os.listdir(store.mnt / ART) == []


def test_mkdir_p(store):
    deep = store.mnt / ART / "x" / "y" / "z"
    run(["mkdir", "-p", str(deep)])
    run(["mkdir", "-p", str(store.mnt / "t2/video/b9/a9")])
    run(["mkdir", "-p", str(deep)])  # again: nothing to do, no error
    assert deep.is_dir()
    store.flush()
    assert store.provider_exists(f"{ART}/x/y/z")
    assert store.provider_keys("") == []  # no file objects, only directories

    store.remount(empty_cache=True)
    assert deep.is_dir()
    assert (store.mnt / "t2/video/b9/a9").is_dir()
    assert os.listdir(deep) == []
    assert sorted(os.listdir(store.mnt)) == ["t1", "t2"]


def test_tar_x(store, tmp_path):
    src = tmp_path / "src"
    expected = make_tree(src, "tar")
    tarball = tmp_path / "tree.tar.gz"
    make_tarball(src, tarball)
    run(["mkdir", "-p", str(store.mnt / ART)])
    run(["tar", "-xzf", str(tarball), "-C", str(store.mnt / ART)])
    assert_same_tree(expected, tree_state(store.mnt / ART))

    store.flush()
    assert store.provider_keys(ART) == keys_for(ART, expected)
    store.remount(empty_cache=True)
    assert_same_tree(expected, tree_state(store.mnt / ART))
    assert (store.mnt / ART / "emptydir").is_dir()
    # tar can read it back, byte for byte (pax format keeps sub-second mtimes)
    out = tmp_path / "out"
    out.mkdir()
    run(["tar", "--format=posix", "-czf", str(tmp_path / "again.tar.gz"), "-C", str(store.mnt / ART), "."])
    run(["tar", "-xzf", str(tmp_path / "again.tar.gz"), "-C", str(out)])
    assert_same_tree(expected, tree_state(out))


def test_rsync_a(store, tmp_path):
    src = tmp_path / "src"
    expected = make_tree(src, "rsync")
    dest = store.mnt / ART / "r"
    run(["mkdir", "-p", str(store.mnt / ART)])
    run(["rsync", "-a", f"{src}/", f"{dest}/"])
    assert_same_tree(expected, tree_state(dest))

    store.flush()
    # rsync's .name.XXXXXX temporaries were renamed before upload: only the real names exist
    assert store.provider_keys(f"{ART}/r") == keys_for(f"{ART}/r", expected)

    store.remount(empty_cache=True)
    assert_same_tree(expected, tree_state(dest))

    # sizes and mtimes persisted: a second rsync finds nothing to transfer
    res = run(["rsync", "-a", "--itemize-changes", "--stats", f"{src}/", f"{dest}/"])
    m = re.search(r"Number of regular files transferred: ([\d,]+)", res.stdout)
    assert m, res.stdout
    transferred = [line for line in res.stdout.splitlines() if line.startswith((">f", "<f", "cf"))]
    assert m.group(1) == "0" and not transferred, f"second rsync transferred files:\n{res.stdout}"

    # a changed source file is transferred, and only that one
    (src / "sub/a.bin").write_bytes(b"changed")
    os.utime(src / "sub/a.bin", (1_700_000_000.5, 1_700_000_000.5))
    res = run(["rsync", "-a", "--itemize-changes", "--stats", f"{src}/", f"{dest}/"])
    transferred = [line.split(None, 1)[1] for line in res.stdout.splitlines() if line.startswith(">f")]
    assert transferred == ["sub/a.bin"], res.stdout
    store.flush()
    assert store.provider_read(f"{ART}/r/sub/a.bin") == b"changed"
    assert store.provider_keys(f"{ART}/r") == keys_for(f"{ART}/r", expected)
