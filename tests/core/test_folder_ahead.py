"""A reader going through a folder's cached copies (cp -r, tar, rsync, the benchmark's read back)
finds the next ones asked of the cache disk: FOLDER_AHEAD_FILES of them in name order, asked again
once it has passed half of them, each file once; a writer asks for nothing."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

from coretier import build

from storefs.core import Core
from storefs.core.files import FOLDER_AHEAD_BYTES, FOLDER_AHEAD_FILES

ART = "t/image/b/a"
WAIT = 10.0


class Warmed:
    """Stands in for Files._warm: the data files asked of the disk, in the order asked."""

    def __init__(self) -> None:
        self.names: list[str] = []
        self.sizes: dict[str, int] = {}
        self.cond = threading.Condition()

    def __call__(self, data_name: str, size: int) -> None:
        with self.cond:
            self.names.append(data_name)
            self.sizes[data_name] = size
            self.cond.notify_all()

    def wait_for(self, n: int) -> list[str]:
        deadline = time.monotonic() + WAIT
        with self.cond:
            while len(self.names) < n and time.monotonic() < deadline:
                self.cond.wait(0.05)
            return list(self.names)


def _folder_of_cached_copies(tmp_path: Path, n: int, big: int = -1) -> tuple[Core, list[str]]:
    """n cached copies in one folder, clean and listed; the one at index big holds 3 MiB."""
    core = build(tmp_path)
    core.start()
    for folder in ("t", "t/image", "t/image/b", ART):
        core.mkdir(folder, 0o755, 0, 0)
    paths = [f"{ART}/f{i:02d}" for i in range(n)]
    for p in paths:
        fh = core.create(p, 0o644, 0, 0, exclusive=False)
        core.write(fh, b"x" * (3 * FOLDER_AHEAD_BYTES) if p == f"{ART}/f{big:02d}" else p.encode(), 0)
        core.release(fh)
    assert core.flush_all(WAIT)  # clean cached copies, as after an upload
    core.readdir(ART)  # a fresh listing, as a walk leaves it
    return core, paths


def _data(core: Core, paths: list[str]) -> list[str]:
    names = []
    for p in paths:
        e = core.parts.index.get(p)
        assert e is not None and e.data_name
        names.append(e.data_name)
    return names


def test_a_reader_finds_the_next_files_of_the_folder_asked_ahead(tmp_path: Path) -> None:
    core, paths = _folder_of_cached_copies(tmp_path, 40)
    warmed = Warmed()
    core.parts.files._warm = warmed  # type: ignore[method-assign]
    try:
        core.release(core.open(paths[0], os.O_RDONLY))
        first = warmed.wait_for(FOLDER_AHEAD_FILES)
        assert sorted(first) == sorted(_data(core, paths[1:1 + FOLDER_AHEAD_FILES]))

        half = FOLDER_AHEAD_FILES // 2
        for p in paths[1:1 + half]:  # within the first half: nothing more is asked
            core.release(core.open(p, os.O_RDONLY))
        core.release(core.open(paths[1 + half], os.O_RDONLY))  # half-way: the next ones, none twice
        want = _data(core, paths[1 + FOLDER_AHEAD_FILES:2 + half + FOLDER_AHEAD_FILES])  # up to 16 past f09
        both = warmed.wait_for(FOLDER_AHEAD_FILES + len(want))
        time.sleep(0.2)  # anything asked by mistake would have come by now
        assert warmed.names == both and sorted(both[FOLDER_AHEAD_FILES:]) == sorted(want)
    finally:
        core.stop()


def test_a_writer_asks_for_nothing_ahead_and_a_big_file_only_its_start(tmp_path: Path) -> None:
    core, paths = _folder_of_cached_copies(tmp_path, 10, big=6)
    warmed = Warmed()
    core.parts.files._warm = warmed  # type: ignore[method-assign]
    try:
        for p in paths[:3]:
            core.release(core.open(p, os.O_RDWR))
        core.release(core.open(paths[3], os.O_RDONLY))  # a reader after them: the folder's rest
        assert sorted(warmed.wait_for(len(paths) - 4)) == sorted(_data(core, paths[4:]))
        time.sleep(0.2)
        assert len(warmed.names) == len(paths) - 4
        big, small = _data(core, paths[6:8])
        assert warmed.sizes[big] == FOLDER_AHEAD_BYTES and warmed.sizes[small] == len(paths[7])
    finally:
        core.stop()
