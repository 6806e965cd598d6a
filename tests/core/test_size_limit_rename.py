"""The size limit of an open file is its type's: a file renamed while open into a folder of another
type writes up to that type's limit (the core keeps the limit per open file, asked again after a rename)."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest
from coretier import build

from storefs.errors import TooLarge
from storefs.providers.base import ObjectMeta
from storefs.providers.memory import MemoryProvider

IMAGE_LIMIT = 50_000
VIDEO_LIMIT = 200_000


def test_a_file_renamed_while_open_takes_its_new_types_limit(tmp_path: Path) -> None:
    mem = MemoryProvider("mem")
    for art in ("t/image/b/a/", "t/video/b/a/"):
        mem.make_dir(art, ObjectMeta(mtime_ns=1_000_000_000, mode=0o40755, uid=0, gid=0))
    core = build(tmp_path, {"mem": mem}, max_file_size=f"{{default: {IMAGE_LIMIT}, video: {VIDEO_LIMIT}}}")
    core.start()
    try:
        fh = core.create("t/image/b/a/clip.bin", 0o644, 0, 0, exclusive=False)
        assert core.write(fh, b"x" * 40_000, 0) == 40_000
        assert core.write(fh, b"x" * 40_000, 40_000) == IMAGE_LIMIT - 40_000  # short at the image limit
        with pytest.raises(TooLarge) as refused:
            core.write(fh, b"x", IMAGE_LIMIT)
        assert refused.value.errno == errno.EFBIG

        core.rename("t/image/b/a/clip.bin", "t/video/b/a/clip.bin")
        assert core.write(fh, b"y" * 100_000, IMAGE_LIMIT) == 100_000  # a video may hold more
        with pytest.raises(TooLarge):
            core.write(fh, b"y", VIDEO_LIMIT)

        core.rename("t/video/b/a/clip.bin", "t/image/b/a/back.bin")
        with pytest.raises(TooLarge):  # back among images: their limit again
            core.write(fh, b"z", IMAGE_LIMIT + 100_000)
        core.release(fh)
        assert core.getattr("t/image/b/a/back.bin").size == IMAGE_LIMIT + 100_000
    finally:
        core.stop()
