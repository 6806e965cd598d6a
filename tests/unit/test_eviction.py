"""Eviction keeps the cache disk's free space above cache.min_free: least recently used clean copies go
first, a pending change never; a mount on a full disk makes room instead of refusing; a max_size larger
than the disk is warned about. The disk is a fake statvfs handed in, never os patched."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from storefs.cache.datafiles import DataFiles
from storefs.cache.eviction import FREE_HEADROOM, Evictor, disk_space
from storefs.cache.journal import OP_PUT, Entry, Journal, State
from storefs.config import load_config
from storefs.core import Core
from storefs.daemon import DaemonError, build_core, cache_disk_limits, open_journal
from storefs.errors import CacheFull
from storefs.layout import Layout
from storefs.providers.memory import MemoryProvider

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
FRSIZE = 4096


def statvfs_result(size: int, free: int) -> os.statvfs_result:
    """What os.statvfs answers for a disk of size bytes with free bytes free (to anyone)."""
    blocks, avail = size // FRSIZE, max(0, free) // FRSIZE
    return os.statvfs_result((FRSIZE, FRSIZE, blocks, avail, avail, 1000, 1000, 1000, 0, 255))


class FakeDisk:
    """A disk whose cache part is what the owner holds, and the rest taken by other programs."""

    def __init__(self, size: int, other: int, cached: Callable[[], int]) -> None:
        self.size = size
        self.other = other
        self._cached = cached
        self.calls = 0
        self.threads: set[str] = set()

    def statvfs(self, path: str) -> os.statvfs_result:
        self.calls += 1
        self.threads.add(threading.current_thread().name)
        return statvfs_result(self.size, self.size - self.other - self._cached())

    def free(self) -> int:
        return disk_space("/unused", self.statvfs)[1]


class FakeOwner:
    """Cached copies by key: clean ones are candidates (oldest use first), pending ones never are."""

    def __init__(self) -> None:
        self.entries: dict[str, Entry] = {}
        self.dropped: list[str] = []
        self.lock = threading.Lock()  # entries and dropped: the evictor's thread and the test both use them

    def add(self, key: str, size: int, used: float, pending: bool = False) -> None:
        extra = {"state": State.DIRTY, "op": OP_PUT} if pending else {}
        with self.lock:
            self.entries[key] = Entry(key, "mem", data_name="0" * 64, size=size, used=used, **extra)

    def cached(self) -> int:
        with self.lock:
            return sum(e.size for e in self.entries.values())

    def eviction_candidates(self) -> list[Entry]:
        with self.lock:
            return sorted((e for e in self.entries.values() if not e.pending), key=lambda e: e.used)

    def evict(self, e: Entry) -> bool:
        with self.lock:
            if e.pending or self.entries.get(e.key) is not e:
                return False
            del self.entries[e.key]
            self.dropped.append(e.key)
            return True


def evictor_on(owner: FakeOwner, disk: FakeDisk, min_free: int, *, max_size: int = 100 * GiB,
               wait: float = 30.0, interval: float = 60.0) -> Evictor:
    return Evictor(owner, max_size, owner.cached, wait, interval, min_free=min_free, free=disk.free)


def full_disk(clean: int, size: int = 8 * MiB, pending: int = 0, disk_size: int = 100 * MiB,
              free: int = 0) -> tuple[FakeOwner, FakeDisk]:
    """clean copies (oldest first: c0, c1 ...) and pending changes of size bytes on a disk with free bytes free."""
    owner = FakeOwner()
    for i in range(clean):
        owner.add(f"c{i}", size, used=100.0 + i)
    for i in range(pending):
        owner.add(f"p{i}", size, used=i, pending=True)  # used longest ago: still never a candidate
    disk = FakeDisk(disk_size, 0, owner.cached)
    disk.other = disk_size - owner.cached() - free
    return owner, disk


# ---- keeping min_free ------------------------------------------------------------------


def test_least_recently_used_clean_copies_go_until_min_free_and_its_headroom() -> None:
    owner, disk = full_disk(clean=10, free=1 * MiB)
    ev = evictor_on(owner, disk, min_free=10 * MiB)
    assert ev.make_room() == 2
    assert owner.dropped == ["c0", "c1"], "not the least recently used first"
    assert disk.free() == 17 * MiB >= 10 * MiB * FREE_HEADROOM
    assert ev.free == disk.free(), "the estimate is the measured free space after a pass"
    assert ev.make_room() == 0, "a second pass with room evicts nothing"


def test_data_files_waiting_to_be_deleted_go_before_any_clean_copy() -> None:
    owner, disk = full_disk(clean=10, free=1 * MiB)
    waiting = [12 * MiB]  # unlinked files' data, to be deleted once the file system is quiet

    def reap() -> int:
        disk.other -= waiting[0]
        n, waiting[0] = (1 if waiting[0] else 0), 0
        return n
    ev = Evictor(owner, 100 * GiB, owner.cached, 30.0, 60.0, min_free=10 * MiB, free=disk.free, reap=reap)
    assert ev.make_room() == 0 and owner.dropped == []  # the deletes made the room
    assert ev.free == disk.free() == 13 * MiB
    disk.other += 12 * MiB  # another program fills the disk again, and nothing waits to be deleted now
    again = Evictor(owner, 100 * GiB, owner.cached, 30.0, 60.0, min_free=10 * MiB, free=disk.free, reap=reap)
    assert again.make_room() == 2 and owner.dropped == ["c0", "c1"]


def test_a_pending_change_is_never_evicted_and_the_short_disk_is_told_once(caplog) -> None:
    owner, disk = full_disk(clean=2, pending=5, free=0)
    ev = evictor_on(owner, disk, min_free=30 * MiB)
    with caplog.at_level(logging.WARNING, logger="storefs.cache.eviction"):
        assert ev.make_room() == 2
        ev.make_room()
    assert sorted(owner.dropped) == ["c0", "c1"]
    assert sorted(owner.entries) == [f"p{i}" for i in range(5)]
    short = [r for r in caplog.records if "no clean copy is left" in r.getMessage()]
    assert len(short) == 1, [r.getMessage() for r in caplog.records]
    assert "(cache.min_free: 31457280)" in short[0].getMessage()


def test_the_size_limit_still_holds_when_the_disk_has_room() -> None:
    owner, disk = full_disk(clean=10, free=50 * MiB, disk_size=200 * MiB)
    ev = evictor_on(owner, disk, min_free=1 * MiB, max_size=40 * MiB)
    ev.make_room()
    assert owner.cached() <= 40 * MiB * 0.9
    assert owner.dropped == [f"c{i}" for i in range(len(owner.dropped))]


def test_min_free_zero_keeps_no_free_space() -> None:
    owner, disk = full_disk(clean=4, free=0)
    assert evictor_on(owner, disk, min_free=0).make_room() == 0


def test_without_a_disk_to_watch_only_the_size_limit_counts() -> None:
    owner, disk = full_disk(clean=4, free=0)
    ev = Evictor(owner, 100 * GiB, owner.cached, 1.0, 60.0)
    assert not ev.watches_disk
    assert ev.make_room() == 0


# ---- writers and the thread --------------------------------------------------------------


def test_writes_keep_the_estimate_and_never_measure_the_disk() -> None:
    owner, disk = full_disk(clean=2, free=50 * MiB)
    ev = evictor_on(owner, disk, min_free=10 * MiB)
    calls = disk.calls
    for _ in range(20):
        ev.reserve(MiB)
        ev.account(64 * KiB)
    assert disk.calls == calls, "a write or a read asked the disk (statvfs) on the caller's thread"
    assert ev.free == 50 * MiB - 20 * (MiB + 64 * KiB)


def test_crossing_below_min_free_kicks_the_thread_at_once() -> None:
    owner, disk = full_disk(clean=4, free=11 * MiB)
    ev = evictor_on(owner, disk, min_free=10 * MiB, interval=60.0)  # only a kick explains a pass within seconds
    ev.start()
    try:
        ev.account(2 * MiB)  # fetched by a read: never waits
        disk.other += 2 * MiB
        deadline = time.monotonic() + 5
        while not owner.dropped:
            assert time.monotonic() < deadline, "no eviction after the free space fell below min_free"
            time.sleep(0.01)
        assert disk.threads == {"MainThread", "storefs-evict"}, disk.threads
    finally:
        ev.stop()
    assert owner.dropped[0] == "c0"


def test_a_write_that_does_not_fit_waits_for_one_pass_to_make_room() -> None:
    owner, disk = full_disk(clean=4, free=512 * KiB)
    ev = evictor_on(owner, disk, min_free=0, wait=30.0)
    ev.start()
    try:
        t0 = time.monotonic()
        ev.reserve(MiB)
        took = time.monotonic() - t0
    finally:
        ev.stop()
    assert owner.dropped == ["c0"], "room for the write means one copy, the oldest"
    assert took < 5, f"the write waited {took:.1f}s"


def test_a_write_to_a_disk_of_pending_data_is_let_through_after_one_pass() -> None:
    # nothing can be evicted: the disk itself answers the write (ENOSPC), no waiting for space_wait
    owner, disk = full_disk(clean=0, pending=3, free=0)
    ev = evictor_on(owner, disk, min_free=MiB, wait=30.0)
    ev.start()
    try:
        t0 = time.monotonic()
        ev.reserve(MiB)
        took = time.monotonic() - t0
        t1 = time.monotonic()
        ev.reserve(MiB)  # the evictor knows nothing can go: no wait at all
        again = time.monotonic() - t1
    finally:
        ev.stop()
    assert owner.dropped == []
    assert took < 5 and again < 0.2, (took, again)


def test_a_short_disk_recovers_once_uploads_make_copies_clean(caplog) -> None:
    owner, disk = full_disk(clean=0, pending=3, free=0)
    ev = evictor_on(owner, disk, min_free=MiB, interval=0.05)
    with caplog.at_level(logging.INFO, logger="storefs.cache.eviction"):
        ev.make_room()
        assert owner.dropped == []
        ev.start()
        try:
            owner.add("p0", 8 * MiB, used=0.0)  # uploaded: clean now, and evictable
            deadline = time.monotonic() + 5
            while not any("has room again" in r.getMessage() for r in caplog.records):
                assert time.monotonic() < deadline, "the disk stayed short after a copy became clean"
                time.sleep(0.01)
        finally:
            ev.stop()
    assert owner.dropped == ["p0"]
    assert disk.free() >= MiB


def test_the_size_limit_still_refuses_after_space_wait() -> None:
    owner, disk = full_disk(clean=0, pending=2, free=50 * MiB)
    ev = evictor_on(owner, disk, min_free=MiB, max_size=16 * MiB, wait=0.3)
    ev.start()
    try:
        with pytest.raises(CacheFull, match="cache is full"):
            ev.reserve(MiB)
    finally:
        ev.stop()


# ---- the start-up path: a real core on a fake disk ---------------------------------------


CONFIG = """providers:
  mem: {{type: local, base_path: {tmp}/unused}}
cache: {{dir: {tmp}/cache, writeback_delay: 1h, uploaders: 1, max_size: {max_size}, min_free: {min_free}}}
"""


def core_on(tmp: Path, provider: MemoryProvider, statvfs: Callable[[str], os.statvfs_result] = os.statvfs,
            max_size: str = "1GiB", min_free: str = "5%") -> Core:
    cfg_file = tmp / "cfg.yaml"
    cfg_file.write_text(CONFIG.format(tmp=tmp, max_size=max_size, min_free=min_free))
    cfg = load_config(str(cfg_file))
    return build_core(cfg, Layout(cfg.layout, cfg.max_file_size), {"mem": provider},
                      Journal(os.path.join(cfg.cache.dir, "journal.db"), ballast=0), DataFiles(cfg.cache.dir),
                      statvfs=statvfs)


def write_file(ns: Core, key: str, data: bytes) -> None:
    fh = ns.create(key, 0o644, os.getuid(), os.getgid(), exclusive=False)
    ns.write(fh, data, 0)
    ns.release(fh)


FOLDER = "t/image/b/a"


def test_a_mount_on_a_full_disk_drops_clean_copies_not_pending_ones(tmp_path: Path, caplog) -> None:
    provider = MemoryProvider("mem")
    ns = core_on(tmp_path, provider)
    ns.start()
    for i in range(1, 5):
        ns.mkdir("/".join(FOLDER.split("/")[:i]), 0o755, os.getuid(), os.getgid())
    for i in range(6):
        write_file(ns, f"{FOLDER}/clean{i}", bytes([i]) * (128 * KiB))
        time.sleep(0.01)  # the least recently used order is the order written
    assert ns.flush_all(20)
    write_file(ns, f"{FOLDER}/dirty", b"d" * (128 * KiB))  # the delay is 1h: still pending at the next mount
    ns.stop()

    data = DataFiles(str(tmp_path / "cache"), spares=0)

    def cached() -> int:
        return sum(data.size(n) for n in data.names())

    disk = FakeDisk(10 * MiB, 0, cached)
    disk.other = disk.size - cached()  # other programs filled the disk: nothing is free
    with caplog.at_level(logging.INFO):
        ns2 = core_on(tmp_path, provider, disk.statvfs)  # 5 % of 10 MiB: 512 KiB to keep free
    index = ns2.parts.index
    kept = sorted(k.rsplit("/", 1)[1] for k, e in index.entries.items() if e.data_name)
    assert kept == ["clean5", "dirty"], "the 5 least recently used clean copies go, the pending change stays"
    assert index.get(f"{FOLDER}/dirty").pending
    assert disk.free() >= 512 * KiB
    assert any("made room at mount: dropped 5 clean cached copies" in r.getMessage() for r in caplog.records)
    ns2.start()
    try:
        # every file still reads right: the dropped ones come back from the provider
        for i in range(6):
            fh = ns2.open(f"{FOLDER}/clean{i}", os.O_RDONLY)
            fd, n = ns2.read_source(fh, 256 * KiB, 0)
            assert n == 128 * KiB and os.pread(fd, n, 0) == bytes([i]) * n
            ns2.release(fh)
    finally:
        ns2.stop()


def test_a_max_size_larger_than_the_cache_disk_is_warned_about(tmp_path: Path, caplog) -> None:
    cfg_file = tmp_path / "cfg.yaml"
    cfg_file.write_text(CONFIG.format(tmp=tmp_path, max_size="20GiB", min_free="5%"))
    cfg = load_config(str(cfg_file))

    def statvfs(path: str) -> os.statvfs_result:
        return statvfs_result(8 * GiB, 4 * GiB)

    with caplog.at_level(logging.WARNING, logger="storefs.daemon"):
        assert cache_disk_limits(cfg, str(tmp_path), statvfs) == 8 * GiB * 5 // 100
    (msg,) = [r.getMessage() for r in caplog.records]
    assert "cache.max_size (20.0 GiB) is larger than the cache disk" in msg and "(8.0 GiB)" in msg
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="storefs.daemon"):
        cache_disk_limits(cfg, str(tmp_path), lambda p: statvfs_result(40 * GiB, 4 * GiB))
    assert caplog.records == []


def test_a_journal_that_cannot_open_stops_the_mount_saying_how_much_is_free(tmp_path: Path) -> None:
    cfg_file = tmp_path / "cfg.yaml"
    cfg_file.write_text(CONFIG.format(tmp=tmp_path, max_size="1GiB", min_free="5%"))
    cfg = load_config(str(cfg_file))
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "journal.db").write_bytes(b"x" * 4096)  # SQLite cannot open it, as on a full disk
    with pytest.raises(DaemonError, match=r"cannot open the cache journal in .*cache \(.* free on its disk\): "):
        open_journal(cfg)
