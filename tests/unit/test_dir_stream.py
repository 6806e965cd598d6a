"""The edge's readdir streams: one listing per open folder (kept under libfuse's handle for it),
struct stats packed a batch at a time as the kernel's readdirplus requests reach them, and plain
requests that go on with the same names."""

from __future__ import annotations

import stat

import pytest

from storefs import fs
from storefs.core import Attr, Listing
from storefs.errors import NotADirectory
from storefs.fs import DIR_STREAMS_KEPT, PLUS_BATCH, UNPACKED, StorefsOperations, packed_stat

N = 3 * PLUS_BATCH + 5
NEEDS_REQUEST = "remote-only.png"  # a name whose stat would cost a provider request: sent without one


class CountingCore:
    """Just the two calls a readdir stream makes, counted."""

    root = ""

    def __init__(self, names: list[str]) -> None:
        self.names = names
        self.listings: list[str] = []
        self.batches: list[tuple[int, int]] = []

    def attr(self, name: str) -> Attr | None:
        return None if name == NEEDS_REQUEST else Attr(False, len(name), 10**18, stat.S_IFREG | 0o644, 0, 0)

    def listing(self, key: str) -> Listing:
        self.listings.append(key)
        return Listing(key, list(self.names), {})

    def listing_attrs(self, listing: Listing, start: int, stop: int) -> list[Attr | None]:
        self.batches.append((start, stop))
        return [self.attr(name) for name in listing.names[start:stop]]


def ops_with(names: list[str]) -> tuple[StorefsOperations, CountingCore]:
    core = CountingCore(names)
    return StorefsOperations(core), core  # type: ignore[arg-type]


def test_readdirplus_packs_only_the_batch_the_kernel_reads() -> None:
    names = [f"f{i:04d}.png" for i in range(N)]
    ops, core = ops_with(names)
    fh = 0x7F00_1000  # libfuse's struct fuse_dh of the open folder
    s = ops.readdir_plus("/t/image/b/a", fh, 0)
    assert core.listings == ["t/image/b/a"]
    assert core.batches == [(0, PLUS_BATCH - 2)]  # '.' and '..' take the first two slots
    assert s.names[:3] == [b".", b"..", b"f0000.png"] and len(s.names) == N + 2
    assert s.packed[2] == packed_stat(core.attr("f0000.png"))  # type: ignore[arg-type]
    assert all(p is UNPACKED for p in s.packed[PLUS_BATCH:])
    # the kernel asks again from where its buffer filled up: the next batch, the same listing
    s2 = ops.readdir_plus("/t/image/b/a", fh, PLUS_BATCH)
    assert s2 is s and core.listings == ["t/image/b/a"]
    assert core.batches == [(0, PLUS_BATCH - 2), (PLUS_BATCH - 2, 2 * PLUS_BATCH - 2)]
    # a batch already packed is not packed again
    ops.readdir_plus("/t/image/b/a", fh, 5)
    assert len(core.batches) == 2


def test_plain_requests_go_on_with_the_listing_readdirplus_began() -> None:
    names = [f"f{i:04d}.png" for i in range(N)]
    ops, core = ops_with(names)
    fh = 0x7F00_1000  # libfuse's struct fuse_dh of the open folder
    s = ops.readdir_plus("/t/image/b/a", fh, 0)
    core.names = names[:-1]  # a file removed meanwhile: this stream still pages through what it began with
    assert ops.readdir_plus("/t/image/b/a", fh, 0) is not s  # a rewind (offset 0) lists the folder again
    assert core.listings == ["t/image/b/a", "t/image/b/a"]
    s = ops._dir_streams[fh]
    core.names = names[:-2]
    assert ops.readdir_names("/t/image/b/a", fh, 24) is s.names
    assert core.listings == ["t/image/b/a", "t/image/b/a"] and len(s.names) == N + 1
    assert ops._dir_streams == {}  # libfuse holds all the names now: nothing kept for this folder


def test_the_request_for_the_end_ends_the_stream_and_abandoned_ones_are_bounded() -> None:
    ops, core = ops_with([f"f{i}" for i in range(3)])
    ops.readdir_plus("/t/image/b/a", 1, 0)  # the whole listing fits in one reply ...
    assert ops.readdir_names("/t/image/b/a", 1, 5) == []  # ... and the kernel asks for more: the end
    assert core.listings == ["t/image/b/a"] and ops._dir_streams == {}
    for dh in range(DIR_STREAMS_KEPT + 10):  # programs that read one buffer of a folder and closed it
        ops.readdir_plus("/t/image/b/a", dh, 0)
    assert list(ops._dir_streams) == list(range(10, DIR_STREAMS_KEPT + 10))


def test_names_without_a_free_stat_and_undecodable_names() -> None:
    odd = "caf\udce9.png"  # the byte 0xe9, as Fuse decodes a path that is not UTF-8
    ops, core = ops_with([NEEDS_REQUEST, odd])
    fh = 0x7F00_1000  # libfuse's struct fuse_dh of the open folder
    s = ops.readdir_plus("/t/image/b/a", fh, 0)
    assert s.names == [b".", b"..", b"remote-only.png", b"caf\xe9.png"]
    assert s.packed == [None, None, None, packed_stat(core.attr(odd))]  # type: ignore[arg-type]


def test_attributes_go_with_a_listing_once_per_kernel_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    ops, _ = ops_with([])
    assert ops.attrs_due("/a") and ops.attrs_due("/a")  # before init (no timeouts known): always
    now = [100.0]
    monkeypatch.setattr(fs.time, "monotonic", lambda: now[0])
    ops._attrs_window = 1.0  # what init sets: the smaller of attr_timeout and entry_timeout
    assert ops.attrs_due("/a")
    now[0] += 0.5
    assert not ops.attrs_due("/a")  # the kernel still holds what the last listing told it
    assert ops.attrs_due("/b")  # another folder
    now[0] += 0.6
    assert ops.attrs_due("/a") and not ops.attrs_due("/a")
    for i in range(fs.ATTRS_SENT_KEPT + 1):  # folders remembered are bounded, also within one window
        ops.attrs_due(f"/many/{i}")
        assert len(ops._attrs_sent) <= fs.ATTRS_SENT_KEPT
    assert ops.attrs_due("/a")  # forgotten: attributes again, which is what the kernel would get anyway
    now[0] += 2.0
    ops.attrs_due("/one-more")
    assert len(ops._attrs_sent) <= fs.ATTRS_SENT_KEPT
    ops._attrs_window = 0.0  # strictatime (attr_timeout 0): every listing carries them
    assert ops.attrs_due("/one-more")


def test_one_listing_at_a_time_packs_attributes(monkeypatch: pytest.MonkeyPatch) -> None:
    """While one folder's attributes are being packed, another listing is plain names, and its folder's
    attributes stay due for its next listing; once the first is done, attributes go again."""
    ops, _ = ops_with([])
    now = [100.0]
    monkeypatch.setattr(fs.time, "monotonic", lambda: now[0])
    ops._attrs_window = 1.0
    assert ops.attrs_begin("/a")
    assert not ops.attrs_begin("/b")  # /a is being packed
    assert "/b" not in ops._attrs_sent
    ops.attrs_end()
    assert ops.attrs_begin("/b")  # still due
    ops.attrs_end()
    assert not ops.attrs_begin("/a")  # not due: the kernel holds them (and the gate is free again)
    assert ops.attrs_begin("/c")
    ops.attrs_end()


def test_the_gate_is_let_go_after_a_listing_with_attributes_and_after_a_failed_one() -> None:
    names = [f"f{i:04d}.png" for i in range(5)]
    ops, core = ops_with(names)
    edge = fs.Fuse.__new__(fs.Fuse)  # the translation alone, nothing mounted
    edge.operations, edge.encoding, edge.errors = ops, "utf-8", "surrogateescape"
    got: list[tuple[bytes, int]] = []

    def filler(buf: object, name: bytes, st: object, offset: int, flags: int) -> int:
        got.append((name, flags))
        return 0

    assert edge.readdir_fuse_3(b"/t/image/b/a", 0x7F00_2000, filler, 0, None, fs.FUSE_READDIR_PLUS) == 0
    assert [n for n, f in got if f == fs.FUSE_FILL_DIR_PLUS] == [n.encode() for n in names]
    assert not ops._packing.locked()

    def no_folder(key: str) -> Listing:
        raise NotADirectory(key)

    core.listing = no_folder  # type: ignore[method-assign]
    with pytest.raises(fs.mfusepy.FuseOSError):
        edge.readdir_fuse_3(b"/t/image/b/gone", 0x7F00_3000, filler, 0, None, fs.FUSE_READDIR_PLUS)
    assert not ops._packing.locked()
