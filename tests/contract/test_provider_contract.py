"""The Provider contract (storefs/providers/base.py), written once and run against every provider.

`ProviderContract` holds the tests; each concrete class below supplies a `provider` fixture
(a fresh, empty store per test) and states, as class attributes, the few ways its backend
legitimately differs (a local disk keeps its own ctime, SeaweedFS drops a folder marker's
metadata, ...). The tests read those attributes and assert the exact expected outcome for each:
a difference is never a skip or a looser check. fsspec's abstract test classes and rclone's
fstests are the models.

    python -m pytest -q tests/contract                   # all providers
    python -m pytest -q tests/contract -k Memory         # one of them
"""

from __future__ import annotations

import errno
import itertools
import os
import stat
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import boto3
import pytest

from storefs.config import S3ProviderConfig
from storefs.errors import Conflict, NotEmpty, NotFound, ProviderError, ProviderUnavailable
from storefs.providers.base import ObjectInfo, ObjectMeta, Provider, UploadLog
from storefs.providers.local import LocalProvider
from storefs.providers.memory import MemoryProvider
from storefs.providers.s3 import S3Provider

#: binary fractions and whole microseconds: every provider keeps these exactly
MTIME = 1700000000_500000000  # times in integer nanoseconds, as providers keep them
ATIME = 1700000100_250000000
CTIME = 1700000200_750000000
FINE_MTIME = 1700000000_123456789
NS = 1_000_000_000
UID, GID = 1234, 5678
FILE_MODE = stat.S_IFREG | 0o640
DIR_MODE = stat.S_IFDIR | 0o750
LINK_MODE = stat.S_IFLNK | 0o777
FIFO_MODE = stat.S_IFIFO | 0o640
PAYLOAD = bytes(range(256)) * 20 + b"tail"  # 5124 bytes: small, every byte value
MiB = 1 << 20
#: writers racing for one new key with if_absent
RACERS = 8
#: a symlink target as POSIX allows it: any bytes but NUL, not UTF-8
LINK_TARGET = b"../t\xff\xfe-arget/\x80x"
#: a multipart upload id no server has given out
UNKNOWN_UPLOAD = "bm8tc3VjaC11cGxvYWQ"

Put = Callable[..., ObjectInfo]


def meta(**kw) -> ObjectMeta:
    """A full ObjectMeta of a regular file; kw overrides fields."""
    base = ObjectMeta(mtime_ns=MTIME, mode=FILE_MODE, uid=UID, gid=GID, content_type="image/png",
                      xattrs={"user.project": b"cats", "user.bin": b"\x00\xff\x80"},
                      ctime_ns=CTIME, atime_ns=ATIME)
    return replace(base, **kw)


class ProviderContract:
    """Every Provider method as base.py promises it; subclasses give `provider` and their differences."""

    #: head_dir returns what make_dir stored (SeaweedFS 4.x keeps no metadata on a marker)
    keeps_dir_metadata: bool = True
    #: a folder that only exists because files lie below it has metadata of its own (a real disk folder)
    implicit_dirs_have_metadata: bool = False
    #: ctime is stored as given (a local disk keeps its own status-change time)
    keeps_ctime: bool = True
    #: content_type is stored as given (a local disk has none: head gives None)
    keeps_content_type: bool = True
    #: uid and gid are stored as given (a local disk only when storefs runs as root)
    keeps_owner: bool = True
    #: what remove_dir of a folder with files below does: raise this, or (None) drop the marker only
    remove_non_empty_dir_raises: type[Exception] | None = NotEmpty
    #: scheme of url(): None when the provider has no URLs
    url_scheme: str | None = None

    @pytest.fixture
    def provider(self) -> Iterator[Provider]:
        raise NotImplementedError("a concrete contract class supplies a fresh, empty provider")

    @pytest.fixture
    def put(self, provider: Provider, tmp_path: Path) -> Put:
        """put(key, data, if_match=, if_absent=, **meta fields): put_file from a fresh source file."""
        counter = itertools.count()
        src_dir = tmp_path / "src"
        src_dir.mkdir()

        def do(key: str, data: bytes = PAYLOAD, m: ObjectMeta | None = None, *, if_match: str | None = None,
               if_absent: bool = False, **kw) -> ObjectInfo:
            src = src_dir / f"f{next(counter)}"
            src.write_bytes(data)
            return provider.put_file(key, str(src), m if m is not None else meta(**kw), if_match=if_match,
                                     if_absent=if_absent)
        return do

    # -- expectations that depend on the class's differences ------------------------------

    def owner(self) -> tuple[int, int]:
        return (UID, GID) if self.keeps_owner else (os.geteuid(), os.getegid())

    def assert_meta(self, info: ObjectInfo, m: ObjectMeta, size: int) -> None:
        """info carries m (as this provider keeps it) and the given size."""
        assert (info.size, info.is_dir) == (size, False)
        assert (info.mode, info.mtime_ns, info.atime_ns) == (m.mode, m.mtime_ns, m.atime_ns)
        assert (info.uid, info.gid) == ((m.uid, m.gid) if self.keeps_owner else self.owner())
        assert info.xattrs == m.xattrs
        if self.keeps_ctime:
            assert info.ctime_ns == m.ctime_ns
        else:
            assert info.ctime_ns == pytest.approx(time.time_ns(), abs=600 * NS)  # the backend's own clock
        assert info.content_type == (m.content_type if self.keeps_content_type else None)

    def assert_dir_meta(self, info: ObjectInfo | None, key: str, m: ObjectMeta) -> None:
        """head_dir's answer for a folder made with make_dir(key, m)."""
        if not self.keeps_dir_metadata:
            assert info is None
            return
        assert info is not None and (info.key, info.is_dir, info.size) == (key, True, 0)
        assert (info.mode, info.mtime_ns, info.atime_ns, info.xattrs) == (m.mode, m.mtime_ns, m.atime_ns, m.xattrs)
        assert (info.uid, info.gid) == ((m.uid, m.gid) if self.keeps_owner else self.owner())
        if self.keeps_ctime:
            assert info.ctime_ns == m.ctime_ns

    # -- check, head, get_range -------------------------------------------------------------

    def test_check_passes_on_a_usable_store(self, provider):
        provider.check()
        assert isinstance(provider.name, str) and isinstance(provider.kind, str)

    def test_missing_object_is_not_found_everywhere(self, provider, tmp_path):
        with pytest.raises(NotFound):
            provider.head("nope/x")
        with pytest.raises(NotFound):
            provider.get_range("nope/x", 0, 10)
        with pytest.raises(NotFound):
            next(provider.read_stream("nope/x"))
        with pytest.raises(NotFound):
            provider.set_meta("nope/x", meta())
        with pytest.raises(NotFound):
            provider.copy("nope/x", "nope/y")
        with pytest.raises(NotFound):
            provider.head("nope/y")  # a failed copy leaves nothing behind

    def test_put_then_head_round_trip(self, provider, put):
        m = meta()
        stored = put("a/x.png", m=m)
        assert stored.key == "a/x.png" and stored.size == len(PAYLOAD)
        got = provider.head("a/x.png")
        assert got.key == "a/x.png" and got.name == "x.png"
        self.assert_meta(got, m, len(PAYLOAD))
        assert isinstance(got.etag, str) and got.etag
        assert (stored.mode, stored.mtime_ns) == (got.mode, got.mtime_ns)

    def test_head_many_answers_each_name_in_order_as_head_does(self, provider, put):
        m = meta()
        present = [f"a/many/f{i:03d}.png" for i in range(70)]  # more than one S3 pipelined batch
        for key in present[::2]:
            put(key, m=m)
        got = list(provider.head_many(present))
        assert [key for key, _ in got] == present
        for i, (key, found) in enumerate(got):
            if i % 2:
                assert isinstance(found, NotFound), (key, found)
            else:
                assert isinstance(found, ObjectInfo) and found.key == key, (key, found)
                self.assert_meta(found, m, len(PAYLOAD))
                assert found.etag == provider.head(key).etag
        assert list(provider.head_many([])) == []

    def test_fine_mtime_kept_to_the_nanosecond(self, provider, put):
        put("a/x", b"x", mtime_ns=FINE_MTIME, atime_ns=FINE_MTIME + 1)
        got = provider.head("a/x")
        assert (got.mtime_ns, got.atime_ns) == (FINE_MTIME, FINE_MTIME + 1)

    def test_get_range_inside_at_and_past_the_end(self, provider, put):
        put("a/x", PAYLOAD)
        n = len(PAYLOAD)
        assert provider.get_range("a/x", 0, n) == PAYLOAD
        assert provider.get_range("a/x", 100, 50) == PAYLOAD[100:150]
        assert provider.get_range("a/x", n - 4, 100) == b"tail"  # short only at the end
        assert provider.get_range("a/x", 0, n + 1000) == PAYLOAD
        assert provider.get_range("a/x", n, 10) == b""
        assert provider.get_range("a/x", n + 500, 10) == b""
        assert provider.get_range("a/x", 10, 0) == b""

    def test_get_range_into_writes_at_the_offset_and_is_short_only_at_the_end(self, provider, put, tmp_path):
        # what a read's fetch uses: the bytes land in the cache file as they arrive
        big = os.urandom(3 * 1024 * 1024 + 17)  # more than one of the S3 provider's 1 MiB pieces
        put("a/x", PAYLOAD)
        put("a/big", big)
        n = len(PAYLOAD)
        cache = tmp_path / "cache.bin"
        cache.write_bytes(b"\xee" * (len(big) + 100))
        fd = os.open(cache, os.O_RDWR)
        try:
            assert provider.get_range_into("a/x", 100, 50, fd) == 50
            assert provider.get_range_into("a/x", n - 4, 100, fd) == 4
            assert provider.get_range_into("a/x", n, 10, fd) == 0
            assert provider.get_range_into("a/x", n + 500, 10, fd) == 0
            assert provider.get_range_into("a/x", 10, 0, fd) == 0
            got = os.pread(fd, n + 100, 0)
            assert got[100:150] == PAYLOAD[100:150] and got[n - 4:n] == b"tail"
            assert got[:100] == b"\xee" * 100
            assert got[150:n - 4] == b"\xee" * (n - 154) and got[n:] == b"\xee" * 100
            assert provider.get_range_into("a/big", 5, len(big), fd) == len(big) - 5
            assert os.pread(fd, len(big) + 100, 0) == b"\xee" * 5 + big[5:] + b"\xee" * 100
            with pytest.raises(NotFound):
                provider.get_range_into("nope/x", 0, 10, fd)
        finally:
            os.close(fd)

    def test_get_range_into_a_file_that_refuses_the_bytes_raises_its_error(self, provider, put, tmp_path):
        # the cache disk's error (EBADF here, ENOSPC in life) is not the store's: raised as it is, not retried
        # as a lost connection, and the next read works
        big = os.urandom(2 * 1024 * 1024 + 5)
        put("a/big", big)
        cache = tmp_path / "cache.bin"
        cache.write_bytes(b"")
        fd = os.open(cache, os.O_RDONLY)
        try:
            with pytest.raises(OSError) as got:
                provider.get_range_into("a/big", 0, len(big), fd)
            assert got.value.errno == errno.EBADF
        finally:
            os.close(fd)
        assert provider.get_range("a/big", 1, 10) == big[1:11]

    def test_empty_object(self, provider, put):
        put("a/empty", b"")
        assert provider.head("a/empty").size == 0
        assert provider.get_range("a/empty", 0, 10) == b""
        assert b"".join(provider.read_stream("a/empty")) == b""

    def test_overwrite_replaces_bytes_metadata_and_etag(self, provider, put):
        first = put("a/x", b"first version")
        second = put("a/x", b"second, longer version", mtime_ns=MTIME + 10, mode=stat.S_IFREG | 0o600)
        got = provider.head("a/x")
        assert (got.size, got.mtime_ns, got.mode) == (len(b"second, longer version"), MTIME + 10, stat.S_IFREG | 0o600)
        assert provider.get_range("a/x", 0, 100) == b"second, longer version"
        assert first.etag != second.etag and got.etag == provider.head("a/x").etag

    def test_folder_name_is_not_an_object(self, provider, put):
        put("a/sub/x", b"x")
        with pytest.raises(NotFound):
            provider.head("a/sub")
        with pytest.raises(NotFound):
            provider.head("a")

    def test_keys_with_spaces_and_unicode(self, provider, put):
        key = "t1/b c/ü ✓ (1)+%20.png"
        put(key, b"odd")
        assert provider.head(key).size == 3 and provider.get_range(key, 0, 10) == b"odd"
        assert [i.key for i in provider.list("t1/b c/")] == [key]
        assert {i.key for i in provider.list("t1/")} == {"t1/b c/"}

    # -- list, walk, dir_exists -------------------------------------------------------------

    def _tree(self, provider: Provider, put: Put) -> None:
        put("a/x", b"1")
        put("a/y", b"22")
        put("a/sub/z", b"333")
        put("a/sub/deep/w", b"4444")
        put("b/v", b"5")
        put("top", b"6")
        provider.make_dir("a/m/", ObjectMeta(mtime_ns=MTIME, mode=DIR_MODE))

    def test_list_gives_immediate_children_only(self, provider, put):
        self._tree(provider, put)
        entries = list(provider.list("a/"))
        got = {i.key: i for i in entries}
        assert sorted(got) == sorted(i.key for i in entries) == ["a/m/", "a/sub/", "a/x", "a/y"]  # each once
        assert [got[k].is_dir for k in ("a/x", "a/y", "a/sub/", "a/m/")] == [False, False, True, True]
        assert (got["a/x"].size, got["a/y"].size) == (1, 2)
        assert got["a/sub/"].name == "sub" and got["a/m/"].name == "m"
        assert {i.key for i in provider.list("a")} == set(got)  # a prefix without its '/' is the same folder
        assert {i.key: i.size for i in provider.list("a/sub/")} == {"a/sub/z": 3, "a/sub/deep/": 0}
        assert list(provider.list("a/m/")) == []

    def test_list_root(self, provider, put):
        self._tree(provider, put)
        assert sorted((i.key, i.is_dir) for i in provider.list("")) == [("a/", True), ("b/", True), ("top", False)]

    def test_list_of_missing_folder_is_empty(self, provider, put):
        put("a/x", b"1")
        assert list(provider.list("nope/")) == []
        assert list(provider.list("a/x/")) == []  # a file is no folder

    def test_listing_metadata_as_the_provider_announces(self, provider, put):
        m = meta(mode=stat.S_IFREG | 0o604, mtime_ns=MTIME + 7)
        put("a/x", b"data", m=m)
        (entry,) = provider.list("a/")
        assert (entry.key, entry.size) == ("a/x", 4)
        if provider.listing_has_metadata:
            head = provider.head("a/x")
            assert (entry.mode, entry.mtime_ns, entry.uid, entry.gid) == (head.mode, head.mtime_ns, head.uid, head.gid)
        else:  # an object store's listing has no mode: the caller must head the file
            assert entry.mode is None

    def test_walk_gives_everything_below(self, provider, put):
        self._tree(provider, put)
        got = list(provider.walk("a/"))
        files = {i.key: i.size for i in got if not i.is_dir}
        assert files == {"a/x": 1, "a/y": 2, "a/sub/z": 3, "a/sub/deep/w": 4}
        dirs = {i.key for i in got if i.is_dir}
        assert "a/m/" in dirs  # a marker is always reported
        assert dirs <= {"a/m/", "a/sub/", "a/sub/deep/"}  # the others are hints, never inventions
        assert len(got) == len(files) + len(dirs)  # nothing twice
        assert {i.key for i in provider.walk("") if not i.is_dir} == set(files) | {"b/v", "top"}

    def test_dir_exists(self, provider, put):
        self._tree(provider, put)
        assert provider.dir_exists("")
        assert provider.dir_exists("a/") and provider.dir_exists("a")
        assert provider.dir_exists("a/sub/deep/")  # implicit
        assert provider.dir_exists("a/m/")  # a marker alone
        assert not provider.dir_exists("nope/")
        assert not provider.dir_exists("a/x/")  # a file is no folder
        assert not provider.dir_exists("a/s/")  # a prefix of a name is no folder

    # -- copy, set_meta ---------------------------------------------------------------------

    def test_copy_keeps_metadata(self, provider, put):
        m = meta()
        put("a/x", m=m)
        put("b/y", b"to be replaced")
        copied = provider.copy("a/x", "b/y")
        assert copied.key == "b/y" and copied.size == len(PAYLOAD)
        got = provider.head("b/y")
        self.assert_meta(got, m, len(PAYLOAD))
        assert provider.get_range("b/y", 0, len(PAYLOAD) + 1) == PAYLOAD
        assert provider.get_range("a/x", 0, len(PAYLOAD) + 1) == PAYLOAD  # the source stays

    def test_copy_with_meta_replaces_metadata(self, provider, put):
        put("a/x")
        new = meta(mtime_ns=MTIME + 99, mode=stat.S_IFREG | 0o600, uid=UID + 1, gid=GID + 1, atime_ns=ATIME + 1,
                   ctime_ns=CTIME + 1, content_type="text/plain", xattrs={"user.other": b"v"})
        provider.copy("a/x", "a/z", new)
        self.assert_meta(provider.head("a/z"), new, len(PAYLOAD))
        self.assert_meta(provider.head("a/x"), meta(), len(PAYLOAD))
        assert provider.get_range("a/z", 0, len(PAYLOAD)) == PAYLOAD

    def test_set_meta_replaces_metadata_and_keeps_bytes(self, provider, put):
        put("a/x")
        new = meta(mtime_ns=MTIME + 5, mode=stat.S_IFREG | 0o604, uid=UID + 2, gid=GID + 2, atime_ns=ATIME + 5,
                   ctime_ns=CTIME + 5, content_type="text/plain", xattrs={"user.new": b"n"})
        info = provider.set_meta("a/x", new)
        assert info.key == "a/x" and info.mtime_ns == new.mtime_ns and info.mode == new.mode
        got = provider.head("a/x")
        self.assert_meta(got, new, len(PAYLOAD))  # user.project and user.bin are gone
        assert provider.get_range("a/x", 0, len(PAYLOAD) + 1) == PAYLOAD

    def test_xattrs_round_trip(self, provider, put):
        values = {"user.plain": b"text", "user.binary": bytes(range(256)), "user.empty": b"",
                  "user.spaces": b" padded ", "user.looks.b64": b"b64:AAAA", "user.utf8": "ü ✓".encode()}
        put("a/x", xattrs=values)
        assert provider.head("a/x").xattrs == values
        provider.copy("a/x", "a/y")
        assert provider.head("a/y").xattrs == values
        provider.set_meta("a/x", meta(xattrs={}))
        assert provider.head("a/x").xattrs == {}

    def test_times(self, provider, put):
        put("a/x", b"t", mtime_ns=MTIME, atime_ns=ATIME, ctime_ns=CTIME)
        got = provider.head("a/x")
        assert (got.mtime_ns, got.atime_ns) == (MTIME, ATIME)
        if self.keeps_ctime:
            assert got.ctime_ns == CTIME
        else:
            assert got.ctime_ns is not None and got.ctime_ns > CTIME  # the backend's own status-change time
        provider.set_meta("a/x", meta(mtime_ns=MTIME + 1, atime_ns=ATIME + 1, ctime_ns=CTIME + 1))
        got = provider.head("a/x")
        assert (got.mtime_ns, got.atime_ns) == (MTIME + 1, ATIME + 1)
        if self.keeps_ctime:
            assert got.ctime_ns == CTIME + 1

    def test_content_type(self, provider, put):
        put("a/x", content_type="image/webp")
        assert provider.head("a/x").content_type == ("image/webp" if self.keeps_content_type else None)


    # -- conditions (put/copy/delete if_absent, if_match) --------------------------------------

    @pytest.fixture
    def atomic(self, provider: Provider) -> Provider:
        """The provider as a mount uses it for conditional writes (S3: after check's probe)."""
        return provider

    @pytest.fixture
    def conditional(self, atomic: Provider) -> Provider:
        """The provider the condition tests run on (S3: also with the HEAD-compare fallback forced)."""
        return atomic

    def test_if_absent_stores_a_new_key(self, conditional, put):
        stored = put("c/new", b"mine", if_absent=True)
        assert conditional.get_range("c/new", 0, 10) == b"mine"
        assert conditional.head("c/new").etag == stored.etag

    def test_if_absent_over_an_existing_key_is_a_conflict(self, conditional, put):
        theirs = put("c/x", b"theirs")
        with pytest.raises(Conflict):
            put("c/x", b"mine, which must not land", if_absent=True)
        assert conditional.get_range("c/x", 0, 100) == b"theirs"
        assert conditional.head("c/x").etag == theirs.etag

    def test_if_match_of_the_current_version_replaces_it(self, conditional, put):
        old = put("c/x", b"old version")
        new = put("c/x", b"new version, longer", if_match=old.etag)
        assert conditional.get_range("c/x", 0, 100) == b"new version, longer"
        assert conditional.head("c/x").etag == new.etag != old.etag

    def test_if_match_of_a_stale_version_is_a_conflict(self, conditional, put):
        seen = put("c/x", b"the version we read")
        theirs = put("c/x", b"their newer version")
        with pytest.raises(Conflict):
            put("c/x", b"our edit of the old one", if_match=seen.etag)
        assert conditional.get_range("c/x", 0, 100) == b"their newer version"
        assert conditional.head("c/x").etag == theirs.etag

    def test_if_match_on_a_missing_key_is_not_found(self, conditional, put):
        seen = put("c/x", b"was here")
        conditional.delete("c/x")
        with pytest.raises(NotFound):
            put("c/x", b"our edit", if_match=seen.etag)
        with pytest.raises(NotFound):
            conditional.head("c/x")

    def test_etag_is_the_same_token_from_put_head_and_list(self, conditional, put):
        stored = put("c/x", b"one")
        listed = [i for i in conditional.list("c/") if i.key == "c/x"]
        assert [i.etag for i in listed] == [stored.etag] == [conditional.head("c/x").etag]

    def test_copy_of_a_changed_source_is_a_conflict(self, conditional, put):
        seen = put("c/src", b"the version we read")
        theirs = put("c/src", b"their newer version")
        with pytest.raises(Conflict):
            conditional.copy("c/src", "c/dst", if_match=seen.etag)
        with pytest.raises(NotFound):
            conditional.head("c/dst")  # nothing was copied
        assert conditional.get_range("c/src", 0, 100) == b"their newer version"
        conditional.copy("c/src", "c/dst", if_match=theirs.etag)
        assert conditional.get_range("c/dst", 0, 100) == b"their newer version"

    def test_delete_of_a_changed_key_is_a_conflict(self, conditional, put):
        seen = put("c/x", b"the version we read")
        theirs = put("c/x", b"their newer version")
        with pytest.raises(Conflict):
            conditional.delete("c/x", if_match=seen.etag)
        assert conditional.get_range("c/x", 0, 100) == b"their newer version"
        conditional.delete("c/x", if_match=theirs.etag)
        with pytest.raises(NotFound):
            conditional.head("c/x")
        conditional.delete("c/x", if_match=theirs.etag)  # already gone: no error

    def test_racing_writers_of_a_new_key_one_wins(self, atomic, tmp_path):
        """RACERS threads put one new key with if_absent at once: exactly one lands, whole; the rest conflict."""
        sources = []
        for n in range(RACERS):
            src = tmp_path / f"racer{n}"
            src.write_bytes(f"racer {n} ".encode() * 100)
            sources.append(src)
        start = threading.Barrier(RACERS)
        outcome: list[object] = [None] * RACERS

        def race(n: int) -> None:
            start.wait()
            try:
                outcome[n] = atomic.put_file("c/race", str(sources[n]), meta(), if_absent=True)
            except Conflict as e:
                outcome[n] = e

        threads = [threading.Thread(target=race, args=(n,)) for n in range(RACERS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        winners = [n for n, o in enumerate(outcome) if isinstance(o, ObjectInfo)]
        assert len(winners) == 1 and all(isinstance(o, (ObjectInfo, Conflict)) for o in outcome), outcome
        assert atomic.get_range("c/race", 0, 10 ** 6) == sources[winners[0]].read_bytes()

    # -- delete -----------------------------------------------------------------------------

    def test_delete_is_idempotent(self, provider, put):
        put("a/x", b"1")
        put("a/y", b"2")
        provider.delete("a/x")
        with pytest.raises(NotFound):
            provider.head("a/x")
        provider.delete("a/x")  # already gone
        provider.delete("never/was")
        assert [i.key for i in provider.list("a/")] == ["a/y"]

    def test_delete_many(self, provider, put):
        for k in ("a/1", "a/2", "a/3", "b/4"):
            put(k, b"x")
        provider.delete_many(["a/1", "a/3", "b/4", "missing/5"])
        provider.delete_many([])
        assert [i.key for i in provider.walk("") if not i.is_dir] == ["a/2"]

    # -- folders ----------------------------------------------------------------------------

    def test_make_dir_and_remove_dir(self, provider, put):
        provider.make_dir("a/d/", ObjectMeta(mtime_ns=MTIME, mode=DIR_MODE))
        assert provider.dir_exists("a/d/") and provider.dir_exists("a/")
        assert [(i.key, i.is_dir) for i in provider.list("a/")] == [("a/d/", True)]
        with pytest.raises(NotFound):
            provider.head("a/d")
        provider.remove_dir("a/d/")
        assert not provider.dir_exists("a/d/") and list(provider.list("a/")) == []
        assert provider.head_dir("a/d/") is None
        provider.remove_dir("a/d/")  # already gone
        provider.remove_dir("never/was/")

    def test_remove_dir_of_a_folder_with_files(self, provider, put):
        m = ObjectMeta(mtime_ns=MTIME, mode=DIR_MODE)
        provider.make_dir("a/d/", m)
        put("a/d/x", b"x")
        if self.remove_non_empty_dir_raises is not None:
            with pytest.raises(self.remove_non_empty_dir_raises):
                provider.remove_dir("a/d/")
            assert provider.dir_exists("a/d/")
        else:  # an object store drops the marker: the folder lives on as the files' prefix
            provider.remove_dir("a/d/")
            assert provider.head_dir("a/d/") is None
        assert provider.get_range("a/d/x", 0, 10) == b"x"
        provider.delete("a/d/x")
        provider.remove_dir("a/d/")
        assert not provider.dir_exists("a/d/")

    def test_head_dir_gives_the_folder_metadata(self, provider):
        m = ObjectMeta(mtime_ns=MTIME, mode=DIR_MODE, uid=UID, gid=GID, atime_ns=ATIME, ctime_ns=CTIME,
                       xattrs={"user.project": b"dogs", "user.bin": b"\x00\xff"})
        provider.make_dir("a/d/", m)
        self.assert_dir_meta(provider.head_dir("a/d/"), "a/d/", m)
        if self.keeps_dir_metadata:
            assert provider.head_dir("a/d") == provider.head_dir("a/d/")

    def test_make_dir_again_replaces_the_metadata(self, provider):
        provider.make_dir("a/d/", ObjectMeta(mtime_ns=MTIME, mode=DIR_MODE, xattrs={"user.old": b"o"}))
        new = ObjectMeta(mtime_ns=MTIME + 3, mode=stat.S_IFDIR | 0o700, uid=UID, gid=GID, atime_ns=ATIME + 3,
                         ctime_ns=CTIME + 3, xattrs={"user.new": b"n"})
        provider.make_dir("a/d/", new)
        self.assert_dir_meta(provider.head_dir("a/d/"), "a/d/", new)
        assert provider.dir_exists("a/d/")

    def test_head_dir_of_missing_and_implicit_folders(self, provider, put):
        put("a/imp/x", b"x")
        assert provider.head_dir("nope/") is None
        assert provider.head_dir("a/imp/x/") is None  # a file is no folder
        got = provider.head_dir("a/imp/")
        if self.implicit_dirs_have_metadata:
            assert got is not None and got.is_dir and stat.S_ISDIR(got.mode) and got.key == "a/imp/"
        else:
            assert got is None

    # -- links and special files ------------------------------------------------------------

    def test_symlink_is_an_object_holding_its_target(self, provider, put):
        put("a/link", LINK_TARGET, mode=LINK_MODE, xattrs={})
        got = provider.head("a/link")
        assert (got.mode, got.size, got.is_dir) == (LINK_MODE, len(LINK_TARGET), False)
        assert got.mtime_ns == MTIME
        assert provider.get_range("a/link", 0, 4096) == LINK_TARGET
        assert provider.get_range("a/link", 4, 3) == LINK_TARGET[4:7]
        assert b"".join(provider.read_stream("a/link")) == LINK_TARGET
        assert {i.key: i.size for i in provider.list("a/")} == {"a/link": len(LINK_TARGET)}

    def test_copy_of_a_symlink_is_a_symlink(self, provider, put):
        put("a/link", LINK_TARGET, mode=LINK_MODE, xattrs={})
        provider.copy("a/link", "b/link")
        got = provider.head("b/link")
        assert (got.mode, got.size) == (LINK_MODE, len(LINK_TARGET))
        assert provider.get_range("b/link", 0, 4096) == LINK_TARGET

    def test_fifo_is_a_zero_byte_object_with_its_type(self, provider, put):
        put("a/fifo", b"", mode=FIFO_MODE, xattrs={})
        got = provider.head("a/fifo")
        assert (got.mode, got.size, got.mtime_ns) == (FIFO_MODE, 0, MTIME)
        assert provider.get_range("a/fifo", 0, 100) == b""
        assert (got.uid, got.gid) == self.owner()
        (entry,) = provider.list("a/")
        assert (entry.key, entry.size, entry.is_dir) == ("a/fifo", 0, False)

    # -- streams, urls, watch ---------------------------------------------------------------

    def test_read_stream_in_pieces(self, provider, put):
        put("a/x", PAYLOAD)
        pieces = list(provider.read_stream("a/x", chunk_size=1000))
        assert b"".join(pieces) == PAYLOAD
        assert all(0 < len(p) <= 1000 for p in pieces) and len(pieces) >= 6

    def test_url(self, provider, put):
        put("a/b c.png", b"x")
        url = provider.url("a/b c.png")
        if self.url_scheme is None:
            assert url is None
        else:
            assert isinstance(url, str) and url.startswith(self.url_scheme + "://")
            assert "b%20c.png" in url

    # -- multipart uploads cut short -----------------------------------------------------------

    def test_abort_upload_of_an_unknown_id_is_fine(self, provider, put):
        put("a/x", b"x")
        provider.abort_upload("a/x", UNKNOWN_UPLOAD)  # completed or aborted already, or never opened here
        provider.abort_upload("a/none", UNKNOWN_UPLOAD)
        assert provider.get_range("a/x", 0, 10) == b"x"

    def test_watch_then_close(self, provider):
        provider.watch(lambda key: None)
        provider.close()
        provider.close()  # twice is fine


# -- the providers ---------------------------------------------------------------------------

class TestMemoryProvider(ProviderContract):
    @pytest.fixture
    def provider(self) -> Iterator[Provider]:
        p = MemoryProvider("mem")
        yield p
        p.close()

    # the memory provider's own promises: fault injection and thread safety, for the core's tests

    def test_fail_with_is_raised_by_every_call(self, provider, put):
        put("a/x", b"x")
        provider.fail_with = ProviderUnavailable("injected")
        calls: list[Callable[[], object]] = [
            provider.check, lambda: provider.head("a/x"), lambda: provider.dir_exists("a/"),
            lambda: list(provider.list("a/")), lambda: list(provider.walk("")),
            lambda: provider.get_range("a/x", 0, 1), lambda: list(provider.read_stream("a/x")),
            lambda: put("a/y", b"y"), lambda: provider.set_meta("a/x", meta()),
            lambda: provider.copy("a/x", "a/z"), lambda: provider.delete("a/x"),
            lambda: provider.delete_many(["a/x"]), lambda: provider.make_dir("d/", meta(mode=DIR_MODE)),
            lambda: provider.remove_dir("d/"), lambda: provider.head_dir("a/")]
        for call in calls:
            with pytest.raises(ProviderUnavailable, match="injected"):
                call()
        provider.fail_with = None
        assert provider.get_range("a/x", 0, 1) == b"x"  # nothing changed meanwhile
        assert [i.key for i in provider.walk("")] == ["a/", "a/x"]

    def test_latency_delays_every_call_outside_the_lock(self, provider, put):
        put("a/x", b"x")
        provider.latency = 0.2
        started = time.monotonic()
        threads = [threading.Thread(target=provider.head, args=("a/x",)) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.monotonic() - started
        assert 0.2 <= elapsed < 0.6  # four calls slept side by side, not one after another

    def test_calls_are_counted(self, provider, put):
        put("a/x", b"x")
        provider.head("a/x")
        provider.head("a/x")
        list(provider.list("a/"))
        assert (provider.calls["put_file"], provider.calls["head"], provider.calls["list"]) == (1, 2, 1)

    def test_concurrent_writers_and_listers(self, provider, tmp_path):
        src = tmp_path / "src"
        src.write_bytes(b"abc")
        errors: list[BaseException] = []

        def writer(n: int) -> None:
            try:
                for i in range(200):
                    provider.put_file(f"d{n}/f{i:03d}", str(src), meta())
                    if i % 3 == 0:
                        provider.delete(f"d{n}/f{i:03d}")
            except BaseException as e:  # noqa: BLE001 - reported below: a thread's failure must fail the test
                errors.append(e)

        def lister() -> None:
            try:
                for _ in range(100):
                    for info in provider.walk(""):
                        assert info.is_dir or info.size == 3
            except BaseException as e:  # noqa: BLE001 - reported below
                errors.append(e)

        threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)] + [threading.Thread(target=lister)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        for n in range(4):
            assert len(list(provider.list(f"d{n}/"))) == 200 - 67

    def test_keys_outside_the_contract_are_refused(self, provider, put):
        for key in ("/abs", "a//b", "a\0b"):
            with pytest.raises(ProviderError):
                provider.head(key)
        with pytest.raises(ProviderError):
            put("a/dir/", b"x")
        with pytest.raises(ProviderError):
            provider.make_dir("", meta(mode=DIR_MODE))


class TestLocalProvider(ProviderContract):
    keeps_ctime = False
    keeps_content_type = False
    implicit_dirs_have_metadata = True
    keeps_owner = os.geteuid() == 0
    url_scheme = "file"

    @pytest.fixture
    def provider(self, tmp_path: Path) -> Iterator[Provider]:
        p = LocalProvider("local", str(tmp_path / "data"), create=True)
        p.check()
        yield p
        p.close()


class _S3Contract(ProviderContract):
    remove_non_empty_dir_raises = None
    url_scheme = "http"

    @pytest.fixture
    def s3_config(self) -> S3ProviderConfig:
        raise NotImplementedError("a concrete S3 class supplies the settings of a fresh, empty store")

    @pytest.fixture
    def provider(self, s3_config: S3ProviderConfig) -> Iterator[Provider]:
        p = S3Provider(s3_config)
        yield p
        p.close()

    @pytest.fixture
    def atomic(self, provider: Provider) -> Provider:
        provider.check(writable=True)
        assert provider.atomic_conditions  # both servers honour If-None-Match: * (the probe says so)
        return provider

    @pytest.fixture(params=["probed", "head-compare"])
    def conditional(self, request, atomic: Provider) -> Provider:
        if request.param == "head-compare":
            atomic.atomic_conditions = False  # as on a server that ignores the headers: HEAD just before
        return atomic

    def test_check_probes_conditions_only_when_writable(self, provider):
        provider.check()
        assert not provider.atomic_conditions  # not probed: every condition is HEAD-compared
        provider.check(writable=True)
        assert provider.atomic_conditions
        assert list(provider.walk("")) == []  # the probe object is gone

    @pytest.mark.parametrize("mode", ["probed", "head-compare"])
    def test_multipart_uploads_carry_their_condition(self, s3_config, mode, tmp_path):
        p = S3Provider(replace(s3_config, multipart_threshold=5 * MiB, multipart_chunksize=5 * MiB))
        try:
            p.check(writable=True)
            p.atomic_conditions = mode == "probed"
            big = [bytes([n]) * (6 * MiB) for n in range(3)]  # two parts each
            srcs = []
            for n, data in enumerate(big):
                src = tmp_path / f"big{n}"
                src.write_bytes(data)
                srcs.append(str(src))
            first = p.put_file("c/big", srcs[0], meta(), if_absent=True)
            assert first.etag.endswith("-2") and p.head("c/big").etag == first.etag  # a multipart upload
            with pytest.raises(Conflict):
                p.put_file("c/big", srcs[1], meta(), if_absent=True)
            with pytest.raises(Conflict):
                p.put_file("c/big", srcs[1], meta(), if_match="0" * 32 + "-2")
            with pytest.raises(NotFound):
                p.put_file("c/none", srcs[1], meta(), if_match=first.etag)
            assert p.get_range("c/big", 6 * MiB - 3, 10) == big[0][-3:]  # the first version stayed
            second = p.put_file("c/big", srcs[2], meta(), if_match=first.etag)
            assert p.head("c/big").etag == second.etag != first.etag
            assert p.get_range("c/big", 5 * MiB, 4) == big[2][:4]
            with pytest.raises(NotFound):
                p.head("c/none")
            assert [i.key for i in p.walk("") if not i.is_dir] == ["c/big"]
        finally:
            p.close()


    @pytest.fixture
    def multipart(self, s3_config) -> Iterator[tuple[S3Provider, NotedUploads]]:
        """A provider that uploads 6 MiB in two parts, noting its open uploads in a NotedUploads."""
        p = S3Provider(replace(s3_config, multipart_threshold=5 * MiB, multipart_chunksize=5 * MiB))
        p.uploads = noted = NotedUploads(p)
        try:
            yield p, noted
        finally:
            p.close()

    def test_a_multipart_upload_is_noted_before_its_first_part_until_it_ends(self, multipart, tmp_path):
        p, noted = multipart
        src = tmp_path / "big"
        src.write_bytes(b"m" * (6 * MiB))
        info = p.put_file("c/big", str(src), meta())
        assert info.etag.endswith("-2")  # a multipart upload
        (upload_id,) = {u for _event, _key, u in noted.events}
        assert noted.events == [("started", "c/big", upload_id), ("ended", "c/big", upload_id)]
        assert noted.parts_at_start == [0]
        noted.then = lambda: os.truncate(src, 5 * MiB)  # the second part cannot be read: the upload fails ...
        with pytest.raises(ProviderError, match="changed size"):
            p.put_file("c/big", str(src), meta())
        assert [e for e, _k, _u in noted.events[2:]] == ["started", "ended"] and not noted.open  # ... is aborted
        assert noted.server_open() == []

    def test_an_upload_whose_noting_fails_is_aborted(self, multipart, tmp_path):
        p, noted = multipart
        src = tmp_path / "big"
        src.write_bytes(b"m" * (6 * MiB))
        noted.refuse = ProviderError("the journal cannot record it")
        with pytest.raises(ProviderError, match="journal"):
            p.put_file("c/big", str(src), meta())
        assert noted.server_open() == [] and noted.parts_at_start == []
        with pytest.raises(NotFound):
            p.head("c/big")

    def test_abort_upload_drops_an_open_upload_and_its_parts(self, multipart):
        p, noted = multipart
        client, full = p._boto.client, p.prefix + "c/cut"
        upload_id = client.create_multipart_upload(Bucket=p.bucket, Key=full)["UploadId"]
        client.upload_part(Bucket=p.bucket, Key=full, UploadId=upload_id, PartNumber=1, Body=b"p" * MiB)
        assert noted.server_open() == [("c/cut", upload_id)]
        p.abort_upload("c/cut", upload_id)
        assert noted.server_open() == []
        p.abort_upload("c/cut", upload_id)  # twice is fine: the server no longer knows it


class NotedUploads(UploadLog):
    """An UploadLog that records what it is told, and how many parts the server held at each start."""

    def __init__(self, provider: S3Provider) -> None:
        self.provider = provider
        self.events: list[tuple[str, str, str]] = []
        self.open: set[str] = set()
        self.parts_at_start: list[int] = []
        #: raised by started() when set, as a journal that cannot record would
        self.refuse: Exception | None = None
        #: called by started() once it has noted the upload
        self.then: Callable[[], object] = lambda: None

    def started(self, key: str, upload_id: str) -> None:
        if self.refuse is not None:
            raise self.refuse
        p = self.provider
        parts = p._boto.client.list_parts(Bucket=p.bucket, Key=p.prefix + key, UploadId=upload_id).get("Parts", [])
        self.parts_at_start.append(len(parts))
        self.events.append(("started", key, upload_id))
        self.open.add(upload_id)
        self.then()

    def ended(self, key: str, upload_id: str) -> None:
        self.events.append(("ended", key, upload_id))
        self.open.discard(upload_id)

    def server_open(self) -> list[tuple[str, str]]:
        """(key, upload id) of the uploads the server holds open below the provider's prefix."""
        p = self.provider
        answer = p._boto.client.list_multipart_uploads(Bucket=p.bucket, Prefix=p.prefix)
        return [(u["Key"][len(p.prefix):], u["UploadId"]) for u in answer.get("Uploads", [])]


class TestS3ProviderOnSeaweedFS(_S3Contract):
    """One bucket for the session; each test sees a fresh key prefix of it as its whole store."""

    keeps_dir_metadata = False  # SeaweedFS 4.x drops the user metadata of folder markers

    @pytest.fixture
    def s3_config(self, contract_seaweed: S3ProviderConfig) -> S3ProviderConfig:
        return replace(contract_seaweed, prefix=f"c{uuid.uuid4().hex[:12]}/")


class TestS3ProviderOnMoto(_S3Contract):
    """A new bucket per test on moto, which keeps folder-marker metadata as AWS and MinIO do."""

    @pytest.fixture
    def s3_config(self, contract_moto: S3ProviderConfig) -> S3ProviderConfig:
        cfg = replace(contract_moto, bucket=f"c-{uuid.uuid4().hex[:16]}")
        raw = boto3.session.Session().client(
            "s3", endpoint_url=cfg.endpoint_url, region_name=cfg.region, aws_access_key_id=cfg.access_key_id,
            aws_secret_access_key=cfg.secret_access_key)
        try:
            raw.create_bucket(Bucket=cfg.bucket)
        finally:
            raw.close()
        return cfg
