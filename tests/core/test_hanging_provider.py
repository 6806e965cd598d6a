"""A provider that hangs must not stall cached work: the core asks it outside its lock.

While another thread's unlink, rename, chmod, setxattr or rmdir waits on a provider call that does not
return, a cached getattr, readdir and read, and a create in a folder the mount knows, each
answer in under 50 ms (they take well under 1 ms when nothing else runs).
"""

from __future__ import annotations

import os
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from coretier import build

from storefs.core import Core
from storefs.providers.base import ObjectMeta
from storefs.providers.memory import MemoryProvider

BUSY = "t/image/b/a"  # where the changes happen
CALM = "t/image/b/calm"  # where cached work goes on meanwhile
FAST = 0.050  # seconds a cached call may take while a provider call hangs
HANG_LIMIT = 3.0  # a hung call gives up after this, so a core that waits under its lock fails the test, not hangs it
SAMPLES = 5


class HangingProvider(MemoryProvider):
    """A memory provider whose calls hang while `hung` is set (until released, or HANG_LIMIT)."""

    def __init__(self) -> None:
        super().__init__("mem")
        self.hung = False
        self.released = threading.Event()
        self.hanging = threading.Semaphore(0)  # one release per call that started to hang

    def _enter(self, method: str) -> None:
        super()._enter(method)
        if self.hung:
            self.hanging.release()
            self.released.wait(HANG_LIMIT)


def put(provider: MemoryProvider, key: str, data: bytes) -> None:
    with tempfile.NamedTemporaryFile() as src:
        src.write(data)
        src.flush()
        provider.put_file(key, src.name, ObjectMeta(mtime_ns=1_000_000_000, mode=0o100644, uid=0, gid=0))


@pytest.fixture
def setup(tmp_path: Path):  # type: ignore[no-untyped-def]
    provider = HangingProvider()
    for name in ("gone.png", "moved.png", "mode.png", "tagged.png"):
        put(provider, f"{BUSY}/{name}", b"busy")
    provider.make_dir(f"{BUSY}/empty/", ObjectMeta(mtime_ns=1_000_000_000, mode=0o40755, uid=0, gid=0))
    put(provider, f"{CALM}/seen.png", b"seen bytes")
    core = build(tmp_path, {"mem": provider}, delay="60s")
    # what the mount knows before the provider hangs: a written file, a read one, the calm folder
    fh = core.create(f"{CALM}/local.png", 0o644, 0, 0, exclusive=True)
    core.write(fh, b"local", 0)
    core.release(fh)
    fh = core.open(f"{CALM}/seen.png", os.O_RDONLY)
    fd, n = core.read_source(fh, 100, 0)
    assert os.pread(fd, n, 0) == b"seen bytes"
    core.release(fh)
    core.readdir(CALM)
    for name in ("gone.png", "moved.png", "mode.png", "tagged.png", "empty"):
        core.getattr(f"{BUSY}/{name}")
    try:
        yield core, provider
    finally:
        provider.hung = False
        provider.released.set()
        core.stop()


def cached_work(core: Core, tag: str) -> dict[str, Callable[[], object]]:
    """The calls that must stay fast: each touches only what the cache holds."""
    def read() -> None:
        fh = core.open(f"{CALM}/seen.png", os.O_RDONLY)
        fd, n = core.read_source(fh, 100, 0)
        assert os.pread(fd, n, 0) == b"seen bytes"
        core.release(fh)

    counter = iter(range(SAMPLES))

    def create() -> None:
        core.release(core.create(f"{CALM}/new-{tag}-{next(counter)}.png", 0o644, 0, 0, exclusive=True))

    return {"getattr": lambda: core.getattr(f"{CALM}/local.png"), "readdir": lambda: core.readdir(CALM),
            "readdir_attrs": lambda: core.readdir_attrs(CALM), "read": read, "create": create}


@pytest.mark.parametrize("change", ["unlink", "rename", "chmod", "setxattr", "rmdir"])
def test_cached_work_stays_fast_while_a_change_waits_on_a_hanging_provider(setup, change: str) -> None:  # type: ignore[no-untyped-def]
    core, provider = setup
    target = {"unlink": "gone.png", "rename": "moved.png", "chmod": "mode.png", "setxattr": "tagged.png",
              "rmdir": "empty"}[change]
    key = f"{BUSY}/{target}"
    run = {"unlink": lambda: core.unlink(key), "rename": lambda: core.rename(key, f"{BUSY}/renamed.png"),
           "chmod": lambda: core.chmod(key, 0o600), "setxattr": lambda: core.setxattr(key, "user.k", b"v"),
           "rmdir": lambda: core.rmdir(key)}[change]
    core.parts.tree.remote.forget(key)  # the change must ask the provider again
    failed: list[BaseException] = []

    def change_thread() -> None:
        try:
            run()
        except BaseException as e:  # noqa: BLE001 - raised again in the test's thread
            failed.append(e)

    provider.hung = True
    t = threading.Thread(target=change_thread, daemon=True)
    t.start()
    assert provider.hanging.acquire(timeout=HANG_LIMIT), f"{change} never asked the provider"
    slow: dict[str, float] = {}
    for name, call in cached_work(core, change).items():
        took = []
        for _ in range(SAMPLES):
            t0 = time.perf_counter()
            call()
            took.append(time.perf_counter() - t0)
        slow[name] = max(took)
    still_waiting = t.is_alive()
    provider.hung = False
    provider.released.set()
    t.join(HANG_LIMIT * 4)
    assert not failed, failed
    assert still_waiting, f"{change} finished before the cached work was measured: the hang proved nothing"
    assert all(v < FAST for v in slow.values()), f"cached work waited behind {change}: {slow}"
