"""The one table from S3 answers and transport failures to storefs errors, used by every request path.

An answer's status and error code decide the exception (each carries its errno):

    NoSuchBucket                                  ProviderError     EIO     (the message names bucket and endpoint)
    NoSuchKey, NotFound, 404                      NotFound          ENOENT
    AccessDenied, InvalidAccessKeyId, ..., 403    AccessDenied      EACCES  (the core decides after a credentials check)
    PreconditionFailed, 412,
      ConditionalRequestConflict, 409             Conflict          EIO     (another writer changed the key first)
    SlowDown, InternalError, RequestTimeout,
      any 5xx but 501, 429, 408, OperationAborted ProviderBusy      EIO     (retried after a pause; Retry-After kept)
    no whole answer (refused, reset, timed out)   ProviderUnavailable EIO   (retried in the request)
    EntityTooLarge                                TooLarge          EFBIG   (a LayoutError: permanent)
    IncompleteBody, BadDigest, ...                ProviderError     EIO     (the body arrived damaged: sent again later)
    any other 4xx (KeyTooLongError, InvalidArgument,
      MetadataTooLarge, InvalidRequest, ...), 501 Rejected          EIO     (permanent: park, do not retry)
    anything else (3xx, an odd answer)            ProviderError     EIO

ProviderBusy is a ProviderUnavailable, so the retry policy retries it (after at least a short
pause) and callers answer from their cache as for an outage; ProviderHealth never counts it
toward "down". A server that answers 5xx is answering: when the write retries run out on busy
answers, the write methods raise a plain ProviderError (S3Provider._write), which the uploader
retries later and which says nothing of whether the server can be reached. Only a request that
got no whole answer ends as ProviderUnavailable. Rejected, Conflict and TooLarge are the
permanent outcomes: retrying the same request cannot succeed.

Messages name the object and the endpoint, never credentials.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit, urlunsplit

from ... import errors

NOT_FOUND_CODES = frozenset({"NoSuchKey", "404", "NotFound"})
DENIED_CODES = frozenset({"AccessDenied", "403", "Forbidden", "InvalidAccessKeyId", "SignatureDoesNotMatch",
                          "ExpiredToken", "InvalidToken", "TokenRefreshRequired", "AllAccessDisabled"})
BUSY_CODES = frozenset({"SlowDown", "503", "500", "502", "504", "RequestTimeout", "InternalError",
                        "ServiceUnavailable", "Throttling", "ThrottlingException", "RequestLimitExceeded"})
TOO_LARGE_CODES = frozenset({"EntityTooLarge"})
#: the object at the key is not the version the request's condition named (409: a race with another writer)
CONFLICT_CODES = frozenset({"PreconditionFailed", "ConditionalRequestConflict"})
#: 409s that mean "another operation is under way on this resource": try again
BUSY_CONFLICT_CODES = frozenset({"OperationAborted"})
#: 4xx codes that say this body arrived damaged (a cut or changed upload): sending it again may work
DAMAGED_BODY_CODES = frozenset({"IncompleteBody", "BadDigest", "InvalidDigest", "XAmzContentSHA256Mismatch"})
NO_BUCKET = "NoSuchBucket"
#: HTTP statuses a server answers when it is overloaded or failing for the moment
TOO_MANY_REQUESTS = 429
REQUEST_TIMEOUT = 408
PRECONDITION_FAILED = 412
CONFLICT = 409
CLIENT_ERROR = 400
SERVER_ERROR = 500
#: the server does not implement what was asked (a header, a request): permanent, unlike the other 5xx
NOT_IMPLEMENTED = 501
NOT_FOUND = 404
FORBIDDEN = 403
_CODE = re.compile(rb"<Code>([^<]*)</Code>")
_MESSAGE = re.compile(rb"<Message>([^<]*)</Message>")


def safe_endpoint(url: str) -> str:
    """The endpoint for messages, without any user:password part."""
    parts = urlsplit(url)
    if parts.username or parts.password:
        parts = parts._replace(netloc=(parts.hostname or "") + (f":{parts.port}" if parts.port else ""))
    return urlunsplit(parts)


def error_code(body: bytes) -> tuple[str, str]:
    """(Code, Message) of an S3 <Error> body; empty strings when the body has none (a HEAD's answer)."""
    code, message = _CODE.search(body), _MESSAGE.search(body)
    return (code.group(1).decode(errors="replace") if code else "",
            message.group(1).decode(errors="replace") if message else "")


class ErrorTable:
    """Turns answers and failures for one bucket at one endpoint into storefs errors."""

    def __init__(self, bucket: str, endpoint: str) -> None:
        self.bucket = bucket
        self.endpoint = safe_endpoint(endpoint)

    def no_bucket(self) -> errors.ProviderError:
        """The bucket is missing: retrying will not fix it."""
        return errors.ProviderError(f"bucket {self.bucket} does not exist at {self.endpoint}")

    def answer(self, what: str, status: int, code: str = "", message: str = "", *,
               retry_after: float | None = None) -> errors.StorefsError:
        """The error for an answer that is not a success (status and, when the body has them, code and message;
        retry_after: the seconds a busy server asked for)."""
        if code == NO_BUCKET:
            return self.no_bucket()
        if code in NOT_FOUND_CODES or status == NOT_FOUND:
            return errors.NotFound(what)
        if code in DENIED_CODES or status == FORBIDDEN:
            return errors.AccessDenied(f"{what}: access denied ({code or status}); check the credentials")
        if code in CONFLICT_CODES or status == PRECONDITION_FAILED or (status == CONFLICT and not code):
            return errors.Conflict(f"{what}: changed by another writer ({code or status})")
        if code in TOO_LARGE_CODES:
            return errors.TooLarge(f"{what}: {self.endpoint} answered {code}: {message}".rstrip(": "))
        if (code in BUSY_CODES or code in BUSY_CONFLICT_CODES or status in (TOO_MANY_REQUESTS, REQUEST_TIMEOUT)
                or (status >= SERVER_ERROR and status != NOT_IMPLEMENTED)):
            return errors.ProviderBusy(f"{what}: {self.endpoint} answered {code or status}", retry_after=retry_after)
        if code in DAMAGED_BODY_CODES:
            return errors.ProviderError(f"{what}: {code}: {message}".rstrip(": "))
        if CLIENT_ERROR <= status < SERVER_ERROR or status == NOT_IMPLEMENTED:
            return errors.Rejected(f"{what}: {code or status}: {message}".rstrip(": "))
        return errors.ProviderError(f"{what}: {code or status}: {message}".rstrip(": "))

    def body(self, what: str, status: int, body: bytes, *, retry_after: float | None = None) -> errors.StorefsError:
        """The error for an answer whose body may be an S3 <Error> document."""
        return self.answer(what, status, *error_code(body), retry_after=retry_after)

    def unreachable(self, what: str, exc: BaseException) -> errors.ProviderUnavailable:
        """No whole answer came (connection refused, reset, timed out, body cut off)."""
        return errors.ProviderUnavailable(f"cannot reach {self.endpoint} ({type(exc).__name__}) for {what}")

    def no_credentials(self, reason: str) -> errors.AccessDenied:
        """Neither the config nor boto3's credential chain gave usable credentials."""
        return errors.AccessDenied(f"no usable S3 credentials for {self.endpoint} ({reason})")

    def odd(self, what: str, reason: str) -> errors.ProviderError:
        """An answer this client does not understand: an error of this request only."""
        return errors.ProviderError(f"{what}: unexpected answer from {self.endpoint}: {reason}")
