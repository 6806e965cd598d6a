"""The control channel between the CLI and a running daemon: a Unix socket per mountpoint.

Requests and answers are JSON lines. `status` answers once; `flush` answers with
progress lines until nothing is left to upload, then a final line.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import socket
import socketserver
import threading
from typing import Callable, Iterator

log = logging.getLogger(__name__)


def socket_path(mountpoint: str, base: str | None = None) -> str:
    """Where the daemon of mountpoint listens; derived from its real path, so any CLI finds it."""
    base = base or os.environ.get("XDG_RUNTIME_DIR") or "/tmp"
    folder = os.path.join(base, f"storefs-{os.getuid()}")
    os.makedirs(folder, mode=0o700, exist_ok=True)
    digest = hashlib.sha256(os.path.realpath(mountpoint).encode("utf-8", "surrogateescape")).hexdigest()[:24]
    return os.path.join(folder, f"{digest}.sock")


def _socket_paths(mountpoint: str) -> list[str]:
    """A daemon started by mount(8) or systemd has no XDG_RUNTIME_DIR, a login shell has one: try both."""
    paths = [socket_path(mountpoint)]
    if os.environ.get("XDG_RUNTIME_DIR"):
        paths.append(socket_path(mountpoint, "/tmp"))
    return paths


def find_mount(path: str) -> tuple[str, str]:
    """The storefs mountpoint holding path and path relative to it ('/a/b'); NotRunning if none does."""
    target = os.path.realpath(path)
    best = ""
    with open("/proc/self/mounts", encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            fields = line.split()
            if len(fields) < 3 or fields[2] != "fuse.storefs":
                continue
            mnt = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[1])
            if (target == mnt or target.startswith(mnt.rstrip("/") + "/")) and len(mnt) > len(best):
                best = mnt
    if not best:
        raise NotRunning(f"{path} is not in a storefs mount")
    rel = os.path.relpath(target, best)
    return best, "/" if rel == "." else "/" + rel


Handler = Callable[[dict, Callable[[dict], None]], dict]


class ControlServer:
    """Serves requests on the socket in daemon threads; handler(request, send_progress) -> answer."""

    def __init__(self, path: str, handler: Handler) -> None:
        self.path = path
        self._handler = handler
        self._server: socketserver.ThreadingUnixStreamServer | None = None

    def start(self) -> None:
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        outer = self

        class _Req(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                line = self.rfile.readline()
                if not line:
                    return
                def send(obj: dict) -> None:
                    self.wfile.write((json.dumps(obj) + "\n").encode())
                    self.wfile.flush()
                try:
                    answer = outer._handler(json.loads(line), send)
                except Exception as e:  # an answer, not a crash of the daemon
                    log.exception("control request failed")
                    answer = {"error": str(e)}
                try:
                    send({"final": True, **answer})
                except BrokenPipeError:
                    pass

        server = socketserver.ThreadingUnixStreamServer(self.path, _Req)
        server.daemon_threads = True
        os.chmod(self.path, 0o600)
        self._server = server
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                         name="storefs-control", daemon=True).start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


class NotRunning(Exception):
    """No daemon answers for that mountpoint."""


def request(mountpoint: str, req: dict, timeout: float | None = 30.0) -> Iterator[dict]:
    """Send one request to the daemon of mountpoint and yield its answer lines."""
    for path in _socket_paths(mountpoint):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(timeout)
        try:
            s.connect(path)
            break
        except (FileNotFoundError, ConnectionRefusedError):
            s.close()
    else:
        raise NotRunning(f"no storefs daemon answers for {mountpoint}")
    with s, s.makefile("rb") as f:
        s.sendall((json.dumps(req) + "\n").encode())
        for line in f:
            msg = json.loads(line)
            yield msg
            if msg.get("final"):
                return
