"""S3 and S3-compatible stores (AWS, MinIO, SeaweedFS, R2, ...) as a storefs Provider.

Every request but a multipart transfer goes by requests.py (one attempt each), under the
retry policy of retry.py; boto3 (boto.py) does multipart uploads and copies, presigned URLs
and the credential chain. Every failure is a storefs error from errors.py's one table.

Conditions (if_absent, if_match) go to the server as If-None-Match: * / If-Match on the PUT
(on CompleteMultipartUpload for a multipart one), x-amz-copy-source-if-match on a copy and
If-Match on a DELETE, once check(writable=True) has seen the server refuse a second
If-None-Match PUT of a probe object (atomic_conditions). Until then, or where the server
ignores them, each conditional request is preceded by a HEAD whose ETag is compared here:
another writer's change between that HEAD and the request is not caught (a window of one
round trip).
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import re
import secrets
import socket
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any, TypeVar
from urllib.parse import quote

from ... import errors
from ..base import ObjectInfo, ObjectMeta, Provider, write_all
from . import codec, limits
from .boto import Boto
from .errors import FORBIDDEN, NOT_FOUND, NOT_FOUND_CODES
from .http import SinkFailed, Timeouts
from .listing import ListPage
from .requests import DELETE_BATCH, Payload, S3Requests, conditions, payload_of, quoted, upload_headers
from .retry import RetryPolicy

log = logging.getLogger(__name__)

T = TypeVar("T")

COPY_LIMIT = 5 * 1024 ** 3  # CopyObject's ceiling; bigger objects need a multipart copy
#: a streamed read fetches ranges of at least this size (fewer requests than one per caller's piece)
STREAM_RANGE = 8 << 20
#: keys per listing page (S3's maximum)
PAGE_KEYS = 1000
#: HEADs sent back to back on one connection by head_many
PIPELINE_HEADS = 32
MOVED_PERMANENTLY = 301
BAD_REQUEST = 400
#: the name of the object check() writes to learn whether the server honours conditions (under the prefix)
PROBE_PREFIX = ".storefs-probe-"
PROBE_BODY = b"storefs probe\n"
_UNSAFE_HOST = re.compile(r"[^A-Za-z0-9._-]")


def _md5_of(path: str) -> str | None:
    """The hex MD5 of a file (a single PUT's ETag), or None when it cannot be read."""
    h = hashlib.md5(usedforsecurity=False)
    try:
        with open(path, "rb") as f:
            while block := f.read(1 << 20):
                h.update(block)
    except OSError:
        return None
    return h.hexdigest()


class S3Provider(Provider):
    """One bucket (and optional key prefix) of an S3-compatible store."""

    kind = "s3"
    listing_has_metadata = False
    lookup_by_listing = True
    heads_at_once = PIPELINE_HEADS

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
                                    self._boto.frozen_credentials, upload_headers(cfg))
        #: whether the server enforces conditions itself: learnt by check(writable=True), HEAD-compared until then
        self.atomic_conditions = False

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

    def probe(self) -> None:
        """One HEAD of the bucket, one attempt: any answer means the server is back (ProviderUnavailable if none)."""
        self.retry.run(self.retry.probe, f"bucket {self.bucket}", self._requests.head_bucket)

    # -- Provider -------------------------------------------------------------------------
    def check(self, *, writable: bool = False) -> None:
        """HEAD of the bucket with short timeouts, so a mount with a dead endpoint fails in seconds; on a
        writable mount, also learn whether the server honours conditional writes (a probe object)."""
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
        if writable:  # probes write (and remove) an object: never on a read-only mount
            self._probe_conditions()
            self._probe_names()

    def _probe_conditions(self) -> None:
        """PUT a probe object with If-None-Match: *, PUT it again the same way (a server that honours the
        condition answers 412), DELETE it: sets atomic_conditions. A failure never stops the mount: the
        conditions are then HEAD-compared."""
        host = _UNSAFE_HOST.sub("_", socket.gethostname().split(".")[0])[:64] or "host"
        full = self._key(f"{PROBE_PREFIX}{host}-{os.getpid()}-{secrets.token_hex(6)}")
        what = self._requests.what(full)

        def put(timeouts: Timeouts) -> str | None:
            return self._requests.put(full, Payload(PROBE_BODY, hashlib.sha256(PROBE_BODY).hexdigest()),
                                      len(PROBE_BODY), {**conditions(if_absent=True),
                                                        "content-type": "application/octet-stream"}, timeouts)

        honoured, why = False, "the server stored a second If-None-Match: * PUT over the first"
        try:
            self.retry.run(self.retry.check, what, put)
            try:
                self.retry.run(self.retry.check, what, put)
            except errors.Conflict:
                honoured, why = True, "If-None-Match: * answered 412"
        except errors.StorefsError as e:
            why = f"the probe failed: {e}"
        finally:
            try:
                self.retry.run(self.retry.check, what, lambda t: self._requests.delete(full, t))
            except errors.StorefsError as e:
                log.warning("%s: removing the conditions probe failed (%s); delete it by hand", what, e)
        self.atomic_conditions = honoured
        if honoured:
            log.info("bucket %s at %s honours conditional writes (%s): storefs relies on them",
                     self.bucket, self.endpoint, why)
        else:
            log.info("bucket %s at %s: conditional writes not confirmed (%s); each conditional write is "
                     "checked by a HEAD just before it instead (a short race window)", self.bucket, self.endpoint, why)

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

    def head_many(self, keys: Sequence[str]) -> Iterator[tuple[str, ObjectInfo | errors.StorefsError]]:
        """HEADs pipelined PIPELINE_HEADS at a time on one connection (a big folder's `ls -l` asks for every
        name); an answer that is neither found nor absent, and every name a batch did not answer, is asked
        for by head() with its retries and error table."""
        for start in range(0, len(keys), PIPELINE_HEADS):
            batch = keys[start:start + PIPELINE_HEADS]
            fulls = [self._key(k) for k in batch if k and not k.endswith("/")]
            answers = self._requests.heads(fulls, self.retry.lookup.timeouts) if len(fulls) == len(batch) else []
            for key, answer in zip(batch, answers, strict=False):
                if answer.status == NOT_FOUND:
                    yield key, errors.NotFound(self._what(key))
                    continue
                if 200 <= answer.status < 300:
                    try:
                        yield key, codec.info_from_headers(key, answer.headers)
                        continue
                    except ValueError:
                        pass  # asked again below, where the error is reported
                yield key, self._one_head(key)
            for key in batch[len(answers):]:
                yield key, self._one_head(key)

    def _one_head(self, key: str) -> ObjectInfo | errors.StorefsError:
        """head(key), or the error that is this key's alone (an unavailable provider is raised)."""
        try:
            return self.head(key)
        except errors.ProviderUnavailable:
            raise
        except errors.StorefsError as e:
            return e

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
        seen: set[str] = set()
        for page in self._pages(full, "/", lookup=True):
            for p in page.prefixes:
                key = self._strip(p)
                if key not in seen:
                    seen.add(key)
                    yield ObjectInfo(key=key, size=0, mtime_ns=0, is_dir=True)
            for obj in page.objects:
                if obj.key == full:
                    continue  # the marker of prefix itself
                key = self._strip(obj.key)
                if key.endswith("/") and not obj.size:
                    if key not in seen:
                        seen.add(key)
                        yield ObjectInfo(key=key, size=0, mtime_ns=obj.modified_ns, is_dir=True)
                    continue
                yield ObjectInfo(key=key, size=obj.size, mtime_ns=obj.modified_ns, etag=obj.etag)

    def _pages(self, full: str, delimiter: str | None, lookup: bool) -> Iterator[ListPage]:
        """The listing pages of full, each next one asked for while the caller reads the one before (a big
        folder's listing then waits on the server or on the caller, not on both in turn)."""
        page = self._page(full, None, delimiter, lookup)
        if page.next_token is None:
            yield page
            return
        ahead = ThreadPoolExecutor(1, thread_name_prefix="storefs-list-ahead")
        try:
            while page.next_token is not None:
                following = ahead.submit(self._page, full, page.next_token, delimiter, lookup)
                yield page
                page = following.result()
            yield page
        finally:  # a caller that stops early does not wait for the page under way
            ahead.shutdown(wait=False, cancel_futures=True)

    def walk(self, prefix: str) -> Iterator[ObjectInfo]:
        """One flat ListObjectsV2 (no delimiter), 1000 keys a page: a whole tree in len/1000 requests.

        Folders are the marker objects ('a/b/', empty); sizes and LastModified come from the
        listing, so mtime here is the upload time, not the x-amz-meta-mtime a head returns.
        """
        if prefix and not prefix.endswith("/"):
            prefix += "/"
        full = self._key(prefix)
        for page in self._pages(full, None, lookup=False):
            for obj in page.objects:
                if obj.key == full:
                    continue  # the marker of prefix itself
                key = self._strip(obj.key)
                if key.endswith("/"):
                    yield ObjectInfo(key=key, size=0, mtime_ns=obj.modified_ns, is_dir=True)
                else:
                    yield ObjectInfo(key=key, size=obj.size, mtime_ns=obj.modified_ns, etag=obj.etag)

    def _get(self, key: str, offset: int, length: int, if_match: str | None = None) -> tuple[bytes, dict[str, str]]:
        full = self._key(key)
        return self.retry.run(self.retry.read, self._what(key),
                              lambda t: self._requests.get(full, offset, length, t, if_match))

    def get_range(self, key: str, offset: int, length: int) -> bytes:
        """Ranged GET, bounded by read_deadline; a range at or past the end reads as b""."""
        if length <= 0:
            return b""
        return self._get(key, offset, length)[0]

    def get_range_into(self, key: str, offset: int, length: int, fd: int) -> int:
        """Ranged GET written into fd at offset as it arrives, in pieces of one buffer per thread: a 16 MiB
        read-ahead run holds 1 MiB of memory, not 16, and no fresh 16 MiB buffer is filled per GET (README,
        "Reads"). A retry writes the range again from its start."""
        if length <= 0:
            return 0
        full = self._key(key)

        def attempt(timeouts: Timeouts) -> int:
            at = offset

            def sink(piece: memoryview) -> None:
                nonlocal at
                write_all(fd, piece, at)
                at += len(piece)
            self._requests.get(full, offset, length, timeouts, sink=sink)
            return at - offset
        try:
            return self.retry.run(self.retry.read, self._what(key), attempt)
        except SinkFailed as e:  # the cache file's own error (a full disk), as a plain pwrite raises it
            raise e.__cause__ from None  # type: ignore[misc]

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

    def put_file(self, key: str, src_path: str, meta: ObjectMeta, *, if_match: str | None = None,
                 if_absent: bool = False) -> ObjectInfo:
        """One PUT below the multipart threshold (the transfer manager's threads cost more than a small file's
        upload); above it, parts in parallel. The condition rides on the PUT or on the multipart completion
        (atomic_conditions), or is HEAD-compared just before; a multipart one is HEAD-compared as well (a HEAD
        costs little beside it, and moto, for one, ignores If-Match on the completion)."""
        full, what = self._key(key), self._what(key)
        try:
            with open(src_path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                small = size < int(self.cfg.multipart_threshold)
                self._expect(key, if_match, if_absent, always=not small)
                if not self.atomic_conditions:
                    if_match, if_absent = None, False  # compared above; a server that ignores them gets none
                if small:
                    headers = {**codec.headers_for(meta), **conditions(if_match, if_absent)}
                    etag = self._put(full, payload_of(f, size), size, headers, src_path)
                    return codec.info_from_meta(key, size, etag, meta)
        except OSError as e:
            raise errors.ProviderError(f"{what}: cannot read the cache file: {e.strerror or e}") from e
        try:
            etag = self._boto.upload_multipart(src_path, full, {"ContentType": meta.content_type,
                                                                "Metadata": codec.metadata_for(meta)},
                                               what, if_match=if_match, if_absent=if_absent,
                                               opened=partial(self.uploads.started, key),
                                               ended=partial(self.uploads.ended, key))
        except errors.Conflict:
            self._conflict_or_gone(key, if_match)
            raise
        return codec.info_from_meta(key, size, etag, meta)

    def _expect(self, key: str, if_match: str | None, if_absent: bool, always: bool = False) -> None:
        """Without atomic conditions (or always): a HEAD just before the write, compared here (Conflict, NotFound)."""
        if (self.atomic_conditions and not always) or (if_match is None and not if_absent):
            return
        try:
            etag = self._head_info(key)[0].etag
        except errors.NotFound:
            if if_match is not None:
                raise
            return
        if if_absent:
            raise errors.Conflict(f"{self._what(key)}: another writer stored it first")
        self._same_version(key, etag, if_match)

    def _same_version(self, key: str, etag: str | None, if_match: str | None) -> None:
        """Conflict unless the etag seen at key is the one if_match names (None: no condition)."""
        if if_match is not None and etag != codec.strip_etag(if_match):
            raise errors.Conflict(f"{self._what(key)}: changed by another writer (etag {etag}, "
                                  f"expected {codec.strip_etag(if_match)})")

    def _conflict_or_gone(self, key: str, if_match: str | None) -> None:
        """After a failed If-Match: NotFound when the key is gone (as the contract says), else nothing."""
        if if_match is not None:
            self._head_info(key)  # raises NotFound when no object is there

    def _write(self, what: str, attempt: Callable[[Timeouts], T]) -> T:
        """attempt under the write class's retries; busy answers to the last try end as a ProviderError:
        the server answered, so it is reachable (the uploader retries later, the provider is not down)."""
        try:
            return self.retry.run(self.retry.write, what, attempt)
        except errors.ProviderUnavailable as e:
            if isinstance(e, errors.ProviderBusy) or isinstance(e.__cause__, errors.ProviderBusy):
                raise errors.ProviderError(str(e)) from e
            raise

    def _put(self, full: str, payload: Payload, size: int, headers: dict[str, str],
             src_path: str | None = None) -> str | None:
        """One PUT (the write class's retries); its ETag. A conditional PUT retried after an attempt that got no
        answer may meet its own first attempt: a 412 for an object holding exactly these bytes is a success."""
        tries = 0

        def attempt(timeouts: Timeouts) -> str | None:
            nonlocal tries
            tries += 1
            return self._requests.put(full, payload, size, headers, timeouts)

        try:
            return self._write(self._requests.what(full), attempt)
        except errors.Conflict:
            key = self._strip(full)
            if "if-match" in headers:
                self._conflict_or_gone(key, headers["if-match"])
            if tries > 1 and src_path is not None:
                etag = self._head_info(key)[0].etag
                if etag is not None and etag == _md5_of(src_path):
                    return etag
            raise

    def set_meta(self, key: str, meta: ObjectMeta) -> ObjectInfo:
        return self.copy(key, key, meta)

    def copy(self, src: str, dst: str, meta: ObjectMeta | None = None, *, if_match: str | None = None) -> ObjectInfo:
        """Server-side copy; metadata kept or replaced; multipart copy above 5 GiB. if_match: the source's ETag
        is compared with the HEAD this makes anyway, and sent as x-amz-copy-source-if-match (atomic_conditions)."""
        info, headers = self._head_info(src)
        self._same_version(src, info.etag, if_match)
        sent_match = if_match if self.atomic_conditions else None
        src_full, dst_full, what = self._key(src), self._key(dst), self._what(dst)
        if info.size > self.copy_limit:
            if meta is not None:
                content_type, metadata = meta.content_type, codec.metadata_for(meta)
            else:  # a multipart copy does not carry metadata over by itself
                content_type = info.content_type or "application/octet-stream"
                metadata = codec.user_metadata(headers)
            extra = {"MetadataDirective": "REPLACE", "ContentType": content_type, "Metadata": metadata}
            if sent_match is not None:
                extra["CopySourceIfMatch"] = quoted(sent_match)
            self._boto.copy_multipart(src_full, dst_full, extra, what)
            etag = self._head_headers(dst_full).get("etag")
        else:
            replaced = None if meta is None else codec.headers_for(meta)
            etag = self._write(what, lambda t: self._requests.copy(src_full, dst_full, replaced, t, sent_match))
        if meta is not None:
            return codec.info_from_meta(dst, info.size, etag, meta)
        info.key, info.etag = dst, codec.strip_etag(etag) or info.etag
        return info

    def delete(self, key: str, *, if_match: str | None = None) -> None:
        """DELETE; already gone is fine. if_match: If-Match sent (atomic_conditions) or HEAD-compared first;
        Conflict, and nothing removed, when another version is there."""
        full, what = self._key(key), self._what(key)
        if if_match is not None and not self.atomic_conditions:
            try:
                self._expect(key, if_match, False)
            except errors.NotFound:
                return
            if_match = None
        try:
            self._write(what, lambda t: self._requests.delete(full, t, if_match))
        except errors.Conflict:
            try:
                self._head_info(key)
            except errors.NotFound:
                return  # some servers answer 412 for a key that is gone: nothing left to keep
            raise

    def abort_upload(self, key: str, upload_id: str) -> None:
        """AbortMultipartUpload of an upload put_file opened at key; NoSuchUpload (completed or aborted) is done."""
        self._boto.abort(self._key(key), upload_id, self._what(key))

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
        return self._write(self._requests.what(fulls[0]), lambda t: self._requests.delete_batch(fulls, t))

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
        self._put(self._key(marker), payload_of(io.BytesIO(b""), 0), 0, headers)  # no condition: idempotent

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
