"""A folder listed over and over (a program polling it): after a listing that carried attributes,
the next ones within the kernel's timeouts are plain names (StorefsOperations.attrs_due). What
programs see must not change: names, types for `find -type`, sizes and modes for `ls -l`, also
right after changes made through the mount, and after a fresh mount with an empty cache."""

from __future__ import annotations

import os
import subprocess

import pytest

pytestmark = pytest.mark.timeout(300)

FOLDER = "t1/image/b1/polled"
FILES = 150


@pytest.fixture
def provider_kind() -> str:
    return "s3"


def seen_by_tools(folder: str) -> tuple[list[str], dict[str, int], dict[str, tuple[str, int]]]:
    """(names from os.listdir, count per `find -type`, name -> (mode string, size) from `ls -l`)."""
    names = sorted(os.listdir(folder))
    counts = {}
    for kind in "fdl":
        out = subprocess.run(["find", folder, "-mindepth", "1", "-maxdepth", "1", "-type", kind],
                             capture_output=True, text=True, timeout=60, check=True)
        counts[kind] = len(out.stdout.splitlines())
    out = subprocess.run(["ls", "-l", folder], capture_output=True, text=True, timeout=60, check=True)
    long = {}
    for line in out.stdout.splitlines()[1:]:
        parts = line.split()
        long[parts[8]] = (parts[0], int(parts[4]))
    return names, counts, long


def test_a_folder_listed_over_and_over_shows_the_same_to_every_tool(store):
    folder = store.mnt / FOLDER
    os.makedirs(folder)
    for i in range(FILES):
        (folder / f"f{i:03d}.png").write_bytes(b"x" * i)
    for d in ("sub1", "sub2", "sub3"):
        (folder / d).mkdir()
    os.symlink("f001.png", folder / "link1")
    os.symlink("sub1", folder / "link2")
    want_names = sorted([f"f{i:03d}.png" for i in range(FILES)] + ["sub1", "sub2", "sub3", "link1", "link2"])

    def check(changed: int) -> None:
        names, counts, long = seen_by_tools(str(folder))
        assert names == want_names
        assert counts == {"f": FILES, "d": 3, "l": 2}
        assert long["sub2"][0].startswith("d") and long["link1"][0].startswith("l")
        for i in range(FILES):
            mode, size = long[f"f{i:03d}.png"]
            assert size == (i + 1000 if i == changed else i), i
            assert mode == ("-rw-------" if i == changed else "-rw-r--r--"), (i, mode)

    check(-1)
    for changed in (7, 42, 99):  # a change through the mount between listings less than a second apart
        with open(folder / f"f{changed:03d}.png", "ab") as f:
            f.write(b"y" * 1000)
        os.chmod(folder / f"f{changed:03d}.png", 0o600)
        check(changed)
        with open(folder / f"f{changed:03d}.png", "r+b") as f:
            f.truncate(changed)
        os.chmod(folder / f"f{changed:03d}.png", 0o644)
    store.flush()
    store.remount(empty_cache=True)
    check(-1)
    check(-1)
