"""Times in S3 metadata to the nanosecond, and metadata another client got wrong (no server)."""

from __future__ import annotations

import logging
import random
from datetime import UTC, datetime
from email.utils import format_datetime

import pytest

from storefs.providers.base import ObjectMeta
from storefs.providers.s3 import codec
from storefs.providers.s3.codec import format_mtime, info_from_headers, metadata_for, parse_mtime
from storefs.providers.s3.listing import parse_list_page

LAST_MODIFIED = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
LAST_MODIFIED_NS = 1735787045_000000000
TOUCHED_NS = 1683263105_123456789  # touch -d '2023-05-05T05:05:05.123456789' (UTC)


def head(metadata: dict[str, str]) -> dict[str, str]:
    """A HEAD answer's headers (lower-case names) with the given user metadata."""
    headers = {"content-length": "0", "last-modified": format_datetime(LAST_MODIFIED, usegmt=True), "etag": '"e"'}
    headers.update(("x-amz-meta-" + k, v) for k, v in metadata.items())
    return headers


def test_touch_time_is_written_with_its_nine_digits_and_read_back_exactly():
    """The issue's case: .123456789 became .123457000 on S3 (a float rounded to microseconds)."""
    md = metadata_for(ObjectMeta(mtime_ns=TOUCHED_NS, atime_ns=TOUCHED_NS + 1, ctime_ns=TOUCHED_NS - 1))
    assert (md["mtime"], md["atime"], md["ctime"]) == ("1683263105.123456789", "1683263105.123456790",
                                                       "1683263105.123456788")
    info = info_from_headers("k", head(md))
    assert (info.mtime_ns, info.atime_ns, info.ctime_ns) == (TOUCHED_NS, TOUCHED_NS + 1, TOUCHED_NS - 1)


def test_random_nanosecond_times_survive_format_and_parse():
    """Every nanosecond of any time stat(2) can show, before and after the epoch."""
    rnd = random.Random(21)
    samples = [rnd.randrange(-(2**63), 2**63) for _ in range(2000)] + [0, 1, -1, 2**63 - 1, -(2**63)]
    for ns in samples:
        assert parse_mtime(format_mtime(ns)) == ns, ns


def test_rclone_and_s3fs_forms_read_in_integer_arithmetic():
    """Fractional seconds of any length, integer seconds and RFC 3339 with nanoseconds: no float on the way."""
    assert parse_mtime("1683263105.123456789") == TOUCHED_NS
    assert parse_mtime("1683263105") == 1683263105_000000000
    assert parse_mtime("1683263105.1") == 1683263105_100000000
    assert parse_mtime("2023-05-05T05:05:05.123456789Z") == TOUCHED_NS
    assert parse_mtime("2023-05-05T07:05:05.123456789+02:00") == TOUCHED_NS
    assert parse_mtime("-0.000000001") == -1
    # digits beyond the nanosecond are floored in both forms, as a timespec holds them
    assert parse_mtime("1683263105.1234567899") == parse_mtime("2023-05-05T05:05:05.1234567899Z") == TOUCHED_NS
    assert parse_mtime("-0.0000000001") == -1


@pytest.mark.parametrize("value", ["inf", "-inf", "nan", "NaN", "Infinity", "sNaN", "1e400", "-1e400",
                                   "9223372037", "1e999999999", "9999-12-31T23:59:59Z"])
def test_a_time_not_finite_or_out_of_range_falls_back_to_last_modified(value):
    """inf or nan made the file answer EIO; a time stat(2) cannot show is no time either."""
    info = info_from_headers("k", head({"mtime": value, "atime": value, "ctime": value}))
    assert (info.mtime_ns, info.atime_ns, info.ctime_ns) == (LAST_MODIFIED_NS, None, None)


@pytest.mark.parametrize("value", ["-5", "4294967295", "4294967296", "-0x1", "99999999999999999999", "1.5"])
def test_an_owner_no_account_can_have_is_ignored(value):
    """A negative uid showed as 4294967291; (uid_t)-1 and larger are no one's either: the mount's default."""
    info = info_from_headers("k", head({"uid": value, "gid": value, "mode": "33188"}))
    assert (info.uid, info.gid, info.mode) == (None, None, 0o100644)


def test_owner_ids_at_the_edges_of_the_range_are_kept():
    info = info_from_headers("k", head({"uid": "0", "gid": "4294967294"}))
    assert (info.uid, info.gid) == (0, 4294967294)


@pytest.mark.parametrize("value", ["-1", "99999999", "0x1ffff0", "rwxr-xr-x"])
def test_a_mode_out_of_range_is_ignored(value):
    assert info_from_headers("k", head({"mode": value})).mode is None


def test_untrusted_metadata_is_logged_once_at_info_then_at_debug(caplog, monkeypatch):
    """Another client's bad value can sit on thousands of objects: one INFO line per kind, not one per head."""
    monkeypatch.setattr(codec, "_reported", set())
    with caplog.at_level(logging.DEBUG, logger=codec.__name__):
        for i in range(5):
            info_from_headers(f"k{i}", head({"mtime": "nan", "uid": "-5"}))
    infos = [r for r in caplog.records if r.levelno == logging.INFO]
    debugs = [r for r in caplog.records if r.levelno == logging.DEBUG]
    assert sorted(r.getMessage().split(":")[1].split()[0] for r in infos) == ["mtime", "uid"]
    assert "k0" in infos[0].getMessage() and len(debugs) == 8
    assert all(r.levelno <= logging.INFO for r in caplog.records)


def test_listing_times_keep_their_milliseconds_in_nanoseconds():
    body = (b'<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Contents><Key>a</Key>'
            b"<LastModified>2023-05-05T05:05:05.123Z</LastModified><ETag>\"e\"</ETag><Size>1</Size></Contents>"
            b"</ListBucketResult>")
    (obj,) = parse_list_page(body).objects
    assert obj.modified_ns == 1683263105_123000000
