"""The hot S3 requests against a local HTTP server playing S3: what they send, and each odd answer as its error."""

from __future__ import annotations

import http.server
import socket
import threading
from collections import namedtuple
from datetime import UTC, datetime, timedelta

import pytest
from botocore.credentials import RefreshableCredentials

from storefs import __version__, errors
from storefs.config import S3ProviderConfig
from storefs.providers.s3.boto import Boto
from storefs.providers.s3.errors import ErrorTable
from storefs.providers.s3.http import Timeouts
from storefs.providers.s3.requests import Endpoint, Payload, S3Requests, conditions
from storefs.providers.s3.retry import RetryPolicy
from storefs.providers.s3.sign import EMPTY_SHA256

Creds = namedtuple("Creds", "access_key secret_key token")
T = Timeouts(2.0, 2.0)
LISTING = (b'<?xml version="1.0"?><ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
           b"<EncodingType>url</EncodingType><IsTruncated>true</IsTruncated>"
           b"<NextContinuationToken>next+1</NextContinuationToken>"
           b"<CommonPrefixes><Prefix>p/sub+dir%2B/</Prefix></CommonPrefixes>"
           b"<Contents><Key>p/a%20b.txt</Key><Size>3</Size><ETag>&quot;e1&quot;</ETag>"
           b"<LastModified>2025-01-02T03:04:05.000Z</LastModified></Contents></ListBucketResult>")


class FakeS3(http.server.BaseHTTPRequestHandler):
    """Answers each request from server.script[(method, path)] (status, headers, body), 404 otherwise."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:  # quiet
        pass

    def _serve(self) -> None:
        n = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(n) if n else b""
        self.server.seen.append((self.command, self.path, self.headers, body))
        status, headers, answer = self.server.script.get((self.command, self.path.split("?")[0]), (404, {}, b""))
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(answer)

    do_GET = do_PUT = do_HEAD = do_DELETE = do_POST = _serve


@pytest.fixture
def server():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FakeS3)
    srv.daemon_threads = True
    srv.seen, srv.script = [], {}
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield srv
    srv.shutdown()
    srv.server_close()


def requests_for(origin: str, creds=lambda: Creds("AK", "SK", None)) -> S3Requests:
    host = origin.split("://", 1)[1]
    endpoint = Endpoint(origin=origin, host=host, objects="/bkt/", listing="/bkt")
    return S3Requests("bkt", "us-east-1", ErrorTable("bkt", origin), lambda: endpoint, creds)


def origin_of(srv) -> str:
    return f"http://127.0.0.1:{srv.server_address[1]}"


def test_every_request_says_storefs_and_is_signed(server):
    r = requests_for(origin_of(server))
    server.script = {("HEAD", "/bkt/k"): (200, {"ETag": '"e"'}, b""),
                     ("GET", "/bkt/k"): (206, {}, b"abc"),
                     ("PUT", "/bkt/k"): (200, {"ETag": '"e2"'}, b""),
                     ("GET", "/bkt"): (200, {}, LISTING),
                     ("DELETE", "/bkt/k"): (204, {}, b"")}
    assert r.head("k", T)["etag"] == '"e"'
    assert r.get("k", 0, 3, T)[0] == b"abc"
    assert r.put("k", Payload(b"xyz", EMPTY_SHA256), 3, {"content-type": "text/plain"}, T) == '"e2"'
    r.delete("k", T)
    page = r.list_page("p/", T, delimiter="/")
    assert page.prefixes == ["p/sub dir+/"] and page.next_token == "next+1"
    assert [(o.key, o.size, o.etag) for o in page.objects] == [("p/a b.txt", 3, "e1")]
    assert page.objects[0].modified_ns == int(datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC).timestamp()) * 1_000_000_000
    assert len(server.seen) == 5
    for method, _, headers, _ in server.seen:
        assert headers["User-Agent"] == f"storefs/{__version__}", method
        assert headers["Authorization"].startswith("AWS4-HMAC-SHA256 Credential=AK/")
    assert server.seen[1][2]["Range"] == "bytes=0-2"
    assert server.seen[2][3] == b"xyz" and server.seen[2][2]["Content-Type"] == "text/plain"
    r.close()


def test_conditions_are_sent_as_s3_names_them(server):
    """If-None-Match: * and If-Match on a PUT, x-amz-copy-source-if-match on a copy, If-Match on a DELETE;
    a 412 to any of them is a Conflict, and an unconditional request carries none."""
    r = requests_for(origin_of(server))
    server.script = {("PUT", "/bkt/new"): (200, {"ETag": '"n"'}, b""),
                     ("PUT", "/bkt/taken"): (412, {}, b"<Error><Code>PreconditionFailed</Code></Error>"),
                     ("PUT", "/bkt/racing"): (409, {}, b"<Error><Code>ConditionalRequestConflict</Code></Error>"),
                     ("PUT", "/bkt/dst"): (412, {}, b"<Error><Code>PreconditionFailed</Code></Error>"),
                     ("DELETE", "/bkt/k"): (412, {}, b"<Error><Code>PreconditionFailed</Code></Error>")}
    empty = Payload(b"", EMPTY_SHA256)
    assert r.put("new", empty, 0, conditions(if_absent=True), T) == '"n"'
    r.put("new", empty, 0, {}, T)
    for key, cond in (("taken", conditions(if_match='"e1"')), ("racing", conditions(if_match="e1"))):
        with pytest.raises(errors.Conflict):
            r.put(key, empty, 0, cond, T)
    with pytest.raises(errors.Conflict):
        r.copy("src", "dst", None, T, if_match="e2")
    with pytest.raises(errors.Conflict):
        r.delete("k", T, if_match="e3")
    sent = [(m, p, h.get("If-None-Match"), h.get("If-Match"), h.get("x-amz-copy-source-if-match"))
            for m, p, h, _ in server.seen]
    assert sent == [("PUT", "/bkt/new", "*", None, None), ("PUT", "/bkt/new", None, None, None),
                    ("PUT", "/bkt/taken", None, '"e1"', None), ("PUT", "/bkt/racing", None, '"e1"', None),
                    ("PUT", "/bkt/dst", None, None, '"e2"'), ("DELETE", "/bkt/k", None, '"e3"', None)]
    signed = server.seen[0][2]["Authorization"].split("SignedHeaders=")[1].split(",")[0].split(";")
    assert "if-none-match" in signed  # the condition is part of what the signature covers
    r.close()


def test_each_odd_answer_fails_its_own_request_only(server):
    r = requests_for(origin_of(server))
    ok = (206, {}, b"fine")
    server.script = {
        ("HEAD", "/bkt/missing"): (404, {}, b""),
        ("GET", "/bkt/denied"): (403, {}, b"<Error><Code>AccessDenied</Code></Error>"),
        ("PUT", "/bkt/busy"): (503, {}, b"<Error><Code>SlowDown</Code></Error>"),
        ("PUT", "/bkt/odd"): (400, {}, b"<Error><Code>AuthorizationHeaderMalformed</Code></Error>"),
        ("PUT", "/bkt/huge"): (400, {}, b"<Error><Code>EntityTooLarge</Code><Message>5 GiB</Message></Error>"),
        ("GET", "/bkt/norange"): (200, {}, b"whole"),
        ("GET", "/bkt/toolong"): (206, {}, b"x" * 100),
        ("GET", "/bkt"): (200, {}, b"<html>not a listing</html>"),
        ("PUT", "/bkt/copied"): (200, {}, b"<Error><Code>InternalError</Code><Message>later</Message></Error>"),
        ("PUT", "/bkt/copied-ok"): (200, {}, b"<CopyObjectResult><ETag>&quot;c&quot;</ETag></CopyObjectResult>"),
        ("DELETE", "/bkt/gone"): (404, {}, b"<Error><Code>NoSuchKey</Code></Error>"),
        ("GET", "/bkt/ok"): ok,
    }
    failures = [
        (lambda: r.head("missing", T), errors.NotFound),
        (lambda: r.get("denied", 0, 4, T), errors.AccessDenied),
        (lambda: r.put("busy", Payload(b"", EMPTY_SHA256), 0, {}, T), errors.ProviderBusy),
        (lambda: r.put("odd", Payload(b"", EMPTY_SHA256), 0, {}, T), errors.Rejected),
        (lambda: r.put("huge", Payload(b"", EMPTY_SHA256), 0, {}, T), errors.TooLarge),
        (lambda: r.get("norange", 10, 4, T), errors.ProviderError),
        (lambda: r.get("toolong", 0, 4, T), errors.ProviderError),
        (lambda: r.list_page("p/", T), errors.ProviderError),
        (lambda: r.copy("src", "copied", None, T), errors.ProviderBusy),
    ]
    for call, cls in failures:
        with pytest.raises(cls) as ei:
            call()
        assert type(ei.value) is cls, (cls, ei.value)
        assert r.get("ok", 0, 4, T)[0] == b"fine"  # the next request goes the same way, and is served
    assert r.copy("src", "copied-ok", {"content-type": "a/b"}, T) == "c"
    put = [h for m, p, h, _ in server.seen if p == "/bkt/copied-ok"][0]
    assert put["x-amz-copy-source"] == "bkt/src" and put["x-amz-metadata-directive"] == "REPLACE"
    r.delete("gone", T)  # already gone: not an error
    r.close()


def test_no_answer_and_no_credentials(server):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    down = requests_for(f"http://127.0.0.1:{port}")
    with pytest.raises(errors.ProviderUnavailable, match=f"cannot reach http://127.0.0.1:{port}"):
        down.head("k", T)
    anonymous = requests_for(origin_of(server), creds=lambda: None)
    with pytest.raises(errors.AccessDenied, match="no usable S3 credentials"):
        anonymous.head("k", T)
    assert server.seen == []


def test_a_proxy_it_cannot_use_fails_every_request_with_a_message():
    endpoint = Endpoint(origin="http://127.0.0.1:9", host="127.0.0.1:9", objects="/bkt/", listing="/bkt",
                        proxy="socks5://127.0.0.1:1080")
    r = S3Requests("bkt", "us-east-1", ErrorTable("bkt", endpoint.origin), lambda: endpoint,
                   lambda: Creds("AK", "SK", None))
    for _ in range(2):
        with pytest.raises(errors.ProviderError, match="only http:// proxies"):
            r.head("k", T)


def test_credentials_are_asked_for_each_request(server):
    """Rotated credentials sign the next request: the signer never keeps a copy of its own."""
    keys = iter(["AK1", "AK2"])
    r = requests_for(origin_of(server), creds=lambda: Creds(next(keys), "SK", "token"))
    server.script = {("HEAD", "/bkt/k"): (200, {}, b"")}
    r.head("k", T)
    r.head("k", T)
    got = [h["Authorization"].split("Credential=")[1].split("/")[0] for _, _, h, _ in server.seen]
    assert got == ["AK1", "AK2"] and server.seen[0][2]["X-Amz-Security-Token"] == "token"


def test_boto_gives_credentials_that_refresh_when_they_expire(monkeypatch):
    cfg = S3ProviderConfig(name="s3", bucket="bkt", endpoint_url="http://127.0.0.1:9", region="us-east-1",
                           access_key_id="AK", secret_access_key="SK", path_style=True)
    boto = Boto(cfg, RetryPolicy.from_config(cfg))
    issued = iter(["first", "second"])

    def fetch() -> dict[str, str]:
        # each set expires at once: botocore refreshes before handing out frozen credentials
        expiry = (datetime.now(UTC) + timedelta(seconds=1)).isoformat()
        return {"access_key": next(issued), "secret_key": "s", "token": "t", "expiry_time": expiry}

    refreshable = RefreshableCredentials.create_from_metadata(fetch(), fetch, "test")
    monkeypatch.setattr(boto.session, "get_credentials", lambda: refreshable)
    assert boto.frozen_credentials().access_key == "second"
    endpoint = boto.endpoint()
    assert (endpoint.origin, endpoint.objects, endpoint.listing) == ("http://127.0.0.1:9", "/bkt/", "/bkt")
    boto.close()
