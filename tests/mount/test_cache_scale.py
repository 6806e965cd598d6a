"""The cache at its limits and the mount at scale, through real mounts (local folder and SeaweedFS).

1. eviction: a cache with max_size 24MiB takes 60 MiB of writes, ends at or under its limit
   with evictions counted, and every file (evicted or not) reads back right; dirty files are
   never evicted, however far clean data fetched by reads pushes the cache past its limit;
2. ENOSPC: a cache disk that fills (a 40 MiB tmpfs) fails the write with ENOSPC and the daemon
   keeps serving; a cache at max_size whose data cannot be uploaded fails the crossing write
   with ENOSPC after space_wait; earlier files stay intact and reach the provider on flush;
3. two mounts on one bucket see each other's creates, overwrites and deletes within the TTLs;
4. a local provider's folder changed by other programs is seen at once (watchdog);
5. ranged reads fetch only the chunks read; a sequential read fetches the object once; a
   wholly cached file read at random is read once into the page cache, and one read in
   order has the cache file read 16 MiB ahead of it;
6. creates take cache data files made ahead of time; the unused ones go at unmount, and
   those a kill -9 left behind at the next mount;
7. a folder of 10,000 keys lists whole (os.listdir, ls -f), and nothing is listed at mount.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import mmap
import os
import random
import sqlite3
import stat
import subprocess
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from storefs.testing.backends import S3Backend
from storefs.testing.data import ART, payload, sha256
from storefs.testing.mount import StorefsMount, run

pytestmark = pytest.mark.timeout(300)

KiB = 1024
MiB = 1024 * KiB
CHUNK = 4 * MiB  # CacheConfig.chunk_size default


def require_fuse() -> None:
    from conftest import require_fuse as _require_fuse  # the same skip/fail rule as the `store` fixture
    _require_fuse()


# --------------------------------------------------------------------------- helpers


def poll(fn: Callable[[], Any], timeout: float, interval: float = 0.05) -> tuple[bool, Any, float]:
    """Call fn until it returns something truthy or timeout passes: (ok, last value, seconds taken)."""
    t0 = time.monotonic()
    while True:
        try:
            value = fn()
        except OSError:
            value = None
        if value:
            return True, value, time.monotonic() - t0
        if time.monotonic() - t0 > timeout:
            return False, value, time.monotonic() - t0
        time.sleep(interval)


def wait_status(m: StorefsMount, pred: Callable[[dict], bool], timeout: float) -> dict:
    """Poll `storefs status --json` until pred holds; the last status either way."""
    deadline = time.monotonic() + timeout
    while True:
        st = m.status()
        if pred(st) or time.monotonic() > deadline:
            return st
        time.sleep(0.25)


def write_blocks(path: Path, data: bytes, block: int = MiB) -> None:
    """open + write in 1 MiB blocks + close, through the kernel."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for off in range(0, len(data), block):
            view = memoryview(data)[off:off + block]
            while view:
                n = os.write(fd, view)
                view = view[n:]
    finally:
        os.close(fd)


def read_bytes(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


def provider_put(m: StorefsMount, key: str, data: bytes) -> None:
    """Put an object straight into the provider, as another program would (not through the mount)."""
    if m.data is not None:
        p = m.data / key
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    else:
        m.backend.client.put_object(Bucket=m.backend.bucket, Key=key, Body=data)


def state_of(path: Path) -> str:
    return os.getxattr(path, "user.storefs.state").rstrip(b"\0").decode()


# --------------------------------------------------------------------------- 1. eviction


@pytest.mark.storefs_config(max_size="24MiB", space_wait="5s")
def test_eviction_keeps_the_cache_at_its_limit(store):
    limit = 24 * MiB
    art = store.path(ART)
    art.mkdir(parents=True)
    files = {f"f{i:02d}.bin": payload(("evict", i), 6 * MiB) for i in range(10)}
    t0 = time.monotonic()
    for name, data in files.items():
        write_blocks(art / name, data)
    took = time.monotonic() - t0
    store.flush()
    for name, data in files.items():
        got = store.provider_read(f"{ART}/{name}")
        assert got is not None and sha256(got) == sha256(data), f"{name}: wrong or missing in the provider"

    # eviction runs every ~2 s: the cache comes down to max_size (clean copies are evictable now)
    st = wait_status(store, lambda s: s["cache_bytes"] <= limit, timeout=10)
    print(f"60 MiB written in {took:.1f}s; cache {st['cache_bytes'] / MiB:.1f} MiB, "
          f"{st['cache_evictions']} evictions, {st['cached_files']} cached files")
    assert st["cache_bytes"] <= limit, f"cache holds {st['cache_bytes']} bytes, limit {limit}"
    assert st["cache_evictions"] > 0
    assert st["cached_files"] < 10, "no cached copy was dropped"
    assert st["dirty_files"] == 0

    # every file reads back right: the evicted ones are fetched from the provider again
    fetched0 = st["bytes_fetched"]
    for name, data in files.items():
        assert sha256((art / name).read_bytes()) == sha256(data), f"{name} reads back wrong"
        assert os.stat(art / name).st_size == len(data)
    st = wait_status(store, lambda s: s["cache_bytes"] <= limit, timeout=10)
    assert st["bytes_fetched"] - fetched0 >= 6 * MiB, "no evicted file was fetched again"
    assert st["cache_bytes"] <= limit, f"after reading back, cache holds {st['cache_bytes']} bytes"
    assert st["errors"] == [] and st["upload_failures"] == 0


@pytest.mark.storefs_config(max_size="24MiB", space_wait="5s", writeback_delay="60s")
def test_dirty_files_are_never_evicted(store):
    limit = 24 * MiB
    art = store.path(ART)
    # three objects already in the provider (put there directly, so nothing of them is cached)
    uploaded = {f"up{i}.bin": payload(("uploaded", i), 6 * MiB) for i in range(3)}
    for name, data in uploaded.items():
        provider_put(store, f"{ART}/{name}", data)
    # three dirty files: 18 MiB, under the limit; writeback_delay 60s keeps them dirty
    dirty = {f"dirty{i}.bin": payload(("dirty", i), 6 * MiB) for i in range(3)}
    for name, data in dirty.items():
        write_blocks(art / name, data)
    st = store.status()
    assert st["dirty_files"] == 3, st

    # reading the 18 MiB of uploaded objects pushes the cache to 36 MiB: only they can go
    for name, data in uploaded.items():
        assert sha256((art / name).read_bytes()) == sha256(data), f"{name} reads wrong"
    st = wait_status(store, lambda s: s["cache_bytes"] <= limit and s["cache_evictions"] > 0, timeout=10)
    print(f"cache {st['cache_bytes'] / MiB:.1f} MiB, {st['cache_evictions']} evictions, "
          f"{st['dirty_files']} dirty, fetched {st['bytes_fetched'] / MiB:.1f} MiB")
    assert st["cache_evictions"] > 0, "the cache passed its limit and nothing was evicted"
    assert st["cache_bytes"] <= limit, f"cache holds {st['cache_bytes']} bytes, limit {limit}"
    assert st["dirty_files"] == 3, st

    # the dirty files are still dirty, only here, and intact
    for name, data in dirty.items():
        assert state_of(art / name) == "dirty"
        assert store.provider_read(f"{ART}/{name}") is None, f"{name} was uploaded before its delay"
        assert sha256((art / name).read_bytes()) == sha256(data), f"{name}: dirty data lost or damaged"
    for name, data in uploaded.items():  # evicted copies come back from the provider
        assert sha256((art / name).read_bytes()) == sha256(data)

    store.flush()
    for name, data in dirty.items():
        got = store.provider_read(f"{ART}/{name}")
        assert got is not None and sha256(got) == sha256(data), f"{name}: wrong or missing after flush"
        assert state_of(art / name) == "clean"
    st = store.status()
    assert st["dirty_files"] == 0 and st["errors"] == []


# --------------------------------------------------------------------------- 2. ENOSPC


@contextlib.contextmanager
def tmpfs(path: Path, size: str):
    path.mkdir(parents=True, exist_ok=True)
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)],
                         capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {res.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], capture_output=True)
        if os.path.ismount(path):
            subprocess.run(["umount", "-l", str(path)], capture_output=True)


def test_cache_disk_full_gives_enospc(backend, tmp_path, request):
    """The cache on a 40 MiB tmpfs, max_size bigger than the disk, nothing uploaded (delay 60s)."""
    require_fuse()
    m = StorefsMount(tmp_path, backend, max_size="200MiB", writeback_delay="60s", space_wait="2s")
    with tmpfs(m.cache, "40m"):
        try:
            _disk_full(m)
        finally:
            if m.mounted:  # a full cache disk would keep the unmount's final uploads failing
                with contextlib.suppress(OSError):
                    os.unlink(m.path(ART) / "big.bin")
                st = os.statvfs(m.cache)
                if st.f_bavail * st.f_frsize < 4 * MiB:  # still full: the test failed, do not wait
                    with contextlib.suppress(Exception):
                        m.kill9()
            m.cleanup()
            rep = getattr(request.node, "rep_call", None)
            if rep is None or rep.failed:
                print(f"storefs log of {m.mnt}:\n{m.log_tail(120)}")


def _disk_full(m: StorefsMount) -> None:
    m.start()
    art = m.path(ART)
    art.mkdir(parents=True)
    expected = {f"early{i}.bin": payload(("early", i), 4 * MiB + 123 * i) for i in range(2)}
    for name, data in expected.items():
        write_blocks(art / name, data)
    expected_dirs: set[str] = set()

    t0 = time.monotonic()
    res = run(["dd", "if=/dev/urandom", f"of={art / 'big.bin'}", "bs=1M", "count=60", "conv=fsync"],
              check=False, timeout=90)
    took = time.monotonic() - t0
    print(f"dd: rc {res.returncode} after {took:.1f}s: {res.stderr.strip()!r}")
    assert res.returncode != 0, "a 60 MiB write into a 40 MiB cache disk succeeded"
    assert "No space left on device" in res.stderr, res.stderr

    # while the disk is full, every refusal is ENOSPC ("cache disk full -> ENOSPC"), and an
    # operation either happens or fails without effect
    problems: list[str] = []
    if "Input/output error" in res.stderr:
        problems.append("dd: fsync of the partial file failed with EIO, not ENOSPC")

    def attempt(label: str, fn: Callable[[], Any]) -> bool:
        try:
            fn()
            return True
        except OSError as e:
            if e.errno != errno.ENOSPC:
                problems.append(f"{label} on a full cache disk: {errno.errorcode.get(e.errno, e.errno)} "
                                f"({e.strerror}), expected ENOSPC")
            return False

    made = b"made while the disk is full"
    if attempt("create + write + close", lambda: write_blocks(art / "while_full.txt", made)):
        expected["while_full.txt"] = made
    if attempt("mkdir", lambda: (art / "dir_full").mkdir()):
        expected_dirs.add("dir_full")
    elif "dir_full" in os.listdir(art):
        problems.append("mkdir failed but the folder is listed")
    renamed = attempt("rename", lambda: os.rename(art / "early1.bin", art / "early1-renamed.bin"))
    names = set(os.listdir(art))
    if renamed:
        expected["early1-renamed.bin"] = expected.pop("early1.bin")
        if "early1-renamed.bin" not in names or "early1.bin" in names:
            problems.append(f"rename succeeded but the listing shows {sorted(names)}")
    elif "early1-renamed.bin" in names or "early1.bin" not in names:
        problems.append(f"rename failed but took effect: the listing shows {sorted(names)}")
        if "early1-renamed.bin" in names and "early1.bin" not in names:  # go on with what is shown
            expected["early1-renamed.bin"] = expected.pop("early1.bin")
            time.sleep(0.6)  # the kernel keeps the failed rename's negative lookup for negative_timeout
    for p in problems:
        print("PROBLEM:", p)

    try:
        _serving_while_full(m, expected, problems)
        # deleting the partial file makes room again
        os.unlink(art / "big.bin")
        if "while_full.txt" not in expected and (art / "while_full.txt").exists():
            os.unlink(art / "while_full.txt")  # created, then its write failed
        _after_disk_full(m, expected, expected_dirs)
    except (AssertionError, OSError) as e:
        if problems:
            raise AssertionError(f"{type(e).__name__}: {e}\n"
                                 f"(earlier, on the full cache disk: {'; '.join(problems)})") from e
        raise
    assert not problems, "on a full cache disk:\n" + "\n".join(problems)


def _check_served(m: StorefsMount, expected: dict[str, bytes]) -> None:
    art = m.path(ART)
    names = set(os.listdir(art))
    assert set(expected) <= names, names
    for name, data in expected.items():
        assert os.stat(art / name).st_size == len(data)
        assert sha256((art / name).read_bytes()) == sha256(data), f"{name} damaged by the full disk"


def _serving_while_full(m: StorefsMount, expected: dict[str, bytes], problems: list[str]) -> None:
    """The daemon keeps serving (listing, stat, reads, status) while its cache disk is full."""
    _check_served(m, expected)
    st = m.status()
    assert st["dirty_files"] >= 2, st
    for name in expected:  # nothing was uploaded yet: writeback_delay is 60s
        assert m.provider_read(f"{ART}/{name}") is None, f"{name} uploaded before its delay"

    # a flush cannot finish while nothing can be recorded as uploaded; it gives up at its
    # timeout, and the failing uploads are retried with backoff meanwhile, not in a hot loop
    mark = m.log_path.stat().st_size
    t0 = time.monotonic()
    m.storefs("flush", "--timeout", "3", str(m.mnt), check=False, timeout=30)
    took = time.monotonic() - t0
    attempts: dict[str, int] = {}
    with open(m.log_path, "rb") as f:
        f.seek(mark)
        for line in f.read().decode("utf-8", "replace").splitlines():
            if " WARNING " in line and "sync of " in line and " failed (attempt" in line:
                key = line.split("sync of ", 1)[1].split(" failed (attempt", 1)[0]
                attempts[key] = attempts.get(key, 0) + 1
    print(f"flush on the full disk returned after {took:.1f}s; failed attempts per key: {attempts}")
    assert took < 15, f"flush --timeout 3 returned after {took:.1f}s"
    if attempts and max(attempts.values()) > 10:  # backoff 0.25s, 0.5s, 1s, 2s ...: about 5 in 3s
        problems.append(f"a {took:.0f}s flush on the full disk retried uploads {sum(attempts.values())} times "
                        f"(up to {max(attempts.values())} for one key): the retry backoff is ignored")
        print("PROBLEM:", problems[-1])
    _check_served(m, expected)  # still served after the failed flush


def _after_disk_full(m: StorefsMount, expected: dict[str, bytes], expected_dirs: set[str]) -> None:
    art = m.path(ART)
    assert sorted(os.listdir(art)) == sorted([*expected, *expected_dirs])

    # a small new write works
    small = payload("small", 100 * KiB)
    write_blocks(art / "small.bin", small)
    assert (art / "small.bin").read_bytes() == small
    expected["small.bin"] = small

    m.flush()  # flush does not wait for the quiet delay
    for name, data in expected.items():
        got = m.provider_read(f"{ART}/{name}")
        assert got is not None and sha256(got) == sha256(data), f"{name}: wrong or missing after flush"
    assert m.provider_keys(ART) == sorted(f"{ART}/{n}" for n in expected), "the provider holds other keys"
    st = m.status()
    assert st["dirty_files"] == 0 and st["pending"] == 0, st

    # the journal agrees with what the mount showed: a remount on the same cache shows the same
    m.remount()
    assert m.status()["pending"] == 0, "the journal held changes the mount had already uploaded"
    assert sorted(os.listdir(art)) == sorted([*expected, *expected_dirs]), "the remount shows other names"
    for name, data in expected.items():
        assert sha256((art / name).read_bytes()) == sha256(data), f"{name} wrong after a remount"
    m.flush()
    assert m.provider_keys(ART) == sorted(f"{ART}/{n}" for n in expected), "the provider holds other keys"


def write_timed(path: Path, data: bytes, block: int = MiB) -> tuple[int, OSError | None, float]:
    """os.write data in blocks; (bytes written, the error that stopped it, seconds the failing write took)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    written, err, took = 0, None, 0.0
    try:
        while written < len(data):
            t0 = time.monotonic()
            try:
                n = os.write(fd, data[written:written + block])
            except OSError as e:
                err, took = e, time.monotonic() - t0
                break
            written += n
    finally:
        with contextlib.suppress(OSError):
            os.close(fd)
    return written, err, took


@pytest.mark.storefs_config(max_size="16MiB", space_wait="2s", writeback_delay="60s")
def test_cache_limit_gives_enospc_after_space_wait(store):
    """Dirty data cannot be evicted and nothing is uploaded yet: the write past max_size fails."""
    art = store.path(ART)
    art.mkdir(parents=True)
    files = [payload(("limit", i), 8 * MiB) for i in range(3)]
    outcome = []
    t_start = time.monotonic()
    for i, data in enumerate(files):
        t0 = time.monotonic()
        written, err, took = write_timed(art / f"f{i}.bin", data)
        outcome.append((written, err, took, time.monotonic() - t0))
        if err is not None:
            break
    print("writes:", [(w // KiB, e and errno.errorcode.get(e.errno), round(t, 1), round(total, 1))
                      for w, e, t, total in outcome])
    assert len(outcome) == 3, f"file {len(outcome) - 1} failed before the limit was crossed: {outcome[-1]}"
    assert outcome[0][0] == outcome[1][0] == 8 * MiB
    written, err, took, total = outcome[2]
    assert err is not None, "24 MiB of dirty data went into a 16 MiB cache"
    assert err.errno == errno.ENOSPC, f"expected ENOSPC, got {err!r}"
    # f0 and f1 fill the cache exactly: the first byte more crosses the limit
    assert written == 0, f"{written} bytes of a third file went into a cache already at max_size"
    assert 1.5 <= took <= 5.0, f"the failing write took {took:.1f}s (space_wait is 2s)"
    assert total <= 8.0, f"the third file took {total:.1f}s to fail"
    assert time.monotonic() - t_start < 30

    st = store.status()
    assert st["dirty_bytes"] <= 16 * MiB, f"{st['dirty_bytes']} dirty bytes in a 16 MiB cache"

    # earlier files are intact and still dirty; the daemon keeps serving
    for i in range(2):
        p = art / f"f{i}.bin"
        assert os.stat(p).st_size == 8 * MiB
        assert sha256(p.read_bytes()) == sha256(files[i]), f"f{i}.bin damaged"
        assert state_of(p) == "dirty"
    os.unlink(art / "f2.bin")
    assert sorted(os.listdir(art)) == ["f0.bin", "f1.bin"]

    # after a flush the cached copies are clean, so eviction can make room: the write now succeeds
    store.flush()
    for i in range(2):
        got = store.provider_read(f"{ART}/f{i}.bin")
        assert got is not None and sha256(got) == sha256(files[i])
    write_blocks(art / "f2.bin", files[2])
    assert sha256((art / "f2.bin").read_bytes()) == sha256(files[2])
    store.flush()
    assert sha256(store.provider_read(f"{ART}/f2.bin") or b"") == sha256(files[2])
    st = wait_status(store, lambda s: s["cache_bytes"] <= 16 * MiB, timeout=10)
    assert st["cache_bytes"] <= 16 * MiB and st["dirty_files"] == 0, st


# --------------------------------------------------------------------------- 3. two mounts, one bucket


def test_two_mounts_on_one_bucket(seaweed, tmp_path, request):
    require_fuse()
    backend = S3Backend(seaweed, f"t-{uuid.uuid4().hex[:20]}")
    ttl, attr = 2.0, 1.0
    bound = ttl + attr + 2.0
    mounts = []
    try:
        for name in ("a", "b"):
            m = StorefsMount(tmp_path / name, backend)
            m.extra_config["fuse"] = {"dir_cache_ttl": f"{ttl}s", "attr_timeout": f"{attr}s"}
            mounts.append(m)
            m.start()
        a, b = mounts
        a_art, b_art = a.path(ART), b.path(ART)
        a_art.mkdir(parents=True)
        (a_art / "seed.txt").write_bytes(b"seed")
        a.flush()
        ok, _, took = poll(lambda: "seed.txt" in os.listdir(b_art), bound)
        assert ok, "mount B never saw the artifact folder written by A"
        assert os.listdir(b_art) == ["seed.txt"]  # B now holds a listing without x.bin

        v1 = payload("v1", 300 * KiB)
        v2 = payload("v2", 300 * KiB)  # the same size: only the content (etag, mtime) tells them apart
        (a_art / "x.bin").write_bytes(v1)
        a.flush()
        ok, _, took = poll(lambda: "x.bin" in os.listdir(b_art), bound)
        assert ok, f"B did not list x.bin within {bound}s of A's flush"
        print(f"B lists the new file after {took:.2f}s")
        assert (b_art / "x.bin").read_bytes() == v1  # B caches v1 now
        assert b.status()["cached_files"] >= 1

        time.sleep(0.1)
        (a_art / "x.bin").write_bytes(v2)
        a.flush()
        assert a.provider_read(f"{ART}/x.bin") == v2
        ok, _, took = poll(lambda: read_bytes(b_art / "x.bin") == v2, bound)
        assert ok, f"B still reads the old content {bound}s after A's overwrite"
        print(f"B reads the new content after {took:.2f}s")
        assert os.stat(b_art / "x.bin").st_size == len(v2)

        os.unlink(a_art / "x.bin")
        a.flush()
        assert a.provider_read(f"{ART}/x.bin") is None
        ok, _, took = poll(lambda: "x.bin" not in os.listdir(b_art), bound)
        assert ok, f"B still lists x.bin {bound}s after A deleted it"
        ok, _, took2 = poll(lambda: not os.path.lexists(b_art / "x.bin"), bound)
        assert ok, f"B still stats x.bin {bound}s after A deleted it"
        print(f"B loses the deleted file after {took:.2f}s (listing), {took2:.2f}s (stat)")
        with pytest.raises(FileNotFoundError):
            os.stat(b_art / "x.bin")
        with pytest.raises(FileNotFoundError):
            open(b_art / "x.bin", "rb")
        assert os.listdir(b_art) == ["seed.txt"]
        for m in mounts:
            st = m.status()
            assert st["errors"] == [] and st["upload_failures"] == 0, st
    finally:
        rep = getattr(request.node, "rep_call", None)
        for m in mounts:
            m.cleanup()
            if rep is None or rep.failed:
                print(f"storefs log of {m.mnt}:\n{m.log_tail(80)}")


# --------------------------------------------------------------------------- 4. local changes outside


@pytest.mark.parametrize("provider_kind", ["local"])
def test_local_changes_outside_are_seen_at_once(store):
    art = store.path(ART)
    art.mkdir(parents=True)
    (art / "seed.txt").write_bytes(b"seed")
    store.flush()
    assert store.data is not None and (store.data / ART / "seed.txt").is_file()
    assert os.listdir(art) == ["seed.txt"]  # the listing is cached now
    outside = store.data / ART / "ext.txt"
    bound = 1.5

    v1 = b"written outside, version 1\n"
    outside.write_bytes(v1)
    ok, _, took = poll(lambda: "ext.txt" in os.listdir(art), bound)
    assert ok, f"a file created in the provider folder is not listed after {bound}s"
    ok, _, took2 = poll(lambda: read_bytes(art / "ext.txt") == v1, bound)
    assert ok, f"its content reads {read_bytes(art / 'ext.txt')!r}"
    print(f"created outside: listed after {took:.2f}s, read after {took2:.2f}s")

    v2 = b"WRITTEN OUTSIDE, VERSION 2\n"  # the same size
    assert len(v2) == len(v1)
    outside.write_bytes(v2)
    ok, _, took = poll(lambda: read_bytes(art / "ext.txt") == v2, bound)
    assert ok, f"after a change outside the mount still reads {read_bytes(art / 'ext.txt')!r}"
    v3 = b"version 3, longer than the others\n"
    outside.write_bytes(v3)
    ok, _, took2 = poll(lambda: read_bytes(art / "ext.txt") == v3, bound)
    assert ok, f"after a second change the mount reads {read_bytes(art / 'ext.txt')!r}"
    assert os.stat(art / "ext.txt").st_size == len(v3)
    print(f"changed outside: new content after {took:.2f}s / {took2:.2f}s")

    outside.unlink()
    ok, _, took = poll(lambda: "ext.txt" not in os.listdir(art), bound)
    assert ok, f"a file deleted in the provider folder is still listed after {bound}s"
    ok, _, took2 = poll(lambda: not os.path.lexists(art / "ext.txt"), bound)
    assert ok, f"a file deleted in the provider folder still stats after {bound}s"
    print(f"deleted outside: gone after {took:.2f}s (listing), {took2:.2f}s (stat)")
    assert os.listdir(art) == ["seed.txt"]
    assert store.status()["errors"] == []


# --------------------------------------------------------------------------- 5. ranged reads


def _only_in_the_provider(store: StorefsMount, name: str, seed: str, size: int) -> tuple[Path, bytes]:
    """A file written through the mount, uploaded, then remounted with an empty cache."""
    art = store.path(ART)
    art.mkdir(parents=True)
    data = payload(seed, size)
    write_blocks(art / name, data)
    store.flush()
    store.remount(empty_cache=True)
    return art, data


def test_range_reads_fetch_only_what_is_read(store):
    size = 64 * MiB
    art, data = _only_in_the_provider(store, "big.bin", "ranged", size)
    st = store.status()
    assert st["bytes_fetched"] == 0 and st["cached_files"] == 0, st

    fd = os.open(art / "big.bin", os.O_RDONLY)
    try:
        assert os.pread(fd, 64 * KiB, 0) == data[:64 * KiB]
        off = 40 * MiB
        assert os.pread(fd, 64 * KiB, off) == data[off:off + 64 * KiB]
    finally:
        os.close(fd)
    time.sleep(1.0)  # read-ahead running in the background would count too
    fetched = store.status()["bytes_fetched"]
    print(f"two 64 KiB reads fetched {fetched / MiB:.2f} MiB")
    assert 0 < fetched <= 2 * CHUNK + 256 * KiB, f"two 64 KiB reads fetched {fetched / MiB:.2f} MiB"

    h = hashlib.sha256()
    with open(art / "big.bin", "rb") as f:
        for block in iter(lambda: f.read(MiB), b""):
            h.update(block)
    assert h.hexdigest() == sha256(data)
    time.sleep(0.5)
    st = store.status()
    fetched = st["bytes_fetched"]
    print(f"after a sequential read: fetched {fetched / MiB:.2f} MiB of a {size // MiB} MiB file")
    assert size <= fetched <= size + CHUNK, f"fetched {fetched / MiB:.2f} MiB for a {size // MiB} MiB file"
    assert st["errors"] == []


def _random_reads(path: Path, data: bytes, n: int, seed: int) -> None:
    rng = random.Random(seed)
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)  # 4 KiB per request, as fio asks
        for _ in range(n):
            off = rng.randrange(len(data) // (4 * KiB)) * 4 * KiB
            assert os.pread(fd, 4 * KiB, off) == data[off:off + 4 * KiB], f"wrong bytes at {off}"
    finally:
        os.close(fd)


def _evict_page_cache(folder: Path, sync: bool) -> None:
    for f in folder.rglob("*"):
        if f.is_file():
            fd = os.open(f, os.O_RDONLY)
            try:
                if sync:  # dirty pages cannot be dropped
                    os.fsync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def test_random_reads_of_a_cached_file_are_warmed_into_memory(store):
    size = 24 * MiB + 123
    art, data = _only_in_the_provider(store, "weights.bin", "warm", size)

    # uncached: the reads fetch chunks (and read-ahead the rest); once the file is whole
    # in the cache, the random reads that follow have it read into memory
    _random_reads(art / "weights.bin", data, 200, seed=1)
    with open(art / "weights.bin", "rb") as f:
        assert sha256(f.read()) == sha256(data)
    # as after a while or a reboot: the data on the cache disk only, not in memory
    _evict_page_cache(store.cache, sync=True)
    _evict_page_cache(art, sync=False)
    # the warm-up stops at the file's last close: one handle stays open until it is done
    with open(art / "weights.bin", "rb"):
        _random_reads(art / "weights.bin", data, 200, seed=2)
        deadline = time.monotonic() + 10
        while store.status()["bytes_warmed"] < size and time.monotonic() < deadline:
            time.sleep(0.05)
    st = store.status()
    assert st["bytes_warmed"] == size, f"warmed {st['bytes_warmed']} of {size} bytes"
    _random_reads(art / "weights.bin", data, 200, seed=3)
    assert store.status()["bytes_warmed"] == size, "read into memory again, though it was there"
    assert st["errors"] == []

    store.remount(empty_cache=True)
    _random_reads(art / "weights.bin", data, 50, seed=4)
    with open(art / "weights.bin", "rb") as f:
        assert sha256(f.read()) == sha256(data)


_libc = ctypes.CDLL(None, use_errno=True)
_libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.POINTER(ctypes.c_ubyte)]


def _in_memory(path: Path, offset: int) -> bool:
    """Whether the page at offset of path is in the page cache, asked with mincore: a read
    with RWF_NOWAIT would start the disk read itself and, on a fast disk, see its page."""
    page = mmap.PAGESIZE
    vec = (ctypes.c_ubyte * 1)()
    # a private map is writable for ctypes, and mincore sees the file's pages until one is written
    with open(path, "rb") as f, mmap.mmap(f.fileno(), page, access=mmap.ACCESS_COPY,
                                          offset=offset - offset % page) as m:
        start = ctypes.c_char.from_buffer(m)  # an export of the map: dropped before it closes
        rc = _libc.mincore(ctypes.addressof(start), page, vec)
        del start
    if rc != 0:
        raise OSError(ctypes.get_errno(), "mincore failed")
    return bool(vec[0] & 1)


def test_a_sequential_reader_of_a_cached_file_has_the_disk_read_ahead(store):
    size = 40 * MiB
    art, data = _only_in_the_provider(store, "clip.mp4", "ahead", size)
    with open(art / "clip.mp4", "rb") as f:  # fetched whole into the cache
        assert sha256(f.read()) == sha256(data)
    cached = [p for p in (store.cache / "data").rglob("*") if p.is_file() and p.stat().st_size == size]
    assert len(cached) == 1, cached
    _evict_page_cache(store.cache, sync=True)
    _evict_page_cache(art, sync=False)
    assert not _in_memory(cached[0], 12 * MiB)

    with open(art / "clip.mp4", "rb") as f:  # the first MiB, in order
        assert f.read(MiB) == data[:MiB]
        deadline = time.monotonic() + 5
        while True:  # the asks are asynchronous: the disk reads may still be under way
            ahead = [_in_memory(cached[0], off * MiB) for off in (6, 10, 15)]
            if all(ahead) or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert all(ahead), f"cache file pages at 6, 10, 15 MiB in memory: {ahead}"
        assert not _in_memory(cached[0], 34 * MiB), "read far more than 16 MiB ahead"
        assert sha256(f.read()) == sha256(data[MiB:])

    store.remount(empty_cache=True)
    with open(art / "clip.mp4", "rb") as f:
        assert sha256(f.read()) == sha256(data)


def _kernel_read_ahead_kib(mnt: Path) -> int:
    dev = os.stat(mnt).st_dev
    return int(Path(f"/sys/class/bdi/{os.major(dev)}:{os.minor(dev)}/read_ahead_kb").read_text())


def _reads_for_dd(store: StorefsMount, path: Path, data: bytes) -> int:
    """FUSE read requests the kernel sends for a `dd bs=1M` of path, with nothing in memory."""
    _evict_page_cache(store.cache, sync=True)
    _evict_page_cache(path.parent, sync=False)
    before = store.status()["operations"].get("read", 0)
    copy = store.root / "dd.out"
    run(["dd", f"if={path}", f"of={copy}", "bs=1M", "status=none"])
    reads = store.status()["operations"].get("read", 0) - before
    assert sha256(copy.read_bytes()) == sha256(data)
    return reads


@pytest.mark.skipif(os.geteuid() != 0, reason="only root may raise a mount's read-ahead")
def test_a_sequential_reader_gets_the_kernel_read_ahead_in_large_requests(store):
    """The kernel's 128 KiB read-ahead would split each 1 MiB read into eight requests in a row."""
    size = 24 * MiB
    art, data = _only_in_the_provider(store, "take.wav", "kernel-ahead", size)
    assert _kernel_read_ahead_kib(store.mnt) == 4096  # fuse.read_ahead's default, 4 MiB
    cold = _reads_for_dd(store, art / "take.wav", data)  # fetched from the provider
    warm = _reads_for_dd(store, art / "take.wav", data)  # from the cache disk
    assert cold <= 36 and warm <= 36, f"{cold} and {warm} read requests for 24 MiB"

    store.extra_config["fuse"] = {"read_ahead": 0}  # the kernel's own
    store.remount(empty_cache=True)
    assert _kernel_read_ahead_kib(store.mnt) < 1024
    assert _reads_for_dd(store, art / "take.wav", data) >= 96


def test_readers_that_outrun_a_busy_read_ahead_fetch_each_chunk_once(store):
    """Sequential readers at once, sharing the read-ahead threads: every byte comes right and each
    chunk is fetched once, whether a run is taken by the pool or by a reader that caught up with it
    (that catching up is rare here, about once in two runs: the unit tier forces it,
    test_a_reader_that_overtakes_a_queued_read_ahead_run_fetches_the_run_whole)."""
    n, size = 6, 32 * MiB
    art = store.path(ART)
    art.mkdir(parents=True)
    files = {f"r{i}.bin": payload(f"outrun-{i}", size) for i in range(n)}
    for name, data in files.items():
        write_blocks(art / name, data)
    store.flush()
    for remount in range(2):  # the second time from an empty cache again, read by sha256sum
        store.remount(empty_cache=True)
        assert store.status()["bytes_fetched"] == 0
        if remount == 0:
            def read(name: str) -> str:
                h = hashlib.sha256()
                with open(art / name, "rb") as f:
                    for block in iter(lambda: f.read(MiB), b""):
                        h.update(block)
                return h.hexdigest()
        else:
            def read(name: str) -> str:
                return str(run(["sha256sum", str(art / name)]).stdout.split()[0])
        with ThreadPoolExecutor(n) as pool:
            digests = dict(zip(files, pool.map(read, files), strict=True))
        assert digests == {name: sha256(data) for name, data in files.items()}
        time.sleep(0.5)  # a read-ahead run still under way counts too
        st = store.status()
        assert st["bytes_fetched"] == n * size, f"{st['bytes_fetched'] / MiB:.1f} MiB fetched for {n * size // MiB} MiB"
        assert st["errors"] == []


# --------------------------------------------------------------------------- 6. data files made ahead


def _data_files(store: StorefsMount) -> set[str]:
    return {p.name for p in (store.cache / "data").rglob("*") if p.is_file()}


def _journaled_data_files(store: StorefsMount) -> set[str]:
    with contextlib.closing(sqlite3.connect(store.cache / "journal.db")) as db:
        return {row[0] for row in db.execute("SELECT data_name FROM entries WHERE data_name IS NOT NULL")}


def _wait_for(what: str, check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def test_creates_take_data_files_made_ahead_and_none_outlives_the_mount(store):
    """New files' cache data goes into files made ahead of time (a create then allocates no
    inode); the unused ones go at unmount, and those a kill -9 leaves behind at the next mount."""
    art = store.path(ART)
    art.mkdir(parents=True)
    _wait_for("no data files made ahead", lambda: len(_data_files(store)) >= 16)
    ahead = _data_files(store)
    files = {f"f{i:02d}.bin": payload(f"ahead{i}", 1000 + i) for i in range(20)}
    for name, data in files.items():
        (art / name).write_bytes(data)
    used = ahead - _data_files(store)
    assert not used, "a data file made ahead disappeared"
    store.flush()
    # the files written use data files that were there before they were created
    assert len(_journaled_data_files(store) & ahead) == len(files)

    store.kill9()
    left = _data_files(store) - _journaled_data_files(store)
    assert left, "the killed daemon left no unused data files behind (nothing to check)"
    store.start()
    _wait_for("the sweep at mount", lambda: not (left & _data_files(store)))
    assert {n: (art / n).read_bytes() for n in files} == files

    store.unmount()
    assert _data_files(store) == _journaled_data_files(store), "unused data files left after unmount"
    store.start()
    store.remount(empty_cache=True)
    assert {n: (art / n).read_bytes() for n in files} == files


def test_rm_r_leaves_no_data_file_behind(store):
    """rm -r does not wait for the cache data files to go, but they go, and nothing comes back."""
    board = store.path(ART).parent
    arts = [board / f"a{i}" for i in range(3)]
    for a in arts:
        a.mkdir(parents=True)
        for j in range(10):
            (a / f"f{j}.bin").write_bytes(payload(f"rm{a.name}{j}", 3000 + j))
    store.flush()
    cached = _journaled_data_files(store)
    assert len(cached) >= 30
    run(["rm", "-r", str(board)])
    assert not board.exists()
    _wait_for("data files of removed files still in the cache", lambda: not (cached & _data_files(store)))
    store.unmount()
    assert _data_files(store) == _journaled_data_files(store), "data files left after unmount"
    store.start()
    store.remount(empty_cache=True)
    assert not board.exists()
    assert not any(store.path(ART).parent.parent.iterdir()), "a removed folder came back"


# --------------------------------------------------------------------------- 7. 10,000 keys


def _fill(store: StorefsMount, folder: str, names: list[str]) -> None:
    if store.data is not None:
        d = store.data / folder
        d.mkdir(parents=True, exist_ok=True)
        for name in names:
            (d / name).write_bytes(name.encode())
        return
    c, b = store.backend.client, store.backend.bucket

    def put(name: str) -> None:
        c.put_object(Bucket=b, Key=f"{folder}/{name}", Body=name.encode())

    with ThreadPoolExecutor(32) as pool:
        list(pool.map(put, names))


def _timed_start(store: StorefsMount) -> float:
    t0 = time.monotonic()
    store.start()
    return time.monotonic() - t0


def test_ten_thousand_keys(store):
    folder = "t1/image/b1/many"
    names = [f"f{i:05d}.txt" for i in range(10_000)]
    store.unmount()
    t_empty = _timed_start(store)  # the provider is empty
    store.unmount()

    t0 = time.monotonic()
    _fill(store, folder, names)
    print(f"10,000 keys put in {time.monotonic() - t0:.1f}s")
    t_full = _timed_start(store)
    print(f"mount: {t_empty:.2f}s empty, {t_full:.2f}s with 10,000 keys")
    assert t_full < 2 * t_empty + 1.0, f"mounting took {t_full:.2f}s with 10,000 keys, {t_empty:.2f}s empty"

    t0 = time.monotonic()
    listed = os.listdir(store.path(folder))
    took = time.monotonic() - t0
    print(f"os.listdir of 10,000 names: {took:.2f}s")
    assert len(listed) == 10_000, f"{len(listed)} names listed, first missing: {sorted(set(names) - set(listed))[:5]}"
    assert sorted(listed) == names

    res = run(["ls", "-f", str(store.path(folder))], timeout=60)
    lines = res.stdout.splitlines()
    assert sorted(n for n in lines if n not in (".", "..")) == names
    assert len(lines) == 10_002, f"ls -f printed {len(lines)} lines"

    for name in names[::997] + [names[999], names[1000], names[-1]]:
        st = os.stat(store.path(f"{folder}/{name}"))
        assert stat.S_ISREG(st.st_mode) and st.st_size == len(name.encode()), name
    assert store.path(f"{folder}/{names[4321]}").read_bytes() == names[4321].encode()
    assert os.listdir(store.path("t1/image/b1")) == ["many"]
