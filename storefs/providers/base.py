"""The one interface every backend implements; the cache knows providers only through it."""

from __future__ import annotations

import abc
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field

from ..errors import ProviderUnavailable, StorefsError

#: times everywhere in storefs are integer nanoseconds since the epoch, as stat(2) has them
NS_PER_SECOND = 1_000_000_000


@dataclass
class ObjectMeta:
    """What storefs stores beside an object's bytes (s3fs/rclone-compatible on S3).

    mode always carries the file type: S_IFREG, S_IFLNK (the bytes are the link target),
    S_IFIFO, S_IFSOCK, S_IFCHR, S_IFBLK (zero bytes; rdev for devices) or S_IFDIR.
    """

    #: integer nanoseconds since the epoch (a float holds only about microseconds at today's epoch)
    mtime_ns: int
    mode: int = 0o100644
    uid: int | None = None
    gid: int | None = None
    content_type: str = "application/octet-stream"
    xattrs: dict[str, bytes] = field(default_factory=dict)
    #: status change time; stored on object stores, a local disk keeps its own
    ctime_ns: int | None = None
    #: access time; None leaves it to the backend (a new local file takes mtime)
    atime_ns: int | None = None
    #: device number of a character or block device node (mode S_IFCHR/S_IFBLK)
    rdev: int | None = None


@dataclass
class ObjectInfo:
    """One entry of a listing or a head: a file, or a directory (key ends with '/')."""

    key: str
    size: int
    mtime_ns: int  # integer nanoseconds since the epoch, as all times here
    is_dir: bool = False
    mode: int | None = None
    uid: int | None = None
    gid: int | None = None
    etag: str | None = None
    content_type: str | None = None
    xattrs: dict[str, bytes] = field(default_factory=dict)
    ctime_ns: int | None = None
    atime_ns: int | None = None
    #: device number of a character or block device node, else None
    rdev: int | None = None

    @property
    def name(self) -> str:
        """Last path component, without the trailing '/' of a directory."""
        return self.key.rstrip("/").rsplit("/", 1)[-1]


class UploadLog:
    """Where a provider notes the multipart uploads it opens until they end, so that the next mount can
    abort one a crash cut short (its parts would stay stored, and billed); this default keeps nothing."""

    def started(self, key: str, upload_id: str) -> None:
        """The upload was created and no part is sent yet; raising makes the provider abort it and fail."""

    def ended(self, key: str, upload_id: str) -> None:
        """The upload was completed or aborted: the server holds nothing of it any more."""


#: the UploadLog of a provider nobody gave one (tools and tests without a journal)
NO_UPLOAD_LOG = UploadLog()



def write_all(fd: int, data: memoryview, offset: int) -> None:
    """pwrite data at offset, all of it (a regular file may take less than asked in one call)."""
    while data:
        n = os.pwrite(fd, data, offset)
        data, offset = data[n:], offset + n

class Provider(abc.ABC):
    """A key-value object store seen as keys with '/'-separated prefixes.

    Keys never start with '/'. A directory is addressed by its prefix with a trailing
    '/' ("t1/image/"); the root prefix is "". Every method raises storefs.errors
    exceptions (NotFound, AccessDenied, ProviderUnavailable, ProviderError), never
    a backend library's own.
    """

    #: name from the config ("local", "s3", ...)
    name: str
    #: a short word for status and xattrs: "local", "s3"
    kind: str
    #: whether list() yields each file's mtime/mode/uid/gid (object stores need a head per file)
    listing_has_metadata: bool = True
    #: whether one listing of a folder is cheaper than asking for a name or two in it (round trips)
    lookup_by_listing: bool = False
    #: names head_many asks for in one go at less than one head() each (S3 pipelines its HEADs); 1: none
    heads_at_once: int = 1
    #: whether the provider enforces put/copy/delete conditions atomically; False: checked by a head
    #: just before the request, which leaves a short race window (README, "Several mounts, one bucket")
    atomic_conditions: bool = True
    #: where multipart uploads are noted while open (the core gives the journal's at build time)
    uploads: UploadLog = NO_UPLOAD_LOG

    @abc.abstractmethod
    def check(self, *, writable: bool = False) -> None:
        """Fail fast at mount time (missing bucket, bad credentials, unwritable folder); writable: the mount
        will write, so probes that write a scratch object (which conditions the server honours) may run."""

    @abc.abstractmethod
    def head(self, key: str) -> ObjectInfo:
        """Metadata of the file at key; NotFound if there is none."""

    def head_many(self, keys: Sequence[str]) -> Iterator[tuple[str, ObjectInfo | StorefsError]]:
        """(key, head(key)) for each key in order, streamed, with the error that is that key's alone (NotFound,
        AccessDenied, ...) in place of its info; ProviderUnavailable is raised. Providers that can ask for
        many names more cheaply than one by one (S3: pipelined HEADs) do so."""
        for key in keys:
            try:
                yield key, self.head(key)
            except ProviderUnavailable:
                raise
            except StorefsError as e:
                yield key, e

    @abc.abstractmethod
    def dir_exists(self, prefix: str) -> bool:
        """Whether a directory marker or any key lies below prefix ('a/b/')."""

    @abc.abstractmethod
    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        """Immediate children of prefix ('' or 'a/b/'), streamed, in no promised order."""

    @abc.abstractmethod
    def get_range(self, key: str, offset: int, length: int) -> bytes:
        """Up to length bytes of the object from offset (short only at the end)."""

    def get_range_into(self, key: str, offset: int, length: int, fd: int) -> int:
        """get_range written into the file fd at the same offset; the byte count. A provider that can
        stream overrides it, so that a long range never sits in memory whole."""
        data = self.get_range(key, offset, length)
        write_all(fd, memoryview(data), offset)
        return len(data)

    @abc.abstractmethod
    def put_file(self, key: str, src_path: str, meta: ObjectMeta, *, if_match: str | None = None,
                 if_absent: bool = False) -> ObjectInfo:
        """Store the file at src_path under key, atomically: readers see old or new, never half.

        if_absent: Conflict if any object is at key. if_match: Conflict unless the object at key
        has that etag, NotFound if there is none. Neither: replace whatever is there.
        """

    @abc.abstractmethod
    def set_meta(self, key: str, meta: ObjectMeta) -> ObjectInfo:
        """Replace the metadata of an existing object without sending its bytes again."""

    @abc.abstractmethod
    def copy(self, src: str, dst: str, meta: ObjectMeta | None = None, *, if_match: str | None = None) -> ObjectInfo:
        """Server-side copy of src to dst (metadata kept, or replaced by meta); if_match: Conflict
        unless src still has that etag."""

    @abc.abstractmethod
    def delete(self, key: str, *, if_match: str | None = None) -> None:
        """Remove the object at key; no error if it is already gone; if_match: Conflict (and
        nothing removed) when the object at key has another etag."""

    @abc.abstractmethod
    def make_dir(self, prefix: str, meta: ObjectMeta) -> None:
        """Persist a directory (a marker object 'prefix/' on object stores) or replace an existing one's metadata."""

    @abc.abstractmethod
    def remove_dir(self, prefix: str) -> None:
        """Remove the directory marker of prefix; no error if there is none."""

    def check_key(self, key: str) -> None:  # noqa: B027  (optional: a backend may take any key)
        """Refuse, before anything is written, a key this provider cannot store as given
        (NameTooLong for a key over its limit, LayoutError for a name the server would change)."""

    def check_meta(self, key: str, meta: ObjectMeta) -> None:  # noqa: B027  (optional: no limit)
        """Refuse, at setxattr, metadata this provider cannot store in full (MetadataTooLarge)."""

    def head_dir(self, prefix: str) -> ObjectInfo | None:
        """Metadata of folder prefix ('a/b/'): mode, uid, gid, mtime, ctime, atime, xattrs; None when unknown."""
        return None

    def walk(self, prefix: str) -> Iterator[ObjectInfo]:
        """Every file and folder at any depth below prefix ('' or 'a/b/'), streamed, in no promised order.

        Folders come as keys ending in '/' (is_dir); which ones a backend reports differs (a local
        disk has every folder, an object store its marker objects), so callers treat them as hints.
        This default walks list() level by level; backends with a flat listing override it.
        """
        pending = [prefix]
        while pending:
            for info in self.list(pending.pop()):
                yield info
                if info.is_dir:
                    pending.append(info.key)

    def read_stream(self, key: str, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        """The object's bytes in order, in pieces of about chunk_size, never the whole object in memory."""
        offset = 0
        while True:
            data = self.get_range(key, offset, chunk_size)
            if not data:
                return
            yield data
            offset += len(data)

    def delete_many(self, keys: Iterable[str]) -> None:
        """Remove several objects (batched where the backend can); missing ones are not an error."""
        for key in keys:
            self.delete(key)

    def url(self, key: str, expires: int = 3600) -> str | None:
        """A URL a browser can fetch the object from, when the backend has one."""
        return None

    def abort_upload(self, key: str, upload_id: str) -> None:  # noqa: B027  (optional: no multipart uploads)
        """Abort a multipart upload this provider opened at key, dropping its stored parts; one the server no
        longer knows (NoSuchUpload) is done already. Other failures raise (ProviderUnavailable: try later)."""

    def watch(self, on_change: Callable[[str], None]) -> None:  # noqa: B027  (optional: most backends cannot tell)
        """Call on_change(key) when another program changes the store (where the backend can tell)."""

    def close(self) -> None:  # noqa: B027  (optional: a backend may hold nothing to release)
        """Release connections and watchers."""
