"""Exceptions of the core; each carries the errno the FUSE edge answers with.

The core raises these and never builds OSErrors itself, so that the one place that
turns failures into errno values (storefs.fs) also decides what gets logged.
"""

from __future__ import annotations

import errno as _errno


class StorefsError(Exception):
    """Base of every error the core raises on purpose."""

    errno: int = _errno.EIO
    #: an expected answer (a probe for an unsupported feature): the FUSE edge does not log it
    quiet: bool = False

    def __init__(self, message: str = "", *, code: int | None = None, quiet: bool = False) -> None:
        super().__init__(message)
        if code is not None:
            self.errno = code
        if quiet:
            self.quiet = True


class NotFound(StorefsError):
    """The path or key does not exist (ENOENT, never logged)."""

    errno = _errno.ENOENT


class Exists(StorefsError):
    """The target exists where the operation needs it absent."""

    errno = _errno.EEXIST


class NotEmpty(StorefsError):
    """rmdir or rename over a directory that still has entries."""

    errno = _errno.ENOTEMPTY


class IsADirectory(StorefsError):
    errno = _errno.EISDIR


class NotADirectory(StorefsError):
    errno = _errno.ENOTDIR


class NameTooLong(StorefsError):
    """A name over 255 bytes: FUSE lets up to 1024 through, object stores and disks do not."""

    errno = _errno.ENAMETOOLONG


class LayoutError(StorefsError):
    """The operation would break the configured key layout (EINVAL by default)."""

    errno = _errno.EINVAL


class NotPermitted(LayoutError):
    """A file where the layout only allows folders, or an operation storefs refuses (EPERM)."""

    errno = _errno.EPERM


class TooLarge(LayoutError):
    """A file would pass its size limit (EFBIG)."""

    errno = _errno.EFBIG


class ReadOnly(StorefsError):
    """A change on a read-only mount (EROFS)."""

    errno = _errno.EROFS


class AccessRefused(StorefsError):
    """The caller may not do this to this file or folder (EACCES), as POSIX decides it."""

    errno = _errno.EACCES


class NoAttribute(StorefsError):
    """Extended attribute not set (ENODATA, never logged)."""

    errno = _errno.ENODATA


class NotSupported(StorefsError):
    errno = _errno.ENOTSUP


class CacheFull(StorefsError):
    """The cache disk has no room left (ENOSPC)."""

    errno = _errno.ENOSPC


class ProviderError(StorefsError):
    """A provider failed in a way retrying will not fix soon (EIO)."""

    errno = _errno.EIO


class ProviderUnavailable(ProviderError):
    """The provider did not answer (connection refused, timeout, 5xx after retries)."""


class ProviderBusy(ProviderUnavailable):
    """The provider answered that it is busy for now (SlowDown, 503, 429, another 5xx): retried after a pause
    and, like an outage, answered from the cache where it can be; but it answered, so ProviderHealth never
    takes it for the provider being down. retry_after: the seconds the provider asked for, if it said."""

    def __init__(self, message: str = "", *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Conflict(ProviderError):
    """The provider's object at the key is not the version a change was based on (HTTP 412/409):
    another writer changed it first, so the change must not replace it."""


class Rejected(ProviderError):
    """The provider refused this request for good (a 4xx other than throttling or 408): retrying
    will not help until an operator fixes the cause, so the change is parked, not retried."""


class MetadataTooLarge(StorefsError):
    """The xattrs and attributes of a file would pass the provider's metadata limit (E2BIG)."""

    errno = _errno.E2BIG


class AccessDenied(ProviderError):
    """The provider refused the credentials for this key (EACCES)."""

    errno = _errno.EACCES


class ConfigError(Exception):
    """A config file is wrong; the message names the file, the key and the reason."""

    def __init__(self, source: str, key: str, reason: str) -> None:
        self.source = source
        self.key = key
        self.reason = reason
        super().__init__(f"{source}: {key}: {reason}" if key else f"{source}: {reason}")


class UsageError(Exception):
    """A bad command-line argument or option (unknown provider, bad age, an option mount.storefs
    cannot take): nothing was touched; the message says which and why."""

    exit_code = 2  # the operator commands' exit status; mount(8) helpers answer EXIT_USAGE instead


#: errno values that are answers, not failures: the FUSE edge does not log them.
QUIET_ERRNOS = frozenset({_errno.ENOENT, _errno.ENODATA, _errno.EEXIST, _errno.ENOTEMPTY})
