"""The `frozen` workload: SeaweedFS frozen (SIGSTOP) while programs keep working on what the mount knows.

A mount that caches must not make every program wait when its server stops answering. The
workload builds a tree (FOLDERS artifact folders of FILES_PER_FOLDER files of FILE_SIZE
bytes), waits until it is in the bucket, then stats, lists and reads all of it so that it is
cached. Then it freezes SeaweedFS (SIGSTOP to its whole process group: connections are
accepted by the kernel and never answered) and, for `seconds`, THREADS threads time each of:

  getattr  os.stat of a cached file or folder
  readdir  os.listdir of a cached folder
  read     open + read + close of a cached file
  create   open(O_CREAT|O_EXCL) + write FILE_SIZE bytes + close of a new file in a known folder

in turn, OPS_PER_THREAD of them at most: the same seeded sequence on every system, so that every
system lists folders of the same size (the creates grow them). Then SIGCONT (also on every way
out: finally, and atexit while frozen), and every created file must reach the bucket (flush,
then a listing). The target: p99 under SLOW_MS for each operation. An operation still running
when the freeze ends (THAW_GRACE after the window) is timed to its end and counted in `outlasted`.
"""

from __future__ import annotations

import atexit
import errno
import logging
import os
import random
import shutil
import statistics
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from storefs.testing.seaweed import SeaweedServer

from .common import say
from .systems import System

log = logging.getLogger(__name__)

OPS = ("getattr", "readdir", "read", "create")
FOLDERS = 8
FILES_PER_FOLDER = 8
FILE_SIZE = 4096
THREADS = 4
#: operations each thread runs, within the freeze: a system that ran for the whole window instead
#: would grow its folders by how fast it creates, and list bigger folders the faster it is
OPS_PER_THREAD = 4000
SLOW_MS = 50.0  # the target: p99 of each operation under this while the server is frozen
THAW_GRACE = 60.0  # seconds past the window before the server is thawed whatever the threads do


@dataclass
class Timings:
    """Latencies (ms) and failures per operation, from one or more freezes."""

    ms: dict[str, list[float]] = field(default_factory=lambda: {op: [] for op in OPS})
    errors: dict[str, dict[str, int]] = field(default_factory=lambda: {op: {} for op in OPS})
    outlasted: int = 0  # operations still running when the server was thawed
    missing: int = 0  # created files not in the bucket after the thaw

    def add(self, other: Timings) -> None:
        """Pool another freeze's figures into these."""
        for op in OPS:
            self.ms[op] += other.ms[op]
            for name, n in other.errors[op].items():
                self.errors[op][name] = self.errors[op].get(name, 0) + n
        self.outlasted += other.outlasted
        self.missing += other.missing

    def summary(self) -> dict[str, dict[str, Any]]:
        """Per operation: count, errors, p50, p99 and max in ms, and how many took over SLOW_MS."""
        out = {}
        for op in OPS:
            xs = sorted(self.ms[op])
            out[op] = {"count": len(xs), "errors": sum(self.errors[op].values()),
                       "p50_ms": percentile(xs, 50), "p99_ms": percentile(xs, 99),
                       "max_ms": xs[-1] if xs else None, "over_50ms": sum(1 for x in xs if x > SLOW_MS)}
        return out


def percentile(sorted_ms: list[float], pct: int) -> float | None:
    """The pct-th percentile (1..99, interpolated between ranks as numpy's default) of sorted values."""
    if len(sorted_ms) < 2:
        return sorted_ms[0] if sorted_ms else None
    return statistics.quantiles(sorted_ms, n=100, method="inclusive")[pct - 1]


class Tree:
    """The files and folders the workload caches, below base in one mount."""

    def __init__(self, root: str, base: str) -> None:
        self.root, self.base = root, base
        self.folders = [f"{base}/art{i + 1:02d}" for i in range(FOLDERS)]
        self.files = [f"{d}/file{j + 1:02d}.bin" for d in self.folders for j in range(FILES_PER_FOLDER)]
        self.data = random.Random(base).randbytes(FILE_SIZE)

    def path(self, rel: str) -> str:
        return os.path.join(self.root, rel)

    def make(self) -> None:
        for d in self.folders:
            os.makedirs(self.path(d))
        for f in self.files:
            with open(self.path(f), "wb") as out:
                out.write(self.data)

    def warm(self) -> None:
        """stat, list and read everything, so that the mount (and the kernel) hold it."""
        for d in [self.base, *self.folders]:
            os.stat(self.path(d))
            os.listdir(self.path(d))
        for f in self.files:
            os.stat(self.path(f))
            with open(self.path(f), "rb") as src:
                if src.read() != self.data:
                    raise RuntimeError(f"{f}: wrong content")


class Worker(threading.Thread):
    """One program working on the mount: the four operations in turn, OPS_PER_THREAD of them or
    until the window ends."""

    def __init__(self, tree: Tree, index: int, tag: str, until: float) -> None:
        super().__init__(daemon=True, name=f"frozen-{index}")
        self.tree, self.index, self.tag, self.until = tree, index, tag, until
        self.timings = Timings()
        self.created: list[str] = []
        self.rng = random.Random(f"{tag}/{index}")

    def _one(self, op: str, n: int) -> None:
        t = self.tree
        if op == "getattr":
            os.stat(t.path(self.rng.choice(t.files + t.folders)))
        elif op == "readdir":
            os.listdir(t.path(self.rng.choice(t.folders)))
        elif op == "read":
            with open(t.path(self.rng.choice(t.files)), "rb") as f:
                f.read()
        else:
            rel = f"{self.rng.choice(t.folders)}/new-{self.tag}-{self.index}-{n:05d}.bin"
            fd = os.open(t.path(rel), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            try:
                os.write(fd, t.data)
            finally:
                os.close(fd)
            self.created.append(rel)

    def run(self) -> None:
        n = 0
        while n < OPS_PER_THREAD and time.monotonic() < self.until:
            op = OPS[(n + self.index) % len(OPS)]
            t0 = time.perf_counter()
            try:
                self._one(op, n)
            except OSError as e:
                name = errno.errorcode.get(e.errno or 0, str(e.errno))
                self.timings.errors[op][name] = self.timings.errors[op].get(name, 0) + 1
            else:
                self.timings.ms[op].append((time.perf_counter() - t0) * 1000)
            n += 1


def run_frozen(s: System, server: SeaweedServer, base: str, seconds: float, threads: int = THREADS) -> Timings:
    """Build and cache a tree below base on s, freeze the server for `seconds` while `threads`
    programs work on it, thaw, and check every created file reached the bucket."""
    tree = Tree(s.root, base)
    tree.make()
    s.flush()
    s.wait_count(base + "/", len(tree.files))
    tree.warm()
    tree.warm()  # the second pass is what a warm program sees; the first may fetch
    tag = base.replace("/", "-")
    say(f"  {s.name}: freezing SeaweedFS for {seconds:.0f}s, {threads} threads")
    workers: list[Worker] = []
    server.pause()
    atexit.register(server.resume)
    try:
        until = time.monotonic() + seconds
        workers = [Worker(tree, i, tag, until) for i in range(threads)]
        for w in workers:
            w.start()
        for w in workers:
            w.join(max(0.0, until + THAW_GRACE - time.monotonic()))
        outlasted = sum(1 for w in workers if w.is_alive())
    finally:
        server.resume()
        atexit.unregister(server.resume)
    for w in workers:
        w.join()
    result = Timings()
    for w in workers:
        result.add(w.timings)
    result.outlasted = outlasted
    created = [rel for w in workers for rel in w.created]
    s.flush()
    try:
        s.wait_count(base + "/", len(tree.files) + len(created))
    except TimeoutError as e:
        say(f"  {s.name}: {e}")
    if s.object_per_file:
        in_bucket = s.ctx.keys(s.bucket, base + "/")
        result.missing = sum(1 for rel in created if rel not in in_bucket)
    shutil.rmtree(tree.path(base))
    s.wait_count(base + "/", 0)
    return result


def table(by_system: dict[str, Timings]) -> str:
    """One row per system and operation: count, errors, p50, p99, max, over 50 ms, and the verdict."""
    head = ["system", "operation", "count", "errors", "p50 ms", "p99 ms", "max ms", f"> {SLOW_MS:.0f} ms",
            f"p99 < {SLOW_MS:.0f} ms"]
    rows = []
    for name, t in by_system.items():
        for op, st in t.summary().items():
            p99 = st["p99_ms"]
            rows.append([name, op, str(st["count"]), str(st["errors"]), _ms(st["p50_ms"]), _ms(p99),
                         _ms(st["max_ms"]), str(st["over_50ms"]),
                         "-" if p99 is None else ("yes" if p99 < SLOW_MS else "NO")])
    widths = [max(len(x) for x in col) for col in zip(head, *rows, strict=False)]
    out = ["| " + " | ".join(h.ljust(w) for h, w in zip(head, widths, strict=False)) + " |",
           "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)) + " |" for r in rows]
    notes = [f"{name}: {t.outlasted} operation(s) outlasted the freeze, {t.missing} created file(s) missing "
             f"from the bucket" for name, t in by_system.items() if t.outlasted or t.missing]
    return "\n".join(out + notes)


def _ms(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v:,.0f}" if v >= 100 else f"{v:.2f}"
