"""A cache data file held open by FUSE handles: reads, writes and chunk fetches.

Writes are one os.pwrite on a shared descriptor, without a lock; reads hand libfuse the
descriptor and range, and it preads or splices them itself.
Bytes not cached yet are fetched from the provider chunk by chunk, so reading the head
of a large object never downloads all of it. A wholly cached file read at random is read
once, in the background, into the kernel's page cache, so that random readers (mmap'd
weights, SQLite, fio) stop waiting on the disk for every block.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor

from .journal import Entry

log = logging.getLogger(__name__)

DEFAULT_CHUNK = 4 * 1024 * 1024
#: chunks fetched ahead of a sequential reader (grows from 1 to this)
MAX_READAHEAD = 16
#: bytes a sequential reader's read-ahead asks for in one ranged read (whole chunks, at most readahead of
#: them): fewer, longer GETs cost the server less per byte than one per chunk (README, "cold read")
FETCH_SPAN = 16 * 1024 * 1024

#: reads of a wholly cached file, each further than the sequential window (at least
#: SEQ_WINDOW) from where the one before it ended, before it is read into the page cache (a
#: sequential reader's requests arrive out of order by up to the kernel's read-ahead, twice
#: over: libfuse serves them on several threads)
WARM_AFTER = 32
SEQ_WINDOW = 4 * 1024 * 1024
WARM_BLOCK = 1024 * 1024
#: cached bytes asked of the disk ahead of a sequential reader, in asks of DISK_STEP
DISK_AHEAD = 16 * 1024 * 1024
DISK_STEP = 1024 * 1024
#: pages sampled with RWF_NOWAIT to find a file already in memory
WARM_PROBES = 32

MISSING, PRESENT = 0, 1


class _Fetching:
    """One chunk being fetched: waiters share its outcome, failure included."""

    __slots__ = ("done", "error")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.error: BaseException | None = None


def default_warm_limit() -> int:
    """Largest file worth holding in the page cache for a random reader: an eighth of RAM."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 8
    except (ValueError, OSError):
        return 0

#: fetch(offset, length, fd): the bytes [offset, offset+length) written into the cache file fd at offset
Fetch = Callable[[int, int, int], None]


class OpenFile:
    """One open cache entry; handles share it, and it outlives renames and unlinks."""

    def __init__(self, entry: Entry, fd: int, fetch: Fetch | None, chunk_size: int = DEFAULT_CHUNK,
                 pool: Executor | None = None, readahead: int = MAX_READAHEAD,
                 warm_limit: int = 0, on_warmed: Callable[[int], None] | None = None,
                 seq_window: int = SEQ_WINDOW) -> None:
        self.entry = entry
        self.fd = fd
        self.size = entry.size
        self.open_count = 0
        self.writers = 0
        self.dirty = False          # written since the journal last heard of it
        self.unlinked = False
        self.hidden_key: str | None = None  # libfuse's .fuse_hiddenN name while unlinked but open
        self.chunks_changed = False
        self.size_limit: tuple[str, int] | None = None  # (key, its max_file_size), kept by the core's writes
        self.chunk_size = chunk_size
        self._fetch = fetch
        self._pool = pool if readahead > 0 else None
        self._max_ahead = readahead
        self._run = max(1, min(readahead, FETCH_SPAN // chunk_size))  # chunks per read-ahead GET
        self._present = bytearray(entry.chunks) if entry.chunks is not None else None
        self._lock = threading.Lock()  # _present, _inflight, _queued: which chunks are here or coming
        self._inflight: dict[int, _Fetching] = {}
        self._queued: dict[int, int] = {}  # chunks handed to the read-ahead pool, not started yet: where their run ends
        self._next_seq = -1         # chunk a sequential reader will want next
        self._ahead = 0
        self._warm_limit = warm_limit
        self._warm_left = WARM_AFTER if self._pool is not None and warm_limit > 0 else 0
        self._seq_window = max(SEQ_WINDOW, seq_window)
        self._read_end = 0          # where the last read ended: the next sequential offset
        self._disk_next = 0         # the cache file is asked of the disk up to here
        self._closed = False
        self._on_warmed = on_warmed

    @property
    def complete(self) -> bool:
        return self._present is None

    def chunk_bitmap(self) -> bytes | None:
        return None if self._present is None else bytes(self._present)

    def _get_chunk(self, i: int) -> None:
        """Make chunk i present, fetching it unless another thread already is."""
        with self._lock:
            present = self._present
            if present is None or i >= len(present) or present[i] == PRESENT:
                return
            flight = self._inflight.get(i)
            if flight is None:
                # a chunk still queued for read-ahead (the pool is behind the reader): the reader takes the
                # rest of its run in one ranged read, not chunk by chunk while the run waits in the queue
                n = self._claim(i, self._queued.get(i, i + 1) - i)
                flight = self._inflight[i]
                mine = True
            else:
                mine = False
        if not mine:
            # the fetch already retried for as long as the provider allows: trying again here
            # would make each of the kernel's parallel reads of a chunk wait out its own deadline
            flight.done.wait()
            if flight.error is not None:
                raise flight.error
            return
        self._fetch_run(i, n, flight)

    def _claim(self, first: int, count: int) -> int:
        """Claim the chunks from first on (up to count) that are missing and nobody fetches, under one flight;
        how many. Called with _lock held, _present not None."""
        present, n = self._present, 0
        assert present is not None
        while n < count and present[first + n] != PRESENT and first + n not in self._inflight:
            n += 1
        if n:
            flight = _Fetching()
            for c in range(first, first + n):
                self._inflight[c] = flight
                self._queued.pop(c, None)
        return n

    def _fetch_run(self, first: int, count: int, flight: _Fetching) -> None:
        """Fetch chunks first..first+count-1, claimed under flight, with one ranged read, and mark them present."""
        try:
            start = first * self.chunk_size
            want = min(count * self.chunk_size, self.size - start)
            if want > 0:
                self._fetch(start, want, self.fd)  # type: ignore[misc]
            with self._lock:
                if self._present is not None:
                    for i in range(first, first + count):
                        self._present[i] = PRESENT
                    if all(self._present):
                        self._present = None
                self.chunks_changed = True
        except BaseException as e:
            flight.error = e
            raise
        finally:
            with self._lock:
                for i in range(first, first + count):
                    self._inflight.pop(i, None)
            flight.done.set()

    def _prefetch(self, first: int, count: int) -> None:
        """Read ahead: fetch the run's chunks that nobody fetched meanwhile, from the first of them on."""
        with self._lock:
            for c in range(first, first + count):
                self._queued.pop(c, None)
            present = self._present
            if present is None:
                return
            while count and (present[first] == PRESENT or first in self._inflight):
                first, count = first + 1, count - 1
            n = self._claim(first, count) if count else 0
            if n == 0:
                return
            flight = self._inflight[first]
        try:
            self._fetch_run(first, n, flight)
        except Exception as e:  # the reader will fetch it again and see the error itself
            log.debug("read-ahead of chunks %d-%d of %s failed: %s", first, first + n - 1, self.entry.key, e)

    def ensure(self, offset: int, length: int) -> None:
        """Fetch the chunks under [offset, offset+length), and read ahead of a sequential reader."""
        present = self._present
        if present is None or length <= 0:
            return
        end = min(offset + length, self.size)
        if end <= offset:
            return
        first, last = offset // self.chunk_size, (end - 1) // self.chunk_size
        if self._pool is not None:
            if first == self._next_seq or first == self._next_seq - 1:
                self._ahead = min(self._max_ahead, max(1, self._ahead * 2))
            elif first != 0:
                self._ahead = 0
            self._next_seq = last + 1
            self._read_ahead(last + 1, min(last + 1 + self._ahead, len(present)), len(present))
        for i in range(first, last + 1):
            self._get_chunk(i)

    def _read_ahead(self, start: int, stop: int, n: int) -> None:
        """Hand the missing chunks of [start, stop) to the pool in runs of up to _run chunks, one ranged read each.
        Once the window is as wide as a run, a shorter run that ends before the file does waits for the reader
        to move on (the window then holds between _ahead - _run + 1 and _ahead chunks ahead)."""
        runs: list[tuple[int, int]] = []
        with self._lock:
            p, run, busy = self._present, self._run, (self._inflight, self._queued)
            j = start
            while j < stop and p is not None:
                if p[j] == PRESENT or j in busy[0] or j in busy[1]:
                    j += 1
                    continue
                k = j + 1
                while k < stop and k - j < run and p[k] != PRESENT and k not in busy[0] and k not in busy[1]:
                    k += 1
                if k - j < run and k == stop and stop < n and self._ahead >= run:
                    break
                self._queued.update(dict.fromkeys(range(j, k), k))
                runs.append((j, k - j))
                j = k
        for first, count in runs:
            self._pool.submit(self._prefetch, first, count)  # type: ignore[union-attr]

    def ensure_all(self) -> None:
        """Everything cached: needed before the first change of a partly cached file."""
        if self._present is not None:
            for i in range(len(self._present)):
                self._get_chunk(i)
            self._present = None
            self.chunks_changed = True

    def mark_complete(self) -> None:
        """Nothing left to fetch (the file was truncated to zero)."""
        with self._lock:
            self._present = None

    def _before_read(self, size: int, offset: int) -> None:
        if self._present is not None:
            self.ensure(offset, size)
        elif abs(offset - self._read_end) > self._seq_window:
            if self._warm_left > 0:
                self._warm_left -= 1
                if self._warm_left == 0 and 0 < self.size <= self._warm_limit:
                    self._pool.submit(self._warm)  # type: ignore[union-attr]
        elif offset + size + DISK_AHEAD // 2 > self._disk_next:
            self._ask_disk(offset + size)
        self._read_end = offset + size

    def _ask_disk(self, end: int) -> None:
        """Have the kernel read the cache file ahead of a sequential reader (it caps each ask)."""
        start, stop = max(self._disk_next, end), min(end + DISK_AHEAD, self.size)
        while start < stop:
            os.posix_fadvise(self.fd, start, DISK_STEP, os.POSIX_FADV_WILLNEED)
            start += DISK_STEP
        self._disk_next = max(self._disk_next, stop)

    def read_source(self, size: int, offset: int) -> tuple[int, int]:
        """Where a read's bytes are (descriptor, length): libfuse copies or splices them itself."""
        self._before_read(size, offset)
        return self.fd, max(0, min(size, self.size - offset))

    def _in_memory(self) -> bool:
        """Whether the page cache holds the file already (an earlier open warmed it): a sample."""
        page = bytearray(4096)
        rng = random.Random(self.fd)
        try:
            for _ in range(WARM_PROBES):
                if self._closed or os.preadv(self.fd, [page], rng.randrange(0, self.size), os.RWF_NOWAIT) <= 0:
                    return False
        except OSError:  # EAGAIN: that page is on disk only; or no RWF_NOWAIT here
            return False
        return True

    def _warm(self) -> None:
        """Read the whole cache file once, so the random reads after it come from memory."""
        if self._in_memory():
            return
        t0, off, buf = time.monotonic(), 0, bytearray(WARM_BLOCK)
        try:
            while off < self.size and not self._closed:
                n = os.preadv(self.fd, [buf], off)
                if n <= 0:
                    break
                off += n
        except OSError as e:  # closed under us: nothing to warm any more
            log.debug("page-cache warm-up of %s stopped: %s", self.entry.key, e)
            return
        log.debug("read %s (%d bytes) into the page cache for a random reader in %.2f s",
                  self.entry.key, off, time.monotonic() - t0)
        if self._on_warmed is not None:
            self._on_warmed(off)

    def write(self, data: bytes, offset: int) -> int:
        n = os.pwrite(self.fd, data, offset)
        if offset + n > self.size:
            self.size = offset + n
        return n

    def truncate(self, length: int) -> None:
        """Cut or extend the cache file. A cut to zero (the one made without fetching everything first) stops
        new fetches and waits for those under way: a chunk landing after it would put the old object's bytes
        back into the file, past its new end, and the next upload would send them."""
        if length == 0 and self._present is not None:
            with self._lock:
                self._present = None
                flights = list(self._inflight.values())
            for flight in flights:
                flight.done.wait()
        os.ftruncate(self.fd, length)
        self.size = length

    def close(self) -> None:
        self._closed = True
        try:
            os.close(self.fd)
        except OSError:
            pass
