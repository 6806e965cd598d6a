"""S3's limits on keys and metadata, checked when a name or an xattr is set instead of found out at upload.

AWS S3 refuses a key over 1,024 bytes of UTF-8 (KeyTooLongError) and user metadata over 2 KiB
(MetadataTooLarge), counted as the sum of the bytes of each metadata name and value. storefs
counts the names with their `x-amz-meta-` prefix, a little stricter than AWS, so that what
passes here passes on any S3 server. Some servers change names as they store them: SeaweedFS
stores `\\` as `/`, so `a\\b` would land as a folder `a` holding `b`; on such a server (found
out at mount by a probe) names with `\\` are refused rather than encoded, so that every key
reads the same in every S3 tool. Pure functions: no network, no boto3.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from ... import errors
from .codec import META_PREFIX

log = logging.getLogger(__name__)

#: the longest key S3 stores, in bytes of UTF-8, the provider's prefix included
KEY_MAX_BYTES = 1024
#: the most user metadata S3 stores with one object: x-amz-meta-* names and values, in bytes of UTF-8
METADATA_MAX_BYTES = 2048
#: the character SeaweedFS stores as '/'
BACKSLASH = "\\"
#: the start of the key the mount-time name probe writes (and deletes) under the provider's prefix
NAME_PROBE = ".storefs-probe-names-"
#: keys the name probe's listing reads back (one is expected)
PROBE_KEYS = 10


def check_key(full: str, *, backslash_kept: bool = True) -> None:
    """Refuse a full key (prefix included) the server would refuse or store under another name."""
    size = len(full.encode("utf-8", "surrogateescape"))
    if size > KEY_MAX_BYTES:
        raise errors.NameTooLong(f"the key is {size} bytes with the provider's prefix; S3 stores at most "
                                 f"{KEY_MAX_BYTES}")
    if not backslash_kept and BACKSLASH in full:
        raise errors.LayoutError("this S3 server stores '\\' as '/' (a folder): names with '\\' are refused")


def metadata_bytes(headers: Mapping[str, str]) -> int:
    """The bytes of user metadata in request headers, as S3 counts them (names with their prefix)."""
    return sum(len(k.encode("utf-8")) + len(v.encode("utf-8"))
               for k, v in headers.items() if k.lower().startswith(META_PREFIX))


def check_metadata(what: str, headers: Mapping[str, str]) -> None:
    """Refuse request headers whose user metadata is over S3's limit (E2BIG)."""
    size = metadata_bytes(headers)
    if size > METADATA_MAX_BYTES:
        raise errors.MetadataTooLarge(f"{what}: its attributes and xattrs take {size} bytes of S3 metadata; "
                                      f"S3 stores at most {METADATA_MAX_BYTES}")
