"""The hottest S3 requests (a small PUT, a LIST page, a ranged GET) without boto3's per-call pipeline.

boto3 spends about 1.4 ms of CPU on a put_object and 3.6 ms on a 40-key list_objects_v2 in
its request pipeline (parameter validation, endpoint rules evaluated afresh for every key,
a dozen event hooks, a generic XML parser), under the interpreter lock the FUSE threads need
too, and about 1.5 ms on each ranged get_object of a cold read. For many small files that is
the daemon's biggest cost. Here the same requests are
built (URLs as the client resolves them, SigV4 by botocore's signer, sent on the client's
own connection pool) for a fraction of it. The first answer this module does not understand
hands the provider back to boto3 for good.
"""

from __future__ import annotations

import logging
import re
import xml.etree.ElementTree as ET
from datetime import datetime
from typing import Any, BinaryIO
from urllib.parse import quote, unquote_plus

from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.exceptions import ClientError, IncompleteReadError
from urllib3.exceptions import HTTPError

log = logging.getLogger(__name__)

_PROBE = "storefs-probe-key"
_ERROR_CODE = re.compile(rb"<Code>([^<]*)</Code>")
_ERROR_MESSAGE = re.compile(rb"<Message>([^<]*)</Message>")
_NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"
SMALL_BODY = 1 << 20  # bodies up to this size are read into memory before signing


class Refused(Exception):
    """This request is the full client's job: retries (busy) or an answer only it handles (not busy)."""

    def __init__(self, reason: str, busy: bool = False) -> None:
        super().__init__(reason)
        self.busy = busy


class LeanS3:
    """Small PUTs and LIST pages through one boto3 client's endpoint, credentials and connections."""

    def __init__(self, client: Any, session: Any, bucket: str) -> None:
        self._client = client
        self._session = session
        self._bucket = bucket
        self._objects: str | None = None
        self._listing: str | None = None
        self._region = client.meta.region_name or "us-east-1"
        self._http = client._endpoint.http_session  # the client's pool: same TLS, proxies, timeouts

    def _object_base(self) -> str:
        """The object URL prefix exactly as the client resolves it (path or virtual-host style)."""
        if self._objects is None:
            url = self._client.generate_presigned_url(
                "put_object", Params={"Bucket": self._bucket, "Key": _PROBE}, ExpiresIn=60)
            path = url.split("?", 1)[0]
            if not path.endswith("/" + _PROBE):
                raise Refused(f"unexpected object URL form {path!r}")
            self._objects = path[: -len(_PROBE)]
        return self._objects

    def _bucket_url(self) -> str:
        if self._listing is None:
            url = self._client.generate_presigned_url("list_objects_v2", Params={"Bucket": self._bucket},
                                                      ExpiresIn=60)
            self._listing = url.split("?", 1)[0]
        return self._listing

    def _send(self, request: AWSRequest, operation: str, accept: tuple[int, ...] = ()) -> Any:
        """Sign and send; the response when 2xx (or in accept), else Refused or the ClientError boto3 would raise."""
        creds = self._session.get_credentials()
        if creds is None:
            raise Refused("no credentials (anonymous access)")
        S3SigV4Auth(creds.get_frozen_credentials(), "s3", self._region).add_auth(request)
        response = self._http.send(request.prepare())
        status = response.status_code
        if 200 <= status < 300 or status in accept:
            return response
        content = response.content or b""
        code = _ERROR_CODE.search(content)
        reason = f"HTTP {status} {code.group(1).decode(errors='replace') if code else ''}".rstrip()
        if status >= 500 or status == 429:
            raise Refused(reason, busy=True)  # the client retries with its backoff
        if status not in (403, 404) or code is None:  # region redirects, odd servers
            raise Refused(reason)
        message = _ERROR_MESSAGE.search(content)
        raise ClientError({"Error": {"Code": code.group(1).decode(errors="replace"),
                                     "Message": message.group(1).decode(errors="replace") if message else ""},
                           "ResponseMetadata": {"HTTPStatusCode": status}}, operation)

    def put(self, full_key: str, body: BinaryIO, size: int, content_type: str,
            metadata: dict[str, str]) -> str | None:
        """PUT body as full_key and return its ETag; ClientError when access is denied or the bucket is missing."""
        headers = {"Content-Type": content_type, "Content-Length": str(size)}
        for name, value in metadata.items():
            headers["x-amz-meta-" + name] = value
        # a small body goes as bytes: hashed for the signature and sent in one piece, not read
        # through a file object twice in Python loops
        data: BinaryIO | bytes = body.read() if size <= SMALL_BODY else body
        if isinstance(data, bytes) and len(data) != size:
            raise Refused(f"cache file changed size while uploading ({len(data)} != {size})", busy=True)
        request = AWSRequest(method="PUT", url=self._object_base() + quote(full_key, safe="/~"),
                             headers=headers, data=data)
        return self._send(request, "PutObject").headers.get("ETag")

    def get_range(self, full_key: str, offset: int, length: int) -> bytes:
        """Bytes [offset, offset+length) of full_key, fewer at its end, b"" past it."""
        request = AWSRequest(method="GET", url=self._object_base() + quote(full_key, safe="/~"),
                             headers={"Range": f"bytes={offset}-{offset + length - 1}"}, stream_output=True)
        response = self._send(request, "GetObject", accept=(416,))
        raw = response.raw
        try:
            if response.status_code == 416:  # InvalidRange: the object ends before offset
                raw.read()
                return b""
            expected = int(response.headers.get("Content-Length", -1))
            if response.status_code != 206 and (offset > 0 or not 0 <= expected <= length):
                raise Refused(f"HTTP {response.status_code} to a ranged GET")  # a server that ignores Range
            data = raw.read()  # read to the end: the connection goes back to the pool
        except (HTTPError, OSError) as e:  # cut off mid-body: as transient as boto3's own error for it
            raw.close()
            raise IncompleteReadError(actual_bytes=0, expected_bytes=length) from e
        except Refused:
            raw.close()
            raise
        if expected >= 0 and len(data) != expected:
            raise IncompleteReadError(actual_bytes=len(data), expected_bytes=expected)
        return data

    def list_page(self, args: dict[str, Any]) -> dict[str, Any]:
        """One ListObjectsV2 page for list_objects_v2's arguments, in the shape boto3 returns it."""
        params = {"list-type": "2", "encoding-type": "url", "prefix": args.get("Prefix", ""),
                  "max-keys": str(args.get("MaxKeys", 1000))}
        if args.get("Delimiter"):
            params["delimiter"] = args["Delimiter"]
        if args.get("ContinuationToken"):
            params["continuation-token"] = args["ContinuationToken"]
        response = self._send(AWSRequest(method="GET", url=self._bucket_url(), params=params), "ListObjectsV2")
        try:
            root = ET.fromstring(response.content)
        except ET.ParseError as e:
            raise Refused(f"unreadable listing ({e})") from e
        ns = _NS if root.tag.startswith(_NS) else ""
        if root.tag != ns + "ListBucketResult":
            raise Refused(f"unexpected listing root {root.tag!r}")
        encoded = (root.findtext(ns + "EncodingType") or "").lower() == "url"

        def name(text: str | None) -> str:
            return unquote_plus(text or "") if encoded else (text or "")

        page: dict[str, Any] = {
            "IsTruncated": root.findtext(ns + "IsTruncated") == "true",
            "CommonPrefixes": [{"Prefix": name(cp.findtext(ns + "Prefix"))}
                               for cp in root.iter(ns + "CommonPrefixes")],
            "Contents": [{"Key": name(c.findtext(ns + "Key")), "Size": int(c.findtext(ns + "Size") or 0),
                          "ETag": c.findtext(ns + "ETag"),
                          "LastModified": datetime.fromisoformat(
                              (c.findtext(ns + "LastModified") or "1970-01-01T00:00:00Z").replace("Z", "+00:00"))}
                         for c in root.iter(ns + "Contents")],
        }
        token = root.findtext(ns + "NextContinuationToken")
        if token:
            page["NextContinuationToken"] = token
        return page
