"""Command line: storefs mount | unmount | status | flush | retry | url | refresh | install-helper | completion."""

from __future__ import annotations

import argparse
import ctypes.util
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time

from . import __version__, notify
from .admin import add_commands
from .admin.configcheck import add_config_command
from .admin.escape import printable, printable_lines
from .admin.progress import Progress, format_size
from .completion import SHELLS, script
from .config import (
    LOG_LEVELS,
    Config,
    FuseConfig,
    find_config,
    load_config,
    parse_duration,
    with_mount_options,
    with_tenant,
)
from .control import NotRunning, UnsafeFolder, find_mount, pid_alive, request
from .errors import ConfigError
from .logs import STDERR, log_target, open_log_file, setup_logging

log = logging.getLogger(__name__)

MOUNT_TIMEOUT = 60.0
FUSE_CONF = "/etc/fuse.conf"
USER_ALLOW_OTHER = "user_allow_other"
#: how a shell reports a program killed by SIGPIPE, as coreutils' `seq 99999 | head -1` ends
EXIT_BROKEN_PIPE = 128 + signal.SIGPIPE


class CliError(Exception):
    """A message for the user and a non-zero exit."""


def _check_mountpoint(mnt: str) -> None:
    if not os.path.exists(mnt):
        raise CliError(f"mountpoint {mnt} does not exist (create it with: mkdir -p {mnt})")
    if not os.path.isdir(mnt):
        raise CliError(f"mountpoint {mnt} is not a directory")
    if os.path.ismount(mnt):
        raise CliError(f"{mnt} is already a mount point (storefs unmount {mnt} first)")
    if os.listdir(mnt):
        raise CliError(f"mountpoint {mnt} is not empty")


def _check_fuse() -> None:
    if not os.path.exists("/dev/fuse"):
        raise CliError("FUSE is not available: /dev/fuse is missing (load the fuse module, or run in a "
                       "container with --device /dev/fuse)")
    if shutil.which("fusermount3") is None or ctypes.util.find_library("fuse3") is None:
        raise CliError("libfuse3 is not installed: install the 'fuse3' package (apt-get install fuse3)")


def fuse_conf_allows_other(path: str = FUSE_CONF) -> bool:
    """Whether fuse.conf has the user_allow_other line fusermount3 looks for (a missing file has none)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return any(line.split("#", 1)[0].strip() == USER_ALLOW_OTHER for line in f)
    except FileNotFoundError:
        return False


def check_allow_other(fuse: FuseConfig, euid: int | None = None, conf: str = FUSE_CONF) -> None:
    """Refuse before mounting what fusermount3 would refuse inside libfuse, with what to do about it."""
    euid = os.geteuid() if euid is None else euid
    wanted = [name for name in ("allow_other", "allow_root") if getattr(fuse, name)]
    if not wanted or euid == 0:
        return
    try:
        allowed = fuse_conf_allows_other(conf)
    except OSError as e:
        raise CliError(f"{wanted[0]}: cannot read {conf}: {e.strerror or e}") from None
    if not allowed:
        raise CliError(f"{wanted[0]} needs the line `{USER_ALLOW_OTHER}` in {conf} when the mount is not made "
                       f"by root: add it as root (echo {USER_ALLOW_OTHER} >> {conf}), or mount as root, "
                       f"or drop {wanted[0]}")


def _mount_config(args: argparse.Namespace) -> Config:
    """The config file (or the embedded default), then --tenant and -o on top: the command line wins."""
    try:
        cfg = load_config(find_config(args.config).path)
        if args.tenant:
            cfg = with_tenant(cfg, args.tenant)
    except ConfigError as e:
        raise CliError(f"bad config: {e}") from None
    for warning in cfg.warnings:
        print(f"storefs: WARNING: {warning}", file=sys.stderr)
    try:
        return with_mount_options(cfg, args.options or [])
    except ConfigError as e:
        raise CliError(f"bad mount option: {e}") from None


def cmd_mount(args: argparse.Namespace) -> int:
    cfg = _mount_config(args)
    check_allow_other(cfg.fuse)
    mnt = os.path.abspath(args.mountpoint)
    _check_mountpoint(mnt)
    _check_fuse()
    from .daemon import DaemonError, prepare_cache_folder
    try:
        prepare_cache_folder(cfg.cache.dir)
    except (DaemonError, OSError) as e:
        raise CliError(str(e)) from None
    level = args.log_level or cfg.log_level
    target = log_target(args.log_file, cfg.cache.dir, args.foreground)
    if target and target != STDERR:
        os.makedirs(os.path.dirname(target) or ".", exist_ok=True)
    if args.foreground:
        setup_logging(level, target)
        return _run_foreground(cfg, mnt)
    return _run_background(cfg, mnt, level, target)


def _run_foreground(cfg: Config, mnt: str) -> int:
    from .daemon import run
    failure: list[str] = []

    def ready(msg: str | None) -> None:
        if msg:
            failure.append(msg)
            notify.status(f"failed: {msg}")
        else:
            print(f"storefs: mounted {mnt}", file=sys.stderr, flush=True)
            notify.ready(f"serving {mnt}")

    run(cfg, mnt, ready)
    if failure:
        raise CliError(failure[0])
    return 0


def _run_background(cfg: Config, mnt: str, level: str, log_file: str | None) -> int:
    """Fork before any thread exists; the child becomes the daemon and reports through a pipe.

    The parent tells systemd READY=1 with the daemon's pid (a Type=notify unit's main process
    may hand its role on so); a log_file of None or STDERR keeps the inherited stderr (the journal)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        os.setsid()
        devnull = os.open(os.devnull, os.O_RDWR)
        os.dup2(devnull, 0)
        if log_file and log_file != STDERR:
            logfd = open_log_file(log_file)
            os.dup2(logfd, 1)
            os.dup2(logfd, 2)
            os.close(logfd)
        else:
            os.dup2(2, 1)  # print() must never reach a terminal that may be gone
        os.close(devnull)
        code = 0
        try:
            setup_logging(level, log_file)
            from .daemon import run

            def ready(msg: str | None) -> None:
                try:
                    os.write(w, (("error:" + msg) if msg else "ok").encode() + b"\n")
                    os.close(w)
                except OSError:
                    pass

            run(cfg, mnt, ready)
        except BaseException:
            logging.getLogger("storefs").exception("daemon crashed")
            code = 1
        finally:
            os._exit(code)
    os.close(w)
    deadline = time.monotonic() + MOUNT_TIMEOUT
    buf = b""
    while b"\n" not in buf and time.monotonic() < deadline:
        chunk = os.read(r, 4096)
        if not chunk:
            break
        buf += chunk
    os.close(r)
    line = buf.decode(errors="replace").strip()
    if line == "ok":
        notify.ready(f"serving {mnt}", main_pid=pid)
        shown = log_file if log_file and log_file != STDERR else "stderr"
        print(f"storefs: mounted {mnt} (daemon pid {pid}, log {shown})", file=sys.stderr)
        return 0
    if line.startswith("error:"):
        os.waitpid(pid, 0)
        raise CliError(line[len("error:"):])
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    raise CliError(f"the daemon did not come up; see {log_file or 'its stderr'}")


class _FlushProgress:
    """What a flush has left, as a bar on a terminal or plain lines: files (changes) and bytes, with the rate."""

    def __init__(self, label: str, quiet: bool) -> None:
        self.label = label
        self.quiet = quiet
        self.bar: Progress | None = None
        self.files_done = self.bytes_done = 0
        self.left: tuple[int, int] | None = None
        self.errors_shown: set[str] = set()

    def show(self, st: dict) -> None:
        if self.quiet:
            return
        files, nbytes = st.get("pending", 0), st.get("dirty_bytes", 0)
        if self.bar is None:
            tty = sys.stderr.isatty()
            self.bar = Progress(self.label, stream=sys.stderr, tty=tty, interval=None if tty else 2.0)
        if self.left is not None:  # new writes during the flush grow the totals, never shrink what is done
            self.files_done += max(0, self.left[0] - files)
            self.bytes_done += max(0, self.left[1] - nbytes)
        self.left = (files, nbytes)
        self.bar.total_files = self.files_done + files
        self.bar.total_bytes = self.bytes_done + nbytes
        self.bar.set(files_done=self.files_done, bytes_done=self.bytes_done)
        for name, h in sorted((st.get("provider_health") or {}).items()):
            if h.get("state") == "down" and f"provider {name}" not in self.errors_shown:
                self.errors_shown.add(f"provider {name}")
                since = time.strftime("%H:%M:%SZ", time.gmtime(h["since"]))
                print(f"{chr(10) if self.bar.tty else ''}  provider {name} is not answering (since {since}): "
                      f"{h.get('error')}", file=sys.stderr, flush=True)
        for err in st.get("errors", [])[:3]:
            if err["key"] not in self.errors_shown:
                self.errors_shown.add(err["key"])
                print(f"{chr(10) if self.bar.tty else ''}  " + printable(f"retrying {err['key']}: {err['error']}"),
                      file=sys.stderr, flush=True)

    def close(self, final: dict) -> None:
        if self.bar is not None:
            self.show(final)
            self.bar.close()


def _flush(mnt: str, timeout: float | None, quiet: bool = False, label: str = "storefs flush") -> dict:
    progress = _FlushProgress(label, quiet)
    final: dict = {}
    for msg in request(mnt, {"cmd": "flush", "timeout": timeout}, timeout=None):
        if "progress" in msg:
            progress.show(msg["progress"])
        if msg.get("final"):
            final = msg
    if "error" in final:
        raise CliError(final["error"])
    progress.close(final)
    return final


def _mountpoint_of(path: str) -> str:
    """The storefs mountpoint holding path (the mountpoint itself or any file or folder in it), as `url` takes it.

    A path in no storefs mount of the mount table is asked about as given: the daemon's silence
    (or a refused socket folder) then says why.
    """
    try:
        return find_mount(path)[0]
    except NotRunning:
        return os.path.abspath(path)


def cmd_flush(args: argparse.Namespace) -> int:
    mnt = _mountpoint_of(args.mountpoint)
    try:
        final = _flush(mnt, args.timeout)
    except NotRunning as e:
        raise CliError(str(e)) from None
    if not final.get("done"):
        raise CliError(f"{final.get('pending')} changes still pending after {args.timeout}s")
    if final.get("parked_changes"):
        raise CliError(_parked_message(final) + "; fix the cause, then run `storefs retry`")
    print("storefs: everything is in the provider", file=sys.stderr)
    return 0


#: parked changes a message names at most
PARKED_NAMED = 5


def _parked_message(st: dict) -> str:
    """'N changes are parked (refused by the provider for good): KEY (REASON), ...'."""
    named = ", ".join(f"{p['key']} ({p['error']})" for p in st.get("parked", [])[:PARKED_NAMED])
    more = st["parked_changes"] - min(PARKED_NAMED, len(st.get("parked", [])))
    return (f"{st['parked_changes']} changes are parked (refused by the provider for good): {named}"
            + (f" and {more} more (storefs status)" if more > 0 else ""))


def _ask_for_path(cmd: str, path: str) -> dict:
    """The daemon's answer to a control command about a path in its mount (retry, refresh)."""
    try:
        mnt, rel = find_mount(path)
        answer: dict = next(iter(request(mnt, {"cmd": cmd, "path": rel})))
    except NotRunning as e:
        raise CliError(str(e)) from None
    if "error" in answer:
        raise CliError(f"{path}: {answer['error']}")
    return answer


def cmd_retry(args: argparse.Namespace) -> int:
    answer = _ask_for_path("retry", args.path)
    print(f"storefs: {answer['retried']} parked changes back in the upload queue", file=sys.stderr)
    return 0


#: seconds `unmount --timeout` gives the daemon beyond the timeout to exit once the mount is gone
UNMOUNT_GRACE = 3.0
#: seconds between progress lines while unmount waits for the daemon to exit
UNMOUNT_PROGRESS_EVERY = 1.0
#: seconds unmount waits for the daemon to exit when no --timeout bounds it
UNMOUNT_EXIT_WAIT = 120.0


def _still_pending(mnt: str) -> int | None:
    """The daemon's count of pending changes while it finishes its uploads, None once it no longer answers."""
    try:
        return int(next(iter(request(mnt, {"cmd": "status"}, timeout=UNMOUNT_PROGRESS_EVERY)))["pending"])
    except (NotRunning, OSError, KeyError, ValueError, StopIteration):
        return None


def _wait_daemon_exit(mnt: str, pid: int, within: float) -> bool:
    """Wait for the daemon to exit (it uploads what is left first), with a progress line each second."""
    deadline = time.monotonic() + within
    shown = time.monotonic()
    while pid_alive(pid):
        now = time.monotonic()
        if now >= deadline:
            return False
        if now - shown >= UNMOUNT_PROGRESS_EVERY:
            shown = now
            left = _still_pending(mnt)
            print(f"storefs unmount: waiting for daemon {pid} to finish"
                  + (f": {left} changes pending" if left is not None else "")
                  + f" ({deadline - now:.0f}s left)", file=sys.stderr, flush=True)
        time.sleep(0.02)
    return True


def cmd_unmount(args: argparse.Namespace) -> int:
    mnt = os.path.abspath(args.mountpoint)
    deadline = None if args.timeout is None else time.monotonic() + args.timeout
    try:
        st = next(iter(request(mnt, {"cmd": "status"})))
    except NotRunning:
        if os.path.ismount(mnt):
            subprocess.run(["fusermount3", "-u", "-z", mnt], check=False)
            print(f"storefs: no daemon answered; detached {mnt}. Pending changes stay in the cache "
                  "journal and are uploaded at the next mount.", file=sys.stderr)
            return 0
        raise CliError(f"{mnt} is not a storefs mount") from None
    final = _flush(mnt, args.timeout, label="storefs unmount")
    done = bool(final.get("done"))
    if not done and not args.force:
        raise CliError(f"{final.get('pending')} changes still pending after {args.timeout}s; not unmounting "
                       "(they are safe in the journal: use --force to unmount anyway)")
    left = None if deadline is None else (max(0.0, deadline - time.monotonic()) if done else 0.0)
    if left is not None:  # the daemon's own uploads after the unmount stay within the timeout
        try:
            next(iter(request(mnt, {"cmd": "exit_timeout", "seconds": left})))
        except NotRunning:
            pass
    parked = final.get("parked_changes", 0)
    res = subprocess.run(["fusermount3", "-u", mnt], capture_output=True, text=True)
    if res.returncode != 0:
        raise CliError(f"unmount of {mnt} failed: {res.stderr.strip() or res.returncode} "
                       "(is a program still using it? see: fuser -vm " + mnt + ")")
    within = UNMOUNT_EXIT_WAIT if left is None else left + UNMOUNT_GRACE
    exited = _wait_daemon_exit(mnt, st["pid"], within)
    if not exited and not args.force:
        raise CliError(f"unmounted, but daemon {st['pid']} is still running (finishing uploads); see its log")
    print(f"storefs: unmounted {mnt}" + ("" if exited else f" (daemon {st['pid']} is still exiting)"),
          file=sys.stderr)
    if not done:
        print(f"storefs: {final.get('pending')} changes were still pending after {args.timeout:g}s: they stay "
              "in the cache journal and are uploaded at the next mount of this cache", file=sys.stderr)
    if parked:
        print(f"storefs: {_parked_message(final)}. They stay in the cache journal: after fixing the cause, "
              "mount again and run `storefs retry`", file=sys.stderr)
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    mnt = _mountpoint_of(args.mountpoint)
    try:
        st = next(iter(request(mnt, {"cmd": "status"})))
    except NotRunning as e:
        raise CliError(str(e)) from None
    st.pop("final", None)
    if args.json:
        print(json.dumps(st, indent=2, sort_keys=True))
        return 0
    print(f"mountpoint:   {st['mountpoint']} (daemon pid {st['pid']})")
    print(f"config:       {st['config']}")
    print(f"access:       {'read-only (nothing is uploaded)' if st.get('read_only') else 'read-write'}"
          + (f"; options {','.join(st['mount_options'])}" if st.get("mount_options") else ""))
    _print_providers(st)
    waiting = st.get("waiting_retry", 0)
    print(f"pending:      {st['pending']} changes, {st['dirty_files']} dirty files "
          f"({format_size(st['dirty_bytes'])}), {st['uploading']} uploading"
          + (f" ({st['uploading_unanswered']} without an answer: the provider is down)"
             if st.get("uploading_unanswered") else "")
          + (f", {waiting} waiting to retry (next try {_in(st.get('next_try'))})" if waiting else ""))
    print(f"cache:        {format_size(st['cache_bytes'])} used of {format_size(st['cache_max_bytes'])} "
          f"in {st['cache_dir']} ({format_size(st['cache_free_bytes'])} free on disk)")
    print(f"uploads:      {st['uploads_done']} done, {st['upload_failures']} failed attempts")
    for err in st["errors"][:10]:
        now = "uploading again" if err.get("state") == "uploading" else f"waiting, next try {_in(err.get('next_try'))}"
        print(printable(f"error:        {err['key']} ({err['op']}, {err['attempts']} attempts, {now}): {err['error']}"))
    _print_outcomes(st)
    return 0


def _in(epoch: float | None) -> str:
    """'in 3s' for a time to come (epoch seconds); 'now' when it has come or is unknown."""
    if epoch is None:
        return "when its provider answers"
    left = epoch - time.time()
    return f"in {left:.0f}s" if left >= 0.5 else "now"


def _print_providers(st: dict) -> None:
    """One line per provider: its kind, and whether it answers (down since when, and why)."""
    health = st.get("provider_health") or {}
    for i, (name, kind) in enumerate(st["providers"].items()):
        h = health.get(name) or {}
        if h.get("state") == "down":
            since = h["since"]
            state = (f"down since {time.strftime('%Y-%m-%d %H:%M:%SZ', time.gmtime(since))} "
                     f"({time.time() - since:.0f}s): {h.get('error')}")
        else:
            state = "up" + (", a request is slow to answer" if h.get("slow") else "")
        print(f"{'providers:' if i == 0 else '':<14}{name} ({kind}) {state}")


#: parked changes and conflicts `storefs status` prints at most (--json has up to 100 of each)
OUTCOMES_SHOWN = 10


def _print_outcomes(st: dict) -> None:
    """The parked changes (with their reasons) and the latest conflicts (both keys, when, what op)."""
    if st.get("parked_changes"):
        print(f"parked:       {st['parked_changes']} changes refused by the provider for good "
              "(kept in the cache; fix the cause, then `storefs retry`)")
        for p in st.get("parked", [])[:OUTCOMES_SHOWN]:
            print(printable(f"  parked:     {p['key']} ({p['op']}): {p['error']}"))
    if st.get("conflicts_total"):
        print(f"conflicts:    {st['conflicts_total']} (another writer changed the key first; latest first)")
        for c in st.get("conflicts", [])[:OUTCOMES_SHOWN]:
            when = time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(c["at"]))
            kept = f" -> this mount's version in {c['conflict_key']}" if c.get("conflict_key") else ""
            print(printable(f"  conflict:   {when} {c['op']} {c['key']}{kept}: {c.get('detail') or ''}"))


def cmd_url(args: argparse.Namespace) -> int:
    try:
        expires = parse_duration(args.expires, "--expires", "")
        wait = parse_duration(args.wait, "--wait", "")
    except ConfigError as e:
        raise CliError(f"{e.source}: {e.reason}") from None
    if not 1 <= expires <= 7 * 86400:
        raise CliError("--expires: between 1s and 7d (the longest a presigned S3 URL lives)")
    try:
        mnt, rel = find_mount(args.path)
        answer = next(iter(request(mnt, {"cmd": "url", "path": rel, "expires": expires, "wait": wait},
                                   timeout=wait + 30)))
    except NotRunning as e:
        raise CliError(str(e)) from None
    if "error" in answer:
        raise CliError(f"{args.path}: {answer['error']}")
    print(answer["url"])
    return 0


def cmd_refresh(args: argparse.Namespace) -> int:
    answer = _ask_for_path("refresh", args.path)
    print(f"{args.path}: dropped {answer['listings']} cached listings, {answer['names']} cached names, "
          f"{answer['cached_files']} cached copies; the kernel forgot {answer['kernel']} paths")
    return 0


def cmd_install_helper(args: argparse.Namespace) -> int:
    if args.systemd:
        from .systemd_unit import UNIT_DIR
        from .systemd_unit import install as install_unit
        directory, what, install = args.dir or UNIT_DIR, "the unit", install_unit
    else:
        from .mount_helper import HELPER_DIR
        from .mount_helper import install as install_helper
        directory, what, install = args.dir or HELPER_DIR, "the helper", install_helper
    try:
        done = install(directory, remove=args.remove)
    except OSError as e:
        raise CliError(f"cannot write {what} into {directory}: {e.strerror or e} (run it as root)") from None
    for line in done:
        print(f"storefs: {line}", file=sys.stderr)
    return 0


def cmd_completion(args: argparse.Namespace) -> int:
    print(script(args.shell, build_parser()), end="")
    return 0


def _log_level(text: str) -> str:
    level = text.upper()
    if level not in LOG_LEVELS:
        raise argparse.ArgumentTypeError(f"expected one of {', '.join(LOG_LEVELS)}, got {text!r}")
    return level


#: what status and flush take: any path in the mount names it, as `url` and `refresh` take theirs
IN_MOUNT_HELP = "the mountpoint, or any file or folder in the mount"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="storefs", description="Mount an artifact store as a directory.")
    p.add_argument("--version", action="version", version=f"storefs {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    m = sub.add_parser("mount", help="mount the store (returns once the mount is usable)")
    m.add_argument("-c", "--config", help="YAML config file (default: $STOREFS_CONFIG, "
                                          "~/.config/storefs/config.yaml, /etc/storefs/storefs.yaml, "
                                          "else the embedded local-folder config)")
    m.add_argument("-f", "--foreground", action="store_true", help="stay in the foreground")
    m.add_argument("--log-level", type=_log_level, help="DEBUG, INFO, WARNING, ERROR (default: config log_level)")
    m.add_argument("--log-file", help="log file (default: CACHE_DIR/storefs.log in the background)")
    m.add_argument("--tenant", help="show only this tenant's folder, as the mount root (config key: tenant)")
    m.add_argument("-o", dest="options", action="append", metavar="OPT[,OPT...]",
                   help="mount options, over the config's fuse: section (repeatable): allow_other, allow_root, "
                        "ro, rw, uid=USER, gid=GROUP, umask=022, file_mode=0644, dir_mode=0755, relatime, "
                        "strictatime, noatime, default_permissions (always on), attr_timeout=1s, "
                        "entry_timeout=, negative_timeout=, dir_cache_ttl=, read_ahead=")
    m.add_argument("mountpoint")
    m.set_defaults(func=cmd_mount)

    u = sub.add_parser("unmount", help="upload everything pending, then unmount")
    u.add_argument("--timeout", type=float, default=None,
                   help="give up waiting for uploads after N seconds (the command returns within about N + 3)")
    u.add_argument("--force", action="store_true", help="unmount even if uploads are still pending (they stay "
                                                          "in the cache journal for the next mount)")
    u.add_argument("mountpoint")
    u.set_defaults(func=cmd_unmount)

    s = sub.add_parser("status", help="pending uploads, cache use, errors")
    s.add_argument("--json", action="store_true")
    s.add_argument("mountpoint", help=IN_MOUNT_HELP)
    s.set_defaults(func=cmd_status)

    f = sub.add_parser("flush", help="wait until nothing is pending")
    f.add_argument("--timeout", type=float, default=None)
    f.add_argument("mountpoint", help=IN_MOUNT_HELP)
    f.set_defaults(func=cmd_flush)

    rt = sub.add_parser("retry", help="put parked changes (refused by the provider) back in the upload queue")
    rt.add_argument("path", nargs="?", default=".",
                    help="the mountpoint (every parked change) or a file or folder in it (default: .)")
    rt.set_defaults(func=cmd_retry)

    r = sub.add_parser("url", help="the public or presigned URL of a file in a mount (uploads it first)")
    r.add_argument("--expires", default="1h", help="lifetime of a presigned URL: 30m, 1h, 7d (default 1h)")
    r.add_argument("--wait", default="60s", help="how long to wait for the file's upload (default 60s)")
    r.add_argument("path")
    r.set_defaults(func=cmd_url)

    rf = sub.add_parser("refresh", help="drop the mount's cached listings and attributes at and below a path "
                                        "(pending changes stay), so the next access asks the provider")
    rf.add_argument("path")
    rf.set_defaults(func=cmd_refresh)

    h = sub.add_parser("install-helper", help="install mount.fuse.storefs, for /etc/fstab and mount -t fuse.storefs "
                                              "(--systemd: the unit storefs@.service)")
    h.add_argument("--dir", help="where mount(8) looks for helpers (default /sbin), or with --systemd where "
                                 "systemd looks for units (default /etc/systemd/system)")
    h.add_argument("--systemd", action="store_true",
                   help="write storefs@.service (Type=notify, ExecStart naming this storefs) instead")
    h.add_argument("--remove", action="store_true", help="remove the helpers (or the unit) instead")
    h.set_defaults(func=cmd_install_helper)

    cp = sub.add_parser("completion", help="print the shell completion script for every command and option",
                        description="Print a completion script, made from this command line's own parser. "
                                    "bash: storefs completion bash > /etc/bash_completion.d/storefs; "
                                    "zsh: storefs completion zsh > \"${fpath[1]}/_storefs\"")
    cp.add_argument("shell", choices=SHELLS)
    cp.set_defaults(func=cmd_completion)

    add_commands(sub)  # stats, ls, cleanup, migrate (storefs.admin)
    add_config_command(sub)  # config check (storefs.admin.configcheck)
    return p


def _reader_gone() -> int:
    """stdout's reader went away (`| head -1`): print nothing more and end as coreutils do, with no traceback."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # the interpreter's last flush at exit then goes nowhere
        os.close(devnull)
    except (OSError, ValueError) as e:
        log.debug("stdout not redirected after a broken pipe: %s", e)
    return EXIT_BROKEN_PIPE


def main(argv: list[str] | None = None) -> int:
    try:
        try:
            args = build_parser().parse_args(argv)
        finally:
            sys.stdout.flush()  # --help and --version: their pipe too may be closed
        code: int = args.func(args)
        sys.stdout.flush()  # what is still buffered meets a closed pipe here, not at exit
        return code
    except BrokenPipeError:
        return _reader_gone()
    except (CliError, UnsafeFolder) as e:
        print(printable_lines(f"storefs: {e}"), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
