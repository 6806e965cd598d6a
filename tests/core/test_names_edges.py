"""Names and attributes a user can trip on, in the core: a rename to a name like libfuse's hidden one,
storefs' own xattrs left out of listings, and a write that crosses max_file_size."""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path

import pytest
from conditional import ART, read, write
from coretier import build

from storefs.cache.datafiles import DataFiles
from storefs.cache.journal import Journal
from storefs.config import load_config
from storefs.core import Core
from storefs.daemon import build_core
from storefs.errors import NotFound, TooLarge
from storefs.layout import Layout
from storefs.providers.base import ObjectMeta
from storefs.providers.memory import MemoryProvider

#: what libfuse names a hidden file: ".fuse_hidden%08x%08x" (node id, counter)
LIBFUSE_NAME = ".fuse_hidden0000000700000001"
LIMIT = 100_000


def with_artifact(provider: MemoryProvider) -> MemoryProvider:
    """provider, holding the artifact folder the tests write into."""
    provider.make_dir(f"{ART}/", ObjectMeta(mtime_ns=1_000_000_000, mode=0o40755, uid=0, gid=0))
    return provider


@pytest.fixture
def mem() -> MemoryProvider:
    return with_artifact(MemoryProvider("mem"))


@pytest.fixture
def core(tmp_path: Path, mem: MemoryProvider):  # type: ignore[no-untyped-def]
    c = build(tmp_path, {"mem": mem})
    c.start()
    try:
        yield c
    finally:
        c.stop()


# ---- a rename to a libfuse-like name ---------------------------------------------------------


@pytest.mark.parametrize("name", [LIBFUSE_NAME, ".fuse_hiddenX", ".fuse_hidden0000000700000001.bak",
                                  ".fuse_hidden0000000700000001".upper()])
def test_a_closed_file_renamed_to_a_hidden_like_name_keeps_existing(core: Core, mem: MemoryProvider,
                                                                    name: str) -> None:
    """Only libfuse hides, and only a file it holds open: a user's `mv f .fuse_hidden...` is a rename."""
    write(core, f"{ART}/f", b"kept")
    assert core.flush_all(10)
    core.rename(f"{ART}/f", f"{ART}/{name}")
    assert core.readdir(ART) == [name]
    assert read(core, f"{ART}/{name}") == b"kept"
    assert core.flush_all(10)
    assert [i.key for i in mem.walk(ART) if not i.is_dir] == [f"{ART}/{name}"]
    core.unlink(f"{ART}/{name}")  # and it goes the ordinary way too
    assert core.flush_all(10)
    assert [i.key for i in mem.walk(ART) if not i.is_dir] == []


def test_an_open_file_renamed_to_a_near_miss_of_the_pattern_is_a_rename(core: Core, mem: MemoryProvider) -> None:
    fh = core.create(f"{ART}/f", 0o644, 0, 0, exclusive=False)
    core.write(fh, b"open", 0)
    core.rename(f"{ART}/f", f"{ART}/.fuse_hiddenX")
    assert core.readdir(ART) == [".fuse_hiddenX"]
    core.release(fh)
    assert core.flush_all(10)
    assert mem.head(f"{ART}/.fuse_hiddenX").size == 4


def test_libfuse_hiding_an_open_file_is_its_unlink(core: Core, mem: MemoryProvider) -> None:
    """The real thing: the file is open here and the name is libfuse's pattern; the handle still reads."""
    write(core, f"{ART}/f", b"going")
    assert core.flush_all(10)
    fh = core.open(f"{ART}/f", os.O_RDONLY)
    core.rename(f"{ART}/f", f"{ART}/{LIBFUSE_NAME}")
    assert core.readdir(ART) == []
    fd, n = core.read_source(fh, 100, 0)
    assert os.pread(fd, n, 0) == b"going"
    core.release(fh)
    with pytest.raises(NotFound):  # libfuse's unlink of the hidden name after the last close
        core.unlink(f"{ART}/{LIBFUSE_NAME}")
    assert core.flush_all(10)
    assert [i.key for i in mem.walk(ART) if not i.is_dir] == []


# ---- storefs' own xattrs answer by name but are not listed ------------------------------------------


def test_storefs_xattrs_answer_by_name_but_are_not_listed(core: Core) -> None:
    key = f"{ART}/pic.png"
    write(core, key, b"png")
    core.setxattr(key, "user.tag", b"v")
    assert core.listxattr(key) == ["user.tag"]
    assert core.listxattr(ART) == []
    for name in ("user.storefs.provider", "user.storefs.state", "user.storefs.content_type"):
        assert core.getxattr(key, name), name
    assert core.getxattr(ART, "user.storefs.provider") == b"mem"


def test_storefs_names_in_a_providers_metadata_are_not_listed(core: Core, mem: MemoryProvider) -> None:
    """Another client may store metadata under storefs' names: still never listed, so never copied."""
    with tempfile.NamedTemporaryFile() as src:
        mem.put_file(f"{ART}/foreign", src.name, ObjectMeta(mtime_ns=1_000_000_000, mode=0o100644, xattrs={
            "user.storefs.url": b"https://elsewhere.example/x?X-Amz-Credential=AKIA", "user.ok": b"1"}))
    assert core.listxattr(f"{ART}/foreign") == ["user.ok"]


# ---- a write across max_file_size ----------------------------------------------------------------


@pytest.fixture
def limited(tmp_path: Path):  # type: ignore[no-untyped-def]
    """A core whose files may hold LIMIT bytes."""
    mem = with_artifact(MemoryProvider("mem"))
    cfg_file = tmp_path / "cfg.yaml"
    cfg_file.write_text(f"providers:\n  mem: {{type: local, base_path: {tmp_path / 'unused'}}}\n"
                        f"cache: {{dir: {tmp_path / 'cache'}, writeback_delay: 0s}}\n"
                        f"max_file_size: {LIMIT}\n")
    cfg = load_config(str(cfg_file))
    core = build_core(cfg, Layout(cfg.layout, cfg.max_file_size), {"mem": mem},
                      Journal(os.path.join(cfg.cache.dir, "journal.db")), DataFiles(cfg.cache.dir))
    core.start()
    try:
        yield core, mem
    finally:
        core.stop()


def test_a_write_across_the_limit_is_short_and_the_next_is_efbig(limited) -> None:  # type: ignore[no-untyped-def]
    """As ext4 at its size limit: the bytes below the limit land, the count says how many; a write
    that starts at the limit is EFBIG and changes nothing."""
    core, mem = limited
    key = f"{ART}/big"
    data = bytes(range(256)) * 500  # 128,000 bytes
    fh = core.create(key, 0o644, 0, 0, exclusive=False)
    assert core.write(fh, data[:60_000], 0) == 60_000
    assert core.write(fh, data[60_000:], 60_000) == LIMIT - 60_000
    with pytest.raises(TooLarge) as refused:
        core.write(fh, data[LIMIT:], LIMIT)
    assert refused.value.errno == errno.EFBIG and str(LIMIT) in str(refused.value)
    with pytest.raises(TooLarge):
        core.write(fh, b"x", LIMIT + 10)  # past it, sparse: refused too
    assert core.write(fh, b"\0" * 10, LIMIT - 10) == 10  # rewriting below the limit is fine
    core.release(fh)
    assert core.getattr(key).size == LIMIT
    assert core.flush_all(10)
    assert mem.head(key).size == LIMIT
    assert b"".join(mem.read_stream(key)) == data[:LIMIT - 10] + b"\0" * 10
