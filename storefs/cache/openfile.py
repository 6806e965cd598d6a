"""A cache data file held open by FUSE handles: reads, writes and chunk fetches.

Reads and writes are one os.pread/os.pwrite on a shared descriptor, without a lock.
Bytes not cached yet are fetched from the provider chunk by chunk, so reading the head
of a large object never downloads all of it.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from concurrent.futures import Executor
from typing import Callable

from .journal import Entry

log = logging.getLogger(__name__)

DEFAULT_CHUNK = 4 * 1024 * 1024
#: chunks fetched ahead of a sequential reader (grows from 1 to this)
MAX_READAHEAD = 8

MISSING, PRESENT = 0, 1

Fetch = Callable[[int, int], bytes]


class OpenFile:
    """One open cache entry; handles share it, and it outlives renames and unlinks."""

    def __init__(self, entry: Entry, fd: int, fetch: Fetch | None, chunk_size: int = DEFAULT_CHUNK,
                 pool: Executor | None = None, readahead: int = MAX_READAHEAD) -> None:
        self.entry = entry
        self.fd = fd
        self.size = entry.size
        self.open_count = 0
        self.writers = 0
        self.dirty = False          # written since the journal last heard of it
        self.unlinked = False
        self.hidden_key: str | None = None  # libfuse's .fuse_hiddenN name while unlinked but open
        self.chunks_changed = False
        self.chunk_size = chunk_size
        self._fetch = fetch
        self._pool = pool if readahead > 0 else None
        self._max_ahead = readahead
        self._present = bytearray(entry.chunks) if entry.chunks is not None else None
        self._lock = threading.Lock()
        self._inflight: dict[int, threading.Event] = {}
        self._queued: set[int] = set()  # chunks handed to the read-ahead pool, not started yet
        self._next_seq = -1         # chunk a sequential reader will want next
        self._ahead = 0

    @property
    def complete(self) -> bool:
        return self._present is None

    def chunk_bitmap(self) -> bytes | None:
        return None if self._present is None else bytes(self._present)

    def _get_chunk(self, i: int) -> None:
        """Make chunk i present, fetching it unless another thread already is."""
        while True:
            with self._lock:
                present = self._present
                if present is None or i >= len(present) or present[i] == PRESENT:
                    return
                ev = self._inflight.get(i)
                if ev is None:
                    ev = self._inflight[i] = threading.Event()
                    mine = True
                else:
                    mine = False
            if not mine:
                ev.wait()
                continue  # present now, or the fetcher failed and we try ourselves
            try:
                start = i * self.chunk_size
                want = min(self.chunk_size, self.size - start)
                if want > 0:
                    os.pwrite(self.fd, self._fetch(start, want), start)  # type: ignore[misc]
                with self._lock:
                    if self._present is not None:
                        self._present[i] = PRESENT
                        if all(self._present):
                            self._present = None
                    self.chunks_changed = True
            finally:
                with self._lock:
                    self._inflight.pop(i, None)
                ev.set()
            return

    def _prefetch(self, i: int) -> None:
        self._queued.discard(i)
        try:
            self._get_chunk(i)
        except Exception as e:  # the reader will fetch it again and see the error itself
            log.debug("read-ahead of chunk %d of %s failed: %s", i, self.entry.key, e)

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
            n = len(present)
            for j in range(last + 1, min(last + 1 + self._ahead, n)):
                p = self._present
                if p is None:
                    break
                if p[j] != PRESENT and j not in self._inflight and j not in self._queued:
                    self._queued.add(j)
                    self._pool.submit(self._prefetch, j)
        for i in range(first, last + 1):
            self._get_chunk(i)

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

    def read(self, size: int, offset: int) -> bytes:
        if self._present is not None:
            self.ensure(offset, size)
        return os.pread(self.fd, size, offset)

    def write(self, data: bytes, offset: int) -> int:
        n = os.pwrite(self.fd, data, offset)
        if offset + n > self.size:
            self.size = offset + n
        self.entry.mtime = time.time()
        return n

    def truncate(self, length: int) -> None:
        os.ftruncate(self.fd, length)
        self.size = length
        self.entry.mtime = time.time()

    def close(self) -> None:
        try:
            os.close(self.fd)
        except OSError:
            pass
