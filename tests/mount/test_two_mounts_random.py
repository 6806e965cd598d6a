"""Random operations from two mounts of one bucket (Hypothesis): no closed version is ever lost.

Each example works in a folder of its own below the artifact level, on a handful of names, with
operations from either mount: write (a new file, or a whole new content over an existing one),
append, delete, rename, and `storefs flush` of one mount. Uploads wait for a flush (a long
write-back delay), so the only changes a mount makes are the test's, and every example ends with
both mounts flushed at the same time.

The model tracks versions, not files: a version is (path, bytes) closed by a mount. Before each
change the test reads what that mount shows at the paths it touches, because a mount may replace
or delete on purpose only what it has shown: that version may go. Every other version must end
at its path or in a conflict copy of it (`NAME.conflict-HOST-UTCTIME.EXT`), byte for byte, and
nothing else may appear (storefs.testing.pair.lost_or_foreign), checked in the bucket after each
example, and through a fresh mount with an empty cache once all examples ran.

More examples: STOREFS_TWO_MOUNT_EXAMPLES=100 (STOREFS_RANDOM_SHRINK_SECONDS caps shrinking).
"""

from __future__ import annotations

import errno
import itertools
import os
import random
import uuid
from pathlib import Path

import pytest
from conftest import require_fuse
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from storefs.testing.backends import S3Backend
from storefs.testing.mount import StorefsMount
from storefs.testing.pair import MountPair, Version, describe, files_below, lost_or_foreign, running

pytestmark = pytest.mark.timeout(600)

MAX_EXAMPLES = int(os.environ.get("STOREFS_TWO_MOUNT_EXAMPLES", "25"))
MAX_STEPS = 12
SHRINK_SECONDS = int(os.environ.get("STOREFS_RANDOM_SHRINK_SECONDS", "60"))
BOARD = "t1/image/b1"  # each example's artifact folder goes below it
NAMES = ["k1.png", "k2.png", "k3.png"]
KINDS = ["write", "write", "append", "delete", "rename", "flush"]  # write twice as often
HELD = "60s"  # uploads wait for a flush: no background change between a read and the change after it
# a mount's own listing outlives every example, so it learns the other's changes only from conflicts
VIEWS = {"dir_cache_ttl": "300s"}

OPS = st.lists(st.tuples(st.sampled_from([0, 1]), st.sampled_from(KINDS), st.sampled_from(NAMES),
                         st.sampled_from(NAMES), st.integers(1, 3000)), min_size=1, max_size=MAX_STEPS)


class TwoMountModel:
    """One example: both mounts' changes in one folder, and the versions they closed."""

    def __init__(self, pair: MountPair, folder: str, serial: int) -> None:
        self.pair = pair
        self.folder = folder
        self.serial = serial
        self.versions: dict[Version, bool] = {}  # (name, bytes) -> must still be there
        self.history: list[str] = []
        self._count = itertools.count()

    def root(self, m: int) -> Path:
        return self.pair.both[m].mnt / self.folder

    def unique(self, size: int) -> bytes:
        """Bytes no other step of any example writes: a tag, then random bytes."""
        tag = f"{self.serial}.{next(self._count)}:".encode()
        return tag + random.Random(tag).randbytes(size)

    def log(self, line: str) -> None:
        self.history.append(line)

    def fail(self, message: str) -> None:
        steps = "\n    ".join(self.history)
        raise AssertionError(f"{message}\n  steps of this example (folder {self.folder}):\n    {steps}")

    def shown(self, m: int, name: str) -> bytes | None:
        """What mount m shows at name (None: absent); a shown version must be one a mount closed."""
        try:
            data = (self.root(m) / name).read_bytes()
        except FileNotFoundError:
            return None
        if (name, data) not in self.versions:
            self.fail(f"host{m + 1} shows {name} = {describe(data)}, which no mount closed there")
        return data

    def replaced(self, name: str, data: bytes | None) -> None:
        """A mount changed or deleted name after showing data there: that version may go."""
        if data is not None:
            self.versions[(name, data)] = False

    def closed(self, name: str, data: bytes) -> None:
        self.versions[(name, data)] = True

    # -- the operations, each through one mount

    def write(self, m: int, name: str, size: int) -> None:
        """A whole new content: a new file, or over an existing one (read first, like an editor)."""
        path = self.root(m) / name
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
            before = None
        except FileExistsError:
            before = self.shown(m, name)
            fd = os.open(path, os.O_RDWR)
        data = self.unique(size)
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, data, 0)
        finally:
            os.close(fd)
        self.log(f"host{m + 1}: write {name} ({describe(data)}) over {describe(before)}")
        self.replaced(name, before)
        self.closed(name, data)

    def append(self, m: int, name: str, size: int) -> None:
        before = self.shown(m, name)
        if before is None:
            self.log(f"host{m + 1}: append {name}: absent, skipped")
            return
        extra = self.unique(size)
        with open(self.root(m) / name, "ab") as f:
            f.write(extra)
        self.log(f"host{m + 1}: append {describe(extra)} to {name} ({describe(before)})")
        self.replaced(name, before)
        self.closed(name, before + extra)

    def delete(self, m: int, name: str) -> None:
        before = self.shown(m, name)
        try:
            os.unlink(self.root(m) / name)
        except FileNotFoundError:
            if before is not None:
                self.fail(f"host{m + 1}: rm {name}: ENOENT, but it showed {describe(before)}")
            self.log(f"host{m + 1}: rm {name}: absent")
            return
        self.log(f"host{m + 1}: rm {name} ({describe(before)})")
        self.replaced(name, before)

    def rename(self, m: int, src: str, dst: str) -> None:
        if src == dst:
            return
        moved, over = self.shown(m, src), self.shown(m, dst)
        try:
            os.rename(self.root(m) / src, self.root(m) / dst)
        except OSError as e:
            if e.errno == errno.ENOENT and moved is None:
                self.log(f"host{m + 1}: mv {src} {dst}: {src} absent")
                return
            self.fail(f"host{m + 1}: mv {src} {dst}: {e} (it showed {describe(moved)})")
        if moved is None:
            self.fail(f"host{m + 1}: mv {src} {dst} worked, but {src} showed as absent")
        self.log(f"host{m + 1}: mv {src} ({describe(moved)}) {dst} (over {describe(over)})")
        self.replaced(src, moved)
        self.replaced(dst, over)
        self.closed(dst, moved)

    def flush(self, m: int) -> None:
        self.pair.both[m].flush()
        self.log(f"host{m + 1}: storefs flush")

    def run(self, ops: list[tuple[int, str, str, str, int]]) -> None:
        for m in (0, 1):
            os.makedirs(self.root(m), exist_ok=True)
        for m, kind, name, other, size in ops:
            if kind == "write":
                self.write(m, name, size)
            elif kind == "append":
                self.append(m, name, size)
            elif kind == "delete":
                self.delete(m, name)
            elif kind == "rename":
                self.rename(m, name, other)
            else:
                self.flush(m)
        self.pair.flush_both()
        self.log("both: storefs flush, at the same time")

    def check(self, files: dict[str, bytes], where: str) -> None:
        problems = lost_or_foreign(files, self.versions)
        if problems:
            self.fail(f"{where}:\n  " + "\n  ".join(problems))


def test_random_ops_from_two_mounts_lose_no_version(seaweed, tmp_path, monkeypatch):
    require_fuse()
    try:  # a private knob: without it shrinking still works, only for longer
        from hypothesis.internal.conjecture import engine
        if hasattr(engine, "MAX_SHRINKING_SECONDS"):
            monkeypatch.setattr(engine, "MAX_SHRINKING_SECONDS", SHRINK_SECONDS)
    except ImportError:
        pass
    bucket = S3Backend(seaweed, f"t-{uuid.uuid4().hex[:20]}")
    done: list[TwoMountModel] = []
    serials = itertools.count()
    with running(MountPair(tmp_path, bucket, fuse=VIEWS, writeback_delay=HELD)) as pair:

        @settings(max_examples=MAX_EXAMPLES, deadline=None, database=None, print_blob=True,
                  derandomize="STOREFS_TWO_MOUNT_EXAMPLES" not in os.environ,
                  suppress_health_check=[HealthCheck.too_slow])
        @given(ops=OPS)
        def example(ops: list[tuple[int, str, str, str, int]]) -> None:
            serial = next(serials)
            model = TwoMountModel(pair, f"{BOARD}/r{serial:03d}", serial)
            model.run(ops)
            model.check(pair.provider_files(model.folder), "in the bucket after both flushed")
            done.append(model)

        example()

    # what a new host sees: one mount with an empty cache over every example's folder
    fresh = StorefsMount(tmp_path / "fresh", bucket)
    try:
        fresh.start()
        for model in done:
            model.check(files_below(fresh.mnt / model.folder), "through a fresh mount with an empty cache")
    finally:
        fresh.cleanup()
        bucket.close()
