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
from typing import Callable

from .journal import Entry

log = logging.getLogger(__name__)

DEFAULT_CHUNK = 8 * 1024 * 1024

Fetch = Callable[[int, int], bytes]


class OpenFile:
    """One open cache entry; handles share it, and it outlives renames and unlinks."""

    def __init__(self, entry: Entry, fd: int, fetch: Fetch | None, chunk_size: int = DEFAULT_CHUNK) -> None:
        self.entry = entry
        self.fd = fd
        self.size = entry.size
        self.open_count = 0
        self.writers = 0
        self.dirty = False          # written since the journal last heard of it
        self.unlinked = False
        self.chunks_changed = False
        self.chunk_size = chunk_size
        self._fetch = fetch
        self._present = bytearray(entry.chunks) if entry.chunks is not None else None
        self._fetch_lock = threading.Lock()

    @property
    def complete(self) -> bool:
        return self._present is None

    def chunk_bitmap(self) -> bytes | None:
        return None if self._present is None else bytes(self._present)

    def ensure(self, offset: int, length: int) -> None:
        """Fetch the chunks under [offset, offset+length) that are not cached yet."""
        present = self._present
        if present is None or length <= 0:
            return
        end = min(offset + length, self.size)
        first, last = offset // self.chunk_size, (max(end, offset + 1) - 1) // self.chunk_size
        if all(present[i] for i in range(first, min(last + 1, len(present)))):
            return
        with self._fetch_lock:
            for i in range(first, min(last + 1, len(present))):
                if present[i]:
                    continue
                start = i * self.chunk_size
                want = min(self.chunk_size, self.size - start)
                if want > 0:
                    data = self._fetch(start, want)  # type: ignore[misc]
                    os.pwrite(self.fd, data, start)
                present[i] = 1
                self.chunks_changed = True
            if all(present):
                self._present = None

    def ensure_all(self) -> None:
        """Everything cached: needed before the first change of a partly cached file."""
        if self._present is not None:
            self.ensure(0, self.size)
            self._present = None
            self.chunks_changed = True

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
