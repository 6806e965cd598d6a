"""A key that is both a file and a prefix (issue 20, item 6): 'a/h1' and 'a/h1/x.png', as other S3 tools
write them. The folder keeps the name 'h1'; the file shows beside it as 'h1.storefs-file', which reads,
stats, copies, deletes (the key 'a/h1') and overwrites (writes go back to 'a/h1'). A new name ending in
'.storefs-file' where no such pair exists is refused (EINVAL). In-process, on memory providers that look
names up by listing (as on S3) and by asking for each name."""

from __future__ import annotations

import errno
import tempfile
from pathlib import Path

import pytest
from conditional import read
from coretier import build

from storefs.core import Core
from storefs.errors import StorefsError
from storefs.keys import FILE_SUFFIX
from storefs.providers.base import ObjectMeta
from storefs.providers.memory import MemoryProvider

ART = "t/image/b/a"
FILE = f"{ART}/h1"
ALIAS = f"{ART}/h1{FILE_SUFFIX}"


def put(provider: MemoryProvider, key: str, data: bytes, mode: int = 0o100644) -> None:
    """An object written by another S3 client, behind the mount's back."""
    with tempfile.NamedTemporaryFile() as src:
        src.write(data)
        src.flush()
        provider.put_file(key, src.name, ObjectMeta(mtime_ns=1_000_000_000, mode=mode))


def write(core: Core, key: str, data: bytes, exclusive: bool = False) -> None:
    fh = core.create(key, 0o644, 0, 0, exclusive=exclusive)
    core.write(fh, data, 0)
    core.release(fh)


@pytest.fixture(params=["by-listing", "by-name"])
def both(request: pytest.FixtureRequest, tmp_path: Path):  # type: ignore[no-untyped-def]
    provider = MemoryProvider("mem", lookup_by_listing=request.param == "by-listing")
    put(provider, FILE, b"the file")
    put(provider, f"{FILE}/x.png", b"inside the folder")
    core = build(tmp_path, {"mem": provider})
    core.start()
    try:
        yield core, provider
    finally:
        core.stop()


def objects(core: Core, provider: MemoryProvider) -> dict[str, bytes]:
    assert core.flush_all(30)
    return {k: provider.get_range(k, 0, 1 << 20) for k in provider._keys if not k.endswith("/")}


def test_the_folder_keeps_the_name_and_the_file_shows_beside_it(both) -> None:  # type: ignore[no-untyped-def]
    core, _ = both
    assert core.readdir(ART) == ["h1", f"h1{FILE_SUFFIX}"]
    assert core.getattr(FILE).is_dir
    assert core.readdir(FILE) == ["x.png"]
    a = core.getattr(ALIAS)
    assert not a.is_dir and a.size == len(b"the file")
    assert read(core, ALIAS) == b"the file"
    assert read(core, f"{FILE}/x.png") == b"inside the folder"
    attrs = dict(core.readdir_attrs(ART))
    assert attrs["h1"] is None or attrs["h1"].is_dir
    assert attrs[f"h1{FILE_SUFFIX}"] is None or attrs[f"h1{FILE_SUFFIX}"].size == len(b"the file")


def test_an_overwrite_goes_back_to_the_files_key(both) -> None:  # type: ignore[no-untyped-def]
    core, provider = both
    write(core, ALIAS, b"rewritten by the mount")
    assert objects(core, provider) == {FILE: b"rewritten by the mount", f"{FILE}/x.png": b"inside the folder"}
    assert read(core, ALIAS) == b"rewritten by the mount"
    core.setxattr(ALIAS, "user.note", b"kept")
    assert core.flush_all(30)
    assert provider.head(FILE).xattrs == {"user.note": b"kept"}


def test_cleanup_is_told_the_objects_key_of_a_pending_alias(tmp_path: Path) -> None:
    provider = MemoryProvider("mem", lookup_by_listing=True)
    put(provider, FILE, b"the file")
    put(provider, f"{FILE}/x.png", b"inside the folder")
    core = build(tmp_path, {"mem": provider}, delay="1h")
    try:
        write(core, ALIAS, b"not uploaded yet")
        assert FILE in core.pending_keys() and ALIAS not in core.pending_keys()  # what the bucket holds
    finally:
        core.stop()


def test_a_copy_and_a_rename_read_the_files_key(both) -> None:  # type: ignore[no-untyped-def]
    core, provider = both
    write(core, f"{ART}/copy.png", read(core, ALIAS), exclusive=True)
    core.rename(ALIAS, f"{ART}/moved.png")
    assert objects(core, provider) == {f"{ART}/copy.png": b"the file", f"{ART}/moved.png": b"the file",
                                       f"{FILE}/x.png": b"inside the folder"}
    assert sorted(core.readdir(ART)) == ["copy.png", "h1", "moved.png"]


def test_rm_deletes_the_files_key_and_the_folder_stays(both) -> None:  # type: ignore[no-untyped-def]
    core, provider = both
    core.unlink(ALIAS)
    assert objects(core, provider) == {f"{FILE}/x.png": b"inside the folder"}
    assert core.readdir(ART) == ["h1"]
    assert core.readdir(FILE) == ["x.png"]


def test_without_the_folder_the_file_keeps_its_own_name(both) -> None:  # type: ignore[no-untyped-def]
    core, provider = both
    core.unlink(f"{FILE}/x.png")
    core.rmdir(FILE)
    assert objects(core, provider) == {FILE: b"the file"}
    # found by its name at once (listings show it once the folder's delete is older than dir_cache_ttl)
    a = core.getattr(FILE)
    assert not a.is_dir and a.size == len(b"the file")
    assert read(core, FILE) == b"the file"
    with pytest.raises(StorefsError) as info:
        core.getattr(ALIAS)
    assert info.value.errno == errno.ENOENT


def test_a_new_name_with_the_suffix_is_refused(both) -> None:  # type: ignore[no-untyped-def]
    core, provider = both
    for call, args in ((core.create, (f"{ART}/z{FILE_SUFFIX}", 0o644, 0, 0, True)),
                       (core.create, (f"{ART}/z{FILE_SUFFIX}", 0o644, 0, 0, False)),
                       (core.mkdir, (f"{ART}/z{FILE_SUFFIX}", 0o755, 0, 0)),
                       (core.rename, (f"{FILE}/x.png", f"{ART}/z{FILE_SUFFIX}"))):
        with pytest.raises(StorefsError) as info:
            call(*args)
        assert info.value.errno == errno.EINVAL, call.__name__
    assert objects(core, provider) == {FILE: b"the file", f"{FILE}/x.png": b"inside the folder"}


def test_a_key_spelt_with_the_suffix_in_the_bucket_is_not_shown(tmp_path: Path) -> None:
    provider = MemoryProvider("mem", lookup_by_listing=True)
    put(provider, f"{ART}/odd{FILE_SUFFIX}", b"written by another tool")
    put(provider, f"{ART}/plain.png", b"plain")
    core = build(tmp_path, {"mem": provider})
    core.start()
    try:
        assert core.readdir(ART) == ["plain.png"]
    finally:
        core.stop()
