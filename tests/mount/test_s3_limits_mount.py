"""One unusual object never takes the S3 provider down, and no xattr is dropped on its way to S3 (SeaweedFS).

An object another S3 client wrote with 120 x-amz-meta-* keys (http.client alone reads at most
100 header lines) reads through the mount, xattrs and all, while the files beside it keep
answering; xattr names S3 cannot keep as metadata keys land in s3fs's 'xattr' key and read back.
"""

from __future__ import annotations

import json
import os
import urllib.parse
from typing import Any

import pytest

from storefs.testing.data import ART
from storefs.testing.mount import StorefsMount

pytestmark = pytest.mark.timeout(300)


@pytest.fixture
def provider_kind() -> str:
    return "s3"


def s3(store: StorefsMount) -> Any:
    return store.backend.client


def test_an_object_with_120_metadata_keys_reads_and_the_rest_stays_fine(store: StorefsMount) -> None:
    metadata = {f"k{i:03d}": f"value-{i}" for i in range(120)}
    s3(store).put_object(Bucket=store.backend.bucket, Key=f"{ART}/many.png", Body=b"many headers",
                         Metadata=metadata)
    s3(store).put_object(Bucket=store.backend.bucket, Key=f"{ART}/plain.png", Body=b"plain")
    art = store.mnt / ART
    many = art / "many.png"
    for _ in range(3):  # not once by luck: every HEAD of it is read
        assert os.stat(many).st_size == len(b"many headers")
    assert many.read_bytes() == b"many headers"
    assert os.getxattr(many, "user.k119") == b"value-119"
    names = os.listxattr(many)
    assert all(f"user.{k}" in names for k in metadata)
    assert (art / "plain.png").read_bytes() == b"plain" and sorted(os.listdir(art)) == ["many.png", "plain.png"]
    assert "is not answering" not in store.log_tail(200)


def test_xattr_names_s3_cannot_keep_as_keys_go_in_s3fs_xattr_key_and_read_back(store: StorefsMount) -> None:
    art = store.mnt / ART
    art.mkdir(parents=True)
    f = art / "odd.png"
    f.write_bytes(b"x")
    odd = {"user.Upper": b"kept", "user.mtime": b"not the file's", "user.héllo": b"\xff\x00"}
    for name, value in odd.items():
        os.setxattr(f, name, value)
    os.setxattr(f, "user.plain", b"p")
    store.flush()
    head = s3(store).head_object(Bucket=store.backend.bucket, Key=f"{ART}/odd.png")
    assert head["Metadata"]["plain"] == "p"
    doc = json.loads(urllib.parse.unquote(head["Metadata"]["xattr"]))
    assert set(doc) == {"user.Upper", "user.mtime", "user.héllo"}
    store.remount(empty_cache=True)  # read back from the bucket, not the cache
    assert {n: os.getxattr(f, n) for n in odd} == odd and os.getxattr(f, "user.plain") == b"p"
