"""The core without FUSE on a local folder: journal recovery, local-only renames, ordering of provider operations."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest
from coretier import FakeClock, build

from storefs.core import Core
from storefs.errors import NotEmpty, NotFound, NotPermitted
from storefs.providers.local import LocalProvider


class CountingProvider(LocalProvider):
    """A local provider that records every change it is asked to make."""

    def __init__(self, name: str, base: str) -> None:
        super().__init__(name, base, create=True)
        self.calls: list[tuple[str, str]] = []
        self.lock = threading.Lock()

    def _rec(self, op: str, key: str) -> None:
        with self.lock:
            self.calls.append((op, key))

    def put_file(self, key, src_path, meta, **conditions):  # type: ignore[override]
        self._rec("put", key)
        return super().put_file(key, src_path, meta, **conditions)

    def copy(self, src, dst, meta=None, **conditions):  # type: ignore[override]
        self._rec("copy", f"{src}->{dst}")
        return super().copy(src, dst, meta, **conditions)

    def delete(self, key, **conditions):  # type: ignore[override]
        self._rec("delete", key)
        return super().delete(key, **conditions)


def make_ns(tmp: Path, delay: str = "0s", clock: FakeClock | None = None) -> tuple[Core, CountingProvider]:
    provider = CountingProvider("local", str(tmp / "data"))
    provider.check()
    if clock is None:
        return build(tmp, {"local": provider}, delay=delay), provider
    return build(tmp, {"local": provider}, delay=delay, clock=clock), provider


def write_file(ns: Core, key: str, data: bytes) -> None:
    fh = ns.create(key, 0o644, os.getuid(), os.getgid(), exclusive=False)
    ns.write(fh, data, 0)
    ns.flush(fh)
    ns.release(fh)


def read_at(ns: Core, fh: int, size: int, offset: int) -> bytes:
    fd, n = ns.read_source(fh, size, offset)
    return os.pread(fd, n, offset)


def mkdirs(ns: Core, key: str) -> None:
    parts = key.split("/")
    for i in range(1, len(parts) + 1):
        try:
            ns.mkdir("/".join(parts[:i]), 0o755, os.getuid(), os.getgid())
        except Exception:
            pass


def test_write_then_upload(tmp_path: Path) -> None:
    ns, p = make_ns(tmp_path)
    ns.start()
    mkdirs(ns, "t/image/b/a")
    write_file(ns, "t/image/b/a/x.png", b"png-bytes")
    assert ns.flush_all(10)
    assert (tmp_path / "data/t/image/b/a/x.png").read_bytes() == b"png-bytes"
    assert ns.status()["pending"] == 0
    ns.stop()


def test_temp_rename_never_reaches_provider(tmp_path: Path) -> None:
    ns, p = make_ns(tmp_path, delay="30s")
    ns.start()
    mkdirs(ns, "t/image/b/a")
    write_file(ns, "t/image/b/a/.x.png.tmp123", b"data")
    ns.rename("t/image/b/a/.x.png.tmp123", "t/image/b/a/x.png")
    assert ns.flush_all(10)
    assert p.calls == [("put", "t/image/b/a/x.png")]
    ns.stop()


def test_unlink_of_never_uploaded_file_is_local(tmp_path: Path) -> None:
    ns, p = make_ns(tmp_path, delay="30s")
    ns.start()
    mkdirs(ns, "t/image/b/a")
    write_file(ns, "t/image/b/a/scratch", b"data")
    ns.unlink("t/image/b/a/scratch")
    assert ns.flush_all(10)
    assert not [c for c in p.calls if c[0] in ("put", "delete", "copy")]
    ns.stop()


def test_unlink_of_file_open_from_the_listing_deletes_it(tmp_path: Path) -> None:
    """A file known only from the provider, open for reading when it is unlinked (libfuse's hidden
    rename when the last close has not reached the daemon yet): the delete still reaches the provider."""
    data = tmp_path / "data/t/image/b/a"
    data.mkdir(parents=True)
    (data / "f").write_bytes(b"from-elsewhere")
    ns, p = make_ns(tmp_path, delay="30s")
    ns.start()
    fh = ns.open("t/image/b/a/f", os.O_RDONLY)
    assert read_at(ns, fh, 100, 0) == b"from-elsewhere"
    ns.rename("t/image/b/a/f", "t/image/b/a/.fuse_hidden0000000200000001")
    assert ns.readdir("t/image/b/a") == []
    assert read_at(ns, fh, 4, 0) == b"from"  # the open handle still reads
    ns.rmdir("t/image/b/a")  # empty to whoever lists it, as on a local disk
    ns.release(fh)
    assert ns.flush_all(10)
    assert ("delete", "t/image/b/a/f") in p.calls
    assert not (data / "f").exists()
    ns.stop()


def test_rename_of_uploaded_file_copies_before_delete(tmp_path: Path) -> None:
    ns, p = make_ns(tmp_path)
    ns.start()
    mkdirs(ns, "t/image/b/a")
    write_file(ns, "t/image/b/a/one", b"1")
    assert ns.flush_all(10)
    p.calls.clear()
    ns.rename("t/image/b/a/one", "t/image/b/a/two")
    assert ns.flush_all(10)
    assert p.calls == [("copy", "t/image/b/a/one->t/image/b/a/two"), ("delete", "t/image/b/a/one")]
    assert (tmp_path / "data/t/image/b/a/two").read_bytes() == b"1"
    assert not (tmp_path / "data/t/image/b/a/one").exists()
    ns.stop()


def test_recovery_after_crash_uploads_pending(tmp_path: Path) -> None:
    ns, p = make_ns(tmp_path, delay="1h")
    mkdirs(ns, "t/image/b/a")
    for i in range(20):
        write_file(ns, f"t/image/b/a/f{i}", f"content {i}".encode())
    # no stop(): the process "dies" here with everything pending
    assert not (tmp_path / "data/t/image/b/a/f0").exists()
    ns2, p2 = make_ns(tmp_path, delay="0s")
    ns2.start()
    assert ns2.flush_all(20)
    for i in range(20):
        assert (tmp_path / f"data/t/image/b/a/f{i}").read_bytes() == f"content {i}".encode()
    ns2.stop()


def test_changed_during_upload_stays_dirty(tmp_path: Path) -> None:
    ns, p = make_ns(tmp_path)
    mkdirs(ns, "t/image/b/a")
    write_file(ns, "t/image/b/a/f", b"old")
    e = ns.parts.index.get("t/image/b/a/f")
    gen = e.generation
    # a write lands between the snapshot and the end of the upload
    orig = p.put_file

    def slow_put(key, src, meta, **conditions):  # type: ignore[no-untyped-def]
        fh = ns.open(key, os.O_RDWR)
        ns.write(fh, b"new", 0)
        ns.flush(fh)
        ns.release(fh)
        return orig(key, src, meta, **conditions)

    p.put_file = slow_put  # type: ignore[method-assign]
    ns.parts.writeback.sync("t/image/b/a/f")
    e = ns.parts.index.get("t/image/b/a/f")
    assert e.generation > gen and e.pending, "a change made during the upload must keep the entry dirty"
    p.put_file = orig  # type: ignore[method-assign]
    ns.parts.writeback.sync("t/image/b/a/f")
    assert not ns.parts.index.get("t/image/b/a/f").pending
    assert (tmp_path / "data/t/image/b/a/f").read_bytes() == b"new"


def test_layout_errors_and_enotempty(tmp_path: Path) -> None:
    ns, _ = make_ns(tmp_path)
    mkdirs(ns, "t/image/b/a")
    with pytest.raises(NotPermitted):
        ns.create("t/image/b/x.png", 0o644, 0, 0, exclusive=False)
    write_file(ns, "t/image/b/a/f", b"x")
    with pytest.raises(NotEmpty):
        ns.rmdir("t/image/b/a")
    with pytest.raises(NotFound):
        ns.getattr("t/image/b/a/missing")


def test_uploads_resume_after_provider_failure(tmp_path: Path) -> None:
    from storefs.errors import ProviderUnavailable

    ns, p = make_ns(tmp_path)
    orig = p.put_file
    fails = {"n": 3}

    def flaky(key, src, meta, **conditions):  # type: ignore[no-untyped-def]
        if fails["n"] > 0:
            fails["n"] -= 1
            raise ProviderUnavailable("down")
        return orig(key, src, meta, **conditions)

    p.put_file = flaky  # type: ignore[method-assign]
    ns.start()
    mkdirs(ns, "t/image/b/a")
    write_file(ns, "t/image/b/a/f", b"survives")
    t0 = time.monotonic()
    assert ns.flush_all(30)
    assert time.monotonic() - t0 < 30
    assert (tmp_path / "data/t/image/b/a/f").read_bytes() == b"survives"
    assert fails["n"] == 0
    ns.stop()


def test_crash_in_the_middle_of_a_folder_rename_loses_nothing(tmp_path: Path) -> None:
    ns, p = make_ns(tmp_path)
    ns.start()
    mkdirs(ns, "t/image/b/a")
    mkdirs(ns, "t/image/b2")
    for i in range(30):
        write_file(ns, f"t/image/b/a/f{i}", f"v{i}".encode())
    assert ns.flush_all(20)
    ns.stop()
    clock = FakeClock()
    ns, p = make_ns(tmp_path, delay="1h", clock=clock)  # a fresh daemon that will "die" mid-way
    ns.rename("t/image/b/a", "t/image/b2/a")
    clock.advance(3601)  # the quiet delay is over
    # carry out only some of the pending operations, in whatever order they come, then die
    done = 0
    for e in list(ns.parts.index.pending()):
        if ns.parts.writeback.due_in(e.key) == 0.0 and done < 12:
            ns.parts.writeback.sync(e.key)
            done += 1
    assert done == 12, "the drive carried out some of the rename's operations before the crash"
    ns.parts.index.journal.close()  # the dead daemon's journal writes no more (the next open has its log either way)
    ns2, _ = make_ns(tmp_path, delay="0s")
    ns2.start()
    assert ns2.flush_all(30)
    for i in range(30):
        assert (tmp_path / f"data/t/image/b2/a/f{i}").read_bytes() == f"v{i}".encode()
        assert not (tmp_path / f"data/t/image/b/a/f{i}").exists()
    ns2.stop()


def test_the_count_flush_polls_matches_the_scan(tmp_path: Path) -> None:
    """flush_all wakes at every finished upload and asks a count: it must agree with waiting()."""
    ns, p = make_ns(tmp_path, delay="1h")
    mkdirs(ns, "t/image/b/a")
    for i in range(5):
        write_file(ns, f"t/image/b/a/f{i}", b"x")
    fh = ns.open("t/image/b/a/f0", os.O_RDWR)
    ns.write(fh, b"held open", 0)
    ns.unlink("t/image/b/a/f1")  # never uploaded: nothing left to do for it
    ns.chmod("t/image/b/a", 0o700)
    # f2-f4 and the four folders; f0 is held open for writing
    assert ns.parts.status.ready_count() == len(ns.waiting()[0]) == 7
    ns.release(fh)
    assert ns.parts.status.ready_count() == len(ns.waiting()[0]) == 8
    ns.start()
    assert ns.flush_all(20)
    assert ns.parts.status.ready_count() == len(ns.waiting()[0]) == 0
    ns.stop()
