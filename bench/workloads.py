"""The workloads, run interleaved: in round r every system does workload w, then the next one.

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
  direct      not a workload: with --systems ...,direct, boto3 uploads the same big file and small
              files and downloads the big file on its own (bench/direct.py), as a reference
  frozen      SeaweedFS frozen (SIGSTOP) for --frozen-seconds while 4 threads stat, list, read
              cached entries and create files in known folders (bench/frozen.py); p99 per operation
and each daemon's peak RSS over the round (VmRSS every 0.2 s, and VmHWM before each unmount,
both summed over the daemon's process tree: JuiceFS runs a supervisor and a FUSE child).
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import sysconfig
import tarfile
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .common import MB, MiB, drop_caches, run, say, tree_cpu, tree_vm
from .frozen import OPS, Timings, run_frozen
from .report import METRIC, fmt
from .systems import REFERENCES, Ctx, System

if TYPE_CHECKING:
    from .direct import Direct

log = logging.getLogger(__name__)

SMALL = 64 * 1024
FOLDERS = 50
PATTERN = 16 * MiB              # the big file repeats a random 16 MiB pattern
WORKLOADS = ("write", "cold_read", "warm_read", "rand_read", "create", "walk", "read_files", "rm", "tar", "frozen")
BIG = ("write", "cold_read", "warm_read", "rand_read")
RSS_INTERVAL = 0.2  # seconds between two VmRSS samples


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
        while not self.halt.wait(RSS_INTERVAL):
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
    def __init__(self, ctx: Ctx, systems: list[System], direct: Direct | None = None) -> None:
        self.ctx, self.systems, self.args = ctx, systems, ctx.args
        self.direct = direct  # the boto3 reference (bench/direct.py), when asked for
        self.rows: list[dict[str, Any]] = []       # one per round, system and metric
        self.errors: list[dict[str, Any]] = []
        self.sampler = RssSampler(systems)
        self.big_phase = False
        self.pattern = os.urandom(PATTERN)
        self.frozen: dict[str, Timings] = {}            # pooled over the rounds, per system
        self.frozen_rounds: list[dict[str, Any]] = []   # each round's summary, per system

    def live(self) -> list[System]:
        return [s for s in self.systems if s.ok and (s.big_files or not self.big_phase)]

    def record(self, rnd: int, s: System | str, metric: str, value: float) -> None:
        name = s if isinstance(s, str) else s.name
        self.rows.append({"round": rnd, "system": name, "metric": metric, "value": value})
        _, label, unit, _ = METRIC[metric]
        say(f"  r{rnd} {name:8} {label}: {fmt(value)} {unit}")

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

    @staticmethod
    def cpu(s: System) -> float | None:
        """CPU seconds s's daemon (its process tree) has used so far; None for a system without one (raw),
        or whose daemon is gone (a figure across its end would mean nothing)."""
        return tree_cpu(s.pid) if s.pid else None

    def want(self, w: str) -> bool:
        return w in self.args.workloads

    # -- phases ---------------------------------------------------------------------
    def big(self, rnd: int) -> None:
        size, pattern = self.args.size, self.pattern
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
        data = self.pattern[:SMALL]
        self.remount(rnd, "write")

        if any(self.want(w) for w in ("create", "walk", "read_files", "rm")):
            def create(s: System) -> None:
                os.makedirs(os.path.join(s.root, "bench/model"), exist_ok=True)
                os.sync()
                c0 = self.cpu(s)
                t0 = time.monotonic()
                for i in range(FOLDERS):
                    os.makedirs(os.path.join(s.root, board, f"art{i + 1:02d}"))
                for p in paths:
                    with open(os.path.join(s.root, p), "wb") as f:
                        f.write(data)
                t1 = time.monotonic()
                c1 = self.cpu(s)
                t2 = s.wait_count(board + "/", n)
                if self.want("create"):
                    self.record(rnd, s, "create_fps", n / (t1 - t0))
                    if c0 is not None and c1 is not None:
                        self.record(rnd, s, "create_cpu_us", (c1 - c0) / n * 1e6)
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
                c0 = self.cpu(s)
                t0 = time.monotonic()
                r = run(["rm", "-r", os.path.join(s.root, board)], timeout=1800)
                took = time.monotonic() - t0
                c1 = self.cpu(s)
                if r.returncode != 0:
                    raise RuntimeError(f"rm -r failed: {r.stderr.strip()[-500:]}")
                if self.want("rm"):
                    self.record(rnd, s, "rm_ms", took * 1000)
                    if c0 is not None and c1 is not None:
                        self.record(rnd, s, "rm_cpu_us", (c1 - c0) / n * 1e6)
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

    def reference(self, rnd: int, d: Direct) -> None:
        """The direct client's round: the big file up and down, then the small files, as figures to beat."""
        prefix, name = f"bench/model/d{rnd}", d.name
        try:
            if any(self.want(w) for w in ("write", "cold_read")):
                key = f"{prefix}/big.bin"
                took = d.upload_big(key)
                if self.want("write"):
                    self.record(rnd, name, "write_bucket_s", took)
                if self.want("cold_read"):
                    self.record(rnd, name, "cold_read_mbps", d.download_big(key, self.args.size))
            if self.want("create"):
                names = [f"art{i % FOLDERS + 1:02d}/file{i + 1:04d}.bin" for i in range(self.args.files)]
                self.record(rnd, name, "create_bucket_s", d.put_small(prefix, names, self.pattern[:SMALL]))
        except Exception as e:  # noqa: BLE001 - a benchmark reports and goes on
            msg = f"{type(e).__name__}: {e}"
            say(f"  r{rnd} {name}: failed: {msg}")
            self.errors.append({"round": rnd, "system": name, "step": "direct", "error": msg[-3000:]})
        finally:
            d.clean(prefix + "/")

    def freeze(self, rnd: int) -> None:
        """The frozen workload (bench/frozen.py) on every system that has a bucket, on fresh mounts."""
        self.remount(rnd, "read")

        def frozen(s: System) -> None:
            if not s.has_bucket:
                return
            t = run_frozen(s, self.ctx.server, f"bench/model/z{rnd}", self.args.frozen_seconds)
            self.frozen.setdefault(s.name, Timings()).add(t)
            summary = t.summary()
            self.frozen_rounds.append({"round": rnd, "system": s.name, "outlasted": t.outlasted,
                                       "missing": t.missing, "operations": summary})
            for op in OPS:
                if summary[op]["p99_ms"] is not None:
                    self.record(rnd, s, f"frozen_{op}_p99_ms", summary[op]["p99_ms"])
            slowest = [st["max_ms"] for st in summary.values() if st["max_ms"] is not None]
            if slowest:
                self.record(rnd, s, "frozen_max_ms", max(slowest))
            if t.missing:
                raise RuntimeError(f"{t.missing} file(s) created while the server was frozen never reached "
                                   "the bucket")
        self.each(rnd, "frozen", frozen)

    def run(self) -> None:
        self.sampler.start()
        for rnd in range(1, self.args.rounds + 1):
            say(f"round {rnd}/{self.args.rounds}: {', '.join(s.name for s in self.live())}")
            self.sampler.take()
            if any(self.want(w) for w in BIG):
                self.big(rnd)
            self.small(rnd)
            if self.direct is not None:
                self.reference(rnd, self.direct)
            if self.want("frozen"):
                self.freeze(rnd)
            peaks = self.sampler.take()
            for s in self.live():
                if s.name in peaks and s.name != "raw" and s.name not in REFERENCES:
                    self.record(rnd, s, "rss_mib", peaks[s.name] / MiB)
            self.each(rnd, "unmount", lambda s: s.unmount())
        self.sampler.halt.set()


