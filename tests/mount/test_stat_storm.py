"""`ls -l` of a folder another S3 client filled: every name stat'ed, each needing a HEAD for its
metadata, asked ahead of the stats (storefs/view/ahead.py). What each file shows must be what
its metadata says (s3fs's and rclone's forms, and none), through the real `ls -l` and `stat`."""

from __future__ import annotations

import os
import stat
import subprocess
from concurrent.futures import ThreadPoolExecutor

import pytest

pytestmark = pytest.mark.timeout(300)

FOLDER = "t1/image/b1/wide"
FILES = 400


@pytest.fixture
def provider_kind() -> str:
    return "s3"


def expected(i: int) -> tuple[dict[str, str], int, int, int]:
    """(metadata, mode, mtime_ns, uid) of file i: s3fs's form, rclone's, or none (LastModified, 0644)."""
    if i % 3 == 0:
        return {"mode": str(0o100600 | (i % 8) << 3), "mtime": f"{1_600_000_000 + i}", "uid": str(1000 + i),
                "gid": "50"}, 0o100600 | (i % 8) << 3, (1_600_000_000 + i) * 10**9, 1000 + i
    if i % 3 == 1:
        return {"mtime": f"{1_650_000_000 + i}.123456789", "mode": oct(0o100640)[2:]}, 0o100640, \
            (1_650_000_000 + i) * 10**9 + 123_456_789, -1
    return {}, 0o100644, -1, -1


def test_ls_l_of_a_folder_another_client_filled(store):
    c, b = store.backend.client, store.backend.bucket

    def put(i: int) -> None:
        meta, *_ = expected(i)
        c.put_object(Bucket=b, Key=f"{FOLDER}/f{i:04d}.png", Body=b"\x89PNG" + bytes([i % 256]), Metadata=meta)
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(put, range(FILES)))
    for empty_cache in (False, True):
        store.remount(empty_cache=empty_cache)
        out = subprocess.run(["ls", "-l", "--time-style=+%s", str(store.mnt / FOLDER)], capture_output=True,
                             text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        lines = out.stdout.splitlines()
        assert lines[0].startswith("total") and len(lines) == FILES + 1, lines[:3]
        for i in range(FILES):
            _meta, mode, mtime_ns, uid = expected(i)
            st = os.stat(store.mnt / FOLDER / f"f{i:04d}.png")
            assert st.st_mode == mode, (i, oct(st.st_mode))
            assert stat.S_ISREG(st.st_mode) and st.st_size == 5
            if mtime_ns >= 0:
                assert st.st_mtime_ns == mtime_ns, (i, st.st_mtime_ns)
            if uid >= 0:
                assert (st.st_uid, st.st_gid) == (uid, 50), i
