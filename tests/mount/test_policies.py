"""Policies through a real mount on two providers at once: a local folder and a SeaweedFS bucket.

Every mount here has two providers, `local` (a folder, the default) and `s3` (a fresh bucket on the
session's SeaweedFS server), with the routing rules

    - {match: {type: video, size_gt: 1MiB}, provider: s3}
    - {provider: local}

and checks both of them after each step with plain file reads and plain boto3:

1. routing by type and size, including files that grow or shrink across the boundary (they move,
   and leave no copy behind); the mount shows both providers merged;
2. max_file_size: a write that crosses the limit is short (the bytes up to it land), the next is EFBIG,
   as on ext4; a truncate past it is EFBIG and the file keeps its size;
3. layout.content_types: files of the wrong kind are refused (EINVAL) at create and at rename,
   dot-temporaries are not checked (rsync works);
4. extended attributes: user.* survive upload, rename, a fresh cache and a move between providers;
   user.storefs.* are read-only facts (content type, URL, state, provider, etag, size);
5. single-tenant mounts (--tenant, and the config key `tenant`);
6. the bad-input table: each refusal has its errno, one WARNING log line naming the path, and
   nothing reaches either provider; a wrong config is refused before mounting.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from storefs.testing.backends import LocalBackend, S3Backend
from storefs.testing.data import create_file, expect_errno, payload, sha256
from storefs.testing.mount import StorefsMount, clean_env, is_mounted, lazy_unmount, run

pytestmark = pytest.mark.timeout(300)

KiB = 1024
MiB = 1024 * KiB
ROUTING = [{"match": {"type": "video", "size_gt": "1MiB"}, "provider": "s3"}, {"provider": "local"}]
LIMITS = {"default": "1MiB", "video": "4MiB"}
IMG = "t1/image/b1/a1"
VID = "t1/video/b1/a1"
FOX = "a red fox \U0001F98A".encode()
XATTRS = {"user.prompt": FOX, "user.model": b"sdxl-1.0", "user.seed": b"42"}


def require_fuse() -> None:
    from conftest import require_fuse as _require_fuse  # the same skip/fail rule as the `store` fixture
    _require_fuse()


# --------------------------------------------------------------------------- two providers


class DualBackend:
    """The two providers of these mounts: `local` (a folder) and `s3` (a fresh bucket), seen directly."""

    name = "local"

    def __init__(self, root: Path, server: Any) -> None:
        self.local = LocalBackend(root)
        self.s3 = S3Backend(server, f"p-{uuid.uuid4().hex[:20]}")
        self.base = self.local.base
        self.bucket = self.s3.bucket
        self.client = self.s3.client

    def providers(self) -> dict:
        return {"local": self.local.provider_config(), "s3": self.s3.provider_config()}

    def provider_config(self) -> dict:
        return self.local.provider_config()

    def where(self, key: str) -> list[str]:
        """The providers that hold a file object at key."""
        return [n for n, b in (("local", self.local), ("s3", self.s3)) if b.read(key) is not None]

    def read(self, key: str) -> bytes | None:
        data = self.local.read(key)
        return data if data is not None else self.s3.read(key)

    def keys(self, prefix: str = "") -> list[str]:
        return sorted(set(self.local.keys(prefix)) | set(self.s3.keys(prefix)))

    def exists(self, path: str) -> bool:
        return self.local.exists(path) or self.s3.exists(path)

    def meta(self, key: str) -> dict | None:
        return self.local.meta(key) or self.s3.meta(key)

    def s3_objects(self, prefix: str = "") -> dict[str, int]:
        """{key: size} of every object in the bucket, folder markers included."""
        out: dict[str, int] = {}
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
            out.update({o["Key"]: o["Size"] for o in page.get("Contents", [])})
        return out

    def head(self, key: str) -> dict:
        return self.client.head_object(Bucket=self.bucket, Key=key)

    def put(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        self.client.put_object(Bucket=self.bucket, Key=key, Body=data, ContentType=content_type)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.client.close()


class PolicyMount(StorefsMount):
    """A StorefsMount whose config names both providers and the routing rules; log read by offset."""

    def __init__(self, root: Path, backend: DualBackend, *, mount_args: tuple[str, ...] = (), **cache: Any) -> None:
        super().__init__(root, backend, **cache)
        self.mount_args = list(mount_args)

    def config(self) -> dict:
        cfg: dict[str, Any] = {
            "default_provider": "local",
            "providers": self.backend.providers(),
            "routing_rules": ROUTING,
            "cache": {"dir": str(self.cache), **self.cache_options},
        }
        cfg.update(self.extra_config)
        return cfg

    def mount_command(self, config_path: Path | None = None) -> list[str]:
        return ["mount", "-c", str(config_path or self.config_path), *self.mount_args, "--log-level",
                self.log_level, "--log-file", str(self.log_path), str(self.mnt)]

    def start(self, **cache: Any) -> PolicyMount:
        self.cache_options.update(cache)
        assert not self.mounted, f"{self.mnt} is already mounted"
        self.write_config()
        res = self.storefs(*self.mount_command(), check=False)
        if res.returncode != 0:
            raise AssertionError(f"storefs mount failed ({res.returncode}):\nstdout: {res.stdout}\n"
                                 f"stderr: {res.stderr}\nlog tail:\n{self.log_tail()}")
        assert self.mounted, f"storefs mount returned 0 but {self.mnt} is not mounted\n{res.stderr}"
        self.pid = int(self.status()["pid"])
        return self

    # -- the daemon log, read from a byte offset

    def log_mark(self) -> int:
        try:
            return self.log_path.stat().st_size
        except FileNotFoundError:
            return 0

    def log_since(self, mark: int) -> list[str]:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(mark)
                return f.read().decode("utf-8", "replace").splitlines()
        except FileNotFoundError:
            return []

    def warnings_since(self, mark: int) -> list[str]:
        return [ln for ln in self.log_since(mark) if " WARNING " in ln or " ERROR " in ln or "Traceback" in ln]


@pytest.fixture
def dual(seaweed: Any, tmp_path: Path, request: pytest.FixtureRequest):
    """dual(name, backend=None, extra={config keys}, mount_args=(), start=True, **cache) -> PolicyMount."""
    require_fuse()
    mounts: list[PolicyMount] = []
    backends: list[DualBackend] = []

    def make(name: str = "m", *, backend: DualBackend | None = None, extra: dict | None = None,
             mount_args: tuple[str, ...] = (), start: bool = True, **cache: Any) -> PolicyMount:
        root = tmp_path / name
        if backend is None:
            backend = DualBackend(root, seaweed)
            backends.append(backend)
        m = PolicyMount(root, backend, mount_args=mount_args, **cache)
        m.extra_config.update(extra or {})
        mounts.append(m)
        if start:
            m.start()
        return m

    try:
        yield make
    finally:
        rep = getattr(request.node, "rep_call", None)
        for m in mounts:
            m.cleanup()
            if rep is None or rep.failed:
                print(f"storefs log of {m.mnt}:\n{m.log_tail(120)}")
        for b in backends:
            b.close()


def write_fd_until_error(path: Path, data: bytes, chunk: int) -> tuple[int, OSError | None]:
    """os.write data in chunks on one fd; returns (bytes written, the error that stopped it)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    written, err = 0, None
    try:
        while written < len(data):
            try:
                n = os.write(fd, data[written:written + chunk])
            except OSError as e:
                err = e
                break
            assert n > 0
            written += n
    finally:
        os.close(fd)
    return written, err


def one_warning(m: PolicyMount, mark: int, *fragments: str) -> str:
    """Exactly one WARNING line since mark, holding every fragment (the path, the limit ...)."""
    lines = m.warnings_since(mark)
    assert len(lines) == 1, "expected exactly one WARNING line, got:\n" + "\n".join(m.log_since(mark))
    for frag in fragments:
        assert frag in lines[0], f"{frag!r} not in the log line {lines[0]!r}"
    return lines[0]


def xattrs_of(path: Path) -> dict[str, bytes]:
    return {n: os.getxattr(path, n) for n in os.listxattr(path) if not n.startswith("user.storefs.")}


def storefs_attr(path: Path, what: str) -> str:
    return os.getxattr(path, f"user.storefs.{what}").rstrip(b"\0").decode()


# --------------------------------------------------------------------------- 1. routing


def test_routing_by_type_and_size_and_migration(dual):
    m = dual()
    b: DualBackend = m.backend  # type: ignore[assignment]
    for d in (IMG, VID):
        (m.mnt / d).mkdir(parents=True)
    files = {
        f"{VID}/big.mp4": payload("big", 2 * MiB),
        f"{VID}/small.mp4": payload("small", 100 * KiB),
        f"{VID}/edge.mp4": payload("edge", 1 * MiB),  # size_gt is strict: exactly 1 MiB stays local
        f"{IMG}/big.png": payload("bigpng", 2 * MiB),  # images are never routed to s3
        f"{IMG}/small.png": payload("smallpng", 10 * KiB),
    }
    for key, data in files.items():
        (m.mnt / key).write_bytes(data)
    m.flush()
    assert b.where(f"{VID}/big.mp4") == ["s3"]
    for key in files:
        if key != f"{VID}/big.mp4":
            assert b.where(key) == ["local"], key
    assert b.s3.read(f"{VID}/big.mp4") == files[f"{VID}/big.mp4"]
    assert b.local.read(f"{VID}/small.mp4") == files[f"{VID}/small.mp4"]

    # a video that grows past the boundary moves to the bucket and leaves the local folder
    grow = f"{VID}/grow.mp4"
    head = payload("grow", 100 * KiB)
    (m.mnt / grow).write_bytes(head)
    m.flush()
    assert b.where(grow) == ["local"]
    tail = payload("grow-tail", 2 * MiB - len(head))
    with open(m.mnt / grow, "ab") as f:
        f.write(tail)
    m.flush()
    assert b.where(grow) == ["s3"], "a video grown past 1 MiB must live in the bucket only"
    assert b.s3.read(grow) == head + tail
    files[grow] = head + tail

    # ... and one that shrinks below it comes back
    shrink = f"{VID}/shrink.mp4"
    big = payload("shrink", 2 * MiB)
    (m.mnt / shrink).write_bytes(big)
    m.flush()
    assert b.where(shrink) == ["s3"]
    os.truncate(m.mnt / shrink, 10 * KiB)
    m.flush()
    assert b.where(shrink) == ["local"], "a video truncated to 10 KiB must live in the local folder only"
    assert b.local.read(shrink) == big[:10 * KiB]
    files[shrink] = big[:10 * KiB]

    # the mount merges both providers
    want_vid = sorted(k.rsplit("/", 1)[1] for k in files if k.startswith(VID))
    assert sorted(os.listdir(m.mnt / VID)) == want_vid
    assert sorted(os.listdir(m.mnt / IMG)) == ["big.png", "small.png"]
    assert storefs_attr(m.mnt / VID / "big.mp4", "provider") == "s3"
    assert storefs_attr(m.mnt / VID / "small.mp4", "provider") == "local"

    m.remount(empty_cache=True)
    assert sorted(os.listdir(m.mnt)) == ["t1"]
    assert sorted(os.listdir(m.mnt / "t1")) == ["image", "video"]
    assert sorted(os.listdir(m.mnt / VID)) == want_vid
    for key, data in files.items():
        assert os.stat(m.mnt / key).st_size == len(data), key
        assert sha256((m.mnt / key).read_bytes()) == sha256(data), key
    assert b.where(f"{VID}/big.mp4") == ["s3"] and b.where(grow) == ["s3"] and b.where(shrink) == ["local"]


# --------------------------------------------------------------------------- 2. size limits


def test_size_limits(dual, tmp_path):
    m = dual(extra={"max_file_size": LIMITS})
    b: DualBackend = m.backend  # type: ignore[assignment]
    for d in (IMG, VID):
        (m.mnt / d).mkdir(parents=True)
    limit = 1 * MiB

    # os.write on one fd: as on ext4, the write that crosses 1 MiB is short, the next one is EFBIG
    data = payload("limit", 2 * MiB)
    path = m.mnt / IMG / "big.png"
    mark = m.log_mark()
    written, err = write_fd_until_error(path, data, 96 * KiB)
    assert err is not None and err.errno == errno.EFBIG, f"expected EFBIG, got {err!r} after {written} bytes"
    assert written == limit, "the bytes up to the limit land; the write that starts there is refused"
    assert os.stat(path).st_size == written
    one_warning(m, mark, f"{IMG}/big.png", str(limit))
    # unaligned writes: the same, and what was reported written is what the file holds
    written2, err = write_fd_until_error(m.mnt / IMG / "odd.png", data, 100_000)
    assert err is not None and err.errno == errno.EFBIG and written2 == limit
    assert os.stat(m.mnt / IMG / "odd.png").st_size == written2
    assert (m.mnt / IMG / "odd.png").read_bytes() == data[:written2]

    # truncate (path and fd) past the limit
    mark = m.log_mark()
    expect_errno(errno.EFBIG, os.truncate, path, 2 * MiB)
    one_warning(m, mark, f"{IMG}/big.png", str(limit))
    with open(path, "r+b") as f:
        expect_errno(errno.EFBIG, os.ftruncate, f.fileno(), limit + 1)
    assert os.stat(path).st_size == written
    os.truncate(path, 1000)
    os.truncate(path, limit)  # exactly the limit is allowed
    assert os.stat(path).st_size == limit
    expected_png = data[:1000] + bytes(limit - 1000)

    # videos have their own limit (4 MiB)
    vid = payload("video", 3 * MiB)
    (m.mnt / VID / "ok.mp4").write_bytes(vid)
    written, err = write_fd_until_error(m.mnt / VID / "huge.mp4", payload("huge", 5 * MiB), MiB)
    assert err is not None and err.errno == errno.EFBIG and written == 4 * MiB

    # programs see the failure
    src = tmp_path / "src.png"
    src.write_bytes(payload("src", 2 * MiB))
    mark = m.log_mark()
    res = run(["dd", f"if={src}", f"of={m.mnt / IMG / 'dd.png'}", "bs=1M"], check=False)
    assert res.returncode != 0 and "File too large" in res.stderr, res.stderr
    one_warning(m, mark, f"{IMG}/dd.png", str(limit))
    mark = m.log_mark()
    res = run(["cp", str(src), str(m.mnt / IMG / "cp.png")], check=False)
    assert res.returncode != 0 and "File too large" in res.stderr, res.stderr
    one_warning(m, mark, f"{IMG}/cp.png", str(limit))
    assert os.stat(m.mnt / IMG / "dd.png").st_size == limit  # dd's first 1 MiB block fits

    m.flush()
    assert b.where(f"{IMG}/big.png") == ["local"]
    assert b.local.read(f"{IMG}/big.png") == expected_png
    assert b.where(f"{VID}/ok.mp4") == ["s3"] and b.s3.read(f"{VID}/ok.mp4") == vid
    assert len(b.s3.read(f"{VID}/huge.mp4") or b"") == 4 * MiB
    assert len(b.local.read(f"{IMG}/dd.png") or b"") == limit
    for key in b.keys(""):
        size = len(b.read(key) or b"")
        assert size <= (4 * MiB if "/video/" in key else limit), f"{key}: {size} bytes reached a provider"


# --------------------------------------------------------------------------- 3. content types


def test_content_types(dual, tmp_path):
    m = dual(extra={"layout": {"content_types": {"image": ["image/*"]}}})
    b: DualBackend = m.backend  # type: ignore[assignment]
    for d in (IMG, VID):
        (m.mnt / d).mkdir(parents=True)
    art = m.mnt / IMG

    mark = m.log_mark()
    expect_errno(errno.EINVAL, os.open, art / "x.txt", os.O_WRONLY | os.O_CREAT, 0o644)
    one_warning(m, mark, f"{IMG}/x.txt", "text/plain")
    assert not (art / "x.txt").exists()
    create_file(art / "x.png", b"png-x")

    # rsync's pattern: a dot-temporary is not checked, its final name is
    tmp = art / ".x.png.Ab12Cd"
    create_file(tmp, b"png-y")
    mark = m.log_mark()
    expect_errno(errno.EINVAL, os.rename, tmp, art / "y.txt")
    one_warning(m, mark, f"{IMG}/y.txt")
    assert tmp.exists() and not (art / "y.txt").exists()
    os.rename(tmp, art / "y.png")
    assert sorted(os.listdir(art)) == ["x.png", "y.png"]

    # a type with no content_types takes any file
    create_file(m.mnt / VID / "notes.txt", b"notes")

    src = tmp_path / "pngs"
    (src / "sub").mkdir(parents=True)
    pngs = {"a.png": payload("a", 5000), "b.png": payload("b", 300 * KiB), "sub/c.png": payload("c", 17)}
    for rel, data in pngs.items():
        (src / rel).write_bytes(data)
    run(["rsync", "-a", f"{src}/", f"{m.mnt / 't1/image/b1/a2'}/"])
    for rel, data in pngs.items():
        assert (m.mnt / "t1/image/b1/a2" / rel).read_bytes() == data

    # rsync of a text file into the image artifact fails at its rename, and leaves nothing behind
    txt = tmp_path / "txt"
    txt.mkdir()
    (txt / "readme.txt").write_bytes(b"not an image")
    res = run(["rsync", "-a", f"{txt}/", f"{art}/"], check=False)
    assert res.returncode != 0, res.stdout + res.stderr
    assert sorted(os.listdir(art)) == ["x.png", "y.png"]

    m.flush()
    assert b.keys("t1/image") == sorted([f"{IMG}/x.png", f"{IMG}/y.png"] +
                                        [f"t1/image/b1/a2/{rel}" for rel in pngs])
    assert b.where(f"{VID}/notes.txt") == ["local"]
    assert b.s3.keys("") == []


# --------------------------------------------------------------------------- 4. extended attributes


def check_user_xattrs(path: Path) -> None:
    assert xattrs_of(path) == XATTRS, path
    for name, value in XATTRS.items():
        assert os.getxattr(path, name) == value


def test_extended_attributes(dual):
    m = dual(writeback_delay="30s")
    b: DualBackend = m.backend  # type: ignore[assignment]
    (m.mnt / IMG).mkdir(parents=True)
    p = m.mnt / IMG / "fox.png"
    data = payload("fox", 50 * KiB)
    p.write_bytes(data)
    assert storefs_attr(p, "state") == "dirty"  # 30 s of write-back delay
    for name, value in XATTRS.items():
        os.setxattr(p, name, value)
    check_user_xattrs(p)
    names = os.listxattr(p)  # storefs' own answer by name only: cp -a must not copy a presigned URL
    assert not [n for n in names if n.startswith("user.storefs.")], names

    m.flush()
    assert storefs_attr(p, "state") == "clean"
    assert storefs_attr(p, "provider") == "local"
    assert storefs_attr(p, "content_type") == "image/png"
    assert storefs_attr(p, "size") == str(len(data))
    assert storefs_attr(p, "etag")
    url = storefs_attr(p, "url")
    assert url.startswith("file://"), url
    local_file = Path(urllib.parse.unquote(urllib.parse.urlsplit(url).path))
    assert local_file.resolve() == (b.base / IMG / "fox.png").resolve()
    assert local_file.read_bytes() == data
    assert not [n for n in os.listxattr(p) if n.startswith("user.storefs.")]
    for name, value in XATTRS.items():  # the local provider keeps them as the file's own xattrs
        assert os.getxattr(b.base / IMG / "fox.png", name) == value
    if shutil.which("getfattr"):  # the attr package
        res = run(["getfattr", "-d", "--absolute-names", str(p)])
        for name in XATTRS:
            assert f"{name}=" in res.stdout, res.stdout
        assert 'user.seed="42"' in res.stdout and 'user.model="sdxl-1.0"' in res.stdout, res.stdout

    # read-only facts and foreign namespaces
    mark = m.log_mark()
    expect_errno(errno.EPERM, os.setxattr, p, "user.storefs.state", b"clean")
    one_warning(m, mark, "user.storefs.state")
    assert storefs_attr(p, "state") == "clean"
    for name in ("trusted.x", "security.x"):
        try:
            os.setxattr(p, name, b"v")
        except OSError as e:
            assert e.errno in (errno.ENOTSUP, errno.EPERM), f"{name}: {e}"
        else:
            raise AssertionError(f"setxattr {name} succeeded")
        assert name not in os.listxattr(p)
        with pytest.raises(OSError):
            os.getxattr(p, name)
    check_user_xattrs(p)

    # renames, in the artifact and to another board
    p2 = m.mnt / IMG / "renamed.png"
    os.rename(p, p2)
    check_user_xattrs(p2)
    other = "t1/image/b2/a9"
    (m.mnt / other).mkdir(parents=True)
    p3 = m.mnt / other / "fox.png"
    os.rename(p2, p3)
    check_user_xattrs(p3)
    m.flush()
    assert b.keys("t1/image") == [f"{other}/fox.png"]
    for name, value in XATTRS.items():
        assert os.getxattr(b.base / other / "fox.png", name) == value

    # a video that grows past the routing boundary takes its attributes to the bucket
    (m.mnt / VID).mkdir(parents=True)
    v = m.mnt / VID / "clip.mp4"
    small = payload("clip", 100 * KiB)
    v.write_bytes(small)
    for name, value in XATTRS.items():
        os.setxattr(v, name, value)
    m.flush()
    assert b.where(f"{VID}/clip.mp4") == ["local"]
    assert storefs_attr(v, "provider") == "local"
    rest = payload("clip-rest", 2 * MiB)
    with open(v, "ab") as f:
        f.write(rest)
    assert storefs_attr(v, "state") == "dirty"
    m.flush()
    full = small + rest
    assert b.where(f"{VID}/clip.mp4") == ["s3"]
    h = b.head(f"{VID}/clip.mp4")
    md = h["Metadata"]
    assert md.get("model") == "sdxl-1.0" and md.get("seed") == "42", md
    assert "prompt" in md, md
    assert h["ContentType"] == "video/mp4"
    check_user_xattrs(v)
    assert storefs_attr(v, "provider") == "s3"
    assert storefs_attr(v, "state") == "clean"
    assert storefs_attr(v, "size") == str(len(full))
    assert storefs_attr(v, "etag").strip('"') == h["ETag"].strip('"')
    url = storefs_attr(v, "url")
    assert url.startswith("http://"), url
    with urllib.request.urlopen(url, timeout=30) as r:
        assert r.read() == full

    # a fresh cache reads them back from both providers
    m.remount(empty_cache=True)
    check_user_xattrs(p3)
    check_user_xattrs(v)
    assert storefs_attr(p3, "provider") == "local" and storefs_attr(v, "provider") == "s3"
    assert storefs_attr(p3, "state") == "clean"
    assert sha256(v.read_bytes()) == sha256(full)
    if shutil.which("getfattr"):
        res = run(["getfattr", "-d", "--absolute-names", str(v)])
        assert 'user.seed="42"' in res.stdout and "user.prompt=" in res.stdout, res.stdout


# --------------------------------------------------------------------------- 5. single-tenant mounts


def test_single_tenant_mount(dual):
    m = dual(mount_args=("--tenant", "acme"), start=False)
    b: DualBackend = m.backend  # type: ignore[assignment]
    seeded_local = {"acme/image/b1/a1/old.png": b"acme-old", "other/image/b1/a1/y.png": b"other-y",
                    "other/audio/b1/a1/z.mp3": b"other-z"}
    for key, data in seeded_local.items():
        (b.base / key).parent.mkdir(parents=True, exist_ok=True)
        (b.base / key).write_bytes(data)
    b.put("acme/video/b1/a1/seeded.mp4", b"acme-video", "video/mp4")
    b.put("other/model/b1/a1/w.bin", b"other-w")
    m.start()

    assert sorted(os.listdir(m.mnt)) == ["image", "video"]
    assert (m.mnt / "image/b1/a1/old.png").read_bytes() == b"acme-old"
    assert (m.mnt / "video/b1/a1/seeded.mp4").read_bytes() == b"acme-video"
    assert not (m.mnt / "other").exists() and not (m.mnt / "acme").exists()
    outside = os.path.realpath(m.mnt / ".." / "other")
    assert not outside.startswith(str(m.mnt) + "/") and not os.path.exists(outside)

    create_file(m.mnt / "image/b1/a1/x.png", b"acme-x")
    (m.mnt / "video/b2/a1").mkdir(parents=True)
    big = payload("acme-big", 2 * MiB)
    (m.mnt / "video/b2/a1/v.mp4").write_bytes(big)
    # the layout levels start at the type under the tenant
    expect_errno(errno.EPERM, os.open, m.mnt / "x.png", os.O_WRONLY | os.O_CREAT, 0o644)
    expect_errno(errno.EINVAL, os.mkdir, m.mnt / "pictures")
    m.flush()
    assert b.where("acme/image/b1/a1/x.png") == ["local"] and b.local.read("acme/image/b1/a1/x.png") == b"acme-x"
    assert b.where("acme/video/b2/a1/v.mp4") == ["s3"] and b.s3.read("acme/video/b2/a1/v.mp4") == big
    assert b.keys("image") == [] and b.keys("video") == [] and not b.exists("x.png") and not b.exists("pictures")
    for key, data in seeded_local.items():
        assert b.local.read(key) == data
    assert b.s3.read("other/model/b1/a1/w.bin") == b"other-w"
    assert sorted(os.listdir(m.mnt)) == ["image", "video"]
    m.unmount()

    # the same with the config key instead of the option
    m2 = dual("m2", backend=b, extra={"tenant": "acme"})
    assert sorted(os.listdir(m2.mnt)) == ["image", "video"]
    assert (m2.mnt / "image/b1/a1/x.png").read_bytes() == b"acme-x"
    assert sha256((m2.mnt / "video/b2/a1/v.mp4").read_bytes()) == sha256(big)
    assert "other" not in os.listdir(m2.mnt)
    assert sorted(os.listdir(m2.mnt / "image/b1/a1")) == ["old.png", "x.png"]


# --------------------------------------------------------------------------- 6. the bad-input table


def _bytes_path(m: PolicyMount, rel: bytes) -> bytes:
    return os.fsencode(m.mnt) + b"/" + rel


def _escaped(name: bytes) -> list[str]:
    """Ways a log line can show a name with bytes that are not UTF-8 on one line."""
    text = name.decode("utf-8", "surrogateescape")
    return [repr(text)[1:-1], name.decode("utf-8", "backslashreplace"), str(name)[2:-1]]


def test_bad_input_table(dual):
    m = dual(extra={"max_file_size": LIMITS})
    b: DualBackend = m.backend  # type: ignore[assignment]
    for d in (IMG, VID):
        (m.mnt / d).mkdir(parents=True)
    create_file(m.mnt / IMG / "ok.png", b"ok")
    m.flush()
    ok_keys = [f"{IMG}/ok.png"]
    refused: list[str] = []  # keys / folders that must reach neither provider

    problems: list[str] = []  # every row is tried; all that are wrong are reported together

    def short(a: Any) -> str:
        """An argument as the message shows it: mount paths relative to MNT, long runs cut."""
        if isinstance(a, (Path, bytes)):
            text = os.fsdecode(a) if isinstance(a, Path) else repr(a)
            text = text.replace(str(m.mnt), "MNT").replace(repr(os.fsencode(m.mnt))[2:-1], "MNT")
            return re.sub(r"(.)\1{15,}", lambda g: f"{g.group(1)}*{len(g.group(0))}", repr(text) if isinstance(
                a, Path) else text)
        return repr(a)

    def case(err: int, fn: Callable[..., Any], *args: Any, names: list[str], logged: bool = True) -> None:
        what = f"{fn.__name__}({', '.join(short(a) for a in args)})"
        mark = m.log_mark()
        try:
            result = fn(*args)
        except OSError as e:
            if e.errno != err:
                problems.append(f"{what}: got {errno.errorcode.get(e.errno, e.errno)}, expected "
                                f"{errno.errorcode[err]}")
                return
        else:
            if isinstance(result, int) and fn is os.open:
                os.close(result)
            problems.append(f"{what}: succeeded, expected {errno.errorcode[err]}")
            return
        lines = m.warnings_since(mark)
        if not logged and not lines:
            return  # the kernel's own answer: the daemon never saw the request
        if len(lines) != 1:
            problems.append(f"{what}: expected one WARNING line, got {len(lines)}:\n    "
                            + "\n    ".join(m.log_since(mark)[:12]))
        elif not any(n in lines[0] for n in names):
            problems.append(f"{what}: the WARNING line does not name the path on one line: "
                            + repr(m.log_since(mark)[:3]))

    # unknown type folder
    case(errno.EINVAL, os.mkdir, m.mnt / "t1/pictures", names=["t1/pictures"])
    refused.append("t1/pictures")
    # names with a newline
    case(errno.EINVAL, os.mkdir, m.mnt / "t1/image/b1/a\nb", names=["t1/image/b1/a\\nb"])
    case(errno.EINVAL, os.open, m.mnt / IMG / "x\ny.png", os.O_WRONLY | os.O_CREAT, 0o644,
         names=[f"{IMG}/x\\ny.png"])
    refused += ["t1/image/b1/a\nb", f"{IMG}/x\ny.png"]
    # bytes that are not UTF-8
    case(errno.EINVAL, os.mkdir, _bytes_path(m, b"t1/image/b1/a\xff"),
         names=[f"t1/image/b1/{s}" for s in _escaped(b"a\xff")])
    case(errno.EINVAL, os.open, _bytes_path(m, IMG.encode() + b"/x\xfe.png"), os.O_WRONLY | os.O_CREAT, 0o644,
         names=[f"{IMG}/{s}" for s in _escaped(b"x\xfe.png")])
    # name length: 256 bytes is too long (ENAMETOOLONG, as on a local disk), 255 is fine
    long256 = "n" * 252 + ".png"
    case(errno.ENAMETOOLONG, os.open, m.mnt / IMG / long256, os.O_WRONLY | os.O_CREAT, 0o644,
         names=[long256], logged=False)
    case(errno.ENAMETOOLONG, os.mkdir, m.mnt / "t1/image/b1" / ("d" * 256), names=["d" * 256], logged=False)
    refused += [f"{IMG}/{long256}", "t1/image/b1/" + "d" * 256]
    long255 = "n" * 251 + ".png"
    create_file(m.mnt / IMG / long255, b"255")
    assert long255 in os.listdir(m.mnt / IMG)
    ok_keys.append(f"{IMG}/{long255}")
    # files at tenant, type, board and artifact level
    for rel in ("f.png", "t1/f.png", "t1/image/f.png", "t1/image/b1/f.png"):
        case(errno.EPERM, os.open, m.mnt / rel, os.O_WRONLY | os.O_CREAT, 0o644, names=[rel])
        refused.append(rel)
    # what objects cannot hold: hard links; links and special files live where files do
    case(errno.EPERM, os.link, m.mnt / IMG / "ok.png", m.mnt / IMG / "hard.png", names=[f"{IMG}/hard.png"])
    case(errno.EPERM, os.symlink, "a1", m.mnt / "t1/image/b1/latest", names=["t1/image/b1/latest"])
    case(errno.EPERM, os.mkfifo, m.mnt / "t1/image/b1/fifo", names=["t1/image/b1/fifo"])
    refused += [f"{IMG}/hard.png", "t1/image/b1/latest", "t1/image/b1/fifo"]
    # a write past the size limit: the file keeps its earlier size
    mark = m.log_mark()
    written, err = write_fd_until_error(m.mnt / IMG / "big.png", payload("big", 2 * MiB), 256 * KiB)
    assert err is not None and err.errno == errno.EFBIG and written == 1 * MiB
    one_warning(m, mark, f"{IMG}/big.png", str(1 * MiB))
    ok_keys.append(f"{IMG}/big.png")

    for rel in refused:
        if os.path.lexists(m.mnt / rel):
            problems.append(f"{rel!r} exists in the mount")
    m.flush()
    keys = b.keys("")
    if keys != sorted(ok_keys):
        problems.append(f"provider files {keys} != {sorted(ok_keys)}")
    if len(b.local.read(f"{IMG}/big.png") or b"") != 1 * MiB:
        problems.append(f"{IMG}/big.png in the local folder is not the 1 MiB written before EFBIG")
    for rel in refused:
        for name, prov in (("local folder", b.local), ("bucket", b.s3)):
            if prov.exists(rel):
                problems.append(f"{rel!r} reached the {name}")
    if b.s3_objects():
        problems.append(f"objects reached the bucket: {sorted(b.s3_objects())}")
    assert not problems, "\n".join(problems)


# --------------------------------------------------------------------------- config errors


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _bad_config(case: str, cfg: dict) -> tuple[dict, tuple[str, ...], list[str], list[str]]:
    """(config, extra mount args, words every message holds, words of which it holds one)."""
    if case == "missing-variable":
        var = f"POLICY_TEST_UNSET_{uuid.uuid4().hex[:8].upper()}"
        cfg["providers"]["s3"]["secret_access_key"] = "${" + var + "}"
        return cfg, (), ["providers.s3.secret_access_key", var], ["not set"]
    if case == "unknown-key":
        cfg["cache"]["colour"] = "blue"
        return cfg, (), ["cache.colour"], ["unknown key"]
    if case == "wrong-type":
        cfg["cache"]["uploaders"] = "many"
        return cfg, (), ["cache.uploaders", "many"], ["whole number", "integer", "number"]
    if case == "unreachable-endpoint":
        port = _closed_port()
        cfg["providers"]["s3"]["endpoint_url"] = f"http://127.0.0.1:{port}"
        # the provider's dotted key (providers.s3 / providers.s3.endpoint_url) and the endpoint
        return cfg, (), ["providers.s3", f"127.0.0.1:{port}"], ["connect", "reach", "unreachable", "refused",
                                                                 "answer"]
    if case == "unknown-routing-provider":
        cfg["routing_rules"] = [{"match": {"type": "video"}, "provider": "s4"}, {"provider": "local"}]
        return cfg, (), ["routing_rules[0].provider", "s4"], ["unknown provider"]
    if case == "bad-tenant-option":
        return cfg, ("--tenant", "bad name"), ["bad name", "tenant"], ["not a valid"]
    if case == "bad-tenant-key":
        cfg["tenant"] = "bad name"
        return cfg, (), ["tenant", "bad name"], ["not a valid"]
    raise AssertionError(case)


@pytest.mark.parametrize("case", ["missing-variable", "unknown-key", "wrong-type", "unreachable-endpoint",
                                  "unknown-routing-provider", "bad-tenant-option", "bad-tenant-key"])
def test_bad_config_refused_before_mounting(case, dual):
    m = dual(start=False)
    cfg, args, every, one_of = _bad_config(case, m.config())
    m.config_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    t0 = time.monotonic()
    try:
        res = subprocess.run([sys.executable, "-m", "storefs", "mount", "-c", str(m.config_path), *args,
                              "--log-file", str(m.log_path), str(m.mnt)],
                             capture_output=True, text=True, timeout=60, env=clean_env())
        took = time.monotonic() - t0
        assert res.returncode != 0, f"mount with a bad config succeeded: {res.stderr}"
        assert not is_mounted(m.mnt) and os.listdir(m.mnt) == [], "something was mounted"
        err = res.stderr
        if case != "bad-tenant-option":
            assert str(m.config_path) in err, f"stderr does not name the file: {err!r}"
        for word in every:
            assert word in err, f"stderr does not hold {word!r}: {err!r}"
        assert any(w in err.lower() for w in one_of), f"stderr gives no reason ({one_of}): {err!r}"
        assert "Traceback" not in err, err
        assert took < 30, f"refusing took {took:.0f}s"
        assert b_empty(m.backend)
    finally:
        if is_mounted(m.mnt):
            lazy_unmount(m.mnt)


def b_empty(b: DualBackend) -> bool:
    return b.keys("") == [] and b.s3_objects() == {}
