#!/usr/bin/env python3
"""A file exerciser in the spirit of fsx: one file, a long random sequence of operations.

    python -m storefs.testing.fsx [--ops N] [--seed S] [--max-size BYTES] [--no-mmap] PATH

Every operation is applied to PATH (normally a file in a storefs mount) and to an in-memory
bytearray model: pread / pwrite at random offsets and lengths (writes past the end leave a
hole), ftruncate (grow and shrink), mmap reads and MAP_SHARED mmap writes on a random window
(written, then `flush()`ed: msync), close + reopen, fsync, and every so often a full read
of the file and an fstat size check. Every read is compared with the model; on the first
difference the tail of the operation log, the offset of the first differing byte and both
values are printed and the exit status is 1.

The file is created (truncated) at start. At the end the whole file is read back through
a fresh descriptor and compared, the rate is printed, and the last line is `sha256 HEX`,
the SHA-256 of the final content (the file's and the model's, which are equal by then).
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import logging
import mmap
import os
import random
import sys
import time

log = logging.getLogger(__name__)

PAGE = mmap.ALLOCATIONGRANULARITY
LOG_TAIL = 40


def parse_size(text: str) -> int:
    units = {"": 1, "k": 1 << 10, "kib": 1 << 10, "m": 1 << 20, "mib": 1 << 20, "g": 1 << 30, "gib": 1 << 30}
    t = text.strip().lower()
    num = t.rstrip("abcdefghijklmnopqrstuvwxyz")
    unit = t[len(num):]
    if unit not in units or not num:
        raise argparse.ArgumentTypeError(f"not a size: {text!r}")
    return int(float(num) * units[unit])


class Mismatch(Exception):
    pass


class Fsx:
    def __init__(self, path: str, rnd: random.Random, max_size: int, use_mmap: bool = True) -> None:
        self.path = path
        self.rnd = rnd
        self.max_size = max_size
        self.use_mmap = use_mmap
        self.model = bytearray()
        self.log: collections.deque[str] = collections.deque(maxlen=LOG_TAIL)
        self.counts: collections.Counter[str] = collections.Counter()
        self.opno = 0
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        # a typical read/write length; now and then a large one
        self.max_len = max(1, min(max_size, 256 * 1024))

    # -- helpers

    def note(self, text: str) -> None:
        self.log.append(f"{self.opno:7d} {text}")

    def data(self, n: int) -> bytes:
        return self.rnd.randbytes(n)

    def length(self) -> int:
        r = self.rnd.random()
        if r < 0.45:
            return self.rnd.randint(1, min(self.max_len, 4096))
        if r < 0.9:
            return self.rnd.randint(1, self.max_len)
        return self.rnd.randint(1, max(1, min(self.max_size, 1 << 20)))

    def compare(self, got: bytes, offset: int, what: str) -> None:
        exp = bytes(self.model[offset:offset + len(got)])
        if got == exp:
            return
        first = next((i for i in range(min(len(got), len(exp))) if got[i] != exp[i]), min(len(got), len(exp)))
        g = got[first:first + 16].hex() or "(end of data)"
        e = exp[first:first + 16].hex() or "(end of data)"
        raise Mismatch(f"{what}: first difference at file offset {offset + first} "
                       f"(byte {first} of the {len(got)} read)\n  got      {g}\n  expected {e}\n"
                       f"  model size {len(self.model)}")

    def pread_all(self, offset: int, n: int) -> bytes:
        chunks = []
        while n > 0:
            b = os.pread(self.fd, n, offset)
            if not b:
                break
            chunks.append(b)
            offset += len(b)
            n -= len(b)
        return b"".join(chunks)

    def set_size(self, n: int) -> None:
        if n < len(self.model):
            del self.model[n:]
        else:
            self.model.extend(bytes(n - len(self.model)))

    # -- operations

    def op_read(self) -> None:
        size = len(self.model)
        if size == 0:
            off, n = self.rnd.randint(0, 4096), self.length()
        else:
            off = self.rnd.randrange(size)
            n = min(self.length(), size - off + self.rnd.choice((0, 0, 0, 100)))  # sometimes past EOF
        self.note(f"read     {off:#x} len {n:#x} (size {size:#x})")
        got = self.pread_all(off, n)
        exp_len = max(0, min(n, size - off))
        if len(got) != exp_len:
            raise Mismatch(f"read at {off:#x} len {n:#x}: got {len(got)} bytes, expected {exp_len}")
        self.compare(got, off, f"read {off:#x}+{n:#x}")

    def op_write(self) -> None:
        n = self.length()
        off = self.rnd.randint(0, max(0, self.max_size - n))
        if self.rnd.random() < 0.3 and self.model:  # often near the current end
            off = min(max(0, len(self.model) - self.rnd.randint(0, n)), max(0, self.max_size - n))
        data = self.data(n)
        self.note(f"write    {off:#x} len {n:#x} (size {len(self.model):#x}"
                  f"{', hole' if off > len(self.model) else ''})")
        done = 0
        while done < n:
            done += os.pwrite(self.fd, data[done:], off + done)
        if off + n > len(self.model):
            self.set_size(off + n)
        self.model[off:off + n] = data

    def op_truncate(self) -> None:
        size = len(self.model)
        r = self.rnd.random()
        if r < 0.4:
            new = self.rnd.randint(0, size)  # shrink
        elif r < 0.8:
            new = self.rnd.randint(size, self.max_size)  # grow
        else:
            new = self.rnd.randint(0, self.max_size)
        self.note(f"truncate {size:#x} -> {new:#x}")
        os.ftruncate(self.fd, new)
        self.set_size(new)

    def _window(self, off: int, end: int) -> tuple[int, int]:
        start = off - off % PAGE
        return start, end - start

    def op_mapread(self) -> None:
        size = len(self.model)
        if size == 0:
            return self.op_read()
        off = self.rnd.randrange(size)
        n = min(self.length(), size - off)
        start, maplen = self._window(off, off + n)
        self.note(f"mapread  {off:#x} len {n:#x} (map {start:#x}+{maplen:#x}, size {size:#x})")
        m = mmap.mmap(self.fd, maplen, access=mmap.ACCESS_READ, offset=start)
        try:
            got = m[off - start:off - start + n]
        finally:
            m.close()
        self.compare(got, off, f"mapread {off:#x}+{n:#x}")

    def op_mapwrite(self) -> None:
        n = self.length()
        off = self.rnd.randint(0, max(0, self.max_size - n))
        if self.rnd.random() < 0.5 and self.model:
            off = self.rnd.randrange(len(self.model))
            n = min(n, self.max_size - off)
            if n <= 0:
                return self.op_write()
        end = off + n
        size = len(self.model)
        grow = end > size
        self.note(f"mapwrite {off:#x} len {n:#x} (size {size:#x}{', ftruncate first' if grow else ''})")
        if grow:  # a mapping cannot extend a file: grow it first, as fsx does
            os.ftruncate(self.fd, end)
            self.set_size(end)
        data = self.data(n)
        start, maplen = self._window(off, end)
        m = mmap.mmap(self.fd, maplen, access=mmap.ACCESS_WRITE, offset=start)
        try:
            m[off - start:off - start + n] = data
            m.flush()  # msync(MS_SYNC): the kernel writes the dirty pages back through FUSE
        finally:
            m.close()
        self.model[off:end] = data

    def op_reopen(self) -> None:
        self.note("close+reopen")
        os.close(self.fd)
        self.fd = -1
        self.fd = os.open(self.path, os.O_RDWR)
        self.check_size("after reopen")

    def op_fsync(self) -> None:
        self.note("fsync")
        os.fsync(self.fd)

    def op_check(self) -> None:
        self.note(f"check    whole file (size {len(self.model):#x})")
        self.check_size("check")
        got = self.pread_all(0, len(self.model) + 1)
        if len(got) != len(self.model):
            raise Mismatch(f"full read: got {len(got)} bytes, expected {len(self.model)}")
        self.compare(got, 0, "full read")

    def check_size(self, what: str) -> None:
        st = os.fstat(self.fd)
        if st.st_size != len(self.model):
            raise Mismatch(f"{what}: fstat size {st.st_size} ({st.st_size:#x}), expected {len(self.model)} "
                           f"({len(self.model):#x})")

    # -- driver

    def run(self, ops: int) -> None:
        table = [(self.op_read, 25), (self.op_write, 25), (self.op_truncate, 6), (self.op_reopen, 4),
                 (self.op_fsync, 2), (self.op_check, 1)]
        if self.use_mmap:
            table += [(self.op_mapread, 10), (self.op_mapwrite, 10)]
        funcs = [f for f, _ in table]
        weights = [w for _, w in table]
        for self.opno in range(1, ops + 1):
            f = self.rnd.choices(funcs, weights)[0]
            self.counts[f.__name__[3:]] += 1
            f()
            if f in (self.op_write, self.op_truncate, self.op_mapwrite) and self.rnd.random() < 0.1:
                self.check_size(f.__name__[3:])

    def finish(self) -> str:
        """Close, reopen read-only, compare the whole file; the SHA-256 of the content."""
        self.opno += 1
        self.note("close; final read through a fresh descriptor")
        os.close(self.fd)
        self.fd = os.open(self.path, os.O_RDONLY)
        try:
            self.check_size("final")
            got = self.pread_all(0, len(self.model) + 1)
            if len(got) != len(self.model):
                raise Mismatch(f"final read: got {len(got)} bytes, expected {len(self.model)}")
            self.compare(got, 0, "final read")
        finally:
            os.close(self.fd)
            self.fd = -1
        return hashlib.sha256(self.model).hexdigest()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("path", help="the file to exercise (created or truncated)")
    ap.add_argument("--ops", type=int, default=100000, help="number of operations (default 100000)")
    ap.add_argument("--seed", type=int, default=None, help="random seed (default: from the clock, printed)")
    ap.add_argument("--max-size", type=parse_size, default=4 << 20, help="largest file size (default 4MiB)")
    ap.add_argument("--no-mmap", action="store_true", help="no mmap reads or writes")
    args = ap.parse_args(argv)
    seed = args.seed if args.seed is not None else int(time.time() * 1000) % (1 << 31)
    print(f"fsx: {args.path}: seed {seed}, {args.ops} ops, max size {args.max_size}", flush=True)
    fsx = Fsx(args.path, random.Random(seed), args.max_size, use_mmap=not args.no_mmap)
    t0 = time.monotonic()
    try:
        fsx.run(args.ops)
        digest = fsx.finish()
    except (Mismatch, OSError) as e:
        kind = "MISMATCH" if isinstance(e, Mismatch) else f"ERROR ({type(e).__name__})"
        print(f"fsx: {kind} at op {fsx.opno} (seed {seed}): {e}", file=sys.stderr)
        print(f"fsx: last {len(fsx.log)} operations:", file=sys.stderr)
        for line in fsx.log:
            print("  " + line, file=sys.stderr)
        return 1
    elapsed = time.monotonic() - t0
    counts = ", ".join(f"{k} {v}" for k, v in sorted(fsx.counts.items()))
    print(f"fsx: {args.ops} ops in {elapsed:.2f} s: {args.ops / elapsed:.0f} ops/s ({counts}); "
          f"final size {len(fsx.model)}")
    print(f"sha256 {digest}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
