"""The uploader's side of the core: when a pending row may go, carrying it out, and recording the outcome.

The uploader knows only three functions of this part (UploadJobs): due_in, sync and failed.
sync reads what it needs under the core lock, talks to the provider without it, and settles
the row under the lock again, unless the row changed while its bytes travelled.
"""

from __future__ import annotations

import logging
import os
import stat

from .. import keys
from ..cache.journal import OP_COPY, OP_DELETE, OP_META, OP_MKDIR, OP_PUT, OP_RMDIR, TOMBSTONES, Entry, State
from ..cache.uploader import UploadJobs
from ..errors import NotFound
from ..layout import Layout
from ..providers.base import ObjectInfo, ObjectMeta, Provider
from .schedule import Schedule
from .tree import Tree

log = logging.getLogger(__name__)

DIR_CONTENT_TYPE = "application/x-directory"
OCTET_STREAM = "application/octet-stream"
#: seconds a row open for writing waits at least before its next check (it uploads after the last close)
HELD_OPEN_RECHECK = 0.5
#: seconds a row waits while a copy still reads the provider's object at its key, or an rmdir its contents
BLOCKED_RECHECK = 0.2
#: seconds a folder marker waits for its contents to land (they would move its times on a disk)
MARKER_RECHECK = 0.5
#: the longest error text a row keeps
MAX_ERROR_TEXT = 500


def object_meta(e: Entry, layout: Layout) -> ObjectMeta:
    """The metadata an upload of row e stores (setxattr checks it against the provider's limit first)."""
    if e.kind == "dir":
        ct = DIR_CONTENT_TYPE
    elif stat.S_ISREG(e.mode):
        ct = layout.content_type(keys.as_path(e.key))
    else:
        ct = OCTET_STREAM  # links and special files, as s3fs stores them
    return ObjectMeta(mtime=e.mtime, mode=e.mode, uid=e.uid, gid=e.gid, content_type=ct, xattrs=dict(e.xattrs),
                      ctime=e.ctime or None, atime=e.atime or None, rdev=e.rdev or None)


class Writeback:
    """Carrying pending rows to their providers (thread-safe; run by the uploader's threads)."""

    def __init__(self, tree: Tree, schedule: Schedule) -> None:
        self.tree = tree
        self.state = tree.state
        self.index = tree.index
        self.schedule = schedule

    def jobs(self) -> UploadJobs:
        """The three functions the uploader runs."""
        return UploadJobs(due_in=self.due_in, sync=self.sync, failed=self.failed)

    def due_in(self, key: str) -> float | None:
        """0 when key's pending operation can run now, seconds to wait, or None if nothing is pending."""
        with self.state.lock:
            e = self.index.get(key)
            if e is None or not e.pending:
                self.schedule.settled(key)
                return None
            node = self.state.nodes.get(key)
            if node is not None and e.op == OP_PUT and (node.writers > 0 or node.dirty):
                return max(self.schedule.delay, HELD_OPEN_RECHECK)  # uploaded after the last close
            quiet = self.schedule.quiet_left(key)
            if quiet > 0:
                return quiet
            if e.op != OP_COPY and self.index.is_copy_source(key):
                return BLOCKED_RECHECK  # a copy still reads the provider's object at this key
            if e.op == OP_RMDIR and self.index.pending_below(key) > 0:
                return BLOCKED_RECHECK
            if e.op == OP_MKDIR and self.index.pending_below(key) > 0:
                return MARKER_RECHECK
            return 0.0

    def _meta_of(self, e: Entry) -> ObjectMeta:
        return object_meta(e, self.tree.layout)

    def sync(self, key: str) -> None:
        """Carry key's pending operation to its provider; raise to have it retried."""
        tree = self.tree
        with self.state.lock:
            e = self.index.get(key)
            if e is None or not e.pending:
                return
            op, gen, meta = e.op, e.generation, self._meta_of(e)
            source = e.provider
            provider = tree.providers[source]
            # routing rules see the final size: a file that grew past a boundary moves
            target = tree.route(key, e.size) if e.kind == "file" and op in (OP_PUT, OP_COPY) else e.provider
            data_path = tree.data.path(e.data_name) if e.data_name and e.chunks is None else None
            copy_src, was_remote, size = e.copy_src, e.remote, e.size
            self.index.amend(e, state=State.UPLOADING)
        info: ObjectInfo | None = None
        try:
            if target != source:
                info = self._move_across(key, size, provider, tree.providers[target], op, copy_src,
                                         data_path, was_remote, meta)
            elif op == OP_PUT:
                info = provider.put_file(key, data_path, meta)  # type: ignore[arg-type]
            elif op == OP_META:
                info = provider.set_meta(key, meta)
            elif op == OP_COPY:
                info = provider.copy(copy_src, key, meta)  # type: ignore[arg-type]
            elif op == OP_DELETE:
                provider.delete(key)
            elif op == OP_MKDIR:
                provider.make_dir(key, meta)
            elif op == OP_RMDIR:
                provider.remove_dir(key)
        except NotFound:
            if op in (OP_META, OP_COPY):
                log.error("%s of %s failed: the object is gone from %s; dropping the change",
                          op, key, provider.name)
                self._settle(key, e, gen, op, None, gone=True)
                return
            raise
        except BaseException:
            with self.state.lock:
                if e.state == State.UPLOADING:
                    self.index.amend(e, state=State.DIRTY)
            raise
        tree.remote.mark_up(target)
        self._settle(key, e, gen, op, info, provider=target)

    def _move_across(self, key: str, size: int, source: Provider, target: Provider, op: str | None,
                     copy_src: str | None, data_path: str | None, was_remote: bool,
                     meta: ObjectMeta) -> ObjectInfo:
        """Upload key to the provider its routing rule now selects, and leave no copy behind."""
        staged = None
        if data_path is None:  # a rename of data that lives only in the source provider
            staged = self._stage(source, copy_src or key, size)
            data_path = self.tree.data.path(staged)
        try:
            if op == OP_PUT and was_remote:
                source.delete(key)  # the cache holds the bytes: deleting first never loses them
            log.info("%s goes to provider %s (routing rules, %d bytes)", key, target.name, size)
            return target.put_file(key, data_path, meta)
        finally:
            if staged:
                self.tree.data.remove(staged)

    def _stage(self, source: Provider, key: str, size: int) -> str:
        """Copy an object into a scratch cache file (its name returned), for another provider."""
        chunk = self.tree.settings.chunk_size
        name, fd = self.tree.data.create(size)
        try:
            for off in range(0, size, chunk):
                os.pwrite(fd, source.get_range(key, off, min(chunk, size - off)), off)
        finally:
            os.close(fd)
        return name

    def _settle(self, key: str, e: Entry, gen: int, op: str | None, info: ObjectInfo | None, gone: bool = False,
                provider: str | None = None) -> None:
        """Record a finished operation, unless the entry changed while it ran."""
        with self.state.lock:
            cur = self.index.get(key)
            if provider is not None and provider != e.provider:
                self.index.amend(e, provider=provider)  # the object now lives there (and only there)
            if cur is e and e.generation == gen:
                node = self.state.nodes.get(key)
                self._parent_may_follow(key)
                if e.kind == "dir" and op == OP_MKDIR and not gone:
                    # kept, clean: SeaweedFS drops folder-marker metadata, and the mount shows what it set
                    self.index.amend(e, op=None, state=State.CLEAN, remote=True, attempts=0, last_error=None)
                    self.index.put(e)
                elif op in TOMBSTONES or gone or (e.data_name is None and node is None) or e.kind == "dir":
                    if op in TOMBSTONES:
                        self.state.note_deleted(key.rstrip("/"))
                    self.index.remove(key)
                else:
                    landed = {} if info is None else {"etag": info.etag, "size": info.size,
                                                      "mtime": info.mtime if info.mtime else e.mtime}
                    self.index.amend(e, op=None, state=State.CLEAN, copy_src=None, remote=True, attempts=0,
                                     last_error=None, **landed)
                    self.index.put(e)
                self.schedule.settled(key)
            elif cur is e:
                self.index.amend(e, state=State.DIRTY, remote=e.remote or op not in TOMBSTONES)
            elif op not in TOMBSTONES and not gone:
                # the key was renamed or removed while its bytes travelled: the provider now
                # holds an object nobody wants there, unless a newer change overwrites it
                if cur is None:
                    self.index.put(Entry(key, e.provider, kind=e.kind, state=State.DIRTY,
                                         op=OP_RMDIR if e.kind == "dir" else OP_DELETE, remote=True))
                    self.schedule.now(key)
                else:
                    self.index.amend(cur, remote=True)
                    self.index.put(cur)
        self._tell_remote(key, e, op, info, gone, provider or e.provider)

    def _tell_remote(self, key: str, e: Entry, op: str | None, info: ObjectInfo | None, gone: bool,
                     pname: str) -> None:
        """The listing cache learns what the provider now holds at key (without the core lock)."""
        remote = self.tree.remote
        if gone:
            remote.forget(key)
        elif op in TOMBSTONES:
            remote.record(key, None)
        elif info is not None:
            remote.record(key, (pname, info))
        elif op == OP_MKDIR:
            remote.record(key, (pname, ObjectInfo(key=keys.dir_key(key.rstrip("/")), size=0, mtime=e.mtime,
                                                  is_dir=True, mode=e.mode, uid=e.uid, gid=e.gid,
                                                  ctime=e.ctime or None, atime=e.atime or None,
                                                  xattrs=dict(e.xattrs))))
        else:
            remote.forget(key)

    def _parent_may_follow(self, key: str) -> None:
        """The last pending entry below a folder whose marker waits for its contents has landed:
        the marker goes now rather than at its next check. Called with the core lock held."""
        parent = keys.parent(key.rstrip("/"))
        row = self.index.get(keys.dir_key(parent)) if parent else None
        if row is not None and row.op == OP_MKDIR and self.index.pending_below(keys.dir_key(parent)) <= 1:
            self.schedule.now(row.key)

    def failed(self, key: str, error: BaseException, attempts: int) -> None:
        """Record a failed attempt (journal and status)."""
        with self.state.lock:
            e = self.index.get(key)
            if e is None:
                return
            self.index.amend(e, attempts=attempts, last_error=f"{type(error).__name__}: {error}"[:MAX_ERROR_TEXT],
                             state=State.DIRTY if e.state == State.UPLOADING else e.state)
            self.index.put(e)
