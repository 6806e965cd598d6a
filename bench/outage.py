"""The `outage` workload: how soon a mount notices that its server is gone, and how soon it catches up.

For each system in turn (only that one mounted: stopping the server stops it for everyone), and for
each kind of outage:

  dead    SeaweedFS killed (connection refused), then started again on the same ports and data
  frozen  SeaweedFS frozen (SIGSTOP of its process group: connections accepted, never answered),
          then thawed (SIGCONT)

the workload writes two files through the mount and waits until they are in the bucket, mounts again
with an empty cache and stats them (their metadata known, their data not cached), then takes the
server away and:

  1. writes FILES files of FILE_SIZE bytes into a folder the mount knows (each must work);
  2. times an open + read of one uncached file until it fails (`outage_*_read_s`; a read that is
     still waiting after READ_CAP is given up on and counted as READ_CAP);
  3. waits HOLD seconds, so that every system (rclone uploads 5 s after a close) has tried, and
     failed, to upload the files;
  4. brings the server back; "answering again" is when a PUT of another client (boto3, to a bucket
     of its own) succeeds: a restarted SeaweedFS answers HEADs seconds before it stores a PUT;
  5. times from there until every file of step 1 is in the bucket (`outage_*_queue_s`; for JuiceFS,
     which stores chunks of its own format, until its .stats shows no staged block), given up
     after QUEUE_CAP;
  6. checks that the mount recovered: the uncached file reads back whole within RECOVER_WITHIN.

Lower is better for both figures.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable

from storefs.testing.seaweed import SeaweedServer

from .common import poll, say
from .systems import Juicefs, System

log = logging.getLogger(__name__)

KINDS = ("dead", "frozen")
FILES = 5
FILE_SIZE = 64 * 1024
COLD_SIZE = 1024 * 1024
HOLD = 10.0  # seconds between the writes and the server's return
READ_CAP = 60.0  # seconds an uncached read may wait before it is given up on
QUEUE_CAP = 120.0  # seconds the written files may take to reach the bucket after the server's return
RECOVER_WITHIN = 60.0  # seconds for the mount to read the uncached file after the server's return
POLL = 0.05  # seconds between two looks at the bucket
CANARY_BUCKET = "bench-outage-canary"


class Outage:
    """Takes the server away and brings it back, in one of KINDS."""

    def __init__(self, server: SeaweedServer, kind: str) -> None:
        self.server, self.kind = server, kind

    def begin(self) -> None:
        """The server goes away."""
        if self.kind == "dead":
            self.server.stop_server()
        else:
            self.server.pause()

    def end(self) -> None:
        """The server comes back (on the same ports and data)."""
        if self.kind == "dead":
            self.server.restart_server()
        else:
            self.server.resume()


def stores_again(s: System) -> float:
    """PUT a canary with boto3 until the server stores it; the monotonic time it did."""
    def put() -> bool:
        try:
            s.ctx.s3.put_object(Bucket=CANARY_BUCKET, Key="canary", Body=b"up")
            return True
        except Exception as e:  # noqa: BLE001 - any failure means "not yet"
            log.debug("canary: %s", e)
            return False
    return poll(put, 60, "SeaweedFS storing a PUT again", interval=POLL)


def timed_read(path: str, cap: float) -> tuple[float, str]:
    """Seconds until open + read of path ends (at most cap), and how it ended ("EIO", "ok", "waiting")."""
    outcome: list[str] = []

    def read() -> None:
        try:
            with open(path, "rb") as f:
                while f.read(1 << 20):
                    pass
            outcome.append("ok")
        except OSError as e:
            outcome.append(os.strerror(e.errno or 0) if e.errno != 5 else "EIO")
    t0 = time.monotonic()
    t = threading.Thread(target=read, daemon=True, name="outage-read")
    t.start()
    t.join(cap)
    return time.monotonic() - t0, outcome[0] if outcome else "waiting"


def landed(s: System, keys: list[str]) -> Callable[[], bool]:
    """Whether every key is in the bucket (JuiceFS: no block staged)."""
    if isinstance(s, Juicefs):
        return lambda: s.staged() == 0
    prefix = os.path.commonprefix(keys).rsplit("/", 1)[0] + "/"
    return lambda: set(keys) <= s.ctx.keys(s.bucket, prefix)


def prepare(s: System, base: str) -> None:
    """Cold files for each kind written and in the bucket, then a fresh mount that knows their metadata."""
    os.makedirs(os.path.join(s.root, base, "cold"))
    os.makedirs(os.path.join(s.root, base, "during"))
    data = os.urandom(COLD_SIZE)
    for kind in KINDS:
        with open(os.path.join(s.root, base, "cold", f"{kind}.bin"), "wb") as f:
            f.write(data)
    with open(os.path.join(s.root, base, "during", "keep.bin"), "wb") as f:
        f.write(data)  # rclone keeps no empty folder: the folder the outage's files go to exists by a file
    s.flush()
    for rel in [*(f"cold/{kind}.bin" for kind in KINDS), "during/keep.bin"]:
        s.wait_object(f"{base}/{rel}", COLD_SIZE)
    s.unmount()
    s.mount("write")  # an empty cache: the data is the server's alone now
    for kind in KINDS:
        os.stat(os.path.join(s.root, base, "cold", f"{kind}.bin"))
    os.listdir(os.path.join(s.root, base, "during"))


def one(s: System, server: SeaweedServer, base: str, kind: str) -> tuple[float, float]:
    """One outage of kind on s: (seconds until the uncached read failed, seconds until the queue was delivered)."""
    cold = os.path.join(s.root, base, "cold", f"{kind}.bin")
    keys = [f"{base}/during/{kind}-{i}.bin" for i in range(FILES)]
    outage = Outage(server, kind)
    say(f"  {s.name}: server {kind}")
    outage.begin()
    try:
        for key in keys:
            with open(os.path.join(s.root, key), "wb") as f:
                f.write(os.urandom(FILE_SIZE))
        written = time.monotonic()
        read_s, how = timed_read(cold, READ_CAP)
        say(f"  {s.name}: uncached read ended after {read_s:.2f}s: {how}")
        if how == "ok":
            raise RuntimeError(f"the uncached read of {cold} succeeded with the server {kind}")
        time.sleep(max(0.0, written + HOLD - time.monotonic()))
    finally:
        outage.end()
    back = stores_again(s)
    done = poll(landed(s, keys), QUEUE_CAP, f"{s.name}: the files written with the server {kind}", interval=POLL)
    queue_s = done - back
    say(f"  {s.name}: the files of the outage in the bucket {queue_s:.2f}s after the server stored a PUT again")
    deadline = time.monotonic() + RECOVER_WITHIN
    while True:  # the mount recovers: the uncached file reads back whole
        t, how = timed_read(cold, RECOVER_WITHIN)
        if how == "ok":
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"{s.name} still cannot read {cold} {RECOVER_WITHIN:.0f}s after the server's return")
        time.sleep(0.5)
    return read_s, queue_s


def run_outage(s: System, server: SeaweedServer, base: str, record: Callable[[str, float], None]) -> None:
    """The workload on s (mounted for it, unmounted after): both kinds, each figure given to record."""
    server.create_bucket(CANARY_BUCKET)
    s.mount("write")
    try:
        prepare(s, base)
        for kind in KINDS:
            read_s, queue_s = one(s, server, base, kind)
            record(f"outage_{kind}_read_s", read_s)
            record(f"outage_{kind}_queue_s", queue_s)
    finally:
        if server.paused:
            server.resume()
        if server.proc is None:
            server.restart_server()
        s.unmount()
