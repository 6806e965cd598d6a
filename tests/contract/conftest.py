"""Servers for the provider contract suite: one SeaweedFS for the session, one moto per module.

The SeaweedFS server is tests/conftest.py's session-wide `seaweed` (so a full run starts one
weed in all); the contract suite adds one bucket on it and gives every test a fresh key prefix
there. moto runs in this process on a port the kernel picks, and every test gets a new bucket
on it (cheap in moto), so both S3 shapes are covered: a bare bucket and a prefix in a bucket.
Neither server's absence reads as a pass: without weed or moto the S3 classes are skipped,
or fail when STOREFS_TESTS_REQUIRE_S3=1 (as the other tiers do).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator

import pytest

from storefs.config import S3ProviderConfig

CONTRACT_BUCKET = "storefs-contract"


def _missing(what: str) -> None:
    """Skip, or fail where the run must cover S3 (STOREFS_TESTS_REQUIRE_S3=1)."""
    if os.environ.get("STOREFS_TESTS_REQUIRE_S3") == "1":
        pytest.fail(f"{what} is not installed, and STOREFS_TESTS_REQUIRE_S3=1")
    pytest.skip(f"{what} is not installed")


@pytest.fixture(scope="session")
def contract_seaweed(seaweed) -> S3ProviderConfig:
    """Settings for the contract bucket on the session's SeaweedFS server (tests add a key prefix)."""
    seaweed.create_bucket(CONTRACT_BUCKET)
    return S3ProviderConfig(name="s3", bucket=CONTRACT_BUCKET, endpoint_url=seaweed.endpoint_url, region=seaweed.region,
                      access_key_id=seaweed.access_key, secret_access_key=seaweed.secret_key, path_style=True,
                      read_deadline=5.0)


@pytest.fixture(scope="module")
def contract_moto() -> Iterator[S3ProviderConfig]:
    """Settings for a moto S3 server in this process on a free loopback port (tests set the bucket)."""
    try:
        from moto.server import ThreadedMotoServer
    except ImportError:
        _missing("moto's S3 server (pip install 'moto[server]')")
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one INFO line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        yield S3ProviderConfig(name="moto", bucket="", endpoint_url=f"http://{host}:{port}", region="us-east-1",
                         access_key_id="testing", secret_access_key="testing", path_style=True, read_deadline=5.0)
    finally:
        server.stop()
