"""The S3 requests' connections against a local HTTP server (and proxy) that misbehaves on purpose."""

from __future__ import annotations

import base64
import errno
import hashlib
import http.server
import io
import shutil
import socket
import ssl
import subprocess
import threading
import time

import pytest

from storefs.providers.s3 import http as http_mod
from storefs.providers.s3.http import (
    MAX_HEADERS,
    BadAnswer,
    BodyTooLarge,
    ConnectFailed,
    ConnectionLost,
    Connections,
    MalformedAnswer,
    SinkFailed,
    TimedOut,
    Timeouts,
    TransportError,
)

T = Timeouts(2.0, 2.0)


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive unless told otherwise

    def log_message(self, *args) -> None:  # quiet
        pass

    def _answer(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _chunked(self, pieces: list[bytes]) -> None:
        self.send_response(200)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for p in pieces:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(p), p))
        self.wfile.write(b"0\r\n\r\n")

    def do_GET(self) -> None:
        self.requests_here = getattr(self, "requests_here", 0) + 1
        self.server.seen.append((self.client_address[1], self.path, dict(self.headers)))
        if self.path == "/ok":
            self._answer(200, b"hello")
        elif self.path == "/chunked":
            self._chunked([b"one ", b"two ", b"three"])
        elif self.path == "/cut":
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.end_headers()
            self.wfile.write(b"x" * 10)
            self.wfile.flush()
            self.close_connection = True
        elif self.path == "/slow":
            time.sleep(1.5)
            self._answer(200, b"late")
        elif self.path.startswith("/headers/"):  # /headers/N: an object with N x-amz-meta-* keys
            n = int(self.path.rsplit("/", 1)[1])
            self._answer(200, b"meta", {f"x-amz-meta-k{i}": f"v{i}" for i in range(n)})
        elif self.path == "/big":
            self._answer(200, b"b" * 10_000)
        elif self.path == "/big-chunked":
            self._chunked([b"c" * 4000] * 3)
        elif self.path == "/error":
            self._answer(404, b"<Error><Code>NoSuchKey</Code>" + b" " * 5000 + b"</Error>")
        elif self.path == "/then-close":
            self._answer(200, b"bye")
            self.wfile.flush()
            self.close_connection = True  # closes without saying so: the pooled connection goes stale
        elif self.path == "/drop-later":
            if self.requests_here > 1:  # a kept-alive connection the server drops as the request arrives
                self.close_connection = True
                return
            self._answer(200, b"first")
        else:
            self._answer(404, b"")

    def do_HEAD(self) -> None:
        n = int(self.path.rsplit("/", 1)[1])  # /headers/N only: N x-amz-meta-* keys, no body
        self.send_response(200)
        for i in range(n):
            self.send_header(f"x-amz-meta-k{i}", f"v{i}")
        self.send_header("Content-Length", "4")
        self.end_headers()

    def do_PUT(self) -> None:
        n = int(self.headers.get("Content-Length", 0))
        body = self.rfile.read(n)
        self.server.seen.append((self.client_address[1], self.path, dict(self.headers)))
        self._answer(200, b"", {"ETag": f'"{hashlib.md5(body).hexdigest()}"'})


@pytest.fixture
def server():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    srv.daemon_threads = True
    srv.seen = []
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def url(srv) -> str:
    return f"http://127.0.0.1:{srv.server_address[1]}"


def test_connections_are_kept_and_shared(server):
    c = Connections(url(server))
    for _ in range(5):
        a = c.request("GET", "/ok", {"host": c.host}, T)
        assert (a.status, a.body) == (200, b"hello") and a.headers["content-length"] == "5"
    assert len({port for port, _, _ in server.seen}) == 1  # one connection for five requests in a row
    answers = []

    def get() -> None:
        answers.append(c.request("GET", "/ok", {"host": c.host}, T).body)
    threads = [threading.Thread(target=get) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert answers == [b"hello"] * 8
    assert server.seen[0][2]["host"] == f"127.0.0.1:{server.server_address[1]}"
    c.close()


def test_bodies_chunked_and_from_files(server, tmp_path):
    c = Connections(url(server))
    assert c.request("GET", "/chunked", {"host": c.host}, T).body == b"one two three"
    data = bytes(range(256)) * 12_000  # 3 MiB: sent in blocks from the file
    f = io.BytesIO(b"head" + data)
    f.seek(4)
    a = c.request("PUT", "/obj", {"host": c.host, "content-length": str(len(data))}, T, f)
    assert a.headers["etag"] == f'"{hashlib.md5(data).hexdigest()}"'
    a = c.request("PUT", "/small", {"host": c.host, "content-length": "3"}, T, b"abc")
    assert a.headers["etag"] == f'"{hashlib.md5(b"abc").hexdigest()}"'
    assert len({port for port, _, _ in server.seen}) == 1
    c.close()


def test_a_connection_the_server_closed_is_replaced_before_or_during_the_request(server, caplog):
    c = Connections(url(server))
    assert c.request("GET", "/then-close", {"host": c.host}, T).body == b"bye"
    time.sleep(0.2)  # the server has closed it by now: seen as closed before sending, so nothing is sent twice
    with caplog.at_level("DEBUG", logger="storefs.providers.s3.http"):
        assert c.request("GET", "/ok", {"host": c.host}, T).body == b"hello"
    assert "closed by the server" not in caplog.text
    # the kept connection again: the server drops it on receipt, and the request goes again on a new one
    assert c.request("GET", "/drop-later", {"host": c.host}, T).body == b"first"
    seen = [(port, path) for port, path, _ in server.seen]
    assert [path for _, path in seen] == ["/then-close", "/ok", "/drop-later", "/drop-later"]
    ports = [port for port, _ in seen]
    assert len(set(ports)) == 3 and ports[1] == ports[2] and ports[3] not in ports[:3]
    c.close()


def test_kept_connections_with_descriptor_numbers_past_select_s_limit(server):
    """A daemon holding many files open gets sockets numbered past 1024, where select() cannot look."""
    import os
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if max(soft, hard) < 1200:
        pytest.skip("cannot open enough descriptors here")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 1200), hard))
    held = []
    try:
        while not held or held[-1] < 1100:
            held.append(os.open(os.devnull, os.O_RDONLY))
        c = Connections(url(server))
        for _ in range(3):
            assert c.request("GET", "/ok", {"host": c.host}, T).body == b"hello"
        assert c._idle and c._idle[0].sock.fileno() > 1024
        assert len({port for port, _, _ in server.seen}) == 1
        c.close()
    finally:
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_failures_are_transport_errors(server):
    c = Connections(url(server))
    with pytest.raises(ConnectionLost):
        c.request("GET", "/cut", {"host": c.host}, T)
    with pytest.raises(TimedOut):
        c.request("GET", "/slow", {"host": c.host}, Timeouts(2.0, 0.5))
    assert c.request("GET", "/ok", {"host": c.host}, T).body == b"hello"  # and the pool still works
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    down = Connections(f"http://127.0.0.1:{port}")
    with pytest.raises(ConnectFailed):
        down.request("GET", "/ok", {"host": down.host}, T)
    # a server that accepts and then closes at once, on a fresh connection: no second try
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(4)

        def close_all() -> None:
            for _ in range(2):
                conn, _ = listener.accept()
                conn.recv(65536)
                conn.close()
        t = threading.Thread(target=close_all, daemon=True)
        t.start()
        rude = Connections(f"http://127.0.0.1:{listener.getsockname()[1]}")
        with pytest.raises(ConnectionLost):
            rude.request("GET", "/ok", {"host": rude.host}, T)
    c.close()


def test_a_limit_stops_oversized_bodies_but_not_errors(server):
    c = Connections(url(server))
    with pytest.raises(BodyTooLarge):
        c.request("GET", "/big", {"host": c.host}, T, limit=100)
    with pytest.raises(BodyTooLarge):
        c.request("GET", "/big-chunked", {"host": c.host}, T, limit=100)
    assert len(c.request("GET", "/big-chunked", {"host": c.host}, T, limit=12_000).body) == 12_000
    a = c.request("GET", "/error", {"host": c.host}, T, limit=100)
    assert a.status == 404 and b"NoSuchKey" in a.body
    assert c.request("GET", "/ok", {"host": c.host}, T, limit=5).body == b"hello"
    c.close()


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl to make a certificate")
def test_https_verifies_as_told(tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),
                    "-out", str(cert), "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True)
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    srv.daemon_threads = True
    srv.seen = []
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    srv.socket = context.wrap_socket(srv.socket, server_side=True)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        origin = f"https://127.0.0.1:{srv.server_address[1]}"
        trusted = Connections(origin, verify=str(cert))
        assert trusted.request("GET", "/ok", {"host": trusted.host}, T).body == b"hello"
        assert trusted.request("GET", "/ok", {"host": trusted.host}, T).body == b"hello"
        assert Connections(origin, verify=False).request("GET", "/ok", {"host": "x"}, T).body == b"hello"
        with pytest.raises(ConnectFailed):  # not a CA the system trusts
            Connections(origin, verify=True).request("GET", "/ok", {"host": "x"}, T)
        trusted.close()
    finally:
        srv.shutdown()
        srv.server_close()


class ProxyHandler(http.server.BaseHTTPRequestHandler):
    """A plain-HTTP proxy that answers itself: it notes the absolute target and the credentials it got."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:  # quiet
        pass

    def do_GET(self) -> None:
        self.server.seen.append((self.path, self.headers))  # a Message: names looked up in any case
        self.send_response(200)
        self.send_header("Content-Length", "9")
        self.end_headers()
        self.wfile.write(b"via proxy")


def test_a_plain_http_origin_through_a_proxy_gets_absolute_targets_and_credentials():
    proxy = http.server.ThreadingHTTPServer(("127.0.0.1", 0), ProxyHandler)
    proxy.daemon_threads = True
    proxy.seen = []
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    try:
        auth = f"http://us%40r:p%3Aw@127.0.0.1:{proxy.server_address[1]}"
        c = Connections("http://s3.example.test:8333", proxy=auth)
        for _ in range(2):
            assert c.request("GET", "/bkt/a?x=1", {"host": c.host}, T).body == b"via proxy"
        (target, headers), _ = proxy.seen
        assert target == "http://s3.example.test:8333/bkt/a?x=1" and headers["host"] == "s3.example.test:8333"
        assert headers["Proxy-Authorization"] == "Basic " + base64.b64encode(b"us@r:p:w").decode()
        c.close()
    finally:
        proxy.shutdown()
        proxy.server_close()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(TransportError):  # a proxy that is not there: no whole answer, as for the origin
        Connections("https://s3.example.test", proxy=f"http://127.0.0.1:{port}").request("GET", "/", {}, T)
    with pytest.raises(ValueError):
        Connections("http://s3.example.test", proxy="socks5://127.0.0.1:1080")


def test_an_answer_with_many_headers_is_read_and_one_past_every_limit_fails_alone(server):
    c = Connections(url(server))
    a = c.request("HEAD", "/headers/120", {"host": c.host}, T)  # 120 x-amz-meta-* keys: http.client allows 100
    assert a.status == 200 and a.headers["x-amz-meta-k119"] == "v119"
    assert c.request("GET", "/headers/120", {"host": c.host}, T).body == b"meta"
    with pytest.raises(MalformedAnswer, match="more than"):
        c.request("GET", f"/headers/{MAX_HEADERS + 10}", {"host": c.host}, T)
    assert not isinstance(MalformedAnswer("x"), TransportError) and issubclass(BodyTooLarge, BadAnswer)
    assert c.request("GET", "/ok", {"host": c.host}, T).body == b"hello"  # the pool still works
    c.close()


def test_a_garbled_answer_is_a_bad_answer_not_a_transport_error():
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(4)

        def garble() -> None:
            for reply in (b"SPDY/9 200 OK\r\n\r\n", b"HTTP/1.1 200 " + b"x" * 70_000 + b"\r\n\r\n"):
                conn, _ = listener.accept()
                conn.recv(65536)
                conn.sendall(reply)
                conn.close()
        t = threading.Thread(target=garble, daemon=True)
        t.start()
        odd = Connections(f"http://127.0.0.1:{listener.getsockname()[1]}")
        for _ in range(2):  # a status line that is not HTTP, then one over http.client's line limit
            with pytest.raises(MalformedAnswer):
                odd.request("GET", "/ok", {"host": odd.host}, T)
        t.join(5)


def test_a_body_handed_to_a_sink_arrives_whole_in_order_and_only_for_a_2xx(server, monkeypatch):
    monkeypatch.setattr(http_mod, "SINK_PIECE", 4096)  # several pieces even for these small bodies
    c = Connections(url(server))
    for path, want in (("/big", b"b" * 10_000), ("/big-chunked", b"c" * 12_000), ("/ok", b"hello")):
        pieces: list[bytes] = []
        a = c.request("GET", path, {"host": c.host}, T, limit=20_000, sink=lambda p, into=pieces: into.append(bytes(p)))
        assert a.status == 200 and a.body == b"" and b"".join(pieces) == want, path
        assert max(map(len, pieces)) <= 4096
    kept: list[bytes] = []
    a = c.request("GET", "/error", {"host": c.host}, T, limit=100, sink=kept.append)
    assert a.status == 404 and b"NoSuchKey" in a.body and kept == []  # an error's body is the explanation
    with pytest.raises(BodyTooLarge):
        c.request("GET", "/big", {"host": c.host}, T, limit=5000, sink=lambda p: None)
    with pytest.raises(ConnectionLost, match="cut off after 10 of 1000"):
        c.request("GET", "/cut", {"host": c.host}, T, sink=lambda p: None)
    assert c.request("GET", "/ok", {"host": c.host}, T).body == b"hello"
    c.close()


def test_a_sink_that_fails_closes_the_connection_and_its_error_goes_up_as_the_cause(server, monkeypatch):
    monkeypatch.setattr(http_mod, "SINK_PIECE", 4096)
    c = Connections(url(server))

    def full(piece: memoryview) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")
    with pytest.raises(SinkFailed) as got:
        c.request("GET", "/big", {"host": c.host}, T, sink=full)
    assert isinstance(got.value.__cause__, OSError) and got.value.__cause__.errno == errno.ENOSPC
    assert c._idle == []  # the rest of that body was never read: its connection is not kept
    assert c.request("GET", "/ok", {"host": c.host}, T).body == b"hello"
    c.close()
