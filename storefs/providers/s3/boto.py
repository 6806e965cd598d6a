"""boto3 for what only it does here: the credential chain, the URLs of the bucket, multipart transfers, presigning.

A multipart upload is made here with the client's create/upload_part/complete calls (parts in
parallel), not with boto3's transfer manager, so that its condition (If-None-Match / If-Match)
rides on CompleteMultipartUpload; a multipart copy (above 5 GiB) still uses the transfer manager.

Only public boto3/botocore API: the session's credentials (refreshable ones refresh themselves
in get_frozen_credentials), presigned URLs to learn the addressing style boto3 resolves, the
client's transfer methods. Failures become storefs errors through the same error table as the
hot requests.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlsplit

import boto3
import botocore.session
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
from botocore.httpsession import get_cert_path
from botocore.utils import get_environ_proxies
from s3transfer.utils import ReadFileChunk

from ... import errors
from .errors import ErrorTable
from .requests import Endpoint, quoted, upload_params
from .retry import RetryPolicy

log = logging.getLogger(__name__)

#: a key only used to read the shape of object URLs off a presigned URL (no request is made)
_PROBE = "storefs-probe-key"
#: connections boto3's client keeps for the parts of multipart transfers
MAX_POOL = 32
#: parts of one multipart transfer in flight at once
TRANSFER_THREADS = 8
#: lifetime of the presigned URLs read for their shape
_PROBE_EXPIRY = 60
TRANSIENT = (BotoConnectionError, HTTPClientError, IncompleteReadError)


def _drop_expect_header(request: Any, **_: Any) -> None:
    """Send no `Expect: 100-continue`: an early answer to one poisons the pooled connection (botocore#3755)."""
    # SeaweedFS answers every empty PUT at once; botocore then parses the next response on that connection
    # against the stale status line and stalls for read_timeout. The header is not signed: safe to drop.
    if "Expect" in request.headers:
        del request.headers["Expect"]


def _unnoted(upload_id: str) -> None:
    """Where nobody keeps track of open multipart uploads."""


def multipart_etag(parts: list[Any]) -> str:
    """The ETag S3 gives the object these parts complete to: MD5 of the parts' binary MD5s, dash, their count."""
    digests = b"".join(bytes.fromhex(str(p["ETag"]).strip('"')) for p in parts)
    return f"{hashlib.md5(digests, usedforsecurity=False).hexdigest()}-{len(parts)}"


class Boto:
    """One boto3 session and client for one `providers.NAME` section of type s3."""

    def __init__(self, cfg: Any, retry: RetryPolicy) -> None:
        self.cfg = cfg
        self.bucket = cfg.bucket
        self._core = botocore.session.get_session()
        self.session = boto3.session.Session(
            aws_access_key_id=cfg.access_key_id, aws_secret_access_key=cfg.secret_access_key,
            aws_session_token=cfg.session_token, region_name=cfg.region, botocore_session=self._core,
            profile_name=cfg.profile)
        #: sse, kms_key_id and storage_class as boto3 takes them, on every multipart upload and copy
        self.upload_params = upload_params(cfg)
        timeouts = retry.write.timeouts
        retries: Any = retry.botocore_retries()
        config = Config(
            signature_version="s3v4", connect_timeout=timeouts.connect, read_timeout=timeouts.read,
            retries=retries, max_pool_connections=MAX_POOL, tcp_keepalive=True,
            s3={"addressing_style": "path" if cfg.path_style else "auto"},
            # S3-compatible stores (R2, older MinIO, Ceph) reject the newer default trailing checksums
            request_checksum_calculation="when_required", response_checksum_validation="when_required")
        self.client = self.session.client("s3", endpoint_url=cfg.endpoint_url or None, config=config)
        self.client.meta.events.register("before-send.s3", _drop_expect_header)
        self.region: str = self.client.meta.region_name or "us-east-1"
        self.endpoint_url: str = cfg.endpoint_url or self.client.meta.endpoint_url
        self.table = ErrorTable(self.bucket, self.endpoint_url)
        self.transfer = TransferConfig(multipart_threshold=int(cfg.multipart_threshold),
                                       multipart_chunksize=int(cfg.multipart_chunksize),
                                       max_concurrency=TRANSFER_THREADS, use_threads=True)
        self._credentials: Any = None
        self._lock = threading.Lock()  # protects _credentials while the first requests race to resolve the chain

    # -- for the hot requests -----------------------------------------------------------------
    def frozen_credentials(self) -> Any:
        """This moment's credentials (access_key, secret_key, token), refreshed when they expire; None if none."""
        creds = self._credentials
        if creds is None:
            with self._lock:
                if self._credentials is None:
                    try:
                        self._credentials = self.session.get_credentials()
                    except (BotoCoreError, ClientError) as e:
                        raise self.error(e, f"bucket {self.bucket}") from e
                creds = self._credentials
            if creds is None:
                return None
        try:
            return creds.get_frozen_credentials()
        except (BotoCoreError, ClientError) as e:
            raise self.error(e, f"bucket {self.bucket}") from e

    def endpoint(self) -> Endpoint:
        """The URLs of the bucket's objects and listings exactly as boto3 resolves them, and how to reach them."""
        try:
            url = self.client.generate_presigned_url(
                "put_object", Params={"Bucket": self.bucket, "Key": _PROBE}, ExpiresIn=_PROBE_EXPIRY)
            listing = urlsplit(self.client.generate_presigned_url(
                "list_objects_v2", Params={"Bucket": self.bucket}, ExpiresIn=_PROBE_EXPIRY))
        except (BotoCoreError, ClientError) as e:
            raise self.error(e, f"bucket {self.bucket}") from e
        url = url.split("?", 1)[0]
        if not url.endswith("/" + _PROBE):
            raise self.table.odd(f"bucket {self.bucket}", f"unexpected object URL form {url!r}")
        objects = urlsplit(url[: -len(_PROBE)])
        if (objects.scheme, objects.netloc) != (listing.scheme, listing.netloc):
            raise self.table.odd(f"bucket {self.bucket}", f"objects at {objects.netloc}, listings at {listing.netloc}")
        origin = f"{objects.scheme}://{objects.netloc}"
        configured = getattr(self.client.meta.config, "proxies", None) or {}  # Config(proxies=...), untyped
        proxy = configured.get(objects.scheme) or get_environ_proxies(origin).get(objects.scheme)
        ca_bundle = self._core.get_config_variable("ca_bundle")
        return Endpoint(origin=origin, host=objects.netloc, objects=objects.path, listing=listing.path or "/",
                        verify=get_cert_path(ca_bundle or True) or True, proxy=proxy)

    # -- what only boto3 does ----------------------------------------------------------------------
    def upload_multipart(self, src_path: str, full: str, extra: dict[str, Any], what: str, *,
                         if_match: str | None = None, if_absent: bool = False, opened: Callable[[str], None] = _unnoted,
                         ended: Callable[[str], None] = _unnoted) -> str | None:
        """A multipart upload of the file at src_path, parts in parallel, its condition on the completion
        (boto3's transfer manager cannot carry one there); aborted on any failure. The new ETag.

        opened(upload_id) runs before the first part is sent (raising aborts the upload), ended(upload_id)
        once the upload is completed or aborted: what a `kill -9` cuts short in between, the next mount aborts."""
        chunk = int(self.cfg.multipart_chunksize)
        try:
            size = os.path.getsize(src_path)
            upload_id = self.client.create_multipart_upload(Bucket=self.bucket, Key=full,
                                                            **{**extra, **self.upload_params})["UploadId"]
        except (BotoCoreError, ClientError) as e:
            raise self.error(e, what) from e
        except OSError as e:
            raise errors.ProviderError(f"{what}: cannot read the cache file: {e.strerror or e}") from e
        condition: dict[str, Any] = {"IfNoneMatch": "*"} if if_absent else {} if if_match is None else {
            "IfMatch": quoted(if_match)}
        parts: list[Any] = []
        try:
            opened(upload_id)
            numbers = range(1, max(1, -(-size // chunk)) + 1)
            with ThreadPoolExecutor(TRANSFER_THREADS, thread_name_prefix="storefs-part") as pool:
                futures = [pool.submit(self._upload_part, src_path, full, upload_id, n, chunk, size, what)
                           for n in numbers]
                try:
                    parts = [f.result() for f in futures]
                except BaseException:
                    for f in futures:
                        f.cancel()
                    raise
            done = self.client.complete_multipart_upload(Bucket=self.bucket, Key=full, UploadId=upload_id,
                                                         MultipartUpload={"Parts": parts}, **condition)
        except (BotoCoreError, ClientError) as e:
            error = self.error(e, what)
            retried = isinstance(e, ClientError) and e.response.get("ResponseMetadata", {}).get("RetryAttempts")
            if retried and isinstance(error, (errors.Conflict, errors.NotFound)) and self._landed(full, parts):
                ended(upload_id)
                return multipart_etag(parts)  # a retried completion met its own first one, whose answer was lost
            self._abort(full, upload_id, what, ended)
            raise error from e
        except BaseException:
            self._abort(full, upload_id, what, ended)
            raise
        ended(upload_id)
        return done.get("ETag")

    def _landed(self, full: str, parts: list[Any]) -> bool:
        """Whether the object at full is exactly what these parts complete to (its multipart ETag)."""
        if not parts:
            return False
        try:
            etag = self.client.head_object(Bucket=self.bucket, Key=full)["ETag"]
        except (BotoCoreError, ClientError):
            return False
        return str(etag).strip('"') == multipart_etag(parts)

    def _upload_part(self, src_path: str, full: str, upload_id: str, number: int, chunk: int, size: int,
                     what: str) -> Any:
        """Part `number` (from 1) of a multipart upload, read from its own descriptor: {PartNumber, ETag}."""
        offset = (number - 1) * chunk
        want = min(chunk, size - offset)
        try:
            body = ReadFileChunk.from_filename(src_path, offset, want, enable_callbacks=False)
        except OSError as e:
            raise errors.ProviderError(f"{what}: cannot read the cache file: {e.strerror or e}") from e
        with body:
            if len(body) != want:
                raise errors.ProviderError(f"{what}: the cache file changed size while uploading")
            answer = self.client.upload_part(Bucket=self.bucket, Key=full, UploadId=upload_id, PartNumber=number,
                                             Body=body)  # type: ignore[arg-type]  # file-like: read, seek, tell
        return {"PartNumber": number, "ETag": answer["ETag"]}

    def _abort(self, full: str, upload_id: str, what: str, ended: Callable[[str], None]) -> None:
        """Drop a failed multipart upload's parts (the server would keep them, and bill them, otherwise), then
        ended(upload_id); an abort that fails leaves the upload noted as open, for a later abort."""
        try:
            self.abort(full, upload_id, what)
        except errors.StorefsError as e:
            log.warning("%s: aborting the failed multipart upload %s failed (%s): its parts stay stored until it "
                        "is aborted", what, upload_id, e)
            return
        ended(upload_id)

    def abort(self, full: str, upload_id: str, what: str) -> None:
        """AbortMultipartUpload; an upload the server no longer knows (NoSuchUpload) is aborted already."""
        try:
            self.client.abort_multipart_upload(Bucket=self.bucket, Key=full, UploadId=upload_id)
        except (BotoCoreError, ClientError) as e:
            error = self.error(e, what)
            if not isinstance(error, errors.NotFound):
                raise error from e

    def copy_multipart(self, src_full: str, dst_full: str, extra: dict[str, Any], what: str) -> None:
        """A managed multipart copy (objects above CopyObject's 5 GiB); extra may hold CopySourceIfMatch."""
        try:
            self.client.copy({"Bucket": self.bucket, "Key": src_full}, self.bucket, dst_full,
                             Config=self.transfer, ExtraArgs={**extra, **self.upload_params})
        except (BotoCoreError, ClientError) as e:
            raise self.error(e, what) from e

    def presign(self, full: str, expires: int, what: str) -> str:
        """A presigned GET URL (no request is made)."""
        try:
            return str(self.client.generate_presigned_url(
                "get_object", Params={"Bucket": self.bucket, "Key": full}, ExpiresIn=expires))
        except (BotoCoreError, ClientError) as e:
            raise self.error(e, what) from e

    def error(self, exc: BaseException, what: str) -> errors.StorefsError:
        """The storefs error for a boto3/botocore failure, by the same table as the hot requests'."""
        if isinstance(exc, S3UploadFailedError) and isinstance(exc.__context__, (BotoCoreError, ClientError)):
            return self.error(exc.__context__, what)
        if isinstance(exc, ClientError):
            err = exc.response.get("Error", {})
            status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
            return self.table.answer(what, status, str(err.get("Code", "")), str(err.get("Message", "")))
        if isinstance(exc, TRANSIENT):
            return self.table.unreachable(what, exc)
        if isinstance(exc, (NoCredentialsError, PartialCredentialsError)):
            return self.table.no_credentials(type(exc).__name__)
        return errors.ProviderError(f"{what}: {exc}")

    def close(self) -> None:
        try:
            self.client.close()
        except Exception:  # noqa: BLE001 - closing must not fail a shutdown
            log.debug("closing the S3 client failed", exc_info=True)
