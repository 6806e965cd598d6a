"""Helpers for the mount tests: a real storefs mount driven through its command line.

`StorefsMount` runs `python -m storefs mount/unmount/flush/status` as subprocesses, the way a
user does. Tests talk to the file system only through `store.mnt` (the kernel), and look at
the backend only through the provider-neutral accessors `provider_read`, `provider_keys`,
`provider_exists` and `provider_meta`, so that every test runs unchanged against each
provider backend (a local folder now; an S3 server such as SeaweedFS next).

A provider backend is any object with:

    name: str                               provider name in the config ("local", "s3")
    provider_config() -> dict               its entry under `providers:` in the YAML
    read(key) -> bytes | None               the object's bytes, None when absent
    keys(prefix) -> list[str]               sorted keys of file objects under prefix
    exists(path) -> bool                    a file object or a directory (prefix) exists
    meta(key) -> dict | None                {"size", "mtime", "mode"} of a file object
    close() -> None
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import random
import shutil
import signal
import stat
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from storefs.control import pid_alive, unescape_mount_field

CMD_TIMEOUT = 120  # seconds, for any one storefs command
TOOL_TIMEOUT = 120  # seconds, for cp, tar, rsync ...
TMP_PREFIX = ".storefs-tmp."  # the local provider's own temporaries, never real objects

ART = "t1/image/b1/a1"  # a valid artifact folder, relative to the mountpoint


def fuse_problem() -> str | None:
    """Why FUSE mounts cannot run here, or None when they can."""
    if not os.path.exists("/dev/fuse"):
        return "/dev/fuse is missing (no FUSE in this kernel/container; run scripts/install.sh "
        "and give the container --device /dev/fuse)"
    if not os.access("/dev/fuse", os.R_OK | os.W_OK):
        return "/dev/fuse is not readable/writable by this user"
    if shutil.which("fusermount3") is None:
        return "fusermount3 is missing (apt-get install fuse3, or run scripts/install.sh)"
    return None


def clean_env() -> dict[str, str]:
    """The environment for storefs commands: no STOREFS_* overrides leaking in from the caller."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("STOREFS_")}
    env["FUSE_LIBRARY_NAME"] = "fuse3"
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def run(cmd: list[str], *, timeout: float = TOOL_TIMEOUT, check: bool = True, **kw: Any) -> subprocess.CompletedProcess:
    """subprocess.run with a timeout, captured text output, and the output in the error on failure.

    Programs run in the C locale, so their messages and statistics can be parsed."""
    kw["env"] = {**(kw.get("env") or os.environ), "LC_ALL": "C"}
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)
    if check and res.returncode != 0:
        raise AssertionError(f"command failed ({res.returncode}): {' '.join(map(str, cmd))}\n"
                             f"stdout: {res.stdout[-4000:]}\nstderr: {res.stderr[-4000:]}")
    return res


def is_mounted(path: str | os.PathLike) -> bool:
    """True when path is a mountpoint in /proc/mounts (works even when the FUSE daemon is dead)."""
    target = os.path.realpath(path)
    try:
        with open("/proc/self/mounts") as f:
            for line in f:
                parts = line.split()
                if len(parts) > 1 and unescape_mount_field(parts[1]) == target:
                    return True
    except OSError:
        pass
    return False


def mounts_under(prefix: str | os.PathLike) -> list[str]:
    """Mountpoints at or below prefix, deepest first."""
    prefix = os.path.realpath(prefix)
    found = []
    with open("/proc/self/mounts") as f:
        for line in f:
            parts = line.split()
            if len(parts) > 1:
                mp = unescape_mount_field(parts[1])
                if mp == prefix or mp.startswith(prefix.rstrip("/") + "/"):
                    found.append(mp)
    return sorted(found, key=len, reverse=True)


def lazy_unmount(path: str | os.PathLike) -> None:
    """Detach a (possibly dead) FUSE mount so its folder can be reused; never raises."""
    if is_mounted(path):
        with contextlib.suppress(Exception):
            subprocess.run(["fusermount3", "-u", "-z", str(path)], capture_output=True, timeout=30)
    if is_mounted(path):
        with contextlib.suppress(Exception):
            subprocess.run(["umount", "-l", str(path)], capture_output=True, timeout=30)


def wait_pid_gone(pid: int, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            return True
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(pid, os.WNOHANG)  # in case it is our child after all
        time.sleep(0.02)
    return not pid_alive(pid)


# --------------------------------------------------------------------------- providers


class LocalBackend:
    """The `local` provider: key K is the file <base_path>/K (mode and mtime kept)."""

    name = "local"

    def __init__(self, root: Path) -> None:
        self.base = Path(root) / "data"
        self.base.mkdir(parents=True, exist_ok=True)

    def provider_config(self) -> dict:
        return {"type": "local", "base_path": str(self.base)}

    def _path(self, key: str) -> Path:
        key = key.strip("/")
        p = (self.base / key) if key else self.base
        assert os.path.realpath(p).startswith(os.path.realpath(self.base)), key
        return p

    def read(self, key: str) -> bytes | None:
        p = self._path(key)
        try:
            if not p.is_file():
                return None
            return p.read_bytes()
        except FileNotFoundError:
            return None

    def keys(self, prefix: str = "") -> list[str]:
        prefix = prefix.strip("/")
        top = self._path(prefix)
        if top.is_file():
            return [prefix]
        out = []
        for dirpath, _dirs, files in os.walk(top):
            for name in files:
                if name.startswith(TMP_PREFIX):
                    continue
                rel = os.path.relpath(os.path.join(dirpath, name), self.base)
                out.append(rel.replace(os.sep, "/"))
        return sorted(out)

    def exists(self, path: str) -> bool:
        return os.path.lexists(self._path(path))

    def meta(self, key: str) -> dict | None:
        try:
            st = os.stat(self._path(key))
        except FileNotFoundError:
            return None
        if not stat.S_ISREG(st.st_mode):
            return None
        return {"size": st.st_size, "mtime": st.st_mtime, "mode": stat.S_IMODE(st.st_mode)}

    def close(self) -> None:
        pass


# --------------------------------------------------------------------------- the mount


class StorefsMount:
    """One storefs mount on root/mnt, with its config, cache and (for local) provider folder."""

    def __init__(self, root: Path, backend: Any, *, log_level: str | None = None, **cache: Any) -> None:
        self.root = Path(root)
        self.backend = backend
        self._mnt = self.root / "mnt"
        self._cache = self.root / "cache"
        self.config_path = self.root / "storefs.yaml"
        self.log_path = self.root / "storefs.log"
        self.log_level = log_level or os.environ.get("STOREFS_TEST_LOG_LEVEL", "INFO")
        self.cache_options: dict[str, Any] = {"writeback_delay": "0.2s", "uploaders": 2}
        self.cache_options.update(cache)
        self.extra_config: dict[str, Any] = {}
        self.pid: int | None = None
        self._mnt.mkdir(parents=True, exist_ok=True)

    # -- paths

    @property
    def mnt(self) -> Path:
        return self._mnt

    @property
    def cache(self) -> Path:
        return self._cache

    @property
    def data(self) -> Path | None:
        """The provider folder for the local provider (None for remote providers)."""
        return getattr(self.backend, "base", None)

    @property
    def provider(self) -> str:
        return self.backend.name

    @property
    def mounted(self) -> bool:
        return is_mounted(self._mnt)

    # -- provider-neutral view of the backend

    def provider_read(self, key: str) -> bytes | None:
        return self.backend.read(key)

    def provider_keys(self, prefix: str = "") -> list[str]:
        return self.backend.keys(prefix)

    def provider_exists(self, path: str) -> bool:
        return self.backend.exists(path)

    def provider_meta(self, key: str) -> dict | None:
        return self.backend.meta(key)

    # -- config

    def config(self) -> dict:
        cfg: dict[str, Any] = {
            "default_provider": self.backend.name,
            "providers": {self.backend.name: self.backend.provider_config()},
            "cache": {"dir": str(self._cache), **self.cache_options},
        }
        cfg.update(self.extra_config)
        return cfg

    def write_config(self) -> None:
        self.config_path.write_text(yaml.safe_dump(self.config(), sort_keys=False))

    # -- commands

    def storefs(self, *args: str, timeout: float = CMD_TIMEOUT, check: bool = True) -> subprocess.CompletedProcess:
        return run([sys.executable, "-m", "storefs", *args], timeout=timeout, check=check, env=clean_env())

    def start(self, **cache: Any) -> StorefsMount:
        """Write the config (cache options updated with **cache) and mount; asserts success."""
        self.cache_options.update(cache)
        assert not self.mounted, f"{self._mnt} is already mounted"
        self.write_config()
        res = self.storefs("mount", "-c", str(self.config_path), "--log-level", self.log_level,
                           "--log-file", str(self.log_path), str(self._mnt), check=False)
        if res.returncode != 0:
            raise AssertionError(f"storefs mount failed ({res.returncode}):\nstdout: {res.stdout}\n"
                                 f"stderr: {res.stderr}\nlog tail:\n{self.log_tail()}")
        assert self.mounted, f"storefs mount returned 0 but {self._mnt} is not mounted\n{res.stderr}"
        self.pid = int(self.status()["pid"])
        return self

    def unmount(self, timeout: float = CMD_TIMEOUT) -> None:
        """`storefs unmount`: uploads everything dirty, unmounts, and the daemon has exited."""
        pid = self.pid
        self.storefs("unmount", str(self._mnt), timeout=timeout)
        assert not self.mounted, f"{self._mnt} still mounted after storefs unmount"
        if pid is not None:
            assert wait_pid_gone(pid, 30), f"daemon {pid} still alive after storefs unmount"
        self.pid = None

    def flush(self, timeout: float = CMD_TIMEOUT) -> None:
        """`storefs flush`: returns once nothing is dirty."""
        self.storefs("flush", str(self._mnt), timeout=timeout)

    def status(self) -> dict:
        res = self.storefs("status", str(self._mnt), "--json", timeout=60)
        try:
            st = json.loads(res.stdout)
        except json.JSONDecodeError as e:
            raise AssertionError(f"storefs status --json printed no JSON object: {res.stdout!r}") from e
        assert isinstance(st, dict), st
        return st

    def kill9(self) -> None:
        """kill -9 the daemon (pid from status), then detach the dead mount so it can be remounted."""
        pid = self.pid
        with contextlib.suppress(Exception):
            pid = int(self.status()["pid"])
        assert pid, "no daemon pid known"
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        assert wait_pid_gone(pid, 30), f"daemon {pid} survived SIGKILL"
        lazy_unmount(self._mnt)
        assert not self.mounted, f"{self._mnt} still mounted after fusermount3 -u -z"
        self.pid = None

    def remount(self, empty_cache: bool = False, **cache: Any) -> StorefsMount:
        """Unmount (uploading everything), optionally delete the cache folder, and mount again."""
        self.unmount()
        if empty_cache:
            shutil.rmtree(self._cache, ignore_errors=True)
            assert not self._cache.exists()
        return self.start(**cache)

    def cleanup(self) -> None:
        """Never leave a mount or a daemon behind, whatever state the test left: never raises."""
        pid = self.pid
        if self.mounted:
            with contextlib.suppress(Exception):
                st = self.status()
                pid = int(st.get("pid") or 0) or pid
            with contextlib.suppress(Exception):
                self.storefs("unmount", "--timeout", "30", str(self._mnt), timeout=60, check=False)
        if pid and not wait_pid_gone(pid, 5):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            wait_pid_gone(pid, 10)
        lazy_unmount(self._mnt)
        self.pid = None

    def log_tail(self, lines: int = 60) -> str:
        texts = []
        for p in (self.log_path, self._cache / "storefs.log"):
            with contextlib.suppress(OSError):
                texts.append(f"--- {p}\n" + "\n".join(p.read_text(errors="replace").splitlines()[-lines:]))
        return "\n".join(texts) or "(no log)"

    # -- convenience

    def path(self, rel: str) -> Path:
        return self._mnt / rel


# --------------------------------------------------------------------------- data helpers


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
        assert e.errno == err, f"{fn.__name__}{args}: got {errno.errorcode.get(e.errno, e.errno)} ({e}), " \
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



class S3Backend:
    """The `s3` provider on a SeaweedFS server: one fresh bucket per test, read with plain boto3."""

    name = "s3"

    def __init__(self, server: Any, bucket: str, **extra: Any) -> None:
        self.server = server
        self.bucket = bucket
        self.extra = extra  # more keys for the provider's config section (read_deadline, ...)
        self.client = server.client()
        server.create_bucket(bucket)

    def provider_config(self) -> dict:
        return {"type": "s3", "bucket": self.bucket, "endpoint_url": self.server.endpoint_url,
                "region": self.server.region, "path_style": True,
                "access_key_id": self.server.access_key, "secret_access_key": self.server.secret_key,
                **self.extra}

    def read(self, key: str) -> bytes | None:
        try:
            return self.client.get_object(Bucket=self.bucket, Key=key.strip("/"))["Body"].read()
        except self.client.exceptions.NoSuchKey:
            return None
        except Exception as e:  # a 404 on a folder-like key
            if "404" in str(e) or "NoSuchKey" in str(e):
                return None
            raise

    def keys(self, prefix: str = "") -> list[str]:
        prefix = prefix.strip("/")
        out = []
        for page in self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=prefix + "/" if prefix else ""):
            out += [o["Key"] for o in page.get("Contents", []) if not o["Key"].endswith("/")]
        if prefix and self.read(prefix) is not None:
            out.append(prefix)
        return sorted(out)

    def exists(self, path: str) -> bool:
        path = path.strip("/")
        if self.read(path) is not None:
            return True
        r = self.client.list_objects_v2(Bucket=self.bucket, Prefix=path + "/", MaxKeys=1)
        if r.get("KeyCount"):
            return True
        try:
            self.client.head_object(Bucket=self.bucket, Key=path + "/")
            return True
        except Exception:
            return False

    def meta(self, key: str) -> dict | None:
        try:
            h = self.client.head_object(Bucket=self.bucket, Key=key.strip("/"))
        except Exception:
            return None
        md = h.get("Metadata", {})
        mode = int(md["mode"]) if "mode" in md else None
        return {"size": h["ContentLength"], "mtime": float(md.get("mtime", h["LastModified"].timestamp())),
                "mode": stat.S_IMODE(mode) if mode is not None else None,
                "content_type": h.get("ContentType"), "metadata": md}

    def close(self) -> None:
        pass
