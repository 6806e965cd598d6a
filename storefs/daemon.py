"""The mount's lifetime: checks before mounting, the FUSE loop, the final uploads.

Everything that starts threads happens inside the FUSE init callback, never before a
fork; after the kernel unmounts, the daemon keeps uploading what is still pending
(bounded) before it exits, and whatever is left stays in the journal for next time.
"""

from __future__ import annotations

import fcntl
import logging
import os
import time
from typing import Callable

from .cache.datafiles import DataFiles
from .cache.journal import Journal
from .config import Config
from .control import ControlServer, socket_path
from .errors import StorefsError
from .layout import Layout
from .namespace import Namespace
from .providers.factory import make_providers

log = logging.getLogger(__name__)

EXIT_FLUSH_TIMEOUT = 30.0


class DaemonError(Exception):
    """The mount cannot start; the message says why."""


def lock_cache(cache_dir: str) -> int:
    """Keep a second daemon off the same cache folder (its journal would be corrupted)."""
    os.makedirs(cache_dir, exist_ok=True)
    fd = os.open(os.path.join(cache_dir, "lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        owner = os.pread(fd, 64, 0).decode(errors="replace").strip()
        os.close(fd)
        raise DaemonError(f"cache folder {cache_dir} is in use by another storefs daemon (pid {owner or '?'})")
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    return fd


def run(cfg: Config, mountpoint: str, ready: Callable[[str | None], None]) -> None:
    """Mount and serve until unmounted; ready(None) once usable, ready(message) if it cannot start."""
    mountpoint = os.path.realpath(mountpoint)
    started = False
    try:
        lock_fd = lock_cache(cfg.cache.dir)
        providers = make_providers(cfg)
        for name, p in providers.items():
            try:
                p.check()
            except StorefsError as e:
                raise DaemonError(f"{cfg.source}: providers.{name}: {e}") from None
        journal = Journal(os.path.join(cfg.cache.dir, "journal.db"))
        data = DataFiles(cfg.cache.dir)
        ns = Namespace(cfg, Layout(cfg.layout, cfg.max_file_size), providers, journal, data)
    except (StorefsError, DaemonError, OSError) as e:
        ready(str(e))
        return

    def handle(req: dict, send: Callable[[dict], None]) -> dict:
        cmd = req.get("cmd")
        if cmd == "status":
            return status()
        if cmd == "flush":
            ok = ns.flush_all(req.get("timeout"), lambda st: send({"progress": st}))
            return {"done": ok, **status()}
        if cmd == "pending":  # what `storefs cleanup` must not delete: changes not uploaded yet, sources of copies
            with ns._lock:
                rows = ns.index.pending()
            return {"keys": sorted({k for e in rows for k in (e.key, e.copy_src) if k})}
        return {"error": f"unknown command {cmd!r}"}

    def status() -> dict:
        used, free = data.usage()
        return {"pid": os.getpid(), "mountpoint": mountpoint, "config": cfg.source, "cache_dir": cfg.cache.dir,
                "cache_bytes": used, "cache_free_bytes": free, "cache_max_bytes": cfg.cache.max_size,
                "providers": {n: p.kind for n, p in providers.items()}, **ns.status()}

    control = ControlServer(socket_path(mountpoint), handle)

    def on_init() -> None:
        nonlocal started
        control.start()
        started = True
        log.info("mounted %s (config %s, cache %s)", mountpoint, cfg.source, cfg.cache.dir)
        ready(None)

    from .fs import StorefsOperations, mount  # mfusepy loads libfuse here, in the final process
    ops = StorefsOperations(ns, on_init=on_init)
    try:
        mount(ops, mountpoint, fsname=f"storefs:{cfg.default_provider}")
    except Exception as e:
        if not started:
            ready(f"mounting {mountpoint} failed: {e}")
            return
        log.exception("FUSE loop ended with an error")
    finally:
        if started:
            log.info("unmounted %s; finishing pending uploads", mountpoint)
            t0 = time.monotonic()
            done = ns.flush_all(EXIT_FLUSH_TIMEOUT)
            if not done:
                left = len(ns.index.pending())
                log.warning("%d changes still pending after %.0fs; they stay in the journal for the next mount",
                            left, time.monotonic() - t0)
            control.stop()
        ns.stop()
        journal.close()
        for p in providers.values():
            p.close()
        os.close(lock_fd)
