"""The journal's redo log: a change is one append to a file here before the call that made it returns.

Appending a few hundred bytes costs a fraction of a SQLite commit (see the README's benchmark notes),
and survives a `kill -9` just as well: once write() returns, the bytes are the kernel's. The journal
applies the records to SQLite in batches, on a thread of its own, and the log is reused behind it.

Two files are written in turn, so that one is reused once its records are applied while the other
takes new ones. A record is [length, CRC-32, number, payload]; numbers rise by one per record. A file
is read from its start and stops at the first record that does not check (a write cut short) or
whose number does not rise (what is left of older records behind a reused file's end).
"""

from __future__ import annotations

import contextlib
import errno
import io
import logging
import os
import pickle
import struct
import zlib
from typing import Any

log = logging.getLogger(__name__)

#: the two files, after the journal's own path
SUFFIXES = ("-redo0", "-redo1")
#: a record's header: payload length, CRC-32 of number and payload, number
_HEAD = struct.Struct("<IIQ")
_NUMBER = struct.Struct("<Q")
#: pickle protocol of the payloads: readable by every Python storefs supports
PROTOCOL = 5
#: a reused file is cut back to this size when it grew past it (after a long stall of the applier)
KEEP_BYTES = 1 << 20


class _PlainUnpickler(pickle.Unpickler):
    """Payloads are tuples of str, int, float, bytes and None: a record naming any class is refused."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"the redo log names {module}.{name}")


def _decode(payload: bytes) -> Any:
    return _PlainUnpickler(io.BytesIO(payload)).load()


def read_records(path: str) -> list[tuple[int, Any]]:
    """The records of one file that check, in order (read-only: for the journal's replay and for tests)."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return []
    out: list[tuple[int, Any]] = []
    at, last = 0, 0
    while at + _HEAD.size <= len(data):
        size, crc, number = _HEAD.unpack_from(data, at)
        body = data[at + _HEAD.size:at + _HEAD.size + size]
        if len(body) < size or number <= last or zlib.crc32(body, zlib.crc32(_NUMBER.pack(number))) != crc:
            break
        try:
            out.append((number, _decode(body)))
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as e:
            log.error("redo log %s: record %d unreadable (%s); the records after it are not replayed", path, number, e)
            break
        at += _HEAD.size + size
        last = number
    return out


class RedoLog:
    """Two files of numbered records. Not thread-safe: the journal's log lock guards every call."""

    def __init__(self, base: str) -> None:
        self.paths = [base + s for s in SUFFIXES]
        self._fds: list[int] = []
        for p in self.paths:
            fd = os.open(p, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
            os.fchmod(fd, 0o600)
            self._fds.append(fd)
        self._ends = [0, 0]  # where each file's next record goes
        self._last = [0, 0]  # the number of the last record written to each file since it was reused (0: none)
        self._cur = 0        # the file new records go to

    def read(self) -> list[tuple[int, Any]]:
        """The records of both files that check, by number."""
        return sorted(r for p in self.paths for r in read_records(p))

    def append(self, number: int, payload: Any) -> None:
        """Write one record; on an error nothing of it is left in the file (OSError as raised)."""
        i = self._cur
        body = pickle.dumps(payload, PROTOCOL)
        record = _HEAD.pack(len(body), zlib.crc32(body, zlib.crc32(_NUMBER.pack(number))), number) + body
        at = self._ends[i]
        try:
            n = os.pwrite(self._fds[i], record, at)
            if n != len(record):
                raise OSError(errno.ENOSPC, "short write to the redo log")  # the disk took only part of it
        except OSError:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fds[i], at)
            raise
        self._ends[i] = at + n
        self._last[i] = number

    def switch(self) -> None:
        """New records go to the other file if it holds none, so this one can be reused once applied."""
        other = 1 - self._cur
        if self._last[other] == 0:
            self._cur = other

    def applied(self, number: int) -> None:
        """Every record up to number is in SQLite: the files holding only such records are reused."""
        for i in (0, 1):
            if self._last[i] and self._last[i] <= number:
                if self._ends[i] > KEEP_BYTES:
                    os.ftruncate(self._fds[i], 0)
                self._ends[i] = self._last[i] = 0

    def clear(self) -> None:
        """Empty both files (every record is in SQLite: after a replay, at close)."""
        for i in (0, 1):
            os.ftruncate(self._fds[i], 0)
            self._ends[i] = self._last[i] = 0

    def fsync(self) -> None:
        """The records on the disk itself, not only the kernel's (fsync while SQLite cannot take them)."""
        for fd in self._fds:
            os.fsync(fd)

    def close(self) -> None:
        for fd in self._fds:
            os.close(fd)
        self._fds = []
