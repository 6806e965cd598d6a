"""S3's limits checked at the operation, the mount-time name probe, and odd answers that fail their request alone,
against a small in-memory S3 on a local HTTP server (one that keeps '\\' in keys, or one that stores it as '/')."""

from __future__ import annotations

import errno
import http.server
import os
import socket
import threading
from dataclasses import replace
from urllib.parse import parse_qs, quote, unquote, urlsplit

import pytest

from storefs import errors
from storefs.config import S3ProviderConfig
from storefs.providers.base import ObjectMeta
from storefs.providers.s3 import limits
from storefs.providers.s3.codec import headers_for
from storefs.providers.s3.http import MAX_HEADERS
from storefs.providers.s3.provider import S3Provider
from storefs.view.health import ProviderHealth

NS = 1_000_000_000  # times are integer nanoseconds

BUCKET = "bkt"
LAST_MODIFIED = "Thu, 02 Jan 2025 03:04:05 GMT"


class TinyS3(http.server.BaseHTTPRequestHandler):
    """PUT, HEAD, DELETE and ListObjectsV2 on server.objects (key -> extra headers); server.backslash_to_slash
    makes it store '\\' as '/' as SeaweedFS does; server.busy answers every request 503 with Retry-After."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:  # quiet
        pass

    def _reply(self, status: int, headers: dict[str, str] | None = None, body: bytes = b"") -> None:
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _key(self) -> str:
        key = unquote(urlsplit(self.path).path)[len(f"/{BUCKET}/"):]
        return key.replace("\\", "/") if self.server.backslash_to_slash else key

    def _busy(self) -> bool:
        self.server.requests.append((self.command, unquote(self.path)))
        if self.server.busy:
            self._reply(503, {"Retry-After": "1"}, b"<Error><Code>SlowDown</Code></Error>")
        return bool(self.server.busy)

    def do_PUT(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if not self._busy():
            self.server.objects[self._key()] = {k: v for k, v in self.headers.items()
                                                if k.lower().startswith("x-amz-meta-")}
            self._reply(200, {"ETag": '"e"'})

    def do_HEAD(self) -> None:
        if self._busy():
            return
        if urlsplit(self.path).path.rstrip("/") == f"/{BUCKET}":
            self._reply(200)  # the bucket
            return
        meta = self.server.objects.get(self._key())
        if meta is None:
            self._reply(404)
        else:
            self._reply(200, {"Last-Modified": LAST_MODIFIED, "ETag": '"e"', **meta})

    def do_DELETE(self) -> None:
        if not self._busy():
            self.server.objects.pop(self._key(), None)
            self._reply(204)

    def do_GET(self) -> None:  # ListObjectsV2 only
        if self._busy():
            return
        prefix = parse_qs(urlsplit(self.path).query).get("prefix", [""])[0]
        if self.server.backslash_to_slash:
            prefix = prefix.replace("\\", "/")
        keys = sorted(k for k in self.server.objects if k.startswith(prefix))
        contents = "".join(f"<Contents><Key>{quote(k)}</Key><Size>0</Size><ETag>&quot;e&quot;</ETag>"
                           f"<LastModified>2025-01-02T03:04:05.000Z</LastModified></Contents>" for k in keys)
        self._reply(200, {"Content-Type": "application/xml"},
                    f'<?xml version="1.0"?><ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
                    f"<EncodingType>url</EncodingType><IsTruncated>false</IsTruncated>{contents}"
                    f"</ListBucketResult>".encode())


@pytest.fixture
def server():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), TinyS3)
    srv.daemon_threads = True
    srv.objects, srv.requests, srv.backslash_to_slash, srv.busy = {}, [], False, False
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield srv
    srv.shutdown()
    srv.server_close()


def provider(srv, **kw) -> S3Provider:
    cfg = S3ProviderConfig(name="s3", bucket=BUCKET, endpoint_url=f"http://127.0.0.1:{srv.server_address[1]}",
                           region="us-east-1", access_key_id="AK", secret_access_key="SK", path_style=True,
                           read_deadline=2.0, max_attempts=2)
    return S3Provider(replace(cfg, **kw))


def test_keys_over_1024_bytes_with_the_prefix_are_too_long(server):
    p = provider(server, prefix="team/")
    p.check_key("a" * (1024 - len("team/")))
    with pytest.raises(errors.NameTooLong, match="1025 bytes") as info:
        p.check_key("a" * (1024 - len("team/")) + "b")
    assert info.value.errno == errno.ENAMETOOLONG
    with pytest.raises(errors.NameTooLong):
        p.check_key("/".join(["é" * 125] * 5))  # four nested 250-byte folder names and a file: bytes, not chars
    limits.check_key("x" * limits.KEY_MAX_BYTES)


def test_metadata_over_2_kib_is_e2big_counted_as_the_headers_go(server):
    p = provider(server)
    meta = ObjectMeta(mtime_ns=1700000000 * NS, ctime_ns=1700000000 * NS, atime_ns=1700000000 * NS, uid=1000, gid=1000)
    p.check_meta("k", meta)
    for n in range(1, 200):  # as 200 setfattr calls would: refused at some point, never after S3's limit
        meta.xattrs[f"user.attr{n:03d}"] = b"value-%03d" % n
        headers = {k: v for k, v in headers_for(meta).items() if k.startswith("x-amz-meta-")}
        size = sum(len(k) + len(v) for k, v in headers.items())
        if size > limits.METADATA_MAX_BYTES:
            with pytest.raises(errors.MetadataTooLarge, match="2048") as info:
                p.check_meta("k", meta)
            assert info.value.errno == errno.E2BIG
            break
        p.check_meta("k", meta)
    else:
        pytest.fail("199 xattrs fit in 2 KiB")
    odd = ObjectMeta(mtime_ns=1_000_000_000, xattrs={"user.Big": b"\xff" * 1600})  # counted in the s3fs 'xattr' key too
    with pytest.raises(errors.MetadataTooLarge):
        p.check_meta("k", odd)


def test_the_name_probe_finds_a_server_that_stores_backslash_as_slash_and_cleans_up(server):
    server.backslash_to_slash = True
    p = provider(server, prefix="pre")
    p.check(writable=True)
    assert not p.backslash_kept and server.objects == {}  # the probe key and its folder marker are gone
    assert any(m == "PUT" and "\\" in path and "/bkt/pre/.storefs-probe-names-" in path
               for m, path in server.requests)
    with pytest.raises(errors.LayoutError, match="stores") as info:
        p.check_key("t1/image/b1/a1/back\\slash.png")
    assert info.value.errno == errno.EINVAL
    p.check_key("t1/image/b1/a1/plain.png")


def test_a_server_that_keeps_backslash_keeps_such_names_allowed(server):
    p = provider(server)
    p.check(writable=True)
    assert p.backslash_kept and server.objects == {}
    p.check_key("a\\b")


def test_a_failed_probe_never_fails_the_mount_and_allows_the_names(server, caplog):
    server.busy = True
    p = provider(server)
    with pytest.raises(errors.ProviderBusy):
        p.check()  # the bucket's own check answers 503: that one tells the operator
    server.busy = False
    real_put = p._requests.put

    def refused_put(*args, **kw):
        raise errors.AccessDenied("read-only credentials")
    p._requests.put = refused_put
    with caplog.at_level("WARNING"):
        p.check(writable=True)
    assert p.backslash_kept and "cannot tell whether it keeps" in caplog.text
    p._requests.put = real_put
    p.check_key("a\\b")


def test_an_object_with_many_headers_reads_and_one_with_too_many_fails_alone(server):
    server.objects["many"] = {f"x-amz-meta-k{i:03d}": f"v{i}" for i in range(120)}
    server.objects["toomany"] = {f"x-amz-meta-k{i:04d}": "v" for i in range(MAX_HEADERS + 10)}
    server.objects["fine"] = {"x-amz-meta-mode": "33188"}
    p = provider(server)
    health = ProviderHealth()
    info = health.call("s3", p.head, "many")
    assert len(info.xattrs) == 120 and info.xattrs["user.k119"] == b"v119"
    for _ in range(3):
        with pytest.raises(errors.ProviderError) as failed:
            health.call("s3", p.head, "toomany")
        assert not isinstance(failed.value, errors.ProviderUnavailable)
    assert health.answering("s3") and health.call("s3", p.head, "fine").mode == 0o100644
    # boto3's requests (a multipart copy HEADs its source) read it too: urllib3 parses with http.client
    assert len(p._boto.client.head_object(Bucket=BUCKET, Key="many")["Metadata"]) == 120


def test_a_busy_server_is_retried_after_its_retry_after_and_is_not_down(server):
    server.objects["k"] = {}
    server.busy = True
    p = provider(server)
    health = ProviderHealth()
    with pytest.raises(errors.ProviderBusy) as info:
        health.call("s3", p.head, "k")
    assert info.value.retry_after == 1.0 and health.answering("s3")
    heads = [r for r in server.requests if r[0] == "HEAD"]
    assert len(heads) == 2  # the lookup's 2 s deadline leaves room for one more try after the 1 s asked for
    server.busy = False
    assert health.call("s3", p.head, "k").size == 0


def test_only_a_connection_failure_marks_the_provider_down():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = S3ProviderConfig(name="s3", bucket=BUCKET, endpoint_url=f"http://127.0.0.1:{port}", region="us-east-1",
                           access_key_id="AK", secret_access_key="SK", path_style=True, read_deadline=0.5)
    p = S3Provider(cfg)
    health = ProviderHealth()
    with pytest.raises(errors.ProviderUnavailable):
        health.call("s3", p.head, "k")
    assert health.is_down("s3")


@pytest.mark.parametrize("kind", ["seaweed", "moto_server"])
def test_the_name_probe_on_real_servers(kind, request):
    """SeaweedFS stores '\\' as '/' (refused there), moto keeps it; either way the probe leaves nothing behind."""
    srv = request.getfixturevalue(kind)
    bucket = f"probe-{kind[:4]}-{os.urandom(4).hex()}"
    srv.create_bucket(bucket)
    cfg = S3ProviderConfig(name="s3", bucket=bucket, endpoint_url=srv.endpoint_url, region=srv.region,
                           access_key_id=srv.access_key, secret_access_key=srv.secret_key, path_style=True,
                           prefix="team")
    p = S3Provider(cfg)
    try:
        p.check(writable=True)
        assert p.backslash_kept is (kind == "moto_server")
        client = srv.client()
        assert client.list_objects_v2(Bucket=bucket).get("KeyCount", 0) == 0
        client.close()
    finally:
        p.close()
