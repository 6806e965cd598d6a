"""S3-only mount tests, on the session's SeaweedFS server with a fresh bucket per test.

They check what only an S3 backend has: interoperability of keys, content types and metadata with
plain boto3 (and so with s3fs, rclone and CDNs), listing pagination, multipart uploads and ranged
reads of large objects, folder renames as server-side copies, a server outage, and a wrong S3
config at mount time.

The mount is conftest's `store` fixture; this module overrides `provider_kind` (always "s3"), and a
test may parametrise conftest's `s3_options` to add provider keys, e.g. {"read_deadline": 3}.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import os
import re
import socket
import stat
import struct
import subprocess
import sys
import time
import urllib.parse
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from boto3.s3.transfer import TransferConfig
from conftest import require_fuse

from storefs.testing.data import ART, assert_same_tree, file_sha256, payload, sha256, tree_state
from storefs.testing.mount import StorefsMount, clean_env, is_mounted, lazy_unmount, run
from storefs.view.tunables import DEFAULT_TUNABLES

pytestmark = pytest.mark.timeout(300)

MiB = 1024 * 1024
GiB = 1024 * MiB


# --------------------------------------------------------------------------- fixtures


@pytest.fixture
def provider_kind() -> str:
    return "s3"


# --------------------------------------------------------------------------- helpers


def s3(store: StorefsMount) -> Any:
    return store.backend.client


def _unsigned(url: str) -> tuple[str, list[tuple[str, str]]]:
    """A presigned URL without the parts that change with the second it was signed in."""
    parts = urllib.parse.urlsplit(url)
    query = [(k, v) for k, v in urllib.parse.parse_qsl(parts.query)
             if k not in ("X-Amz-Date", "X-Amz-Signature")]
    return parts._replace(query="").geturl(), query


def bucket(store: StorefsMount) -> str:
    return store.backend.bucket


def all_objects(store: StorefsMount, prefix: str = "") -> dict[str, int]:
    """{key: size} of every object under prefix (markers included), read with plain boto3."""
    out: dict[str, int] = {}
    for page in s3(store).get_paginator("list_objects_v2").paginate(Bucket=bucket(store), Prefix=prefix):
        out.update({o["Key"]: o["Size"] for o in page.get("Contents", [])})
    return out


def file_keys(store: StorefsMount, prefix: str) -> list[str]:
    return sorted(k for k in all_objects(store, prefix) if not k.endswith("/"))


def get_bytes(store: StorefsMount, key: str) -> bytes:
    """The object's bytes; a 5xx (weed just restarted) is retried for a few seconds."""
    from botocore.exceptions import ClientError
    deadline = time.monotonic() + 15
    while True:
        try:
            return s3(store).get_object(Bucket=bucket(store), Key=key)["Body"].read()
        except ClientError as e:
            status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
            if status < 500 or time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def head(store: StorefsMount, key: str) -> dict:
    return s3(store).head_object(Bucket=bucket(store), Key=key)


def wait_readable(store: StorefsMount, key: str, timeout: float = 30.0) -> None:
    """After a restart, weed answers listings before its volumes serve reads: wait for a GET of key."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            get_bytes(store, key)
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def xattr(path: str | os.PathLike, name: str) -> str:
    return os.getxattr(path, name).rstrip(b"\0").decode()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def timed(label: str, times: dict[str, float], fn: Any, *args: Any, **kw: Any) -> Any:
    t0 = time.monotonic()
    try:
        return fn(*args, **kw)
    finally:
        times[label] = time.monotonic() - t0


# --------------------------------------------------------------------------- 1. mount -> boto3


def test_mount_writes_are_plain_s3_objects(store):
    """Keys, bytes, Content-Type, s3fs/rclone metadata and user.* xattrs as plain boto3 sees them."""
    art = store.mnt / ART
    art.mkdir(parents=True)
    files = {"x.png": ("image/png", payload("png", 5000)),
             "clip.mp4": ("video/mp4", payload("mp4", 300_000)),
             "meta.json": ("application/json", b'{"prompt": "a red fox"}\n')}
    for name, (_, data) in files.items():
        (art / name).write_bytes(data)
    png, mp4 = art / "x.png", art / "clip.mp4"
    os.chmod(png, 0o644)
    mtime_ns = 1700000000_123456789
    os.utime(png, ns=(mtime_ns, mtime_ns))
    os.setxattr(png, "user.prompt", b"a red fox")
    os.setxattr(png, "user.seed", b"42")
    store.flush()

    # metadata changed on a file that is already uploaded: a set_meta (copy onto itself)
    assert head(store, f"{ART}/clip.mp4")["ContentLength"] == len(files["clip.mp4"][1])
    os.chmod(mp4, 0o600)
    os.utime(mp4, ns=(1600000000_500000000, 1600000000_500000000))
    os.setxattr(mp4, "user.prompt", b"waves")
    store.flush()

    assert file_keys(store, ART + "/") == sorted(f"{ART}/{n}" for n in files)
    for name, (ctype, data) in files.items():
        key = f"{ART}/{name}"
        h = head(store, key)
        md = h["Metadata"]
        st = os.stat(art / name)
        assert get_bytes(store, key) == data, key
        assert h["ContentLength"] == len(data), key
        assert h["ContentType"] == ctype, key
        assert md.get("mode") == str(st.st_mode), (key, md, oct(st.st_mode))
        assert abs(float(md["mtime"]) - st.st_mtime_ns / 1e9) <= 1e-6, (key, md["mtime"], st.st_mtime_ns)
        assert md.get("uid") == str(st.st_uid), (key, md)
        assert md.get("gid") == str(st.st_gid), (key, md)

    png_md = head(store, f"{ART}/x.png")["Metadata"]
    assert png_md["mode"] == "33188"  # 0o100644, s3fs's decimal form
    assert abs(float(png_md["mtime"]) - mtime_ns / 1e9) <= 1e-6, png_md["mtime"]
    assert re.fullmatch(r"\d+\.\d+", png_md["mtime"]), f"mtime {png_md['mtime']!r} is not fractional seconds"
    assert png_md.get("prompt") == "a red fox", png_md
    assert png_md.get("seed") == "42", png_md

    mp4_md = head(store, f"{ART}/clip.mp4")["Metadata"]
    assert mp4_md["mode"] == "33152", mp4_md  # 0o100600 after chmod 600
    assert abs(float(mp4_md["mtime"]) - 1600000000.5) <= 1e-6, mp4_md
    assert mp4_md.get("prompt") == "waves", mp4_md
    assert head(store, f"{ART}/clip.mp4")["ContentType"] == "video/mp4"  # kept by the metadata copy
    assert get_bytes(store, f"{ART}/clip.mp4") == files["clip.mp4"][1]


# --------------------------------------------------------------------------- 2. boto3 -> mount


def test_plain_s3_objects_show_in_the_mount(store):
    """Objects written by s3fs, rclone or plain boto3, folder markers and implicit folders."""
    c, b = s3(store), bucket(store)
    art = "t1/image/b1/a3"
    s3fs_data, rclone_data, plain_data = payload("s3fs", 1234), payload("rclone", 70_000), b"plain\n"
    c.put_object(Bucket=b, Key=f"{art}/s3fs.png", Body=s3fs_data, ContentType="image/png",
                 Metadata={"mtime": "1700000000", "mode": "33216", "uid": "1234", "gid": "5678"})
    c.put_object(Bucket=b, Key=f"{art}/rclone.json", Body=rclone_data, ContentType="application/json",
                 Metadata={"mtime": "1700000000.5", "prompt": "from rclone"})
    c.put_object(Bucket=b, Key=f"{art}/plain.txt", Body=plain_data)
    c.put_object(Bucket=b, Key="t1/image/b1/a2/", Body=b"", ContentType="application/x-directory")
    c.put_object(Bucket=b, Key=f"{art}/sub/deep/f.txt", Body=b"deep")
    c.put_object(Bucket=b, Key="t2/video/b9/a1/clip.mp4", Body=b"mp4")
    plain_lm = head(store, f"{art}/plain.txt")["LastModified"].timestamp()

    mnt = store.mnt
    assert sorted(os.listdir(mnt)) == ["t1", "t2"]
    assert sorted(os.listdir(mnt / "t1/image/b1")) == ["a2", "a3"]
    assert sorted(os.listdir(mnt / art)) == ["plain.txt", "rclone.json", "s3fs.png", "sub"]

    st = os.stat(mnt / art / "s3fs.png")
    assert stat.S_ISREG(st.st_mode) and st.st_mode == 0o100700, oct(st.st_mode)
    assert st.st_size == len(s3fs_data)
    assert st.st_mtime == 1700000000, st.st_mtime
    assert (st.st_uid, st.st_gid) == (1234, 5678)

    st = os.stat(mnt / art / "rclone.json")
    assert st.st_mode == 0o100644, oct(st.st_mode)
    assert st.st_size == len(rclone_data)
    assert abs(st.st_mtime - 1700000000.5) < 1e-6, st.st_mtime

    st = os.stat(mnt / art / "plain.txt")
    assert st.st_mode == 0o100644, oct(st.st_mode)
    assert st.st_size == len(plain_data)
    assert abs(st.st_mtime - plain_lm) <= 1.0, (st.st_mtime, plain_lm)

    marker = mnt / "t1/image/b1/a2"
    assert marker.is_dir() and os.listdir(marker) == []
    for d in (f"{art}/sub", f"{art}/sub/deep", "t2", "t2/video", "t2/video/b9", "t2/video/b9/a1"):
        assert (mnt / d).is_dir(), d
    assert (mnt / art / "sub/deep/f.txt").read_bytes() == b"deep"
    assert (mnt / "t2/video/b9/a1/clip.mp4").read_bytes() == b"mp4"
    assert (mnt / art / "rclone.json").read_bytes() == rclone_data

    # storefs' own attributes and user metadata as xattrs (os.getxattr and getfattr)
    p = mnt / art / "s3fs.png"
    assert xattr(p, "user.storefs.content_type") == "image/png"
    assert xattr(mnt / art / "plain.txt", "user.storefs.content_type") == "text/plain"
    assert xattr(p, "user.storefs.provider") == "s3"
    assert xattr(p, "user.storefs.state") == "clean"
    assert os.getxattr(mnt / art / "rclone.json", "user.prompt") == b"from rclone"
    url = run(["getfattr", "--only-values", "-n", "user.storefs.url", str(p)]).stdout.strip()
    again = xattr(p, "user.storefs.url")
    # each read presigns anew: the two may be a second apart, so their date and signature may differ
    assert _unsigned(url) == _unsigned(again), (url, again)
    assert url.startswith("http://"), url
    for u in (url, again):
        with urllib.request.urlopen(u, timeout=30) as resp:
            assert resp.read() == s3fs_data
    names = os.listxattr(p)  # storefs' own answer by name only: cp -a must not copy a presigned URL
    assert not [n for n in names if n.startswith("user.storefs.")], names


def test_new_object_from_another_client_opens_by_path_within_seconds(store):
    """A folder the mount has just listed: an object another client puts there opens by its
    path within ~3 s (a missing name re-lists its folder), long before the listing's 30 s TTL."""
    c, b = s3(store), bucket(store)
    art = "t1/image/b1/late"
    (store.mnt / art).mkdir(parents=True)
    (store.mnt / art / "mine.png").write_bytes(b"mine")
    assert os.listdir(store.mnt / art) == ["mine.png"]  # the folder's listing is cached now
    data = payload("late", 5000)
    c.put_object(Bucket=b, Key=f"{art}/theirs.png", Body=data)
    t0 = time.monotonic()
    while not (store.mnt / art / "theirs.png").exists():
        assert time.monotonic() - t0 < 6, "another client's object did not show by its path"
        time.sleep(0.2)
    assert (store.mnt / art / "theirs.png").read_bytes() == data
    store.remount(empty_cache=True)
    assert sorted(os.listdir(store.mnt / art)) == ["mine.png", "theirs.png"]
    assert (store.mnt / art / "theirs.png").read_bytes() == data


def test_a_folder_files_are_being_created_in_is_listed_again_in_the_background(store):
    """Creating files in a folder is a stream of misses (each new name's lookup); their folder is
    re-listed in the background before one of them would wait for the 2 s miss recheck.

    Observable through the kernel: an object another client puts in the folder while files are
    being created there is in `ls` soon after the creates stop, though `ls` trusts the listing for
    its whole 30 s TTL: the listing answering was fetched in the background. Without that,
    the listing is still the empty one the folder started with, and `ls` does not show it.
    """
    c, b = s3(store), bucket(store)
    art = "t1/image/b1/making"
    t0 = time.monotonic()
    (store.mnt / art).mkdir(parents=True)  # known empty: no listing asked
    written: dict[str, bytes] = {}
    while time.monotonic() - t0 < 1.2:  # well within the 2 s miss recheck: no lookup waits for one
        name = f"f{len(written):03d}.png"
        written[name] = payload(name, 3000)
        (store.mnt / art / name).write_bytes(written[name])
        if len(written) == 3:
            c.put_object(Bucket=b, Key=f"{art}/theirs.png", Body=b"theirs")
        time.sleep(0.05)
    while time.monotonic() - t0 < 3.5:  # the background listing is due at 1.5 s
        time.sleep(0.1)
    assert sorted(os.listdir(store.mnt / art)) == sorted([*written, "theirs.png"])
    assert (store.mnt / art / "theirs.png").read_bytes() == b"theirs"
    store.remount(empty_cache=True)
    assert sorted(os.listdir(store.mnt / art)) == sorted([*written, "theirs.png"])
    for name, data in written.items():
        assert (store.mnt / art / name).read_bytes() == data


def _folder_with_listing_ttl(store: StorefsMount, ttl: float, art: str) -> tuple[Any, str]:
    """Remount with listings cached for ttl and make the folder art: an S3 client and its bucket."""
    store.extra_config["fuse"] = {"dir_cache_ttl": f"{ttl:g}s"}
    store.remount()
    c, b = s3(store), bucket(store)
    (store.mnt / art).mkdir(parents=True)  # last: a caller may time from the mkdir
    return c, b


def _only_mine_after_an_empty_cache_remount(store: StorefsMount, art: str) -> None:
    store.remount(empty_cache=True)
    assert os.listdir(store.mnt / art) == ["mine.png"]
    assert (store.mnt / art / "mine.png").read_bytes() == b"mine"


#: a create's miss in a fresh folder has it listed again after miss_recheck; this long after the mkdir
#: that listing has landed
MISS_RECHECK_SETTLED = DEFAULT_TUNABLES.miss_recheck + 0.5


def test_a_folder_in_use_is_listed_again_in_the_background(store):
    """A folder being worked in is re-listed before its listing expires, off the request path.

    Observable through the kernel: an object another client adds and deletes again around the
    refresh is still in `ls` just after the first listing's TTL ran out, because the listing
    answering then was fetched in the background (a listing fetched on demand would not have it).
    """
    ttl, art = 10.0, "t1/image/b1/busy"
    c, b = _folder_with_listing_ttl(store, ttl, art)
    made = time.monotonic()
    (store.mnt / art / "mine.png").write_bytes(b"mine")
    store.flush()
    # the create's miss has the folder listed again miss_recheck (2 s) after the mkdir: let that
    # listing land first, so the one answering below was fetched before the other client's put
    # (were it fetched after, its refresh would come a second later and race the delete)
    while time.monotonic() - made < MISS_RECHECK_SETTLED:
        time.sleep(0.1)
    t0 = time.monotonic()
    assert os.listdir(store.mnt / art) == ["mine.png"]  # listed (or kept current) from here on
    c.put_object(Bucket=b, Key=f"{art}/passing.png", Body=b"x")
    while time.monotonic() - t0 < ttl - 0.5:
        assert "mine.png" in os.listdir(store.mnt / art)  # the folder stays in use
        time.sleep(0.5)
    c.delete_object(Bucket=b, Key=f"{art}/passing.png")
    while time.monotonic() - t0 < ttl + 0.5:
        time.sleep(0.1)
    assert sorted(os.listdir(store.mnt / art)) == ["mine.png", "passing.png"]
    _only_mine_after_an_empty_cache_remount(store, art)


def test_a_folder_used_lately_stays_listed_after_it_is_left_alone(store):
    """A job writes a batch and leaves; a walk comes later: the folder's listing was kept fresh
    in the background meanwhile (ViewTunables.keep_warm_ttls), so the walk waits for no listing.

    Observable through the kernel: an object another client adds, and deletes again after the
    second background refresh, is still in `ls` once the first refresh's listing has expired;
    a folder left alone used to be re-listed only once, and `ls` would list it anew, without it.
    """
    ttl, art = 20.0, "t1/image/b1/batch"
    c, b = _folder_with_listing_ttl(store, ttl, art)
    made = time.monotonic()  # the folder's listing counts as fetched now (known empty)
    (store.mnt / art / "mine.png").write_bytes(b"mine")
    store.flush()
    assert os.listdir(store.mnt / art) == ["mine.png"]  # its last use; left alone from here
    c.put_object(Bucket=b, Key=f"{art}/passing.png", Body=b"x")
    assert time.monotonic() - made < 1.0, "too slow to place the background listings"
    # background listings: one 1.5 s after the mkdir (the create's miss), then each 0.8 ttl
    # (16 s) later; the second refresh's is at 33.5-34.5 s, the first's expires at 37.5-38.5 s
    while time.monotonic() - made < 35.5:
        time.sleep(0.2)
    c.delete_object(Bucket=b, Key=f"{art}/passing.png")
    while time.monotonic() - made < 39.5:
        time.sleep(0.2)
    assert sorted(os.listdir(store.mnt / art)) == ["mine.png", "passing.png"]
    _only_mine_after_an_empty_cache_remount(store, art)


def test_a_folder_made_through_the_mount_costs_no_listing(store):
    """A new artifact folder is known empty: its first files are created without listing it.

    Observable through the kernel: an object another client puts there right after the mkdir
    is not found by its path at once (storefs asked nothing: a listing would have it), and is
    found once the folder's empty listing is older than the 2 s miss recheck.
    """
    c, b = s3(store), bucket(store)
    art = "t1/image/b1/fresh"
    (store.mnt / art).mkdir(parents=True)
    t0 = time.monotonic()
    c.put_object(Bucket=b, Key=f"{art}/theirs.png", Body=b"theirs")
    for i in range(5):
        (store.mnt / art / f"mine{i}.png").write_bytes(b"mine%d" % i)
    assert not (store.mnt / art / "theirs.png").exists(), "the new folder was listed"
    assert time.monotonic() - t0 < 1.5, "too slow to tell a listing from the miss recheck"
    while not (store.mnt / art / "theirs.png").exists():
        assert time.monotonic() - t0 < 6, "another client's object did not show by its path"
        time.sleep(0.2)
    store.flush()
    assert sorted(k.rpartition("/")[2] for k in store.provider_keys(art + "/")) == \
        ["mine0.png", "mine1.png", "mine2.png", "mine3.png", "mine4.png", "theirs.png"]
    store.remount(empty_cache=True)
    assert sorted(os.listdir(store.mnt / art)) == [f"mine{i}.png" for i in range(5)] + ["theirs.png"]
    assert (store.mnt / art / "mine3.png").read_bytes() == b"mine3"


def test_a_listed_folder_has_its_subfolders_listed_ahead_of_a_walk(store):
    """Reading a folder lists its subfolders in the background, so a walk finds them listed.

    Observable through the kernel: an object another client adds to a subfolder after the
    parent was read (and the background listings ran) is not in that subfolder's `ls` (a
    listing fetched on demand would have it); the walk sees every other file, and all of them
    after a remount with an empty cache.
    """
    c, b = s3(store), bucket(store)
    board = "t1/image/walked"
    keys = [f"{board}/a{i:02d}/f{j}.png" for i in range(20) for j in range(3)]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda k: c.put_object(Bucket=b, Key=k, Body=k.encode()), keys))
    assert len(os.listdir(store.mnt / board)) == 20
    time.sleep(1.0)  # the background listings of the 20 subfolders
    c.put_object(Bucket=b, Key=f"{board}/a07/late.png", Body=b"late")
    seen = sorted(str(Path(d, f).relative_to(store.mnt)) for d, _, files in os.walk(store.mnt / board)
                  for f in files)
    assert seen == sorted(keys), "the walk did not find the subfolders listed ahead of it"
    store.remount(empty_cache=True)
    seen = sorted(str(Path(d, f).relative_to(store.mnt)) for d, _, files in os.walk(store.mnt / board)
                  for f in files)
    assert seen == sorted(keys + [f"{board}/a07/late.png"])
    assert (store.mnt / board / "a07" / "f2.png").read_bytes() == f"{board}/a07/f2.png".encode()


def test_reads_and_uploads_go_on_while_the_daemon_holds_over_a_thousand_files_open(store):
    """Sockets the daemon opens while it holds 1,100 cache files are numbered past 1024, where
    select() cannot look: kept connections must still be checked and used again."""
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 1400:
        pytest.skip("the descriptor limit is too low to hold 1,100 files open")
    c, b = s3(store), bucket(store)
    board = "t1/image/manyopen"
    keys = [f"{board}/a{i // 100:02d}/f{i:04d}.png" for i in range(1100)]
    blobs = {f"{board}/read/x{j}.bin": payload(f"blob{j}", 300_000 + j) for j in range(4)}
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda k: c.put_object(Bucket=b, Key=k, Body=k.encode()), keys))
        list(pool.map(lambda kv: c.put_object(Bucket=b, Key=kv[0], Body=kv[1]), blobs.items()))
    store.remount(empty_cache=True)  # no kept connection yet for reads
    held = [open(store.mnt / k, "rb") for k in keys]
    try:
        assert held[7].read() == keys[7].encode()
        assert len(os.listdir(f"/proc/{store.pid}/fd")) > 1100  # the daemon holds them too
        # uncached reads: the first makes a connection, numbered past 1024; the next ones reuse it
        for k, data in blobs.items():
            assert (store.mnt / k).read_bytes() == data
        new = store.mnt / board / "new" / "after.png"
        new.parent.mkdir()
        new.write_bytes(b"written while 1,100 files are open")
        store.flush()
        st = store.status()
        # a failed request can pass unseen (the kernel's read-ahead drops its EIO, and the next
        # request makes a new connection), so the daemon's own counts must show none
        assert not st["operation_errors"].get("read") and not st["upload_failures"], st
    finally:
        for f in held:
            f.close()
    assert c.get_object(Bucket=b, Key=f"{board}/new/after.png")["Body"].read() == \
        b"written while 1,100 files are open"
    store.remount(empty_cache=True)
    for k, data in blobs.items():
        assert (store.mnt / k).read_bytes() == data
    assert (store.mnt / keys[1099]).read_bytes() == keys[1099].encode()


@pytest.mark.storefs_config(writeback_delay="30s")
def test_state_xattr_dirty_then_clean(store):
    art = store.mnt / ART
    art.mkdir(parents=True)
    p = art / "late.png"
    data = payload("late", 10_000)
    p.write_bytes(data)
    assert xattr(p, "user.storefs.state") == "dirty"
    assert xattr(p, "user.storefs.provider") == "s3"
    assert xattr(p, "user.storefs.content_type") == "image/png"
    assert store.provider_read(f"{ART}/late.png") is None, "uploaded before writeback_delay"
    st = store.status()
    assert st["dirty_files"] == 1 and st["dirty_bytes"] == len(data), st
    store.flush()
    assert xattr(p, "user.storefs.state") == "clean"
    assert get_bytes(store, f"{ART}/late.png") == data
    with urllib.request.urlopen(xattr(p, "user.storefs.url"), timeout=30) as resp:
        assert resp.read() == data


# --------------------------------------------------------------------------- 3. pagination


def test_listing_of_5000_keys(store):
    """ListObjectsV2 pages are 1000 keys: a folder of 5,000 must list whole."""
    c, b = s3(store), bucket(store)
    art = "t1/image/b1/many"
    names = [f"f{i:05d}.txt" for i in range(5000)]

    def put(name: str) -> None:
        c.put_object(Bucket=b, Key=f"{art}/{name}", Body=name.encode())

    with ThreadPoolExecutor(32) as pool:
        list(pool.map(put, names))
    assert len(file_keys(store, art + "/")) == 5000

    listed = os.listdir(store.mnt / art)
    assert len(listed) == 5000, f"{len(listed)} names listed, first missing: " \
                                f"{sorted(set(names) - set(listed))[:5]}"
    assert sorted(listed) == names
    for name in names[::499] + [names[999], names[1000], names[-1]]:
        st = os.stat(store.mnt / art / name)
        assert stat.S_ISREG(st.st_mode) and st.st_size == len(name.encode()), name
    assert (store.mnt / art / names[4321]).read_bytes() == names[4321].encode()


# --------------------------------------------------------------------------- 4. 1 GiB multipart


def make_big_file(path: Path, size: int) -> str:
    """size bytes of 1 MiB blocks (a random block stamped with its index); returns the sha256."""
    base = bytearray(os.urandom(MiB))
    h = hashlib.sha256()
    with open(path, "wb") as f:
        for i in range(size // MiB):
            base[:8] = struct.pack("<Q", i)
            f.write(base)
            h.update(base)
    return h.hexdigest()


@pytest.mark.timeout(600)
def test_one_gib_file_multipart(store, tmp_path):
    src = tmp_path / "big.bin"
    key = "t1/model/b1/a1/big.bin"
    try:
        digest = make_big_file(src, GiB)
        (store.mnt / "t1/model/b1/a1").mkdir(parents=True)
        run(["cp", str(src), str(store.mnt / key)], timeout=300)
        src.unlink()
        store.flush(timeout=300)

        h = head(store, key)
        assert h["ContentLength"] == GiB
        etag = h["ETag"].strip('"')
        m = re.fullmatch(r"[0-9a-f]{32}-(\d+)", etag)
        assert m and int(m.group(1)) >= 2, f"ETag {etag!r} has no multipart suffix"

        store.remount(empty_cache=True)
        st = os.stat(store.mnt / key)
        assert st.st_size == GiB
        assert file_sha256(store.mnt / key) == digest
    finally:
        with contextlib.suppress(OSError):
            src.unlink()
        with contextlib.suppress(Exception):
            s3(store).delete_object(Bucket=bucket(store), Key=key)


# --------------------------------------------------------------------------- 5. ranged reads


def test_ranged_read_does_not_download_whole_object(store):
    """Reading 64 KiB of a 200 MiB object fetches ranges, not the object."""
    c, b = s3(store), bucket(store)
    key = "t1/video/b1/a1/movie.mp4"
    size = 200 * MiB
    block = bytearray(os.urandom(MiB))
    data = bytearray()
    for i in range(size // MiB):
        block[:8] = struct.pack("<Q", i)
        data += block
    data = bytes(data)
    c.upload_fileobj(io.BytesIO(data), b, key, Config=TransferConfig(multipart_chunksize=32 * MiB))
    try:
        before = store.status()["bytes_fetched"]
        with open(store.mnt / key, "rb") as f:
            head_bytes = f.read(64 * 1024)
        assert head_bytes == data[:64 * 1024]
        time.sleep(1.0)  # read-ahead running in the background counts too
        fetched = store.status()["bytes_fetched"] - before
        assert fetched < 16 * MiB, f"reading 64 KiB fetched {fetched / MiB:.1f} MiB"

        off = 150 * MiB + 12345
        with open(store.mnt / key, "rb") as f:
            f.seek(off)
            mid = f.read(64 * 1024)
        assert mid == data[off:off + 64 * 1024]
        time.sleep(1.0)
        fetched = store.status()["bytes_fetched"] - before
        print(f"two 64 KiB reads fetched {fetched / MiB:.1f} MiB")
        assert fetched < 32 * MiB, f"two 64 KiB reads fetched {fetched / MiB:.1f} MiB"
        assert os.stat(store.mnt / key).st_size == size
    finally:
        with contextlib.suppress(Exception):
            c.delete_object(Bucket=b, Key=key)


# --------------------------------------------------------------------------- 6. folder rename


def test_folder_rename_moves_every_key(store):
    old, new = "t1/image/b1/art", "t1/image/b2/art"
    src = store.mnt / old
    expected: dict[str, dict] = {}
    for i in range(50):
        rel = f"s{i % 5}/d{i % 3}/f{i:02d}.bin" if i % 7 else f"top{i:02d}.bin"
        data = payload(f"mv/{rel}", 100 + 997 * i)
        p = src / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        os.chmod(p, 0o640 if i % 2 else 0o644)
        os.utime(p, (1_650_000_000 + i + 0.5, 1_650_000_000 + i + 0.5))
        expected[rel] = {"sha256": sha256(data), "size": len(data), "mode": 0o640 if i % 2 else 0o644,
                         "mtime": 1_650_000_000 + i + 0.5}
    (src / "emptydir").mkdir()
    store.flush()
    assert file_keys(store, old + "/") == sorted(f"{old}/{r}" for r in expected)

    (store.mnt / "t1/image/b2").mkdir()
    run(["mv", str(src), str(store.mnt / new)])
    assert not src.exists()
    assert_same_tree(expected, tree_state(store.mnt / new))
    store.flush()

    assert file_keys(store, new + "/") == sorted(f"{new}/{r}" for r in expected)
    for rel, exp in expected.items():
        assert sha256(get_bytes(store, f"{new}/{rel}")) == exp["sha256"], rel
    leftovers = all_objects(store, old + "/")
    assert not leftovers, f"objects left under the old prefix: {sorted(leftovers)[:10]}"
    assert not all_objects(store, old), "an object named like the old folder is left"

    store.remount(empty_cache=True)
    assert not (store.mnt / old).exists()
    assert_same_tree(expected, tree_state(store.mnt / new))
    assert (store.mnt / new / "emptydir").is_dir()


# --------------------------------------------------------------------------- 7. outage


# reads of uncached data give up after 3 s, an upload attempt after 2 tries; uploads retry at least every 5 s
SHORT_READ_DEADLINE = pytest.mark.parametrize("s3_options", [{"read_deadline": 3, "max_attempts": 2}],
                                              ids=["read_deadline=3"])
QUICK_RETRIES = pytest.mark.storefs_config(writeback_delay="0.3s", retry_max_delay="5s")


@SHORT_READ_DEADLINE
@QUICK_RETRIES
def test_server_outage(store, seaweed, tmp_path, s3_options):
    """Writes keep working while the server is down and reach it later; uncached reads fail with EIO."""
    c, b = s3(store), bucket(store)
    mnt = store.mnt
    cold_key = "t1/image/b1/pre/cold.png"
    cold = payload("cold", 3 * MiB)
    c.put_object(Bucket=b, Key=cold_key, Body=cold)
    # the mount knows cold.png's metadata (a stat, no listing), never its data
    assert os.stat(mnt / cold_key).st_size == len(cold)

    art = "t1/image/b2/outage"  # a new board and artifact
    srcdir = tmp_path / "src"
    srcdir.mkdir()
    expected: dict[str, bytes] = {}
    times: dict[str, float] = {}
    try:
        seaweed.stop_server()
        t0 = time.monotonic()
        timed("mkdir -p", times, run, ["mkdir", "-p", str(mnt / art)])
        for i in range(30):
            name = f"f{i:02d}.png"
            data = payload(f"outage/{i}", 1000 + 4099 * i)
            expected[name] = data
            if i % 2:
                (srcdir / name).write_bytes(data)
                timed(f"cp {name}", times, run, ["cp", str(srcdir / name), str(mnt / art / name)], timeout=60)
            else:
                def write(path: Path = mnt / art / name, data: bytes = data) -> None:
                    with open(path, "wb") as f:
                        f.write(data)
                timed(f"write {name}", times, write)
        timed("rename", times, os.rename, mnt / art / "f04.png", mnt / art / "renamed.png")
        expected["renamed.png"] = expected.pop("f04.png")
        timed("unlink", times, os.unlink, mnt / art / "f07.png")
        del expected["f07.png"]
        listed = timed("listdir", times, os.listdir, mnt / art)
        back = timed("read back", times, (mnt / art / "f10.png").read_bytes)
        total = time.monotonic() - t0
        print(f"write phase {total:.1f}s; slowest: {sorted(times.items(), key=lambda kv: -kv[1])[:5]}")
        slow = {k: round(v, 1) for k, v in times.items() if v > 10}
        assert not slow, f"operations slower than 10 s while the server is down: {slow}"
        assert total < 60, f"the write phase took {total:.0f}s while the server is down"
        assert sorted(listed) == sorted(expected)
        assert back == expected["f10.png"]

        # data that was never cached cannot be read: EIO, within the configured bound
        t1 = time.monotonic()
        with pytest.raises(OSError) as exc:
            with open(mnt / cold_key, "rb") as f:
                f.read()
        took = time.monotonic() - t1
        print(f"uncached read failed after {took:.1f}s: {exc.value!r}")
        assert exc.value.errno == errno.EIO, f"got {errno.errorcode.get(exc.value.errno)} ({exc.value})"
        assert took < 12, f"the failing read took {took:.1f}s with read_deadline 3s"

        # uploads fail and are retried; status shows it
        deadline = time.monotonic() + 30
        while True:
            st = store.status()
            if st["pending"] and st["errors"]:
                break
            assert time.monotonic() < deadline, f"no upload errors in status after 30 s: {st}"
            time.sleep(0.5)
        assert st["pending"] >= len(expected), st
        assert all(e.get("key") and e.get("error") for e in st["errors"]), st["errors"]
        assert seaweed.secret_key not in str(st), "the secret key shows in storefs status"
    finally:
        seaweed.restart_server()

    wait_readable(store, cold_key)
    store.flush(timeout=150)
    st = store.status()
    assert st["pending"] == 0 and not st["errors"], st
    assert file_keys(store, art + "/") == sorted(f"{art}/{n}" for n in expected)
    for name, data in expected.items():
        assert get_bytes(store, f"{art}/{name}") == data, name
    assert file_keys(store, "t1/image/b1/") == [cold_key]
    assert (mnt / cold_key).read_bytes() == cold


@SHORT_READ_DEADLINE
@QUICK_RETRIES
def test_outage_keeps_what_the_mount_knew(store, seaweed, s3_options):
    """An outage longer than the listing TTL: what the mount listed, cached or wrote stays usable."""
    store.extra_config["fuse"] = {"dir_cache_ttl": "5s"}  # an outage longer than it stays short
    store.remount()
    c, b = s3(store), bucket(store)
    mnt = store.mnt
    pre = "t1/image/b1/pre"
    cold = payload("cold", 100_000)
    c.put_object(Bucket=b, Key=f"{pre}/cold.png", Body=cold)
    c.put_object(Bucket=b, Key=f"{pre}/warm.png", Body=b"warm")
    c.put_object(Bucket=b, Key=f"{pre}/listed.png", Body=b"listed")
    # the way a user gets there: ls of each level, stat of cold.png (never read), a read of warm.png,
    # and uploaded.png written through the mount and uploaded; listed.png only ever seen in a listing
    assert os.listdir(mnt / "t1") == ["image"]
    assert os.listdir(mnt / "t1/image") == ["b1"]
    assert os.listdir(mnt / "t1/image/b1") == ["pre"]
    assert os.stat(mnt / pre / "cold.png").st_size == len(cold)
    assert (mnt / pre / "warm.png").read_bytes() == b"warm"
    uploaded = payload("uploaded", 20_000)
    (mnt / pre / "uploaded.png").write_bytes(uploaded)
    store.flush()
    assert get_bytes(store, f"{pre}/uploaded.png") == uploaded
    assert sorted(os.listdir(mnt / pre)) == ["cold.png", "listed.png", "uploaded.png", "warm.png"]
    last_listed = time.monotonic()

    problems: list[str] = []  # asserted at the end, so that every check runs and the server restarts

    def ancestors() -> str:
        seen = []
        for rel in ("t1", "t1/image", "t1/image/b1", pre):
            try:
                os.stat(mnt / rel)
                seen.append(f"{rel} ok")
            except OSError as e:
                seen.append(f"{rel} {errno.errorcode.get(e.errno, e.errno)}")
        return ", ".join(seen)

    def attempt(what: str, fn: Any, *args: Any, ok_errnos: tuple[int, ...] = ()) -> Any:
        try:
            return fn(*args)
        except OSError as e:
            if e.errno not in ok_errnos:
                problems.append(f"{what}: {errno.errorcode.get(e.errno, e.errno)} ({e.strerror}); "
                                f"stat of the folders: {ancestors()}")
            return e

    try:
        seaweed.stop_server()
        # an outage that lasts: every listing the mount cached is older than dir_cache_ttl (5 s)
        time.sleep(max(0.0, last_listed + 7 - time.monotonic()))
        attempt("stat of the board folder t1/image/b1 (listed before the outage)", os.stat, mnt / "t1/image/b1")
        # EIO is an honest answer for metadata never fetched; ENOENT is not
        attempt(f"stat of {pre}/listed.png (listed before the outage, never stat'ed)",
                os.stat, mnt / pre / "listed.png", ok_errnos=(errno.EIO,))
        warm = attempt(f"read of {pre}/warm.png (cached)", (mnt / pre / "warm.png").read_bytes)
        if isinstance(warm, bytes) and warm != b"warm":
            problems.append(f"cached warm.png read back as {warm[:20]!r}")
        try:
            with open(mnt / pre / "cold.png", "rb") as f:
                f.read()
            problems.append(f"read of {pre}/cold.png (never read before the outage) succeeded")
        except OSError as e:
            if e.errno != errno.EIO:
                problems.append(f"read of {pre}/cold.png (never read before the outage): "
                                f"{errno.errorcode.get(e.errno, e.errno)}, expected EIO; "
                                f"stat of the folders: {ancestors()}")
        renamed = not isinstance(attempt(f"rename of {pre}/uploaded.png (uploaded and cached) to moved.png",
                                         os.rename, mnt / pre / "uploaded.png", mnt / pre / "moved.png"),
                                 OSError)
        if renamed:
            moved = attempt(f"read of {pre}/moved.png", (mnt / pre / "moved.png").read_bytes)
            if isinstance(moved, bytes) and moved != uploaded:
                problems.append("moved.png does not read back as uploaded.png's bytes")
        unlinked = not isinstance(attempt(f"unlink of {pre}/warm.png (cached)", os.unlink, mnt / pre / "warm.png"),
                                  OSError)
        pre_expected = sorted({"cold.png", "listed.png", "moved.png" if renamed else "uploaded.png"}
                              | (set() if unlinked else {"warm.png"}))
        listing = attempt(f"listing of {pre}", os.listdir, mnt / pre)
        if isinstance(listing, list) and sorted(listing) != pre_expected:
            problems.append(f"{pre} listed {sorted(listing)}, expected {pre_expected} "
                            "(its objects as last listed, with the local rename and unlink)")
    finally:
        seaweed.restart_server()

    wait_readable(store, f"{pre}/cold.png")
    store.flush(timeout=150)
    st = store.status()
    assert st["pending"] == 0 and not st["errors"], st
    assert file_keys(store, pre + "/") == [f"{pre}/{n}" for n in pre_expected]
    assert get_bytes(store, f"{pre}/moved.png" if renamed else f"{pre}/uploaded.png") == uploaded
    assert not problems, "while the server was down:\n" + "\n".join(problems)


# --------------------------------------------------------------------------- 8. bad config


class RawS3Config:
    """A provider section as given, for a mount that must be refused (no bucket is created)."""

    name = "s3"

    def __init__(self, cfg: dict) -> None:
        self.cfg = cfg

    def provider_config(self) -> dict:
        return dict(self.cfg)


def _bad_configs(seaweed: Any, silent_port: int) -> tuple[dict[str, tuple[dict, list[str]]], dict]:
    good = {"type": "s3", "bucket": "", "endpoint_url": seaweed.endpoint_url, "region": seaweed.region,
            "path_style": True, "access_key_id": seaweed.access_key, "secret_access_key": seaweed.secret_key}
    port = free_port()
    return {
        # case -> (config changes, words of which the message must hold one)
        "bucket": ({"bucket": f"nope-{uuid.uuid4().hex[:12]}"}, ["bucket"]),
        "endpoint": ({"endpoint_url": f"http://127.0.0.1:{port}"}, [f"127.0.0.1:{port}"]),
        # a listener that never answers: connections open, requests time out
        "silent-endpoint": ({"endpoint_url": f"http://127.0.0.1:{silent_port}"}, [f"127.0.0.1:{silent_port}"]),
        "credentials": ({"secret_access_key": "wrong-" + uuid.uuid4().hex},
                        ["credential", "access key", "secret", "denied", "signature"]),
        "access-key-id": ({"access_key_id": "nobody-" + uuid.uuid4().hex[:8]},
                          ["credential", "access key", "secret", "denied", "signature"]),
    }, good


@pytest.mark.parametrize("case", ["bucket", "endpoint", "silent-endpoint", "credentials", "access-key-id"])
def test_bad_s3_config_refused_at_mount(case, seaweed, tmp_path):
    require_fuse()
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(64)
        cases, good = _bad_configs(seaweed, silent.getsockname()[1])
        _check_refused(case, cases, good, seaweed, tmp_path)


def _check_refused(case: str, cases: dict, good: dict, seaweed: Any, tmp_path: Path) -> None:
    changes, words = cases[case]
    cfg = {**good, **changes}
    if case != "bucket":
        cfg["bucket"] = f"t-{uuid.uuid4().hex[:20]}"
        seaweed.create_bucket(cfg["bucket"])
    m = StorefsMount(tmp_path, RawS3Config(cfg))
    m.write_config()
    t0 = time.monotonic()
    try:
        res = subprocess.run([sys.executable, "-m", "storefs", "mount", "-c", str(m.config_path),
                              "--log-file", str(m.log_path), str(m.mnt)],
                             capture_output=True, text=True, timeout=60, env=clean_env())
        took = time.monotonic() - t0
        assert res.returncode != 0, f"mount with a wrong {case} succeeded: {res.stdout} {res.stderr}"
        assert took < 20, f"mount with a wrong {case} took {took:.0f}s to fail"
        assert not os.path.ismount(m.mnt) and not is_mounted(m.mnt), "a mount was left behind"
        err = res.stderr
        low = err.lower()
        assert any(w in low for w in words), f"stderr does not name the {case} problem: {err!r}"
        if case == "bucket":
            assert cfg["bucket"] in err, err
        assert seaweed.secret_key not in err and cfg["secret_access_key"] not in err, "a secret leaked to stderr"
        assert "Traceback" not in err, err
    finally:
        if is_mounted(m.mnt):
            m.cleanup()
            lazy_unmount(m.mnt)
