"""Object metadata <-> storefs' ObjectMeta/ObjectInfo, in s3fs's and rclone's names: no network, no boto3.

What lands in the bucket: x-amz-meta-mtime/-ctime/-atime (seconds with nine fraction digits, which
rclone and s3fs both read; written and read in integer arithmetic, so every nanosecond is kept),
-mode, -uid, -gid (decimal, s3fs's names), -rdev for device nodes, and one metadata key per `user.*`
xattr (values that are not printable ASCII as 'b64:...'). An xattr whose name S3 cannot keep as a
metadata key (upper case, not ASCII, one of the reserved names) goes into s3fs's urlencoded JSON
'xattr' key instead, so no xattr is ever dropped. What other tools wrote reads right too: s3fs's
integer mtime and decimal mode, rclone's fractional or RFC 3339 times and octal mode, s3fs's 'xattr'
key. What another client got wrong is not trusted: a time that is not finite or not in range gives
way to Last-Modified, a uid or gid that no account can have to the mount's defaults.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import re
import stat
import threading
from collections.abc import Mapping
from datetime import datetime
from decimal import ROUND_FLOOR, Context, Decimal, InvalidOperation
from email.utils import parsedate_to_datetime
from urllib.parse import quote, unquote

from ..base import NS_PER_SECOND, ObjectInfo, ObjectMeta

log = logging.getLogger(__name__)

#: the prefix of user metadata in HTTP headers
META_PREFIX = "x-amz-meta-"
DIR_CONTENT_TYPE = "application/x-directory"
#: metadata keys with a meaning of their own (s3fs, rclone): never shown as xattrs
RESERVED_KEYS = frozenset({"mtime", "mode", "uid", "gid", "atime", "ctime", "btime", "rdev", "md5chksum",
                           "xattr"})
#: s3fs's metadata key holding xattrs as urlencoded JSON {name: base64 of the value}
XATTR_KEY = "xattr"
_PLAIN_VALUE = re.compile(r"[!-~](?:[ -~]*[!-~])?\Z")  # printable ASCII, no blank at either end
_META_NAME = re.compile(r"[a-z0-9][a-z0-9._-]*\Z")  # S3 lower-cases user metadata names
#: an RFC 3339 time: up to the seconds, the fraction (any number of digits), the zone
_ISO_TIME = re.compile(r"\s*(\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d)(?:[.,](\d+))?(Z|z|[+-]\d\d:?\d\d)?\s*\Z")
#: the times stat(2) can show: a signed 64-bit count of nanoseconds (years 1677 to 2262)
MAX_TIME_NS = 2**63 - 1
MIN_TIME_NS = -(2**63)
#: uid_t and gid_t are 32 bits, and (uid_t)-1 means "no change" to chown(2): no account has it
MAX_OWNER_ID = 2**32 - 2
#: enough digits for any time in range with its nanoseconds (decimal arithmetic, exact)
_EXACT = Context(prec=60)
_MIN_SECONDS, _MAX_SECONDS = Decimal(MIN_TIME_NS).scaleb(-9, _EXACT), Decimal(MAX_TIME_NS).scaleb(-9, _EXACT)
_FILE_TYPES = frozenset({stat.S_IFREG, stat.S_IFDIR, stat.S_IFLNK, stat.S_IFIFO, stat.S_IFSOCK,
                         stat.S_IFCHR, stat.S_IFBLK})
_DEVICE_TYPES = frozenset({stat.S_IFCHR, stat.S_IFBLK})
_SPECIAL_BITS = stat.S_ISUID | stat.S_ISGID | stat.S_ISVTX


_reported: set[str] = set()
_reported_lock = threading.Lock()  # protects _reported (the kinds of untrusted metadata already logged at INFO)


def _distrust(kind: str, key: str, value: str) -> None:
    """Log metadata another client wrote that storefs ignores: each kind once at INFO, then at DEBUG."""
    with _reported_lock:
        first = kind not in _reported
        _reported.add(kind)
    log.log(logging.INFO if first else logging.DEBUG, "%r: %s %r ignored (unreadable or out of range)%s", key, kind,
            value[:40], "; more such values are logged at DEBUG" if first else "")


def format_mtime(ns: int) -> str:
    """Integer nanoseconds as seconds with 9 fraction digits, rclone's form (s3fs reads the digits after
    '.' as nanoseconds): exact, no float on the way."""
    sign, ns = ("-", -ns) if ns < 0 else ("", ns)
    return f"{sign}{ns // NS_PER_SECOND}.{ns % NS_PER_SECOND:09d}"


def _in_range(ns: int) -> int | None:
    return ns if MIN_TIME_NS <= ns <= MAX_TIME_NS else None


def parse_rfc3339_ns(value: str) -> int | None:
    """An RFC 3339 time (any number of fraction digits, as rclone writes them) in integer nanoseconds;
    None when it is not one or is out of range."""
    m = _ISO_TIME.match(value)
    if m is None:
        return None
    whole, fraction, zone = m.groups()
    try:
        seconds = round(datetime.fromisoformat(whole + (zone or "").replace("z", "Z")).timestamp())
    except (ValueError, OverflowError):
        return None
    digits = (fraction or "")[:9].ljust(9, "0")  # beyond nanoseconds: cut (floored), as a timespec holds it
    return _in_range(seconds * NS_PER_SECOND + int(digits))


def parse_mtime(value: str | None) -> int | None:
    """rclone's fractional seconds, s3fs's integer seconds, or RFC 3339, in integer nanoseconds (decimal
    arithmetic, never a float; digits beyond the nanosecond floored); None when unreadable, not finite,
    or out of range."""
    if not value:
        return None
    try:
        seconds = Decimal(value.strip())
    except InvalidOperation:
        return parse_rfc3339_ns(value)
    if not seconds.is_finite() or not _MIN_SECONDS <= seconds <= _MAX_SECONDS:  # compared exactly
        return None
    return int(_EXACT.multiply(seconds, Decimal(NS_PER_SECOND)).to_integral_value(ROUND_FLOOR, _EXACT))


def _parse_time(md: Mapping[str, str], name: str, key: str) -> int | None:
    """The time metadata name of object key in ns; None (logged) when another client wrote one out of range."""
    value = md.get(name)
    found = parse_mtime(value)
    if found is None and value:
        _distrust(name, key, value)
    return found


def _plausible(mode: int) -> bool:
    """A mode real files have, so that rclone's octal '41777' (a sticky folder) is not read as a decimal symlink."""
    # special bits only where they mean something: setuid/setgid files, sticky/setgid folders
    if mode > 0o177777 or stat.S_IFMT(mode) not in _FILE_TYPES:
        return False
    special = mode & _SPECIAL_BITS
    if not special:
        return True
    if stat.S_ISDIR(mode):
        return not special & stat.S_ISUID
    return stat.S_ISREG(mode) and not special & stat.S_ISVTX


def parse_mode(value: str | None) -> int | None:
    """s3fs's decimal mode, a C-style octal '0100644', or rclone's octal '100644' (told apart by plausibility)."""
    if not value:
        return None
    v = value.strip()
    try:
        if v.lower().startswith("0x"):
            mode = int(v, 16)
        elif len(v) > 1 and v.startswith("0"):
            mode = int(v, 8)
        else:
            mode = int(v)
            if set(v) <= set("01234567") and (
                    mode > 0o177777 or (stat.S_IFMT(mode) and stat.S_IFMT(mode) not in _FILE_TYPES)
                    or (stat.S_IFMT(mode) and not _plausible(mode) and _plausible(int(v, 8)))):
                mode = int(v, 8)
    except ValueError:
        return None
    if mode < 0 or mode > 0o177777:
        return None
    return mode if stat.S_IFMT(mode) else mode | stat.S_IFREG


def _parse_int(value: str | None) -> int | None:
    """A decimal number (s3fs also reads 0x hex)."""
    if not value:
        return None
    try:
        return int(value, 16) if value.lower().startswith("0x") else int(value)
    except ValueError:
        return None


def _parse_owner(md: Mapping[str, str], name: str, key: str) -> int | None:
    """uid or gid; None (the mount's default, logged) when it is unreadable or no account can have it."""
    value = md.get(name)
    found = _parse_int(value)
    if value and (found is None or not 0 <= found <= MAX_OWNER_ID):
        _distrust(name, key, value)
        return None
    return found


def parse_rdev(value: str | None) -> int | None:
    """A device number: s3fs's decimal, or rclone's hexadecimal (without 0x) when it is not decimal."""
    found = _parse_int(value)
    if found is None and value:
        try:
            found = int(value.strip(), 16)
        except ValueError:
            return None
    return found if found is not None and found >= 0 else None


def xattr_metadata_key(name: str) -> str | None:
    """The S3 metadata key that stores xattr `name`, or None when S3 cannot keep the name faithfully."""
    if not name.startswith("user."):
        return None
    key = name[5:]
    return key if _META_NAME.match(key) and key not in RESERVED_KEYS else None


def encode_value(value: bytes) -> str:
    """S3 metadata values must be ASCII: printable ones as-is, others as 'b64:' + base64."""
    try:
        text = value.decode("ascii")
        if _PLAIN_VALUE.match(text) and not text.startswith("b64:"):
            return text
    except UnicodeDecodeError:
        pass
    return "b64:" + base64.b64encode(value).decode("ascii")


def decode_value(text: str) -> bytes:
    """Inverse of encode_value; values written by other tools come back as their bytes."""
    if text.startswith("b64:"):
        try:
            return base64.b64decode(text[4:], validate=True)
        except (binascii.Error, ValueError):
            pass
    return text.encode("utf-8", "surrogateescape")


def metadata_for(meta: ObjectMeta) -> dict[str, str]:
    """User metadata (without the x-amz-meta- prefix) for meta, in s3fs's and rclone's names."""
    md = {"mtime": format_mtime(meta.mtime_ns), "mode": str(meta.mode)}
    if meta.ctime_ns is not None:
        md["ctime"] = format_mtime(meta.ctime_ns)
    if meta.atime_ns is not None:
        md["atime"] = format_mtime(meta.atime_ns)
    if meta.uid is not None:
        md["uid"] = str(meta.uid)
    if meta.gid is not None:
        md["gid"] = str(meta.gid)
    if meta.rdev is not None:
        md["rdev"] = str(meta.rdev)
    odd: dict[str, bytes] = {}
    for name, value in meta.xattrs.items():
        key = xattr_metadata_key(name)
        if key is None:
            odd[name] = value
        else:
            md[key] = encode_value(value)
    if odd:
        md[XATTR_KEY] = encode_xattr_json(odd)
    return md


def encode_xattr_json(xattrs: dict[str, bytes]) -> str:
    """s3fs's form of xattrs: JSON {name: base64 of the value}, urlencoded (names in UTF-8, as s3fs writes them)."""
    doc = json.dumps({name: base64.b64encode(value).decode("ascii") for name, value in sorted(xattrs.items())},
                     ensure_ascii=False, separators=(",", ":"))
    return quote(doc.encode("utf-8", "surrogateescape"), safe="")


def xattrs_from_metadata(md: dict[str, str]) -> dict[str, bytes]:
    """xattrs from user metadata: our one-key-per-xattr form and s3fs's urlencoded JSON 'xattr' key."""
    xattrs: dict[str, bytes] = {}
    if XATTR_KEY in md:
        try:
            for name, b64 in json.loads(unquote(md[XATTR_KEY], errors="surrogateescape")).items():
                if isinstance(name, str) and name.startswith("user.") and isinstance(b64, str):
                    xattrs[name] = base64.b64decode(b64)
        except (ValueError, AttributeError, binascii.Error):
            log.debug("unreadable s3fs xattr metadata ignored")
    for key, value in md.items():
        if key not in RESERVED_KEYS:
            xattrs["user." + key] = decode_value(value)
    return xattrs


def headers_for(meta: ObjectMeta) -> dict[str, str]:
    """The Content-Type and x-amz-meta-* request headers (lower-case names) that store meta with an object."""
    headers = {"content-type": meta.content_type}
    headers.update((META_PREFIX + k, v) for k, v in metadata_for(meta).items())
    return headers


def user_metadata(headers: Mapping[str, str]) -> dict[str, str]:
    """The user metadata (names without x-amz-meta-, lower-case) in an answer's headers."""
    n = len(META_PREFIX)
    return {k[n:].lower(): v for k, v in headers.items() if k.lower().startswith(META_PREFIX)}


def strip_etag(etag: str | None) -> str | None:
    """An ETag without its quotes; None when there is none."""
    return (etag or "").strip('"') or None


def info_from_headers(key: str, headers: Mapping[str, str]) -> ObjectInfo:
    """ObjectInfo from a HEAD (or GET) answer's headers (lower-case names): size, times, mode of any file type,
    owner, rdev and xattrs; ValueError when Content-Length or Last-Modified is missing or unreadable."""
    try:
        size = int(headers["content-length"])
        modified = round(parsedate_to_datetime(headers["last-modified"]).timestamp()) * NS_PER_SECOND
    except (KeyError, TypeError, ValueError, OverflowError) as e:
        raise ValueError(f"unreadable HEAD answer ({type(e).__name__}: {e})") from e
    md = user_metadata(headers)
    mtime = _parse_time(md, "mtime", key)
    mode = parse_mode(md.get("mode"))
    if mode is None and md.get("mode"):
        _distrust("mode", key, md["mode"])
    rdev = parse_rdev(md.get("rdev")) if mode is not None and stat.S_IFMT(mode) in _DEVICE_TYPES else None
    return ObjectInfo(key=key, size=size, mtime_ns=modified if mtime is None else mtime, mode=mode,
                      uid=_parse_owner(md, "uid", key), gid=_parse_owner(md, "gid", key),
                      etag=strip_etag(headers.get("etag")), content_type=headers.get("content-type"),
                      xattrs=xattrs_from_metadata(md), ctime_ns=_parse_time(md, "ctime", key),
                      atime_ns=_parse_time(md, "atime", key), rdev=rdev)


def dir_info_from_headers(key: str, headers: Mapping[str, str]) -> ObjectInfo | None:
    """A folder's ObjectInfo from its marker's headers; None when the marker carries no metadata."""
    if not user_metadata(headers):
        return None
    info = info_from_headers(key, headers)
    if info.mode is not None and not stat.S_ISDIR(info.mode):
        info.mode = stat.S_IFDIR | stat.S_IMODE(info.mode)  # a marker is a folder whatever its mode says
    info.size, info.is_dir, info.rdev = 0, True, None
    return info


def info_from_meta(key: str, size: int, etag: str | None, meta: ObjectMeta) -> ObjectInfo:
    """The ObjectInfo of an object just stored with meta (no HEAD needed)."""
    return ObjectInfo(key=key, size=size, mtime_ns=meta.mtime_ns, mode=meta.mode, uid=meta.uid, gid=meta.gid,
                      etag=strip_etag(etag), content_type=meta.content_type, xattrs=dict(meta.xattrs),
                      ctime_ns=meta.ctime_ns, atime_ns=meta.atime_ns, rdev=meta.rdev)
