"""The one table from S3 answers and transport failures to storefs errors, used by every request path.

An answer's status and error code decide the exception (each carries its errno):

    NoSuchBucket                                  ProviderError     EIO     (the message names bucket and endpoint)
    NoSuchKey, NotFound, 404                      NotFound          ENOENT
    AccessDenied, InvalidAccessKeyId, ..., 403    AccessDenied      EACCES
    SlowDown, InternalError, RequestTimeout,
      any 5xx, 429                                ProviderBusy      EIO (retried after a pause, Retry-After honoured)
    no whole answer                               ProviderUnavailable EIO (retried; the provider may be down)

ProviderBusy is a ProviderUnavailable (callers answer from their cache as for an outage) that
ProviderHealth never counts toward "down": the server answered.
    EntityTooLarge                                TooLarge          EFBIG
    anything else                                 ProviderError     EIO

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
NO_BUCKET = "NoSuchBucket"
#: HTTP statuses a server answers when it is overloaded or failing for the moment
TOO_MANY_REQUESTS = 429
SERVER_ERROR = 500
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
        if code in BUSY_CODES or status >= SERVER_ERROR or status == TOO_MANY_REQUESTS:
            return errors.ProviderBusy(f"{what}: {self.endpoint} answered {code or status}", retry_after=retry_after)
        if code in TOO_LARGE_CODES:
            return errors.TooLarge(f"{what}: {self.endpoint} answered {code}: {message}".rstrip(": "))
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
