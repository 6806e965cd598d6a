"""Provider limits checked at the operation (issue 20, item 3, the core's side), in-process on a memory
provider that enforces S3's limits: a key over 1,024 bytes answers ENAMETOOLONG at create, mkdir, mknod,
symlink and rename (a folder's deepest key included), a name the server would change EINVAL, and user
metadata over 2 KiB E2BIG at setxattr; nothing refused is written, journaled or uploaded.

Also `storefs refresh`'s core side (Tree.refresh): what the mount cached of the providers at and below a
key is dropped, pending changes are kept."""

from __future__ import annotations

import errno
import stat
import tempfile
from pathlib import Path

import pytest
from coretier import build
from test_file_and_prefix import put, read

from storefs.core import Caller, Core
from storefs.errors import LayoutError, MetadataTooLarge, NameTooLong, StorefsError
from storefs.providers.base import ObjectMeta
from storefs.providers.memory import MemoryProvider
from storefs.providers.s3.codec import metadata_for

ART = "t/image/b/a"
ME = Caller(0, 0)
#: S3's limits, as the provider (not the core) knows them
MAX_KEY_BYTES = 1024
MAX_META_BYTES = 2048
#: a name of the most bytes a folder name may have
LONG = "n" * 255


class S3LimitedProvider(MemoryProvider):
    """A memory provider with S3's limits: keys up to 1,024 bytes, 2 KiB of user metadata, and a
    server that would store '\\' as '/' (SeaweedFS)."""

    def check_key(self, key: str) -> None:
        if len(key.encode("utf-8", "surrogateescape")) > MAX_KEY_BYTES:
            raise NameTooLong(f"{key[:40]}...: keys are at most {MAX_KEY_BYTES} bytes")
        if "\\" in key:
            raise LayoutError(f"{key}: this server stores '\\' as '/'")

    def check_meta(self, key: str, meta: ObjectMeta) -> None:
        used = sum(len(k.encode()) + len(v.encode()) for k, v in metadata_for(meta).items())
        if used > MAX_META_BYTES:
            raise MetadataTooLarge(f"{key}: {used} bytes of metadata, S3 keeps {MAX_META_BYTES}")


@pytest.fixture
def core(tmp_path: Path):  # type: ignore[no-untyped-def]
    provider = S3LimitedProvider("mem")
    c = build(tmp_path, {"mem": provider})
    c.start()
    parts = ART.split("/")
    for i in range(1, len(parts) + 1):
        c.mkdir("/".join(parts[:i]), 0o755, 0, 0)
    try:
        yield c
    finally:
        c.stop()


def provider_of(core: Core) -> MemoryProvider:
    return core.parts.tree.providers["mem"].inner  # type: ignore[attr-defined, no-any-return]


def settled(core: Core) -> set[str]:
    """Every key the provider holds once everything pending has landed."""
    assert core.flush_all(30)
    p = provider_of(core)
    return set(p._keys)


def new_file(core: Core, key: str, data: bytes = b"x") -> None:
    fh = core.create(key, 0o644, 0, 0, exclusive=True)
    core.write(fh, data, 0)
    core.release(fh)


def deep(core: Core, levels: int) -> str:
    """ART/LONG/LONG/...: levels folders of 255-byte names, made (every one fits)."""
    key = ART
    for _ in range(levels):
        key = f"{key}/{LONG}"
        core.mkdir(key, 0o755, 0, 0)
    return key


def refused(code: int, call, *args) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(StorefsError) as info:
        call(*args)
    assert info.value.errno == code, f"{call.__name__}: {errno.errorcode[info.value.errno]}"


def test_a_key_over_the_limit_is_refused_at_every_operation_that_makes_one(core: Core) -> None:
    folder = deep(core, 3)  # 12 + 3 * 256 = 780 bytes: fits
    before = settled(core)
    too_long = f"{folder}/{LONG}"  # 1,035 bytes
    refused(errno.ENAMETOOLONG, core.mkdir, too_long, 0o755, 0, 0)
    refused(errno.ENAMETOOLONG, core.create, too_long, 0o644, 0, 0, True)
    refused(errno.ENAMETOOLONG, core.symlink, too_long, b"target", ME)
    refused(errno.ENAMETOOLONG, core.mknod, too_long, stat.S_IFIFO | 0o644, 0, ME)
    refused(errno.ENAMETOOLONG, core.mknod, too_long, stat.S_IFREG | 0o644, 0, ME)
    new_file(core, f"{folder}/short.png")
    refused(errno.ENAMETOOLONG, core.rename, f"{folder}/short.png", too_long)
    # nothing refused reached the journal or the provider; the file that fits did
    assert settled(core) == before | {f"{folder}/short.png"}
    assert core.readdir(folder) == ["short.png"]
    assert core.status()["pending"] == 0


def test_a_folder_marker_one_byte_over_is_refused_though_its_name_fits(core: Core) -> None:
    folder = deep(core, 3)
    name = "m" * (MAX_KEY_BYTES - len(folder) - 1)  # the key fits exactly; its marker 'key/' does not
    refused(errno.ENAMETOOLONG, core.mkdir, f"{folder}/{name}", 0o755, 0, 0)
    new_file(core, f"{folder}/{name}")  # a file of that key fits
    assert f"{folder}/{name}" in settled(core)


def test_a_folder_rename_is_checked_for_its_deepest_key(core: Core) -> None:
    src = f"{ART}/src"
    core.mkdir(src, 0o755, 0, 0)
    key = src
    for _ in range(3):
        key = f"{key}/{'d' * 250}"
        core.mkdir(key, 0o755, 0, 0)
    new_file(core, f"{key}/x.png")  # 12 + 4 + 3 * 251 + 6 = 775 bytes
    before = settled(core)
    longer = f"{ART}/{'r' * 255}"  # moves every key 251 bytes deeper: the file's passes 1,024
    refused(errno.ENAMETOOLONG, core.rename, src, longer)
    assert settled(core) == before
    assert core.readdir(ART) == ["src"]
    core.rename(src, f"{ART}/dst")  # a shorter name moves it all
    assert f"{ART}/dst/{'d' * 250}/{'d' * 250}/{'d' * 250}/x.png" in settled(core)


def test_a_deep_key_only_the_provider_holds_is_checked_when_its_folder_moves(core: Core) -> None:
    """The rename lists the folder's whole contents before moving them: a key the mount never
    listed is checked then, before anything moves."""
    deep_key = f"{ART}/src/{'d' * 250}/{'d' * 250}/{'d' * 250}/x.png"
    with tempfile.NamedTemporaryFile() as f:
        provider_of(core).put_file(deep_key, f.name, ObjectMeta(mtime_ns=1_000_000_000))
    before = settled(core)
    refused(errno.ENAMETOOLONG, core.rename, f"{ART}/src", f"{ART}/{'r' * 255}")
    assert settled(core) == before


def test_a_name_the_server_would_change_is_refused(core: Core) -> None:
    refused(errno.EINVAL, core.create, f"{ART}/a\\b.png", 0o644, 0, 0, True)
    refused(errno.EINVAL, core.mkdir, f"{ART}/a\\b", 0o755, 0, 0)
    assert core.readdir(ART) == []


def test_setxattr_over_the_metadata_limit_answers_e2big(core: Core) -> None:
    key = f"{ART}/tagged.png"
    new_file(core, key)
    value = b"v" * 400
    n = 0
    with pytest.raises(MetadataTooLarge) as info:
        while n < 10:  # 5 of them fit with mode, owner and times; the sixth does not
            core.setxattr(key, f"user.tag{n}", value)
            n += 1
    assert info.value.errno == errno.E2BIG
    assert 3 <= n < 10
    with pytest.raises(StorefsError):
        core.getxattr(key, f"user.tag{n}")  # the refused one was not kept
    assert core.flush_all(30)
    stored = provider_of(core).head(key).xattrs
    assert sorted(stored) == sorted(f"user.tag{i}" for i in range(n))
    core.removexattr(key, "user.tag0")  # removing is always allowed, and makes room again
    core.setxattr(key, f"user.tag{n}", value)
    assert core.flush_all(30)
    assert f"user.tag{n}" in provider_of(core).head(key).xattrs


def test_setxattr_on_a_folder_is_checked_too(core: Core) -> None:
    refused(errno.E2BIG, core.setxattr, ART, "user.big", b"v" * 3000)
    core.setxattr(ART, "user.small", b"v")
    assert core.getxattr(ART, "user.small") == b"v"


# ---- storefs refresh ---------------------------------------------------------------------------


def test_refresh_drops_what_the_mount_cached_below_a_folder_and_keeps_pending_changes(tmp_path: Path) -> None:
    provider = MemoryProvider("mem")
    put(provider, f"{ART}/seen.png", b"old bytes")
    put(provider, f"{ART}/sub/deep.png", b"deep")
    put(provider, "t/image/b/other/kept.png", b"elsewhere")
    core = build(tmp_path, {"mem": provider}, fuse="{dir_cache_ttl: 600s, negative_timeout: 600s}")
    core.start()
    try:
        assert read(core, f"{ART}/seen.png") == b"old bytes"
        assert core.readdir(f"{ART}/sub") == ["deep.png"]
        assert core.readdir("t/image/b/other") == ["kept.png"]
        write_pending = f"{ART}/mine.png"
        fh = core.create(write_pending, 0o644, 0, 0, exclusive=True)
        core.write(fh, b"not uploaded yet", 0)
        core.release(fh)
        # another client: new bytes of the same size and a new mode, a new file, a deleted one
        put(provider, f"{ART}/seen.png", b"new bytes", mode=0o100600)
        put(provider, f"{ART}/sub/new.png", b"new")
        provider.delete("t/image/b/other/kept.png")
        assert stat.S_IMODE(core.getattr(f"{ART}/seen.png").mode) == 0o644  # cached for the TTL
        assert core.readdir(f"{ART}/sub") == ["deep.png"]

        dropped = core.parts.tree.refresh(ART)
        assert dropped["listings"] == 1 and dropped["cached_files"] == 1  # sub/ (ART was never listed)
        assert f"{ART}/seen.png" in dropped["keys"] and f"{ART}/sub/deep.png" in dropped["keys"]
        assert stat.S_IMODE(core.getattr(f"{ART}/seen.png").mode) == 0o600
        assert read(core, f"{ART}/seen.png") == b"new bytes"
        assert core.readdir(f"{ART}/sub") == ["deep.png", "new.png"]
        assert core.readdir("t/image/b/other") == ["kept.png"]  # not below the refreshed folder
        assert read(core, write_pending) == b"not uploaded yet"  # a pending change is never dropped
        assert core.status()["pending"] >= 1
        assert core.flush_all(30)
        assert provider.get_range(write_pending, 0, 100) == b"not uploaded yet"
    finally:
        core.stop()
