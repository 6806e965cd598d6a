"""packed_stat: the bytes storefs copies into the kernel's struct stat are what mfusepy's own
field-by-field fill would have written, on this platform's layout."""

from __future__ import annotations

import ctypes
import stat

import mfusepy
import pytest

from storefs import fs
from storefs.core import Attr
from storefs.fs import BLKSIZE, packed_stat, packed_stat_kept


def filled_by_mfusepy(a: Attr) -> bytes:
    st = mfusepy.c_stat()
    m = a.mtime_ns
    mfusepy.set_st_attrs(st, {
        "st_mode": a.mode, "st_nlink": 2 if a.is_dir else 1, "st_size": a.size, "st_blocks": (a.size + 511) // 512,
        "st_blksize": BLKSIZE, "st_uid": a.uid, "st_gid": a.gid, "st_rdev": a.rdev,
        "st_mtime": m, "st_ctime": a.ctime_ns or m, "st_atime": a.atime_ns or m}, use_ns=True)
    return bytes(st)


@pytest.mark.parametrize("a", [
    Attr(False, 12345, 1_700_000_000_123_456_789, stat.S_IFREG | 0o644, 1000, 1001,
         1_600_000_000_000_000_005, 1_500_000_000_000_000_007),
    Attr(True, 0, 1_700_000_000_000_000_000, stat.S_IFDIR | 0o2775, 0, 0),  # ctime, atime read as mtime
    Attr(False, 0, -1_500_000_001, stat.S_IFCHR | 0o600, 65534, 65534, rdev=(1 << 8) | 3),  # before 1970
    Attr(False, (1 << 40) + 1, 0, stat.S_IFREG | 0o4755, 2**32 - 2, 2**32 - 2),
])
def test_packed_stat_is_what_mfusepy_would_fill(a: Attr) -> None:
    packed = packed_stat(a)
    assert len(packed) == ctypes.sizeof(mfusepy.c_stat)
    assert packed == filled_by_mfusepy(a)
    st = mfusepy.c_stat.from_buffer_copy(packed)
    assert (st.st_mode, st.st_size, st.st_uid, st.st_mtimespec.tv_sec) == (a.mode, a.size, a.uid, a.mtime_ns // 10**9)


def test_kept_packings_are_the_same_bytes_and_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """readdirplus packs through a memo: the same bytes as packed_stat, for attributes that differ in
    any field, and the memo is emptied rather than grown past PACKED_KEPT."""
    monkeypatch.setattr(fs, "PACKED_KEPT", 8)
    monkeypatch.setattr(fs, "_packed", {})
    base = Attr(False, 10, 1_700_000_000_000_000_000, stat.S_IFREG | 0o644, 1000, 1000)
    variants = [base, base._replace(size=11), base._replace(mode=stat.S_IFREG | 0o600), base._replace(uid=0),
                base._replace(mtime_ns=base.mtime_ns + 1), base._replace(is_dir=True, mode=stat.S_IFDIR | 0o755)]
    for a in variants * 2:
        assert packed_stat_kept(a) == packed_stat(a)
    assert len({packed_stat_kept(a) for a in variants}) == len(variants)
    for size in range(100):
        packed_stat_kept(base._replace(size=size))
        assert len(fs._packed) <= 8
