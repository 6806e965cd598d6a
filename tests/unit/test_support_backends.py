"""The support package's S3 view: only a 404 reads as absent; a dead server fails the test."""

from __future__ import annotations

import pytest

from storefs.testing.backends import S3Backend
from storefs.testing.moto import MotoServer

BUCKET = "t-support"


def test_a_dead_server_raises_instead_of_reading_as_absent() -> None:
    if not MotoServer.available():
        pytest.skip("moto's S3 server is not installed: pip install 'moto[server]'")
    from botocore.exceptions import BotoCoreError

    server = MotoServer().start()
    try:
        backend = S3Backend(server, BUCKET)
        backend.client.put_object(Bucket=BUCKET, Key="a/k", Body=b"x")
        assert backend.read("a/k") == b"x"
        assert backend.read("a/nope") is None
        assert backend.meta("a/nope") is None
        assert backend.exists("a") and not backend.exists("b")
    finally:
        server.stop()
    for probe in (backend.read, backend.meta, backend.exists):
        with pytest.raises(BotoCoreError):
            probe("a/k")
