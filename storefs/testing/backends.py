"""What a provider holds, read behind storefs' back: the tests' view of a local folder or a bucket.

A provider backend is any object with:

    name: str                               provider name in the config ("local", "s3")
    provider_config() -> dict               its entry under `providers:` in the YAML
    read(key) -> bytes | None               the object's bytes, None when absent
    keys(prefix) -> list[str]               sorted keys of file objects under prefix
    exists(path) -> bool                    a file object or a directory (prefix) exists
    meta(key) -> dict | None                {"size", "mtime", "mode"} of a file object
    close() -> None

"Absent" is only ever a 404 from the server or a missing file: any other error (a dead server,
a refused signature) is raised, so that it fails the test instead of reading as "absent".
The functions at the end work on a started mount (`store`) whatever its provider.
"""

from __future__ import annotations

import errno
import logging
import os
import sqlite3
import stat
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

TMP_PREFIX = ".storefs-tmp."  # the local provider's own temporaries, never real objects
S_IFLNK_0777 = stat.S_IFLNK | 0o777  # 41471, the mode s3fs stores for a symlink
NOT_FOUND_CODES = frozenset({"404", "NoSuchKey", "NotFound"})  # how S3 servers say "no such object"
NO_XATTRS = (errno.ENOTSUP, errno.EOPNOTSUPP)  # a file system without user.* attributes


CLIENT_DEFAULTS: dict[str, Any] = {  # botocore Config of the tests' clients: quick to fail, no checksums
    "signature_version": "s3v4", "s3": {"addressing_style": "path"},
    "retries": {"max_attempts": 2, "mode": "standard"}, "connect_timeout": 5, "read_timeout": 30,
    "request_checksum_calculation": "when_required", "response_checksum_validation": "when_required"}


def boto3_client(server: Any, **config: Any) -> Any:
    """A boto3 S3 client for a test server (endpoint_url, region, access_key, secret_key);
    config overrides botocore Config fields."""
    import boto3
    from botocore.config import Config

    return boto3.session.Session().client(
        "s3", endpoint_url=server.endpoint_url, region_name=server.region, aws_access_key_id=server.access_key,
        aws_secret_access_key=server.secret_key, config=Config(**{**CLIENT_DEFAULTS, **config}))


def ensure_bucket(server: Any, name: str) -> None:
    """Create a bucket on a test server; no error if it exists already."""
    c = server.client()
    try:
        c.create_bucket(Bucket=name)
    except (c.exceptions.BucketAlreadyOwnedByYou, c.exceptions.BucketAlreadyExists):
        pass
    finally:
        c.close()


class LocalBackend:
    """The `local` provider: key K is the file <base_path>/K (mode and mtime kept)."""

    name = "local"

    def __init__(self, root: Path) -> None:
        self.base = Path(root) / "data"
        self.base.mkdir(parents=True, exist_ok=True)

    def provider_config(self) -> dict:
        return {"type": "local", "base_path": str(self.base)}

    def _path(self, key: str) -> Path:
        key = key.strip("/")
        p = (self.base / key) if key else self.base
        assert os.path.realpath(p).startswith(os.path.realpath(self.base)), key
        return p

    def read(self, key: str) -> bytes | None:
        p = self._path(key)
        try:
            if not p.is_file():
                return None
            return p.read_bytes()
        except FileNotFoundError:
            return None

    def keys(self, prefix: str = "") -> list[str]:
        prefix = prefix.strip("/")
        top = self._path(prefix)
        if top.is_file():
            return [prefix]
        out = []
        for dirpath, _dirs, files in os.walk(top):
            for name in files:
                if name.startswith(TMP_PREFIX):
                    continue
                rel = os.path.relpath(os.path.join(dirpath, name), self.base)
                out.append(rel.replace(os.sep, "/"))
        return sorted(out)

    def exists(self, path: str) -> bool:
        return os.path.lexists(self._path(path))

    def meta(self, key: str) -> dict | None:
        try:
            st = os.stat(self._path(key))
        except FileNotFoundError:
            return None
        if not stat.S_ISREG(st.st_mode):
            return None
        return {"size": st.st_size, "mtime": st.st_mtime, "mode": stat.S_IMODE(st.st_mode)}

    def close(self) -> None:
        pass


def is_not_found(err: Exception) -> bool:
    """Whether a botocore ClientError is the server's "no such object" (and nothing else)."""
    response = getattr(err, "response", None) or {}
    return str(response.get("Error", {}).get("Code")) in NOT_FOUND_CODES


class S3Backend:
    """The `s3` provider on an S3 server (SeaweedFS, moto): one fresh bucket per test, read with plain boto3."""

    name = "s3"

    def __init__(self, server: Any, bucket: str, **extra: Any) -> None:
        self.server = server
        self.bucket = bucket
        self.extra = extra  # more keys for the provider's config section (read_deadline, ...)
        self.client = server.client()
        server.create_bucket(bucket)

    def provider_config(self) -> dict:
        return {"type": "s3", "bucket": self.bucket, "endpoint_url": self.server.endpoint_url,
                "region": self.server.region, "path_style": True,
                "access_key_id": self.server.access_key, "secret_access_key": self.server.secret_key,
                **self.extra}

    def head(self, key: str) -> dict | None:
        """The HEAD of key (ContentLength, ContentType, Metadata ...), None when the server says 404."""
        try:
            return self.client.head_object(Bucket=self.bucket, Key=key)
        except self.client.exceptions.ClientError as e:
            if is_not_found(e):
                return None
            raise

    def read(self, key: str) -> bytes | None:
        try:
            return self.client.get_object(Bucket=self.bucket, Key=key.strip("/"))["Body"].read()
        except self.client.exceptions.ClientError as e:  # NoSuchKey, or a bare 404 on a folder-like key
            if is_not_found(e):
                return None
            raise

    def keys(self, prefix: str = "") -> list[str]:
        prefix = prefix.strip("/")
        out = []
        for page in self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=prefix + "/" if prefix else ""):
            out += [o["Key"] for o in page.get("Contents", []) if not o["Key"].endswith("/")]
        if prefix and self.read(prefix) is not None:
            out.append(prefix)
        return sorted(out)

    def exists(self, path: str) -> bool:
        path = path.strip("/")
        if self.read(path) is not None:
            return True
        r = self.client.list_objects_v2(Bucket=self.bucket, Prefix=path + "/", MaxKeys=1)
        if r.get("KeyCount"):
            return True
        return self.head(path + "/") is not None

    def meta(self, key: str) -> dict | None:
        h = self.head(key.strip("/"))
        if h is None:
            return None
        md = h.get("Metadata", {})
        mode = int(md["mode"]) if "mode" in md else None
        return {"size": h["ContentLength"], "mtime": float(md.get("mtime", h["LastModified"].timestamp())),
                "mode": stat.S_IMODE(mode) if mode is not None else None,
                "content_type": h.get("ContentType"), "metadata": md}

    def close(self) -> None:
        pass


# --------------------------------------------------------------------------- views of a mount's provider


def is_s3(store: Any) -> bool:
    """Whether the mount's backend is an S3 bucket (not a local folder)."""
    return isinstance(store.backend, S3Backend)


def s3_client(store: Any) -> tuple[Any, str]:
    """(boto3 client, bucket) of an S3 store."""
    assert is_s3(store), f"{store.mnt}: not an S3 mount"
    return store.backend.client, store.backend.bucket


def s3_head(store: Any, key: str) -> dict | None:
    """The S3 HEAD of key (ContentLength, ContentType, Metadata ...), None when absent."""
    assert is_s3(store), f"{store.mnt}: not an S3 mount"
    return store.backend.head(key)


def plant(store: Any, key: str, body: bytes = b"", metadata: dict | None = None,
          content_type: str | None = None) -> None:
    """Write an object behind storefs's back, as another S3 client (s3fs, boto3) would; S3 only."""
    client, bucket = s3_client(store)
    kw: dict[str, Any] = {"Bucket": bucket, "Key": key, "Body": body}
    if metadata is not None:
        kw["Metadata"] = metadata
    if content_type:
        kw["ContentType"] = content_type
    client.put_object(**kw)


def _xattrs(path: str) -> dict[str, bytes]:
    """The extended attributes of path; none where the file system keeps none."""
    try:
        return {n: os.getxattr(path, n) for n in os.listxattr(path)}
    except OSError as e:
        if e.errno in NO_XATTRS:
            return {}
        raise


def provider_snapshot(store: Any) -> dict[str, tuple[Any, ...]]:
    """Everything the provider holds: per key (markers included) its size, ETag and metadata on
    S3; per path its lstat fields, bytes or link target and user.* xattrs on the local provider."""
    if is_s3(store):
        client, bucket = s3_client(store)
        out: dict[str, tuple[Any, ...]] = {}
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            for o in page.get("Contents", []):
                h = client.head_object(Bucket=bucket, Key=o["Key"])
                out[o["Key"]] = (h["ContentLength"], h["ETag"], h.get("ContentType"), h.get("Metadata", {}))
        return out
    base = store.data
    out = {}
    for dirpath, dirs, files in os.walk(base):
        for name in dirs + files:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            if stat.S_ISLNK(st.st_mode):
                body: Any = os.readlink(p)
            elif stat.S_ISREG(st.st_mode):
                with open(p, "rb") as f:
                    body = f.read()
            else:
                body = None
            xattrs = {} if stat.S_ISLNK(st.st_mode) else _xattrs(p)
            out[os.path.relpath(p, base)] = (st.st_mode, st.st_uid, st.st_gid, st.st_size, st.st_mtime_ns,
                                             st.st_rdev, body, xattrs)
    return out


def journal_rows(cache_dir: str | os.PathLike) -> int:
    """Rows in the cache folder's journal (0 when there is no journal at all)."""
    path = os.path.join(cache_dir, "journal.db")
    if not os.path.exists(path):
        return 0
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return con.execute("SELECT COUNT(*) FROM entries").fetchone()[0]
    finally:
        con.close()
