"""Keep-alive HTTP/1.1 connections to one S3 endpoint, on the standard library's http.client.

boto3's transport (botocore's session over urllib3's pool) costs a small upload about half of
its interpreter time: request and header objects built three times over, a pool per URL
looked up, retries and proxies checked. The lean requests need none of that: one origin, no
proxy, whole bodies. Failures come out as the botocore exceptions boto3 raises for them, so
the provider treats both paths alike.
"""

from __future__ import annotations

import http.client
import logging
import select
import socket
import ssl
import threading
from typing import BinaryIO, NamedTuple
from urllib.parse import urlsplit

from botocore.exceptions import ConnectionClosedError, EndpointConnectionError, IncompleteReadError, ReadTimeoutError

log = logging.getLogger(__name__)

MAX_IDLE = 32  # the boto3 clients' max_pool_connections
BLOCK = 1 << 20  # a file body is sent in reads of this size (http.client's default is 8 KiB)
#: failures of a kept-alive connection the server may have closed while it sat idle
_STALE = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError, ConnectionAbortedError)


def _readable(sock: socket.socket) -> bool:
    """Whether an idle connection has something to read: the server closed it (or spoke out of turn).

    poll, not select: a daemon holding many files open has sockets numbered past select's 1024.
    """
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    return bool(poller.poll(0))


class BodyTooLarge(Exception):
    """The answer's body is over the caller's limit: not read, and its connection closed."""


class Answer(NamedTuple):
    """A whole response: the status, the headers by lower-case name and the body."""

    status: int
    headers: dict[str, str]
    body: bytes


class Connections:
    """A pool of kept-alive connections to one origin, shared by threads."""

    def __init__(self, url: str, connect_timeout: float, read_timeout: float,
                 verify: bool | str = True) -> None:
        """verify: False, True (the system's CAs) or a CA bundle's path, as botocore takes it."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        self.url = f"{parts.scheme}://{parts.netloc}"
        self.host = parts.netloc  # the Host header, port included when the URL has one
        self._hostname = parts.hostname
        self._port = parts.port
        self._https = parts.scheme == "https"
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._context: ssl.SSLContext | None = None
        if self._https:
            if verify is False:
                self._context = ssl._create_unverified_context()
            else:
                self._context = ssl.create_default_context(cafile=verify if isinstance(verify, str) else None)
        self._idle: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()

    def _connect(self) -> http.client.HTTPConnection:
        conn: http.client.HTTPConnection
        if self._https:
            conn = http.client.HTTPSConnection(self._hostname, self._port, timeout=self._connect_timeout,
                                               context=self._context, blocksize=BLOCK)
        else:
            conn = http.client.HTTPConnection(self._hostname, self._port, timeout=self._connect_timeout,
                                              blocksize=BLOCK)
        try:
            conn.connect()  # sets TCP_NODELAY
        except OSError as e:  # refused, unreachable, timed out, TLS handshake failed
            raise EndpointConnectionError(endpoint_url=self.url, error=e) from e
        assert conn.sock is not None
        conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        conn.sock.settimeout(self._read_timeout)
        return conn

    def _take(self) -> tuple[http.client.HTTPConnection, bool]:
        """An idle connection the server has not closed (and True), or a new one (and False)."""
        while True:
            with self._lock:
                conn = self._idle.pop() if self._idle else None
            if conn is None:
                return self._connect(), False
            if conn.sock is not None and not _readable(conn.sock):
                return conn, True
            conn.close()

    def _give_back(self, conn: http.client.HTTPConnection) -> None:
        with self._lock:
            if len(self._idle) < MAX_IDLE:
                self._idle.append(conn)
                return
        conn.close()

    def request(self, method: str, target: str, headers: dict[str, str],
                body: bytes | BinaryIO | None = None, limit: int | None = None) -> Answer:
        """Send one request and read its whole answer (BodyTooLarge past limit bytes of a 2xx); one more try on a
        fresh connection when a kept-alive one turns out closed before any answer came."""
        start = body.tell() if body is not None and not isinstance(body, bytes) else 0
        conn, reused = self._take()
        while True:
            try:
                return self._exchange(conn, method, target, headers, body, limit)
            except _STALE as e:
                conn.close()
                if not reused:
                    raise ConnectionClosedError(endpoint_url=self.url) from e
                log.debug("%s: kept-alive connection closed by the server (%s); new connection", self.url, e)
                if body is not None and not isinstance(body, bytes):
                    body.seek(start)
                conn, reused = self._connect(), False

    def _exchange(self, conn: http.client.HTTPConnection, method: str, target: str, headers: dict[str, str],
                  body: bytes | BinaryIO | None, limit: int | None) -> Answer:
        try:
            conn.request(method, target, body=body, headers=headers)
            response = conn.getresponse()
        except _STALE:
            raise
        except TimeoutError as e:
            conn.close()
            raise ReadTimeoutError(endpoint_url=self.url, error=e) from e
        except (OSError, http.client.HTTPException) as e:
            conn.close()
            raise ConnectionClosedError(endpoint_url=self.url) from e
        expected = response.length  # None when chunked or read to the close
        if not 200 <= response.status < 300:
            limit = None  # an error's body is the server's explanation, however long
        if limit is not None and expected is not None and expected > limit:
            conn.close()
            raise BodyTooLarge(f"{expected} bytes where at most {limit} were asked for")
        try:
            if limit is not None and expected is None:
                data = response.read(limit + 1)
                if len(data) > limit:
                    conn.close()
                    raise BodyTooLarge(f"more than the {limit} bytes asked for")
                response.read()  # the end of the chunks: the connection can be used again
            else:
                data = response.read()
        except http.client.IncompleteRead as e:
            conn.close()
            raise IncompleteReadError(actual_bytes=len(e.partial), expected_bytes=expected or 0) from e
        except TimeoutError as e:
            conn.close()
            raise ReadTimeoutError(endpoint_url=self.url, error=e) from e
        except (OSError, http.client.HTTPException) as e:
            conn.close()
            raise IncompleteReadError(actual_bytes=0, expected_bytes=expected or 0) from e
        answer = Answer(response.status, {k.lower(): v for k, v in response.getheaders()}, data)
        if response.will_close:
            conn.close()
        else:
            self._give_back(conn)
        return answer

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()
