"""cache.min_free through a real mount whose cache is a 40 MiB tmpfs (local provider):

1. a max_size larger than the cache disk is warned about at mount, naming both sizes;
2. while mounted, eviction keeps min_free free on the disk by dropping clean copies;
3. a mount on a disk that other programs filled to the last byte comes up (the journal opens on
   the space it set aside), drops clean copies at once, takes new writes, and reads every file
   back right (dropped copies come from the provider again).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import pytest
from test_cache_scale import require_fuse, tmpfs, wait_status, write_blocks

from storefs.testing.backends import LocalBackend
from storefs.testing.data import ART, payload, sha256
from storefs.testing.mount import StorefsMount

pytestmark = pytest.mark.timeout(300)

MiB = 1 << 20
MIN_FREE = 10 * MiB
FILES = 7
FILE_SIZE = 4 * MiB


def fill(path: Path) -> int:
    """Write zeros into path until the disk is full; how many bytes went in."""
    written = 0
    block = b"\0" * MiB
    with open(path, "wb", buffering=0) as f:
        with contextlib.suppress(OSError):
            while True:
                written += f.write(block)
        with contextlib.suppress(OSError):
            while True:  # the last partial block
                written += f.write(b"\0" * 4096)
    return written


def disk_free(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def test_min_free_is_kept_and_a_full_cache_disk_mounts(tmp_path: Path) -> None:
    require_fuse()
    m = StorefsMount(tmp_path, LocalBackend(tmp_path), max_size="200MiB", min_free="10MiB")
    with tmpfs(m.cache, "40m"):
        try:
            _run(m)
        except (AssertionError, OSError) as e:
            raise AssertionError(f"{type(e).__name__}: {e}\nstorefs log:\n{m.log_tail(80)}") from e
        finally:
            m.cleanup()


def _run(m: StorefsMount) -> None:
    m.start()
    log = m.log_path.read_text()
    assert "cache.max_size (200.0 MiB) is larger than the cache disk" in log and "(40.0 MiB)" in log, log
    assert m.status()["cache_min_free_bytes"] == MIN_FREE

    # 2. clean copies fill the disk: eviction keeps min_free free (every file is uploaded first)
    art = m.path(ART)
    art.mkdir(parents=True)
    files = {f"f{i}.bin": payload(("minfree", i), FILE_SIZE) for i in range(FILES)}
    for name, data in files.items():
        write_blocks(art / name, data)
        m.flush()
    st = wait_status(m, lambda s: s["cache_free_bytes"] >= MIN_FREE and s["cache_evictions"] > 0, timeout=15)
    assert st["cache_evictions"] > 0, st
    assert st["cache_free_bytes"] >= MIN_FREE, f"{st['cache_free_bytes']} bytes free, min_free {MIN_FREE}"
    for name, data in files.items():  # the least recently used are dropped: reading them all caches them again
        assert sha256((art / name).read_bytes()) == sha256(data), f"{name} reads back wrong"
    m.unmount()

    # 3. other programs fill the disk to the last byte; the mount comes up and makes room at once
    filler = m.cache / "filler"
    fill(filler)
    assert disk_free(m.cache) < MiB
    m.start()
    log = m.log_path.read_text()
    assert "made room at mount: dropped" in log, log
    st = m.status()
    assert st["cache_free_bytes"] >= MIN_FREE, f"{st['cache_free_bytes']} bytes free after mounting on a full disk"
    assert st["cached_files"] < FILES
    new = payload("after", MiB)
    write_blocks(art / "new.bin", new)
    files["new.bin"] = new
    m.flush()
    for name, data in files.items():
        got = m.provider_read(f"{ART}/{name}")
        assert got is not None and sha256(got) == sha256(data), f"{name}: wrong or missing in the provider"
    filler.unlink()  # the rest of the files fit again: all read back right
    for name, data in files.items():
        assert sha256((art / name).read_bytes()) == sha256(data), f"{name} reads back wrong"
    assert m.status()["pending"] == 0
