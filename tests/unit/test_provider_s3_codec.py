"""The S3 metadata codec (no server): times, file types in the mode, rdev, xattrs, as s3fs and rclone write them."""

from __future__ import annotations

import base64
import json
import stat
from datetime import UTC, datetime
from email.utils import format_datetime
from urllib.parse import quote, unquote

import pytest

from storefs.providers.base import ObjectMeta
from storefs.providers.s3.codec import (
    RESERVED_KEYS,
    decode_value,
    dir_info_from_headers,
    encode_value,
    format_mtime,
    headers_for,
    info_from_headers,
    metadata_for,
    parse_mode,
    parse_mtime,
    parse_rdev,
    user_metadata,
    xattr_metadata_key,
    xattrs_from_metadata,
)

LAST_MODIFIED = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
NS = 1_000_000_000  # times are integer nanoseconds


def head(metadata: dict[str, str], body: bytes = b"", content_type: str = "application/octet-stream") -> dict:
    """A HEAD answer's headers (lower-case names) as the request path returns them."""
    headers = {"content-length": str(len(body)), "last-modified": format_datetime(LAST_MODIFIED, usegmt=True),
               "etag": '"e"', "content-type": content_type}
    headers.update(("x-amz-meta-" + k, v) for k, v in metadata.items())
    return headers


def test_mtime_and_mode_forms():
    assert format_mtime(1732363200_123456000) == "1732363200.123456000"
    assert format_mtime(1700000000_000000000) == "1700000000.000000000"
    assert format_mtime(-1_500000000) == "-1.500000000"
    assert parse_mtime("1732363200.123456789") == 1732363200_123456789
    assert parse_mtime("1700000000") == 1700000000_000000000
    assert parse_mtime("2023-11-14T22:13:20.123456789Z") == 1700000000_123456789
    assert parse_mtime("garbage") is None and parse_mtime(None) is None
    assert parse_mode("33188") == 0o100644            # s3fs: decimal
    assert parse_mode("16877") == 0o40755
    assert parse_mode("0100644") == 0o100644          # C-style octal
    assert parse_mode("100644") == 0o100644           # rclone --metadata: octal without the 0
    assert parse_mode("40755") == 0o40755
    assert parse_mode("420") == 0o100644              # permissions only: a regular file
    assert parse_mode("x") is None and parse_mode(None) is None


def test_value_encoding():
    for v in [b"plain text", b"", b" padded ", "héllo ✓".encode(), bytes(range(256)), b"b64:looks-encoded", b"a\nb"]:
        enc = encode_value(v)
        assert enc.isascii() and decode_value(enc) == v
    assert encode_value(b"plain text") == "plain text"
    assert decode_value("b64:not base64!") == b"b64:not base64!"
    assert xattr_metadata_key("user.comment") == "comment"
    assert xattr_metadata_key("user.Upper") is None
    assert xattr_metadata_key("user.mtime") is None
    assert xattr_metadata_key("security.selinux") is None


def test_headers_for_and_back():
    meta = ObjectMeta(mtime_ns=1_700_000_000_500_000_000, mode=0o100600, uid=0, gid=0, content_type="text/plain",
                      xattrs={"user.comment": b"hello world", "user.binary": bytes(range(256)), "user.Upper": b"x"})
    headers = headers_for(meta)
    assert headers["content-type"] == "text/plain" and headers["x-amz-meta-comment"] == "hello world"
    assert headers["x-amz-meta-binary"].startswith("b64:") and "x-amz-meta-upper" not in headers
    assert "user.Upper" in unquote(headers["x-amz-meta-xattr"])  # in s3fs's JSON key: S3 lower-cases names
    assert all(k == "content-type" or k.startswith("x-amz-meta-") for k in headers)
    answer = {**head({}), **{k: v for k, v in headers.items() if k.startswith("x-amz-meta-")}}
    info = info_from_headers("k", answer)
    assert (info.mtime_ns, info.mode, info.uid, info.gid) == (1700000000_500000000, 0o100600, 0, 0)
    assert info.xattrs == {"user.comment": b"hello world", "user.binary": bytes(range(256)), "user.Upper": b"x"}


ODD_NAMES = {"user.Upper": b"x", "user.mtime": b"not the file's", "user.xattr": b"", "user.with space": b"1",
             "user.héllo ✓": "ünïcode".encode(), "user.a\udcffb": bytes(range(256)), "user.k=v&x": b"%7B",
             "user.quote\"": b'{"json": 1}'}


def test_every_xattr_name_round_trips_none_is_dropped(caplog):
    """A name S3 cannot keep as a metadata key goes into s3fs's 'xattr' key; headers stay ASCII."""
    xattrs = {"user.plain": b"v", **ODD_NAMES}
    with caplog.at_level("WARNING"):
        headers = headers_for(ObjectMeta(mtime_ns=1_000_000_000, xattrs=xattrs))
    assert caplog.text == ""
    assert all(k.isascii() and v.isascii() and "\n" not in v for k, v in headers.items())
    assert headers["x-amz-meta-plain"] == "v"
    answer = {**head({}), **{k: v for k, v in headers.items() if k.startswith("x-amz-meta-")}}
    assert info_from_headers("k", answer).xattrs == xattrs
    doc = json.loads(unquote(headers["x-amz-meta-xattr"], errors="surrogateescape"))  # s3fs's own form
    assert set(doc) == set(ODD_NAMES) and base64.b64decode(doc["user.Upper"]) == b"x"
    plain = ObjectMeta(mtime_ns=1_000_000_000, xattrs={"user.plain": b"v"})
    assert "xattr" not in metadata_for(plain)  # only when needed
    assert user_metadata({"X-Amz-Meta-Mode": "1", "content-type": "x"}) == {"mode": "1"}


def test_s3fs_xattr_key_and_rclone_metadata():
    s3fs = info_from_headers("k", head({"mtime": "1700000000", "mode": "33188", "uid": "1000", "gid": "1000",
                                        "xattr": quote(json.dumps({"user.tag": base64.b64encode(b"v1").decode()}))}))
    assert (s3fs.mtime_ns, s3fs.mode, s3fs.uid, s3fs.xattrs) == (1700000000 * NS, 0o100644, 1000, {"user.tag": b"v1"})
    rclone = info_from_headers("k", head({"mtime": "1700000000.500000000", "btime": "2023-11-14T22:13:20Z",
                                          "mode": "100640", "md5chksum": "kAFQmDzST7DWlj99KOF/cg==",
                                          "owner": "someone"}))
    assert (rclone.mtime_ns, rclone.mode, rclone.xattrs) == (1700000000_500000000, 0o100640, {"user.owner": b"someone"})
    assert info_from_headers("k", head({"xattr": "%7Bnot json"})).xattrs == {}


def test_unreadable_answers_and_folder_markers():
    with pytest.raises(ValueError):
        info_from_headers("k", {"content-length": "1"})
    with pytest.raises(ValueError):
        info_from_headers("k", {**head({}), "last-modified": "yesterday"})
    assert dir_info_from_headers("d/", head({})) is None  # a marker without metadata (SeaweedFS drops it)
    d = dir_info_from_headers("d/", head({"mode": "488", "uid": "7"}))
    assert d is not None and d.is_dir and (d.mode, d.uid, d.size, d.key) == (stat.S_IFDIR | 0o750, 7, 0, "d/")


def test_metadata_for_writes_times_and_rdev_in_s3fs_names():
    meta = ObjectMeta(mtime_ns=1732363200_123456789, ctime_ns=1732363300_500000000, atime_ns=1732363100_000000001,
                      mode=0o100640, uid=1000, gid=1001)
    assert metadata_for(meta) == {"mtime": "1732363200.123456789", "ctime": "1732363300.500000000",
                                  "atime": "1732363100.000000001", "mode": "33184", "uid": "1000", "gid": "1001"}
    unknown = ObjectMeta(mtime_ns=5_000_000_000)
    assert metadata_for(unknown) == {"mtime": "5.000000000", "mode": "33188"}  # unknown: left out
    dev = ObjectMeta(mtime_ns=1_000_000_000, mode=stat.S_IFCHR | 0o600, rdev=0x103)
    assert metadata_for(dev)["rdev"] == "259" and metadata_for(dev)["mode"] == str(stat.S_IFCHR | 0o600)


def test_times_round_trip_through_a_head():
    meta = ObjectMeta(mtime_ns=1732363200_123456789, ctime_ns=1732363300_250000000, atime_ns=1732363100_999999999,
                      mode=0o100644)
    info = info_from_headers("k", head(metadata_for(meta)))
    assert (info.mtime_ns, info.ctime_ns, info.atime_ns, info.rdev) == (meta.mtime_ns, meta.ctime_ns, meta.atime_ns,
                                                                         None)
    assert format_mtime(info.ctime_ns) == "1732363300.250000000"


def test_s3fs_and_rclone_times():
    s3fs = info_from_headers("k", head({"mtime": "1700000000", "ctime": "1700000002", "atime": "1700000001",
                                     "mode": "33188"}))
    assert (s3fs.mtime_ns, s3fs.ctime_ns, s3fs.atime_ns) == (1700000000 * NS, 1700000002 * NS, 1700000001 * NS)
    rclone = info_from_headers("k", head({"mtime": "2023-11-14T22:13:20.5Z", "atime": "2023-11-14T22:13:21Z",
                                       "btime": "2023-11-14T22:13:19Z"}))
    assert (rclone.mtime_ns, rclone.atime_ns, rclone.ctime_ns) == (1700000000_500000000, 1700000001 * NS, None)
    bare = info_from_headers("k", head({}))
    assert (bare.mtime_ns, bare.ctime_ns, bare.atime_ns, bare.mode) == (int(LAST_MODIFIED.timestamp()) * NS, None, None,
                                                                   None)
    bad = info_from_headers("k", head({"ctime": "soon", "atime": ""}))
    assert (bad.ctime_ns, bad.atime_ns) == (None, None)


@pytest.mark.parametrize("mode", [stat.S_IFREG | 0o644, stat.S_IFDIR | 0o755, stat.S_IFLNK | 0o777,
                                  stat.S_IFIFO | 0o600, stat.S_IFSOCK | 0o755, stat.S_IFCHR | 0o620,
                                  stat.S_IFBLK | 0o660, stat.S_IFREG | 0o4755, stat.S_IFDIR | 0o1777,
                                  stat.S_IFDIR | 0o2775, stat.S_IFIFO | 0o644])
def test_every_file_type_in_every_form(mode):
    assert parse_mode(str(mode)) == mode                 # s3fs: decimal
    assert parse_mode("0" + format(mode, "o")) == mode   # C-style octal
    assert parse_mode(format(mode, "o")) == mode         # rclone: octal without the leading 0


def test_mode_forms_of_special_files():
    assert parse_mode("41471") == stat.S_IFLNK | 0o777    # an s3fs symlink
    assert parse_mode("4480") == stat.S_IFIFO | 0o600     # s3fs mkfifo
    assert parse_mode("49645") == stat.S_IFSOCK | 0o755
    assert parse_mode("8630") == stat.S_IFCHR | 0o666
    assert parse_mode("24992") == stat.S_IFBLK | 0o640
    assert parse_mode("10644") == stat.S_IFIFO | 0o644    # rclone's octal FIFO, not a decimal char device
    assert parse_mode("0x81a4") == stat.S_IFREG | 0o644


def test_s3fs_symlink_as_head_reads_it():
    target = b"../blobs/0123abcd"
    info = info_from_headers("snap/model.bin", head({"mode": "41471", "mtime": "1700000000", "uid": "0", "gid": "0"},
                                                 target))
    assert stat.S_ISLNK(info.mode) and info.mode == 0o120777 and info.size == len(target)
    assert (info.uid, info.gid, info.xattrs, info.rdev) == (0, 0, {}, None)


def test_rdev_forms_and_only_for_devices():
    assert parse_rdev("259") == 259 and parse_rdev("0x103") == 259 and parse_rdev("1abc") == 0x1abc
    assert parse_rdev("") is None and parse_rdev(None) is None and parse_rdev("zz") is None
    assert parse_rdev("-1") is None
    chr_dev = info_from_headers("d", head({"mode": str(stat.S_IFCHR | 0o600), "rdev": "259"}))
    assert chr_dev.rdev == 259 and chr_dev.size == 0
    blk = info_from_headers("d", head({"mode": str(stat.S_IFBLK | 0o600), "rdev": "1abc"}))  # rclone's hex
    assert blk.rdev == 0x1abc
    assert info_from_headers("f", head({"mode": "33188", "rdev": "5"})).rdev is None  # a file has no device


def test_reserved_names_are_never_xattrs():
    assert {"ctime", "atime", "rdev", "mtime", "mode", "uid", "gid"} <= RESERVED_KEYS
    md = {"ctime": "1", "atime": "2", "rdev": "3", "mode": "4480", "note": "kept"}
    assert xattrs_from_metadata(md) == {"user.note": b"kept"}
    meta = ObjectMeta(mtime_ns=1_000_000_000, ctime_ns=2_000_000_000, atime_ns=3_000_000_000, rdev=4,
                      xattrs={"user.rdev": b"x", "user.ok": b"y"})
    md = metadata_for(meta)
    assert md["rdev"] == "4" and md["ok"] == "y"  # user.rdev is not the rdev key: the name is s3fs's
    assert xattrs_from_metadata(md) == {"user.ok": b"y", "user.rdev": b"x"}  # it goes by the 'xattr' key
