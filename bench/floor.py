#!/usr/bin/env python3
"""storefs' own FUSE edge on a core that does nothing but keep bytes in memory: the floor.

`python -m bench` mounts it beside storefs (system "floor") so that one run shows how fast the
small-file workloads can go through this stack at all (mfusepy, libfuse's high-level API,
ctypes, the kernel's FUSE round trips on this machine). The edge, its mount options and its
init are storefs' own (storefs.fs), so storefs against the floor is the cost of storefs'
core (cache files, journal, namespace, providers) and the floor against a peer is the ceiling
of a Python FUSE daemon. Files live in memfds, so reads are answered by fd as storefs' are;
there is no cache folder, no journal, no provider and no upload.

    python -m bench.floor MOUNTPOINT      # foreground; unmount with umount / fusermount3 -u
"""

from __future__ import annotations

import itertools
import logging
import os
import stat
import sys
import threading
import time
from dataclasses import dataclass, field

from storefs.config import FuseConfig
from storefs.core import Attr, Listing
from storefs.errors import Exists, IsADirectory, NoAttribute, NotADirectory, NotEmpty, NotFound, NotPermitted
from storefs.fs import StorefsOperations, mount

log = logging.getLogger(__name__)


@dataclass
class Node:
    is_dir: bool
    mode: int
    uid: int
    gid: int
    mtime_ns: int = field(default_factory=time.time_ns)
    fd: int = -1          # a memfd holding a file's bytes
    size: int = 0
    children: set[str] = field(default_factory=set)


class _Cfg:
    fuse = FuseConfig(read_ahead=0)  # storefs' timeouts; the kernel's own read-ahead


class MemoryCore:
    """The calls storefs.fs makes on storefs' Namespace, answered from a dict of keys."""

    root = ""
    cfg = _Cfg()

    def __init__(self) -> None:
        self.nodes = {"": Node(True, stat.S_IFDIR | 0o755, os.getuid(), os.getgid())}
        self.handles: dict[int, Node] = {}
        self.fhs = itertools.count(1)
        self.lock = threading.Lock()

    def start(self) -> None:
        pass

    def _node(self, key: str) -> Node:
        n = self.nodes.get(key)
        if n is None:
            raise NotFound(key)
        return n

    def _parent(self, key: str) -> Node:
        p = self._node(key.rpartition("/")[0])
        if not p.is_dir:
            raise NotADirectory(key)
        return p

    def getattr(self, key: str, fh: int | None = None) -> Attr:
        n = self.handles[fh] if fh is not None else self._node(key)
        return Attr(n.is_dir, n.size, n.mtime_ns, n.mode, n.uid, n.gid)

    def readdir(self, key: str) -> list[str]:
        return sorted(self._node(key).children)

    def listing(self, key: str) -> Listing:
        return Listing(key, self.readdir(key), {})

    def listing_attrs(self, listing: Listing, start: int, stop: int) -> list[Attr | None]:
        base = f"{listing.key}/" if listing.key else ""
        out: list[Attr | None] = []
        for name in listing.names[start:stop]:
            n = self.nodes.get(base + name)  # None: removed since the listing
            out.append(None if n is None else Attr(n.is_dir, n.size, n.mtime_ns, n.mode, n.uid, n.gid))
        return out

    def mkdir(self, key: str, mode: int, uid: int, gid: int) -> None:
        with self.lock:
            parent = self._parent(key)
            if key in self.nodes:
                raise Exists(key)
            self.nodes[key] = Node(True, stat.S_IFDIR | (mode & 0o7777), uid, gid)
            parent.children.add(key.rpartition("/")[2])

    def rmdir(self, key: str) -> None:
        with self.lock:
            n = self._node(key)
            if not n.is_dir:
                raise NotADirectory(key)
            if n.children:
                raise NotEmpty(key)
            del self.nodes[key]
            self._parent(key).children.discard(key.rpartition("/")[2])

    def create(self, key: str, mode: int, uid: int, gid: int, exclusive: bool) -> int:
        with self.lock:
            parent = self._parent(key)
            n = self.nodes.get(key)
            if n is not None:
                if exclusive:
                    raise Exists(key)
                if n.is_dir:
                    raise IsADirectory(key)
                os.ftruncate(n.fd, 0)
                n.size = 0
            else:
                n = Node(False, stat.S_IFREG | (mode & 0o7777), uid, gid, fd=os.memfd_create(key[-200:] or "f"))
                self.nodes[key] = n
                parent.children.add(key.rpartition("/")[2])
            fh = next(self.fhs)
            self.handles[fh] = n
            return fh

    def open(self, key: str, flags: int, *_: object) -> int:
        n = self._node(key)
        if n.is_dir:
            raise IsADirectory(key)
        if flags & os.O_TRUNC:
            self.truncate(key, 0, None)
        fh = next(self.fhs)
        self.handles[fh] = n
        return fh

    def read_source(self, fh: int, size: int, offset: int) -> tuple[int, int]:
        n = self.handles[fh]
        return n.fd, max(0, min(size, n.size - offset))

    def write(self, fh: int, data: bytes, offset: int) -> int:
        n = self.handles[fh]
        done = os.pwrite(n.fd, data, offset)
        n.size = max(n.size, offset + done)
        n.mtime_ns = time.time_ns()
        return done

    def truncate(self, key: str, length: int, fh: int | None) -> None:
        n = self.handles[fh] if fh is not None else self._node(key)
        os.ftruncate(n.fd, length)
        n.size = length

    def flush(self, fh: int) -> None:
        pass

    def fsync(self, fh: int) -> None:
        pass

    def release(self, fh: int) -> None:
        self.handles.pop(fh, None)

    def unlink(self, key: str) -> None:
        with self.lock:
            n = self._node(key)
            if n.is_dir:
                raise IsADirectory(key)
            del self.nodes[key]
            self._parent(key).children.discard(key.rpartition("/")[2])
            os.close(n.fd)  # open handles keep the Node, not the fd: a benchmark never reads after rm

    def rename(self, old: str, new: str) -> None:
        raise NotPermitted(f"{old}: the floor file system does not rename")

    def chmod(self, key: str, mode: int, *_: object) -> None:
        n = self._node(key)
        n.mode = (n.mode & ~0o7777) | (mode & 0o7777)

    def chown(self, key: str, uid: int, gid: int, *_: object) -> None:
        n = self._node(key)
        n.uid = n.uid if uid in (-1, 0xFFFFFFFF) else uid
        n.gid = n.gid if gid in (-1, 0xFFFFFFFF) else gid

    def utimens(self, key: str, atime_ns: int | None, mtime_ns: int | None, *_: object) -> None:
        if mtime_ns is not None:
            self._node(key).mtime_ns = mtime_ns

    def statfs(self) -> dict[str, int]:
        return {"f_bsize": 4096, "f_frsize": 4096, "f_blocks": 1 << 24, "f_bfree": 1 << 23,
                "f_bavail": 1 << 23, "f_files": 1 << 20, "f_ffree": 1 << 19, "f_favail": 1 << 19,
                "f_namemax": 255}

    def getxattr(self, key: str, name: str) -> bytes:
        self._node(key)
        raise NoAttribute(name)

    def listxattr(self, key: str) -> list[str]:
        self._node(key)
        return []

    def setxattr(self, key: str, name: str, value: bytes) -> None:
        raise NotPermitted(f"{key}: the floor file system keeps no extended attributes")

    def removexattr(self, key: str, name: str) -> None:
        raise NoAttribute(name)


def main() -> int:
    if len(sys.argv) != 2:
        print(__doc__.strip().splitlines()[-1].strip(), file=sys.stderr)
        return 2
    mount(StorefsOperations(MemoryCore()), sys.argv[1], "floorfs")  # type: ignore[arg-type]
    return 0


if __name__ == "__main__":
    sys.exit(main())
