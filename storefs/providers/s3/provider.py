"""S3 and S3-compatible stores (AWS, MinIO, SeaweedFS, R2, ...) as a storefs Provider.

Every request but a multipart transfer goes by requests.py (one attempt each), under the
retry policy of retry.py; boto3 (boto.py) does multipart uploads and copies, presigned URLs
and the credential chain. Every failure is a storefs error from errors.py's one table.
"""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Iterable, Iterator, Sequence
from functools import partial
from typing import Any
from urllib.parse import quote

from ... import errors
from ..base import ObjectInfo, ObjectMeta, Provider
from . import codec, limits
from .boto import Boto
from .errors import FORBIDDEN, NOT_FOUND, NOT_FOUND_CODES
from .http import Timeouts
from .listing import ListPage
from .requests import DELETE_BATCH, Payload, S3Requests, payload_of
from .retry import RetryPolicy

log = logging.getLogger(__name__)

COPY_LIMIT = 5 * 1024 ** 3  # CopyObject's ceiling; bigger objects need a multipart copy
#: a streamed read fetches ranges of at least this size (fewer requests than one per caller's piece)
STREAM_RANGE = 8 << 20
#: keys per listing page (S3's maximum)
PAGE_KEYS = 1000
MOVED_PERMANENTLY = 301
BAD_REQUEST = 400


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
        self.retry = RetryPolicy.from_config(cfg)
        self._boto = Boto(cfg, self.retry)
        self._table = self._boto.table
        self.endpoint = self._table.endpoint
        self._requests = S3Requests(self.bucket, self._boto.region, self._table, self._boto.endpoint,
                                    self._boto.frozen_credentials)

    # -- helpers --------------------------------------------------------------------------
    def _key(self, key: str) -> str:
        return self.prefix + key

    def _strip(self, full: str) -> str:
        return full[len(self.prefix):] if full.startswith(self.prefix) else full

    def _what(self, key: str) -> str:
        return f"s3://{self.bucket}/{self.prefix}{key}"

    def _head_headers(self, full: str) -> dict[str, str]:
        """The headers of a HEAD of the full key, as a lookup (retried within the lookup deadline)."""
        return self.retry.run(self.retry.lookup, self._requests.what(full),
                              lambda t: self._requests.head(full, t))

    def _page(self, full: str, token: str | None, delimiter: str | None, lookup: bool,
              max_keys: int = PAGE_KEYS) -> ListPage:
        """One listing page, retried as a lookup (list, dir_exists) or as a read (walk)."""
        limits = self.retry.lookup if lookup else self.retry.read
        return self.retry.run(limits, self._requests.what(full), lambda t: self._requests.list_page(
            full, t, delimiter=delimiter, token=token, max_keys=max_keys))

    # -- Provider -------------------------------------------------------------------------
    def check(self) -> None:
        """HEAD of the bucket with short timeouts, so a mount with a dead endpoint fails in seconds."""
        what = f"bucket {self.bucket}"

        def attempt(timeouts: Timeouts) -> None:
            answer = self._requests.head_bucket(timeouts)
            status = answer.status
            if 200 <= status < 300:
                return
            if status == NOT_FOUND:
                raise self._table.no_bucket()
            if status in (MOVED_PERMANENTLY, BAD_REQUEST) and not self.cfg.endpoint_url:
                raise errors.ProviderError(f"bucket {self.bucket} answered {status}: wrong region?")
            if status == FORBIDDEN:
                raise errors.AccessDenied(f"access to bucket {self.bucket} at {self.endpoint} denied: "
                                          "check the access key, secret and permissions")
            raise self._table.body(what, status, answer.body)  # busy answers are retried

        self.retry.run(self.retry.check, what, attempt)
        self._probe_names()

    def _head_info(self, key: str) -> tuple[ObjectInfo, dict[str, str]]:
        """The ObjectInfo of the file at key and the HEAD answer's headers it was read from."""
        if not key or key.endswith("/"):
            raise errors.NotFound(self._what(key))  # folder markers are not files
        headers = self._head_headers(self._key(key))
        try:
            return codec.info_from_headers(key, headers), headers
        except ValueError as e:
            raise self._table.odd(self._what(key), str(e)) from e

    def head(self, key: str) -> ObjectInfo:
        return self._head_info(key)[0]

    def dir_exists(self, prefix: str) -> bool:
        if prefix and not prefix.endswith("/"):
            prefix += "/"
        if not prefix:
            return True
        page = self._page(self._key(prefix), None, None, lookup=True, max_keys=1)
        if page.objects or page.prefixes:
            return True
        # an emptied folder some servers (SeaweedFS) keep and list, but no prefix query finds
        try:
            self._head_headers(self._key(prefix))
            return True
        except errors.NotFound:
            return False

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        """One page of 1000 at a time (each page under the lookup deadline), folders first within a page."""
        if prefix and not prefix.endswith("/"):
            prefix += "/"
        full = self._key(prefix)
        token: str | None = None
        seen: set[str] = set()
        while True:
            page = self._page(full, token, "/", lookup=True)
            for p in page.prefixes:
                key = self._strip(p)
                if key not in seen:
                    seen.add(key)
                    yield ObjectInfo(key=key, size=0, mtime=0.0, is_dir=True)
            for obj in page.objects:
                if obj.key == full:
                    continue  # the marker of prefix itself
                key = self._strip(obj.key)
                if key.endswith("/") and not obj.size:
                    if key not in seen:
                        seen.add(key)
                        yield ObjectInfo(key=key, size=0, mtime=obj.modified, is_dir=True)
                    continue
                yield ObjectInfo(key=key, size=obj.size, mtime=obj.modified, etag=obj.etag)
            if page.next_token is None:
                return
            token = page.next_token

    def walk(self, prefix: str) -> Iterator[ObjectInfo]:
        """One flat ListObjectsV2 (no delimiter), 1000 keys a page: a whole tree in len/1000 requests.

        Folders are the marker objects ('a/b/', empty); sizes and LastModified come from the
        listing, so mtime here is the upload time, not the x-amz-meta-mtime a head returns.
        """
        if prefix and not prefix.endswith("/"):
            prefix += "/"
        full = self._key(prefix)
        token: str | None = None
        while True:
            page = self._page(full, token, None, lookup=False)
            for obj in page.objects:
                if obj.key == full:
                    continue  # the marker of prefix itself
                key = self._strip(obj.key)
                if key.endswith("/"):
                    yield ObjectInfo(key=key, size=0, mtime=obj.modified, is_dir=True)
                else:
                    yield ObjectInfo(key=key, size=obj.size, mtime=obj.modified, etag=obj.etag)
            if page.next_token is None:
                return
            token = page.next_token

    def _get(self, key: str, offset: int, length: int, if_match: str | None = None) -> tuple[bytes, dict[str, str]]:
        full = self._key(key)
        return self.retry.run(self.retry.read, self._what(key),
                              lambda t: self._requests.get(full, offset, length, t, if_match))

    def get_range(self, key: str, offset: int, length: int) -> bytes:
        """Ranged GET, bounded by read_deadline; a range at or past the end reads as b""."""
        if length <= 0:
            return b""
        return self._get(key, offset, length)[0]

    def read_stream(self, key: str, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        """Ranged GETs of STREAM_RANGE (or chunk_size, if larger) in order, each one under read_deadline, all
        of the same version of the object (If-Match its ETag: a change mid-way fails the read)."""
        step = max(chunk_size, STREAM_RANGE)
        offset, etag = 0, None
        while True:
            data, headers = self._get(key, offset, step, etag)
            if etag is None:
                etag = codec.strip_etag(headers.get("etag"))
            for i in range(0, len(data), chunk_size):
                yield data[i:i + chunk_size]
            if len(data) < step:
                return
            offset += len(data)

    def put_file(self, key: str, src_path: str, meta: ObjectMeta) -> ObjectInfo:
        """One PUT below the multipart threshold (the transfer manager's threads cost more than
        a small file's upload); above it, parts in parallel and then one HEAD for the etag."""
        full, what = self._key(key), self._what(key)
        headers = codec.headers_for(meta)
        try:
            with open(src_path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                if size < int(self.cfg.multipart_threshold):
                    return codec.info_from_meta(key, size, self._put(full, payload_of(f, size), size, headers), meta)
        except OSError as e:
            raise errors.ProviderError(f"{what}: cannot read the cache file: {e.strerror or e}") from e
        self._boto.upload_file(src_path, full, {"ContentType": meta.content_type,
                                                "Metadata": codec.metadata_for(meta)}, what)
        done = self._head_headers(full)
        return codec.info_from_meta(key, int(done.get("content-length", 0)), done.get("etag"), meta)

    def _put(self, full: str, payload: Payload, size: int, headers: dict[str, str]) -> str | None:
        """One PUT (the write class's retries); its ETag."""
        return self.retry.run(self.retry.write, self._requests.what(full),
                              lambda t: self._requests.put(full, payload, size, headers, t))

    def set_meta(self, key: str, meta: ObjectMeta) -> ObjectInfo:
        return self.copy(key, key, meta)

    def copy(self, src: str, dst: str, meta: ObjectMeta | None = None) -> ObjectInfo:
        """Server-side copy; metadata kept or replaced; multipart copy above 5 GiB."""
        info, headers = self._head_info(src)
        src_full, dst_full, what = self._key(src), self._key(dst), self._what(dst)
        if info.size > self.copy_limit:
            if meta is not None:
                content_type, metadata = meta.content_type, codec.metadata_for(meta)
            else:  # a multipart copy does not carry metadata over by itself
                content_type = info.content_type or "application/octet-stream"
                metadata = codec.user_metadata(headers)
            self._boto.copy_multipart(src_full, dst_full, {"MetadataDirective": "REPLACE",
                                                           "ContentType": content_type, "Metadata": metadata}, what)
            etag = self._head_headers(dst_full).get("etag")
        else:
            replaced = None if meta is None else codec.headers_for(meta)
            etag = self.retry.run(self.retry.write, what,
                                  lambda t: self._requests.copy(src_full, dst_full, replaced, t))
        if meta is not None:
            return codec.info_from_meta(dst, info.size, etag, meta)
        info.key, info.etag = dst, codec.strip_etag(etag) or info.etag
        return info

    def delete(self, key: str) -> None:
        full = self._key(key)
        self.retry.run(self.retry.write, self._what(key), lambda t: self._requests.delete(full, t))

    def delete_many(self, keys: Iterable[str]) -> None:
        """Batched delete (1000 keys per request); a missing key is not a failure."""
        keys = list(keys)
        failed: list[str] = []
        for i in range(0, len(keys), DELETE_BATCH):
            batch = [self._key(k) for k in keys[i:i + DELETE_BATCH]]
            failed += [f"{self._strip(k)}: {code}" for k, code in self._delete_batch(batch)
                       if code not in NOT_FOUND_CODES]
        if failed:
            raise errors.ProviderError(f"s3://{self.bucket}: {len(failed)} deletes failed, first: {failed[0]}")

    def _delete_batch(self, fulls: Sequence[str]) -> Sequence[tuple[str, str]]:
        """One DeleteObjects request (the write class's retries); (key, code) of the keys not deleted."""
        return self.retry.run(self.retry.write, self._requests.what(fulls[0]),
                              lambda t: self._requests.delete_batch(fulls, t))

    def head_dir(self, prefix: str) -> ObjectInfo | None:
        """HEAD of the marker 'prefix/': None when there is none or it carries no metadata (SeaweedFS 4.x drops it)."""
        if not prefix.strip("/"):
            return None
        marker = prefix if prefix.endswith("/") else prefix + "/"
        try:
            headers = self._head_headers(self._key(marker))
        except errors.NotFound:
            return None
        try:
            return codec.dir_info_from_headers(marker, headers)
        except ValueError as e:
            raise self._table.odd(self._what(marker), str(e)) from e

    def make_dir(self, prefix: str, meta: ObjectMeta) -> None:
        """PUT the marker 'prefix/' with the folder's mode, owner, times and xattrs (also to change them)."""
        marker = prefix if prefix.endswith("/") else prefix + "/"
        headers = codec.headers_for(meta)
        headers["content-type"] = codec.DIR_CONTENT_TYPE
        self._put(self._key(marker), payload_of(io.BytesIO(b""), 0), 0, headers)

    def remove_dir(self, prefix: str) -> None:
        self.delete(prefix if prefix.endswith("/") else prefix + "/")

    def url(self, key: str, expires: int | float | None = None) -> str | None:
        """The public URL under public_url_base, else a presigned GET (no request is made)."""
        base: str | None = self.cfg.public_url_base
        if base:
            return base.rstrip("/") + "/" + quote(self._key(key))
        expiry = int(expires if expires is not None else self.cfg.presign_expiry)
        return self._boto.presign(self._key(key), expiry, self._what(key))

    def close(self) -> None:
        self._requests.close()
        self._boto.close()

    # -- limits checked at the operation (limits.py) -----------------------------------------
    #: whether the server stores a '\\' in a key as given (found out at mount by _probe_names)
    backslash_kept = True

    def check_key(self, key: str) -> None:
        """NameTooLong past S3's 1,024 bytes (prefix included); LayoutError for a name this server would change."""
        limits.check_key(self._key(key), backslash_kept=self.backslash_kept)

    def check_meta(self, key: str, meta: ObjectMeta) -> None:
        """MetadataTooLarge when the x-amz-meta-* headers meta makes are over S3's 2 KiB."""
        limits.check_metadata(self._what(key), codec.headers_for(meta))

    def _probe_names(self) -> None:
        """Find out whether the server keeps a '\\' in a key (SeaweedFS stores it as '/'): PUT a probe key with
        one, list it back, delete it. A probe that fails leaves such names allowed and never fails the mount."""
        stem = f"{self.prefix}{limits.NAME_PROBE}{os.getpid()}-{os.urandom(4).hex()}"
        written = stem + limits.BACKSLASH + "n"
        try:
            self.retry.run(self.retry.check, self._requests.what(written), lambda t: self._requests.put(
                written, payload_of(io.BytesIO(b""), 0), 0, {"content-type": "application/octet-stream"}, t))
        except errors.StorefsError as e:
            log.warning("%s: cannot tell whether it keeps '\\' in names (%s); they are allowed", self.endpoint, e)
            return
        found: list[str] = []
        try:
            page = self.retry.run(self.retry.check, self._requests.what(stem),
                                  lambda t: self._requests.list_page(stem, t, max_keys=limits.PROBE_KEYS))
            found = [o.key for o in page.objects]
            self.backslash_kept = written in found
        except errors.StorefsError as e:
            log.warning("%s: cannot tell whether it keeps '\\' in names (%s); they are allowed", self.endpoint, e)
        altered = [] if self.backslash_kept else [*found, stem + "/"]  # and the folder a '/' made, if any
        for full in dict.fromkeys([written, *altered]):
            try:
                self.retry.run(self.retry.check, self._requests.what(full), partial(self._requests.delete, full))
            except errors.StorefsError as e:
                log.warning("%s: the name probe %s is left behind (%s)", self.endpoint, full, e)
        if not self.backslash_kept:
            log.info("%s stores '\\' in keys as '/': names with '\\' are refused (EINVAL)", self.endpoint)
