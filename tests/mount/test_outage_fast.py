"""Outages noticed in seconds, with the default timeouts: an uncached read fails with EIO within
READ_FAILS_WITHIN of a dead (killed: connection refused) or frozen (SIGSTOP: connections accepted,
never answered) server, with one log line, while cached reads, stats and writes keep working; and
the changes written during the outage reach the server within QUEUE_MOVES_WITHIN of it answering
again (a probe notices it is back, not the uploader's retry timer). A restarted SeaweedFS answers HEADs
and listings seconds before it stores a PUT (4.8 s here, for any client): "answering again" is when a
PUT of another client succeeds.

The tests run their own SeaweedFS (killing the session's would slow every other test down)."""

from __future__ import annotations

import errno
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from storefs.testing.data import ART, create_file, payload
from storefs.testing.mount import StorefsMount
from storefs.testing.seaweed import SeaweedServer, weed_binary

pytestmark = [pytest.mark.timeout(120), pytest.mark.parametrize("provider_kind", ["s3"]),
              pytest.mark.skipif(weed_binary() is None, reason="SeaweedFS (weed) is not installed")]

#: the issue's bound on an uncached read's EIO, from the read's start
READ_FAILS_WITHIN = 10.0
#: the issue's bound from the server answering again until the queue has delivered what waited
QUEUE_MOVES_WITHIN = 2.0
COLD = "t1/image/b2/cold/cold.bin"  # put by another client, in a folder the mount has not listed
CANARY = "t1/image/b3/canary/up.bin"  # put by another client until the server stores it again


@pytest.fixture(scope="module")
def seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedServer]:
    """A SeaweedFS of this module's own, stopped and frozen by its tests."""
    with SeaweedServer(str(tmp_path_factory.mktemp("seaweed-outage"))) as server:
        yield server


def _in_bucket(store: StorefsMount, key: str) -> bool:
    from botocore.exceptions import BotoCoreError, ClientError
    try:
        store.backend.client.head_object(Bucket=store.backend.bucket, Key=key)
        return True
    except (BotoCoreError, ClientError):
        return False


def _stores_again(store: StorefsMount) -> float:
    """Put CANARY with another client until the server stores it; the monotonic time it did."""
    from botocore.exceptions import BotoCoreError, ClientError
    deadline = time.monotonic() + 30
    while True:
        try:
            store.backend.client.put_object(Bucket=store.backend.bucket, Key=CANARY, Body=b"up")
            return time.monotonic()
        except (BotoCoreError, ClientError):
            assert time.monotonic() < deadline, "the server stores nothing 30 s after its restart"
            time.sleep(0.05)


def _read(path: Path) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _outage_while(store: StorefsMount, seaweed: SeaweedServer, how: str) -> None:
    """Against a server made unreachable by how (dead or frozen): the bounds of the module docstring."""
    mnt = store.mnt
    store.backend.client.put_object(Bucket=store.backend.bucket, Key=COLD, Body=payload("cold", 100_000))
    (mnt / ART).mkdir(parents=True)
    (mnt / ART / "warm.bin").write_bytes(b"warm")
    store.flush()
    assert os.stat(mnt / COLD).st_size == 100_000  # its metadata known, its data never read
    assert _read(mnt / ART / "warm.bin") == b"warm"
    if how == "dead":
        seaweed.stop_server()
    else:
        seaweed.pause()
    try:
        t0 = time.monotonic()
        try:
            got = _read(mnt / COLD)
        except OSError as e:
            error = e
        else:
            st = store.status()
            raise AssertionError(f"the uncached read of {len(got)} bytes succeeded with the server {how} after "
                                 f"{time.monotonic() - t0:.2f}s (weed pid {seaweed.proc and seaweed.proc.pid}, "
                                 f"paused {seaweed.paused}; fetched {st.get('bytes_fetched')} bytes)")
        took = time.monotonic() - t0
        print(f"{how} server: uncached read failed after {took:.2f}s")
        assert error.errno == errno.EIO, error
        assert took < READ_FAILS_WITHIN, f"the uncached read failed after {took:.1f}s ({how} server)"
        t0 = time.monotonic()
        with pytest.raises(OSError) as again:
            _read(mnt / COLD)
        assert again.value.errno == errno.EIO and time.monotonic() - t0 < 1.0, "a second read waits again"
        lines = [line for line in store.log_path.read_text(errors="replace").splitlines()
                 if "cold.bin" in line and ("ERROR" in line or "WARNING" in line)]
        assert len(lines) == 1 and "EIO" in lines[0], lines  # the kernel's retry and ours: no second line
        # what the mount knows keeps working
        assert _read(mnt / ART / "warm.bin") == b"warm"
        assert os.stat(mnt / COLD).st_size == 100_000
        tried = store.status()["upload_failures"]
        written = {f"late{i}.bin": payload(f"late/{i}", 5000 + i) for i in range(3)}
        for name, data in written.items():
            create_file(mnt / ART / name, data)
        time.sleep(2)  # ten times the write-back delay: the changes wait for the provider, untried
        st = store.status()
        assert st["dirty_files"] >= len(written) and st["uploading"] == 0, st
        assert st["upload_failures"] == tried, f"uploads tried while the server is known to be {how}: {st}"
    finally:
        if how == "dead":
            seaweed.restart_server()
        else:
            seaweed.resume()
    back = _stores_again(store)
    missing = set(written)
    while missing and time.monotonic() - back < QUEUE_MOVES_WITHIN + 10:
        missing = {n for n in missing if not _in_bucket(store, f"{ART}/{n}")}
        time.sleep(0.05)
    took = time.monotonic() - back
    print(f"{how} server: the changes of the outage in the bucket {took:.2f}s after it answered again")
    assert not missing and took < QUEUE_MOVES_WITHIN, (
        f"{sorted(missing) or 'all'} in the bucket {took:.1f}s after the {how} server answered again")
    for name, data in written.items():
        assert store.provider_read(f"{ART}/{name}") == data
    assert _read(mnt / COLD) == payload("cold", 100_000)


def test_a_dead_server_fails_reads_in_seconds_and_gets_the_queue_at_once(store, seaweed):
    """Killed server: uncached read EIO within 10 s, the changes land within 2 s of its restart."""
    _outage_while(store, seaweed, "dead")


def test_a_frozen_server_fails_reads_in_seconds_and_gets_the_queue_at_once(store, seaweed):
    """Frozen server (SIGSTOP): uncached read EIO within 10 s, the changes land within 2 s of the thaw."""
    _outage_while(store, seaweed, "frozen")
