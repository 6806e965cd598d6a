"""Keep-alive HTTP/1.1 connections to one S3 endpoint, on the standard library's http.client.

boto3's transport (botocore's session over urllib3's pool) costs a small upload about half of
its interpreter time: request and header objects built three times over, a pool per URL
looked up, retries and proxies checked. The hot requests need none of that: one origin, an
optional proxy, whole bodies. A request that gets no whole answer raises a TransportError
(the error table makes it ProviderUnavailable: the provider may be down); an answer that came
but cannot be used (malformed, or a body over the caller's limit) raises a BadAnswer, which
fails that request alone; any other answer, whatever its status, is returned.

http.client refuses an answer with more than 100 header lines, and an S3 object may carry a
few hundred x-amz-meta-* keys (S3 allows 2 KiB of them; servers that do not enforce that
allow more): at import this module raises http.client's limit to MAX_HEADERS for the whole
process. That is the one place it is set; botocore's urllib3 parses headers with the same
function, so boto3's requests (a multipart copy HEADs its source) read such answers too.
"""

from __future__ import annotations

import base64
import http.client
import logging
import select
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import BinaryIO, NamedTuple
from urllib.parse import unquote, urlsplit

log = logging.getLogger(__name__)

MAX_IDLE = 32  # kept-alive connections held for reuse; more are closed after their answer
BLOCK = 1 << 20  # a file body is sent in reads of this size (http.client's default is 8 KiB)
#: the shortest socket wait near a deadline (a zero timeout would make the socket non-blocking)
MIN_WAIT = 0.1
#: header lines an answer may have: 2 KiB of S3 metadata makes at most about a thousand
#: x-amz-meta-* lines, plus the server's own headers (http.client alone allows 100)
MAX_HEADERS = 2000
#: bytes asked of the socket at a time while reading pipelined answers
RECV_SIZE = 1 << 16
#: a body handed to a sink is read in pieces of this size into one buffer per thread, so a 16 MiB
#: ranged GET never sits in memory whole
SINK_PIECE = 1 << 20
#: the longest header block of one pipelined HEAD answer this reader takes (S3 metadata is at most 2 KiB)
MAX_HEAD_ANSWER = 1 << 20
#: failures of a kept-alive connection the server may have closed while it sat idle
_STALE = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError, ConnectionAbortedError)
#: an answer came that is not HTTP as http.client reads it (RemoteDisconnected, a BadStatusLine, is caught first)
_MALFORMED = (http.client.BadStatusLine, http.client.LineTooLong, http.client.UnknownProtocol)


def allow_many_headers() -> None:
    """Raise http.client's limit on header lines to MAX_HEADERS (never lower it: others may have raised it)."""
    http.client._MAXHEADERS = max(getattr(http.client, "_MAXHEADERS", 0), MAX_HEADERS)  # type: ignore[attr-defined]


allow_many_headers()


def _readable(sock: socket.socket) -> bool:
    """Whether an idle connection has something to read: the server closed it (or spoke out of turn).

    poll, not select: a daemon holding many files open has sockets numbered past select's 1024.
    """
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    return bool(poller.poll(0))


class TransportError(Exception):
    """No whole answer came back: the request may or may not have reached the server."""


class ConnectFailed(TransportError):
    """The connection could not be made (refused, unreachable, timed out, TLS handshake failed)."""


class TimedOut(TransportError):
    """The server took longer than the read timeout to send the next bytes."""


class ConnectionLost(TransportError):
    """The connection closed before the whole answer came (a body cut off mid-way too)."""


class SinkFailed(Exception):
    """The sink a body was handed to raised (its error is the cause): not the connection's fault, so
    neither translated nor retried; the connection, with the rest of the body unread, is closed."""


class BadAnswer(Exception):
    """An answer came but cannot be used: an error of this request alone, not a sign the server is down."""


class BodyTooLarge(BadAnswer):
    """The answer's body is over the caller's limit: not read, and its connection closed."""


class MalformedAnswer(BadAnswer):
    """The answer is not HTTP this client can read (a garbled status line, a line or header count over
    the limits): its connection is closed."""


class Answer(NamedTuple):
    """A whole response: the status, the headers by lower-case name and the body."""

    status: int
    headers: dict[str, str]
    body: bytes


#: takes a body's pieces in order; each piece is valid only until the call returns
Sink = Callable[[memoryview], None]


class Timeouts(NamedTuple):
    """Seconds one attempt may wait to connect and for each read of the answer; until (a time.monotonic()
    value), when set, also cuts the read wait set after connecting to what is left before it."""

    connect: float
    read: float
    until: float | None = None

    def read_wait(self) -> float:
        """The read timeout for a socket now: read, or less near `until` (never below MIN_WAIT)."""
        if self.until is None:
            return self.read
        return min(self.read, max(MIN_WAIT, self.until - time.monotonic()))


class Connections:
    """A pool of kept-alive connections to one origin (through an optional HTTP proxy), shared by threads."""

    def __init__(self, url: str, verify: bool | str = True, proxy: str | None = None) -> None:
        """verify: False, True (the system's CAs) or a CA bundle's path; proxy: 'http://[user:pw@]host:port'."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        self.url = f"{parts.scheme}://{parts.netloc}"
        self.host = parts.netloc  # the Host header, port included when the URL has one
        self._hostname = parts.hostname
        self._port = parts.port
        self._https = parts.scheme == "https"
        self._proxy: tuple[str, int | None] | None = None
        self._proxy_headers: dict[str, str] = {}
        if proxy:
            p = urlsplit(proxy if "://" in proxy else "http://" + proxy)
            if p.scheme != "http" or not p.hostname:
                raise ValueError(f"only http:// proxies are supported, not {proxy!r}")
            self._proxy = (p.hostname, p.port or 80)
            if p.username is not None:
                token = base64.b64encode(f"{unquote(p.username)}:{unquote(p.password or '')}".encode()).decode()
                self._proxy_headers["proxy-authorization"] = "Basic " + token
        self._context: ssl.SSLContext | None = None
        if self._https:
            if verify is False:
                self._context = ssl._create_unverified_context()
            else:
                self._context = ssl.create_default_context(cafile=verify if isinstance(verify, str) else None)
        self._idle: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()  # protects _idle
        self._buffers = threading.local()  # each thread's buffer for bodies handed to a sink

    def _connect(self, timeouts: Timeouts) -> http.client.HTTPConnection:
        conn: http.client.HTTPConnection
        host, port = self._proxy or (self._hostname, self._port)
        if self._https:
            conn = http.client.HTTPSConnection(host, port, timeout=timeouts.connect, context=self._context,
                                               blocksize=BLOCK)
            if self._proxy:
                conn.set_tunnel(self._hostname, self._port, headers=self._proxy_headers)
        else:
            conn = http.client.HTTPConnection(host, port, timeout=timeouts.connect, blocksize=BLOCK)
        try:
            conn.connect()  # sets TCP_NODELAY
        except OSError as e:  # refused, unreachable, timed out, TLS handshake or proxy tunnel failed
            raise ConnectFailed(f"cannot connect to {self.url}: {e}") from e
        assert conn.sock is not None
        conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        return conn

    def _take(self, timeouts: Timeouts) -> tuple[http.client.HTTPConnection, bool]:
        """An idle connection the server has not closed (and True), or a new one (and False)."""
        while True:
            with self._lock:
                conn = self._idle.pop() if self._idle else None
            if conn is None:
                return self._connect(timeouts), False
            if conn.sock is not None and not _readable(conn.sock):
                return conn, True
            conn.close()

    def _give_back(self, conn: http.client.HTTPConnection) -> None:
        with self._lock:
            if len(self._idle) < MAX_IDLE:
                self._idle.append(conn)
                return
        conn.close()

    def request(self, method: str, target: str, headers: dict[str, str], timeouts: Timeouts,
                body: bytes | BinaryIO | None = None, limit: int | None = None,
                sink: Sink | None = None) -> Answer:
        """Send one request and read its whole answer (BodyTooLarge past limit bytes of a 2xx); one more try on a
        fresh connection when a kept-alive one turns out closed before any answer came. With sink, a 2xx body goes
        to sink piece by piece, in order, and the answer's body is empty."""
        start = body.tell() if body is not None and not isinstance(body, bytes) else 0
        if self._proxy and not self._https:
            target = self.url + target  # a plain-HTTP proxy takes the absolute URL
            headers = {**headers, **self._proxy_headers}
        conn, reused = self._take(timeouts)
        while True:
            try:
                return self._exchange(conn, method, target, headers, timeouts, body, limit, sink)
            except _STALE as e:
                conn.close()
                if not reused:
                    raise ConnectionLost(f"{self.url} closed the connection before answering") from e
                log.debug("%s: kept-alive connection closed by the server (%s); new connection", self.url, e)
                if body is not None and not isinstance(body, bytes):
                    body.seek(start)
                conn, reused = self._connect(timeouts), False

    @contextmanager
    def _failures(self, conn: http.client.HTTPConnection, wait: float, doing: str,
                  stale_passes: bool = False) -> Iterator[None]:
        """Close conn and raise a TransportError for a failure in the block; with stale_passes, a kept-alive
        connection's failures go up as they are, for request() to try once more on a new connection."""
        try:
            yield
        except _STALE as e:
            if stale_passes:
                raise
            conn.close()
            raise ConnectionLost(f"{self.url} closed the connection while {doing}") from e
        except TimeoutError as e:
            conn.close()
            raise TimedOut(f"{self.url} stopped {doing} for {wait:g}s") from e
        except http.client.IncompleteRead as e:
            conn.close()
            raise ConnectionLost(f"{self.url}: body cut off after {len(e.partial)} bytes") from e
        except _MALFORMED as e:
            conn.close()
            raise MalformedAnswer(f"{self.url}: unreadable answer ({type(e).__name__}: {e})") from e
        except http.client.HTTPException as e:
            conn.close()
            if type(e) is http.client.HTTPException:  # what http.client raises for too many header lines
                raise MalformedAnswer(f"{self.url}: unreadable answer ({e})") from e
            raise ConnectionLost(f"{self.url}: {type(e).__name__} while {doing}: {e}") from e
        except OSError as e:
            conn.close()
            raise ConnectionLost(f"{self.url}: {type(e).__name__} while {doing}: {e}") from e

    def _exchange(self, conn: http.client.HTTPConnection, method: str, target: str, headers: dict[str, str],
                  timeouts: Timeouts, body: bytes | BinaryIO | None, limit: int | None,
                  sink: Sink | None = None) -> Answer:
        assert conn.sock is not None
        wait = timeouts.read_wait()
        conn.sock.settimeout(wait)
        with self._failures(conn, wait, "answering", stale_passes=True):
            conn.request(method, target, body=body, headers=headers)
            response = conn.getresponse()
        expected = response.length  # None when chunked or read to the close
        if not 200 <= response.status < 300:
            limit = None  # an error's body is the server's explanation, however long
        if limit is not None and expected is not None and expected > limit:
            conn.close()
            raise BodyTooLarge(f"{expected} bytes where at most {limit} were asked for")
        with self._failures(conn, wait, "sending the body"):
            if sink is not None and 200 <= response.status < 300:
                got = self._drain(conn, response, sink, limit)
                if expected is not None and got < expected:
                    conn.close()
                    raise ConnectionLost(f"{self.url}: body cut off after {got} of {expected} bytes")
                data = b""
            elif limit is not None and expected is None:
                data = response.read(limit + 1)
                if len(data) > limit:
                    conn.close()
                    raise BodyTooLarge(f"more than the {limit} bytes asked for")
                response.read()  # the end of the chunks: the connection can be used again
            else:
                data = response.read()
        answer = Answer(response.status, {k.lower(): v for k, v in response.getheaders()}, data)
        if response.will_close:
            conn.close()
        else:
            self._give_back(conn)
        return answer

    def _drain(self, conn: http.client.HTTPConnection, response: http.client.HTTPResponse, sink: Sink,
               limit: int | None) -> int:
        """Hand the body to sink in pieces read into this thread's buffer; the byte count."""
        buf = getattr(self._buffers, "buf", None)
        if buf is None:
            buf = self._buffers.buf = memoryview(bytearray(SINK_PIECE))
        got = 0
        while True:
            n = response.readinto(buf)
            if not n:
                return got
            got += n
            if limit is not None and got > limit:
                conn.close()
                raise BodyTooLarge(f"more than the {limit} bytes asked for")
            try:
                sink(buf[:n])
            except BaseException as e:
                conn.close()
                raise SinkFailed(e) from e

    def pipelined_heads(self, requests: list[tuple[str, dict[str, str]]], timeouts: Timeouts) -> list[Answer]:
        """HEAD requests sent back to back on one kept-alive connection (HTTP/1.1 pipelining), their
        answers read in order: the answers to the first len(result) of them (fewer than asked when the
        connection ends, is to close, times out or answers what this reader does not expect; the caller
        asks for the rest another way). A HEAD's answer has no body, so each ends at its blank line.

        Sending a batch in one write and parsing the answers from one buffer costs a HEAD about a
        third of the interpreter time http.client's request/response objects do (README, "Big folders")."""
        if not requests:
            return []
        if self._proxy and not self._https:
            return []  # a plain-HTTP proxy takes absolute URLs one by one: not worth pipelining
        conn, _ = self._take(timeouts)
        sock = conn.sock
        assert sock is not None
        out: list[str] = []
        for target, headers in requests:
            out.append(f"HEAD {target} HTTP/1.1\r\n")
            out.extend(f"{name}: {value}\r\n" for name, value in headers.items())
            out.append("\r\n")
        answers: list[Answer] = []
        reusable = False
        try:
            sock.settimeout(timeouts.read_wait())
            sock.sendall("".join(out).encode("latin-1"))
            reusable = _read_heads(sock, len(requests), answers)
        except (OSError, UnicodeError, ValueError) as e:  # timed out, reset, refused mid-way: the rest asked again
            log.debug("%s: pipelined HEADs ended after %d of %d answers (%s)", self.url, len(answers), len(requests), e)
        if reusable:
            self._give_back(conn)
        else:
            conn.close()
        return answers

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()


def _read_heads(sock: socket.socket, count: int, answers: list[Answer]) -> bool:
    """Up to count bodiless answers read from sock into answers; whether the connection may be used again
    (every answer read, none of them saying it closes, nothing left over)."""
    buf = b""
    while len(answers) < count:
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            if len(buf) > MAX_HEAD_ANSWER:
                return False
            more = sock.recv(RECV_SIZE)
            if not more:
                return False
            buf += more
            continue
        lines = buf[:end].decode("latin-1").split("\r\n")
        buf = buf[end + 4:]
        version, _, rest = lines[0].partition(" ")
        if not version.startswith("HTTP/1."):
            return False
        status = int(rest[:3])
        if status < 200:  # 1xx before the real answer: not expected for a HEAD
            return False
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep or name != name.strip():
                return False
            headers[name.lower()] = value.strip()
        answers.append(Answer(status, headers, b""))
        if "close" in headers.get("connection", "").lower() or version == "HTTP/1.0":
            return False
    return not buf
