"""AWS Signature Version 4 for the lean S3 requests, with the day's signing key kept.

botocore's signer builds the same signature through a dozen generic steps and derives the
signing key (four HMACs) again for every request: about a quarter of the interpreter time of
a small upload. The canonical request here is the one botocore's S3 signer makes (no path
normalisation, every header signed but the ones it leaves out); the unit tests hold the two
to the same signature.
"""

from __future__ import annotations

import hashlib
import hmac
import threading
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
#: headers botocore never signs: proxies and clients may change them on the way
UNSIGNED = frozenset({"expect", "transfer-encoding", "user-agent", "x-amzn-trace-id"})
_ALGORITHM = "AWS4-HMAC-SHA256"


def query_string(params: Mapping[str, str]) -> str:
    """The canonical query string, which is also the one sent: signing and sending cannot disagree."""
    return "&".join(f"{quote(k, safe='-_.~')}={quote(v, safe='-_.~')}" for k, v in sorted(params.items()))


class SigV4:
    """Signs requests for one region and service; safe to share between threads."""

    def __init__(self, region: str, service: str = "s3") -> None:
        self.region = region
        self.service = service
        self._lock = threading.Lock()  # protects _key, the day's signing key
        self._key: tuple[str, str, bytes] | None = None  # (secret, date, key)

    def _signing_key(self, secret: str, date: str) -> bytes:
        """The day's key: it changes only with the date or the secret, so it is derived once per day."""
        cached = self._key
        if cached is not None and cached[0] == secret and cached[1] == date:
            return cached[2]
        key = ("AWS4" + secret).encode()
        for part in (date, self.region, self.service, "aws4_request"):
            key = hmac.new(key, part.encode(), hashlib.sha256).digest()
        with self._lock:
            self._key = (secret, date, key)
        return key

    def sign(self, method: str, path: str, query: str, headers: dict[str, str], payload_hash: str,
             creds: Any, now: float | None = None) -> None:
        """Add x-amz-date, x-amz-content-sha256, the session token if any, and Authorization to headers.

        headers: lower-case names, host included; path: already percent-encoded, as sent;
        creds: botocore frozen credentials (access_key, secret_key, token).
        """
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(time.time() if now is None else now))
        headers["x-amz-date"] = stamp
        headers["x-amz-content-sha256"] = payload_hash
        if creds.token:
            headers["x-amz-security-token"] = creds.token
        names = sorted(n for n in headers if n not in UNSIGNED)
        canonical = "\n".join((
            method, path, query,
            "".join(f"{n}:{' '.join(str(headers[n]).split())}\n" for n in names),
            ";".join(names), payload_hash))
        scope = f"{stamp[:8]}/{self.region}/{self.service}/aws4_request"
        to_sign = f"{_ALGORITHM}\n{stamp}\n{scope}\n{hashlib.sha256(canonical.encode()).hexdigest()}"
        signature = hmac.new(self._signing_key(creds.secret_key, stamp[:8]), to_sign.encode(),
                             hashlib.sha256).hexdigest()
        headers["authorization"] = (f"{_ALGORITHM} Credential={creds.access_key}/{scope}, "
                                    f"SignedHeaders={';'.join(names)}, Signature={signature}")
