"""A folder on a local disk as a provider: keys are file paths below base_path.

Every key is resolved by walking from a held descriptor of base_path one component at a
time with O_NOFOLLOW, and every operation is made relative to its parent folder's
descriptor, so no symlink (planted in the folder or made through the mount) can make
storefs read, write or delete outside base_path. Symlinks, FIFOs, sockets and device
nodes are stored as the real thing; a symlink's target is kept as uninterpreted bytes.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import secrets
import stat
import threading
import weakref
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from ..errors import AccessDenied, Conflict, NotEmpty, NotFound, ProviderError, Rejected, StorefsError, TooLarge
from .base import ObjectInfo, ObjectMeta, Provider

if TYPE_CHECKING:
    from watchdog.observers.api import BaseObserver

log = logging.getLogger(__name__)

TMP_PREFIX = ".storefs-tmp."
CHUNK = 1 << 20
#: a symlink target longer than this cannot be stored (Linux PATH_MAX counts the final NUL)
LINK_TARGET_MAX = 4095
#: mode of the parent folders put_file creates (before the umask), as mkdir -p does
NEW_DIR_MODE = 0o755
#: where a held descriptor is reached by path (xattrs and chmod have no *at form that never follows)
PROC_FD = "/proc/self/fd"
_NOT_FOUND = (errno.ENOENT, errno.ENOTDIR, errno.ELOOP)
#: the file system refuses this name or size for good: the change is parked (Rejected, TooLarge), not retried
_REFUSED_NAMES = (errno.ENAMETOOLONG, errno.EILSEQ)
#: link(2) refused by a file system without hard links (vfat, some network and FUSE file systems)
_NO_LINKS = (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EMLINK, errno.ENOSYS)
_NO_XATTRS = (errno.ENOTSUP, errno.EOPNOTSUPP)
#: inotify's per-user limits, by the errno that says one is reached (inotify_add_watch(2), inotify_init(2))
_INOTIFY_LIMITS = {errno.ENOSPC: "max_user_watches", errno.EMFILE: "max_user_instances"}
_INOTIFY_SYSCTL = "/proc/sys/fs/inotify"
#: a folder reached only as a place to resolve names in (no read permission needed)
_DIR_FLAGS = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
#: a folder to list or fsync
_DIR_READ_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
#: an entry pinned without opening it (a FIFO would block, a device would be opened)
_NODE_FLAGS = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC
#: reopening a pinned regular file for reading through its /proc magic link (so no O_NOFOLLOW)
_REOPEN_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
#: reads that leave the file's atime alone (only its owner or root may ask)
_NOATIME = getattr(os, "O_NOATIME", 0)
_TMP_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_SETID = stat.S_ISUID | stat.S_ISGID
#: zero-byte objects whose mode carries their type
_NODE_TYPES = frozenset({stat.S_IFIFO, stat.S_IFSOCK, stat.S_IFCHR, stat.S_IFBLK})
_DEVICE_TYPES = frozenset({stat.S_IFCHR, stat.S_IFBLK})
#: types whose st_size is the object's size (a link's is its target's length)
_SIZED_TYPES = frozenset({stat.S_IFREG, stat.S_IFLNK})
_IFMT = 0o170000


class _Attrs(NamedTuple):
    """What a write applies to the new entry (the file type comes from the caller's choice of writer)."""

    mode: int
    uid: int | None
    gid: int | None
    atime_ns: int
    mtime_ns: int
    xattrs: dict[str, bytes]


class _Condition(NamedTuple):
    """What must be at the key for a write to go ahead: nothing (if_absent), or the version if_match names."""

    if_match: str | None = None
    if_absent: bool = False


_NO_CONDITION = _Condition()


def _token(st: os.stat_result) -> str:
    """The etag of a file, link or node: inode, size and mtime in ns (a new write is a new inode)."""
    return f"{st.st_ino:x}-{st.st_size:x}-{st.st_mtime_ns:x}"


def _is_version(st: os.stat_result, etag: str) -> bool:
    """Whether etag names the file st describes; an etag of storefs before conditional writes
    (mtime-size, kept in an older cache's journal) is compared on mtime and size, as it was made."""
    if etag.count("-") == 1:
        return etag == f"{st.st_mtime_ns:x}-{st.st_size:x}"
    return etag == _token(st)


def _user_xattr(name: str) -> bool:
    """Only user.* attributes travel; user.storefs.* are computed by storefs, never stored."""
    return name.startswith("user.") and not name.startswith("user.storefs.")


def _fd_path(fd: int, name: str | None = None) -> str:
    """The /proc path of a held descriptor (or of name inside the folder it holds): pinned, never re-resolved."""
    return f"{PROC_FD}/{fd}" if name is None else f"{PROC_FD}/{fd}/{name}"


def _close(fd: int) -> None:
    """Close a descriptor of ours; a failure to close one only opened for lookups changes nothing."""
    with contextlib.suppress(OSError):
        os.close(fd)


class LocalProvider(Provider):
    """Objects as plain files, links and nodes, written atomically (temp entry + rename) with their metadata."""

    kind = "local"
    #: if_match is compared just before the rename over the key: a short window (module docstring)
    atomic_conditions = False

    def __init__(self, name: str, base_path: str, *, create: bool = False, create_parents: bool = False) -> None:
        self.name = name
        self.base = os.path.realpath(os.path.expanduser(base_path))
        self.create = create  # check() makes a missing base_path whose parent exists
        self.create_parents = create_parents  # ... and its missing parents too (storefs' own default folder)
        self._base_slash = self.base.rstrip("/") + "/"
        self._xattr_warned = False
        self._links_warned = False
        self._base_fd: int | None = None
        self._base_lock = threading.Lock()  # protects _base_fd while the first calls race to open it
        self._observer: BaseObserver | None = None  # the watchdog thread, once watch() started it

    # -- keys, descriptors and errors -------------------------------------------------------

    def _parts(self, key: str) -> list[str]:
        """The path components of a key ('' is the root), refusing anything that could leave base_path."""
        if not isinstance(key, str) or key.startswith("/") or "\0" in key:
            raise ProviderError(f"local provider {self.name}: refusing key {key!r}")
        if not key:
            return []
        parts = key[:-1].split("/") if key.endswith("/") else key.split("/")
        if any(p in ("", ".", "..") or p.startswith(TMP_PREFIX) for p in parts):
            raise ProviderError(f"local provider {self.name}: refusing key {key!r}")
        return parts

    def _file_parts(self, key: str) -> list[str]:
        """The components of a file key; a folder key here is a caller's bug, not a missing object."""
        if not key or key.endswith("/"):
            raise ProviderError(f"local provider {self.name}: {key!r} is not a file key")
        return self._parts(key)

    def _dir_parts(self, prefix: str) -> list[str]:
        """The components of a folder other than the root, which storefs never creates or removes."""
        if not prefix.strip("/"):
            raise ProviderError(f"local provider {self.name}: refusing to change the root folder")
        return self._parts(prefix)

    def _root(self) -> int:
        """The held O_PATH descriptor of base_path, opened once: every key is resolved from it."""
        fd = self._base_fd
        if fd is not None:
            return fd
        with self._base_lock:
            if self._base_fd is None:
                try:
                    fd = os.open(self.base, _DIR_FLAGS)
                except OSError as e:
                    raise ProviderError(f"local provider {self.name}: base_path {self.base} cannot be opened: "
                                        f"{e.strerror or e}") from e
                # kept for the provider's life: closing it under a running call could hand its number to another file
                weakref.finalize(self, _close, fd)
                self._base_fd = fd
            return self._base_fd

    def _open_dir(self, parts: Sequence[str], flags: int = _DIR_FLAGS, create: bool = False) -> int:
        """A new descriptor of the folder parts, walked from base_path without following any symlink.

        A symlink or a file on the way fails with ENOTDIR (callers read it as not found); with
        create, missing folders are made (mkdirat) on the way, as put_file needs.
        """
        fd = self._root()
        if not parts:
            return os.open(".", flags, dir_fd=fd)
        owned = -1
        last = len(parts) - 1
        try:
            for i, name in enumerate(parts):
                want = flags if i == last else _DIR_FLAGS
                try:
                    nxt = os.open(name, want, dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        raise
                    with contextlib.suppress(FileExistsError):
                        os.mkdir(name, NEW_DIR_MODE, dir_fd=fd)
                    nxt = os.open(name, want, dir_fd=fd)
                if owned >= 0:
                    os.close(owned)
                fd = owned = nxt
            return owned
        except BaseException:
            if owned >= 0:
                _close(owned)
            raise

    @contextlib.contextmanager
    def _parent(self, key: str, create: bool = False) -> Iterator[tuple[int, str]]:
        """(descriptor of the parent folder, last name) of a file key, with errors mapped for key."""
        parts = self._file_parts(key)
        with self._mapped(key):
            try:
                pfd = self._open_dir(parts[:-1], create=create)
            except OSError as e:
                if create and e.errno in (errno.ENOTDIR, errno.ELOOP, errno.EEXIST):
                    raise ProviderError(f"local provider {self.name}: {key}: a parent is not a folder") from e
                raise
            try:
                yield pfd, parts[-1]
            finally:
                os.close(pfd)

    def _error(self, e: OSError, key: str) -> StorefsError:
        """One errno -> storefs error table, so every method fails the same way."""
        if e.errno in _NOT_FOUND:
            return NotFound(key)
        if e.errno in (errno.EACCES, errno.EPERM):
            return AccessDenied(f"local provider {self.name}: {key}: permission denied")
        if e.errno in _REFUSED_NAMES:
            return Rejected(f"local provider {self.name}: {key}: the file system refuses the name: {e.strerror or e}")
        if e.errno == errno.EFBIG:
            return TooLarge(f"local provider {self.name}: {key}: too large for the file system")
        return ProviderError(f"local provider {self.name}: {key}: {e.strerror or e}")

    @contextlib.contextmanager
    def _mapped(self, key: str) -> Iterator[None]:
        try:
            yield
        except OSError as e:
            raise self._error(e, key) from e

    @staticmethod
    def _fsync_dir(pfd: int) -> None:
        """Make a rename in the folder durable (the held descriptor is O_PATH: fsync needs a readable one)."""
        dfd = os.open(".", _DIR_READ_FLAGS, dir_fd=pfd)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)

    # -- xattrs, owner, mode --------------------------------------------------------------

    def _read_xattrs(self, target: int | str, follow: bool = False) -> dict[str, bytes]:
        """The user.* attributes of an open file or at a /proc descriptor path; none where the FS has no xattrs."""
        kw = {} if isinstance(target, int) else {"follow_symlinks": follow}
        try:
            names = [n for n in os.listxattr(target, **kw) if _user_xattr(n)]
        except OSError as e:
            if e.errno in _NO_XATTRS:
                return {}
            raise
        out = {}
        for n in names:
            with contextlib.suppress(OSError):  # removed meanwhile
                out[n] = os.getxattr(target, n, **kw)
        return out

    def _write_xattrs(self, target: int | str, xattrs: dict[str, bytes], replace: bool, follow: bool = False) -> None:
        """Set the user.* attributes (and drop the others when replacing); warn once without FS support."""
        kw = {} if isinstance(target, int) else {"follow_symlinks": follow}
        want = {k: v.encode() if isinstance(v, str) else bytes(v) for k, v in xattrs.items() if _user_xattr(k)}
        try:
            if replace:
                for n in os.listxattr(target, **kw):
                    if _user_xattr(n) and n not in want:
                        try:
                            os.removexattr(target, n, **kw)
                        except OSError as e:
                            if e.errno != errno.ENODATA:  # ENODATA: removed meanwhile
                                raise
            for n, v in want.items():
                os.setxattr(target, n, v, **kw)
        except OSError as e:
            if e.errno not in _NO_XATTRS:
                raise
            if want and not self._xattr_warned:
                self._xattr_warned = True
                log.warning("local provider %s: %s has no user xattrs; extended attributes are not kept",
                            self.name, self.base)

    @staticmethod
    def _chown(target: int | str, uid: int | None, gid: int | None, dir_fd: int | None = None,
               follow: bool = False) -> bool:
        """Owner is kept only where we may set it (root, or our own groups); whether it was applied."""
        if uid is None or gid is None:
            return False
        try:
            if isinstance(target, int):
                os.fchown(target, uid, gid)
            else:
                os.chown(target, uid, gid, dir_fd=dir_fd, follow_symlinks=follow)
        except OSError as e:
            if e.errno not in (errno.EPERM, errno.EACCES, errno.EINVAL):
                raise
            return False
        return True

    @staticmethod
    def _disk_mode(mode: int, owner_applied: bool) -> int:
        """Permission bits for the disk: setuid/setgid only when root applied the metadata's owner too."""
        perm = stat.S_IMODE(mode)
        if not (owner_applied and os.geteuid() == 0):
            perm &= ~_SETID
        return perm

    @staticmethod
    def _chmod_at(pfd: int, name: str, mode: int) -> None:
        """chmod of name in the folder without following it: a symlink has no mode of its own and is skipped."""
        fd = os.open(name, _NODE_FLAGS, dir_fd=pfd)
        try:
            if not stat.S_ISLNK(os.fstat(fd).st_mode):
                os.chmod(_fd_path(fd), mode)  # the magic link reaches exactly the pinned inode
        finally:
            os.close(fd)

    # -- Provider: reads --------------------------------------------------------------------

    def check(self, *, writable: bool = False) -> None:
        """Fail at mount time when the folder cannot hold objects."""
        where = f"local provider {self.name}: base_path {self.base}"
        if not os.path.lexists(self.base):
            self._create_base(where)
        if not os.path.isdir(self.base):
            raise ProviderError(f"{where} is not a directory")
        if not os.path.isdir(PROC_FD):
            raise ProviderError(f"{where}: {PROC_FD} is missing (mount /proc): files are reached by descriptor")
        base = self._root()
        probe = TMP_PREFIX + "probe-" + secrets.token_hex(8)
        try:
            fd = os.open(probe, _TMP_FLAGS, 0o600, dir_fd=base)
            try:
                os.write(fd, b"storefs")
            finally:
                os.close(fd)
            os.unlink(probe, dir_fd=base)
        except OSError as e:
            with contextlib.suppress(OSError):
                os.unlink(probe, dir_fd=base)
            raise ProviderError(f"{where} is not writable: {e.strerror or e}") from e

    def _create_base(self, where: str) -> None:
        """Make the missing base_path only where the config says so and its parent exists: a typo in
        the path must not mount an empty store (s3fs refuses a missing bucket the same way)."""
        parent = os.path.dirname(self.base)
        if not self.create:
            raise ProviderError(f"{where} does not exist: create it (mkdir {self.base}), or set `create: true` "
                                f"under providers.{self.name} to have storefs make it")
        if not self.create_parents and not os.path.isdir(parent):
            raise ProviderError(f"{where} does not exist, nor does its parent folder {parent}: check the path "
                                "(`create: true` makes the last folder only)")
        try:
            if self.create_parents:
                os.makedirs(self.base, exist_ok=True)
            else:
                os.mkdir(self.base)
        except FileExistsError:
            pass  # made meanwhile (another mount starting): checked as a folder next
        except OSError as e:
            raise ProviderError(f"{where} cannot be created: {e.strerror or e}") from e
        log.info("local provider %s: created base_path %s", self.name, self.base)

    @staticmethod
    def _info(key: str, st: os.stat_result, xattrs: dict[str, bytes] | None = None) -> ObjectInfo:
        """ObjectInfo of a file, link or node from its lstat (a link's size is its target's length)."""
        mode, size, mtime_ns = st.st_mode, st.st_size, st.st_mtime_ns
        fmt = mode & _IFMT  # list() calls this per entry: positional, in ObjectInfo's field order
        return ObjectInfo(key, size if fmt in _SIZED_TYPES else 0, mtime_ns, False, mode,
                          st.st_uid, st.st_gid, _token(st), None, xattrs or {}, st.st_ctime_ns, st.st_atime_ns,
                          st.st_rdev if fmt in _DEVICE_TYPES else None)

    @staticmethod
    def _dir_info(key: str, st: os.stat_result, xattrs: dict[str, bytes] | None = None) -> ObjectInfo:
        return ObjectInfo(key=key, size=0, is_dir=True, mtime_ns=st.st_mtime_ns, mode=st.st_mode,
                          uid=st.st_uid, gid=st.st_gid, xattrs=xattrs or {},
                          ctime_ns=st.st_ctime_ns, atime_ns=st.st_atime_ns)

    def _head_at(self, pfd: int, name: str, key: str) -> ObjectInfo:
        """lstat of name in the folder: files, links and nodes are objects, folders are not."""
        st = os.stat(name, dir_fd=pfd, follow_symlinks=False)
        if stat.S_ISDIR(st.st_mode):
            raise NotFound(key)
        xattrs = self._read_xattrs(_fd_path(pfd, name)) if stat.S_ISREG(st.st_mode) else None
        return self._info(key, st, xattrs)

    def head(self, key: str) -> ObjectInfo:
        """lstat, never following a link: a link is reported as one (S_IFLNK), nodes with their type."""
        with self._parent(key) as (pfd, name), self._mapped(key):
            return self._head_at(pfd, name, key)

    def head_dir(self, prefix: str) -> ObjectInfo | None:
        """The real folder's lstat and user.* xattrs; None when it is missing or is not a real folder."""
        parts = self._parts(prefix)
        key = prefix if not prefix or prefix.endswith("/") else prefix + "/"
        with self._mapped(key):
            try:
                fd = self._open_dir(parts)
            except OSError as e:
                if e.errno in _NOT_FOUND:
                    return None
                raise
            try:
                return self._dir_info(key, os.fstat(fd), self._read_xattrs(_fd_path(fd), follow=True))
            finally:
                os.close(fd)

    def dir_exists(self, prefix: str) -> bool:
        """A real folder (not a symlink to one, nor below one) stands for the prefix."""
        parts = self._parts(prefix)
        try:
            os.close(self._open_dir(parts))
            return True
        except OSError:
            return False

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        """Files, folders, links and nodes of the folder, without xattrs (one getxattr per file is too slow)."""
        if prefix and not prefix.endswith("/"):
            prefix += "/"
        parts = self._parts(prefix)
        try:
            try:  # listing for the mount is no access of the folder by a user: its atime stays
                fd = self._open_dir(parts, _DIR_READ_FLAGS | _NOATIME)
            except PermissionError:  # O_NOATIME needs the folder's owner or root
                fd = self._open_dir(parts, _DIR_READ_FLAGS)
        except OSError as e:
            if e.errno in _NOT_FOUND:
                return
            raise self._error(e, prefix) from e
        try:
            with self._mapped(prefix), os.scandir(fd) as it:
                for entry in it:
                    if entry.name.startswith(TMP_PREFIX):
                        continue
                    try:
                        st = entry.stat(follow_symlinks=False)
                    except FileNotFoundError:
                        continue
                    if stat.S_ISDIR(st.st_mode):
                        yield self._dir_info(prefix + entry.name + "/", st)
                    else:
                        yield self._info(prefix + entry.name, st)
        finally:
            os.close(fd)

    def _open_regular(self, pfd: int, name: str, key: str) -> tuple[os.stat_result, int | None, bytes]:
        """(lstat, descriptor, b"") of a regular file, (lstat, None, target) of a link, (lstat, None, b"") of a node.

        The entry is pinned with O_PATH and typed by fstat before anything opens it for reading,
        so a FIFO (which would block) or a device (which would be opened) never is.
        """
        pin = os.open(name, _NODE_FLAGS, dir_fd=pfd)
        try:
            st = os.fstat(pin)
            if stat.S_ISREG(st.st_mode):
                # storefs reading the backing file is no access by a user: keep its atime where we may
                quiet = _NOATIME if st.st_uid == os.geteuid() or os.geteuid() == 0 else 0
                return st, os.open(_fd_path(pin), _REOPEN_FLAGS | quiet), b""
            if stat.S_ISLNK(st.st_mode):
                return st, None, os.readlink(b"", dir_fd=pin)  # the pinned link itself (readlinkat with "")
            if stat.S_IFMT(st.st_mode) in _NODE_TYPES:
                return st, None, b""
            raise NotFound(key)
        finally:
            os.close(pin)

    def read_stream(self, key: str, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        """Sequential reads on one descriptor (get_range would reopen the file per piece); a link yields its target."""
        with self._parent(key) as (pfd, name), self._mapped(key):
            _, fd, data = self._open_regular(pfd, name, key)
        if fd is None:
            if data:
                yield data
            return
        try:
            while True:
                with self._mapped(key):
                    data = os.read(fd, chunk_size)
                if not data:
                    return
                yield data
        finally:
            os.close(fd)

    def get_range(self, key: str, offset: int, length: int) -> bytes:
        """pread of a regular file; a link's target bytes; b"" for a FIFO, socket or device (never opened)."""
        with self._parent(key) as (pfd, name), self._mapped(key):
            _, fd, data = self._open_regular(pfd, name, key)
            if fd is None:
                return data[offset:offset + length] if length > 0 else b""
            try:
                chunks, got = [], 0
                while got < length:
                    b = os.pread(fd, length - got, offset + got)
                    if not b:
                        break
                    chunks.append(b)
                    got += len(b)
                return b"".join(chunks)
            finally:
                os.close(fd)

    # -- Provider: writes -------------------------------------------------------------------

    def _replace(self, key: str, make: Callable[[int, str], None], cond: _Condition = _NO_CONDITION) -> ObjectInfo:
        """make(parent_fd, tmp_name) builds the new entry beside key; put it in place (renamed over key, or linked
        where nothing is with if_absent) once cond holds, and fsync the folder."""
        with self._parent(key, create=True) as (pfd, name), self._mapped(key):
            tmp = TMP_PREFIX + secrets.token_hex(8)
            try:
                make(pfd, tmp)
                if cond.if_absent:
                    self._move_new(pfd, tmp, name, key)
                else:
                    if cond.if_match is not None:
                        self._expect(pfd, name, key, cond.if_match)
                    os.replace(tmp, name, src_dir_fd=pfd, dst_dir_fd=pfd)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp, dir_fd=pfd)
                raise
            self._fsync_dir(pfd)
            return self._head_at(pfd, name, key)

    def _move_new(self, pfd: int, tmp: str, name: str, key: str) -> None:
        """Move the temp entry to name only if nothing is there: linked (link(2) never replaces), then the temp
        name dropped; Conflict otherwise. Without hard links: an lstat just before the rename (a short window)."""
        try:
            os.link(tmp, name, src_dir_fd=pfd, dst_dir_fd=pfd, follow_symlinks=False)
            os.unlink(tmp, dir_fd=pfd)
            return
        except FileExistsError:
            there = os.stat(name, dir_fd=pfd, follow_symlinks=False)
        except OSError as e:
            if e.errno not in _NO_LINKS:
                raise
            if not self._links_warned:
                self._links_warned = True
                log.warning("local provider %s: %s has no hard links (%s); a new file is put in place after a "
                            "check that none is there, not atomically", self.name, self.base, e.strerror or e)
            try:
                there = os.stat(name, dir_fd=pfd, follow_symlinks=False)
            except FileNotFoundError:
                os.rename(tmp, name, src_dir_fd=pfd, dst_dir_fd=pfd)
                return
        if stat.S_ISDIR(there.st_mode):
            raise ProviderError(f"local provider {self.name}: {key}: a folder is there")
        raise Conflict(f"local provider {self.name}: {key}: another writer stored it first")

    def _expect(self, pfd: int, name: str, key: str, if_match: str) -> None:
        """The entry at name is the version if_match names (NotFound when there is none, else Conflict)."""
        try:
            st = os.stat(name, dir_fd=pfd, follow_symlinks=False)
        except OSError as e:
            if e.errno in _NOT_FOUND:
                raise NotFound(key) from e
            raise
        if stat.S_ISDIR(st.st_mode):
            raise NotFound(key)
        if not _is_version(st, if_match):
            raise Conflict(f"local provider {self.name}: {key}: changed by another writer")

    def _write_regular(self, key: str, src_fd: int, a: _Attrs, cond: _Condition = _NO_CONDITION) -> ObjectInfo:
        """Copy src_fd to a temp file beside key with its metadata, then rename: readers never see half."""
        def make(pfd: int, tmp: str) -> None:
            fd = os.open(tmp, _TMP_FLAGS, 0o600, dir_fd=pfd)
            try:
                _copy_data(src_fd, fd)
                owned = self._chown(fd, a.uid, a.gid)
                if a.xattrs:
                    self._write_xattrs(fd, a.xattrs, replace=False)
                os.fchmod(fd, self._disk_mode(a.mode, owned))
                os.fsync(fd)
                os.utime(fd, ns=(a.atime_ns, a.mtime_ns))
            finally:
                os.close(fd)

        return self._replace(key, make, cond)

    def _write_link(self, key: str, target: bytes, a: _Attrs, cond: _Condition = _NO_CONDITION) -> ObjectInfo:
        """A real symlink holding target as given, made under a temp name and renamed over key (atomic)."""
        if not target:
            raise ProviderError(f"local provider {self.name}: {key}: a symlink needs a target")
        if b"\0" in target or len(target) > LINK_TARGET_MAX:
            raise ProviderError(f"local provider {self.name}: {key}: a symlink target cannot hold NUL "
                                f"or pass {LINK_TARGET_MAX} bytes")

        def make(pfd: int, tmp: str) -> None:
            os.symlink(target, os.fsencode(tmp), dir_fd=pfd)
            self._chown(tmp, a.uid, a.gid, dir_fd=pfd)
            os.utime(tmp, ns=(a.atime_ns, a.mtime_ns), dir_fd=pfd, follow_symlinks=False)

        return self._replace(key, make, cond)

    def _write_node(self, key: str, kind: int, rdev: int, a: _Attrs, cond: _Condition = _NO_CONDITION) -> ObjectInfo:
        """A real FIFO, socket or device node (devices need root: AccessDenied otherwise)."""
        def make(pfd: int, tmp: str) -> None:
            if kind == stat.S_IFIFO:
                os.mkfifo(tmp, 0o600, dir_fd=pfd)
            else:
                os.mknod(tmp, kind | 0o600, rdev if kind in _DEVICE_TYPES else 0, dir_fd=pfd)
            owned = self._chown(tmp, a.uid, a.gid, dir_fd=pfd)
            self._chmod_at(pfd, tmp, self._disk_mode(a.mode, owned))
            os.utime(tmp, ns=(a.atime_ns, a.mtime_ns), dir_fd=pfd, follow_symlinks=False)

        try:
            return self._replace(key, make, cond)
        except AccessDenied as e:
            if kind in _DEVICE_TYPES:
                raise AccessDenied(f"local provider {self.name}: {key}: device nodes can only be made "
                                   "by root") from e
            raise

    def put_file(self, key: str, src_path: str, meta: ObjectMeta, *, if_match: str | None = None,
                 if_absent: bool = False) -> ObjectInfo:
        """Atomic store of a cache file under key, streamed; a symlink's target is the file's bytes."""
        cond = _Condition(if_match, if_absent)
        kind = stat.S_IFMT(meta.mode)
        mtime_ns = meta.mtime_ns
        a = _Attrs(meta.mode, meta.uid, meta.gid, mtime_ns if meta.atime_ns is None else meta.atime_ns,
                   mtime_ns, meta.xattrs)
        if kind in _NODE_TYPES:
            return self._write_node(key, kind, meta.rdev or 0, a, cond)
        if kind not in (0, stat.S_IFREG, stat.S_IFLNK):
            raise ProviderError(f"local provider {self.name}: {key}: cannot store file type {kind:#o} as a file")
        try:
            src_fd = os.open(src_path, os.O_RDONLY | os.O_CLOEXEC)
            target = os.read(src_fd, LINK_TARGET_MAX + 1) if kind == stat.S_IFLNK else b""
        except OSError as e:
            raise ProviderError(f"local provider {self.name}: {key}: cannot read source file: "
                                f"{e.strerror or e}") from e
        try:
            if kind == stat.S_IFLNK:
                return self._write_link(key, target, a, cond)
            return self._write_regular(key, src_fd, a, cond)
        finally:
            os.close(src_fd)

    def set_meta(self, key: str, meta: ObjectMeta) -> ObjectInfo:
        """chown/chmod/utime/xattrs in place; a link takes owner and times only, a node no xattrs."""
        with self._parent(key) as (pfd, name), self._mapped(key):
            st = os.stat(name, dir_fd=pfd, follow_symlinks=False)
            if stat.S_ISDIR(st.st_mode):
                raise NotFound(key)
            owned = self._chown(name, meta.uid, meta.gid, dir_fd=pfd)
            if stat.S_ISREG(st.st_mode):
                mode = self._disk_mode(meta.mode, owned)
                self._chmod_at(pfd, name, mode | stat.S_IWUSR)  # xattrs need u+w: a read-only mode comes after
                self._write_xattrs(_fd_path(pfd, name), meta.xattrs, replace=True)
                if not mode & stat.S_IWUSR:
                    self._chmod_at(pfd, name, mode)
            elif not stat.S_ISLNK(st.st_mode):
                self._chmod_at(pfd, name, self._disk_mode(meta.mode, owned))
            atime_ns = st.st_atime_ns if meta.atime_ns is None else meta.atime_ns
            os.utime(name, ns=(atime_ns, meta.mtime_ns), dir_fd=pfd, follow_symlinks=False)
            return self._head_at(pfd, name, key)

    def copy(self, src: str, dst: str, meta: ObjectMeta | None = None, *, if_match: str | None = None) -> ObjectInfo:
        """Copy of what src is (file bytes, a link, a node); without meta its mode, owner, times and xattrs go along.
        if_match: the pinned source (the very version copied) must have that etag, else Conflict."""
        with self._parent(src) as (pfd, name), self._mapped(src):
            st, fd, target = self._open_regular(pfd, name, src)
            kind = stat.S_IFMT(st.st_mode)
            if if_match is not None and not _is_version(st, if_match):
                if fd is not None:
                    os.close(fd)
                raise Conflict(f"local provider {self.name}: {src}: changed by another writer")
            try:
                xattrs = self._read_xattrs(fd) if fd is not None and meta is None else {}
            except BaseException:
                if fd is not None:
                    os.close(fd)
                raise
        try:
            if meta is None:
                a = _Attrs(st.st_mode, st.st_uid, st.st_gid, st.st_atime_ns, st.st_mtime_ns, xattrs)
            else:
                mtime_ns = meta.mtime_ns
                a = _Attrs(meta.mode, meta.uid, meta.gid, mtime_ns if meta.atime_ns is None else meta.atime_ns,
                           mtime_ns, meta.xattrs)
            if kind == stat.S_IFLNK:
                return self._write_link(dst, target, a)
            if fd is None:
                return self._write_node(dst, kind, st.st_rdev, a)
            return self._write_regular(dst, fd, a)
        finally:
            if fd is not None:
                os.close(fd)

    def delete(self, key: str, *, if_match: str | None = None) -> None:
        """Unlink the entry itself (a link, never its target); its folder stays, as on a local disk.
        if_match: compared just before the unlink (Conflict, and nothing removed, for another version)."""
        try:
            with self._parent(key) as (pfd, name):
                if if_match is not None:
                    self._expect(pfd, name, key, if_match)
                os.unlink(name, dir_fd=pfd)
        except NotFound:
            return
        except OSError as e:
            if e.errno not in _NOT_FOUND:
                raise self._error(e, key) from e

    def make_dir(self, prefix: str, meta: ObjectMeta) -> None:
        """A real folder with the directory's mode, owner, times and user.* xattrs (replaced when it exists)."""
        parts = self._dir_parts(prefix)
        with self._mapped(prefix):
            try:
                pfd = self._open_dir(parts[:-1], create=True)
            except OSError as e:
                if e.errno in (errno.ENOTDIR, errno.ELOOP, errno.EEXIST):
                    raise ProviderError(f"local provider {self.name}: {prefix}: a parent is not a folder") from e
                raise
            try:
                created = True
                try:
                    os.mkdir(parts[-1], 0o700, dir_fd=pfd)  # private until its own mode is applied
                except FileExistsError:
                    created = False
                try:
                    fd = os.open(parts[-1], _DIR_FLAGS, dir_fd=pfd)
                except OSError as e:
                    if e.errno in (errno.ENOTDIR, errno.ELOOP):
                        raise ProviderError(f"local provider {self.name}: {prefix} is not a folder") from e
                    raise
            finally:
                os.close(pfd)
            try:
                self._apply_dir_meta(fd, meta, created)
            finally:
                os.close(fd)

    def _apply_dir_meta(self, fd: int, meta: ObjectMeta, created: bool) -> None:
        """Owner, mode, xattrs and times of the pinned folder fd (by its /proc path, which never re-resolves)."""
        path = _fd_path(fd)
        owned = self._chown(path, meta.uid, meta.gid, follow=True)
        mode = self._disk_mode(meta.mode, owned)
        os.chmod(path, mode | stat.S_IWUSR)  # xattrs need u+w: a read-only mode comes after
        self._write_xattrs(path, meta.xattrs, replace=True, follow=True)
        if not mode & stat.S_IWUSR:
            os.chmod(path, mode)
        mtime_ns = meta.mtime_ns
        if meta.atime_ns is not None:
            atime_ns = meta.atime_ns
        else:
            atime_ns = mtime_ns if created else os.fstat(fd).st_atime_ns
        os.utime(path, ns=(atime_ns, mtime_ns))

    def remove_dir(self, prefix: str) -> None:
        """rmdir, clearing our own stale temp entries first; real entries make it NotEmpty."""
        parts = self._dir_parts(prefix)
        with self._mapped(prefix):
            try:
                pfd = self._open_dir(parts[:-1])
            except OSError as e:
                if e.errno in _NOT_FOUND:
                    return
                raise
        try:
            for attempt in (1, 2):
                try:
                    os.rmdir(parts[-1], dir_fd=pfd)
                    return
                except OSError as e:
                    if e.errno in _NOT_FOUND:
                        return
                    if e.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                        raise self._error(e, prefix) from e
                if attempt == 2:
                    raise NotEmpty(prefix)
                with self._mapped(prefix):
                    self._clear_temps(pfd, parts[-1])
        finally:
            os.close(pfd)

    @staticmethod
    def _clear_temps(pfd: int, name: str) -> None:
        """Unlink the temp entries an interrupted write left in folder name (files, links, nodes)."""
        fd = os.open(name, _DIR_READ_FLAGS, dir_fd=pfd)
        try:
            with os.scandir(fd) as it:
                for entry in it:
                    if entry.name.startswith(TMP_PREFIX) and not entry.is_dir(follow_symlinks=False):
                        with contextlib.suppress(FileNotFoundError):
                            os.unlink(entry.name, dir_fd=fd)
        finally:
            os.close(fd)

    def url(self, key: str, expires: int = 3600) -> str | None:
        """file:// URL of the file, for tools that take URLs."""
        parts = self._parts(key)
        return Path(os.path.join(self.base, *parts) if parts else self.base).as_uri()

    def watch(self, on_change: Callable[[str], None]) -> None:
        """Report files other programs create, change or delete in the folder (inotify via watchdog)."""
        from watchdog.events import FileSystemEventHandler
        from watchdog.observers import Observer

        base = self._base_slash

        def keys_of(event: object) -> Iterator[str]:
            for attr in ("src_path", "dest_path"):
                path = getattr(event, attr, "") or ""
                if isinstance(path, bytes):
                    path = os.fsdecode(path)
                if path.startswith(base) and TMP_PREFIX not in path:
                    yield path[len(base):]

        class Handler(FileSystemEventHandler):
            def on_any_event(self, event: object) -> None:
                if getattr(event, "event_type", "") in ("opened", "closed_no_write"):
                    return
                for key in keys_of(event):
                    try:
                        on_change(key)
                    except Exception:
                        log.exception("handling a change of %s failed", key)

        self.close()
        observer: BaseObserver | None = None
        try:  # watchdog takes its inotify instance when made (7.x) or started (4.x-6.x), its watches at start
            observer = Observer()
            observer.schedule(Handler(), self.base, recursive=True)
            observer.daemon = True
            observer.start()
        except OSError as e:
            if e.errno not in _INOTIFY_LIMITS:
                raise
            if observer is not None:
                with contextlib.suppress(Exception):
                    observer.stop()
            self._warn_unwatched(e.errno)
            return
        self._observer = observer

    def _warn_unwatched(self, code: int) -> None:
        """One WARNING when inotify's limit leaves the folder unwatched: the listing cache's TTL then
        brings other programs' changes (as on S3), and the line says which sysctl to raise."""
        setting = _INOTIFY_LIMITS[code]
        try:
            with open(os.path.join(_INOTIFY_SYSCTL, setting), encoding="ascii") as f:
                limit = f.read().strip()
        except OSError:
            limit = "unknown"
        log.warning("local provider %s: not watching %s for changes made by other programs: the inotify limit "
                    "fs.inotify.%s (%s) is reached; they show within fuse.dir_cache_ttl instead. Raise it with "
                    "`sysctl fs.inotify.%s=N` (persist in /etc/sysctl.d/)", self.name, self.base, setting, limit,
                    setting)

    def close(self) -> None:
        """Stop the watcher (the base_path descriptor stays: calls may still be running)."""
        observer = self._observer
        if observer is not None:
            observer.stop()
            self._observer = None


def _copy_data(src_fd: int, dst_fd: int) -> None:
    """Kernel-side copy with sendfile; plain 1 MiB reads where sendfile cannot do it."""
    try:
        while os.sendfile(dst_fd, src_fd, None, CHUNK) > 0:
            pass
        return
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
            raise
    while data := os.read(src_fd, CHUNK):
        view = memoryview(data)
        while view:
            view = view[os.write(dst_fd, view):]
