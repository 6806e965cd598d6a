"""Changes of an entry's metadata: chmod, chown, utimens and the user.* xattrs (storefs' own read-only ones too).

The row a change starts from is built first (that may ask a provider), then the core lock
is taken to commit; a row that changed meanwhile carries the change instead.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import stat
import time
from collections.abc import Callable
from typing import Any

from .. import keys
from ..cache.journal import OP_META, OP_MKDIR, Entry, State
from ..errors import AccessRefused, NoAttribute, NotFound, NotPermitted, NotSupported
from .files import PERM_BITS
from .schedule import Schedule
from .tree import Tree
from .types import TRUSTED, Attr, Caller, Found
from .writeback import object_meta

log = logging.getLogger(__name__)

SETID_BITS = stat.S_ISUID | stat.S_ISGID
USER_PREFIX = "user."
STOREFS_PREFIX = "user.storefs."


class Attrs:
    """Mode, owner, times and extended attributes (thread-safe)."""

    def __init__(self, tree: Tree, schedule: Schedule) -> None:
        self.tree = tree
        self.state = tree.state
        self.index = tree.index
        self.schedule = schedule

    def _meta_entry(self, key: str) -> Entry:
        """The journal row that will carry a metadata change of key (made if needed; may ask a provider)."""
        tree = self.tree
        f = tree.find_existing(key)
        if f.is_dir:
            return tree.dir_row(key, f)
        if f.entry is not None:
            return f.entry
        pname, _ = f.remote  # type: ignore[misc]
        info = tree.providers[pname].head(key)
        return Entry(key, pname, kind="file", state=State.CLEAN, size=info.size, mtime_ns=info.mtime_ns,
                     ctime_ns=info.ctime_ns or 0, atime_ns=info.atime_ns or 0, rdev=info.rdev or 0,
                     mode=info.mode or tree.settings.file_mode, uid=info.uid, gid=info.gid,
                     xattrs=dict(info.xattrs), remote=True, etag=info.etag)

    def _change_meta(self, key: str, change: Callable[[Entry], dict[str, Any]], check: bool = True) -> None:
        """Apply the fields change returns for key's row (it raises to refuse); ctime moves, the provider
        hears of it. What the row must start from is asked of the provider first, without the core lock,
        and (check) the metadata as it would be stored is checked against the provider's limit (E2BIG) there too."""
        self.tree.writable(key)
        e = self._meta_entry(key)
        if check:
            fields = change(e)
            if "xattrs" in fields or e.xattrs:  # mode, owner and times alone fit every provider
                self._check_meta(e, fields)
        with self.state.lock:
            cur = self.index.get(e.key)
            if cur is not None and cur is not e:
                if cur.is_tombstone:
                    raise NotFound(key)
                e = cur  # changed meanwhile: the newer row carries this change too
            fields = change(e)
            op = e.op if e.op is not None else (OP_MKDIR if e.kind == "dir" else OP_META)
            self.index.amend(e, **fields, ctime_ns=time.time_ns(), op=op, state=State.DIRTY,
                             generation=e.generation + 1)
            self.index.put(e)
        self.schedule.changed(e.key)

    def _check_meta(self, e: Entry, fields: dict[str, Any]) -> None:
        """Refuse a change whose metadata, as the upload would store it, a provider of e cannot hold
        (MetadataTooLarge). Provider.check_meta is pure and local by contract: no request, no wait."""
        after = dataclasses.replace(e, **fields, ctime_ns=time.time_ns())
        meta = object_meta(after, self.tree.layout)
        if e.kind == "dir":
            self.tree.providers[e.provider].check_meta(e.key, meta)
            return
        for pname in self.tree.stored_in(e.key):
            self.tree.providers[pname].check_meta(e.key, meta)

    # ---- mode, owner, times --------------------------------------------------------------

    def chmod(self, key: str, mode: int, caller: Caller = TRUSTED) -> None:
        """Only the owner or root changes a mode; anyone who writes a file may drop its set-ID bits
        (the kernel asks for exactly that after such a write). A set-group-ID bit the caller's
        groups do not allow is dropped, as Linux does."""
        def change(e: Entry) -> dict[str, Any]:
            new = mode & PERM_BITS
            cur = e.mode & PERM_BITS
            uid, gid = self.tree.owner(e)
            if not caller.is_root and caller.uid != uid:
                if (new | SETID_BITS) != (cur | SETID_BITS) or new & SETID_BITS & ~cur:
                    raise NotPermitted(f"{key}: only the owner (uid {uid}) or root may change its mode")
            elif (new & stat.S_ISGID and not caller.is_root and e.kind != "dir" and not caller.in_group(gid)):
                new &= ~stat.S_ISGID
            return {"mode": (e.mode & ~PERM_BITS) | new}
        self._change_meta(key, change)

    def chown(self, key: str, uid: int, gid: int, caller: Caller = TRUSTED) -> None:
        """Only root gives a file away; its owner may change its group to one of the owner's groups.
        A changed owner drops set-user-ID (and set-group-ID with group-exec) of a file, as Linux."""
        def change(e: Entry) -> dict[str, Any]:
            owner, group = self.tree.owner(e)
            new_uid = owner if uid in (-1, None) else uid
            new_gid = group if gid in (-1, None) else gid
            if not caller.is_root:
                if new_uid != owner:
                    raise NotPermitted(f"{key}: only root may change its owner")
                if new_gid != group and (caller.uid != owner or not caller.in_group(new_gid)):
                    raise NotPermitted(f"{key}: only its owner may change its group, to one of the owner's groups")
            mode = e.mode
            if (new_uid, new_gid) != (owner, group) and e.kind != "dir":
                mode &= ~(stat.S_ISUID | (stat.S_ISGID if mode & stat.S_IXGRP else 0))
            return {"uid": new_uid, "gid": new_gid, "mode": mode}
        self._change_meta(key, change)

    def utimens(self, key: str, atime_ns: int | None, mtime_ns: int | None, caller: Caller = TRUSTED,
                explicit: bool = True) -> None:
        """Set access and modification times in ns (None: leave it). Explicit times only by the owner or
        root; "now" by anyone who may write the file (utimensat(2))."""
        if atime_ns is None and mtime_ns is None:
            return

        def change(e: Entry) -> dict[str, Any]:
            if not caller.is_root:
                uid, gid = self.tree.owner(e)
                if explicit and caller.uid != uid:
                    raise NotPermitted(f"{key}: only the owner (uid {uid}) or root may set its times")
                if (not explicit and caller.uid != uid
                        and not caller.may(Attr(False, 0, 0, e.mode, uid, gid), os.W_OK)):
                    raise AccessRefused(f"{key}: setting the times to now needs write permission")
            times = {"mtime_ns": mtime_ns, "atime_ns": atime_ns}
            return {name: value for name, value in times.items() if value is not None}
        self._change_meta(key, change)

    # ---- extended attributes -----------------------------------------------------------------

    def _xattrs(self, key: str) -> tuple[Found, dict[str, bytes]]:
        tree = self.tree
        f = tree.find_existing(key)
        if f.entry is not None:
            return f, f.entry.xattrs
        if f.remote is not None and not f.is_dir:
            return f, tree.remote_xattrs(f.remote[0], key)
        if f.remote is not None and key != tree.root:
            pname, info = f.remote
            return f, (tree.dir_xattrs(pname, key) if tree.providers[pname].listing_has_metadata
                       else dict(info.xattrs))
        return f, {}

    def getxattr(self, key: str, name: str) -> bytes:
        """The value of xattr name of key (storefs' own read-only ones answered from what storefs knows)."""
        if not name.startswith(USER_PREFIX):
            raise NoAttribute(name)
        f, xattrs = self._xattrs(key)
        if name.startswith(STOREFS_PREFIX):
            value = self._storefs_xattr(key, f, name)
            if value is None:
                raise NoAttribute(name)
            return value.encode()
        if name not in xattrs:
            raise NoAttribute(name)
        return xattrs[name]

    def _storefs_xattr(self, key: str, f: Found, name: str) -> str | None:
        tree = self.tree
        e = f.entry
        pname = e.provider if e else (f.remote[0] if f.remote else tree.cfg.default_provider)
        attr = name[len(STOREFS_PREFIX):]
        if attr == "provider":
            return pname
        if f.is_dir:
            return None
        if attr == "content_type":
            return tree.layout.content_type(keys.as_path(key))
        if attr == "state":
            if e is None or e.op is None:
                return State.CLEAN
            if e.state == State.PARKED:
                return State.PARKED
            return State.UPLOADING if self.schedule.is_busy(key) else State.DIRTY
        if attr == "url":
            return tree.providers[pname].url(key)  # the provider's own expiry (S3: presign_expiry)
        if attr == "size":
            return str(f.remote[1].size) if f.remote else (str(e.size) if e and e.remote and e.op is None else None)
        if attr == "etag":
            return (f.remote[1].etag if f.remote else (e.etag if e else None)) or None
        return None

    def listxattr(self, key: str) -> list[str]:
        """The names of key's own xattrs: storefs' read-only ones answer getxattr by name but are not
        listed, so cp -a and rsync -X do not copy them (a presigned URL holds an access key id)."""
        _, xattrs = self._xattrs(key)
        return [n for n in xattrs if not n.startswith(STOREFS_PREFIX)]

    def setxattr(self, key: str, name: str, value: bytes) -> None:
        """Store a user.* xattr with key's object (storefs' own are read-only)."""
        if not name.startswith(USER_PREFIX):
            # cp -a and rsync -X try ACLs and security labels and shrug at ENOTSUP: no log line
            raise NotSupported(f"{name}: only user.* attributes are stored", quiet=True)
        if name.startswith(STOREFS_PREFIX):
            raise NotPermitted(f"{name} is read-only")
        self.tree.writable(key)
        if key == self.tree.root:
            raise NotSupported(f"{key or '/'}: the mount root keeps no attributes")
        self._change_meta(key, lambda e: {"xattrs": {**e.xattrs, name: bytes(value)}})

    def removexattr(self, key: str, name: str) -> None:
        """Drop xattr name of key."""
        self.tree.writable(key)
        _, xattrs = self._xattrs(key)
        if name not in xattrs:
            raise NoAttribute(name)
        # unchecked: removing is how metadata over a provider's limit is brought back under it
        self._change_meta(key, lambda e: {"xattrs": {k: v for k, v in e.xattrs.items() if k != name}}, check=False)
