"""Two mounts of one bucket, as two hosts would have them, and the checks that no update was lost.

    pair = MountPair(tmp_path, backend, fuse={"dir_cache_ttl": "1s"})   # host1/ and host2/
    pair.start()
    ... write through pair.a.mnt and pair.b.mnt ...
    pair.flush_both()
    problems = lost_or_foreign(pair.fresh_files(ART), versions)

Each mount has its own root, cache folder and config, so they share nothing but the provider.
`fresh_files` reads a folder through a third mount started with an empty cache, the view of a
host that never saw either mount's cache.

A conflict copy is the name storefs gives a version that lost the race for its key:
`NAME.conflict-HOST-UTCTIME.EXT` (`keep.png` -> `keep.conflict-web1-20261202T120501Z.png`).
The checks only rely on the stem, the CONFLICT_MARK and the extension.

`TcpGate` is a TCP relay in front of the S3 server that can be shut: one mount reaches the
server through it (`GatedBackend`), so that mount alone loses the server, as a host that lost
its network does, while the other mount and the test's own client keep it. Its `delay` slows
the link down instead (an upload then lasts long enough to be cut short).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import hashlib
import logging
import os
import select
import shutil
import socket
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from storefs.testing.mount import StorefsMount

log = logging.getLogger(__name__)

CONFLICT_MARK = ".conflict-"  # between a conflict copy's stem and its host-and-time part
CONFLICT_GLOB = f"*{CONFLICT_MARK}*"
RELAY_CHUNK = 256 * 1024  # bytes moved per read by the gate's relays
POLL_SECONDS = 0.1  # how often the gate's threads look whether they should stop
SHOWN_BYTES = 40  # a version this short, in ASCII, is shown as it is in failure messages

# storefs' fuse: defaults (storefs.config.FuseConfig), for a pair whose config leaves them out
DIR_CACHE_TTL = 30.0
KERNEL_TIMEOUT = 1.0  # attr_timeout and entry_timeout
NEGATIVE_TIMEOUT = 0.5

# A version of a file: (path relative to the checked folder, the bytes a mount closed there).
Version = tuple[str, bytes]


# --------------------------------------------------------------------------- conflict copies


def is_conflict_copy_of(copy_rel: str, rel: str) -> bool:
    """Whether copy_rel names a conflict copy of rel (same folder, same stem and extension)."""
    folder, name = os.path.split(rel)
    copy_folder, copy_name = os.path.split(copy_rel)
    stem, ext = os.path.splitext(name)
    return (copy_folder == folder and copy_name.startswith(stem + CONFLICT_MARK)
            and copy_name.endswith(ext) and len(copy_name) > len(stem + CONFLICT_MARK + ext))


def conflict_copies(files: Iterable[str], rel: str) -> list[str]:
    """The names among files that are conflict copies of rel."""
    return sorted(f for f in files if is_conflict_copy_of(f, rel))


def files_below(root: Path) -> dict[str, bytes]:
    """{path relative to root: bytes} of every regular file below root, read through the kernel
    (none when root is not a folder)."""
    out: dict[str, bytes] = {}
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            p = os.path.join(dirpath, name)
            with open(p, "rb") as f:
                out[os.path.relpath(p, root)] = f.read()
    return out


def describe(data: bytes | None) -> str:
    """A short name for a version's bytes in failure messages."""
    if data is None:
        return "absent"
    if len(data) <= SHOWN_BYTES and data.isascii():
        return repr(data)
    return f"{len(data)} bytes, sha256 {hashlib.sha256(data).hexdigest()[:12]}"


def lost_or_foreign(files: Mapping[str, bytes], versions: Mapping[Version, bool]) -> list[str]:
    """What breaks "no update is lost" in a folder's files, one line per problem.

    versions maps every version the mounts closed, (path, bytes), to whether it must still be
    there (True), or was replaced or deleted on purpose by a mount that had read it (False).
    - a version that must be there is found at its path or in a conflict copy of its path;
    - a file at a path holds a version of that path that must still be there;
    - a conflict copy holds a version of the path it is a copy of;
    - nothing else appears."""
    problems = []
    by_path: dict[str, set[bytes]] = {}
    for (rel, data), _alive in versions.items():
        by_path.setdefault(rel, set()).add(data)
    for (rel, data), alive in sorted(versions.items()):
        if not alive:
            continue
        holders = [rel, *conflict_copies(files, rel)]
        if not any(files.get(h) == data for h in holders):
            problems.append(f"missing: {rel} = {describe(data)}; found at {rel}: {describe(files.get(rel))}, "
                            f"conflict copies: {[(c, describe(files[c])) for c in holders[1:]]}")
    for name, data in sorted(files.items()):
        if name in by_path:
            if not versions.get((name, data)):
                what = "a version replaced or deleted on purpose" if (name, data) in versions else \
                    "bytes no mount wrote there"
                problems.append(f"{name} holds {what}: {describe(data)}")
            continue
        originals = [rel for rel in by_path if is_conflict_copy_of(name, rel)]
        if not originals:
            problems.append(f"unexpected file {name}: {describe(data)}")
        elif not any(data in by_path[rel] for rel in originals):
            problems.append(f"conflict copy {name} holds bytes no mount wrote at {originals}: {describe(data)}")
    return problems


# --------------------------------------------------------------------------- two mounts


class MountPair:
    """Two storefs mounts of one provider, with their own roots and caches (host1/, host2/)."""

    def __init__(self, root: Path, backend: Any, *, backend_b: Any = None, fuse: dict | None = None,
                 **cache: Any) -> None:
        self.root = Path(root)
        self.backend = backend
        self.fuse = dict(fuse or {})
        self.cache = cache
        self.a = self._mount("host1", backend)
        self.b = self._mount("host2", backend_b or backend)

    def _mount(self, name: str, backend: Any) -> StorefsMount:
        m = StorefsMount(self.root / name, backend, **self.cache)
        if self.fuse:
            m.extra_config["fuse"] = dict(self.fuse)
        return m

    @property
    def both(self) -> tuple[StorefsMount, StorefsMount]:
        return self.a, self.b

    def start(self) -> MountPair:
        for m in self.both:
            m.start()
        return self

    def cleanup(self) -> None:
        """Leave no mount or daemon behind (see StorefsMount.cleanup)."""
        for m in self.both:
            m.cleanup()

    def log_tails(self) -> str:
        return "\n".join(f"=== {m.root.name}\n{m.log_tail()}" for m in self.both)

    def flush_both(self, timeout: float = 120) -> None:
        """`storefs flush` on both mounts at the same time, so that their uploads race."""
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            for f in [pool.submit(m.flush, timeout) for m in self.both]:
                f.result()

    def setting(self, key: str, default: float) -> float:
        """A fuse: duration of the pair's config in seconds ("1s", "0.5s" or a number)."""
        value = self.fuse.get(key, default)
        return float(value[:-1]) if isinstance(value, str) and value.endswith("s") else float(value)

    def view_lag(self) -> float:
        """Seconds after which a mount's view shows what the provider holds: its listing TTL, then the
        kernel's attribute and entry caches (the config defaults where the pair sets none)."""
        kernel = max(self.setting("attr_timeout", KERNEL_TIMEOUT), self.setting("entry_timeout", KERNEL_TIMEOUT),
                     self.setting("negative_timeout", NEGATIVE_TIMEOUT))
        return self.setting("dir_cache_ttl", DIR_CACHE_TTL) + kernel

    def provider_files(self, rel: str) -> dict[str, bytes]:
        """{path relative to rel: bytes} of the file objects below rel, read from the provider itself."""
        out = {}
        for key in self.backend.keys(rel):
            data = self.backend.read(key)
            if data is not None:  # deleted between the listing and the read
                out[key[len(rel.strip("/")) + 1:]] = data
        return out

    def fresh_files(self, rel: str) -> dict[str, bytes]:
        """The files below rel as a third mount with an empty cache shows them (a new host's view)."""
        fresh = StorefsMount(self.root / "fresh", self.backend)
        shutil.rmtree(fresh.cache, ignore_errors=True)
        try:
            fresh.start()
            return files_below(fresh.mnt / rel)
        finally:
            fresh.cleanup()


# --------------------------------------------------------------------------- a gate to the server


class TcpGate:
    """A TCP relay on a loopback port in front of (host, port) that can be shut: while shut, new
    connections are refused and the open ones are cut, as when a host loses its network."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.port = 0  # ours, chosen at the first open and kept
        self._lock = threading.Lock()  # guards _conns, _listener and _threads
        self._conns: set[socket.socket] = set()
        self._listener: socket.socket | None = None
        self._threads: list[threading.Thread] = []
        self._closing = threading.Event()
        #: seconds each relayed piece (up to RELAY_CHUNK bytes) waits before it is passed on: a slow link
        self.delay = 0.0

    @property
    def is_open(self) -> bool:
        return self._listener is not None

    def open(self) -> TcpGate:
        """Listen (again, on the same port) and relay every connection to the target."""
        assert not self.is_open, "the gate is open already"
        lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        lsock.bind(("127.0.0.1", self.port))
        lsock.listen(64)
        lsock.settimeout(POLL_SECONDS)
        self.port = lsock.getsockname()[1]
        self._closing.clear()
        with self._lock:
            self._listener = lsock
            t = threading.Thread(target=self._accept, args=(lsock,), name=f"gate-{self.port}", daemon=True)
            self._threads = [t]
        t.start()
        return self

    def shut(self) -> None:
        """Refuse new connections and cut the open ones; returns once no relay runs."""
        self._closing.set()
        with self._lock:
            lsock, self._listener = self._listener, None
            conns, self._conns = list(self._conns), set()
            threads, self._threads = self._threads, []
        for s in conns:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
        for t in threads:
            t.join(10)
        if lsock is not None:
            lsock.close()
        for s in conns:
            s.close()
        log.info("gate %d shut (%d connections cut)", self.port, len(conns) // 2)

    def url(self, endpoint_url: str) -> str:
        """endpoint_url with its host and port replaced by the gate's."""
        parts = urlsplit(endpoint_url)
        return urlunsplit(parts._replace(netloc=f"127.0.0.1:{self.port}"))

    def _accept(self, lsock: socket.socket) -> None:
        while not self._closing.is_set():
            try:
                client, _addr = lsock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                server = socket.create_connection(self.target, timeout=5)
            except OSError as e:
                log.warning("gate %d: cannot reach %s:%d: %s", self.port, *self.target, e)
                client.close()
                continue
            with self._lock:
                if self._closing.is_set():
                    client.close()
                    server.close()
                    return
                self._conns |= {client, server}
                t = threading.Thread(target=self._relay, args=(client, server), daemon=True)
                self._threads.append(t)
            t.start()

    def _relay(self, client: socket.socket, server: socket.socket) -> None:
        peer = {client: server, server: client}
        try:
            while not self._closing.is_set():
                ready, _w, _x = select.select(list(peer), [], [], POLL_SECONDS)
                for s in ready:
                    data = s.recv(RELAY_CHUNK)
                    if not data:
                        return
                    if self.delay:
                        time.sleep(self.delay)
                    peer[s].sendall(data)
        except OSError:
            return
        finally:
            with self._lock:
                self._conns -= {client, server}
            for s in (client, server):
                s.close()


class GatedBackend:
    """A provider backend whose mount reaches the S3 server through a TcpGate; the test's own
    view of the bucket (read, keys, ...) goes straight to the server."""

    def __init__(self, backend: Any, gate: TcpGate) -> None:
        self.inner = backend
        self.gate = gate
        self.name = backend.name

    def provider_config(self) -> dict:
        cfg = dict(self.inner.provider_config())
        cfg["endpoint_url"] = self.gate.url(cfg["endpoint_url"])
        return cfg

    def __getattr__(self, attr: str) -> Any:  # read, keys, exists, meta, head, client, bucket, close
        return getattr(self.inner, attr)


@contextlib.contextmanager
def gated(backend: Any) -> Iterator[GatedBackend]:
    """A GatedBackend in front of an S3 backend's server, open; shut and gone afterwards."""
    parts = urlsplit(backend.server.endpoint_url)
    gate = TcpGate(parts.hostname or "127.0.0.1", parts.port or 80).open()
    try:
        yield GatedBackend(backend, gate)
    finally:
        gate.shut()


@contextlib.contextmanager
def running(pair: MountPair) -> Iterator[MountPair]:
    """The pair started; always cleaned up, with both mounts' log tails printed when the body failed."""
    try:
        pair.start()
        yield pair
    except BaseException:
        print(pair.log_tails())
        raise
    finally:
        pair.cleanup()
