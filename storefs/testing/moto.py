"""An in-process moto S3 server (`moto[server]`) on a free loopback port, for tests.

moto keeps the user metadata of folder-marker objects (keys ending in '/') as AWS and MinIO do,
where SeaweedFS 4.x drops it: the folder-metadata tests run their empty-cache checks against it.

`MotoServer` has the interface `storefs.testing.backends.S3Backend` expects of a server
(endpoint_url, region, access_key, secret_key, client(), create_bucket()), so a bucket on it is
an ordinary S3Backend:

    with MotoServer() as srv:
        backend = S3Backend(srv, "my-bucket")
"""

from __future__ import annotations

import logging
from typing import Any

from .backends import boto3_client, ensure_bucket

log = logging.getLogger(__name__)


class MotoServer:
    """moto's ThreadedMotoServer on 127.0.0.1:<free port>, with fixed test credentials."""

    region = "us-east-1"
    access_key = "testing"
    secret_key = "testing"

    def __init__(self) -> None:
        self._server: Any = None
        self.port = 0

    @staticmethod
    def available() -> bool:
        try:
            import moto.server  # noqa: F401
        except ImportError:
            return False
        return True

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> MotoServer:
        from moto.server import ThreadedMotoServer

        # werkzeug logs every request at INFO: keep the test output readable
        logging.getLogger("werkzeug").setLevel(logging.WARNING)
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self._server.start()
        self.port = self._server.get_host_and_port()[1]
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.stop()

    def client(self, **config: Any) -> Any:
        """A boto3 S3 client for this server (path-style, SigV4)."""
        return boto3_client(self, **config)

    def create_bucket(self, name: str) -> None:
        ensure_bucket(self, name)

    def __enter__(self) -> MotoServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
