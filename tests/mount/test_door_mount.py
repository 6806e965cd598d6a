"""Through the kernel, on SeaweedFS with objects written by a plain S3 client (issue 20):

- a key that is both a file and a prefix ('.../h1' and '.../h1/x.png'): the folder keeps 'h1', the
  file shows beside it as 'h1.storefs-file' for ls, stat, cat, cp, overwrite and rm;
- `storefs refresh PATH` makes an object changed behind the mount visible at once, though the
  mount's listings and the kernel's attributes are cached for minutes.
"""

from __future__ import annotations

import errno
import os
import shutil
from typing import Any

import pytest

from storefs.keys import FILE_SUFFIX
from storefs.testing.backends import plant, s3_client
from storefs.testing.mount import StorefsMount

pytestmark = pytest.mark.timeout(300)

ART = "t1/image/b1/a1"


@pytest.fixture
def provider_kind() -> str:
    return "s3"


def objects(store: StorefsMount, prefix: str) -> dict[str, bytes]:
    """Every object below prefix and its bytes (folder markers left out), read with plain boto3."""
    client, bucket = s3_client(store)
    out: dict[str, bytes] = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for o in page.get("Contents", []):
            if o["Key"].endswith("/"):
                continue
            out[o["Key"]] = client.get_object(Bucket=bucket, Key=o["Key"])["Body"].read()
    return out


def test_a_file_and_a_folder_of_one_name_both_stay_reachable(store: StorefsMount, tmp_path: Any) -> None:
    (store.mnt / ART).mkdir(parents=True)
    plant(store, f"{ART}/h1", b"the file")
    plant(store, f"{ART}/h1/x.png", b"inside the folder")
    store.storefs("refresh", str(store.mnt / ART))  # the folder was listed empty a moment ago
    art = store.mnt / ART
    alias = art / f"h1{FILE_SUFFIX}"
    assert sorted(os.listdir(art)) == ["h1", f"h1{FILE_SUFFIX}"]
    assert (art / "h1").is_dir() and os.listdir(art / "h1") == ["x.png"]
    assert alias.is_file() and alias.stat().st_size == len(b"the file")
    assert alias.read_bytes() == b"the file"
    assert (art / "h1" / "x.png").read_bytes() == b"inside the folder"
    shutil.copy(alias, tmp_path / "copied")
    assert (tmp_path / "copied").read_bytes() == b"the file"

    alias.write_bytes(b"overwritten through the mount")
    store.flush()
    assert objects(store, ART + "/") == {f"{ART}/h1": b"overwritten through the mount",
                                         f"{ART}/h1/x.png": b"inside the folder"}

    with pytest.raises(OSError) as info:
        (art / f"new{FILE_SUFFIX}").write_bytes(b"x")
    assert info.value.errno == errno.EINVAL

    alias.unlink()
    store.flush()
    assert objects(store, ART + "/") == {f"{ART}/h1/x.png": b"inside the folder"}
    assert os.listdir(art) == ["h1"]
    assert os.listdir(art / "h1") == ["x.png"]


def test_refresh_shows_an_object_changed_behind_the_mount_at_once(store: StorefsMount) -> None:
    store.extra_config["fuse"] = {"dir_cache_ttl": "600s", "attr_timeout": "600s", "entry_timeout": "600s"}
    store.remount()
    (store.mnt / ART).mkdir(parents=True)
    target = store.mnt / ART / "seen.png"
    target.write_bytes(b"first version")
    store.flush()
    assert target.read_bytes() == b"first version"
    assert sorted(os.listdir(store.mnt / ART)) == ["seen.png"]

    plant(store, f"{ART}/seen.png", b"second version, longer than the first")
    plant(store, f"{ART}/theirs.png", b"theirs")
    # cached: the mount's listing and the kernel's attributes still say the first version
    assert target.stat().st_size == len(b"first version")
    assert sorted(os.listdir(store.mnt / ART)) == ["seen.png"]

    out = store.storefs("refresh", str(store.mnt / ART)).stdout
    assert "dropped" in out
    assert target.stat().st_size == len(b"second version, longer than the first")
    assert target.read_bytes() == b"second version, longer than the first"
    assert sorted(os.listdir(store.mnt / ART)) == ["seen.png", "theirs.png"]


def test_refresh_outside_a_mount_says_so(store: StorefsMount, tmp_path: Any) -> None:
    res = store.storefs("refresh", str(tmp_path), check=False)
    assert res.returncode != 0 and "not in a storefs mount" in res.stderr
