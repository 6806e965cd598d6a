"""Debian's nginx serving a folder (a mount) on a free loopback port, for the shared-mount tests."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

log = logging.getLogger(__name__)


def nginx_binary() -> str | None:
    """Path of nginx, or None when it is not installed."""
    return shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if os.access(p, os.X_OK)), None)


def free_port() -> int:
    """A loopback port free now (the kernel picks it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Nginx:
    """Debian's nginx serving `root` on a free loopback port: master as root, workers as www-data."""

    def __init__(self, root: str | os.PathLike, workdir: str | os.PathLike, user: str = "www-data") -> None:
        self.root = os.fspath(root)
        self.workdir = Path(workdir)
        self.user = user
        self.port = 0
        self.proc: subprocess.Popen | None = None

    def config(self) -> str:
        w = self.workdir
        return f"""
user {self.user};
worker_processes 1;
pid {w}/nginx.pid;
error_log {w}/error.log info;
events {{ worker_connections 64; }}
http {{
    types {{ image/png png; image/jpeg jpg; video/mp4 mp4; application/octet-stream bin; }}
    default_type application/octet-stream;
    access_log {w}/access.log;
    client_body_temp_path {w}/body;
    proxy_temp_path {w}/proxy;
    fastcgi_temp_path {w}/fastcgi;
    uwsgi_temp_path {w}/uwsgi;
    scgi_temp_path {w}/scgi;
    sendfile on;
    server {{
        listen 127.0.0.1:{self.port};
        server_name localhost;
        root {self.root};
        location / {{ }}
    }}
}}
"""

    def start(self) -> Nginx:
        exe = nginx_binary()
        assert exe, "nginx is not installed"
        self.workdir.mkdir(parents=True, exist_ok=True)
        conf = self.workdir / "nginx.conf"
        last = ""
        for _attempt in range(3):
            self.port = free_port()
            conf.write_text(self.config())
            self.proc = subprocess.Popen([exe, "-p", str(self.workdir), "-e", str(self.workdir / "error.log"),
                                          "-c", str(conf), "-g", "daemon off;"],
                                         stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                         stderr=subprocess.STDOUT, start_new_session=True)
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline and self.proc.poll() is None:
                with (contextlib.suppress(ConnectionRefusedError, TimeoutError),
                      socket.create_connection(("127.0.0.1", self.port), timeout=1)):
                    return self
                time.sleep(0.05)
            last = self.log_tail()
            self.stop()
        raise AssertionError(f"nginx did not start:\n{last}")

    def get(self, path: str, headers: dict | None = None) -> tuple[int, dict, bytes]:
        """(status, headers, body) of a GET; errors (4xx/5xx) are answers too."""
        import urllib.error
        import urllib.request

        req = urllib.request.Request(f"http://127.0.0.1:{self.port}/{path.lstrip('/')}", headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status, dict(r.headers), r.read()
        except urllib.error.HTTPError as e:
            return e.code, dict(e.headers), e.read()

    def log_tail(self, n: int = 30) -> str:
        out = []
        for name in ("error.log", "access.log"):
            with contextlib.suppress(FileNotFoundError):
                out.append(f"--- {name}\n" + "\n".join((self.workdir / name).read_text(errors="replace")
                                                     .splitlines()[-n:]))
        return "\n".join(out)

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()  # SIGTERM: fast shutdown of master and workers
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, 9)
                proc.wait(5)
        if proc.stdout:
            proc.stdout.close()


