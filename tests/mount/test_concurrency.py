"""Concurrent writers (separate descriptors, disjoint ranges) and readers on one file.

The file starts as zeros; the final bytes are never zero, so a reader can tell, byte by byte,
whether it sees "not written yet" (zero) or "written" (equal to the final byte). Anything
else (bytes from another offset, stale garbage) is a failure.
"""

from __future__ import annotations

import os
import random
import re
import threading
import time

import pytest

from storefs.testing.data import ART, payload, read_all_fd

pytestmark = pytest.mark.timeout(300)

SIZE = 3 * 1024 * 1024 + 777
CHUNK = 40_000  # deliberately not page aligned
ZERO_RUNS = re.compile(rb"\0+")


def final_content() -> bytes:
    raw = payload("concurrency", SIZE)
    return raw.replace(b"\0", b"\x01")  # no zero byte in the final content


def check_snapshot(snapshot: bytes, offset: int, final: bytes) -> str | None:
    """None if every byte of snapshot is 0 or the final byte at its offset; else a description."""
    pos = 0
    for m in [*ZERO_RUNS.finditer(snapshot), None]:
        end = m.start() if m else len(snapshot)
        if end > pos and snapshot[pos:end] != final[offset + pos: offset + end]:
            for i in range(pos, end):
                if snapshot[i] != final[offset + i]:
                    return f"byte at {offset + i}: got {snapshot[i]}, expected 0 or {final[offset + i]}"
        if m:
            pos = m.end()
    return None


def writer(path, ranges, final, errors, rnd):
    try:
        fd = os.open(path, os.O_WRONLY)
        try:
            chunks = [(off, min(CHUNK, end - off)) for start, end in ranges for off in range(start, end, CHUNK)]
            rnd.shuffle(chunks)
            for off, n in chunks:
                assert os.pwrite(fd, final[off: off + n], off) == n
        finally:
            os.close(fd)
    except BaseException as e:  # reported by the main thread
        errors.append(f"writer: {e!r}")


def reader(path, final, errors, stop, rnd, counter):
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            while not stop.is_set() and not errors:
                off = rnd.randrange(0, SIZE)
                n = min(rnd.choice([1, 4096, 65536, 300_000]), SIZE - off)
                snap = os.pread(fd, n, off)
                assert len(snap) == n, f"short read at {off}: {len(snap)} of {n}"
                problem = check_snapshot(snap, off, final)
                if problem:
                    errors.append(f"reader: {problem}")
                counter.append(1)
        finally:
            os.close(fd)
    except BaseException as e:
        errors.append(f"reader: {e!r}")


@pytest.mark.parametrize("uploaded_first", [False, True], ids=["new", "uploaded"])
def test_two_writers_disjoint_ranges_with_readers(store, uploaded_first):
    art = store.mnt / ART
    art.mkdir(parents=True)
    path = art / "shared.bin"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    os.ftruncate(fd, SIZE)  # all zeros
    os.close(fd)
    if uploaded_first:
        store.flush()
        assert store.provider_read(f"{ART}/shared.bin") == b"\0" * SIZE
    final = final_content()

    # writer A gets the even 1/8ths, writer B the odd ones: interleaved, disjoint
    eighth = SIZE // 8
    bounds = [(i * eighth, SIZE if i == 7 else (i + 1) * eighth) for i in range(8)]
    errors: list[str] = []
    stop = threading.Event()
    counter: list[int] = []
    readers = [threading.Thread(target=reader, args=(path, final, errors, stop, random.Random(i), counter))
               for i in range(2)]
    writers = [threading.Thread(target=writer, args=(path, bounds[k::2], final, errors, random.Random(10 + k)))
               for k in range(2)]
    for t in readers + writers:
        t.start()
    deadline = time.monotonic() + 120
    for t in writers:
        t.join(max(0.0, deadline - time.monotonic()))
    time.sleep(0.05)  # let the readers see the finished file too
    stop.set()
    for t in readers:
        t.join(max(1.0, deadline - time.monotonic()))
    assert not any(t.is_alive() for t in readers + writers), "threads hung"
    assert not errors, errors[:5]
    assert counter, "readers never read"

    fd = os.open(path, os.O_RDONLY)
    try:
        got = read_all_fd(fd, SIZE + 1)
    finally:
        os.close(fd)
    assert len(got) == SIZE and got == final, "final content differs"

    store.flush()
    assert store.provider_read(f"{ART}/shared.bin") == final
    store.remount(empty_cache=True)
    assert (store.mnt / ART / "shared.bin").read_bytes() == final


def test_many_files_in_parallel(store):
    """Several threads each writing their own files in one folder, while others list it."""
    art = store.mnt / ART
    art.mkdir(parents=True)
    errors: list[str] = []

    def work(k):
        try:
            for i in range(25):
                (art / f"w{k}-{i}.bin").write_bytes(payload((k, i), 1000 * i))
                os.listdir(art)
        except BaseException as e:
            errors.append(repr(e))

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors[:5]
    assert len(os.listdir(art)) == 100
    store.flush()
    assert len(store.provider_keys(ART)) == 100
    for k in range(4):
        assert store.provider_read(f"{ART}/w{k}-24.bin") == payload((k, 24), 24000)
