"""What becomes of a change SeaweedFS will not take as it is, on a real mount: refused for good, it is
parked (status shows it with the reason, flush says so and fails, unmount finishes, `storefs retry`
queues it again once fixed); beaten by another writer (a 412), it goes to a conflict copy.

The refusal is made as an operator could make it: changes written under a short key prefix wait in
the journal (the daemon is killed before uploading them), and the next mount is configured with a
prefix long enough to push one key past S3's 1,024 bytes (SeaweedFS: KeyTooLongError, a 400).
"""

from __future__ import annotations

import re

import pytest

from storefs.testing.data import ART
from storefs.testing.mount import StorefsMount

pytestmark = pytest.mark.timeout(300)

#: long enough that the deep key below passes 1,024 bytes with it, short enough for the folders
LONG_PREFIX = "p" * 299 + "/"
DEEP = f"{ART}/{'d' * 250}/{'e' * 250}/{'f' * 240}.png"
BODY = b"refused at first, uploaded after the fix"


@pytest.fixture
def provider_kind() -> str:
    return "s3"


@pytest.mark.storefs_config(writeback_delay="1h")
def test_a_refused_key_is_parked_reported_and_retried_after_the_fix(store: StorefsMount) -> None:
    assert len(DEEP.encode()) < 1024 < len((LONG_PREFIX + DEEP).encode())
    path = store.mnt / DEEP
    path.parent.mkdir(parents=True)
    path.write_bytes(BODY)
    store.kill9()  # the change waits in the journal

    store.backend.extra["prefix"] = LONG_PREFIX
    store.start()
    res = store.storefs("flush", str(store.mnt), check=False)
    assert res.returncode != 0 and "parked" in res.stderr and "KeyTooLong" in res.stderr, res.stderr
    st = store.status()
    assert st["parked_changes"] == 1 and st["errors"] == [], st
    [parked] = st["parked"]
    assert parked["key"] == DEEP and "KeyTooLong" in parked["error"], parked
    assert path.read_bytes() == BODY  # kept in the cache, readable
    assert "parked:" in store.storefs("status", str(store.mnt)).stdout
    res = store.storefs("unmount", str(store.mnt))  # finishes instead of waiting
    assert "parked" in res.stderr and not store.mounted, res.stderr
    store.pid = None

    del store.backend.extra["prefix"]  # the operator fixes the cause
    store.start()
    assert store.status()["parked_changes"] == 1  # kept across the remount, not retried by itself
    res = store.storefs("retry", str(store.mnt))
    assert "1 parked changes back" in res.stderr, res.stderr
    store.flush()
    assert store.provider_read(DEEP) == BODY
    assert store.status()["parked_changes"] == 0


@pytest.mark.storefs_config(writeback_delay="1h")
def test_a_key_another_client_wrote_first_keeps_theirs_and_gets_a_conflict_copy(store: StorefsMount) -> None:
    key = f"{ART}/keep.png"
    (store.mnt / ART).mkdir(parents=True)
    (store.mnt / key).write_bytes(b"mine")
    store.backend.client.put_object(Bucket=store.backend.bucket, Key=key, Body=b"theirs")
    store.flush()
    named = re.compile(rf"{ART}/keep\.conflict-[\w-]+-\d{{8}}T\d{{6}}Z\.png")
    copies = [k for k in store.provider_keys(ART) if named.fullmatch(k)]
    assert len(copies) == 1, store.provider_keys(ART)
    assert store.provider_read(key) == b"theirs" and store.provider_read(copies[0]) == b"mine"
    assert (store.mnt / copies[0]).read_bytes() == b"mine"
    st = store.status()
    assert st["conflicts_total"] == 1 and st["conflicts"][0]["conflict_key"] == copies[0], st["conflicts"]
    assert "conflict:   " in store.storefs("status", str(store.mnt)).stdout
