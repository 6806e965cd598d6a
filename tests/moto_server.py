"""An in-process moto S3 server (`moto[server]`) on a free loopback port, for tests.

moto keeps the user metadata of folder-marker objects (keys ending in '/') as AWS and MinIO do,
where SeaweedFS 4.x drops it: the folder-metadata tests run their empty-cache checks against it.

`MotoServer` has the interface `helpers.S3Backend` expects of a server (endpoint_url, region,
access_key, secret_key, client(), create_bucket()), so a bucket on it is an ordinary S3Backend:

    with MotoServer() as srv:
        backend = S3Backend(srv, "my-bucket")
"""

from __future__ import annotations

import logging
from typing import Any


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
        import boto3
        from botocore.config import Config

        opts: dict[str, Any] = {"signature_version": "s3v4", "s3": {"addressing_style": "path"},
                                "retries": {"max_attempts": 2, "mode": "standard"},
                                "connect_timeout": 5, "read_timeout": 30,
                                "request_checksum_calculation": "when_required",
                                "response_checksum_validation": "when_required"}
        opts.update(config)
        return boto3.session.Session().client(
            "s3", endpoint_url=self.endpoint_url, region_name=self.region,
            aws_access_key_id=self.access_key, aws_secret_access_key=self.secret_key, config=Config(**opts))

    def create_bucket(self, name: str) -> None:
        c = self.client()
        try:
            c.create_bucket(Bucket=name)
        except (c.exceptions.BucketAlreadyOwnedByYou, c.exceptions.BucketAlreadyExists):
            pass
        finally:
            c.close()

    def __enter__(self) -> MotoServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
