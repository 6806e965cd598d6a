"""sse, kms_key_id and storage_class on every upload (PUT, multipart, copy: a rename keeps them), and profile."""

from __future__ import annotations

import http.server
import os
import threading
import uuid
from dataclasses import replace

import pytest

from storefs.config import S3ProviderConfig
from storefs.providers.base import ObjectMeta
from storefs.providers.s3 import S3Provider
from storefs.providers.s3.boto import Boto
from storefs.providers.s3.retry import RetryPolicy
from storefs.testing.moto import MotoServer

MiB = 1 << 20
SSE = "x-amz-server-side-encryption"
KMS_KEY = "x-amz-server-side-encryption-aws-kms-key-id"
CLASS = "x-amz-storage-class"
KEY_ARN = "arn:aws:kms:us-east-1:123456789012:key/0b7d4a3e-1111-2222-3333-444455556666"
COPY_ANSWER = (b'<?xml version="1.0"?><CopyObjectResult><ETag>&quot;c0&quot;</ETag>'
               b"<LastModified>2025-01-01T00:00:00.000Z</LastModified></CopyObjectResult>")


class Recorder(http.server.BaseHTTPRequestHandler):
    """Plays S3 for single requests: every PUT stored, every HEAD answered as the file that was put."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:
        pass

    def do_PUT(self) -> None:
        n = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(n)
        self.server.seen.append((self.path, {k.lower(): v for k, v in self.headers.items()}))
        body = COPY_ANSWER if "x-amz-copy-source" in self.headers else b""
        self.send_response(200)
        self.send_header("ETag", '"e1"')
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_HEAD(self) -> None:
        self.send_response(200)
        self.send_header("ETag", '"e1"')
        self.send_header("Content-Length", "3")
        self.send_header("Last-Modified", "Wed, 01 Jan 2025 00:00:00 GMT")
        self.end_headers()


@pytest.fixture
def recorder():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    srv.daemon_threads = True
    srv.seen = []
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield srv
    srv.shutdown()
    srv.server_close()


def provider_on(endpoint: str, bucket: str = "bkt", **options) -> S3Provider:
    return S3Provider(S3ProviderConfig(name="s3", bucket=bucket, endpoint_url=endpoint, region="us-east-1",
                                       access_key_id="testing", secret_access_key="testing", path_style=True,
                                       multipart_threshold=5 * MiB, multipart_chunksize=5 * MiB,
                                       max_attempts=1, **options))


def meta() -> ObjectMeta:
    return ObjectMeta(content_type="text/plain", mtime_ns=1_500_000_000, mode=0o644)


def test_each_put_and_copy_carries_the_encryption_and_storage_class(recorder, tmp_path):
    """A file's PUT, a folder marker's PUT, a rename's copy and a chmod's copy (metadata replaced): all signed."""
    src = tmp_path / "f"
    src.write_bytes(b"abc")
    p = provider_on(f"http://127.0.0.1:{recorder.server_address[1]}", sse="aws:kms", kms_key_id=KEY_ARN,
                    storage_class="STANDARD_IA")
    try:
        p.put_file("a/f.txt", str(src), meta())
        p.make_dir("a/d", meta())
        p.copy("a/f.txt", "a/g.txt")
        p.set_meta("a/g.txt", meta())
    finally:
        p.close()
    assert [path for path, _ in recorder.seen] == ["/bkt/a/f.txt", "/bkt/a/d/", "/bkt/a/g.txt", "/bkt/a/g.txt"]
    for path, headers in recorder.seen:
        assert (headers[SSE], headers[KMS_KEY], headers[CLASS]) == ("aws:kms", KEY_ARN, "STANDARD_IA"), path
        signed = headers["authorization"].split("SignedHeaders=")[1].split(",")[0].split(";")
        assert {SSE, KMS_KEY, CLASS} <= set(signed), path
    assert recorder.seen[2][1]["x-amz-metadata-directive"] == "COPY"
    assert recorder.seen[3][1]["x-amz-metadata-directive"] == "REPLACE"


def test_without_options_no_upload_header_is_sent(recorder, tmp_path):
    """Unset, the bucket's defaults apply: storefs sends none of the three (an S3-compatible store may refuse them)."""
    src = tmp_path / "f"
    src.write_bytes(b"abc")
    p = provider_on(f"http://127.0.0.1:{recorder.server_address[1]}")
    try:
        p.put_file("f.txt", str(src), meta())
        p.copy("f.txt", "g.txt")
    finally:
        p.close()
    assert len(recorder.seen) == 2
    for _, headers in recorder.seen:
        assert not {SSE, KMS_KEY, CLASS} & set(headers)


def test_sse_s3_alone_sends_no_key(recorder, tmp_path):
    src = tmp_path / "f"
    src.write_bytes(b"abc")
    p = provider_on(f"http://127.0.0.1:{recorder.server_address[1]}", sse="AES256")
    try:
        p.put_file("f.txt", str(src), meta())
    finally:
        p.close()
    (_, headers), = recorder.seen
    assert headers[SSE] == "AES256" and KMS_KEY not in headers and CLASS not in headers


@pytest.fixture(scope="module")
def moto():
    if not MotoServer.available():
        pytest.skip("moto's S3 server is not installed: pip install 'moto[server]'")
    with MotoServer() as srv:
        yield srv


def test_on_moto_uploads_and_renames_keep_sse_and_storage_class(moto, tmp_path):
    """What the server records: a single PUT, a multipart upload, a rename of each (a copy, a multipart copy),
    a chmod (a copy replacing the metadata)."""
    bucket = f"t-{uuid.uuid4().hex[:20]}"
    moto.create_bucket(bucket)
    small, big = tmp_path / "small", tmp_path / "big"
    small.write_bytes(b"small")
    big.write_bytes(os.urandom(6 * MiB))
    p = provider_on(moto.endpoint_url, bucket, sse="AES256", storage_class="ONEZONE_IA")
    client = moto.client()
    try:
        p.put_file("s.bin", str(small), meta())
        p.put_file("m.bin", str(big), meta())
        p.copy("s.bin", "s2.bin")
        p.copy_limit = MiB  # the multipart copy boto3 makes of objects above 5 GiB
        p.copy("m.bin", "m2.bin")
        p.set_meta("s2.bin", replace(meta(), mode=0o600))
        for key in ("s.bin", "m.bin", "s2.bin", "m2.bin"):
            head = client.head_object(Bucket=bucket, Key=key)
            assert (head.get("ServerSideEncryption"), head.get("StorageClass")) == ("AES256", "ONEZONE_IA"), key
        assert client.head_object(Bucket=bucket, Key="m.bin")["ETag"].strip('"').endswith("-2")  # multipart
    finally:
        p.close()
        client.close()


def test_on_moto_kms_key_is_recorded(moto, tmp_path):
    bucket = f"t-{uuid.uuid4().hex[:20]}"
    moto.create_bucket(bucket)
    src = tmp_path / "f"
    src.write_bytes(os.urandom(6 * MiB))
    p = provider_on(moto.endpoint_url, bucket, sse="aws:kms", kms_key_id=KEY_ARN)
    client = moto.client()
    try:
        p.put_file("k.bin", str(src), meta())
        p.copy("k.bin", "k2.bin")
        for key in ("k.bin", "k2.bin"):
            head = client.head_object(Bucket=bucket, Key=key)
            assert (head.get("ServerSideEncryption"), head.get("SSEKMSKeyId")) == ("aws:kms", KEY_ARN), key
    finally:
        p.close()
        client.close()


def test_a_named_profile_gives_the_credentials_and_region(tmp_path, monkeypatch):
    """profile: boto3 reads that profile of ~/.aws/config and ~/.aws/credentials (here, the files AWS_* name)."""
    (tmp_path / "config").write_text("[profile media]\nregion = eu-west-3\n")
    (tmp_path / "credentials").write_text("[media]\naws_access_key_id = AKMEDIA\naws_secret_access_key = SKMEDIA\n")
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
                "AWS_DEFAULT_REGION", "AWS_REGION"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "credentials"))
    cfg = S3ProviderConfig(name="s3", bucket="bkt", profile="media")
    boto = Boto(cfg, RetryPolicy.from_config(cfg))
    try:
        creds = boto.frozen_credentials()
        assert (creds.access_key, creds.secret_key) == ("AKMEDIA", "SKMEDIA")
        assert boto.region == "eu-west-3"
    finally:
        boto.close()
