"""No provider call under the core lock: every request a whole workload makes is checked as it is made.

The core lock is swapped for one that knows its owner, and the memory provider fails any call
made by a thread that holds it (the uploader's threads included). Journal transactions are only
ever opened under the core lock, so this covers them too.
"""

from __future__ import annotations

import os
import stat
import tempfile
import threading
from pathlib import Path

from coretier import build

from storefs.core import Caller
from storefs.providers.base import ObjectMeta
from storefs.providers.memory import MemoryProvider

NS = 1_000_000_000  # times are integer nanoseconds

ART = "t/image/b/a"


class OwnedLock:
    """A re-entrant lock that can tell whether the calling thread holds it."""

    def __init__(self) -> None:
        self._lock = threading.RLock()  # the real lock
        self._depth = threading.local()  # how deep the calling thread is in it

    def held(self) -> bool:
        return getattr(self._depth, "n", 0) > 0

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        got = self._lock.acquire(blocking, timeout)
        if got:
            self._depth.n = getattr(self._depth, "n", 0) + 1
        return got

    def release(self) -> None:
        self._depth.n -= 1
        self._lock.release()

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


class Watchful(MemoryProvider):
    """A memory provider that records each call made while the core lock is held."""

    def __init__(self, lock: OwnedLock) -> None:
        super().__init__("mem")
        self.core_lock = lock
        self.breaches: list[str] = []

    def _enter(self, method: str) -> None:
        if self.core_lock.held():
            self.breaches.append(f"{method} in {threading.current_thread().name}")
        super()._enter(method)


def test_no_provider_call_is_made_under_the_core_lock(tmp_path: Path) -> None:
    lock = OwnedLock()
    provider = Watchful(lock)
    with tempfile.NamedTemporaryFile() as src:
        src.write(b"remote bytes")
        src.flush()
        for name in ("r1.png", "r2.png", "r3.png", "sub/r4.png"):
            provider.put_file(f"{ART}/{name}", src.name, ObjectMeta(mtime_ns=1 * NS, mode=0o100644, uid=0, gid=0))
    provider.make_dir(f"{ART}/empty/", ObjectMeta(mtime_ns=1_000_000_000, mode=0o40755, uid=0, gid=0))
    core = build(tmp_path, {"mem": provider}, delay="0s")
    core.parts.state.lock = lock  # type: ignore[assignment]
    core.start()
    try:
        root = Caller(0, 0)
        fh = core.create(f"{ART}/new.png", 0o644, 0, 0, exclusive=True)
        core.write(fh, b"new", 0)
        core.flush(fh)
        core.release(fh)
        fh = core.open(f"{ART}/r1.png", os.O_RDWR)
        fd, n = core.read_source(fh, 100, 0)
        assert os.pread(fd, n, 0) == b"remote bytes"
        core.write(fh, b"R", 0)
        core.release(fh)
        core.readdir_attrs(ART)
        core.rename(f"{ART}/r2.png", f"{ART}/moved.png")
        core.rename(f"{ART}/sub", f"{ART}/sub2")
        core.unlink(f"{ART}/r3.png")
        core.rmdir(f"{ART}/empty")
        core.mkdir(f"{ART}/made", 0o755, 0, 0)
        core.chmod(f"{ART}/moved.png", 0o600, root)
        core.chown(f"{ART}/sub2/r4.png", 1, 1, root)
        core.utimens(f"{ART}/sub2", 5_000_000_000, 5_000_000_000, root)
        core.setxattr(f"{ART}/new.png", "user.k", b"v")
        core.removexattr(f"{ART}/new.png", "user.k")
        core.listxattr(f"{ART}/moved.png")
        core.getxattr(f"{ART}/moved.png", "user.storefs.state")
        core.symlink(f"{ART}/link", b"target", root)
        core.mknod(f"{ART}/fifo", stat.S_IFIFO | 0o644, 0, root)
        core.truncate(f"{ART}/new.png", 1)
        assert core.flush_all(30)
        core.parts.tree.remote.forget(f"{ART}/link")
        assert core.readlink(f"{ART}/link") == b"target"
        core.parts.tree.changed_outside("mem", f"{ART}/moved.png")
    finally:
        core.stop()
    assert sum(provider.calls.values()) > 20, provider.calls  # the workload did reach the provider
    assert provider.breaches == []
