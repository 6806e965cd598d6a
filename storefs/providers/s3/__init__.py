"""The S3 provider: any S3-compatible store (AWS, MinIO, SeaweedFS, R2, ...).

    provider.py  S3Provider, the Provider interface on one bucket (and key prefix)
    codec.py     object metadata <-> ObjectMeta/ObjectInfo in s3fs's and rclone's names (pure)
    errors.py    the one table from S3 answers and transport failures to storefs errors
    retry.py     the one retry policy: what retries, how often, and each operation's end-to-end bound
    requests.py  the hot requests (HEAD, ranged GET, PUT, LIST, COPY, DELETE), one attempt each
    listing.py   ListObjectsV2/CopyObject/DeleteObjects XML read and written (pure)
    sign.py      SigV4 with the day's signing key kept
    http.py      kept-alive http.client connections to one endpoint
    boto.py      boto3: the credential chain, the bucket's URLs, multipart transfers, presigning
"""

from .codec import (
    DIR_CONTENT_TYPE,
    RESERVED_KEYS,
    decode_value,
    encode_value,
    format_mtime,
    info_from_headers,
    metadata_for,
    parse_mode,
    parse_mtime,
    parse_rdev,
    xattr_metadata_key,
    xattrs_from_metadata,
)
from .provider import COPY_LIMIT, S3Provider

__all__ = ["COPY_LIMIT", "DIR_CONTENT_TYPE", "RESERVED_KEYS", "S3Provider", "decode_value", "encode_value",
           "format_mtime", "info_from_headers", "metadata_for", "parse_mode", "parse_mtime", "parse_rdev",
           "xattr_metadata_key", "xattrs_from_metadata"]
