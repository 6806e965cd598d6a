"""The uploader's side of the core: when a pending row may go, carrying it out, and recording the outcome.

The uploader knows only three functions of this part (UploadJobs): due_in, sync and failed.
sync reads what it needs under the core lock, talks to the provider without it, and settles
the row under the lock again, unless the row changed while its bytes travelled.

Uploads are conditional (config `conflicts: keep-both`, the default): a key storefs believes
absent is written only if it still is, a key whose version storefs knows (its row's etag) only
if it still has that version. When another writer changed the key first, its version keeps the
key and storefs' bytes go next to it as a conflict copy (storefs.core.conflicts). A change the
provider refuses for good is parked: kept in the cache and journal, not retried until
`storefs retry` (or a later change of the file) puts it back in the queue.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import stat
import time
from collections.abc import Callable
from typing import NoReturn

from .. import keys
from ..cache.journal import (
    OP_COPY,
    OP_DELETE,
    OP_META,
    OP_MKDIR,
    OP_PUT,
    OP_RMDIR,
    TOMBSTONES,
    ConflictRecord,
    Entry,
    State,
)
from ..cache.uploader import Parked, UploadJobs
from ..errors import (
    AccessDenied,
    Conflict,
    LayoutError,
    MetadataTooLarge,
    NameTooLong,
    NotFound,
    ProviderError,
    Rejected,
    StorefsError,
)
from ..layout import Layout
from ..providers.base import ObjectInfo, ObjectMeta, Provider
from .conflicts import candidates, host_label
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
#: what an error text shortened to MAX_ERROR_TEXT keeps of its start (the rest is its end, where the
#: server's reason usually is: a long key in the middle must not push it out)
ERROR_TEXT_HEAD = 200
#: config `conflicts` value under which uploads are conditional
KEEP_BOTH = "keep-both"
#: a provider's refusals that no retry will change: the row is parked (AccessDenied too, once the
#: provider's credentials check passes: then the key is refused, not the credentials)
PERMANENT = (Rejected, LayoutError, NameTooLong, MetadataTooLarge)
#: how a rename whose source another writer changed was settled: the version renamed went to the
#: destination from the cache, or (not cached) the destination got the source's current version
SOURCE_CACHED = "cached"
SOURCE_NOW = "source"


def error_text(error: BaseException) -> str:
    """'Type: message', at most MAX_ERROR_TEXT characters, its start and its end kept."""
    text = f"{type(error).__name__}: {error}"
    if len(text) <= MAX_ERROR_TEXT:
        return text
    return text[:ERROR_TEXT_HEAD] + " ... " + text[-(MAX_ERROR_TEXT - ERROR_TEXT_HEAD - 5):]


def object_meta(e: Entry, layout: Layout) -> ObjectMeta:
    """The metadata an upload of row e stores (setxattr checks it against the provider's limit first)."""
    if e.kind == "dir":
        ct = DIR_CONTENT_TYPE
    elif stat.S_ISREG(e.mode):
        ct = layout.content_type(keys.as_path(e.key))
    else:
        ct = OCTET_STREAM  # links and special files, as s3fs stores them
    return ObjectMeta(mtime_ns=e.mtime_ns, mode=e.mode, uid=e.uid, gid=e.gid, content_type=ct, xattrs=dict(e.xattrs),
                      ctime_ns=e.ctime_ns or None, atime_ns=e.atime_ns or None, rdev=e.rdev or None)


class Writeback:
    """Carrying pending rows to their providers (thread-safe; run by the uploader's threads)."""

    def __init__(self, tree: Tree, schedule: Schedule) -> None:
        self.tree = tree
        self.state = tree.state
        self.index = tree.index
        self.schedule = schedule
        #: conditional uploads and conflict copies (config `conflicts: keep-both`), else last writer wins
        self.keep_both = tree.cfg.conflicts == KEEP_BOTH
        #: wall-clock seconds, for conflict-copy names and records (tests set their own)
        self.wall: Callable[[], float] = time.time
        #: the host part of conflict-copy names
        self.host = host_label()
        #: keys parked lately, a superset of the rows parked now (a write unparks one without telling
        #: this part): folder markers wait for the pending rows below them, except these. Core lock.
        self._parked: set[str] = {e.key for e in self.index.pending() if e.state == State.PARKED}

    def jobs(self) -> UploadJobs:
        """The three functions the uploader runs."""
        return UploadJobs(due_in=self.due_in, sync=self.sync, failed=self.failed)

    def due_in(self, key: str) -> float | None:
        """0 when key's pending operation can run now, seconds to wait, or None if nothing is pending."""
        with self.state.lock:
            e = self.index.get(key)
            if e is None or not e.pending or e.state == State.PARKED:
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
            if e.op == OP_RMDIR and self._waiting_below(key) > 0:
                return BLOCKED_RECHECK
            if e.op == OP_MKDIR and self._waiting_below(key) > 0:
                return MARKER_RECHECK
            return 0.0

    def _waiting_below(self, prefix: str) -> int:
        """Pending rows below folder prefix that will go by themselves (parked ones wait for an operator).
        Called with the core lock held."""
        n = self.index.pending_below(prefix)
        if n and self._parked:
            self._parked = {k for k in self._parked
                            if (r := self.index.get(k)) is not None and r.state == State.PARKED}
            n -= sum(1 for k in self._parked if k.startswith(prefix))
        return n

    def _meta_of(self, e: Entry) -> ObjectMeta:
        return object_meta(e, self.tree.layout)

    def sync(self, key: str) -> None:
        """Carry key's pending operation to its provider; raise to have it retried, Parked when refused for good."""
        tree = self.tree
        with self.state.lock:
            e = self.index.get(key)
            if e is None or not e.pending or e.state == State.PARKED:
                return
            op, gen, meta = e.op, e.generation, self._meta_of(e)
            source = e.provider
            provider = tree.providers[source]
            # routing rules see the final size: a file that grew past a boundary moves
            target = tree.route(key, e.size) if e.kind == "file" and op in (OP_PUT, OP_COPY) else e.provider
            data_path = tree.data.path(e.data_name) if e.data_name and e.chunks is None else None
            copy_src, was_remote, size = e.copy_src, e.remote, e.size
            # the version the change is based on: of the key, or of the source for a copy
            etag = e.etag if self.keep_both else None
            self.index.amend(e, state=State.UPLOADING)
        info: ObjectInfo | None = None
        source_changed: str | None = None  # a rename whose source another writer changed: how it was settled
        try:
            if target != source:
                info = self._move_across(key, size, provider, tree.providers[target], op, copy_src,
                                         data_path, was_remote, meta)
            elif op == OP_PUT:
                info = self._put(provider, key, data_path, meta, was_remote, etag)  # type: ignore[arg-type]
            elif op == OP_META:
                info = self._set_meta(provider, key, meta, etag)
            elif op == OP_COPY:
                info, source_changed = self._copy(provider, copy_src, key, meta, etag,  # type: ignore[arg-type]
                                                  data_path, was_remote)
            elif op == OP_DELETE:
                provider.delete(key, if_match=etag)
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
            self._retry_later(e)
            raise
        except Conflict as c:
            try:
                self._conflicted(key, e, gen, op, provider, data_path, meta, c)
            except PERMANENT as refused:  # the conflict copy's own upload
                self._park(key, e, gen, op, provider, refused)
            except BaseException:
                self._retry_later(e)
                raise
            return
        except PERMANENT as refused:
            self._park(key, e, gen, op, provider, refused)
        except AccessDenied as refused:
            if not self._credentials_work(provider):
                self._retry_later(e)
                raise
            self._park(key, e, gen, op, provider, refused)
        except BaseException:
            self._retry_later(e)
            raise
        tree.remote.mark_up(target)
        self._settle(key, e, gen, op, info, provider=target)
        if source_changed == SOURCE_CACHED:
            self._record(OP_COPY, key, None, provider.name,
                         f"its source {copy_src} changed since the rename: the version renamed went to {key} "
                         f"from this mount's cache, and {copy_src} keeps the other writer's")
        elif source_changed == SOURCE_NOW:
            self._record(OP_COPY, key, None, provider.name,
                         f"its source {copy_src} changed since the rename, and the version renamed is not cached "
                         f"here: {key} holds the source's current version, and {copy_src} keeps it")
            tree.evict(e)  # the cached bytes (if any) are not the version the provider copied
            tree.remote.forget(key)

    def _retry_later(self, e: Entry) -> None:
        """The attempt failed: the row waits for its next try, dirty."""
        with self.state.lock:
            if e.state == State.UPLOADING:
                self.index.amend(e, state=State.DIRTY)

    def _put(self, provider: Provider, key: str, data_path: str, meta: ObjectMeta, was_remote: bool,
             etag: str | None) -> ObjectInfo:
        """Upload key's bytes on the condition that the provider still holds the version the change started from."""
        if not self.keep_both:
            return provider.put_file(key, data_path, meta)
        if not was_remote:
            return provider.put_file(key, data_path, meta, if_absent=True)
        if etag is None:
            log.debug("%s: no version of it in %s is known: uploading without a condition", key, provider.name)
            return provider.put_file(key, data_path, meta)
        try:
            return provider.put_file(key, data_path, meta, if_match=etag)
        except NotFound:
            log.info("%s was deleted from %s since storefs read it: uploading it anew", key, provider.name)
            return provider.put_file(key, data_path, meta, if_absent=True)

    def _set_meta(self, provider: Provider, key: str, meta: ObjectMeta, etag: str | None) -> ObjectInfo:
        """Replace key's metadata if the object is still the version the change was made on (a head just
        before: set_meta has no condition of its own)."""
        if etag is not None:
            now = provider.head(key).etag
            if now is not None and now != etag:
                raise Conflict(f"{key}: {provider.name} holds version {now}, the change was made on {etag}")
        return provider.set_meta(key, meta)

    def _copy(self, provider: Provider, src: str, key: str, meta: ObjectMeta, etag: str | None,
              data_path: str | None, was_remote: bool) -> tuple[ObjectInfo, str | None]:
        """The server-side copy of a rename, and (when its source had changed since storefs saw it) how that
        was settled: the version renamed goes to key from the cache where the cache holds all of it
        (SOURCE_CACHED), else key gets what the source holds now, with its metadata (SOURCE_NOW). Either
        way the source keeps the other writer's version: its delete meets the same conflict."""
        if etag is None:
            return provider.copy(src, key, meta), None
        try:
            return provider.copy(src, key, meta, if_match=etag), None
        except Conflict:
            if data_path is not None:
                return self._put(provider, key, data_path, meta, was_remote, None), SOURCE_CACHED
            return provider.copy(src, key), SOURCE_NOW

    # ---- conflicts: another writer changed the key first ----------------------------------------

    def _conflicted(self, key: str, e: Entry, gen: int, op: str | None, provider: Provider, data_path: str | None,
                    meta: ObjectMeta, c: Conflict) -> None:
        """Their version keeps the key: storefs' bytes go to a conflict copy (put), its change is dropped
        (meta), its delete is undone (delete); recorded and logged once."""
        if op == OP_PUT or (op == OP_COPY and data_path is not None):
            # bytes of this mount's (a rename's from the cache, when a third writer took its destination)
            self._keep_both(key, e, gen, op, provider, data_path, meta)
            return
        with self.state.lock:
            cur = self.index.get(key)
            if cur is e and key in self.state.nodes:
                self._retry_later(e)  # it goes again after the last close, which sees the conflict anew
                raise ProviderError(f"{op} of {key} met a newer version in {provider.name} while the file is "
                                    "open: settled after its last close")
            settled = cur is e and e.generation == gen
            if settled:
                self.index.remove(key)
                if op != OP_DELETE:
                    self.tree.data.discard(e.data_name)  # the cached bytes are not the provider's version
                self.schedule.settled(key)
            else:
                self._retry_later(e)  # changed meanwhile: the newer change goes, and meets the conflict itself
        self.tree.remote.forget(key)
        if settled:
            what = "the file stays (their version)" if op == OP_DELETE else "this mount's metadata change is dropped"
            self._record(op or "", key, None, provider.name, f"{what}: {c}")

    def _keep_both(self, key: str, e: Entry, gen: int, op: str, provider: Provider, data_path: str | None,
                   meta: ObjectMeta) -> None:
        """Upload the bytes storefs holds for key as its conflict copy, and move key's row there."""
        with self.state.lock:
            if self.index.get(key) is not e or e.generation != gen or key in self.state.nodes:
                self._retry_later(e)
                if self.index.get(key) is e and e.generation == gen:
                    raise ProviderError(f"{key} changed in {provider.name} while it is open here: its conflict "
                                        "copy is made after the last close")
                return  # changed meanwhile: its latest bytes go, and meet the conflict themselves
        ckey, info = self._upload_copy(provider, key, data_path, meta)
        with self.state.lock:
            moved = self.index.get(key) is e and e.generation == gen and key not in self.state.nodes
            if moved:
                with self.index.transaction():
                    self.index.remove(key)
                    if self.index.get(ckey) is None:
                        self.index.put(dataclasses.replace(
                            e, key=ckey, op=None, state=State.CLEAN, remote=True, copy_src=None, etag=info.etag,
                            size=info.size, attempts=0, last_error=None))
                    else:
                        self.tree.data.discard(e.data_name)
                self.schedule.settled(key)
            else:
                self._retry_later(e)
        self.tree.remote.forget(key)  # their version, fetched fresh
        self.tree.remote.record(ckey, (provider.name, info))
        self._record(op, key, ckey, provider.name, f"this mount's version is in {ckey}")

    def _upload_copy(self, provider: Provider, key: str, data_path: str | None,
                     meta: ObjectMeta) -> tuple[str, ObjectInfo]:
        """Put the bytes at the first free conflict-copy name of key (never over anything)."""
        for ckey in candidates(key, self.wall(), self.host):
            try:
                return ckey, provider.put_file(ckey, data_path, meta, if_absent=True)  # type: ignore[arg-type]
            except Conflict:
                continue
        raise ProviderError(f"{key}: every conflict-copy name for it is taken in {provider.name}")

    def _record(self, op: str, key: str, ckey: str | None, pname: str, detail: str) -> None:
        """Log a conflict once and remember it in the journal (status lists it, the metric counts it)."""
        log.warning("conflict: %s of %s in %s met a version another writer made first; %s", op, key, pname, detail)
        record = ConflictRecord(at=self.wall(), op=op, key=key, conflict_key=ckey, provider=pname,
                                detail=detail[:MAX_ERROR_TEXT])
        with self.state.lock:
            if not self.index.read_only:
                self.index.journal.add_conflict(record)

    # ---- parked: refused for good -------------------------------------------------------------

    def _credentials_work(self, provider: Provider) -> bool:
        """Whether the provider's credentials check passes (an AccessDenied is then about the key)."""
        try:
            provider.check()
        except StorefsError as e:
            log.warning("credentials check of %s failed: %s", provider.name, e)
            return False
        return True

    def _park(self, key: str, e: Entry, gen: int, op: str | None, provider: Provider,
              refused: Exception) -> NoReturn:
        """Park key's change (kept, not retried) after the provider refused it for good; raises Parked,
        or the refusal itself when the row changed meanwhile (the newer change is tried instead)."""
        reason = error_text(refused)
        with self.state.lock:
            parked = self.index.get(key) is e and e.generation == gen
            if parked:
                self.index.amend(e, state=State.PARKED, last_error=reason, attempts=e.attempts + 1)
                self.index.put(e)
                self._parked.add(key)
                self.schedule.settled(key)
                src = self.index.get(e.copy_src) if op == OP_COPY and e.copy_src else None
                if src is not None and src.op == OP_DELETE:
                    # the rename's source may go only after its copy: it waits for the same retry
                    self.index.amend(src, state=State.PARKED, last_error=f"waits for the parked rename to {key}")
                    self.index.put(src)
                    self._parked.add(src.key)
                    self.schedule.settled(src.key)
            else:
                self._retry_later(e)
        if not parked:
            raise refused
        log.error("%s of %s parked: %s refused it for good (%s); the data stays in the cache. Fix the cause, "
                  "then run `storefs retry`", op, key, provider.name, reason)
        raise Parked(reason) from refused

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
                                                      "mtime_ns": info.mtime_ns or e.mtime_ns}
                    self.index.amend(e, op=None, state=State.CLEAN, copy_src=None, remote=True, attempts=0,
                                     last_error=None, **landed)
                    self.index.put(e)
                self.schedule.settled(key)
            elif cur is e:
                # changed while it travelled: the next upload is based on the version that just landed
                landed_etag = {"etag": info.etag} if info is not None and op not in TOMBSTONES else {}
                self.index.amend(e, state=State.DIRTY, remote=e.remote or op not in TOMBSTONES, **landed_etag)
            elif op not in TOMBSTONES and not gone:
                # the key was renamed or removed while its bytes travelled: the provider now
                # holds an object nobody wants there, unless a newer change overwrites it
                if cur is None:
                    self.index.put(Entry(key, e.provider, kind=e.kind, state=State.DIRTY,
                                         op=OP_RMDIR if e.kind == "dir" else OP_DELETE, remote=True))
                    self.schedule.now(key)
                else:
                    # a newer row took the key: its change is now based on the version that just landed
                    # (a pending copy's etag is its source's, and stays)
                    based_on = {"etag": info.etag} if info is not None and cur.op != OP_COPY else {}
                    self.index.amend(cur, remote=True, **based_on)
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
            remote.record(key, (pname, ObjectInfo(key=keys.dir_key(key.rstrip("/")), size=0, mtime_ns=e.mtime_ns,
                                                  is_dir=True, mode=e.mode, uid=e.uid, gid=e.gid,
                                                  ctime_ns=e.ctime_ns or None, atime_ns=e.atime_ns or None,
                                                  xattrs=dict(e.xattrs))))
        else:
            remote.forget(key)

    def _parent_may_follow(self, key: str) -> None:
        """The last pending entry below a folder whose marker waits for its contents has landed:
        the marker goes now rather than at its next check. Called with the core lock held."""
        parent = keys.parent(key.rstrip("/"))
        row = self.index.get(keys.dir_key(parent)) if parent else None
        if row is not None and row.op == OP_MKDIR and self._waiting_below(keys.dir_key(parent)) <= 1:
            self.schedule.now(row.key)

    def retry(self, key: str) -> int:
        """Put the parked changes at or below key ('' : all) back in the queue; how many there were."""
        with self.state.lock:
            rows = [e for e in self.index.pending() if e.state == State.PARKED
                    and (not key or e.key.rstrip("/") == key or e.key.startswith(key + "/"))]
            sources = (self.index.get(e.copy_src) for e in rows if e.op == OP_COPY and e.copy_src)
            rows += [s for s in sources if s is not None and s.state == State.PARKED and s not in rows]
            with self.index.transaction():
                for e in rows:
                    self.index.amend(e, state=State.DIRTY, attempts=0, last_error=None)
                    self.index.put(e)
        for e in rows:
            self.schedule.now(e.key)
        if rows:
            log.info("%d parked changes at or below %s back in the queue", len(rows), key or "/")
        return len(rows)

    def failed(self, key: str, error: BaseException, attempts: int) -> None:
        """Record a failed attempt (journal and status)."""
        with self.state.lock:
            e = self.index.get(key)
            if e is None:
                return
            self.index.amend(e, attempts=attempts, last_error=error_text(error),
                             state=State.DIRTY if e.state == State.UPLOADING else e.state)
            self.index.put(e)
