"""A folder on a local disk as a provider: keys are file paths below base_path."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import secrets
import stat
from decimal import Decimal
from pathlib import Path
from typing import Callable, Iterator

from ..errors import AccessDenied, NotEmpty, NotFound, ProviderError, StorefsError
from .base import ObjectInfo, ObjectMeta, Provider

log = logging.getLogger(__name__)

TMP_PREFIX = ".storefs-tmp."
CHUNK = 1 << 20
_NOT_FOUND = (errno.ENOENT, errno.ENOTDIR, errno.ELOOP)
_NO_XATTRS = (errno.ENOTSUP, errno.EOPNOTSUPP)


def _to_ns(mtime: float) -> int:
    """Nanoseconds from the float's shortest decimal form, so 1.123456 stays .123456000."""
    return int(Decimal(repr(float(mtime))) * 1_000_000_000)


def _user_xattr(name: str) -> bool:
    """Only user.* attributes travel; user.storefs.* are computed by storefs, never stored."""
    return name.startswith("user.") and not name.startswith("user.storefs.")


class LocalProvider(Provider):
    """Objects as plain files, written atomically (temp file + rename) with their metadata."""

    kind = "local"

    def __init__(self, name: str, base_path: str) -> None:
        self.name = name
        self.base = os.path.realpath(os.path.expanduser(base_path))
        self._base_slash = self.base.rstrip("/") + "/"
        self._xattr_warned = False

    # -- paths and errors -------------------------------------------------------------

    def _path(self, key: str) -> str:
        """The file or folder of key, refusing anything that could land outside base_path."""
        if not isinstance(key, str) or key.startswith("/") or "\0" in key:
            raise ProviderError(f"local provider {self.name}: refusing key {key!r}")
        parts = key[:-1].split("/") if key.endswith("/") else key.split("/")
        if key and any(p in ("", ".", "..") or p.startswith(TMP_PREFIX) for p in parts):
            raise ProviderError(f"local provider {self.name}: refusing key {key!r}")
        path = os.path.join(self.base, *parts) if key else self.base
        parent = os.path.realpath(os.path.dirname(path)) if key else self.base
        if parent != self.base and not parent.startswith(self._base_slash):
            raise ProviderError(f"local provider {self.name}: key {key!r} resolves outside {self.base}")
        return path

    def _file_path(self, key: str) -> str:
        """The path of a file key; a folder key here is a caller's bug, not a missing object."""
        if not key or key.endswith("/"):
            raise ProviderError(f"local provider {self.name}: {key!r} is not a file key")
        return self._path(key)

    def _dir_path(self, prefix: str) -> str:
        """The path of a folder key other than the root, which storefs never creates or removes."""
        if not prefix.strip("/"):
            raise ProviderError(f"local provider {self.name}: refusing to change the root folder")
        return self._path(prefix)

    def _error(self, e: OSError, key: str) -> StorefsError:
        """One errno -> storefs error table, so every method fails the same way."""
        if e.errno in _NOT_FOUND:
            return NotFound(key)
        if e.errno in (errno.EACCES, errno.EPERM):
            return AccessDenied(f"local provider {self.name}: {key}: permission denied")
        return ProviderError(f"local provider {self.name}: {key}: {e.strerror or e}")

    @contextlib.contextmanager
    def _mapped(self, key: str) -> Iterator[None]:
        try:
            yield
        except OSError as e:
            raise self._error(e, key) from e

    # -- xattrs ----------------------------------------------------------------------

    def _read_xattrs(self, path: str) -> dict[str, bytes]:
        """The user.* attributes of a file (not a symlink); none where the FS has no xattrs."""
        try:
            names = [n for n in os.listxattr(path, follow_symlinks=False) if _user_xattr(n)]
        except OSError as e:
            if e.errno in _NO_XATTRS:
                return {}
            raise
        out = {}
        for n in names:
            with contextlib.suppress(OSError):  # removed meanwhile
                out[n] = os.getxattr(path, n, follow_symlinks=False)
        return out

    def _write_xattrs(self, target: int | str, xattrs: dict[str, bytes], replace: bool) -> None:
        """Set the user.* attributes (and drop the others when replacing); warn once without FS support."""
        kw = {} if isinstance(target, int) else {"follow_symlinks": False}
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
    def _chown(target: int | str, uid: int | None, gid: int | None) -> None:
        """Owner is kept only where we may set it (root, or our own groups)."""
        if uid is None or gid is None:
            return
        try:
            if isinstance(target, int):
                os.fchown(target, uid, gid)
            else:
                os.chown(target, uid, gid, follow_symlinks=False)
        except OSError as e:
            if e.errno not in (errno.EPERM, errno.EACCES, errno.EINVAL):
                raise

    # -- Provider ----------------------------------------------------------------------

    def check(self) -> None:
        """Fail at mount time when the folder cannot hold objects."""
        where = f"local provider {self.name}: base_path {self.base}"
        try:
            os.makedirs(self.base, exist_ok=True)
        except OSError as e:
            raise ProviderError(f"{where} cannot be created: {e.strerror or e}") from e
        if not os.path.isdir(self.base):
            raise ProviderError(f"{where} is not a directory")
        probe = os.path.join(self.base, TMP_PREFIX + "probe-" + secrets.token_hex(8))
        try:
            fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            try:
                os.write(fd, b"storefs")
            finally:
                os.close(fd)
            os.unlink(probe)
        except OSError as e:
            with contextlib.suppress(OSError):
                os.unlink(probe)
            raise ProviderError(f"{where} is not writable: {e.strerror or e}") from e

    def _info(self, key: str, st: os.stat_result, xattrs: dict[str, bytes] | None = None) -> ObjectInfo:
        return ObjectInfo(key=key, size=st.st_size, mtime=st.st_mtime_ns / 1_000_000_000, mode=st.st_mode,
                          uid=st.st_uid, gid=st.st_gid, etag=f"{st.st_mtime_ns:x}-{st.st_size:x}",
                          xattrs=xattrs or {})

    def head(self, key: str) -> ObjectInfo:
        """Stat without following symlinks: only regular files below base_path are objects."""
        path = self._file_path(key)
        with self._mapped(key):
            st = os.lstat(path)
            if not stat.S_ISREG(st.st_mode):
                raise NotFound(key)
            return self._info(key, st, self._read_xattrs(path))

    def dir_exists(self, prefix: str) -> bool:
        """A real folder (not a symlink to one) stands for the prefix."""
        try:
            return stat.S_ISDIR(os.lstat(self._path(prefix)).st_mode)
        except OSError:
            return False

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        """Files and folders of the folder, without xattrs (one getxattr per file is too slow)."""
        if prefix and not prefix.endswith("/"):
            prefix += "/"
        path = self._path(prefix)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
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
                    if stat.S_ISREG(st.st_mode):
                        yield self._info(prefix + entry.name, st)
                    elif stat.S_ISDIR(st.st_mode):
                        yield ObjectInfo(key=prefix + entry.name + "/", size=0, is_dir=True,
                                         mtime=st.st_mtime_ns / 1_000_000_000, mode=st.st_mode,
                                         uid=st.st_uid, gid=st.st_gid)
        finally:
            os.close(fd)

    def read_stream(self, key: str, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        """Sequential reads on one no-follow descriptor (get_range would reopen the file per piece)."""
        path = self._file_path(key)
        with self._mapped(key):
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            with self._mapped(key):
                if not stat.S_ISREG(os.fstat(fd).st_mode):
                    raise NotFound(key)
            while True:
                with self._mapped(key):
                    data = os.read(fd, chunk_size)
                if not data:
                    return
                yield data
        finally:
            os.close(fd)

    def get_range(self, key: str, offset: int, length: int) -> bytes:
        """pread on a no-follow descriptor; O_NONBLOCK so a FIFO planted in the folder cannot hang us."""
        path = self._file_path(key)
        with self._mapped(key):
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
            try:
                if not stat.S_ISREG(os.fstat(fd).st_mode):
                    raise NotFound(key)
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

    def _write(self, key: str, src_fd: int, mode: int, uid: int | None, gid: int | None,
               mtime_ns: int, xattrs: dict[str, bytes]) -> ObjectInfo:
        """Copy src_fd to a temp file beside key with its metadata, then rename: readers never see half."""
        dst = self._file_path(key)
        folder = os.path.dirname(dst)
        with self._mapped(key):
            try:
                os.makedirs(folder, mode=0o755, exist_ok=True)
            except OSError as e:
                if e.errno in _NOT_FOUND or e.errno == errno.EEXIST:
                    raise ProviderError(f"local provider {self.name}: {key}: a parent is not a folder") from e
                raise
            tmp = os.path.join(folder, TMP_PREFIX + secrets.token_hex(8))
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            try:
                try:
                    _copy_data(src_fd, fd)
                    self._chown(fd, uid, gid)
                    if xattrs:
                        self._write_xattrs(fd, xattrs, replace=False)
                    os.fchmod(fd, mode & 0o7777)
                    os.fsync(fd)
                    os.utime(fd, ns=(mtime_ns, mtime_ns))
                finally:
                    os.close(fd)
                os.replace(tmp, dst)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
            dfd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        return self.head(key)

    def put_file(self, key: str, src_path: str, meta: ObjectMeta) -> ObjectInfo:
        """Atomic store of a cache file under key, streamed, never read whole into memory."""
        try:
            src_fd = os.open(src_path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as e:
            raise ProviderError(f"local provider {self.name}: {key}: cannot read source file: "
                                f"{e.strerror or e}") from e
        try:
            return self._write(key, src_fd, meta.mode, meta.uid, meta.gid, _to_ns(meta.mtime), meta.xattrs)
        finally:
            os.close(src_fd)

    def set_meta(self, key: str, meta: ObjectMeta) -> ObjectInfo:
        """chmod/chown/utime/xattrs in place; a read-only mode is applied after the xattrs that need u+w."""
        path = self._file_path(key)
        mode = meta.mode & 0o7777
        with self._mapped(key):
            if not stat.S_ISREG(os.lstat(path).st_mode):
                raise NotFound(key)
            self._chown(path, meta.uid, meta.gid)
            os.chmod(path, mode | 0o200)
            self._write_xattrs(path, meta.xattrs, replace=True)
            if not mode & 0o200:
                os.chmod(path, mode)
            ns = _to_ns(meta.mtime)
            os.utime(path, ns=(ns, ns), follow_symlinks=False)
        return self.head(key)

    def copy(self, src: str, dst: str, meta: ObjectMeta | None = None) -> ObjectInfo:
        """Byte copy through a temp file; without meta the source's mode, owner, mtime and xattrs go along."""
        path = self._file_path(src)
        with self._mapped(src):
            src_fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            with self._mapped(src):
                st = os.fstat(src_fd)
                if not stat.S_ISREG(st.st_mode):
                    raise NotFound(src)
                xattrs = self._read_xattrs(path) if meta is None else meta.xattrs
            if meta is None:
                return self._write(dst, src_fd, st.st_mode, st.st_uid, st.st_gid, st.st_mtime_ns, xattrs)
            return self._write(dst, src_fd, meta.mode, meta.uid, meta.gid, _to_ns(meta.mtime), xattrs)
        finally:
            os.close(src_fd)

    def delete(self, key: str) -> None:
        """Unlink only the file: its folder stays, as an emptied folder does on a local disk."""
        path = self._file_path(key)
        try:
            os.unlink(path)
        except OSError as e:
            if e.errno not in _NOT_FOUND:
                raise self._error(e, key) from e

    def make_dir(self, prefix: str, meta: ObjectMeta) -> None:
        """A real folder with the directory's mode and mtime."""
        path = self._dir_path(prefix)
        ns = _to_ns(meta.mtime)
        with self._mapped(prefix):
            os.makedirs(path, mode=0o755, exist_ok=True)
            if not stat.S_ISDIR(os.lstat(path).st_mode):
                raise ProviderError(f"local provider {self.name}: {prefix} is not a folder")
            self._chown(path, meta.uid, meta.gid)
            os.chmod(path, meta.mode & 0o7777)
            os.utime(path, ns=(ns, ns), follow_symlinks=False)

    def remove_dir(self, prefix: str) -> None:
        """rmdir, clearing our own stale temp files first; real entries make it NotEmpty."""
        path = self._dir_path(prefix)
        for attempt in (1, 2):
            try:
                os.rmdir(path)
                return
            except OSError as e:
                if e.errno in _NOT_FOUND:
                    return
                if e.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                    raise self._error(e, prefix) from e
            if attempt == 2:
                raise NotEmpty(prefix)
            with self._mapped(prefix), os.scandir(path) as it:
                for entry in it:
                    if entry.name.startswith(TMP_PREFIX) and entry.is_file(follow_symlinks=False):
                        with contextlib.suppress(FileNotFoundError):
                            os.unlink(entry.path)

    def url(self, key: str, expires: int = 3600) -> str | None:
        """file:// URL of the file, for tools that take URLs."""
        return Path(self._path(key)).as_uri()

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
        observer = Observer()
        observer.schedule(Handler(), self.base, recursive=True)
        observer.daemon = True
        observer.start()
        self._observer = observer

    def close(self) -> None:
        observer = getattr(self, "_observer", None)
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
