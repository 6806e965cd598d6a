"""Durability under abuse: kill -9 loops, server outages, hostile buckets, many processes at once.

1. Crash loop (both providers): writer threads create files of 0-2 MiB while the daemon is
   killed with SIGKILL at a random moment, again and again; every file whose close() returned
   before the kill must reach the provider with its exact bytes after the next mount and a flush.
2. Outage (S3): the server is stopped (connection refused) or frozen (SIGSTOP: connections hang)
   while a writer keeps creating, renaming and unlinking files: every operation succeeds
   quickly, an uncached read fails with EIO within read_deadline + 5 s, `storefs status`
   answers throughout, and after the server is back a flush lands exactly the final state.
3. Hostile bucket (S3): keys no file system can hold (control characters, `dup` as file and
   folder, `..`, `//`, ...) put with plain boto3 before mounting: the mount stays up, lists
   what it safely can, logs each name it skips on one line, and writes nothing outside its cache.
4. Concurrency (both providers): 8 writer processes x 250 files while 4 reader processes list
   folders and check the sha256 of files already closed; nothing lost or corrupted, also after
   an empty-cache remount.

CI sizes keep the module at a few minutes; a full run scales them up with the environment:

    STOREFS_CRASH_ROUNDS=20      kill -9 rounds per provider (default 20)
    STOREFS_OUTAGE_SECONDS=60    the full outage (default 20 to keep CI short)
    STOREFS_PAUSE_SECONDS=15     the SIGSTOP freeze (default 15)
    STOREFS_CONC_FILES=250       files per writer process (default 250, 8 writers)
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import require_fuse

from storefs import keys
from storefs.testing.data import ART, payload, sha256
from storefs.testing.mount import StorefsMount, run

pytestmark = pytest.mark.timeout(900)

MiB = 1024 * 1024

CRASH_ROUNDS = int(os.environ.get("STOREFS_CRASH_ROUNDS", "20"))
OUTAGE_SECONDS = float(os.environ.get("STOREFS_OUTAGE_SECONDS", "20"))
PAUSE_SECONDS = float(os.environ.get("STOREFS_PAUSE_SECONDS", "15"))
CONC_FILES = int(os.environ.get("STOREFS_CONC_FILES", "250"))
CONC_WRITERS = 8
CONC_READERS = 4

MAX_OP_SECONDS = 10.0  # no single file operation may take longer while the server is away
READ_DEADLINE = 3  # the S3 provider's read_deadline in the outage tests


# --------------------------------------------------------------------------- fixtures


s3_only = pytest.mark.parametrize("provider_kind", ["s3"])


# --------------------------------------------------------------------------- helpers


def write_fully(fd: int, data: bytes, chunk: int = 256 * 1024) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view[:chunk]):]


def check_status_clean(store: StorefsMount) -> dict:
    st = store.status()
    assert st["pending"] == 0 and st["dirty_files"] == 0 and not st["errors"], st
    return st


def log_text(store: StorefsMount) -> str:
    with contextlib.suppress(OSError):
        return store.log_path.read_text(errors="backslashreplace")
    return ""


def s3_get(store: StorefsMount, key: str, timeout: float = 30.0) -> bytes | None:
    """The object's bytes with plain boto3 (None if absent); 5xx right after a restart is retried."""
    from botocore.exceptions import BotoCoreError, ClientError
    deadline = time.monotonic() + timeout
    while True:
        try:
            return store.backend.read(key)
        except (BotoCoreError, ClientError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def s3_all_keys(backend: Any, prefix: str = "") -> list[str]:
    """Every key under prefix (folder markers included), listed with plain boto3."""
    c, b = backend.client, backend.bucket
    out: list[str] = []
    for page in c.get_paginator("list_objects_v2").paginate(Bucket=b, Prefix=prefix):
        out += [o["Key"] for o in page.get("Contents", [])]
    return sorted(out)


# =========================================================================== 1. crash loop


class CrashWriters:
    """Threads that create, write and close distinct files until told to stop or an error hits.

    A file is recorded (key -> sha256) only once its close() has returned."""

    def __init__(self, mnt: Path, art: str, tag: str, n_threads: int, seed: int) -> None:
        self.mnt, self.art, self.tag = mnt, art, tag
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.closed: dict[str, str] = {}
        self.errors: list[str] = []
        self.started_files = 0
        self.threads = [threading.Thread(target=self._run, args=(i, random.Random(seed * 100 + i)), daemon=True)
                        for i in range(n_threads)]

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def _run(self, tid: int, rnd: random.Random) -> None:
        i = 0
        try:
            while not self.stop.is_set():
                key = f"{self.art}/{self.tag}_w{tid}_{i:04d}.bin"
                size = rnd.randint(0, 2 * MiB)
                header = f"{key}\n".encode()
                data = (header + rnd.randbytes(max(0, size - len(header))))[:size]
                with self.lock:
                    self.started_files += 1
                fd = os.open(self.mnt / key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
                try:
                    write_fully(fd, data)
                finally:
                    os.close(fd)  # may raise: then the file is not recorded
                with self.lock:
                    self.closed[key] = sha256(data)
                i += 1
        except OSError as e:  # the daemon died under us: ENOTCONN, ECONNABORTED, ENOENT after the detach
            with self.lock:
                self.errors.append(errno.errorcode.get(e.errno or 0, str(e.errno)))

    def join(self, timeout: float) -> list[threading.Thread]:
        deadline = time.monotonic() + timeout
        for t in self.threads:
            t.join(max(0.0, deadline - time.monotonic()))
        return [t for t in self.threads if t.is_alive()]


@pytest.mark.storefs_config(writeback_delay="0.1s", uploaders=2)
def test_kill9_loop_loses_no_closed_file(store):
    """Round after round: writers busy, kill -9 at a random moment, remount, flush, check every closed file."""
    rnd = random.Random(f"crash-{store.provider}")
    art = f"{ART}/crash"
    (store.mnt / art).mkdir(parents=True)
    recorded: dict[str, str] = {}
    figures = {"rounds": 0, "kills": 0, "closed": 0, "in_flight": 0, "writer_errors": {}}
    t_start = time.monotonic()
    for rnd_no in range(CRASH_ROUNDS):
        writers = CrashWriters(store.mnt, art, f"r{rnd_no:02d}", n_threads=3, seed=rnd_no)
        writers.start()
        time.sleep(rnd.uniform(0.1, 1.5))
        writers.stop.set()  # no new files after the kill; the ones under way get the errors
        pid = store.pid
        assert pid, "no daemon pid"
        os.kill(pid, signal.SIGKILL)  # the exact moment; store.kill9 waits for it and detaches the mount
        store.kill9()
        figures["kills"] += 1
        stuck = writers.join(30)
        assert not stuck, f"round {rnd_no}: {len(stuck)} writer threads hang after the daemon was killed"
        leaked = os.listdir(store.mnt)
        assert not leaked, f"round {rnd_no}: files landed in the bare mountpoint after the kill: {leaked}"
        for code in writers.errors:
            figures["writer_errors"][code] = figures["writer_errors"].get(code, 0) + 1
        figures["in_flight"] += writers.started_files - len(writers.closed)

        store.start()
        store.flush(timeout=180)
        wrong = []
        for key, digest in writers.closed.items():
            data = store.provider_read(key)
            if data is None:
                wrong.append(f"{key}: missing")
            elif sha256(data) != digest:
                wrong.append(f"{key}: {len(data)} bytes with another sha256")
        assert not wrong, (f"round {rnd_no} (after {figures['kills']} kills): {len(wrong)} of "
                           f"{len(writers.closed)} closed files lost or damaged by kill -9: {wrong[:5]}")
        st = check_status_clean(store)
        # the cache copies the next mount found are right too (a few, through the kernel)
        for key in list(writers.closed)[:2]:
            got = (store.mnt / key).read_bytes()
            assert sha256(got) == writers.closed[key], f"round {rnd_no}: {key} reads back wrong through the mount"
        recorded.update(writers.closed)
        figures["rounds"] += 1
        figures["closed"] += len(writers.closed)
        print(f"round {rnd_no}: {len(writers.closed)} closed, {writers.started_files - len(writers.closed)} "
              f"in flight at the kill, uploads_done {st.get('uploads_done')}")

    # after every round: still everything there (a later recovery must not undo an earlier one)
    keys = set(store.provider_keys(art))
    missing = sorted(set(recorded) - keys)
    assert not missing, f"{len(missing)} files closed in earlier rounds are gone at the end: {missing[:5]}"
    sample = random.Random(1).sample(sorted(recorded), min(40, len(recorded)))
    wrong = [k for k in sample if sha256(store.provider_read(k) or b"") != recorded[k]]
    assert not wrong, f"files changed after later rounds: {wrong[:5]}"
    print(f"crash loop on {store.provider}: {figures['kills']} kill -9 injected, {figures['closed']} closed "
          f"files checked byte for byte, {figures['in_flight']} files in flight at a kill, writer errors "
          f"{figures['writer_errors']}, {time.monotonic() - t_start:.0f}s")
    assert figures["closed"] > 0


# =========================================================================== 2. outage


class OutageWriter:
    """A thread that keeps creating, closing, renaming and unlinking files; each call timed.

    `expected` is the state the provider must end in: {relative name: bytes}."""

    def __init__(self, root: Path, pace: float = 0.05) -> None:
        self.root = root
        self.pace = pace
        self.stop = threading.Event()
        self.expected: dict[str, bytes] = {}
        self.renamed: dict[str, str] = {}
        self.unlinked: list[str] = []
        self.errors: list[str] = []
        self.times: list[tuple[float, str]] = []  # (seconds, what)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.ops = 0
        self.i = 0

    def _timed(self, what: str, fn: Any, *args: Any) -> Any:
        t0 = time.monotonic()
        try:
            return fn(*args)
        finally:
            self.times.append((time.monotonic() - t0, what))
            self.ops += 1

    def _write(self, rel: str, data: bytes) -> None:
        t0 = time.monotonic()
        fd = self._timed(f"open {rel}", os.open, self.root / rel, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            self._timed(f"write {rel}", write_fully, fd, data)
        finally:
            self._timed(f"close {rel}", os.close, fd)
        self.times.append((time.monotonic() - t0, f"create+write+close {rel}"))

    def _run(self) -> None:
        rnd = random.Random("outage")
        try:
            while not self.stop.is_set():
                i = self.i
                sub = f"sub{i // 40}"
                if i % 40 == 0:
                    self._timed(f"mkdir {sub}", os.mkdir, self.root / sub)
                rel = f"{sub}/f{i:05d}.png"
                data = payload(f"outage/{i}", rnd.randint(0, 200_000))
                self._write(rel, data)
                self.expected[rel] = data
                if i % 5 == 4:  # rename a file written a little earlier (perhaps already uploaded)
                    old = next((k for k in (f"sub{(i - 3) // 40}/f{i - 3:05d}.png",) if k in self.expected), None)
                    if old is not None:
                        new = old.replace("/f", "/renamed-f")
                        self._timed(f"rename {old}", os.rename, self.root / old, self.root / new)
                        self.expected[new] = self.expected.pop(old)
                        self.renamed[old] = new
                if i % 7 == 6:
                    old = f"sub{(i - 1) // 40}/f{i - 1:05d}.png"
                    if old in self.expected:
                        self._timed(f"unlink {old}", os.unlink, self.root / old)
                        del self.expected[old]
                        self.unlinked.append(old)
                if i % 25 == 24:  # and read back one just written (from the cache)
                    back = self._timed(f"read {rel}", (self.root / rel).read_bytes)
                    if back != data:
                        self.errors.append(f"{rel} read back {len(back)} bytes, not what was written")
                self.i += 1
                time.sleep(self.pace)
        except OSError as e:
            self.errors.append(f"file {self.i}: {errno.errorcode.get(e.errno or 0, e.errno)} {e}")

    def max_time(self) -> tuple[float, str]:
        return max(self.times, default=(0.0, "nothing"))


def run_outage(store: StorefsMount, seaweed: Any, mode: str, seconds: float) -> dict:
    """Take the server away (stop or pause) for `seconds` while OutageWriter works; check it all."""
    mnt = store.mnt
    c, b = store.backend.client, store.backend.bucket
    art = "t1/image/b1/outage"
    cold_key = "t1/image/b1/pre/cold.png"
    cold = payload("cold", 300_000)
    c.put_object(Bucket=b, Key=cold_key, Body=cold)  # before the mount lists b1 (or it waits for the TTL)
    (mnt / art).mkdir(parents=True)
    assert os.stat(mnt / cold_key).st_size == len(cold)  # the mount knows its metadata, never its data
    store.flush()

    writer = OutageWriter(mnt / art)
    figures: dict[str, Any] = {"mode": mode}
    status_times: list[float] = []
    problems: list[str] = []
    writer.thread.start()
    time.sleep(1.0)  # some files reach the bucket before the outage (renamed later: server-side copies)
    before = writer.i
    try:
        if mode == "stop":
            seaweed.stop_server()
        else:
            seaweed.pause()
        t_down = time.monotonic()
        cold_done = False
        while time.monotonic() - t_down < seconds:
            if not cold_done and time.monotonic() - t_down > min(6.0, seconds / 2):
                # a read of data the mount never cached: EIO, within read_deadline + 5 s
                t0 = time.monotonic()
                try:
                    with open(mnt / cold_key, "rb") as f:
                        f.read()
                    problems.append(f"read of {cold_key} (never cached) succeeded while the server is {mode}ped")
                except OSError as e:
                    if e.errno != errno.EIO:
                        problems.append(f"read of {cold_key} (never cached): {errno.errorcode.get(e.errno)} "
                                        f"({e}), expected EIO")
                figures["cold_read_s"] = round(time.monotonic() - t0, 2)
                if figures["cold_read_s"] > READ_DEADLINE + 5:
                    problems.append(f"the failing cold read took {figures['cold_read_s']}s "
                                    f"(read_deadline {READ_DEADLINE}s)")
                cold_done = True
                continue
            t0 = time.monotonic()
            try:
                store.status()  # the daemon answers (a hang would hit the 60 s command timeout)
            except (AssertionError, subprocess.TimeoutExpired) as e:
                problems.append(f"storefs status failed while the server is {mode}ped: {e}")
            status_times.append(time.monotonic() - t0)
            if not writer.thread.is_alive():
                break
            time.sleep(1.0)
        figures["outage_s"] = round(time.monotonic() - t_down, 1)
        figures["files_during_outage"] = writer.i - before
    finally:
        writer.stop.set()
        writer.thread.join(60)
        if mode == "stop":
            seaweed.restart_server()
        else:
            seaweed.resume()
    assert not writer.thread.is_alive(), "the writer hangs in a file operation"
    worst, what = writer.max_time()
    figures.update(max_op_s=round(worst, 2), max_op=what, ops=writer.ops,
                   max_status_s=round(max(status_times, default=0.0), 2), files=writer.i,
                   renamed=len(writer.renamed), unlinked=len(writer.unlinked))
    print(f"outage ({mode}): {figures}")
    assert not writer.errors, f"file operations failed while the server was {mode}ped: {writer.errors}"
    assert worst < MAX_OP_SECONDS, f"an operation took {worst:.1f}s while the server was {mode}ped: {what}"
    assert not problems, "\n".join(problems)
    assert figures["files_during_outage"] > 0

    # back: everything lands, exactly the final state
    s3_get(store, cold_key)  # weed answers reads again
    store.flush(timeout=180)
    check_status_clean(store)
    keys = [k for k in s3_all_keys(store.backend, art + "/") if not k.endswith("/")]
    exp = sorted(f"{art}/{rel}" for rel in writer.expected)
    assert sorted(keys) == exp, (f"bucket differs from the final state: missing {sorted(set(exp) - set(keys))[:5]}, "
                                 f"extra {sorted(set(keys) - set(exp))[:5]}")
    wrong = [rel for rel, data in writer.expected.items() if s3_get(store, f"{art}/{rel}") != data]
    assert not wrong, f"{len(wrong)} files with wrong bytes after the outage: {wrong[:5]}"
    for old in list(writer.renamed) + writer.unlinked:
        assert s3_get(store, f"{art}/{old}") is None, f"{old} (renamed or unlinked) is still in the bucket"
    assert (mnt / cold_key).read_bytes() == cold
    return figures


OUTAGE_MARKS = [s3_only, pytest.mark.parametrize("s3_options", [{"read_deadline": READ_DEADLINE}],
                                                  ids=[f"read_deadline={READ_DEADLINE}"]),
                pytest.mark.storefs_config(writeback_delay="0.2s")]


def outage_marks(fn: Any) -> Any:
    for mark in OUTAGE_MARKS:
        fn = mark(fn)
    return fn


@outage_marks
def test_server_stopped_writes_go_on(store, seaweed, s3_options):
    """Server stopped (connection refused) for STOREFS_OUTAGE_SECONDS: writes go on, then land."""
    run_outage(store, seaweed, "stop", OUTAGE_SECONDS)


@outage_marks
def test_server_frozen_writes_go_on(store, seaweed, s3_options):
    """Server frozen with SIGSTOP (connections hang) for STOREFS_PAUSE_SECONDS: same promises."""
    run_outage(store, seaweed, "pause", PAUSE_SECONDS)


# =========================================================================== 3. hostile bucket

# What SeaweedFS (4.48) does with them: it refuses `..`, `.`, `a/../b` (InvalidRequest) and a name over
# 255 bytes (KeyTooLongError); it stores `a//b` as `a/b`, drops a leading `/`, turns `\\` into `/`, and keeps
# `dup` (a file) and `dup/inner.png` side by side. The test asserts on what the server actually stored.
# What the mount lists in the artifact (observed): ok.png, double.png, leading.png, the 255-byte name,
# `dup` as a FILE (the file object wins; dup/inner.png is not reachable), `%2e%2e`, `back` and
# `marker-with-data` as folders; the names with control characters are skipped and logged.
HOSTILE_ART = "t1/image/b1/a1"
HOSTILE_KEYS = [
    f"{HOSTILE_ART}/ok.png",
    f"{HOSTILE_ART}/../escape.png",
    f"{HOSTILE_ART}/new\nline.png",
    f"{HOSTILE_ART}/tab\there.png",
    f"{HOSTILE_ART}/esc\x1b[31m.png",
    f"{HOSTILE_ART}/del\x7f.png",
    f"{HOSTILE_ART}/" + "x" * 300 + ".png",
    f"{HOSTILE_ART}/" + "y" * 251 + ".png",  # 255 bytes: a legal name
    f"{HOSTILE_ART}//double.png",
    f"/{HOSTILE_ART}/leading.png",
    f"{HOSTILE_ART}/dup",
    f"{HOSTILE_ART}/dup/inner.png",
    f"{HOSTILE_ART}/.",
    f"{HOSTILE_ART}/..",
    f"{HOSTILE_ART}/sub/../up.png",
    f"{HOSTILE_ART}/back\\slash.png",
    f"{HOSTILE_ART}/%2e%2e/enc.png",
    f"{HOSTILE_ART}/marker-with-data/",  # a "folder marker" that holds bytes
    "t1/image/b1/stray.png",  # a file at artifact level: outside the layout
    "stray-root.png",
]


def _tree(root: Path, skip: tuple[str, ...]) -> set[str]:
    out = set()
    for dirpath, dirs, files in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        dirs[:] = [d for d in dirs if os.path.normpath(os.path.join(rel, d)) not in skip]
        for name in dirs + files:
            out.add(os.path.normpath(os.path.join(rel, name)))
    return out


@s3_only
def test_hostile_bucket_keys(backend, tmp_path, tmp_path_factory):
    """Keys no file system can hold: the mount stays up, lists what it can, writes nothing outside its cache."""
    require_fuse()
    c, b = backend.client, backend.bucket
    refused = {}
    for key in HOSTILE_KEYS:
        try:
            c.put_object(Bucket=b, Key=key, Body=f"bytes of {key!r}".encode())
        except Exception as e:  # noqa: BLE001 - the server may refuse some
            refused[key] = type(e).__name__ + ": " + str(e)[:80]
    stored = {}
    for k in s3_all_keys(backend):
        stored[k] = c.get_object(Bucket=b, Key=k)["Body"].read()
    print("refused by the server:", {k: v for k, v in refused.items()})
    print("stored:", sorted(stored))
    assert f"{HOSTILE_ART}/ok.png" in stored

    base = tmp_path_factory.getbasetemp()
    top_before = set(os.listdir(base))
    tree_before = _tree(tmp_path, skip=())
    store = StorefsMount(tmp_path, backend)
    try:
        store.start()
        art = store.mnt / HOSTILE_ART
        listings: dict[str, Any] = {}
        for rel in ("", "t1", "t1/image", "t1/image/b1", HOSTILE_ART):
            try:
                listings[rel] = sorted(os.listdir(store.mnt / rel))
            except OSError as e:
                listings[rel] = f"raised {errno.errorcode.get(e.errno)}: {e}"
        print("listings:", json.dumps(listings, indent=1))
        bad = {rel: v for rel, v in listings.items() if isinstance(v, str)}
        assert not bad, f"listings raised: {bad}"
        names = listings[HOSTILE_ART]
        assert "ok.png" in names
        assert (art / "ok.png").read_bytes() == stored[f"{HOSTILE_ART}/ok.png"]

        # every name the listing gives can be stat'ed; files read back as stored
        shown: dict[str, str] = {}
        for name in names:
            p = art / name
            st = os.stat(p)  # must not raise for a listed name
            key = keys.object_key(f"{HOSTILE_ART}/{name}")  # a file beside a folder of its name shows by its alias
            if os.path.isdir(p):
                shown[name] = "folder: " + ", ".join(sorted(os.listdir(p)))
            else:
                data = p.read_bytes()
                assert st.st_size == len(data)
                assert data == stored.get(key), f"{name!r} reads {data[:40]!r}, the object holds {stored.get(key)!r}"
                shown[name] = f"file, {len(data)} bytes"
        print("artifact entries:", json.dumps(shown, indent=1))
        # dup is both a file and a folder in the bucket (when the server keeps both): both show, the
        # folder by its name and the file beside it by its alias
        if f"{HOSTILE_ART}/dup" in stored and f"{HOSTILE_ART}/dup/inner.png" in stored:
            assert names.count("dup") == 1 and names.count(f"dup{keys.FILE_SUFFIX}") == 1, names
            assert os.path.isdir(art / "dup") and (art / f"dup{keys.FILE_SUFFIX}").is_file()

        # names that cannot be file names are skipped, one log line each, never a torn line
        unsafe = sorted(k.rsplit("/", 1)[1] for k in stored
                        if k.startswith(HOSTILE_ART + "/") and "/" not in k[len(HOSTILE_ART) + 1:]
                        and any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in k))
        for name in unsafe:
            assert name not in names, f"{name!r} listed"
        text = log_text(store)
        lines = text.splitlines()
        stamp = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR|CRITICAL) ")
        logged = {name: [ln for ln in lines if repr(name)[1:-1] in ln] for name in unsafe}
        print("log lines per skipped name:", {n: len(v) for n, v in logged.items()})
        # a raw newline in a logged name tears the record in two: the tail starts a line of its own
        tails = {frag for name in unsafe for frag in re.split(r"[\x00-\x1f\x7f]", name)[1:] if len(frag) >= 3}
        torn = [ln for ln in lines if not stamp.match(ln) and any(ln.startswith(t) for t in tails)]
        assert not torn, f"log records torn by a raw control character in a name: {torn[:6]}"
        raw = [repr(name) for name in unsafe if name in text]
        assert not raw, f"names logged with raw control characters (not escaped): {raw}"
        assert all(logged.values()), f"skipped names with no log line: {[n for n, v in logged.items() if not v]}"

        # a full walk completes, and the mount is still up and answering
        res = run(["find", str(store.mnt)], timeout=120, check=False)
        print(f"find: exit {res.returncode}, {len(res.stdout.splitlines())} entries, stderr {res.stderr[-300:]!r}")
        assert res.returncode == 0, f"find {store.mnt} failed: {res.stderr[-2000:]}"
        assert store.mounted
        st = store.status()
        assert not st["errors"], st
        # still writable next to the hostile names
        (art / "new.png").write_bytes(b"fresh")
        store.flush()
        assert c.get_object(Bucket=b, Key=f"{HOSTILE_ART}/new.png")["Body"].read() == b"fresh"
    finally:
        store.cleanup()

    # nothing written outside the cache folder: the tmp tree gained only cache/, mnt/ (and the config/log
    # the test harness names), the session's temp root gained nothing, and no file anywhere is named
    # after a key's base name (cache data files are named by hash)
    tree_after = _tree(tmp_path, skip=("cache", "mnt"))
    new = sorted(tree_after - tree_before - {"cache", "mnt", "storefs.yaml", "storefs.log"})
    assert not new, f"files appeared outside the cache folder: {new}"
    assert set(os.listdir(base)) == top_before, sorted(set(os.listdir(base)) ^ top_before)
    basenames = {k.rstrip("/").rsplit("/", 1)[-1] for k in HOSTILE_KEYS} - {"", ".", ".."}
    hits = []
    for dirpath, dirs, files in os.walk(base):
        dirs[:] = [d for d in dirs if not d.startswith("seaweed")]
        hits += [os.path.join(dirpath, f) for f in files if f in basenames]
    assert not hits, f"files named after object keys on the local disk: {hits}"


# =========================================================================== 4. concurrency

WRITER_SCRIPT = r"""
import hashlib, json, os, random, sys, time
mnt, w, n, manifest = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
rnd = random.Random(f"writer-{w}")
worst = 0.0
with open(manifest, "a") as man:
    for i in range(n):
        folder = f"t1/image/own{w}/a{w}" if i % 2 == 0 else f"t1/image/shared/s{i % 3}"
        os.makedirs(os.path.join(mnt, folder), exist_ok=True)
        rel = f"{folder}/w{w}_{i:04d}.png"
        size = rnd.randint(1024, 64 * 1024)
        head = f"{rel}\n".encode()
        data = head + rnd.randbytes(size - len(head))
        t0 = time.monotonic()
        with open(os.path.join(mnt, rel), "wb") as f:
            f.write(data)
        worst = max(worst, time.monotonic() - t0)
        man.write(f"{rel} {hashlib.sha256(data).hexdigest()} {len(data)}\n")
        man.flush()
print(json.dumps({"writer": w, "files": n, "max_file_s": round(worst, 3)}))
"""

READER_SCRIPT = r"""
import errno, hashlib, json, os, random, sys, time
mnt, mandir, stopfile, r = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
rnd = random.Random(f"reader-{r}")
stats = {"reader": r, "reads": 0, "listings": 0, "walks": 0, "errors": []}

def manifest():
    out = {}
    for name in os.listdir(mandir):
        with open(os.path.join(mandir, name)) as f:
            text = f.read()
        for line in text.splitlines(keepends=True):
            if line.endswith("\n"):
                rel, digest, size = line.split()
                out[rel] = (digest, int(size))
    return out

def err(msg):
    if len(stats["errors"]) < 50:
        stats["errors"].append(msg)

while not os.path.exists(stopfile):
    known = manifest()  # closed files, taken before the listing
    if not known:
        time.sleep(0.05)
        continue
    rels = sorted(known)
    for rel in rnd.sample(rels, min(5, len(rels))):
        try:
            with open(os.path.join(mnt, rel), "rb") as f:
                data = f.read()
        except OSError as e:
            err(f"read {rel}: {errno.errorcode.get(e.errno)} {e}")
            continue
        stats["reads"] += 1
        if hashlib.sha256(data).hexdigest() != known[rel][0]:
            err(f"read {rel}: {len(data)} bytes, expected {known[rel][1]} with another sha256")
    folder = rnd.choice(rels).rsplit("/", 1)[0]
    try:
        names = set(os.listdir(os.path.join(mnt, folder)))
        stats["listings"] += 1
        lost = [rel for rel in rels if rel.rsplit("/", 1)[0] == folder and rel.rsplit("/", 1)[1] not in names]
        if lost:  # say what the mount knows of the first one: does it exist, is it uploaded?
            p = os.path.join(mnt, lost[0])
            try:
                os.stat(p)
                seen = "stat ok, state " + os.getxattr(p, "user.storefs.state").rstrip(b"\0").decode()
            except OSError as e:
                seen = f"stat/getxattr: {errno.errorcode.get(e.errno)}"
            again = lost[0].rsplit("/", 1)[1] in set(os.listdir(os.path.join(mnt, folder)))
            err(f"listing of {folder} lacks {len(lost)} closed files, e.g. {lost[:3]} ({seen}; "
                f"{'in' if again else 'still not in'} a second listing right after)")
    except OSError as e:
        err(f"listdir {folder}: {errno.errorcode.get(e.errno)} {e}")
    if stats["listings"] % 10 == 0:
        def onerror(e):
            err(f"walk: {errno.errorcode.get(e.errno)} {e}")
        for _ in os.walk(os.path.join(mnt, "t1"), onerror=onerror):
            pass
        stats["walks"] += 1
print(json.dumps(stats))
"""


@pytest.mark.storefs_config(writeback_delay="0.2s", uploaders=4)
def test_many_processes_write_list_and_read(store, tmp_path):
    """8 writer processes, 4 reader processes; after flush and an empty-cache remount all files are exact."""
    mandir = tmp_path / "manifests"
    mandir.mkdir()
    stopfile = tmp_path / "readers.stop"
    (store.mnt / "t1/image").mkdir(parents=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    t0 = time.monotonic()
    readers = [subprocess.Popen([sys.executable, "-c", READER_SCRIPT, str(store.mnt), str(mandir), str(stopfile),
                                 str(r)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
               for r in range(CONC_READERS)]
    writers = [subprocess.Popen([sys.executable, "-c", WRITER_SCRIPT, str(store.mnt), str(w), str(CONC_FILES),
                                 str(mandir / f"w{w}.txt")], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, env=env)
               for w in range(CONC_WRITERS)]
    results, failures = [], []
    try:
        for p in writers:
            out, err = p.communicate(timeout=600)
            if p.returncode != 0:
                failures.append(f"writer exit {p.returncode}: {err[-1500:]}")
            else:
                results.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        stopfile.touch()
        reader_stats = []
        for p in readers:
            try:
                out, err = p.communicate(timeout=120)
            except subprocess.TimeoutExpired:
                p.kill()
                out, err = p.communicate()
                failures.append("a reader hangs")
            if p.returncode != 0:
                failures.append(f"reader exit {p.returncode}: {err[-1500:]}")
            else:
                reader_stats.append(json.loads(out.strip().splitlines()[-1]))
        for p in writers:
            if p.poll() is None:
                p.kill()
    t_write = time.monotonic() - t0
    assert not failures, "\n".join(failures)
    reader_errors = [e for s in reader_stats for e in s["errors"]]
    print(f"{store.provider}: writers {results}, readers "
          f"{[{k: v for k, v in s.items() if k != 'errors'} for s in reader_stats]}, {t_write:.0f}s")
    assert not reader_errors, f"{len(reader_errors)} reader errors, e.g.:\n" + "\n".join(reader_errors[:10])

    manifest: dict[str, str] = {}
    for mf in mandir.iterdir():
        for line in mf.read_text().splitlines():
            rel, digest, _size = line.split()
            manifest[rel] = digest
    assert len(manifest) == CONC_WRITERS * CONC_FILES

    store.flush(timeout=300)
    check_status_clean(store)
    store.remount(empty_cache=True)
    bad_mount, bad_provider = [], []
    for rel, digest in sorted(manifest.items()):
        try:
            got = (store.mnt / rel).read_bytes()
            if sha256(got) != digest:
                bad_mount.append(f"{rel}: {len(got)} bytes, wrong sha256")
        except OSError as e:
            bad_mount.append(f"{rel}: {errno.errorcode.get(e.errno)}")
        data = store.provider_read(rel)
        if data is None or sha256(data) != digest:
            bad_provider.append(f"{rel}: {'missing' if data is None else 'wrong bytes'}")
    assert not bad_mount, \
        f"{len(bad_mount)} files wrong through the mount after an empty-cache remount: {bad_mount[:5]}"
    assert not bad_provider, f"{len(bad_provider)} files wrong in the provider: {bad_provider[:5]}"
    # every folder lists exactly its files
    by_folder: dict[str, set[str]] = {}
    for rel in manifest:
        folder, name = rel.rsplit("/", 1)
        by_folder.setdefault(folder, set()).add(name)
    for folder, names in by_folder.items():
        assert set(os.listdir(store.mnt / folder)) == names, folder
    print(f"{store.provider}: {len(manifest)} files checked through the mount and in the provider, "
          f"{time.monotonic() - t0:.0f}s in all")
