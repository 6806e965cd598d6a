"""The S3 error table (no server), and boto3's failures read through the same table."""

from __future__ import annotations

import errno

import pytest
from boto3.exceptions import S3UploadFailedError
from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError, ReadTimeoutError

from storefs import errors
from storefs.config import S3ProviderConfig
from storefs.providers.s3 import S3Provider
from storefs.providers.s3.errors import ErrorTable, error_code, safe_endpoint

SECRET = "SeCrEtSeCrEtSeCrEt"
CASES = {("NoSuchKey", 404): errors.NotFound, ("", 404): errors.NotFound, ("NotFound", 404): errors.NotFound,
         ("AccessDenied", 403): errors.AccessDenied, ("", 403): errors.AccessDenied,
         ("InvalidAccessKeyId", 403): errors.AccessDenied, ("SignatureDoesNotMatch", 403): errors.AccessDenied,
         ("ExpiredToken", 400): errors.AccessDenied,
         ("SlowDown", 503): errors.ProviderBusy, ("", 503): errors.ProviderBusy,
         ("InternalError", 500): errors.ProviderBusy, ("RequestTimeout", 400): errors.ProviderBusy,
         ("", 429): errors.ProviderBusy, ("InternalError", 200): errors.ProviderBusy,
         ("EntityTooLarge", 400): errors.TooLarge,
         ("InvalidArgument", 400): errors.ProviderError, ("", 301): errors.ProviderError,
         ("PreconditionFailed", 412): errors.ProviderError}
ERRNOS = {errors.NotFound: errno.ENOENT, errors.AccessDenied: errno.EACCES, errors.ProviderBusy: errno.EIO,
          errors.TooLarge: errno.EFBIG, errors.ProviderError: errno.EIO}


@pytest.fixture
def provider():
    p = S3Provider(S3ProviderConfig(name="s3", bucket="bkt", endpoint_url="http://user:pw@127.0.0.1:9",
                                    region="us-east-1", access_key_id="AKIAEXAMPLE", secret_access_key=SECRET))
    yield p
    p.close()


def test_the_table():
    table = ErrorTable("bkt", "http://user:pw@127.0.0.1:9")
    for (code, status), cls in CASES.items():
        err = table.answer("s3://bkt/k", status, code, "a message")
        assert type(err) is cls and err.errno == ERRNOS[cls], (code, status, err)
        assert "pw" not in str(err)
    nb = table.answer("s3://bkt/k", 404, "NoSuchBucket")
    assert type(nb) is errors.ProviderError and str(nb) == "bucket bkt does not exist at http://127.0.0.1:9"
    assert str(table.answer("s3://bkt/k", 400, "InvalidArgument", "bad")) == "s3://bkt/k: InvalidArgument: bad"
    assert str(table.answer("s3://bkt/k", 404)) == "s3://bkt/k"
    down = table.unreachable("s3://bkt/k", ConnectionRefusedError())
    assert type(down) is errors.ProviderUnavailable and "cannot reach http://127.0.0.1:9" in str(down)
    busy = table.body("k", 503, b"<Error><Code>SlowDown</Code></Error>", retry_after=2.0)
    assert type(busy) is errors.ProviderBusy and busy.retry_after == 2.0
    assert type(table.odd("k", "why")) is errors.ProviderError
    assert error_code(b"<Error><Code>X</Code><Message>y &amp; z</Message></Error>") == ("X", "y &amp; z")
    assert error_code(b"") == ("", "")
    assert safe_endpoint("https://a:b@h.example:8443/p") == "https://h.example:8443/p"


def test_boto3_failures_go_through_the_same_table(provider):
    boto = provider._boto

    def ce(code: str, status: int) -> ClientError:
        return ClientError({"Error": {"Code": code, "Message": "m"}, "ResponseMetadata": {"HTTPStatusCode": status}},
                           "UploadPart")

    for (code, status), cls in CASES.items():
        err = boto.error(ce(code, status), "s3://bkt/k")
        assert type(err) is cls, (code, err)
        assert SECRET not in str(err)
    down = boto.error(EndpointConnectionError(endpoint_url="http://127.0.0.1:9/bkt"), "s3://bkt/k")
    assert type(down) is errors.ProviderUnavailable and "cannot reach http://127.0.0.1:9" in str(down)
    assert "pw" not in str(down)
    assert type(boto.error(ReadTimeoutError(endpoint_url="x"), "k")) is errors.ProviderUnavailable
    assert type(boto.error(NoCredentialsError(), "k")) is errors.AccessDenied
    try:
        try:
            raise ce("AccessDenied", 403)
        except ClientError:
            raise S3UploadFailedError("Failed to upload")  # noqa: B904  (as boto3 raises it: the cause only in __context__)
    except S3UploadFailedError as e:
        assert type(boto.error(e, "k")) is errors.AccessDenied


def test_urls_are_presigned_with_the_expiry_asked_for(provider):
    url = provider.url("a b/c.png")
    assert "127.0.0.1:9/bkt/a%20b/c.png?X-Amz-" in url and "X-Amz-Expires=3600" in url
    assert "X-Amz-Expires=60" in provider.url("k", expires=60)
    assert SECRET not in url
    p = S3Provider(S3ProviderConfig(name="s3", bucket="bkt", endpoint_url="http://127.0.0.1:9", region="us-east-1",
                                    access_key_id="AKIAEXAMPLE", secret_access_key=SECRET, presign_expiry=120))
    try:
        assert "X-Amz-Expires=120" in p.url("k")
    finally:
        p.close()
