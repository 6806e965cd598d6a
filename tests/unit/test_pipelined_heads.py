"""Pipelined HEADs (storefs.providers.s3.http.Connections.pipelined_heads, S3Provider.head_many): a batch of
HEADs on one connection, the answers read in order; whatever a connection did not answer is asked for one
by one, so a server that closes, garbles or stalls mid-batch costs speed, never an answer."""

from __future__ import annotations

import http.server
import shutil
import socket
import ssl
import subprocess
import threading
import uuid
from collections.abc import Callable, Iterator

import pytest

from storefs.config import S3ProviderConfig
from storefs.errors import NotFound
from storefs.providers.base import ObjectInfo
from storefs.providers.s3 import S3Provider
from storefs.providers.s3.http import Connections, Timeouts

TIMEOUTS = Timeouts(2.0, 2.0)
OK = ("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nLast-Modified: Thu, 03 Dec 2026 04:01:02 GMT\r\n"
      "X-Amz-Meta-Mode: 33188\r\n")
ABSENT = "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n"


class FakeServer:
    """A loopback server that reads HEAD requests and answers each with answer(n) (n from 0, over all its
    connections): a string of headers (the blank line is added) or None to close the connection instead."""

    def __init__(self, answer: Callable[[int], str | None]) -> None:
        self.answer = answer
        self.count = 0
        self.connections = 0
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._talk, args=(conn,), daemon=True).start()

    def _talk(self, conn: socket.socket) -> None:
        buf = b""
        with conn:
            while True:
                while b"\r\n\r\n" not in buf:
                    try:
                        more = conn.recv(65536)
                    except OSError:
                        return
                    if not more:
                        return
                    buf += more
                _, buf = buf.split(b"\r\n\r\n", 1)
                reply = self.answer(self.count)
                self.count += 1
                if reply is None:
                    return
                try:
                    conn.sendall((reply + "\r\n").encode("latin-1"))
                except OSError:  # the client gave up on this connection
                    return

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def server_of() -> Iterator[Callable[[Callable[[int], str | None]], FakeServer]]:
    made: list[FakeServer] = []

    def make(answer: Callable[[int], str | None]) -> FakeServer:
        made.append(FakeServer(answer))
        return made[-1]
    yield make
    for s in made:
        s.close()


def heads(n: int) -> list[tuple[str, dict[str, str]]]:
    return [(f"/b/k{i}", {"host": "x"}) for i in range(n)]


def test_every_answer_comes_back_in_order_and_the_connection_is_kept(server_of):
    srv = server_of(lambda n: OK + f"X-Amz-Meta-N: {n}\r\n" if n % 3 else ABSENT)
    http = Connections(f"http://127.0.0.1:{srv.port}")
    answers = http.pipelined_heads(heads(10), TIMEOUTS)
    assert [a.status for a in answers] == [404 if i % 3 == 0 else 200 for i in range(10)]
    assert answers[1].headers["x-amz-meta-n"] == "1" and answers[1].headers["content-length"] == "5"
    assert all(a.body == b"" for a in answers)  # a HEAD's answer has no body, whatever Content-Length says
    assert len(http.pipelined_heads(heads(4), TIMEOUTS)) == 4
    assert srv.connections == 1  # kept alive between batches


@pytest.mark.parametrize("bad", [
    None,  # the server closes the connection
    "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 5\r\n",  # says it closes (this one counts)
    "garbage\r\n",  # not HTTP
    "HTTP/1.1 200 OK\r\n bad folded header\r\n",  # a header line this reader does not take
])
def test_a_batch_ends_where_the_connection_stops_making_sense(server_of, bad):
    srv = server_of(lambda n: bad if n == 3 else OK)
    http = Connections(f"http://127.0.0.1:{srv.port}")
    answers = http.pipelined_heads(heads(8), TIMEOUTS)
    assert len(answers) == (4 if bad and bad.startswith("HTTP/1.1 200 OK\r\nConnection") else 3)
    assert all(a.status == 200 for a in answers)
    assert len(http.pipelined_heads(heads(2), TIMEOUTS)) == 2  # a new connection for the next batch
    assert srv.connections == 2


def test_a_server_that_stops_answering_ends_the_batch_at_the_read_timeout(server_of):
    stall = threading.Event()

    def answer(n: int) -> str | None:
        if n == 2:
            stall.wait(5)
        return OK
    srv = server_of(answer)
    http = Connections(f"http://127.0.0.1:{srv.port}")
    try:
        answers = http.pipelined_heads(heads(5), Timeouts(1.0, 0.3))
    finally:
        stall.set()
    assert len(answers) == 2


class HeadHandler(http.server.BaseHTTPRequestHandler):
    """Python's own HTTP/1.1 server, which reads pipelined requests one after the other."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:  # quiet
        pass

    def do_HEAD(self) -> None:
        self.send_response(200 if self.path.endswith("0") else 404)
        self.send_header("Content-Length", "9")
        self.send_header("X-Path", self.path)
        self.end_headers()


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl to make a certificate")
def test_pipelined_over_tls(tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),
                    "-out", str(cert), "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True)
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), HeadHandler)
    srv.daemon_threads = True
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    srv.socket = context.wrap_socket(srv.socket, server_side=True)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        http_ = Connections(f"https://127.0.0.1:{srv.server_address[1]}", verify=str(cert))
        answers = http_.pipelined_heads(heads(25), TIMEOUTS)
        assert [a.headers["x-path"] for a in answers] == [f"/b/k{i}" for i in range(25)]
        assert [a.status for a in answers] == [200 if i % 10 == 0 else 404 for i in range(25)]
        http_.close()
    finally:
        srv.shutdown()
        srv.server_close()


@pytest.fixture
def s3(seaweed) -> Iterator[S3Provider]:
    bucket = "pipe-" + uuid.uuid4().hex[:8]
    seaweed.create_bucket(bucket)
    p = S3Provider(S3ProviderConfig(name="s3", bucket=bucket, endpoint_url=seaweed.endpoint_url, region=seaweed.region,
                                    access_key_id=seaweed.access_key, secret_access_key=seaweed.secret_key,
                                    path_style=True, read_deadline=5.0))
    yield p
    p.close()


def test_names_a_batch_left_unanswered_are_asked_one_by_one(s3, seaweed, monkeypatch):
    c = seaweed.client()
    keys = [f"t/image/b/a/f{i:02d}" for i in range(40)]
    for k in keys[:30]:
        c.put_object(Bucket=s3.bucket, Key=k, Body=b"abc", Metadata={"mode": "33152", "mtime": "1600000000"})
    real = s3._requests.heads
    monkeypatch.setattr(s3._requests, "heads", lambda fulls, t: real(fulls, t)[:5])  # each batch cut after 5
    singles: list[str] = []
    real_head = s3.head
    monkeypatch.setattr(s3, "head", lambda k: (singles.append(k), real_head(k))[1])
    got = dict(s3.head_many(keys))
    assert list(got) == keys
    for k in keys[:30]:
        info = got[k]
        assert isinstance(info, ObjectInfo) and (info.size, info.mode, info.mtime_ns) == (3, 33152, 1600000000 * 10**9)
    assert all(isinstance(got[k], NotFound) for k in keys[30:])
    assert singles == keys[5:32] + keys[37:]  # batches of 32: the first 5 of each answered pipelined
