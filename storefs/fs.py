"""The FUSE edge: kernel requests in, core calls out (storefs.core.MountCore), errno values back.

This is the only module that knows mfusepy, and the only place where exceptions become
errno values: one wrapper turns storefs errors into their errno (one log line unless the
answer is an ordinary ENOENT/ENODATA) and anything unexpected into EIO with a traceback.
"""

from __future__ import annotations

import collections
import ctypes
import errno
import functools
import logging
import operator
import os
import stat
import struct
import threading
import time
from collections.abc import Callable
from typing import Any

os.environ.setdefault("FUSE_LIBRARY_NAME", "fuse3")  # never libfuse2, whatever else is installed

import mfusepy  # noqa: E402

from . import keys  # noqa: E402
from .core import Attr, Caller, Listing, MountCore  # noqa: E402
from .errors import QUIET_ERRNOS, NotPermitted, StorefsError  # noqa: E402
from .metrics import FUSE_LATENCY  # noqa: E402

log = logging.getLogger(__name__)

UTIME_NOW = (1 << 30) - 1
UTIME_OMIT = (1 << 30) - 2
MAX_IO = 1 << 20
#: libfuse splices a read reply from the cache file only if the reply plus 3 pages fits its
#: pipe, which may not outgrow the kernel's pipe-max-size (1 MiB by default) without
#: CAP_SYS_RESOURCE; a 1 MiB read would not, and libfuse would copy it through a malloc'd buffer
MAX_READ = MAX_IO - 16 * 1024
#: idle worker threads libfuse keeps: at least its 10 worker threads, so none is ever ended (as with its
#: default); said explicitly because libfuse 3.12-3.15 logs "Ignoring invalid max threads value 4294967295"
#: at every mount for the default it passes itself
FUSE_IDLE_THREADS = 10
NS = 1_000_000_000
#: st_blksize: the size `cp`, `cat` and friends read and write at a time
BLKSIZE = 1 << 17


def _stat_struct() -> tuple[struct.Struct, tuple[str, ...]]:
    """struct stat as libfuse takes it (mfusepy's c_stat: this platform's layout) as one Struct of
    the fields storefs sets, zeros between, and their names in the order it packs them."""
    fields: list[tuple[int, str, type]] = []
    for name, ctype in mfusepy.c_stat._fields_:
        base = getattr(mfusepy.c_stat, name).offset
        if name.endswith("timespec"):
            fields += [(base + getattr(ctype, sub).offset, f"{name[:-4]}_{sub[3:]}", t) for sub, t in ctype._fields_]
        elif name in ("st_nlink", "st_mode", "st_uid", "st_gid", "st_rdev", "st_size", "st_blksize", "st_blocks"):
            fields.append((base, name, ctype))
    fmt, pos, order = "=", 0, []
    for offset, name, ctype in sorted(fields):
        size = ctypes.sizeof(ctype)
        code = {1: "b", 2: "h", 4: "i", 8: "q"}[size]
        fmt += "x" * (offset - pos) + (code if ctype(-1).value < 0 else code.upper())
        pos = offset + size
        order.append(name)
    fmt += "x" * (ctypes.sizeof(mfusepy.c_stat) - pos)
    return struct.Struct(fmt), tuple(order)


#: mfusepy fills a c_stat from a dict, field by field (about a fifth of a getattr's time in the
#: daemon): storefs packs the bytes in one call and copies them into the kernel's buffer
_STAT, _STAT_ORDER = _stat_struct()


#: the fields of packed_stat's tuple, in its order
_STAT_FIELDS = ("st_mode", "st_nlink", "st_size", "st_blocks", "st_blksize", "st_uid", "st_gid", "st_rdev",
                "st_atime_sec", "st_atime_nsec", "st_mtime_sec", "st_mtime_nsec", "st_ctime_sec", "st_ctime_nsec")
#: ... put in this platform's order
_STAT_ARRANGE = operator.itemgetter(*(_STAT_FIELDS.index(name) for name in _STAT_ORDER))


def packed_stat(a: Attr) -> bytes:
    """a as the bytes of a struct stat."""
    m = a.mtime_ns
    c = a.ctime_ns or m
    t = a.atime_ns or m
    size = a.size
    return _STAT.pack(*_STAT_ARRANGE((a.mode, 2 if a.is_dir else 1, size, (size + 511) // 512, BLKSIZE, a.uid, a.gid,
                                      a.rdev, t // NS, t % NS, m // NS, m % NS, c // NS, c % NS)))


#: struct stats packed for readdirplus replies, by what they say: a folder listed again packs the same
#: attributes again (the kernel asks for them with every listing after its timeouts), and a lookup here
#: costs a tenth of the packing; emptied when it holds this many (about 650 bytes an entry: 5 MiB)
PACKED_KEPT = 8192
_packed: dict[Attr, bytes] = {}


def packed_stat_kept(a: Attr) -> bytes:
    """packed_stat(a), from _packed when the same attributes were packed before."""
    p = _packed.get(a)
    if p is None:
        if len(_packed) >= PACKED_KEPT:
            _packed.clear()  # a dict's clear is atomic under the GIL; the entries are cheap to make again
        p = _packed[a] = packed_stat(a)
    return p


#: libfuse3's high-level inode invalidation (`storefs refresh`); None in a libfuse without it
_invalidate_path = getattr(mfusepy._libfuse, "fuse_invalidate_path", None)
if _invalidate_path is not None:
    _invalidate_path.argtypes = (ctypes.c_void_p, ctypes.c_char_p)
    _invalidate_path.restype = ctypes.c_int


def shown(path: object) -> str:
    """A path for a log line: newlines, control characters and undecodable bytes escaped."""
    return repr(path)[1:-1] if isinstance(path, str) else str(path)


class OpCounts:
    """A count per FUSE operation, kept per thread (FUSE threads never share a counter) and summed when read."""

    def __init__(self) -> None:
        self._names: list[str] = []  # every operation, registered at import before any thread counts
        self._local = threading.local()
        self._lock = threading.Lock()  # protects _threads (the list of per-thread dicts)
        self._threads: list[dict[str, int]] = []

    def register(self, name: str) -> None:
        if name not in self._names:
            self._names.append(name)

    def add(self, name: str) -> None:
        """One more of name in this thread's dict (made with every name, so it never grows while read)."""
        mine: dict[str, int] | None = getattr(self._local, "counts", None)
        if mine is None:
            mine = self._local.counts = dict.fromkeys(self._names, 0)
            with self._lock:
                self._threads.append(mine)
        mine[name] += 1

    def items(self) -> list[tuple[str, int]]:
        """(operation, count) summed over every thread that ever counted."""
        with self._lock:
            threads = list(self._threads)
        return [(name, sum(t.get(name, 0) for t in threads)) for name in self._names]


#: calls and errno answers per FUSE operation, for status and metrics
OP_CALLS = OpCounts()
OP_ERRORS = OpCounts()

#: a refusal logged again within this many seconds is not logged again: programs retry on their own
#: (mv repeats a refused renameat2 as rename, touch a refused open as utimensat), each a new request
REFUSAL_REPEAT_WINDOW = 2.0
#: refusals remembered for that
REFUSALS_REMEMBERED = 64


class RefusalLog:
    """Logs each refusal once, however often a program asks again at once (thread-safe)."""

    def __init__(self, window: float = REFUSAL_REPEAT_WINDOW, clock: Callable[[], float] = time.monotonic) -> None:
        self._window = window
        self._clock = clock
        self._lock = threading.Lock()  # protects _seen (line -> when it was last logged)
        self._seen: collections.OrderedDict[str, float] = collections.OrderedDict()

    def warning(self, msg: str, *args: object) -> None:
        """log.warning(msg, *args), unless the same line was logged within the window."""
        line = msg % args
        now = self._clock()
        with self._lock:
            last = self._seen.pop(line, None)
            self._seen[line] = now if last is None or now - last >= self._window else last
            while len(self._seen) > REFUSALS_REMEMBERED:
                self._seen.popitem(last=False)
        if last is not None and now - last < self._window:
            log.debug("again: %s", line)
            return
        log.warning("%s", line)


REFUSALS = RefusalLog()


def edge(func: Callable[..., Any]) -> Callable[..., Any]:
    """Translate core exceptions into FuseOSError, logging each failure once."""

    name = {"read_buf": "read"}.get(func.__name__, func.__name__)  # counted under the kernel's name
    OP_CALLS.register(name)
    OP_ERRORS.register(name)

    series = (name,)

    @functools.wraps(func)
    def wrapper(self: StorefsOperations, *args: Any) -> Any:
        OP_CALLS.add(name)
        t0 = time.perf_counter()
        try:
            return func(self, *args)
        except StorefsError as e:
            OP_ERRORS.add(name)
            if e.errno not in QUIET_ERRNOS and not e.quiet:
                REFUSALS.warning("%s %s: %s (%s)", name, shown(args[0]) if args else "", shown(str(e)),
                            errno.errorcode.get(e.errno, e.errno))
            raise mfusepy.FuseOSError(e.errno) from None
        except mfusepy.FuseOSError:
            OP_ERRORS.add(name)
            raise
        except OSError as e:
            OP_ERRORS.add(name)
            code = e.errno if isinstance(e.errno, int) and e.errno > 0 else errno.EIO
            if code not in QUIET_ERRNOS:
                REFUSALS.warning("%s %s: %s", name, shown(args[0]) if args else "", shown(str(e)))
            raise mfusepy.FuseOSError(code) from None
        except Exception:
            OP_ERRORS.add(name)
            log.exception("%s %s failed unexpectedly", name, shown(args[0]) if args else "")
            raise mfusepy.FuseOSError(errno.EIO) from None
        finally:
            FUSE_LATENCY.observe(series, time.perf_counter() - t0)

    return wrapper


#: entries whose struct stat a readdirplus request has packed at once; a 4 KiB kernel buffer holds about 25
PLUS_BATCH = 32
#: a DirStream slot not packed yet (a struct stat is never empty; None is "no attributes")
UNPACKED = b""
#: listings kept for open folders between a readdirplus request and the plain ones after it
DIR_STREAMS_KEPT = 64
#: folders whose listing carried attributes lately, remembered up to this many (then the stale ones go)
ATTRS_SENT_KEPT = 4096


class DirStream:
    """One open folder's listing as the kernel pages through it: names encoded once ('.' and '..'
    first, as Fuse decodes paths: utf-8, surrogateescape), each struct stat packed when first sent."""

    __slots__ = ("listing", "names", "packed")

    def __init__(self, listing: Listing) -> None:
        self.listing = listing
        self.names = [b".", b"..", *(name.encode("utf-8", "surrogateescape") for name in listing.names)]
        self.packed: list[bytes | None] = [None, None, *(UNPACKED for _ in listing.names)]


class StorefsOperations(mfusepy.Operations):
    """mfusepy Operations: paths to keys, Attr to struct stat bytes, nothing more."""

    use_ns = True

    def __init__(self, ns: MountCore, on_init: Callable[[], None] | None = None,
                 on_destroy: Callable[[], None] | None = None) -> None:
        self.ns = ns
        self._streams_lock = threading.Lock()  # protects _dir_streams
        #: per open folder (libfuse's directory handle), the listing its readdirplus began, until
        #: the plain requests after it have all its names (at most DIR_STREAMS_KEPT, oldest out)
        self._dir_streams: dict[int, DirStream] = {}
        self._attrs_lock = threading.Lock()  # protects _attrs_sent
        self._attrs_sent: dict[str | None, float] = {}  # folder path -> when a listing of it last carried attributes
        self._attrs_window = 0.0  # how long the kernel keeps what a listing told it (set at init)
        #: held while one listing packs its children's attributes (attrs_begin to attrs_end)
        self._packing = threading.Lock()
        self._on_init = on_init
        self._on_destroy = on_destroy
        self._fuse: int | None = None  # libfuse's struct fuse, for invalidations sent from other threads

    def _key(self, path: str | None) -> str:
        """The object key of a mount path; a single-tenant mount's root is the tenant's folder."""
        return keys.from_mount_path(self.ns.root, path)

    def init_with_config(self, conn_info: Any, config_3: Any) -> None:
        """Big requests and kernel-side attribute caching; threads start only now (after any fork)."""
        if conn_info is not None:
            conn_info.max_write = MAX_IO
            conn_info.max_read = MAX_READ
            # the kernel keeps the smaller of this and the mount's read-ahead, which the daemon
            # raises in on_init, before this reply (storefs.bdi)
            conn_info.max_readahead = self.ns.cfg.fuse.read_ahead or MAX_IO
            # reads reach /dev/fuse by splice from the cache file where the kernel allows it
            conn_info.want |= conn_info.capable & (FUSE_CAP_SPLICE_WRITE | FUSE_CAP_SPLICE_MOVE)
        if config_3 is not None:
            fc = self.ns.cfg.fuse
            # strictatime: every open moves atime, which a stat must show at once (as on ext4)
            config_3.attr_timeout = 0.0 if fc.atime == "strictatime" else fc.attr_timeout
            config_3.entry_timeout = fc.entry_timeout
            config_3.negative_timeout = fc.negative_timeout
            self._attrs_window = min(config_3.attr_timeout, config_3.entry_timeout)
            # libfuse hides an unlinked open file as .fuse_hiddenN (the core treats that
            # rename as the unlink): with hard_remove, fstat on such a file would fail (ESTALE)
            config_3.hard_remove = 0
            config_3.use_ino = 0
        # init runs in a request context: its struct fuse is the handle invalidate() needs later
        self._fuse = mfusepy._libfuse.fuse_get_context().contents.fuse
        self.ns.start()
        if self._on_init:
            self._on_init()

    def invalidate(self, path: str) -> bool:
        """Have the kernel drop the attributes and cached pages of path ('/a/b') now rather than at its
        attr_timeout (`storefs refresh`); False when the kernel holds nothing of it."""
        if not self._fuse or _invalidate_path is None:
            return False
        return bool(_invalidate_path(self._fuse, os.fsencode(path)) == 0)

    def destroy(self, path: str) -> None:
        if self._on_destroy:
            self._on_destroy()

    @staticmethod
    def _caller() -> Caller:
        """The process asking, as the kernel tells libfuse (uid, gid, pid)."""
        return Caller(*mfusepy.fuse_get_context())

    @edge
    def getattr(self, path: str, fh: int | None = None) -> bytes:
        """The struct stat's bytes (packed_stat), which Fuse.getattr_fuse_3 copies into the kernel's buffer."""
        return packed_stat(self.ns.getattr(self._key(path), fh))

    @edge
    def readdir(self, path: str, fh: int) -> list[str]:
        return [".", "..", *self.ns.readdir(self._key(path))]

    # opendir and releasedir are left to libfuse, in C: a listing costs two requests that need the
    # interpreter instead of four, and libfuse's handle for the open folder (the `dh` it passes to
    # readdir) is what a stream is kept under

    def _stream(self, path: str, dh: int, fresh: bool) -> DirStream:
        """The listing open folder dh pages through: a new one at its start (as rewinddir(3) wants)."""
        with self._streams_lock:
            s = None if fresh else self._dir_streams.get(dh)
        if s is None:
            s = DirStream(self.ns.listing(self._key(path)))
            with self._streams_lock:
                self._dir_streams[dh] = s
                if len(self._dir_streams) > DIR_STREAMS_KEPT:  # listings a program stopped reading
                    del self._dir_streams[next(iter(self._dir_streams))]
        return s

    def attrs_due(self, path: str | None) -> bool:
        """Whether a listing of folder path should carry its children's attributes: not when one did
        within the kernel's attribute and entry timeouts, since the kernel still holds them. Packing
        them and having the kernel take each in again (it asks for a whole folder with attributes)
        is most of what a folder listed over and over costs; a listing without them is plain names."""
        if self._attrs_window <= 0:
            return True
        now = time.monotonic()
        with self._attrs_lock:
            at = self._attrs_sent.get(path)
            if at is not None and now - at < self._attrs_window:
                return False
            self._attrs_sent[path] = now
            if len(self._attrs_sent) > ATTRS_SENT_KEPT:  # the stale ones go; all of them if none is stale
                kept = {k: t for k, t in self._attrs_sent.items() if now - t < self._attrs_window}
                self._attrs_sent = kept if len(kept) <= ATTRS_SENT_KEPT // 2 else {}
        return True

    def attrs_begin(self, path: str | None) -> bool:
        """attrs_due for one listing at a time: while another folder's attributes are being packed,
        this listing is plain names, and its folder's attributes stay due for its next listing.
        Attributes are a prefetch, and the folders a program lists together expire together: packed
        one after the other in the interpreter, they held up every request behind them (the frozen
        workload's slowest listings came in bursts, once a second). True: call attrs_end after."""
        if not self._packing.acquire(blocking=False):
            return False
        if self.attrs_due(path):
            return True
        self._packing.release()
        return False

    def attrs_end(self) -> None:
        """The listing attrs_begin let carry attributes has packed them."""
        self._packing.release()

    def end_stream(self, dh: int) -> None:
        """The kernel has every entry of open folder dh's listing (or libfuse holds them for it)."""
        with self._streams_lock:
            self._dir_streams.pop(dh, None)

    @edge
    def readdir_names(self, path: str, dh: int, offset: int) -> list[bytes]:
        """'.', '..' and the children, encoded: the names of the listing a readdirplus began on this
        handle when the kernel goes on with plain requests (it may ask for attributes only at first);
        none once the kernel has had them all (its request for the end of the folder)."""
        s = self._stream(path, dh, offset == 0)
        self.end_stream(dh)  # libfuse keeps all of them for the requests that follow
        return s.names if offset < len(s.names) else []

    @edge
    def readdir_plus(self, path: str, dh: int, offset: int) -> DirStream:
        """The open folder's listing with the struct stats from offset on packed, a batch at a time:
        a readdirplus reply holds a few dozen entries of a folder that may hold thousands."""
        s = self._stream(path, dh, offset == 0)
        start, stop = max(offset, 2), min(offset + PLUS_BATCH, len(s.names))
        if start < stop and s.packed[start] is UNPACKED:
            for i, a in enumerate(self.ns.listing_attrs(s.listing, start - 2, stop - 2), start):
                s.packed[i] = None if a is None else packed_stat_kept(a)
        return s

    @edge
    def mkdir(self, path: str, mode: int) -> int:
        uid, gid, _ = mfusepy.fuse_get_context()
        self.ns.mkdir(self._key(path), mode, uid, gid)
        return 0

    @edge
    def rmdir(self, path: str) -> int:
        self.ns.rmdir(self._key(path))
        return 0

    @edge
    def create(self, path: str, mode: int, flags: int = 0) -> int:
        if stat.S_IFMT(mode) not in (0, stat.S_IFREG):
            raise NotPermitted(f"{path}: only regular files can be created")
        uid, gid, _ = mfusepy.fuse_get_context()
        return self.ns.create(self._key(path), mode, uid, gid, bool(flags & os.O_EXCL))

    @edge
    def open(self, path: str, flags: int) -> int:
        if flags & os.O_ACCMODE == os.O_RDONLY and not flags & os.O_TRUNC:
            return self.ns.open(self._key(path), flags)  # a reader clears no set-ID bits: no context to ask
        return self.ns.open(self._key(path), flags, self._caller())

    @edge
    def read_buf(self, path: str | None, size: int, offset: int, fh: int) -> tuple[int, int]:
        """(descriptor, length) of the bytes: libfuse reads or splices them, no Python copy."""
        return self.ns.read_source(fh, size, offset)

    @edge
    def write(self, path: str, data: bytes, offset: int, fh: int) -> int:
        return self.ns.write(fh, data, offset)

    @edge
    def truncate(self, path: str | None, length: int, fh: int | None = None) -> int:
        self.ns.truncate(self._key(path), length, fh)
        return 0

    @edge
    def fallocate(self, path: str, mode: int, offset: int, size: int, fh: int) -> int:
        if mode != 0:
            raise StorefsError(f"{path}: fallocate mode {mode} is not supported", code=errno.EOPNOTSUPP)
        if offset + size > self.ns.getattr(self._key(path), fh).size:
            self.ns.truncate(self._key(path), offset + size, fh)
        return 0

    @edge
    def flush(self, path: str, fh: int) -> int:
        self.ns.flush(fh)
        return 0

    @edge
    def fsync(self, path: str, datasync: int, fh: int) -> int:
        self.ns.fsync(fh)
        return 0

    @edge
    def release(self, path: str, fh: int) -> int:
        self.ns.release(fh)
        return 0

    @edge
    def unlink(self, path: str) -> int:
        self.ns.unlink(self._key(path))
        return 0

    @edge
    def rename(self, old: str, new: str) -> int:
        self.ns.rename(self._key(old), self._key(new))
        return 0

    @edge
    def chmod(self, path: str | None, mode: int) -> int:
        self.ns.chmod(self._key(path), mode, self._caller())
        return 0

    @edge
    def chown(self, path: str | None, uid: int, gid: int) -> int:
        self.ns.chown(self._key(path), uid, gid, self._caller())
        return 0

    @edge
    def utimens(self, path: str | None, times: tuple[int | None, int | None] | None = None,
                explicit: bool = True) -> int:
        """times: (atime_ns, mtime_ns), None for a time left as it is; None for both "now"."""
        if times is None:
            now = time.time_ns()
            times, explicit = (now, now), False
        atime_ns, mtime_ns = times
        self.ns.utimens(self._key(path), atime_ns, mtime_ns, self._caller(), explicit)
        return 0

    @edge
    def statfs(self, path: str) -> dict[str, int]:
        return self.ns.statfs()

    @edge
    def getxattr(self, path: str, name: str, position: int = 0) -> bytes:
        return self.ns.getxattr(self._key(path), name)

    @edge
    def listxattr(self, path: str) -> list[str]:
        return self.ns.listxattr(self._key(path))

    @edge
    def setxattr(self, path: str, name: str, value: bytes, options: int, position: int = 0) -> int:
        self.ns.setxattr(self._key(path), name, value)
        return 0

    @edge
    def removexattr(self, path: str, name: str) -> int:
        self.ns.removexattr(self._key(path), name)
        return 0

    @edge
    def symlink(self, path: str, target: str) -> int:
        """ln -s TARGET PATH: the target is stored byte for byte, never resolved by storefs."""
        self.ns.symlink(self._key(path), os.fsencode(target), self._caller())
        return 0

    @edge
    def readlink(self, path: str) -> bytes:
        return self.ns.readlink(self._key(path))

    @edge
    def link(self, target: str, source: str) -> int:
        raise NotPermitted(f"{target}: hard links cannot be stored as objects (as in s3fs and rclone)")

    @edge
    def mknod(self, path: str, mode: int, dev: int) -> int:
        self.ns.mknod(self._key(path), mode, dev, self._caller())
        return 0


def _timespec_ns(ts: Any, now: int) -> int | None:
    if ts.tv_nsec == UTIME_OMIT:
        return None
    if ts.tv_nsec == UTIME_NOW:
        return now
    return ts.tv_sec * 10**9 + ts.tv_nsec


class _FuseBuf(ctypes.Structure):
    _fields_ = [("size", ctypes.c_size_t), ("flags", ctypes.c_int), ("mem", ctypes.c_void_p),
                ("fd", ctypes.c_int), ("pos", ctypes.c_int64)]


class _FuseBufvec(ctypes.Structure):
    """libfuse's struct fuse_bufvec with its one inline fuse_buf (mfusepy declares a pointer)."""
    _fields_ = [("count", ctypes.c_size_t), ("idx", ctypes.c_size_t), ("off", ctypes.c_size_t),
                ("buf", _FuseBuf * 1)]


FUSE_BUF_IS_FD, FUSE_BUF_FD_SEEK, FUSE_BUF_FD_RETRY = 1 << 1, 1 << 2, 1 << 3
FUSE_CAP_SPLICE_WRITE, FUSE_CAP_SPLICE_MOVE = 1 << 7, 1 << 8
_libc = ctypes.CDLL(None)
_libc.malloc.restype = ctypes.c_void_p
_libc.malloc.argtypes = [ctypes.c_size_t]


def _fd_bufvec(fd: int, offset: int, size: int) -> int:
    """A malloc'd bufvec for `size` bytes of fd at offset; libfuse frees it after the reply."""
    addr = _libc.malloc(ctypes.sizeof(_FuseBufvec))
    if not addr:
        raise MemoryError("malloc of a fuse_bufvec failed")
    v = _FuseBufvec.from_address(addr)
    v.count, v.idx, v.off = 1, 0, 0
    b = v.buf[0]
    b.size, b.flags, b.mem, b.fd, b.pos = size, FUSE_BUF_IS_FD | FUSE_BUF_FD_SEEK | FUSE_BUF_FD_RETRY, None, fd, offset
    return addr


FUSE_READDIR_PLUS = 1 << 0  # the kernel asks for attributes with the names ...
FUSE_FILL_DIR_PLUS = 1 << 1  # ... and this entry carries them
#: libfuse threads that keep their Python thread state between requests
_KEPT_THREADS: set[int] = set()


class Fuse(mfusepy.FUSE):
    """mfusepy's FUSE with five calls corrected.

    ftruncate gets its file handle (mfusepy drops it, which breaks ftruncate on an
    unlinked file), utimens sees UTIME_NOW / UTIME_OMIT as the flags they are, create
    skips a signature inspection per call, every request skips a Python thread state,
    and readdir answers readdirplus with attributes (mfusepy only passes names).
    """

    def _wrapper(self, func: Any, *args: Any, **kwargs: Any) -> Any:
        # ctypes gives a libfuse thread a new Python thread state for each request and frees it
        # after (an mmap, a munmap and fresh pages each time, a third of the daemon's CPU on
        # small files); one more GIL-state reference makes the thread keep it until it exits
        ident = threading.get_ident()
        if ident not in _KEPT_THREADS:
            ctypes.pythonapi.PyGILState_Ensure()
            _KEPT_THREADS.add(ident)
        return super()._wrapper(func, *args, **kwargs)

    def read_buf(self, path: bytes | None, bufpp: Any, size: int, offset: int, fip: Any) -> int:
        # mfusepy would decode the path and its fuse_bufvec has the wrong layout
        fd, n = self.operations.read_buf(None, size, offset, fip.contents.fh)
        bufpp[0] = ctypes.cast(_fd_bufvec(fd, offset, n), type(bufpp[0]))
        return 0

    def truncate_fuse_3(self, path: bytes | None, length: int, fip: Any) -> int:
        fh = fip.contents.fh if fip else None
        return self.operations.truncate(None if path is None else path.decode(self.encoding, self.errors), length, fh)

    def create(self, path: bytes, mode: int, fip: Any) -> int:
        # mfusepy inspects the signature of operations.create on every call: half of its cost
        fi = fip.contents
        fi.fh = self.operations.create(path.decode(self.encoding, self.errors), mode, fi.flags)
        return 0

    def readdir_fuse_3(self, path: bytes | None, buf: Any, filler: Any, offset: int, fip: Any, flags: int) -> int:
        # buf is libfuse's handle of the open folder (its struct fuse_dh), alive from opendir to releasedir
        ops = self.operations
        p = None if path is None else path.decode(self.encoding, self.errors)
        if not flags & FUSE_READDIR_PLUS or (offset == 0 and not ops.attrs_begin(p)):
            # names alone, given without offsets: libfuse keeps them and pages them to the kernel
            for name in ops.readdir_names(p, buf, offset):
                if filler(buf, name, None, 0, 0) != 0:
                    break
            return 0
        try:
            return self._readdir_plus(ops, p, buf, filler, offset)
        finally:
            if offset == 0:
                ops.attrs_end()

    @staticmethod
    def _readdir_plus(ops: StorefsOperations, p: str | None, buf: Any, filler: Any, offset: int) -> int:
        # entries go with their offsets: libfuse 3.14 sends attributes given with offset 0 as
        # plain names, and the kernel then looks every one of them up again
        s = ops.readdir_plus(p, buf, offset)
        names, packed = s.names, s.packed
        st = mfusepy.c_stat()
        into = memoryview(st).cast("B")  # a slice assignment copies in C; ctypes.memmove costs 7x that
        for i in range(offset, len(names)):
            a = packed[i]
            if a is UNPACKED:
                ops.readdir_plus(p, buf, i)  # the next batch
                a = packed[i]
            if a is not None:
                into[:] = a
            if filler(buf, names[i], st if a is not None else None, i + 1, 0 if a is None else FUSE_FILL_DIR_PLUS) != 0:
                return 0  # the kernel's buffer is full: it asks again from this offset
        if offset >= len(names):
            ops.end_stream(buf)  # the kernel's request for the end of the folder
        return 0

    def getattr_fuse_3(self, path: bytes | None, buf: Any, fip: Any) -> int:
        # the stat comes packed (packed_stat): one copy, where mfusepy would fill it field by field
        packed = self.operations.getattr(None if path is None else path.decode(self.encoding, self.errors),
                                         fip.contents.fh if fip else None)
        ctypes.memmove(buf, packed, len(packed))
        return 0

    def utimens_fuse_3(self, path: bytes | None, buf: Any, fip: Any) -> int:
        # explicit times need the owner, "now" (or left as is) only write permission: utimensat(2)
        times, explicit = None, False
        if buf:
            now = time.time_ns()
            a, m = buf.contents.actime, buf.contents.modtime
            times = (_timespec_ns(a, now), _timespec_ns(m, now))
            explicit = any(ts.tv_nsec not in (UTIME_NOW, UTIME_OMIT) for ts in (a, m))
        return self.operations.utimens(None if path is None else path.decode(self.encoding, self.errors), times,
                                       explicit)

    def readlink(self, path: bytes, buf: Any, bufsize: int) -> int:
        # the target goes back as the bytes it was made with (mfusepy would encode a str)
        target = self.operations.readlink(path.decode(self.encoding, self.errors))
        data = target[:bufsize - 1] + b"\0"  # NUL-terminated, cut to the kernel's buffer
        ctypes.memmove(buf, data, len(data))
        return 0


def mount(ops: StorefsOperations, mountpoint: str, fsname: str) -> None:
    """Run the FUSE loop in this thread until the file system is unmounted.

    The kernel checks modes (default_permissions); device nodes stored in the bucket are
    never opened as devices and set-ID bits give nobody rights (nodev, nosuid), whoever mounts.
    """
    fc = ops.ns.cfg.fuse
    options: dict[str, Any] = {}
    if fc.allow_other:
        options["allow_other"] = True
    if fc.allow_root:
        options["allow_root"] = True
    if fc.read_only:
        options["ro"] = True
    Fuse(
        ops,
        mountpoint,
        foreground=True,
        fsname=fsname,
        subtype="storefs",
        default_permissions=True,
        auto_cache=True,
        max_read=MAX_READ,
        max_idle_threads=FUSE_IDLE_THREADS,
        nodev=True,
        nosuid=True,
        **options,
    )
