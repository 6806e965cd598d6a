"""The mount's lifetime: checks before mounting, the FUSE loop, the final uploads.

Everything that starts threads happens inside the FUSE init callback, never before a
fork; after the kernel unmounts, the daemon keeps uploading what is still pending
(bounded) before it exits, and whatever is left stays in the journal for next time.
"""

from __future__ import annotations

import fcntl
import logging
import os
import signal
import sqlite3
import subprocess
import threading
import time
from collections.abc import Callable
from typing import Any

from . import keys, logs, notify
from .admin.progress import format_size
from .bdi import set_read_ahead
from .cache.datafiles import DataFiles
from .cache.eviction import Evictor, disk_space
from .cache.index import EntryIndex
from .cache.journal import Journal
from .cache.uploader import Uploader
from .config import Config, mount_options
from .control import ControlServer, UnsafeFolder, make_private_folder, socket_path
from .core import Core, CoreParts
from .core.attrs import Attrs
from .core.files import Files
from .core.lifecycle import Lifecycle
from .core.lookup import Lookup
from .core.multipart import OpenUploads
from .core.names import Names
from .core.recovery import recover
from .core.schedule import Activity, Schedule
from .core.state import CoreState
from .core.status import Status
from .core.tree import Tree
from .core.types import Counters, Settings
from .core.writeback import Writeback
from .errors import NotFound, ProviderBusy, ProviderUnavailable, StorefsError
from .layout import Layout
from .metrics import MetricsServer, hit_ratio
from .providers.base import Provider
from .providers.factory import make_providers
from .view import ProviderHealth, RemoteView
from .view.aliases import with_aliases
from .view.observed import observe_providers

log = logging.getLogger(__name__)

EXIT_FLUSH_TIMEOUT = 30.0
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
#: logrotate's convention: reopen the log file, keep serving
REOPEN_SIGNAL = signal.SIGHUP
HANDLED_SIGNALS = (*STOP_SIGNALS, REOPEN_SIGNAL)
URL_WAIT = 60.0  # how long `storefs url` waits for the file's upload by default
#: the cache folder may be readable by others (an old cache made 0755), never writable
CACHE_FORBIDDEN_BITS = 0o022


class DaemonError(Exception):
    """The mount cannot start; the message says why."""


def prepare_cache_folder(cache_dir: str) -> None:
    """Create the cache folder 0700, or refuse one that another user owns or may write into.

    The journal in it decides what gets uploaded where, so nobody else may plant files there.
    """
    try:
        make_private_folder(os.path.realpath(cache_dir), "cache folder", forbidden=CACHE_FORBIDDEN_BITS)
    except UnsafeFolder as e:
        raise DaemonError(str(e)) from None


def lock_cache(cache_dir: str) -> int:
    """Keep a second daemon off the same cache folder (its journal would be corrupted)."""
    prepare_cache_folder(cache_dir)
    fd = os.open(os.path.join(cache_dir, "lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        owner = os.pread(fd, 64, 0).decode(errors="replace").strip()
        os.close(fd)
        raise DaemonError(f"cache folder {cache_dir} is in use by another storefs daemon "
                          f"(pid {owner or '?'})") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    return fd


class StopOnSignal:
    """SIGTERM and SIGINT unmount the mount, so the FUSE loop ends and the final uploads run;
    SIGHUP reopens the log file (after logrotate moved it) and changes nothing else.

    The signals are blocked in the main thread before libfuse starts (every later thread
    inherits that) and taken by one thread with sigwait: libfuse's own handler would end
    the loop with an error code, and a Python handler never runs while the main thread is
    inside libfuse. A second stop signal exits at once; the journal keeps what is not uploaded.
    """

    def __init__(self, mountpoint: str) -> None:
        self.mountpoint = mountpoint
        self.received: str | None = None

    def block(self) -> None:
        signal.pthread_sigmask(signal.SIG_BLOCK, HANDLED_SIGNALS)

    def unblock(self) -> None:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, HANDLED_SIGNALS)

    def start(self) -> None:
        threading.Thread(target=self._wait, name="storefs-signals", daemon=True).start()

    def _wait(self) -> None:
        while True:
            signum = signal.sigwait(HANDLED_SIGNALS)
            name = signal.Signals(signum).name
            if signum == REOPEN_SIGNAL:
                reopened = logs.reopen()
                log.info("%s: %s", name, f"reopened {', '.join(reopened)}" if reopened else "no log file to reopen")
                continue
            if self.received is not None:
                log.warning("%s again: exiting now; changes not uploaded stay in the journal for the next mount", name)
                os._exit(1)
            self.received = name
            log.info("%s: unmounting %s, then finishing pending uploads", name, self.mountpoint)
            notify.stopping(f"{name}: unmounting {self.mountpoint}")
            self._unmount()

    def _unmount(self) -> None:
        res = subprocess.run(["fusermount3", "-u", self.mountpoint], capture_output=True, text=True)
        if res.returncode == 0:
            return
        if "busy" in res.stderr.lower():
            log.warning("%s is busy: detached it lazily; the daemon finishes once the last program using it "
                        "lets go", self.mountpoint)
            res = subprocess.run(["fusermount3", "-u", "-z", self.mountpoint], capture_output=True, text=True)
        if res.returncode != 0:
            log.error("unmounting %s failed: %s", self.mountpoint, res.stderr.strip() or res.returncode)


def _metrics_server(cfg: Config, snapshot: Callable[[], dict]) -> MetricsServer | None:
    """The /metrics endpoint when metrics_port is set, bound before mounting so a taken port is refused."""
    if not cfg.metrics_port:
        return None
    try:
        return MetricsServer(cfg.metrics_port, snapshot, cfg.metrics_address)
    except OSError as e:
        raise DaemonError(f"{cfg.source}: metrics_port: cannot listen on {cfg.metrics_address}:{cfg.metrics_port}: "
                          f"{e.strerror or e}") from None


def open_journal(cfg: Config) -> Journal:
    """The cache's journal, or a DaemonError that says how full the cache disk is (what usually stops it)."""
    try:
        return Journal(os.path.join(cfg.cache.dir, "journal.db"))
    except sqlite3.Error as e:
        try:
            free = f"{format_size(disk_space(cfg.cache.dir)[1])} free on its disk"
        except OSError:
            free = "its disk cannot be measured"
        raise DaemonError(f"cannot open the cache journal in {cfg.cache.dir} ({free}): {e}") from None


def cache_disk_limits(cfg: Config, root: str, statvfs: Callable[[str], Any] = os.statvfs) -> int:
    """cache.min_free in bytes for the cache disk at root; a max_size the disk cannot hold is warned about."""
    size, _ = disk_space(root, statvfs)
    min_free = cfg.cache.min_free.bytes_of(size)
    if cfg.cache.max_size > size:
        log.warning("cache.max_size (%s) is larger than the cache disk of %s (%s): the disk fills before the cache "
                    "reaches its limit; eviction keeps %s of it free (cache.min_free)", format_size(cfg.cache.max_size),
                    cfg.cache.dir, format_size(size), format_size(min_free))
    return min_free


def build_core(cfg: Config, layout: Layout, providers: dict[str, Provider], journal: Journal, data: DataFiles,
               *, clock: Callable[[], float] = time.monotonic, statvfs: Callable[[str], Any] = os.statvfs) -> Core:
    """The core's parts, each given what it uses, behind the facade; the journal's leftovers are recovered
    first, then clean copies evicted where the cache or its disk is over its limits. clock (monotonic seconds)
    times quiet delays, waits and recent deletes, statvfs measures the cache disk: tests inject them."""
    health = ProviderHealth()
    # timed and watched, then a file beside a folder of its name is known by its alias
    providers = with_aliases(observe_providers(providers, health))
    settings = Settings.from_config(cfg, mounted_at_ns=time.time_ns())
    index = EntryIndex(journal, read_only=settings.read_only)
    recover(index, data)
    state = CoreState(index, cfg.fuse.dir_cache_ttl, clock)
    order = [cfg.default_provider] + [p for p in providers if p != cfg.default_provider]
    remote = RemoteView(providers, order, cfg.fuse.dir_cache_ttl, cfg.fuse.negative_timeout, health=health)
    activity = Activity(clock)
    data.give_way_to(activity.idle)  # unlinked files' data is deleted after a burst of changes, not during it
    uploader = Uploader(cfg.cache.uploaders, cfg.cache.retry_max_delay, idle=activity.idle, unanswered=unanswered,
                        all_down=lambda: all(health.outage(p, confirmed=True) is not None for p in order))
    health.on_back(lambda _pname: uploader.kick())  # the changes that wait for a provider go when it is back
    schedule = Schedule(uploader, activity, settings.delay)
    tree = Tree(settings, state, layout, providers, remote, data, schedule)
    counters = Counters()
    evictor = Evictor(tree, cfg.cache.max_size, lambda: data.usage()[0], cfg.cache.space_wait,
                      after_pass=journal.restore_ballast, min_free=cache_disk_limits(cfg, data.root, statvfs),
                      free=lambda: disk_space(data.root, statvfs)[1], removed=data.removed_bytes, reap=data.reap_now)
    dropped = evictor.make_room()  # a full cache disk is no reason to refuse the mount: clean copies go first
    if dropped:
        log.info("made room at mount: dropped %d clean cached copies (%s free on the cache disk, min_free %s)",
                 dropped, format_size(evictor.free), format_size(evictor.min_free))
    status = Status(state, schedule, evictor, counters, data, settings.read_only, health=health, providers=order)
    files = Files(tree, schedule, evictor, counters, status.wait_uploaded)
    lookup = Lookup(tree, files)
    names = Names(tree, lookup, files, schedule)
    attrs = Attrs(tree, schedule)
    writeback = Writeback(tree, schedule)
    lifecycle = Lifecycle(tree, state, data, uploader, evictor, writeback, files,
                          OpenUploads(journal, providers, read_only=settings.read_only))
    return Core(CoreParts(state=state, schedule=schedule, uploader=uploader, evictor=evictor, counters=counters,
                          tree=tree, files=files, lookup=lookup, names=names, attrs=attrs, writeback=writeback,
                          status=status, lifecycle=lifecycle))


def unanswered(error: BaseException) -> bool:
    """Whether an upload failed because its provider gave no answer at all (it then waits for the probe
    to hear the provider again); a busy answer, a refusal or a conflict is an answer."""
    return isinstance(error, ProviderUnavailable) and not isinstance(error, ProviderBusy)


def pending_status(doing: str, st: dict) -> str:
    """A STATUS= line for `systemctl status`: what the daemon does, and what is left to upload."""
    return f"{doing}: {st['pending']} changes left to upload ({format_size(st['dirty_bytes'])})"


def mount_key(core: Core, path: str) -> str:
    """The key of a path below the mount (a single-tenant mount's root is the tenant's folder)."""
    return keys.from_mount_path(core.root, "/" + path.strip("/"))


def file_url(ns: Core, path: str, expires: float, wait: float) -> dict:
    """The URL of the file at a mount path; a file not uploaded yet is uploaded first, so the URL works."""
    key = mount_key(ns, path)
    try:
        if ns.getattr(key).is_dir:
            return {"error": "a directory: only files have URLs"}
    except NotFound:
        return {"error": "no such file"}
    if ns.getxattr(key, "user.storefs.state") != b"clean":
        if any(e.key == key for e in ns.waiting()[1]):
            return {"error": "still open for writing: its URL would serve older content"}
        try:
            ns.wait_uploaded(key, wait)
        except StorefsError:
            pass  # told below, with the reason
        if ns.getxattr(key, "user.storefs.state") != b"clean":
            st = ns.status()
            last = next((e["error"] for e in st["errors"] + st["parked"] if e["key"] == key), None)
            return {"error": f"not uploaded yet after {wait:g}s"
                             + (f" (last error: {last})" if last else "") + "; try again after `storefs flush`"}
    provider = ns.getxattr(key, "user.storefs.provider").decode()
    url = ns.providers[provider].url(key, max(1, int(expires)))
    if url is None:
        return {"error": f"provider {provider} has no URLs for its objects"}
    return {"url": url, "provider": provider, "key": key}


def refresh_path(ns: Core, path: str, invalidate: Callable[[str], bool] | None) -> dict:
    """`storefs refresh`: drop what the mount cached of the providers at and below a mount path, and
    have the kernel drop its attributes and pages of those paths (invalidate, where the edge can)."""
    key = mount_key(ns, path)
    dropped = ns.parts.tree.refresh(key)
    paths = [p for k in dropped.pop("keys") if (p := keys.to_mount_path(ns.root, k)) is not None]
    kernel = sum(1 for p in paths if invalidate(p)) if invalidate is not None else 0
    return {"path": "/" + path.strip("/"), **dropped, "kernel": kernel}


def run(cfg: Config, mountpoint: str, ready: Callable[[str | None], None]) -> None:
    """Mount and serve until unmounted; ready(None) once usable, ready(message) if it cannot start."""
    mountpoint = os.path.realpath(mountpoint)
    started = False
    try:
        control_path = socket_path(mountpoint)
        lock_fd = lock_cache(cfg.cache.dir)
        providers = make_providers(cfg)
        for name, p in providers.items():
            try:
                p.check(writable=not cfg.fuse.read_only)
            except StorefsError as e:
                raise DaemonError(f"{cfg.source}: providers.{name}: {e}") from None
        metrics = _metrics_server(cfg, lambda: scrape())
        journal = open_journal(cfg)
        data = DataFiles(cfg.cache.dir)
        ns = build_core(cfg, Layout(cfg.layout, cfg.max_file_size), providers, journal, data)
    except (StorefsError, DaemonError, OSError, UnsafeFolder) as e:
        ready(str(e))
        return

    exit_timeout = EXIT_FLUSH_TIMEOUT  # how long the uploads after the unmount may take

    def handle(req: dict, send: Callable[[dict], None]) -> dict:
        nonlocal exit_timeout
        cmd = req.get("cmd")
        if cmd == "status":
            return status()
        if cmd == "exit_timeout":  # `storefs unmount --timeout`: what is left of it bounds the uploads at exit
            exit_timeout = min(EXIT_FLUSH_TIMEOUT, max(0.0, float(req.get("seconds") or 0.0)))
            ns.parts.uploader.stop_timeout = min(ns.parts.uploader.stop_timeout, exit_timeout)
            return {"exit_timeout": exit_timeout}
        if cmd == "flush":
            def progress(st: dict) -> None:
                notify.status(pending_status("flushing", st))
                send({"progress": st})

            ok = ns.flush_all(req.get("timeout"), progress)
            notify.status(f"serving {mountpoint}")
            return {"done": ok, **status()}
        if cmd == "url":
            return file_url(ns, str(req.get("path", "")), float(req.get("expires") or 3600),
                             float(req.get("wait") or URL_WAIT))
        if cmd == "refresh":
            return refresh_path(ns, str(req.get("path", "")), ops.invalidate)
        if cmd == "pending":  # what `storefs cleanup` must not delete: changes not uploaded yet, sources of copies
            return {"keys": ns.pending_keys()}
        if cmd == "retry":  # parked changes at or below a path back in the queue
            if cfg.fuse.read_only:
                return {"error": "a read-only mount uploads nothing: retry on a read-write mount of this cache"}
            return {"retried": ns.retry(mount_key(ns, str(req.get("path", "/"))))}
        return {"error": f"unknown command {cmd!r}"}

    def status() -> dict:
        used, free = data.usage()
        return with_mount(ns.status(), used, free)

    def scrape() -> dict:
        """/metrics: counters only, no walk of the cache (status() walks it, for exact numbers)."""
        return with_mount(ns.parts.status.counts(), ns.parts.evictor.estimate(), disk_space(data.root)[1])

    def with_mount(st: dict, used: int, free: int) -> dict:
        return {"pid": os.getpid(), "mountpoint": mountpoint, "config": cfg.source, "cache_dir": cfg.cache.dir,
                "cache_bytes": used, "cache_free_bytes": free, "cache_max_bytes": cfg.cache.max_size,
                "cache_min_free_bytes": ns.parts.evictor.min_free,
                "read_only": cfg.fuse.read_only, "mount_options": mount_options(cfg.fuse),
                "providers": {n: p.kind for n, p in providers.items()}, **st,
                "operations": {k: n for k, n in OP_CALLS.items() if n},
                "operation_errors": {k: n for k, n in OP_ERRORS.items() if n},
                "cache_hit_ratio": round(hit_ratio(st["bytes_read"], st["bytes_fetched"]), 4),
                "metrics_url": metrics.url if metrics else None}

    control = ControlServer(control_path, handle)
    stopper = StopOnSignal(mountpoint)

    def on_init() -> None:
        nonlocal started
        set_read_ahead(mountpoint, cfg.fuse.read_ahead)
        control.start()
        stopper.start()
        if metrics:
            metrics.start()
        started = True
        log.info("mounted %s (config %s, cache %s)", mountpoint, cfg.source, cfg.cache.dir)
        ready(None)

    from .fs import OP_CALLS, OP_ERRORS, StorefsOperations, mount  # mfusepy loads libfuse here, in the final process
    ops = StorefsOperations(ns, on_init=on_init)
    stopper.block()
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
            doing = f"unmounted {mountpoint}, uploading"
            notify.stopping(pending_status(doing, ns.status()))

            def progress(st: dict) -> None:
                notify.status(pending_status(doing, st))

            t0 = time.monotonic()
            done = ns.flush_all(exit_timeout, progress)
            final = ns.status()
            if not done:
                log.warning("%d changes still pending after %.0fs; they stay in the journal for the next mount",
                            final["pending"], time.monotonic() - t0)
                notify.status(f"exiting: {final['pending']} changes stay in the cache journal for the next mount")
            elif final["parked_changes"]:
                log.warning("%d parked changes stay in the journal (see `storefs status` at the next mount, "
                            "then `storefs retry`)", final["parked_changes"])
            control.stop()
        else:
            stopper.unblock()  # no thread takes them: a stop signal acts as usual again
        if metrics:
            metrics.stop()
        ns.stop()
        journal.close()
        for p in providers.values():
            p.close()
        os.close(lock_fd)
