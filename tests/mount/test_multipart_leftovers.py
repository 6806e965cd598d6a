"""A multipart upload cut short by `kill -9` does not stay in the bucket: the next mount on the same cache aborts
it (its id was in the journal), and uploads the file again, whole, from the journal.

The mount reaches SeaweedFS through a slowed TcpGate, so that its upload of a 15 MiB file in three parts
lasts seconds and the kill lands while the upload is open; the test's own client goes straight to the server.
"""

from __future__ import annotations

import sqlite3
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import require_fuse

from storefs.testing.backends import S3Backend
from storefs.testing.data import ART, payload
from storefs.testing.mount import StorefsMount
from storefs.testing.pair import GatedBackend, gated

pytestmark = pytest.mark.timeout(240)

MiB = 1 << 20
SIZE = 15 * MiB  # three parts of 5 MiB: a multipart upload
SLOW = 0.25  # seconds each relayed piece waits: at most 1 MiB/s per connection, so each part takes 5 s or more
WAIT = 60.0  # seconds, at most, for the upload to open and for the next mount to abort it


@pytest.fixture
def slow_bucket(seaweed, tmp_path: Path) -> Iterator[GatedBackend]:
    require_fuse()
    bucket = S3Backend(seaweed, f"t-{uuid.uuid4().hex[:20]}", multipart_threshold="5MiB",
                       multipart_chunksize="5MiB")
    try:
        with gated(bucket) as slow:
            yield slow
    finally:
        bucket.close()


def wait_for(what: str, get: Callable[[], object], timeout: float = WAIT) -> object:
    """get()'s first truthy answer; fails naming what once timeout has passed."""
    deadline = time.monotonic() + timeout
    while not (got := get()):
        assert time.monotonic() < deadline, f"{what}: not after {timeout:.0f}s"
        time.sleep(0.05)
    return got


def open_uploads(bucket: GatedBackend) -> set[str]:
    """The ids of the multipart uploads the server holds open in the bucket."""
    answer = bucket.client.list_multipart_uploads(Bucket=bucket.bucket)
    return {u["UploadId"] for u in answer.get("Uploads", [])}


def noted(m: StorefsMount) -> set[str]:
    """The upload ids the mount's journal holds as open (read beside the daemon, as SQLite's WAL allows)."""
    with sqlite3.connect(f"file:{m.cache / 'journal.db'}?mode=ro", uri=True) as c:
        return {row[0] for row in c.execute("SELECT upload_id FROM uploads")}


def test_kill9_mid_upload_leaves_no_upload_open_after_the_next_mount(slow_bucket: GatedBackend,
                                                                      tmp_path: Path) -> None:
    m = StorefsMount(tmp_path, slow_bucket)
    try:
        m.start()
        data = payload("big", SIZE)
        (m.mnt / ART).mkdir(parents=True)
        slow_bucket.gate.delay = SLOW
        (m.mnt / ART / "big.mp4").write_bytes(data)
        cut = wait_for("a multipart upload open on the server and noted in the journal",
                       lambda: open_uploads(slow_bucket) & noted(m))
        m.kill9()
        assert open_uploads(slow_bucket) >= cut, "the kill came too late: the upload is not open any more"
        assert slow_bucket.read(f"{ART}/big.mp4") is None

        slow_bucket.gate.delay = 0.0
        m.start()
        wait_for("the cut upload aborted by the next mount", lambda: not open_uploads(slow_bucket) & cut)
        m.flush()
        assert slow_bucket.read(f"{ART}/big.mp4") == data  # uploaded again, whole, from the journal
        assert open_uploads(slow_bucket) == set() and noted(m) == set()
        assert "aborted 1 multipart uploads an earlier run left unfinished" in m.log_path.read_text()
    except BaseException:
        print(m.log_tail())
        raise
    finally:
        m.cleanup()
