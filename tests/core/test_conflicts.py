"""Conflicts on the core tier: another writer changed a key first, so its version keeps the key and this
mount's bytes go next to it as a conflict copy (or, with `conflicts: overwrite`, the last writer wins)."""

from __future__ import annotations

import calendar
import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from conditional import ART, ConditionalMemory, read, write
from coretier import build

from storefs.cache.datafiles import DataFiles
from storefs.cache.journal import OP_COPY, OP_DELETE, OP_PUT, Journal, State
from storefs.cache.uploader import Parked
from storefs.config import load_config
from storefs.core import Core
from storefs.core.conflicts import conflict_key, host_label, known_etag
from storefs.daemon import build_core
from storefs.errors import ProviderError, ProviderUnavailable, Rejected
from storefs.layout import Layout

KEEP = f"{ART}/keep.png"
#: 2026-12-02 12:05:01 UTC, the time conflict copies are named with here
WALL = float(calendar.timegm((2026, 12, 2, 12, 5, 1, 0, 0, 0)))
COPY_NAME = re.compile(r"keep\.conflict-[A-Za-z0-9_-]+-\d{8}T\d{6}Z\.png")


def names(core: Core) -> set[str]:
    return set(core.readdir(ART))


@pytest.fixture
def mem() -> ConditionalMemory:
    provider = ConditionalMemory("mem")
    provider.write_theirs(f"{ART}/seed.txt", b"makes the folders")
    return provider


def fixed_wall(core: Core) -> Core:
    core.parts.writeback.wall = lambda: WALL
    core.parts.writeback.host = "web1"
    return core


@pytest.fixture
def core(tmp_path: Path, mem: ConditionalMemory) -> Iterator[Core]:
    c = fixed_wall(build(tmp_path, {"mem": mem}, delay="1h"))
    try:
        yield c
    finally:
        c.stop()


def sync(core: Core, key: str) -> None:
    core.parts.writeback.sync(key)


# ---- names ----------------------------------------------------------------------------------


def test_conflict_copies_are_named_name_conflict_host_utc_time_ext() -> None:
    assert conflict_key(KEEP, WALL, "web1") == f"{ART}/keep.conflict-web1-20261202T120501Z.png"
    assert conflict_key(KEEP, WALL, "web1", 2) == f"{ART}/keep.conflict-web1-20261202T120501Z-2.png"
    assert conflict_key("a/archive.tar.gz", WALL, "h") == "a/archive.tar.conflict-h-20261202T120501Z.gz"
    assert conflict_key("a/README", WALL, "h") == "a/README.conflict-h-20261202T120501Z"
    assert conflict_key("a/.bashrc", WALL, "h") == "a/.bashrc.conflict-h-20261202T120501Z"
    assert conflict_key("top.png", WALL, "h") == "top.conflict-h-20261202T120501Z.png"
    long = conflict_key("a/" + "é" * 127 + ".png", WALL, "h")
    name = long.rsplit("/", 1)[1]
    assert len(name.encode()) <= 255 and name.endswith(".conflict-h-20261202T120501Z.png")


def test_the_host_part_is_the_short_host_name_made_safe() -> None:
    assert host_label("web1.example.com") == "web1"
    assert host_label("my host/α") == "my-host"
    assert host_label("...") == "host"
    assert host_label() == host_label(os.uname().nodename)


# ---- put ----------------------------------------------------------------------------------


def test_a_new_key_another_writer_took_first_becomes_a_conflict_copy(core: Core, mem: ConditionalMemory) -> None:
    """noclobber while the provider was away: the key read as absent, someone else wrote it first."""
    write(core, KEEP, b"mine")
    assert not core.parts.index.get(KEEP).remote  # type: ignore[union-attr]
    mem.write_theirs(KEEP, b"theirs")
    sync(core, KEEP)
    copy = f"{ART}/keep.conflict-web1-20261202T120501Z.png"
    assert mem.bytes_at(KEEP) == b"theirs"
    assert mem.bytes_at(copy) == b"mine"
    assert core.parts.index.get(KEEP) is None
    row = core.parts.index.get(copy)
    assert row is not None and row.state == State.CLEAN and not row.pending and row.data_name
    assert {"keep.png", COPY_NAME.fullmatch(copy.rsplit("/", 1)[1]).group(0)} <= names(core)  # type: ignore[union-attr]
    assert read(core, KEEP) == b"theirs"
    assert read(core, copy) == b"mine"
    st = core.status()
    assert st["conflicts_total"] == 1 and KEEP not in core.pending_keys()
    [c] = st["conflicts"]
    assert (c["op"], c["key"], c["conflict_key"], c["provider"], c["at"]) == (OP_PUT, KEEP, copy, "mem", WALL)


def test_an_edit_of_a_version_another_writer_replaced_keeps_both(core: Core, mem: ConditionalMemory) -> None:
    mem.write_theirs(KEEP, b"v1")
    fh = core.open(KEEP, os.O_RDWR)  # storefs now knows version v1
    mem.write_theirs(KEEP, b"v2 by another host")
    core.write(fh, b"v1 edited here", 0)
    core.release(fh)
    sync(core, KEEP)
    copy = f"{ART}/keep.conflict-web1-20261202T120501Z.png"
    assert mem.bytes_at(KEEP) == b"v2 by another host"
    assert mem.bytes_at(copy) == b"v1 edited here"
    assert read(core, KEEP) == b"v2 by another host"


def test_a_conflict_found_while_the_file_is_open_settles_after_its_last_close(
        core: Core, mem: ConditionalMemory) -> None:
    write(core, KEEP, b"mine")
    mem.write_theirs(KEEP, b"theirs")
    reader = core.open(KEEP, os.O_RDONLY)
    with pytest.raises(ProviderError, match="open"):
        sync(core, KEEP)
    row = core.parts.index.get(KEEP)
    assert row is not None and row.state == State.DIRTY and row.pending
    assert mem.keys_in(f"{ART}/") == [KEEP, f"{ART}/seed.txt"]  # no conflict copy yet
    fd, n = core.read_source(reader, 100, 0)
    assert os.pread(fd, n, 0) == b"mine"
    core.release(reader)
    sync(core, KEEP)
    assert mem.bytes_at(f"{ART}/keep.conflict-web1-20261202T120501Z.png") == b"mine"
    assert mem.bytes_at(KEEP) == b"theirs"


def test_a_conflict_copy_that_cannot_be_uploaded_now_is_tried_again(core: Core, mem: ConditionalMemory) -> None:
    copy = f"{ART}/keep.conflict-web1-20261202T120501Z.png"
    write(core, KEEP, b"mine")
    mem.write_theirs(KEEP, b"theirs")
    mem.refuse[copy] = ProviderUnavailable("connection reset")
    with pytest.raises(ProviderUnavailable):
        sync(core, KEEP)
    assert core.parts.index.get(KEEP).state == State.DIRTY  # type: ignore[union-attr]
    del mem.refuse[copy]
    sync(core, KEEP)
    assert (mem.bytes_at(KEEP), mem.bytes_at(copy)) == (b"theirs", b"mine")


def test_a_conflict_copy_the_provider_refuses_parks_the_change(core: Core, mem: ConditionalMemory) -> None:
    copy = f"{ART}/keep.conflict-web1-20261202T120501Z.png"
    write(core, KEEP, b"mine")
    mem.write_theirs(KEEP, b"theirs")
    mem.refuse[copy] = Rejected("InvalidArgument (400)")
    with pytest.raises(Parked):
        sync(core, KEEP)
    assert core.parts.index.get(KEEP).state == State.PARKED  # type: ignore[union-attr]
    assert mem.bytes_at(KEEP) == b"theirs"


def test_a_taken_conflict_name_gets_a_number(core: Core, mem: ConditionalMemory) -> None:
    write(core, KEEP, b"mine")
    mem.write_theirs(KEEP, b"theirs")
    mem.write_theirs(f"{ART}/keep.conflict-web1-20261202T120501Z.png", b"an older conflict copy")
    sync(core, KEEP)
    assert mem.bytes_at(f"{ART}/keep.conflict-web1-20261202T120501Z.png") == b"an older conflict copy"
    assert mem.bytes_at(f"{ART}/keep.conflict-web1-20261202T120501Z-2.png") == b"mine"


def test_successive_edits_of_one_mount_never_conflict_with_themselves(core: Core, mem: ConditionalMemory) -> None:
    for version in (b"one", b"two", b"three"):
        write(core, KEEP, version)
        sync(core, KEEP)
    fh = core.open(KEEP, os.O_RDWR)
    core.truncate(KEEP, 0, fh)
    core.write(fh, b"four", 0)
    core.release(fh)
    sync(core, KEEP)
    assert mem.bytes_at(KEEP) == b"four"
    assert mem.keys_in(f"{ART}/") == [KEEP, f"{ART}/seed.txt"]
    assert core.status()["conflicts_total"] == 0


def test_a_write_during_the_upload_is_based_on_the_version_that_landed(core: Core, mem: ConditionalMemory) -> None:
    write(core, KEEP, b"first")
    e = core.parts.index.get(KEEP)
    real_put = mem.put_file

    def put_then_edit(*args, **kwargs):  # type: ignore[no-untyped-def]
        info = real_put(*args, **kwargs)
        write(core, KEEP, b"second, written while the first travelled")
        return info

    mem.put_file = put_then_edit  # type: ignore[method-assign]
    sync(core, KEEP)
    mem.put_file = real_put  # type: ignore[method-assign]
    assert core.parts.index.get(KEEP) is e and e.pending and e.etag == mem.head(KEEP).etag  # type: ignore[union-attr]
    sync(core, KEEP)
    assert mem.bytes_at(KEEP) == b"second, written while the first travelled"
    assert core.status()["conflicts_total"] == 0


def test_a_file_whose_version_was_deleted_elsewhere_is_uploaded_anew(core: Core, mem: ConditionalMemory) -> None:
    mem.write_theirs(KEEP, b"v1")
    assert read(core, KEEP) == b"v1"  # cached, version known
    fh = core.open(KEEP, os.O_RDWR)
    mem.delete(KEEP)
    core.write(fh, b"edited", 0)
    core.release(fh)
    sync(core, KEEP)
    assert mem.bytes_at(KEEP) == b"edited"
    assert core.status()["conflicts_total"] == 0


@pytest.mark.parametrize("other_writer", [False, True])
def test_a_file_saved_over_a_known_one_by_rename_is_based_on_that_one(
        core: Core, mem: ConditionalMemory, other_writer: bool) -> None:
    """The save pattern (write a temporary, rename it over the file) conflicts only with a real other writer."""
    mem.write_theirs(KEEP, b"v1")
    assert core.getattr(KEEP).size == 2
    write(core, f"{ART}/.keep.png.tmp", b"saved")
    core.rename(f"{ART}/.keep.png.tmp", KEEP)
    if other_writer:
        mem.write_theirs(KEEP, b"v2 by another host")
    sync(core, KEEP)
    if other_writer:
        assert mem.bytes_at(KEEP) == b"v2 by another host"
        assert mem.bytes_at(f"{ART}/keep.conflict-web1-20261202T120501Z.png") == b"saved"
    else:
        assert mem.bytes_at(KEEP) == b"saved"
    assert core.status()["conflicts_total"] == int(other_writer)


# ---- delete, rename, metadata ---------------------------------------------------------------


def test_a_delete_of_a_version_another_writer_replaced_keeps_theirs(core: Core, mem: ConditionalMemory) -> None:
    mem.write_theirs(KEEP, b"v1")
    assert core.getattr(KEEP).size == 2
    core.unlink(KEEP)
    assert "keep.png" not in names(core)
    mem.write_theirs(KEEP, b"v2 by another host")
    sync(core, KEEP)
    assert mem.bytes_at(KEEP) == b"v2 by another host"
    assert core.parts.index.get(KEEP) is None
    assert "keep.png" in names(core) and read(core, KEEP) == b"v2 by another host"
    [c] = core.status()["conflicts"]
    assert (c["op"], c["key"], c["conflict_key"]) == (OP_DELETE, KEEP, None)


def test_a_delete_of_an_unchanged_file_goes_through(core: Core, mem: ConditionalMemory) -> None:
    mem.write_theirs(KEEP, b"v1")
    assert core.getattr(KEEP).size == 2
    core.unlink(KEEP)
    assert core.parts.index.get(KEEP).etag == mem.head(KEEP).etag  # type: ignore[union-attr]
    sync(core, KEEP)
    assert KEEP not in mem.keys_in(f"{ART}/")


def test_a_rename_whose_source_changed_takes_the_version_renamed_from_the_cache(
        core: Core, mem: ConditionalMemory) -> None:
    """The version renamed (cached here) lands at the destination; the source keeps the other writer's."""
    src, dst = f"{ART}/src.png", f"{ART}/dst.png"
    mem.write_theirs(src, b"v1")
    assert read(core, src) == b"v1"  # all of it in the cache
    core.rename(src, dst)
    mem.write_theirs(src, b"v2 by another host")
    sync(core, dst)
    sync(core, src)
    assert mem.bytes_at(dst) == b"v1"
    assert mem.bytes_at(src) == b"v2 by another host"
    assert read(core, dst) == b"v1" and read(core, src) == b"v2 by another host"
    ops = sorted((c["op"], c["key"]) for c in core.status()["conflicts"])
    assert ops == [(OP_COPY, dst), (OP_DELETE, src)]


def test_a_rename_from_the_cache_onto_a_destination_another_writer_took_keeps_both(
        core: Core, mem: ConditionalMemory) -> None:
    src, dst = f"{ART}/src.png", f"{ART}/dst.png"
    mem.write_theirs(src, b"v1")
    assert read(core, src) == b"v1"
    core.rename(src, dst)
    mem.write_theirs(src, b"v2 by another host")
    mem.write_theirs(dst, b"a third writer's")
    sync(core, dst)
    assert mem.bytes_at(dst) == b"a third writer's"
    assert mem.bytes_at(f"{ART}/dst.conflict-web1-20261202T120501Z.png") == b"v1"
    [c] = core.status()["conflicts"]
    assert (c["op"], c["key"]) == (OP_COPY, dst)


def test_a_rename_whose_source_changed_and_is_not_cached_copies_what_it_holds_now(
        core: Core, mem: ConditionalMemory) -> None:
    """Not cached, the version renamed is nowhere any more: the destination gets the source's current
    version, and the source keeps it too (two conflicts reported)."""
    src, dst = f"{ART}/src.png", f"{ART}/dst.png"
    mem.write_theirs(src, b"v1")
    assert core.getattr(src).size == 2
    core.rename(src, dst)
    assert core.parts.index.get(dst).op == OP_COPY  # type: ignore[union-attr]
    mem.write_theirs(src, b"v2 by another host")
    sync(core, dst)
    sync(core, src)
    assert mem.bytes_at(dst) == b"v2 by another host"
    assert mem.bytes_at(src) == b"v2 by another host"
    assert {"src.png", "dst.png"} <= names(core)
    assert read(core, dst) == b"v2 by another host"
    ops = sorted((c["op"], c["key"]) for c in core.status()["conflicts"])
    assert ops == [(OP_COPY, dst), (OP_DELETE, src)]


def test_a_rename_of_an_unchanged_file_moves_it(core: Core, mem: ConditionalMemory) -> None:
    src, dst = f"{ART}/src.png", f"{ART}/dst.png"
    mem.write_theirs(src, b"v1")
    assert core.getattr(src).size == 2
    core.rename(src, dst)
    sync(core, dst)
    sync(core, src)
    assert mem.bytes_at(dst) == b"v1" and src not in mem.keys_in(f"{ART}/")
    assert core.status()["conflicts_total"] == 0


def test_a_metadata_change_of_a_replaced_version_is_dropped(core: Core, mem: ConditionalMemory) -> None:
    mem.write_theirs(KEEP, b"v1")
    core.chmod(KEEP, 0o100600)
    mem.write_theirs(KEEP, b"v2 by another host")
    sync(core, KEEP)
    assert mem.head(KEEP).mode == 0o100644
    assert core.parts.index.get(KEEP) is None
    assert core.getattr(KEEP).mode == 0o100644 and read(core, KEEP) == b"v2 by another host"
    assert [c["op"] for c in core.status()["conflicts"]] == ["meta"]


def test_known_etag_is_the_keys_own_never_a_pending_copys_source() -> None:
    from storefs.cache.journal import Entry
    assert known_etag(Entry("k", "p", etag="e1"), None) == "e1"
    assert known_etag(Entry("k", "p", op=OP_COPY, copy_src="s", etag="src-etag"), None) is None
    assert known_etag(None, None) is None


# ---- overwrite mode, and what survives a remount -----------------------------------------------


def rebuild(tmp_path: Path, mem: ConditionalMemory, extra: str = "") -> Core:
    """A core on the journal and cache that tmp_path holds (the config coretier.build wrote, plus extra)."""
    cfg_file = tmp_path / "cfg.yaml"
    cfg_file.write_text(cfg_file.read_text() + extra)
    cfg = load_config(str(cfg_file))
    return fixed_wall(build_core(cfg, Layout(cfg.layout, cfg.max_file_size), {"mem": mem},
                                 Journal(os.path.join(cfg.cache.dir, "journal.db")), DataFiles(cfg.cache.dir)))


def test_overwrite_mode_lets_the_last_writer_win(tmp_path: Path, mem: ConditionalMemory) -> None:
    build(tmp_path, {"mem": mem}, delay="1h").parts.index.journal.close()
    core = rebuild(tmp_path, mem, "conflicts: overwrite\n")
    try:
        assert core.cfg.conflicts == "overwrite"
        write(core, KEEP, b"mine")
        mem.write_theirs(KEEP, b"theirs")
        sync(core, KEEP)
        assert mem.bytes_at(KEEP) == b"mine"
        assert mem.keys_in(f"{ART}/") == [KEEP, f"{ART}/seed.txt"]
        assert core.status()["conflicts_total"] == 0
    finally:
        core.stop()


def test_conflicts_are_remembered_across_a_remount(tmp_path: Path, mem: ConditionalMemory) -> None:
    core = fixed_wall(build(tmp_path, {"mem": mem}, delay="1h"))
    write(core, KEEP, b"mine")
    mem.write_theirs(KEEP, b"theirs")
    sync(core, KEEP)
    core.stop()
    core.parts.index.journal.close()
    again = rebuild(tmp_path, mem)
    try:
        st = again.status()
        assert st["conflicts_total"] == 1 and st["conflicts"][0]["key"] == KEEP
        copy = st["conflicts"][0]["conflict_key"]
        assert read(again, copy) == b"mine"
    finally:
        again.stop()
