"""A throwaway SeaweedFS (`weed mini`) S3 server on loopback, for tests, demos and benchmarks."""

from __future__ import annotations

import atexit
import errno
import logging
import os
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
from typing import Any

from .backends import boto3_client, ensure_bucket
from .mount import file_tail

log = logging.getLogger(__name__)

GRPC_OFFSET = 10000  # weed dials port+10000 for gRPC whatever -*.port.grpc says (the admin worker does)
SERVICES = ("s3", "master", "volume", "filer", "admin")
MAX_POOL = 32  # connections per client: the tests' threads share one


def weed_binary() -> str | None:
    """Path of `weed`, or None so callers can skip cleanly."""
    return shutil.which("weed")


def _port_free(port: int) -> bool:
    """Whether a listener could bind port (SO_REUSEADDR, as Go servers do: TIME_WAIT does not count)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError as e:
            if e.errno != errno.EADDRINUSE:
                raise
            return False
    return True


def _pick_ports(n: int) -> list[int]:
    """n free loopback ports whose +10000 gRPC twins are free too (kernel-chosen, so no guessing)."""
    held: list[socket.socket] = []
    ports: list[int] = []
    try:
        for _ in range(n * 200):
            if len(ports) == n:
                break
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            p = s.getsockname()[1]
            twin = p + GRPC_OFFSET
            if twin > 65535 or twin in ports or p in [q + GRPC_OFFSET for q in ports] or not _port_free(twin):
                s.close()
                continue
            held.append(s)
            ports.append(p)
        if len(ports) < n:
            raise RuntimeError("could not find free port pairs for weed")
        return ports
    finally:
        for s in held:
            s.close()


def _drop_expect(request: Any, **_: Any) -> None:
    if "Expect" in request.headers:
        del request.headers["Expect"]


class SeaweedServer:
    """`weed mini` on loopback ports in a temp dir, with credentials; start/stop/pause for outage tests."""

    region = "us-east-1"

    def __init__(self, workdir: str | None = None, *, access_key: str = "storefs-test",
                 secret_key: str | None = None, startup_timeout: float = 30.0, keep: bool = False) -> None:
        self._own_dir = workdir is None
        self.workdir = workdir or tempfile.mkdtemp(prefix="seaweed-")
        self.data_dir = os.path.join(self.workdir, "data")
        self.log_path = os.path.join(self.workdir, "weed.log")
        self.access_key = access_key
        self.secret_key = secret_key or secrets.token_hex(16)
        self.startup_timeout = startup_timeout
        self.keep = keep
        self.ports: dict[str, int] = {}
        self.proc: subprocess.Popen[bytes] | None = None
        self._paused = False
        self._atexit = False

    # -- properties ---------------------------------------------------------------------
    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['s3']}"

    @property
    def port(self) -> int:
        return self.ports["s3"]

    def client(self, **config: Any) -> Any:
        """A boto3 S3 client for this server (path-style, SigV4); config overrides botocore Config fields."""
        client = boto3_client(self, **{"max_pool_connections": MAX_POOL, **config})
        # weed answers an empty PUT before "100 Continue", which stalls botocore's next PUT on that connection
        client.meta.events.register("before-send.s3", _drop_expect)
        return client

    def create_bucket(self, name: str) -> None:
        """Create a bucket (names need 3+ characters on SeaweedFS); no error if it exists."""
        ensure_bucket(self, name)

    # -- lifecycle ----------------------------------------------------------------------
    def _command(self) -> list[str]:
        p = self.ports
        cmd = [weed_binary() or "weed", "mini", f"-dir={self.data_dir}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
               "-webdav=false", "-admin.ui=false", "-master.telemetry=false",
               "-s3.port.iceberg=0", "-s3.port.lance=0",
               # every bucket is a collection with volumes of its own: the default cap (free disk /
               # 128 MB) runs out after ~80 buckets, and a test session makes one per test
               "-volume.max=100000",
               f"-s3.localSocket={os.path.join(self.workdir, 's3.sock')}",
               f"-filer.localSocket={os.path.join(self.workdir, 'filer.sock')}"]
        for svc in SERVICES:
            cmd += [f"-{svc}.port={p[svc]}", f"-{svc}.port.grpc={p[svc] + GRPC_OFFSET}"]
        return cmd

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "S3_"))}
        # weed mini turns these into the identity of its 'mini' user: with them, S3 checks signatures
        env["AWS_ACCESS_KEY_ID"] = self.access_key
        env["AWS_SECRET_ACCESS_KEY"] = self.secret_key
        return env

    def _launch(self) -> None:
        os.makedirs(self.data_dir, exist_ok=True)
        with open(self.log_path, "ab") as logf:
            self.proc = subprocess.Popen(self._command(), cwd=self.workdir, env=self._env(), stdin=subprocess.DEVNULL,
                                         stdout=logf, stderr=subprocess.STDOUT, start_new_session=True)
        self._paused = False
        if not self._atexit:
            atexit.register(self.stop)
            self._atexit = True

    def _wait_ready(self) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        c = self.client(connect_timeout=1, read_timeout=3, retries={"total_max_attempts": 1})
        deadline = time.monotonic() + self.startup_timeout
        try:
            while True:
                if self.proc is None or self.proc.poll() is not None:
                    raise RuntimeError(f"weed exited during startup:\n{self.log_tail()}")
                try:
                    c.list_buckets()
                    return
                except (BotoCoreError, ClientError) as e:
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"weed S3 did not answer in {self.startup_timeout:.0f}s:\n"
                                           f"{self.log_tail()}") from e
                    time.sleep(0.2)
        finally:
            c.close()

    def start(self) -> SeaweedServer:
        """Pick free ports, run weed mini, wait until S3 answers (retried on a port clash)."""
        for attempt in range(3):
            self.ports = dict(zip(SERVICES, _pick_ports(len(SERVICES)), strict=True))
            self._launch()
            try:
                self._wait_ready()
                log.info("weed mini S3 at %s (data %s)", self.endpoint_url, self.data_dir)
                return self
            except RuntimeError:
                self._terminate()
                if attempt == 2:
                    raise
                log.warning("weed mini failed to start, retrying on other ports")
        return self

    def log_tail(self, n: int = 40) -> str:
        """Last lines of weed's log, for failure messages."""
        return file_tail(self.log_path, n)

    def _terminate(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        if self._paused:
            self.resume()
        proc.terminate()  # weed exits in ~2 s, but can linger on open client connections
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        for svc, port in self.ports.items():  # gRPC unix sockets have no flag and weed leaves some behind
            path = f"/tmp/seaweedfs-{svc}-grpc-{port + GRPC_OFFSET}.sock"
            try:
                if stat.S_ISSOCK(os.lstat(path).st_mode):
                    os.unlink(path)
            except FileNotFoundError:
                pass

    def stop_server(self) -> None:
        """Stop weed but keep its data dir and ports (connection refused until restart_server)."""
        self._terminate()

    def restart_server(self) -> None:
        """Start weed again on the same ports and data dir."""
        if self.proc is not None and self.proc.poll() is None:
            return
        for _ in range(50):  # the old listeners may take a moment to go
            if all(_port_free(p) and _port_free(p + GRPC_OFFSET) for p in self.ports.values()):
                break
            time.sleep(0.1)
        self._launch()
        self._wait_ready()

    @property
    def paused(self) -> bool:
        return self._paused

    def pause(self) -> None:
        """Freeze weed (SIGSTOP to its whole process group): connections are accepted by the kernel
        but never answered. resume() undoes it; stop() and the atexit hook resume first."""
        if self.proc is not None and not self._paused:
            os.killpg(self.proc.pid, signal.SIGSTOP)  # its own session (start_new_session): weed and any child
            self._paused = True

    def resume(self) -> None:
        """Unfreeze weed after pause()."""
        if self.proc is not None and self._paused:
            os.killpg(self.proc.pid, signal.SIGCONT)
            self._paused = False

    def stop(self) -> None:
        """Terminate weed and remove the temp dir (unless keep=True); safe to call twice."""
        self._terminate()
        if self._atexit:
            atexit.unregister(self.stop)
            self._atexit = False
        if self._own_dir and not self.keep:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> SeaweedServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


if __name__ == "__main__":  # python -m storefs.testing.seaweed: a server for manual poking
    logging.basicConfig(level=logging.INFO)
    with SeaweedServer() as srv:
        print(f"endpoint {srv.endpoint_url} key {srv.access_key} secret {srv.secret_key} (Ctrl+C stops)")
        try:
            signal.pause()
        except KeyboardInterrupt:
            pass
