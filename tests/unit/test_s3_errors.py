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
from storefs.providers.s3.retry import RetryPolicy

SECRET = "SeCrEtSeCrEtSeCrEt"
CASES = {("NoSuchKey", 404): errors.NotFound, ("", 404): errors.NotFound, ("NotFound", 404): errors.NotFound,
         ("NoSuchUpload", 404): errors.NotFound,
         ("AccessDenied", 403): errors.AccessDenied, ("", 403): errors.AccessDenied,
         ("InvalidAccessKeyId", 403): errors.AccessDenied, ("SignatureDoesNotMatch", 403): errors.AccessDenied,
         ("ExpiredToken", 400): errors.AccessDenied,
         # another writer changed the key first
         ("PreconditionFailed", 412): errors.Conflict, ("", 412): errors.Conflict,
         ("ConditionalRequestConflict", 409): errors.Conflict, ("", 409): errors.Conflict,
         # busy: retried in the request, with back-off
         ("SlowDown", 503): errors.ProviderBusy, ("", 503): errors.ProviderBusy,
         ("InternalError", 500): errors.ProviderBusy, ("", 502): errors.ProviderBusy, ("", 504): errors.ProviderBusy,
         ("RequestTimeout", 400): errors.ProviderBusy, ("", 408): errors.ProviderBusy, ("", 429): errors.ProviderBusy,
         ("InternalError", 200): errors.ProviderBusy, ("OperationAborted", 409): errors.ProviderBusy,
         # permanent: parked, never retried
         ("EntityTooLarge", 400): errors.TooLarge,
         ("KeyTooLongError", 400): errors.Rejected, ("MetadataTooLarge", 400): errors.Rejected,
         ("InvalidArgument", 400): errors.Rejected, ("InvalidRequest", 400): errors.Rejected,
         ("", 400): errors.Rejected, ("MethodNotAllowed", 405): errors.Rejected,
         ("BucketAlreadyOwnedByYou", 409): errors.Rejected, ("NotImplemented", 501): errors.Rejected,
         # a damaged body: sent again later, not within the request
         ("BadDigest", 400): errors.ProviderError, ("IncompleteBody", 400): errors.ProviderError,
         ("XAmzContentSHA256Mismatch", 400): errors.ProviderError,
         ("", 301): errors.ProviderError}
ERRNOS = {errors.NotFound: errno.ENOENT, errors.AccessDenied: errno.EACCES, errors.ProviderBusy: errno.EIO,
          errors.TooLarge: errno.EFBIG, errors.ProviderError: errno.EIO, errors.Conflict: errno.EIO,
          errors.Rejected: errno.EIO}

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
    assert isinstance(errors.ProviderBusy(), errors.ProviderUnavailable)  # so the retry policy retries it
    assert isinstance(errors.TooLarge(), errors.LayoutError)  # permanent, as the core tells it
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


@pytest.mark.parametrize(("status", "code"), [(503, "SlowDown"), (429, ""), (408, ""), (500, "InternalError")])
def test_busy_answers_are_retried_then_end_as_a_provider_error(provider, status, code):
    """A busy answer is retried up to max_attempts; once they run out the write fails as a ProviderError (the
    server answered: the uploader retries later), not as ProviderUnavailable (which says it cannot be reached)."""
    provider.retry = RetryPolicy(1.0, 1.0, 3, 1.0, sleep=lambda s: None)
    tries = []

    def busy(_timeouts):
        tries.append(1)
        raise provider._table.answer("s3://bkt/k", status, code)

    with pytest.raises(errors.ProviderError) as ei:
        provider._write("s3://bkt/k", busy)
    assert type(ei.value) is errors.ProviderError and len(tries) == 3
    assert f"answered {code or status}" in str(ei.value) and "gave up after 3 attempts" in str(ei.value)
    answers = iter([provider._table.answer("k", status, code)])

    def busy_once(_timeouts):
        for err in answers:
            raise err
        return "etag"

    assert provider._write("k", busy_once) == "etag"  # a later attempt that is served succeeds


@pytest.mark.parametrize(("status", "code", "cls"), [(412, "PreconditionFailed", errors.Conflict),
                                                     (409, "ConditionalRequestConflict", errors.Conflict),
                                                     (400, "KeyTooLongError", errors.Rejected),
                                                     (400, "InvalidArgument", errors.Rejected),
                                                     (400, "MetadataTooLarge", errors.Rejected),
                                                     (403, "AccessDenied", errors.AccessDenied)])
def test_conflicts_and_refusals_are_not_retried(provider, status, code, cls):
    provider.retry = RetryPolicy(1.0, 1.0, 3, 1.0, sleep=lambda s: None)
    tries = []

    def refused(_timeouts):
        tries.append(1)
        raise provider._table.answer("s3://bkt/k", status, code)

    with pytest.raises(cls) as ei:
        provider._write("s3://bkt/k", refused)
    assert type(ei.value) is cls and len(tries) == 1


def test_no_answer_stays_provider_unavailable(provider):
    provider.retry = RetryPolicy(1.0, 1.0, 2, 1.0, sleep=lambda s: None)

    def unreachable(_timeouts):
        raise provider._table.unreachable("s3://bkt/k", ConnectionRefusedError())

    with pytest.raises(errors.ProviderUnavailable, match="cannot reach.*gave up after 2 attempts") as ei:
        provider._write("s3://bkt/k", unreachable)
    assert type(ei.value) is errors.ProviderUnavailable
