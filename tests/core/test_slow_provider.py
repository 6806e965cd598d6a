"""A slow provider must not stall cached work: the core asks it before taking its lock."""

from __future__ import annotations

import tempfile
import threading
import time
from pathlib import Path

from coretier import build

from storefs.core import Caller, Core
from storefs.providers.base import ObjectMeta
from storefs.providers.memory import MemoryProvider

ART = "t/image/b/a"
SLOW = 1.5  # seconds every provider call takes once the provider turns slow
CACHED_BOUND = 0.5  # what a cached getattr may take meanwhile (it takes microseconds)


def make(tmp: Path) -> tuple[Core, MemoryProvider]:
    provider = MemoryProvider("mem")
    return build(tmp, {"mem": provider}, delay="60s", uploaders=1), provider


def slowest_getattr_during(ns: Core, key: str, change) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    """(slowest getattr of key while change runs in a thread, how long change took)."""
    done = threading.Event()
    took = [0.0]
    failed: list[BaseException] = []

    def run() -> None:
        t0 = time.monotonic()
        try:
            change()
        except BaseException as e:  # noqa: BLE001 - raised again in the test's thread
            failed.append(e)
        finally:
            took[0] = time.monotonic() - t0
            done.set()

    threading.Thread(target=run, daemon=True).start()
    time.sleep(0.1)  # the change is waiting on the provider by now
    worst = 0.0
    while not done.is_set():
        t0 = time.monotonic()
        ns.getattr(key)
        worst = max(worst, time.monotonic() - t0)
        time.sleep(0.01)
    if failed:
        raise failed[0]
    return worst, took[0]


def test_a_cached_getattr_does_not_wait_for_a_slow_provider(tmp_path: Path) -> None:
    ns, provider = make(tmp_path)
    with tempfile.NamedTemporaryFile() as src:
        src.write(b"remote")
        src.flush()
        for name in ("remote.png", "other.png"):
            provider.put_file(f"{ART}/{name}", src.name, ObjectMeta(mtime=1.0, mode=0o100644, uid=0, gid=0))
    cached = f"{ART}/cached.png"
    fh = ns.create(cached, 0o644, 0, 0, exclusive=True)
    ns.write(fh, b"local", 0)
    ns.release(fh)
    for name in ("remote.png", "other.png"):
        ns.getattr(f"{ART}/{name}")  # known before the provider slows down ...
        ns.parts.tree.remote.forget(f"{ART}/{name}")  # ... and to be asked again by the change
    provider.latency = SLOW
    try:
        for change in (lambda: ns.chmod(f"{ART}/remote.png", 0o600, Caller(0, 0)),
                       lambda: ns.setxattr(f"{ART}/other.png", "user.k", b"v")):
            worst, took = slowest_getattr_during(ns, cached, change)
            assert took >= SLOW  # the change did wait for the provider ...
            assert worst < CACHED_BOUND, f"a cached getattr waited {worst:.2f}s behind a change"
    finally:
        provider.latency = 0.0
        ns.stop()


def test_the_url_xattr_leaves_the_expiry_to_the_provider(tmp_path: Path) -> None:
    """user.storefs.url uses the provider's own expiry (S3: presign_expiry), not a fixed hour."""
    ns, provider = make(tmp_path)
    asked: list[object] = []

    def url(key: str, *args: object) -> str:
        asked.append(args)
        return f"mem://{key}"

    provider.url = url  # type: ignore[method-assign]
    with tempfile.NamedTemporaryFile() as src:
        provider.put_file(f"{ART}/u.png", src.name, ObjectMeta(mtime=1.0))
    assert ns.getxattr(f"{ART}/u.png", "user.storefs.url") == f"mem://{ART}/u.png".encode()
    assert asked == [()]
    ns.stop()
