"""Each part of the core on its own rules: keys, the tagged finds, schedule and writeback timing, handles,
listings, xattrs, status, and the facade's match with the protocol the FUSE edge uses."""

from __future__ import annotations

import errno
import inspect
import os
import tempfile
import threading
from pathlib import Path

import pytest
from coretier import FakeClock, build

from storefs import keys
from storefs.cache.journal import OP_COPY, OP_PUT, State
from storefs.core import Core, MountCore
from storefs.core.types import CachedFile, Counters, Folder, OpenNode, RemoteFile
from storefs.core.writeback import HELD_OPEN_RECHECK
from storefs.errors import NotPermitted, NotSupported, StorefsError
from storefs.providers.base import ObjectMeta
from storefs.providers.memory import MemoryProvider

ART = "t/image/b/a"


def put(provider: MemoryProvider, key: str, data: bytes) -> None:
    with tempfile.NamedTemporaryFile() as src:
        src.write(data)
        src.flush()
        provider.put_file(key, src.name, ObjectMeta(mtime_ns=1_000_000_000, mode=0o100644, uid=0, gid=0))


def write(core: Core, key: str, data: bytes) -> None:
    fh = core.create(key, 0o644, 0, 0, exclusive=False)
    core.write(fh, data, 0)
    core.release(fh)


@pytest.fixture
def mem() -> MemoryProvider:
    provider = MemoryProvider("mem")
    put(provider, f"{ART}/remote.png", b"remote")
    return provider


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def core(tmp_path: Path, mem: MemoryProvider, clock: FakeClock):  # type: ignore[no-untyped-def]
    c = build(tmp_path, {"mem": mem}, delay="10s", clock=clock)
    try:
        yield c
    finally:
        c.stop()


def test_keys_name_parents_children_and_mount_paths() -> None:
    assert (keys.parent("a/b/c"), keys.name("a/b/c"), keys.parent("a"), keys.name("a")) == ("a/b", "c", "", "a")
    assert (keys.child("", "a"), keys.child("a/b", "c")) == ("a", "a/b/c")
    assert (keys.prefix(""), keys.prefix("a/b"), keys.dir_key("a/b")) == ("", "a/b/", "a/b/")
    assert keys.as_path("a/b") == "/a/b"
    assert keys.parents("a/b/c") == ["a/", "a/b/"]
    assert [keys.from_mount_path("", p) for p in ("/", "", None, "/x/y")] == ["", "", "", "x/y"]
    assert [keys.from_mount_path("t", p) for p in ("/", "/x/y")] == ["t", "t/x/y"]


def test_find_answers_one_tagged_kind_per_case(core: Core) -> None:
    tree = core.parts.tree
    assert tree.find(core.root) == Folder()
    assert isinstance(tree.find(f"{ART}/remote.png"), RemoteFile)
    assert isinstance(tree.find(ART), Folder) and tree.find(ART).remote is not None  # type: ignore[union-attr]
    fh = core.create(f"{ART}/new.png", 0o644, 0, 0, exclusive=True)
    assert isinstance(tree.find(f"{ART}/new.png"), OpenNode)
    core.release(fh)
    found = tree.find(f"{ART}/new.png")
    assert isinstance(found, CachedFile) and found.entry.pending
    assert tree.find(f"{ART}/missing.png") is None
    assert tree.find(f"{ART}/bad\nname") is None  # never asked of a provider


def test_a_change_waits_for_its_quiet_delay_on_the_injected_clock(core: Core, clock: FakeClock) -> None:
    write(core, f"{ART}/q.png", b"q")
    wb = core.parts.writeback
    assert wb.due_in(f"{ART}/q.png") == pytest.approx(10.0)
    clock.advance(4)
    assert wb.due_in(f"{ART}/q.png") == pytest.approx(6.0)
    core.parts.schedule.flushing(True)  # a flush wants everything now
    assert wb.due_in(f"{ART}/q.png") == 0.0
    core.parts.schedule.flushing(False)
    clock.advance(6)
    assert wb.due_in(f"{ART}/q.png") == 0.0
    assert wb.due_in(f"{ART}/never-written.png") is None


def test_a_file_open_for_writing_uploads_after_its_last_close(core: Core, clock: FakeClock) -> None:
    fh = core.create(f"{ART}/held.png", 0o644, 0, 0, exclusive=True)
    core.write(fh, b"x", 0)
    core.flush(fh)
    clock.advance(60)
    assert core.parts.writeback.due_in(f"{ART}/held.png") == max(10.0, HELD_OPEN_RECHECK)
    core.release(fh)
    assert core.parts.writeback.due_in(f"{ART}/held.png") == pytest.approx(10.0)  # the quiet delay starts at close
    clock.advance(10)
    assert core.parts.writeback.due_in(f"{ART}/held.png") == 0.0


def test_sync_settles_the_row_clean_and_the_provider_holds_the_bytes(core: Core, mem: MemoryProvider) -> None:
    write(core, f"{ART}/s.png", b"synced")
    core.parts.writeback.sync(f"{ART}/s.png")
    row = core.parts.index.get(f"{ART}/s.png")
    assert row is not None and row.op is None and row.state == State.CLEAN and row.remote
    assert mem.get_range(f"{ART}/s.png", 0, 6) == b"synced"


def test_a_failed_upload_is_recorded_on_its_row_and_stays_dirty(core: Core) -> None:
    write(core, f"{ART}/f.png", b"f")
    core.parts.writeback.failed(f"{ART}/f.png", OSError("provider away"), 2)
    row = core.parts.index.get(f"{ART}/f.png")
    assert row is not None and row.attempts == 2 and "provider away" in (row.last_error or "")
    assert row.state == State.DIRTY and row.pending
    assert core.status()["errors"] == [{"key": f"{ART}/f.png", "op": OP_PUT, "attempts": 2,
                                        "error": "OSError: provider away", "state": "waiting", "next_try": None}]


def test_a_pending_copy_holds_its_source_back_and_counts_as_pending(core: Core, clock: FakeClock) -> None:
    write(core, f"{ART}/src.png", b"s")
    core.parts.writeback.sync(f"{ART}/src.png")
    core.rename(f"{ART}/src.png", f"{ART}/dst.png")
    row = core.parts.index.get(f"{ART}/dst.png")
    assert row is not None and row.op == OP_COPY and row.copy_src == f"{ART}/src.png"
    clock.advance(60)
    assert core.parts.writeback.due_in(f"{ART}/src.png") > 0  # the delete waits for the copy
    assert core.parts.writeback.due_in(f"{ART}/dst.png") == 0.0
    assert f"{ART}/src.png" in core.pending_keys() and f"{ART}/dst.png" in core.pending_keys()


def test_handles_share_one_node_and_a_closed_handle_is_ebadf(core: Core) -> None:
    key = f"{ART}/remote.png"
    a = core.open(key, os.O_RDONLY)
    b = core.open(key, os.O_RDONLY)
    files = core.parts.files
    assert files.node_of(a) is files.node_of(b) is not None
    core.release(a)
    assert key in core.parts.state.nodes  # still open through b
    core.release(b)
    assert key not in core.parts.state.nodes
    with pytest.raises(StorefsError) as err:
        core.write(a, b"x", 0)
    assert err.value.errno == errno.EBADF
    core.release(a)  # a second release is harmless


def test_the_counters_lose_no_count_to_concurrent_readers(core: Core) -> None:
    counters = Counters()

    def bump() -> None:
        for _ in range(10_000):
            counters.add("bytes_read", 1, calls="read_calls")

    threads = [threading.Thread(target=bump) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert counters.snapshot()["bytes_read"] == counters.snapshot()["read_calls"] == 40_000


def test_a_listing_merges_pending_names_and_hides_deleted_ones(core: Core) -> None:
    write(core, f"{ART}/local.png", b"l")
    assert core.readdir(ART) == ["local.png", "remote.png"]
    core.unlink(f"{ART}/remote.png")
    assert core.readdir(ART) == ["local.png"]
    attrs = dict(core.readdir_attrs(ART))
    assert attrs["local.png"] is not None and attrs["local.png"].size == 1


def test_storefs_xattrs_are_read_only_and_only_user_names_are_kept(core: Core) -> None:
    key = f"{ART}/remote.png"
    assert core.getxattr(key, "user.storefs.state") == b"clean"
    assert core.getxattr(key, "user.storefs.provider") == b"mem"
    with pytest.raises(NotPermitted):
        core.setxattr(key, "user.storefs.state", b"dirty")
    with pytest.raises(NotSupported):
        core.setxattr(key, "security.selinux", b"x")
    core.setxattr(key, "user.tag", b"v")
    assert core.getxattr(key, "user.tag") == b"v"
    assert core.getxattr(key, "user.storefs.state") == b"dirty"
    assert "user.tag" in core.listxattr(key)


def test_the_url_xattr_leaves_the_expiry_to_the_provider(core: Core, mem: MemoryProvider) -> None:
    """user.storefs.url uses the provider's own expiry (S3: presign_expiry), not a fixed hour."""
    asked: list[object] = []

    def url(key: str, *args: object) -> str:
        asked.append(args)
        return f"mem://{key}"

    mem.url = url  # type: ignore[method-assign]
    assert core.getxattr(f"{ART}/remote.png", "user.storefs.url") == f"mem://{ART}/remote.png".encode()
    assert asked == [()]


def test_the_index_keeps_its_bookkeeping_beside_the_rows(core: Core) -> None:
    write(core, f"{ART}/i.png", b"i")
    row = core.parts.index.get(f"{ART}/i.png")
    assert row is not None and "_indexed" not in vars(row)
    assert core.parts.index.pending_below(keys.prefix(ART)) >= 1


def test_the_facade_offers_every_call_of_the_protocol_with_its_signature() -> None:
    for name, member in vars(MountCore).items():
        if name.startswith("_") or not callable(member):
            continue
        ours = getattr(Core, name)
        assert list(inspect.signature(ours).parameters) == list(inspect.signature(member).parameters), name
    assert isinstance(vars(Core)["root"], property) and isinstance(vars(Core)["cfg"], property)


def test_a_landed_delete_hides_a_stale_listing_only_for_a_while(core: Core, mem: MemoryProvider,
                                                                  clock: FakeClock) -> None:
    key = f"{ART}/remote.png"
    core.unlink(key)
    core.parts.writeback.sync(key)
    assert core.parts.state.recently_deleted(key)  # a listing fetched before the delete may still show it
    put(mem, key, b"a listing that still shows it")
    core.parts.tree.remote.drop_below(keys.dir_key(ART))
    assert "remote.png" not in core.readdir(ART)
    assert core.parts.state.deleted_lately([key, f"{ART}/other.png"]) == {key}
    clock.advance(core.parts.state._keep_deleted + 1)
    assert not core.parts.state.recently_deleted(key)  # another mount may have made it again since
    put(mem, key, b"made again elsewhere")
    core.parts.tree.remote.drop_below(keys.dir_key(ART))
    assert "remote.png" in core.readdir(ART)
