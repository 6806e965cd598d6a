"""storefs' SigV4 signer against botocore's S3 signer: the same request must get the same signature."""

from __future__ import annotations

import datetime
import hashlib
from urllib.parse import parse_qsl, urlsplit

import pytest
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from storefs.providers.s3.sign import EMPTY_SHA256, SigV4, query_string

ORIGIN = "http://127.0.0.1:8333"
HOST = "127.0.0.1:8333"


def botocore_signed(monkeypatch, when: datetime.datetime, creds: Credentials, region: str, method: str, path: str,
                    params: dict[str, str] | None, headers: dict[str, str], body: bytes | None) -> AWSRequest:
    monkeypatch.setattr("botocore.auth.get_current_datetime", lambda: when)
    request = AWSRequest(method=method, url=ORIGIN + path, headers=dict(headers), data=body, params=params or {})
    S3SigV4Auth(creds.get_frozen_credentials(), "s3", region).add_auth(request)
    return request


def ours(when: datetime.datetime, creds: Credentials, signer: SigV4, method: str, path: str,
         params: dict[str, str] | None, headers: dict[str, str], body: bytes | None) -> dict[str, str]:
    signed = {k.lower(): v for k, v in headers.items()}
    signed["host"] = HOST
    payload = hashlib.sha256(body).hexdigest() if body else EMPTY_SHA256
    signer.sign(method, path, query_string(params or {}), signed, payload, creds.get_frozen_credentials(),
                now=when.replace(tzinfo=datetime.UTC).timestamp())
    return signed


CASES = [
    ("PUT", "/bucket/tenant/image/board/a1/with%20space%2B%C3%BC.png", None,
     {"Content-Type": "image/png", "Content-Length": "5", "x-amz-meta-mtime": "1700000000.250000000",
      "x-amz-meta-mode": "33188", "x-amz-meta-xattr": "user.a=  two  spaces  "}, b"hello"),
    ("GET", "/bucket/tenant/model/b/a/weights.bin", None, {"Range": "bytes=4194304-8388607"}, None),
    ("GET", "/bucket", {"list-type": "2", "encoding-type": "url", "prefix": "t/image/board with space/ü+/",
                        "delimiter": "/", "max-keys": "1000", "continuation-token": "1a/b+c=="}, {}, None),
    ("PUT", "/bucket/t/dir/", None, {"Content-Type": "application/x-directory", "Content-Length": "0"}, b""),
]


@pytest.mark.parametrize("method,path,params,headers,body", CASES)
@pytest.mark.parametrize("token", [None, "session-token/with+chars="])
def test_the_signature_is_botocores(monkeypatch, method, path, params, headers, body, token):
    creds = Credentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", token)
    signer = SigV4("eu-west-3")
    when = datetime.datetime(2026, 11, 30, 23, 59, 58)
    theirs = botocore_signed(monkeypatch, when, creds, "eu-west-3", method, path, params, headers, body)
    mine = ours(when, creds, signer, method, path, params, headers, body)
    assert mine["authorization"] == theirs.headers["Authorization"]
    assert mine["x-amz-date"] == theirs.headers["X-Amz-Date"]
    assert mine["x-amz-content-sha256"] == theirs.headers["X-Amz-Content-SHA256"]
    assert mine.get("x-amz-security-token") == token
    # and the lean request sends the same parameters botocore would (in canonical order and encoding)
    prepared = urlsplit(theirs.prepare().url)
    assert prepared.path == path
    assert sorted(parse_qsl(prepared.query)) == sorted(parse_qsl(query_string(params or {})))


def test_the_days_key_is_kept_and_renewed_with_the_date_and_the_secret(monkeypatch):
    signer = SigV4("us-east-1")
    method, path, params, headers, body = CASES[0]
    first = Credentials("AK", "secret-one")
    days = [datetime.datetime(2026, 11, 30, 12), datetime.datetime(2026, 11, 30, 23, 59, 59),
            datetime.datetime(2026, 12, 1, 0, 0, 1)]
    derived = []
    real_key = signer._signing_key

    def counting(secret: str, date: str) -> bytes:
        key = real_key(secret, date)
        derived.append((secret, date, key))
        return key
    monkeypatch.setattr(signer, "_signing_key", counting)
    for creds in (first, Credentials("AK", "secret-two")):
        for when in days:
            theirs = botocore_signed(monkeypatch, when, creds, "us-east-1", method, path, params, headers, body)
            assert ours(when, creds, signer, method, path, params, headers, body)["authorization"] == \
                theirs.headers["Authorization"]
    keys = {(s, d): k for s, d, k in derived}
    assert len(keys) == 4 and len(set(keys.values())) == 4  # two secrets times two dates
    assert signer._key is not None and signer._key[:2] == ("secret-two", "20261201")
