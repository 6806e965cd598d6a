"""Changes of the tree's names: mkdir, rmdir, unlink, rename, symlink and mknod.

Each asks what it needs of the providers first (the folder rows it will touch, whether a
provider holds a folder, a remote file's xattrs), then takes the core lock and one journal
transaction to commit, re-checking the rows that may have changed meanwhile.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import stat
import time

from .. import keys
from ..cache.journal import OP_COPY, OP_DELETE, OP_META, OP_MKDIR, OP_PUT, OP_RMDIR, Entry, State
from ..errors import (
    Exists,
    IsADirectory,
    NotADirectory,
    NotEmpty,
    NotPermitted,
    ProviderUnavailable,
    StorefsError,
)
from .conflicts import known_etag
from .files import PERM_BITS, Files
from .lookup import Lookup
from .schedule import Schedule
from .tree import Tree
from .types import Caller, Found

log = logging.getLogger(__name__)

LINK_MODE = stat.S_IFLNK | 0o777  # what s3fs stores for a symlink (decimal 41471)
#: the kinds of node mknod makes, besides regular files
SPECIAL_TYPES = (stat.S_IFIFO, stat.S_IFSOCK, stat.S_IFCHR, stat.S_IFBLK)
#: libfuse's name for an unlinked file it holds open (lib/fuse.c hidden_name(): ".fuse_hidden%08x%08x")
HIDDEN_NAME = re.compile(r"\.fuse_hidden[0-9a-f]{16}")

#: a folder's contents as rename moves them: (key, is a folder, what it is)
Moves = list[tuple[str, bool, Found]]


class Names:
    """Creating, removing and renaming entries (thread-safe)."""

    def __init__(self, tree: Tree, lookup: Lookup, files: Files, schedule: Schedule) -> None:
        self.tree = tree
        self.state = tree.state
        self.index = tree.index
        self.lookup = lookup
        self.files = files
        self.schedule = schedule

    def _new_name(self, key: str) -> tuple[str, Found]:
        """The parent of a new entry at key (its row prepared), or Exists when key is taken."""
        tree = self.tree
        parent_key = keys.parent(key)
        found = tree.require_dir(parent_key)
        parent = tree.prepared(parent_key, found) or found
        if tree.find(key) is not None:
            raise Exists(key)
        return parent_key, parent

    # ---- folders ----------------------------------------------------------------

    def mkdir(self, key: str, mode: int, uid: int, gid: int) -> None:
        """A new folder at key, journaled at once."""
        tree = self.tree
        tree.writable(key)
        tree.layout.check_dir(keys.as_path(key))
        parent_key, parent = self._new_name(key)
        tree.check_new(key, is_dir=True)
        uid, gid, inherit = tree.new_owner(parent, uid, gid)
        perm = (mode & PERM_BITS) | (stat.S_ISGID if inherit else 0)
        now = time.time_ns()
        with self.state.lock, self.index.transaction():
            old = self.index.get(keys.dir_key(key))
            e = Entry(keys.dir_key(key), tree.cfg.default_provider, kind="dir", state=State.DIRTY, op=OP_MKDIR,
                      mtime_ns=now, ctime_ns=now, atime_ns=now, mode=stat.S_IFDIR | perm, uid=uid, gid=gid,
                      remote=bool(old and old.remote), generation=(old.generation + 1) if old else 1)
            self.index.put(e)
            tree.touch_dir(parent_key, parent, now)
        if old is None:
            tree.remote.known_empty(key)
        self.schedule.changed(e.key)

    def rmdir(self, key: str) -> None:
        """Remove the empty folder at key."""
        tree = self.tree
        tree.writable(key)
        if key == tree.root:
            raise NotPermitted("cannot remove the mount root")
        f = tree.find_existing(key)
        if not f.is_dir:
            raise NotADirectory(key)
        names = self.lookup.readdir(key)
        if names:
            log.debug("rmdir %s: not empty, holds %s", key, sorted(names)[:5])
            raise NotEmpty(key)
        parent_key = keys.parent(key)
        parent = tree.prepared(parent_key, tree.find(parent_key))
        remote = self._provider_has_dir(key, f)
        with self.state.lock, self.index.transaction():
            self._drop_dir(key, f, remote)
            tree.touch_dir(parent_key, parent, time.time_ns())

    def _provider_has_dir(self, key: str, f: Found) -> bool:
        """Whether a provider may hold folder key (asked, without the core lock, only when the cache
        knows the folder through its children alone): its removal then needs a tombstone."""
        if f.remote is not None or f.entry is not None:
            return True
        with self.state.lock:
            old = self.index.get(keys.dir_key(key))
            if old is not None and (old.remote or self.schedule.is_busy(old.key)):
                return True
        try:
            return self.tree.remote.lookup(key) is not None
        except ProviderUnavailable:
            return True  # removing a marker that is not there is harmless

    def _drop_dir(self, key: str, f: Found, remote: bool) -> None:
        """Remove the empty folder key locally, leaving a tombstone if a provider may have it
        (remote, from _provider_has_dir, asked before the lock was taken). Called with the core lock held."""
        dkey = keys.dir_key(key)
        old = self.index.get(dkey)
        remote = remote or f.remote is not None or (old is not None and (old.remote or self.schedule.is_busy(dkey)))
        if remote:
            provider = old.provider if old else (f.remote[0] if f.remote else self.tree.cfg.default_provider)
            self.index.put(Entry(dkey, provider, kind="dir", state=State.DIRTY, op=OP_RMDIR, remote=True,
                                 generation=(old.generation + 1) if old else 1))
            self.schedule.changed(dkey)
        elif old is not None:
            self.index.remove(dkey)

    # ---- links and special files ----------------------------------------------------------

    def symlink(self, key: str, target: bytes, caller: Caller) -> None:
        """A link as s3fs stores it: an object whose body is the target, never interpreted here."""
        self._make_node(key, LINK_MODE, caller, target, 0)

    def mknod(self, key: str, mode: int, rdev: int, caller: Caller) -> None:
        """A FIFO, socket or device node: a zero-byte object whose mode carries the type (s3fs's form).
        The kernel serves FIFO and socket I/O; device nodes are shown, never opened (the mount is nodev)."""
        kind = stat.S_IFMT(mode)
        if kind in (0, stat.S_IFREG):
            self.files.release(self.files.create(key, mode, caller.uid, caller.gid, exclusive=True))
            return
        if kind not in SPECIAL_TYPES:
            raise StorefsError(f"{key}: mknod of file type {kind:o}", code=errno.EINVAL)
        if kind in (stat.S_IFCHR, stat.S_IFBLK):
            if not caller.is_root:
                raise NotPermitted(f"{key}: only root makes device nodes")
            if os.geteuid() != 0 and self.tree.providers[self.tree.route(key, 0)].kind == "local":
                raise NotPermitted(f"{key}: a local folder takes device nodes only from a daemon run as root")
        device = rdev if kind in (stat.S_IFCHR, stat.S_IFBLK) else 0
        self._make_node(key, kind | (mode & PERM_BITS), caller, b"", device)

    def _make_node(self, key: str, mode: int, caller: Caller, body: bytes, rdev: int) -> None:
        """A new link or special file, complete at once: journaled and scheduled like a closed file."""
        tree = self.tree
        tree.writable(key)
        tree.layout.check_file(keys.as_path(key))
        parent_key, parent = self._new_name(key)
        tree.check_new(key)
        uid, gid, _ = tree.new_owner(parent, caller.uid, caller.gid)
        name, fd = tree.data.create()
        try:
            if body:
                os.pwrite(fd, body, 0)
        finally:
            os.close(fd)
        now = time.time_ns()
        with self.state.lock, self.index.transaction():
            old = self.index.get(key)
            e = Entry(key, tree.route(key, len(body)), kind="file", state=State.DIRTY, op=OP_PUT, data_name=name,
                      size=len(body), mtime_ns=now, ctime_ns=now, atime_ns=now, mode=mode, uid=uid, gid=gid, rdev=rdev,
                      generation=(old.generation + 1) if old else 1,
                      remote=bool(old and (old.remote or self.schedule.is_busy(key))))
            self.index.put(e)
            tree.touch_dir(parent_key, parent, now)
            self.state.recreated(key)
        self.schedule.changed(key)

    # ---- unlink ----------------------------------------------------------------------

    def unlink(self, key: str) -> None:
        """Remove the file at key (an open one stays readable through its handles)."""
        tree = self.tree
        tree.writable(key)
        f = tree.find_existing(key)
        if f.is_dir:
            raise IsADirectory(key)
        parent_key = keys.parent(key)
        with self.state.lock:
            node = self.state.nodes.get(key)
        hidden = node is not None and node.hidden_key == key  # its unlink already touched the folder
        parent = None if hidden else tree.prepared(parent_key, tree.find(parent_key))
        with self.state.lock, self.index.transaction():
            self._unlink_locked(key, f)
            tree.touch_dir(parent_key, parent, time.time_ns())

    def _unlink_locked(self, key: str, f: Found) -> None:
        """Called with the core lock held."""
        node = self.state.nodes.pop(key, None)
        if node is not None:
            node.unlinked = True
        e = self.index.get(key)
        # a file opened from a listing has its row only in its node until the last close journals it
        row = e if e is not None or node is None else node.entry
        remote = f.remote is not None or (row is not None and (row.remote or self.schedule.is_busy(key)))
        if e is not None and node is None:
            self.tree.data.discard(e.data_name)
        if remote:
            provider = row.provider if row else f.remote[0]  # type: ignore[index]
            self.index.put(Entry(key, provider, kind="file", state=State.DIRTY, op=OP_DELETE, remote=True,
                                 generation=(row.generation + 1) if row else 1, etag=known_etag(row, f)))
            self.schedule.changed(key)
        elif e is not None:
            self.index.remove(key)

    def _is_hide(self, old: str, new: str) -> bool:
        """Whether rename old -> new is libfuse hiding an unlinked open file: its exact name pattern, in
        the same folder, of a file open here. Anything else is a user's rename to such a name, kept as asked."""
        if keys.parent(old) != keys.parent(new) or not HIDDEN_NAME.fullmatch(keys.name(new)):
            return False
        with self.state.lock:
            return old in self.state.nodes

    def _hide(self, old: str, hidden: str) -> None:
        """libfuse's unlink of an open file: a rename to .fuse_hiddenN, unlinked at the last close.

        For storefs that is an unlink now, with the open file still reachable under the hidden
        name for fstat and friends; the hidden name is never journaled, listed or uploaded.
        """
        tree = self.tree
        tree.writable(old)
        f = tree.find_existing(old)
        parent_key = keys.parent(old)
        parent = tree.prepared(parent_key, tree.find(parent_key))
        with self.state.lock, self.index.transaction():
            node = self.state.nodes.get(old)
            self._unlink_locked(old, f)
            tree.touch_dir(parent_key, parent, time.time_ns())
            if node is not None:
                node.hidden_key = hidden
                self.state.nodes[hidden] = node

    # ---- rename ------------------------------------------------------------------------

    def rename(self, old: str, new: str) -> None:
        """Move old to new (a folder with everything below it), replacing what new held."""
        tree = self.tree
        tree.writable(old)
        if old == new:
            return
        if self._is_hide(old, new):
            self._hide(old, new)
            return
        src = tree.find_existing(old)
        tree.layout.check_rename(keys.as_path(old), keys.as_path(new), src.is_dir)
        if not src.is_dir:
            tree.layout.check_content_type(keys.as_path(new))
        new_parent = tree.prepared(keys.parent(new), tree.require_dir(keys.parent(new)))
        old_parent = tree.prepared(keys.parent(old), tree.find(keys.parent(old)))
        dst = tree.find(new)
        if src.is_dir:
            if new.startswith(keys.dir_key(old)):
                raise StorefsError(f"cannot move {old} into itself", code=errno.EINVAL)
            if dst is not None and not dst.is_dir:
                raise NotADirectory(new)
            if dst is not None and self.lookup.readdir(new):
                raise NotEmpty(new)
        elif dst is not None and dst.is_dir:
            raise IsADirectory(new)
        moves = self._collect_tree(old) if src.is_dir else []
        everything: Moves = [(old, src.is_dir, src), *moves]
        self._check_targets(old, new, everything, dst is None)
        # what needs a provider's answer is asked now: never under the core lock
        remote_dirs = {path: self._provider_has_dir(path, f) for path, is_dir, f in everything if is_dir}
        dir_rows = {path: tree.prepared(path, f) for path, is_dir, f in everything if is_dir}
        remote_xattrs = {path: tree.remote_xattrs(f.remote[0], path) for path, is_dir, f in everything
                         if not is_dir and f.entry is None and f.remote is not None}
        dst_remote = dst is not None and dst.is_dir and self._provider_has_dir(new, dst)
        with self.state.lock, self.index.transaction():
            if dst is not None:
                if dst.is_dir:
                    self._drop_dir(new, dst, dst_remote)
                else:
                    self._unlink_locked(new, dst)
            if src.is_dir:
                self._move_tree(old, new, everything, remote_dirs, dir_rows, remote_xattrs)
            else:
                self._move_file(old, new, src, remote_xattrs)
            now = time.time_ns()
            tree.touch_dir(keys.parent(old), old_parent, now)
            if keys.parent(new) != keys.parent(old):
                tree.touch_dir(keys.parent(new), new_parent, now)

    def _check_targets(self, old: str, new: str, everything: Moves, new_name: bool) -> None:
        """Every key the rename makes, checked against its providers' limits before anything moves:
        the folder's whole contents were listed for the move, so a deep key too long answers here."""
        tree = self.tree
        if new_name:
            tree.check_new(new, everything[0][1])
        for path, is_dir, _ in everything[1:] if new_name else everything:
            tree.check_key(new + path[len(old):], is_dir)

    def _move_file(self, old: str, new: str, src: Found, remote_xattrs: dict[str, dict[str, bytes]]) -> None:
        """Called with the core lock held; remote_xattrs holds what rename asked before it."""
        node = self.state.nodes.pop(old, None)
        e = self.index.get(old)
        if e is not None and e.is_tombstone:
            e = None
        if e is None and node is not None:
            e = node.entry  # opened from the provider, not journaled yet
        if e is not None:
            src_remote = e.remote or self.schedule.is_busy(old) or (src.remote is not None)
            src_etag = known_etag(e, src)
            if self.index.get(old) is e:
                self.index.remove(old)
            dst_old = self.index.get(new)
            # a copy's etag is its source's; new bytes are based on what new held
            copy = {"op": OP_COPY, "copy_src": old} if e.op in (None, OP_META) else (
                {} if e.op == OP_COPY else {"etag": known_etag(dst_old, None)})
            self.index.amend(e, key=new, ctime_ns=time.time_ns(), remote=bool(dst_old and dst_old.remote),
                             state=State.DIRTY,
                             generation=max(e.generation, dst_old.generation if dst_old else 0) + 1, **copy)
            self.index.put(e)
        else:
            pname, info = src.remote  # type: ignore[misc]
            src_remote = True
            src_etag = info.etag
            dst_old = self.index.get(new)
            e = Entry(new, pname, kind="file", state=State.DIRTY, op=OP_COPY, copy_src=old, size=info.size,
                      mtime_ns=info.mtime_ns, ctime_ns=time.time_ns(), atime_ns=info.atime_ns or 0, rdev=info.rdev or 0,
                      mode=info.mode or self.tree.settings.file_mode, uid=info.uid, gid=info.gid,
                      xattrs=remote_xattrs.get(old, dict(info.xattrs)), remote=bool(dst_old and dst_old.remote),
                      generation=(dst_old.generation + 1) if dst_old else 1, etag=info.etag)
            self.index.put(e)
        if src_remote:
            old_gen = self.index.get(old)
            self.index.put(Entry(old, e.provider, kind="file", state=State.DIRTY, op=OP_DELETE, remote=True,
                                 generation=(old_gen.generation + 1) if old_gen else 1, etag=src_etag))
            self.schedule.changed(old)
        if node is not None:
            self.state.nodes[new] = node
        self.schedule.changed(new)

    def _collect_tree(self, key: str) -> Moves:
        """Everything below folder key (files and folders), from the journal and the providers."""
        out: Moves = []
        stack = [key]
        while stack:
            d = stack.pop()
            for name in self.lookup.readdir(d):
                child = keys.child(d, name)
                f = self.tree.find(child)
                if f is None:
                    continue
                out.append((child, f.is_dir, f))
                if f.is_dir:
                    stack.append(child)
        return out

    def _move_tree(self, old: str, new: str, everything: Moves, remote_dirs: dict[str, bool],
                   dir_rows: dict[str, Found | None], remote_xattrs: dict[str, dict[str, bytes]]) -> None:
        """Called with the core lock held, with what the providers said asked before it."""
        tree = self.tree
        for path, is_dir, f in everything:
            target = new + path[len(old):]
            if is_dir:  # a moved folder keeps its mode, owner, times and xattrs
                d = self.index.get(keys.dir_key(path))
                prepared = dir_rows[path] or f
                row = d if d is not None and not d.is_tombstone else (
                    prepared.entry if prepared.entry is not None else tree.bare_dir_row(path))
                self.index.put(Entry(keys.dir_key(target), row.provider, kind="dir", state=State.DIRTY,
                                     op=OP_MKDIR, mtime_ns=row.mtime_ns, ctime_ns=time.time_ns(), atime_ns=row.atime_ns,
                                     mode=row.mode, uid=row.uid, gid=row.gid, xattrs=dict(row.xattrs)))
                self.schedule.changed(keys.dir_key(target))
            else:
                self._move_file(path, target, f, remote_xattrs)
        for path, is_dir, f in reversed(everything):
            if is_dir:
                self._drop_dir(path, f, remote_dirs[path])
