"""S3 and S3-compatible stores (AWS, MinIO, SeaweedFS, R2, ...) on boto3, with s3fs/rclone metadata."""

from __future__ import annotations

import base64
import binascii
import io
import json
import logging
import os
import random
import re
import stat
import time
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime
from typing import Any
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import boto3
from boto3.exceptions import S3UploadFailedError
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    HTTPClientError,
    IncompleteReadError,
    NoCredentialsError,
    PartialCredentialsError,
)
from botocore.exceptions import ConnectionError as BotoConnectionError

from .. import errors
from .base import ObjectInfo, ObjectMeta, Provider
from .s3_lean import LeanS3, Refused

log = logging.getLogger(__name__)

COPY_LIMIT = 5 * 1024 ** 3  # CopyObject's ceiling; bigger objects need a multipart copy
#: seconds a lookup (head, one listing page) may take, retries included, before it gives up
META_DEADLINE = 5.0
DIR_CONTENT_TYPE = "application/x-directory"
#: metadata keys with a meaning of their own (s3fs, rclone): never shown as xattrs
RESERVED_KEYS = frozenset({"mtime", "mode", "uid", "gid", "atime", "ctime", "btime", "rdev", "md5chksum",
                           "xattr"})
NOT_FOUND_CODES = frozenset({"NoSuchKey", "404", "NotFound"})
DENIED_CODES = frozenset({"AccessDenied", "403", "Forbidden", "InvalidAccessKeyId", "SignatureDoesNotMatch",
                          "ExpiredToken", "InvalidToken", "TokenRefreshRequired", "AllAccessDisabled"})
BUSY_CODES = frozenset({"SlowDown", "503", "500", "502", "504", "RequestTimeout", "InternalError",
                        "ServiceUnavailable", "Throttling", "ThrottlingException", "RequestLimitExceeded"})
TRANSIENT_EXC = (BotoConnectionError, HTTPClientError, IncompleteReadError)
_PLAIN_VALUE = re.compile(r"[!-~](?:[ -~]*[!-~])?\Z")  # printable ASCII, no blank at either end
_META_NAME = re.compile(r"[a-z0-9][a-z0-9._-]*\Z")  # S3 lower-cases user metadata names
_ISO_FRACTION = re.compile(r"(\.\d{6})\d+")
_FILE_TYPES = frozenset({stat.S_IFREG, stat.S_IFDIR, stat.S_IFLNK, stat.S_IFIFO, stat.S_IFSOCK,
                         stat.S_IFCHR, stat.S_IFBLK})
_DEVICE_TYPES = frozenset({stat.S_IFCHR, stat.S_IFBLK})
_SPECIAL_BITS = stat.S_ISUID | stat.S_ISGID | stat.S_ISVTX


# -- metadata: s3fs / rclone compatible -------------------------------------------------

def format_mtime(t: float) -> str:
    """Seconds with 9 fraction digits, rclone's form (s3fs reads the digits after '.' as nanoseconds)."""
    ns = round(t * 1_000_000) * 1000  # a float holds about microseconds at today's epoch: no fake digits
    sign, ns = ("-", -ns) if ns < 0 else ("", ns)
    return f"{sign}{ns // 1_000_000_000}.{ns % 1_000_000_000:09d}"


def parse_mtime(value: str | None) -> float | None:
    """rclone's fractional seconds, s3fs's integer seconds, or RFC 3339; None when unreadable."""
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        pass
    try:
        return datetime.fromisoformat(_ISO_FRACTION.sub(r"\1", value.strip())).timestamp()
    except ValueError:
        return None


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
    """uid/gid: decimal (s3fs also reads 0x hex)."""
    if not value:
        return None
    try:
        return int(value, 16) if value.lower().startswith("0x") else int(value)
    except ValueError:
        return None


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
    md = {"mtime": format_mtime(meta.mtime), "mode": str(meta.mode)}
    if meta.ctime is not None:
        md["ctime"] = format_mtime(meta.ctime)
    if meta.atime is not None:
        md["atime"] = format_mtime(meta.atime)
    if meta.uid is not None:
        md["uid"] = str(meta.uid)
    if meta.gid is not None:
        md["gid"] = str(meta.gid)
    if meta.rdev is not None:
        md["rdev"] = str(meta.rdev)
    for name, value in meta.xattrs.items():
        key = xattr_metadata_key(name)
        if key is None:
            log.warning("xattr %r cannot be kept as S3 metadata (names are lower-case ASCII), not stored", name)
            continue
        md[key] = encode_value(value)
    return md


def xattrs_from_metadata(md: dict[str, str]) -> dict[str, bytes]:
    """xattrs from user metadata: our one-key-per-xattr form and s3fs's urlencoded JSON 'xattr' key."""
    xattrs: dict[str, bytes] = {}
    if "xattr" in md:
        try:
            for name, b64 in json.loads(unquote(md["xattr"])).items():
                if isinstance(name, str) and name.startswith("user.") and isinstance(b64, str):
                    xattrs[name] = base64.b64decode(b64)
        except (ValueError, AttributeError, binascii.Error):
            log.debug("unreadable s3fs xattr metadata ignored")
    for key, value in md.items():
        if key not in RESERVED_KEYS:
            xattrs["user." + key] = decode_value(value)
    return xattrs


def info_from_head(key: str, r: dict[str, Any]) -> ObjectInfo:
    """ObjectInfo from a head_object answer: times, mode (any file type), owner, rdev and xattrs from its metadata."""
    md = {k.lower(): v for k, v in (r.get("Metadata") or {}).items()}
    mtime = parse_mtime(md.get("mtime"))
    if mtime is None:
        mtime = r["LastModified"].timestamp()
    mode = parse_mode(md.get("mode"))
    rdev = parse_rdev(md.get("rdev")) if mode is not None and stat.S_IFMT(mode) in _DEVICE_TYPES else None
    return ObjectInfo(key=key, size=int(r.get("ContentLength", 0)), mtime=mtime, mode=mode,
                      uid=_parse_int(md.get("uid")), gid=_parse_int(md.get("gid")),
                      etag=(r.get("ETag") or "").strip('"') or None, content_type=r.get("ContentType"),
                      xattrs=xattrs_from_metadata(md), ctime=parse_mtime(md.get("ctime")),
                      atime=parse_mtime(md.get("atime")), rdev=rdev)


def _drop_expect_header(request: Any, **_: Any) -> None:
    """Send no `Expect: 100-continue`: an early answer to one poisons the pooled connection (botocore#3755)."""
    # SeaweedFS answers every empty PUT at once; botocore then parses the next response on that connection
    # against the stale status line and stalls for read_timeout. The header is not signed: safe to drop.
    if "Expect" in request.headers:
        del request.headers["Expect"]


def _safe_endpoint(url: str) -> str:
    """The endpoint for messages, without any user:password part."""
    parts = urlsplit(url)
    if parts.username or parts.password:
        parts = parts._replace(netloc=parts.hostname + (f":{parts.port}" if parts.port else ""))
    return urlunsplit(parts)


class S3Provider(Provider):
    """One bucket (and optional key prefix) of an S3-compatible store."""

    kind = "s3"
    listing_has_metadata = False
    lookup_by_listing = True

    def __init__(self, cfg: Any) -> None:
        self.cfg = cfg
        self.name = cfg.name
        self.bucket = cfg.bucket
        prefix = (cfg.prefix or "").lstrip("/")
        self.prefix = prefix if not prefix or prefix.endswith("/") else prefix + "/"
        self.copy_limit = COPY_LIMIT
        self._session = boto3.session.Session(
            aws_access_key_id=cfg.access_key_id, aws_secret_access_key=cfg.secret_access_key,
            aws_session_token=cfg.session_token, region_name=cfg.region)
        deadline = float(cfg.read_deadline)
        self._client = self._make_client(cfg.connect_timeout, cfg.read_timeout, {"max_attempts": int(cfg.max_attempts)})
        # reads (head, list, get_range) retry in _read, bounded by read_deadline: one attempt must not outlast it
        self._read_client = self._make_client(min(cfg.connect_timeout, deadline), min(cfg.read_timeout, deadline),
                                              {"total_max_attempts": 1})
        self._meta_budget = min(META_DEADLINE, deadline)
        # lookups (head, list) answer the FUSE layer directly: fail within META_DEADLINE, so that
        # while the server is away the namespace falls back on its cache instead of hanging
        self._meta_client = self._make_client(min(cfg.connect_timeout, 3.0), min(cfg.read_timeout, self._meta_budget),
                                              {"total_max_attempts": 1})
        self._check_client = self._make_client(min(cfg.connect_timeout, 3.0), min(cfg.read_timeout, 4.0),
                                               {"total_max_attempts": 2})
        self.endpoint = _safe_endpoint(cfg.endpoint_url or self._client.meta.endpoint_url)
        # the hot requests (small PUTs, listing pages, HEADs, ranged GETs) skip boto3 until a server refuses them
        self._lean = True
        self._lean_by_client = {id(c): LeanS3(c, self._session, self.bucket)
                                for c in (self._client, self._meta_client, self._read_client)}
        self._transfer = TransferConfig(multipart_threshold=int(cfg.multipart_threshold),
                                        multipart_chunksize=int(cfg.multipart_chunksize),
                                        max_concurrency=8, use_threads=True)

    def _make_client(self, connect_timeout: float, read_timeout: float, retries: dict[str, Any]) -> Any:
        config = Config(
            signature_version="s3v4", connect_timeout=connect_timeout, read_timeout=read_timeout,
            retries={**retries, "mode": "standard"}, max_pool_connections=32, tcp_keepalive=True,
            s3={"addressing_style": "path" if self.cfg.path_style else "auto"},
            # S3-compatible stores (R2, older MinIO, Ceph) reject the newer default trailing checksums
            request_checksum_calculation="when_required", response_checksum_validation="when_required")
        client = self._session.client("s3", endpoint_url=self.cfg.endpoint_url or None, config=config)
        client.meta.events.register("before-send.s3", _drop_expect_header)
        return client

    # -- helpers --------------------------------------------------------------------------
    def _key(self, key: str) -> str:
        return self.prefix + key

    def _strip(self, full: str) -> str:
        return full[len(self.prefix):] if full.startswith(self.prefix) else full

    def _what(self, key: str) -> str:
        return f"s3://{self.bucket}/{self.prefix}{key}"

    def _error(self, exc: BaseException, what: str) -> errors.StorefsError:
        """The storefs error for a boto3/botocore failure (messages name the object, never credentials)."""
        if isinstance(exc, S3UploadFailedError) and isinstance(exc.__context__, (BotoCoreError, ClientError)):
            return self._error(exc.__context__, what)
        if isinstance(exc, ClientError):
            err = exc.response.get("Error", {})
            code = str(err.get("Code", ""))
            status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
            if code == "NoSuchBucket":
                return errors.ProviderError(f"bucket {self.bucket} does not exist at {self.endpoint}")
            if code in NOT_FOUND_CODES or status == 404:
                return errors.NotFound(what)
            if code in DENIED_CODES or status == 403:
                return errors.AccessDenied(f"{what}: access denied ({code or status}); check the credentials")
            if code in BUSY_CODES or status >= 500 or status == 429:
                return errors.ProviderUnavailable(f"{what}: {self.endpoint} answered {code or status} after retries")
            return errors.ProviderError(f"{what}: {code or status}: {err.get('Message', '')}".rstrip(": "))
        if isinstance(exc, TRANSIENT_EXC):
            return errors.ProviderUnavailable(f"cannot reach {self.endpoint} ({type(exc).__name__}) for {what}")
        if isinstance(exc, (NoCredentialsError, PartialCredentialsError)):
            return errors.AccessDenied(f"no usable S3 credentials for {self.endpoint} ({type(exc).__name__})")
        return errors.ProviderError(f"{what}: {exc}")

    def _info(self, key: str, r: dict[str, Any]) -> ObjectInfo:
        """ObjectInfo from a head_object answer."""
        return info_from_head(key, r)

    def _info_from_meta(self, key: str, size: int, etag: str | None, meta: ObjectMeta) -> ObjectInfo:
        return ObjectInfo(key=key, size=size, mtime=meta.mtime, mode=meta.mode, uid=meta.uid, gid=meta.gid,
                          etag=(etag or "").strip('"') or None, content_type=meta.content_type,
                          xattrs=dict(meta.xattrs), ctime=meta.ctime, atime=meta.atime, rdev=meta.rdev)

    # -- Provider -------------------------------------------------------------------------
    def check(self) -> None:
        """head_bucket on a short-timeout client, so a mount with a dead endpoint fails in seconds."""
        try:
            self._check_client.head_bucket(Bucket=self.bucket)
        except ClientError as e:
            status = int(e.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
            if status == 404 or e.response.get("Error", {}).get("Code") in ("NoSuchBucket", "404", "NotFound"):
                raise errors.ProviderError(f"bucket {self.bucket} does not exist at {self.endpoint}") from e
            if status in (301, 400) and not self.cfg.endpoint_url:
                raise errors.ProviderError(f"bucket {self.bucket} answered {status}: wrong region?") from e
            if status == 403:
                raise errors.AccessDenied(f"access to bucket {self.bucket} at {self.endpoint} denied: "
                                          "check the access key, secret and permissions") from e
            raise self._error(e, f"bucket {self.bucket}") from e
        except BotoCoreError as e:
            raise self._error(e, f"bucket {self.bucket}") from e

    def _read(self, what: str, call: Callable[[], Any], budget: float | None = None) -> Any:
        """Run one read, retrying transient failures for at most budget (default read_deadline) seconds."""
        deadline = time.monotonic() + float(self.cfg.read_deadline if budget is None else budget)
        attempt = 0
        while True:
            try:
                return call()
            except (BotoCoreError, ClientError) as e:
                err, cause = self._error(e, what), e
            if not isinstance(err, errors.ProviderUnavailable):
                raise err from cause
            attempt += 1
            delay = min(2.0, 0.1 * 2 ** attempt) * random.uniform(0.5, 1.0)
            if time.monotonic() + delay >= deadline:
                raise errors.ProviderUnavailable(f"{err} (gave up after {attempt} attempts)") from cause
            log.debug("%s: %s, retry %d in %.2fs", what, type(cause).__name__, attempt, delay)
            time.sleep(delay)

    def _head(self, key: str) -> dict[str, Any]:
        if not key or key.endswith("/"):
            raise errors.NotFound(self._what(key))  # folder markers are not files
        return self._read(self._what(key), lambda: self._head_object(self._key(key)), self._meta_budget)

    def _head_object(self, full: str) -> dict[str, Any]:
        """One HEAD by the meta client: the lean path when the server takes it, else head_object."""
        done, r = self._lean_call(self._meta_client, lambda lean: lean.head(full))
        return r if done else self._meta_client.head_object(Bucket=self.bucket, Key=full)

    def head(self, key: str) -> ObjectInfo:
        return self._info(key, self._head(key))

    def dir_exists(self, prefix: str) -> bool:
        if prefix and not prefix.endswith("/"):
            prefix += "/"
        if not prefix:
            return True
        r = self._read(self._what(prefix), lambda: self._list_page(
            self._meta_client, {"Bucket": self.bucket, "Prefix": self._key(prefix), "MaxKeys": 1}), self._meta_budget)
        if r.get("KeyCount") or r.get("Contents") or r.get("CommonPrefixes"):
            return True
        # an emptied folder some servers (SeaweedFS) keep and list, but no prefix query finds
        try:
            self._read(self._what(prefix), lambda: self._head_object(self._key(prefix)), self._meta_budget)
            return True
        except errors.NotFound:
            return False

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        """One page of 1000 at a time (each page under the read deadline), folders first within a page."""
        if prefix and not prefix.endswith("/"):
            prefix += "/"
        full = self._key(prefix)
        args: dict[str, Any] = {"Bucket": self.bucket, "Prefix": full, "Delimiter": "/", "MaxKeys": 1000}
        seen: set[str] = set()
        while True:
            page = self._read(self._what(prefix), lambda: self._list_page(self._meta_client, args), self._meta_budget)
            for cp in page.get("CommonPrefixes") or ():
                key = self._strip(cp["Prefix"])
                if key not in seen:
                    seen.add(key)
                    yield ObjectInfo(key=key, size=0, mtime=0.0, is_dir=True)
            for obj in page.get("Contents") or ():
                if obj["Key"] == full:
                    continue  # the marker of prefix itself
                key = self._strip(obj["Key"])
                if key.endswith("/") and not obj.get("Size"):
                    if key not in seen:
                        seen.add(key)
                        yield ObjectInfo(key=key, size=0, mtime=obj["LastModified"].timestamp(), is_dir=True)
                    continue
                yield ObjectInfo(key=key, size=int(obj.get("Size", 0)), mtime=obj["LastModified"].timestamp(),
                                 etag=(obj.get("ETag") or "").strip('"') or None)
            if not page.get("IsTruncated") or not page.get("NextContinuationToken"):
                return
            args["ContinuationToken"] = page["NextContinuationToken"]

    def walk(self, prefix: str) -> Iterator[ObjectInfo]:
        """One flat ListObjectsV2 (no delimiter), 1000 keys a page: a whole tree in len/1000 requests.

        Folders are the marker objects ('a/b/', empty); sizes and LastModified come from the
        listing, so mtime here is the upload time, not the x-amz-meta-mtime a head returns.
        """
        if prefix and not prefix.endswith("/"):
            prefix += "/"
        full = self._key(prefix)
        args: dict[str, Any] = {"Bucket": self.bucket, "Prefix": full, "MaxKeys": 1000}
        while True:
            page = self._read(self._what(prefix), lambda: self._list_page(self._read_client, args))
            for obj in page.get("Contents") or ():
                if obj["Key"] == full:
                    continue  # the marker of prefix itself
                key = self._strip(obj["Key"])
                modified = obj["LastModified"].timestamp()
                if key.endswith("/"):
                    yield ObjectInfo(key=key, size=0, mtime=modified, is_dir=True)
                else:
                    yield ObjectInfo(key=key, size=int(obj.get("Size", 0)), mtime=modified,
                                     etag=(obj.get("ETag") or "").strip('"') or None)
            if not page.get("IsTruncated") or not page.get("NextContinuationToken"):
                return
            args["ContinuationToken"] = page["NextContinuationToken"]

    def read_stream(self, key: str, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        """One streamed GET (the body read piece by piece), instead of a request per piece."""
        what = self._what(key)
        r = self._read(what, lambda: self._read_client.get_object(Bucket=self.bucket, Key=self._key(key)))
        body = r["Body"]
        try:
            while True:
                try:
                    data = body.read(chunk_size)
                except (BotoCoreError, ClientError) as e:
                    raise self._error(e, what) from e
                if not data:
                    return
                yield data
        finally:
            body.close()

    def get_range(self, key: str, offset: int, length: int) -> bytes:
        """Ranged GET, bounded by read_deadline; a range at or past the end reads as b""."""
        if length <= 0:
            return b""
        rng = f"bytes={offset}-{offset + length - 1}"

        def fetch() -> bytes:
            done, data = self._lean_call(self._read_client,
                                         lambda lean: lean.get_range(self._key(key), offset, length))
            if done:
                return data
            try:
                r = self._read_client.get_object(Bucket=self.bucket, Key=self._key(key), Range=rng)
            except ClientError as e:
                if e.response.get("Error", {}).get("Code") == "InvalidRange":
                    return b""
                raise
            body = r["Body"]
            try:
                return body.read()
            finally:
                body.close()

        return self._read(self._what(key), fetch)

    def put_file(self, key: str, src_path: str, meta: ObjectMeta) -> ObjectInfo:
        """One PUT below the multipart threshold (the transfer manager's threads cost more than
        a small file's upload); above it, parts in parallel and then one HEAD for the etag."""
        extra = {"ContentType": meta.content_type, "Metadata": metadata_for(meta)}
        full = self._key(key)
        try:
            with open(src_path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                if size < int(self.cfg.multipart_threshold):
                    return self._info_from_meta(key, size, self._put_small(full, f, size, extra), meta)
            self._client.upload_file(src_path, self.bucket, full, ExtraArgs=extra, Config=self._transfer)
            r = self._client.head_object(Bucket=self.bucket, Key=full)
        except (BotoCoreError, ClientError, S3UploadFailedError) as e:
            raise self._error(e, self._what(key)) from e
        except OSError as e:
            raise errors.ProviderError(f"{self._what(key)}: cannot read the cache file: {e.strerror or e}") from e
        return self._info_from_meta(key, int(r.get("ContentLength", 0)), r.get("ETag"), meta)

    def _lean_call(self, client: Any, request: Callable[[LeanS3], Any]) -> tuple[bool, Any]:
        """(True, answer) from the lean path, or (False, None): then the caller asks boto3.

        Connection errors go to boto3's retries for uploads; reads (one attempt per client
        call) get them raised, as boto3 would, for their caller's bounded retries.
        """
        if not self._lean:
            return False, None
        try:
            return True, request(self._lean_by_client[id(client)])
        except Refused as e:
            if not e.busy and self._lean:
                log.info("%s: the lean request path does not suit this server (%s); using boto3's client",
                         self.name, e)
                self._lean = False
        except BotoCoreError as e:
            if client is not self._client:
                raise  # reads make one attempt each: their caller retries within its deadline
            # cannot reach the server: the client's retries and errors take over
            log.debug("%s: lean request failed (%s); asking boto3's client", self.name, e)
        return False, None

    def _put_small(self, full: str, f: Any, size: int, extra: dict[str, Any]) -> str | None:
        """The ETag of one PUT: the lean path when the server takes it, else put_object (with retries)."""
        done, etag = self._lean_call(self._client, lambda lean: lean.put(
            full, f, size, extra["ContentType"], extra["Metadata"]))
        if done:
            return etag
        f.seek(0)
        r = self._client.put_object(Bucket=self.bucket, Key=full, Body=f, ContentLength=size, **extra)
        return r.get("ETag")

    def _list_page(self, client: Any, args: dict[str, Any]) -> dict[str, Any]:
        """One ListObjectsV2 page: the lean path when the server takes it, else list_objects_v2."""
        done, page = self._lean_call(client, lambda lean: lean.list_page(args))
        return page if done else client.list_objects_v2(**args)

    def set_meta(self, key: str, meta: ObjectMeta) -> ObjectInfo:
        return self.copy(key, key, meta)

    def copy(self, src: str, dst: str, meta: ObjectMeta | None = None) -> ObjectInfo:
        """Server-side copy; metadata kept or replaced; multipart copy above 5 GiB."""
        head = self._head(src)
        info = self._info(src, head)
        what = self._what(dst)
        source = {"Bucket": self.bucket, "Key": self._key(src)}
        if meta is not None:
            content_type, metadata = meta.content_type, metadata_for(meta)
        else:
            content_type, metadata = info.content_type or "application/octet-stream", None
        try:
            if info.size > self.copy_limit:
                if metadata is None:  # a multipart copy does not carry metadata over by itself
                    metadata = head.get("Metadata") or {}
                self._client.copy(source, self.bucket, self._key(dst), Config=self._transfer,
                                  ExtraArgs={"MetadataDirective": "REPLACE", "ContentType": content_type,
                                             "Metadata": metadata})
                etag = self._client.head_object(Bucket=self.bucket, Key=self._key(dst)).get("ETag")
            else:
                args: dict[str, Any] = {"MetadataDirective": "COPY"}
                if metadata is not None:
                    args = {"MetadataDirective": "REPLACE", "ContentType": content_type, "Metadata": metadata}
                r = self._client.copy_object(Bucket=self.bucket, Key=self._key(dst), CopySource=source, **args)
                etag = r.get("CopyObjectResult", {}).get("ETag")
        except (BotoCoreError, ClientError) as e:
            raise self._error(e, what) from e
        if meta is not None:
            return self._info_from_meta(dst, info.size, etag, meta)
        info.key, info.etag = dst, (etag or "").strip('"') or info.etag
        return info

    def delete(self, key: str) -> None:
        try:
            self._client.delete_object(Bucket=self.bucket, Key=self._key(key))
        except (BotoCoreError, ClientError) as e:
            err = self._error(e, self._what(key))
            if not isinstance(err, errors.NotFound):
                raise err from e

    def delete_many(self, keys: Iterable[str]) -> None:
        """Batched delete (1000 keys per request); a missing key is not a failure."""
        keys = list(keys)
        failed: list[str] = []
        for i in range(0, len(keys), 1000):
            batch = [{"Key": self._key(k)} for k in keys[i:i + 1000]]
            try:
                r = self._client.delete_objects(Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True})
            except (BotoCoreError, ClientError) as e:
                raise self._error(e, self._what(keys[i])) from e
            failed += [f"{self._strip(x.get('Key', ''))}: {x.get('Code')}" for x in r.get("Errors") or ()
                       if x.get("Code") not in NOT_FOUND_CODES]
        if failed:
            raise errors.ProviderError(f"s3://{self.bucket}: {len(failed)} deletes failed, first: {failed[0]}")

    def head_dir(self, prefix: str) -> ObjectInfo | None:
        """HEAD of the marker 'prefix/': None when there is none or it carries no metadata (SeaweedFS 4.x drops it)."""
        if not prefix.strip("/"):
            return None
        marker = prefix if prefix.endswith("/") else prefix + "/"
        try:
            r = self._read(self._what(marker), lambda: self._head_object(self._key(marker)), self._meta_budget)
        except errors.NotFound:
            return None
        if not r.get("Metadata"):
            return None
        info = info_from_head(marker, r)
        if info.mode is not None and not stat.S_ISDIR(info.mode):
            info.mode = stat.S_IFDIR | stat.S_IMODE(info.mode)  # a marker is a folder whatever its mode says
        info.size, info.is_dir, info.rdev = 0, True, None
        return info

    def make_dir(self, prefix: str, meta: ObjectMeta) -> None:
        """PUT the marker 'prefix/' with the folder's mode, owner, times and xattrs (also to change them)."""
        marker = prefix if prefix.endswith("/") else prefix + "/"
        try:
            self._put_small(self._key(marker), io.BytesIO(b""), 0,
                            {"ContentType": DIR_CONTENT_TYPE, "Metadata": metadata_for(meta)})
        except (BotoCoreError, ClientError) as e:
            raise self._error(e, self._what(marker)) from e

    def remove_dir(self, prefix: str) -> None:
        self.delete(prefix if prefix.endswith("/") else prefix + "/")

    def url(self, key: str, expires: int | float | None = None) -> str | None:
        """The public URL under public_url_base, else a presigned GET (no request is made)."""
        if self.cfg.public_url_base:
            return self.cfg.public_url_base.rstrip("/") + "/" + quote(self._key(key))
        try:
            return self._client.generate_presigned_url(
                "get_object", Params={"Bucket": self.bucket, "Key": self._key(key)},
                ExpiresIn=int(expires if expires is not None else self.cfg.presign_expiry))
        except (BotoCoreError, ClientError) as e:
            raise self._error(e, self._what(key)) from e

    def close(self) -> None:
        for lean in self._lean_by_client.values():
            lean.close()
        for client in (self._client, self._read_client, self._meta_client, self._check_client):
            try:
                client.close()
            except Exception:  # noqa: BLE001 - closing must not fail a shutdown
                log.debug("closing an S3 client failed", exc_info=True)
