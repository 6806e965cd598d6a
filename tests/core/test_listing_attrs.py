"""A readdirplus reply's attributes are exactly what getattr answers, name by name, for every kind of
entry a folder holds: an open file, a pending one, a clean cached one, a file and a folder only the
provider has, a folder made here and not uploaded, one with its mode changed. listing_attrs works
them out from the same evidence as getattr without going through getattr (it is the hot path of a
listing), so each case is checked here. In-process, on memory providers that look names up by
listing (as on S3) and by asking for each name."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from coretier import build

from storefs.core import Core
from storefs.providers.base import ObjectMeta
from storefs.providers.memory import MemoryProvider

ART = "t/image/b/a"


def put(provider: MemoryProvider, key: str, data: bytes, mode: int) -> None:
    """An object written by another S3 client, behind the mount's back."""
    with tempfile.NamedTemporaryFile() as src:
        src.write(data)
        src.flush()
        provider.put_file(key, src.name, ObjectMeta(mtime_ns=1_500_000_000_123_456_789, mode=mode))


def write(core: Core, key: str, data: bytes) -> None:
    fh = core.create(key, 0o644, 0, 0, exclusive=True)
    core.write(fh, data, 0)
    core.release(fh)


@pytest.mark.parametrize("by", ["by-listing", "by-name"])
def test_every_kind_of_entry_is_listed_with_its_getattr(tmp_path: Path, by: str) -> None:
    provider = MemoryProvider("mem", lookup_by_listing=by == "by-listing")
    put(provider, f"{ART}/remote.bin", b"from another client", 0o100600)
    put(provider, f"{ART}/remotedir/inside.bin", b"inside", 0o100644)
    core = build(tmp_path, {"mem": provider}, delay="1h")
    core.start()
    try:
        write(core, f"{ART}/clean.bin", b"uploaded, still cached")
        core.mkdir(f"{ART}/madedir", 0o750, 0, 0)
        core.chmod(f"{ART}/madedir", 0o700)
        assert core.flush_all(30)
        write(core, f"{ART}/pending.bin", b"waiting for its upload")
        core.mkdir(f"{ART}/newdir", 0o755, 0, 0)
        fh = core.create(f"{ART}/open.bin", 0o640, 0, 0, exclusive=True)
        core.write(fh, b"still being written", 0)
        try:
            listed = dict(core.readdir_attrs(ART))
            assert sorted(listed) == ["clean.bin", "madedir", "newdir", "open.bin", "pending.bin", "remote.bin",
                                      "remotedir"]
            # all but the provider's folder (whose mode may need a HEAD) are answered without a request
            assert {n for n, a in listed.items() if a is None} <= {"remotedir"}
            for name, a in listed.items():
                if a is not None:
                    assert a == core.getattr(f"{ART}/{name}"), name
            assert listed["open.bin"].size == len(b"still being written")  # type: ignore[union-attr]
            assert listed["remote.bin"].mode == 0o100600  # type: ignore[union-attr]
            assert listed["madedir"].is_dir and listed["madedir"].mode & 0o777 == 0o700  # type: ignore[union-attr]
        finally:
            core.release(fh)
    finally:
        core.stop()
