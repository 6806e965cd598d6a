"""The S3 requests storefs makes most (HEAD, ranged GET, small PUT, LIST page, COPY, DELETE), one attempt each.

boto3 spends about 1.4 ms of CPU on a put_object and 3.6 ms on a 40-key list_objects_v2 in
its request pipeline (parameter validation, endpoint rules evaluated afresh for every key,
a dozen event hooks, a generic XML parser), under the interpreter lock the FUSE threads need
too. Here the same requests are built on the URLs boto3 resolves (path or virtual-host style),
signed by sign.py with boto3's credentials and sent on http.py's kept-alive connections: a
64 KiB PUT costs about 0.4 ms of CPU instead of 1.1. Every answer that is not the success
asked for, and every request that gets no whole answer, is raised as a storefs error through
the error table; that fails this request and nothing else. Retries are the caller's (retry.py).
"""

from __future__ import annotations

import base64
import hashlib
import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, BinaryIO, NamedTuple, TypeVar
from urllib.parse import quote

from ... import __version__, errors
from . import listing
from .errors import ErrorTable, error_code
from .http import Answer, BadAnswer, Connections, Sink, Timeouts, TransportError
from .retry import parse_retry_after
from .sign import EMPTY_SHA256, SigV4, query_string

log = logging.getLogger(__name__)

T = TypeVar("T")

USER_AGENT = f"storefs/{__version__}"
SMALL_BODY = 1 << 20  # bodies up to this size are read into memory before signing
_HASH_BLOCK = 1 << 20
RANGE_NOT_SATISFIABLE = 416
PARTIAL_CONTENT = 206
NOT_FOUND = 404
#: most keys one DeleteObjects request takes
DELETE_BATCH = 1000


@dataclass(frozen=True)
class Endpoint:
    """Where the bucket's requests go: origin, Host header, the path of object URLs (up to the key) and of
    the bucket's own URL, the TLS verification (as botocore takes it) and an HTTP proxy if one applies."""

    origin: str
    host: str
    objects: str
    listing: str
    verify: bool | str = True
    proxy: str | None = None


class Payload(NamedTuple):
    """A request body and its SHA-256: bytes, or a file sent from its position `start`."""

    body: bytes | BinaryIO
    sha256: str
    start: int = 0


def payload_of(f: BinaryIO, size: int) -> Payload:
    """The body of a PUT of size bytes from f: small ones as bytes (hashed and sent in one piece), others
    hashed in blocks and then sent from the file; ProviderError when f does not hold size bytes."""
    if size <= SMALL_BODY:
        data = f.read()
        got, payload = len(data), Payload(data, hashlib.sha256(data).hexdigest())
    else:
        start, sha, got = f.tell(), hashlib.sha256(), 0
        for block in iter(lambda: f.read(_HASH_BLOCK), b""):
            sha.update(block)
            got += len(block)
        payload = Payload(f, sha.hexdigest(), start)
    if got != size:
        raise errors.ProviderError(f"the cache file changed size while uploading ({got} != {size} bytes)")
    return payload


#: provider settings every upload carries: config key -> (the header of a PUT or copy, the boto3 parameter of a
#: multipart create or copy); a copy (a rename, a chmod) that left them out would get the bucket's defaults
UPLOAD_OPTIONS = {
    "sse": ("x-amz-server-side-encryption", "ServerSideEncryption"),
    "kms_key_id": ("x-amz-server-side-encryption-aws-kms-key-id", "SSEKMSKeyId"),
    "storage_class": ("x-amz-storage-class", "StorageClass"),
}


def _upload_options(cfg: Any, form: int) -> dict[str, str]:
    return {names[form]: str(getattr(cfg, key)) for key, names in UPLOAD_OPTIONS.items() if getattr(cfg, key, None)}


def upload_headers(cfg: Any) -> dict[str, str]:
    """The headers of the upload options an S3 provider's config sets (sse, kms_key_id, storage_class)."""
    return _upload_options(cfg, 0)


def upload_params(cfg: Any) -> dict[str, str]:
    """The same options as boto3's parameters, for the uploads and copies boto3 makes."""
    return _upload_options(cfg, 1)


def quoted(etag: str) -> str:
    """An ETag as the conditional headers take it (in double quotes), whether or not it came with them."""
    return f'"{etag.strip(chr(34))}"'


def conditions(if_match: str | None = None, if_absent: bool = False) -> dict[str, str]:
    """The headers of a conditional PUT: If-None-Match: * (store only if no object is at the key), or
    If-Match: "etag" (only if the object there is that version); none for an unconditional one."""
    if if_absent:
        return {"if-none-match": "*"}
    if if_match is not None:
        return {"if-match": quoted(if_match)}
    return {}


class S3Requests:
    """Single attempts of the hot requests on one bucket; safe to share between threads."""

    def __init__(self, bucket: str, region: str, table: ErrorTable, endpoint: Callable[[], Endpoint],
                 credentials: Callable[[], Any], upload: Mapping[str, str] | None = None) -> None:
        """endpoint: resolves the URLs (called once, at the first request); credentials: frozen credentials
        (access_key, secret_key, token) for this request, refreshed by their source when they expire, or None;
        upload: headers every PUT and copy carries (upload_headers())."""
        self.bucket = bucket
        self._upload = dict(upload or {})
        self._table = table
        self._resolve_endpoint = endpoint
        self._credentials = credentials
        self._signer = SigV4(region)
        self._endpoint: Endpoint | None = None
        self._http: Connections | None = None
        self._lock = threading.Lock()  # protects _endpoint and _http while the first requests race to make them

    def what(self, full: str) -> str:
        """An object's name in messages."""
        return f"s3://{self.bucket}/{full}"

    def _connections(self) -> tuple[Endpoint, Connections]:
        if self._endpoint is None or self._http is None:
            with self._lock:
                if self._endpoint is None or self._http is None:
                    endpoint = self._resolve_endpoint()
                    try:
                        self._http = Connections(endpoint.origin, endpoint.verify, endpoint.proxy)
                    except ValueError as e:  # an endpoint or proxy URL it cannot use
                        raise errors.ProviderError(f"bucket {self.bucket}: {e}") from e
                    self._endpoint = endpoint
        return self._endpoint, self._http

    def _send(self, method: str, path: str, query: str, headers: dict[str, str], timeouts: Timeouts, what: str,
              payload: Payload | None = None, limit: int | None = None, sink: Sink | None = None) -> Answer:
        """Sign and send; the answer, whatever its status; storefs errors when none came or cannot be signed."""
        creds = self._credentials()
        if creds is None:
            raise self._table.no_credentials("none in the config or boto3's credential chain")
        endpoint, http = self._connections()
        headers["host"] = endpoint.host
        headers["user-agent"] = USER_AGENT
        self._signer.sign(method, path, query, headers, payload.sha256 if payload else EMPTY_SHA256, creds)
        body = None
        if payload is not None:
            body = payload.body
            if not isinstance(body, bytes):
                body.seek(payload.start)
        try:
            return http.request(method, f"{path}?{query}" if query else path, headers, timeouts, body, limit, sink)
        except TransportError as e:
            raise self._table.unreachable(what, e) from e
        except BadAnswer as e:  # a malformed or oversized answer fails this request alone
            raise self._table.odd(what, str(e)) from e

    def _object(self, full: str) -> str:
        endpoint, _ = self._connections()
        return endpoint.objects + quote(full, safe="/~")

    def _fail(self, what: str, answer: Answer) -> errors.StorefsError:
        return self._table.body(what, answer.status, answer.body,
                                retry_after=parse_retry_after(answer.headers.get("retry-after")))

    def _parsed(self, what: str, answer: Answer, parse: Callable[[bytes], T]) -> T:
        """parse(body) of a 2xx answer; the table's error for any other, an odd-answer error for an unreadable one."""
        if not 200 <= answer.status < 300:
            raise self._fail(what, answer)
        try:
            return parse(answer.body)
        except ValueError as e:
            raise self._table.odd(what, str(e)) from e

    def head(self, full: str, timeouts: Timeouts) -> dict[str, str]:
        """The headers of a HEAD of full (lower-case names); NotFound, AccessDenied, ... as the table says."""
        what = self.what(full)
        answer = self._send("HEAD", self._object(full), "", {}, timeouts, what)
        if not 200 <= answer.status < 300:
            raise self._fail(what, answer)  # a HEAD's answer has no body: the status says it
        return answer.headers

    def heads(self, fulls: Sequence[str], timeouts: Timeouts) -> list[Answer]:
        """HEADs of fulls pipelined on one connection: the answers to the first of them, in order, whatever
        their status (fewer than asked, even none, when the connection ended: the caller asks for the rest)."""
        creds = self._credentials()
        if creds is None:
            raise self._table.no_credentials("none in the config or boto3's credential chain")
        endpoint, http = self._connections()
        requests = []
        for full in fulls:
            path = endpoint.objects + quote(full, safe="/~")
            headers = {"host": endpoint.host, "user-agent": USER_AGENT}
            self._signer.sign("HEAD", path, "", headers, EMPTY_SHA256, creds)
            requests.append((path, headers))
        try:
            return http.pipelined_heads(requests, timeouts)
        except TransportError as e:  # no connection: the caller's one-by-one HEADs say why
            log.debug("bucket %s: no connection for pipelined HEADs (%s)", self.bucket, e)
            return []

    def get(self, full: str, offset: int, length: int, timeouts: Timeouts,
            if_match: str | None = None, sink: Sink | None = None) -> tuple[bytes, dict[str, str]]:
        """Bytes [offset, offset+length) of full (fewer at its end, b"" past it) and the answer's headers; with
        sink, the bytes go to it piece by piece instead (the body returned is then b"")."""
        what = self.what(full)
        headers = {"range": f"bytes={offset}-{offset + length - 1}"}
        if if_match:
            headers["if-match"] = quoted(if_match)
        answer = self._send("GET", self._object(full), "", headers, timeouts, what, limit=length, sink=sink)
        if answer.status == RANGE_NOT_SATISFIABLE:  # InvalidRange: the object ends before offset
            return b"", answer.headers
        if not 200 <= answer.status < 300:
            raise self._fail(what, answer)
        if answer.status != PARTIAL_CONTENT and offset > 0:
            raise self._table.odd(what, f"HTTP {answer.status} to a ranged GET (the server ignored Range)")
        return answer.body, answer.headers

    def put(self, full: str, payload: Payload, size: int, headers: dict[str, str], timeouts: Timeouts) -> str | None:
        """PUT payload as full with headers (content-type, x-amz-meta-*, conditions()) and return its ETag."""
        what = self.what(full)
        answer = self._send("PUT", self._object(full), "", {**headers, **self._upload, "content-length": str(size)},
                            timeouts, what, payload)
        if not 200 <= answer.status < 300:
            raise self._fail(what, answer)
        return answer.headers.get("etag")

    def copy(self, src_full: str, dst_full: str, headers: dict[str, str] | None, timeouts: Timeouts,
             if_match: str | None = None) -> str | None:
        """CopyObject of src_full to dst_full: metadata kept (headers None) or replaced by headers; the new ETag.
        if_match: only while the source is that version (x-amz-copy-source-if-match; else Conflict)."""
        what = self.what(dst_full)
        sent = {"x-amz-copy-source": quote(f"{self.bucket}/{src_full}", safe="/~"), "content-length": "0"}
        if if_match is not None:
            sent["x-amz-copy-source-if-match"] = quoted(if_match)
        if headers is None:
            sent["x-amz-metadata-directive"] = "COPY"
        else:
            sent.update(headers)
            sent["x-amz-metadata-directive"] = "REPLACE"
        sent.update(self._upload)  # not metadata: a copy without them gets the bucket's defaults
        answer = self._send("PUT", self._object(dst_full), "", sent, timeouts, what, Payload(b"", EMPTY_SHA256))
        code, message = error_code(answer.body)
        if not 200 <= answer.status < 300 or code:  # a copy can fail after its 200 has been sent
            raise self._table.answer(what, answer.status, code, message)
        found = listing.copy_etag(answer.body)
        if found is None:
            raise self._table.odd(what, "a copy's answer without an ETag")
        return found

    def delete(self, full: str, timeouts: Timeouts, if_match: str | None = None) -> None:
        """DELETE full; a key already gone is not an error; if_match: only that version (else Conflict)."""
        what = self.what(full)
        headers = {} if if_match is None else {"if-match": quoted(if_match)}
        answer = self._send("DELETE", self._object(full), "", headers, timeouts, what)
        if not 200 <= answer.status < 300 and answer.status != NOT_FOUND:
            error = self._fail(what, answer)
            if not isinstance(error, errors.NotFound):
                raise error

    def delete_batch(self, fulls: Sequence[str], timeouts: Timeouts) -> list[tuple[str, str]]:
        """DeleteObjects for up to DELETE_BATCH full keys; (key, code) of those not deleted."""
        what = self.what(fulls[0]) if fulls else f"s3://{self.bucket}"
        body = listing.delete_request(fulls)
        md5 = base64.b64encode(hashlib.md5(body).digest()).decode()
        endpoint, _ = self._connections()
        headers = {"content-type": "application/xml", "content-length": str(len(body)), "content-md5": md5}
        answer = self._send("POST", endpoint.listing, query_string({"delete": ""}), headers, timeouts, what,
                            Payload(body, hashlib.sha256(body).hexdigest()))
        return self._parsed(what, answer, listing.parse_delete_result)

    def list_page(self, prefix_full: str, timeouts: Timeouts, delimiter: str | None = None,
                  token: str | None = None, max_keys: int = 1000) -> listing.ListPage:
        """One ListObjectsV2 page of the keys under prefix_full (names URL-encoded on the way, decoded here)."""
        what = self.what(prefix_full)
        params = {"list-type": "2", "encoding-type": "url", "prefix": prefix_full, "max-keys": str(max_keys)}
        if delimiter:
            params["delimiter"] = delimiter
        if token:
            params["continuation-token"] = token
        endpoint, _ = self._connections()
        answer = self._send("GET", endpoint.listing, query_string(params), {}, timeouts, what)
        return self._parsed(what, answer, listing.parse_list_page)

    def head_bucket(self, timeouts: Timeouts) -> Answer:
        """HEAD of the bucket, whatever its status: check() tells the operator what each one means."""
        endpoint, _ = self._connections()
        return self._send("HEAD", endpoint.listing, "", {}, timeouts, f"bucket {self.bucket}")

    def close(self) -> None:
        with self._lock:
            http, self._http = self._http, None
            self._endpoint = None
        if http is not None:
            http.close()
