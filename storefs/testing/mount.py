"""A real storefs mount driven through its command line, for the mount tests and the benchmarks.

`StorefsMount` runs `python -m storefs mount/unmount/flush/status` as subprocesses, the way a
user does. Tests talk to the file system only through `store.mnt` (the kernel), and look at
the backend only through the provider-neutral accessors `provider_read`, `provider_keys`,
`provider_exists` and `provider_meta` (see storefs.testing.backends), so that every test runs
unchanged against each provider backend.

`start()` never blocks for ever: a daemon that hangs while mounting (or in FUSE init, so that
a first stat of the mount gets no answer) fails with MountHung, its log attached, and is killed
and detached.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from storefs.control import pid_alive, unescape_mount_field

log = logging.getLogger(__name__)

CMD_TIMEOUT = 120  # seconds, for any one storefs command
TOOL_TIMEOUT = 120  # seconds, for cp, tar, rsync ...
MOUNT_TIMEOUT = 90  # seconds for `storefs mount` to return; a daemon hung in init fails the start
RESPONSIVE_TIMEOUT = 30  # seconds for a mount to answer a stat or `ls -la`
CHILD_GONE_TIMEOUT = 10.0  # seconds a killed check is waited for once the stuck daemon is gone
MOUNTS = "/proc/self/mounts"


class MountHung(AssertionError):
    """A storefs daemon did not answer in time: mounting, or a first `ls -la` of the mount."""


def fuse_problem() -> str | None:
    """Why FUSE mounts cannot run here, or None when they can."""
    if not os.path.exists("/dev/fuse"):
        return "/dev/fuse is missing (no FUSE in this kernel/container; run scripts/install.sh "
        "and give the container --device /dev/fuse)"
    if not os.access("/dev/fuse", os.R_OK | os.W_OK):
        return "/dev/fuse is not readable/writable by this user"
    if shutil.which("fusermount3") is None:
        return "fusermount3 is missing (apt-get install fuse3, or run scripts/install.sh)"
    return None


def clean_env() -> dict[str, str]:
    """The environment for storefs commands: no STOREFS_* overrides leaking in from the caller."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("STOREFS_")}
    env["FUSE_LIBRARY_NAME"] = "fuse3"
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def run(cmd: list[str], *, timeout: float = TOOL_TIMEOUT, check: bool = True, **kw: Any) -> subprocess.CompletedProcess:
    """subprocess.run with a timeout, captured text output, and the output in the error on failure.

    Programs run in the C locale, so their messages and statistics can be parsed."""
    kw["env"] = {**(kw.get("env") or os.environ), "LC_ALL": "C"}
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)
    if check and res.returncode != 0:
        raise AssertionError(f"command failed ({res.returncode}): {' '.join(map(str, cmd))}\n"
                             f"stdout: {res.stdout[-4000:]}\nstderr: {res.stderr[-4000:]}")
    return res


def _mountpoints() -> list[str]:
    """Every mountpoint in the mount table, unescaped (an unreadable table is an error, not "none")."""
    with open(MOUNTS) as f:
        return [unescape_mount_field(parts[1]) for parts in (line.split() for line in f) if len(parts) > 1]


def is_mounted(path: str | os.PathLike) -> bool:
    """True when path is a mountpoint in /proc/mounts (works even when the FUSE daemon is dead)."""
    return os.path.realpath(path) in _mountpoints()


def mounts_under(prefix: str | os.PathLike) -> list[str]:
    """Mountpoints at or below prefix, deepest first."""
    prefix = os.path.realpath(prefix)
    found = [mp for mp in _mountpoints() if mp == prefix or mp.startswith(prefix.rstrip("/") + "/")]
    return sorted(found, key=len, reverse=True)


def lazy_unmount(path: str | os.PathLike) -> None:
    """Detach a (possibly dead) FUSE mount so its folder can be reused; a failure is logged, the
    caller checks is_mounted() where it matters."""
    for cmd in (["fusermount3", "-u", "-z", str(path)], ["umount", "-l", str(path)]):
        if not is_mounted(path):
            return
        try:
            subprocess.run(cmd, capture_output=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired) as e:
            log.warning("%s failed: %s", cmd[0], e)


def wait_pid_gone(pid: int, timeout: float = 30.0) -> bool:
    """Whether pid is gone within timeout (reaped when it is our child)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            return True
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)  # in case it is our child after all
        time.sleep(0.02)
    return not pid_alive(pid)


def file_tail(path: str | os.PathLike, lines: int) -> str:
    """The last lines of a log file, for failure messages ("" while the file does not exist)."""
    try:
        with open(path, "rb") as f:
            return b"\n".join(f.read().splitlines()[-lines:]).decode(errors="replace")
    except FileNotFoundError:
        return ""


def daemon_pids(config_path: str | os.PathLike) -> list[int]:
    """Pids of the processes started with `-c config_path` (a mount's own daemon: one config per mount)."""
    needle = f"\0-c\0{config_path}\0".encode()
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read()
        except (FileNotFoundError, ProcessLookupError):  # the process ended while we looked
            continue
        if needle in cmdline + b"\0":
            pids.append(int(entry))
    return pids


# --------------------------------------------------------------------------- the mount


class StorefsMount:
    """One storefs mount on root/mnt, with its config, cache and (for local) provider folder."""

    def __init__(self, root: Path, backend: Any, *, log_level: str | None = None, **cache: Any) -> None:
        self.root = Path(root)
        self.backend = backend
        self._mnt = self.root / "mnt"
        self._cache = self.root / "cache"
        self.config_path = self.root / "storefs.yaml"
        self.log_path = self.root / "storefs.log"
        self.log_level = log_level or os.environ.get("STOREFS_TEST_LOG_LEVEL", "INFO")
        self.cache_options: dict[str, Any] = {"writeback_delay": "0.2s", "uploaders": 2}
        self.cache_options.update(cache)
        self.extra_config: dict[str, Any] = {}
        self.pid: int | None = None
        self._mnt.mkdir(parents=True, exist_ok=True)

    # -- paths

    @property
    def mnt(self) -> Path:
        return self._mnt

    @property
    def cache(self) -> Path:
        return self._cache

    @property
    def data(self) -> Path | None:
        """The provider folder for the local provider (None for remote providers)."""
        return getattr(self.backend, "base", None)

    @property
    def provider(self) -> str:
        return self.backend.name

    @property
    def mounted(self) -> bool:
        return is_mounted(self._mnt)

    # -- provider-neutral view of the backend

    def provider_read(self, key: str) -> bytes | None:
        return self.backend.read(key)

    def provider_keys(self, prefix: str = "") -> list[str]:
        return self.backend.keys(prefix)

    def provider_exists(self, path: str) -> bool:
        return self.backend.exists(path)

    def provider_meta(self, key: str) -> dict | None:
        return self.backend.meta(key)

    # -- config

    def config(self) -> dict:
        cfg: dict[str, Any] = {
            "default_provider": self.backend.name,
            "providers": {self.backend.name: self.backend.provider_config()},
            "cache": {"dir": str(self._cache), **self.cache_options},
        }
        cfg.update(self.extra_config)
        return cfg

    def write_config(self) -> None:
        self.config_path.write_text(yaml.safe_dump(self.config(), sort_keys=False))

    # -- commands

    def storefs(self, *args: str, timeout: float = CMD_TIMEOUT, check: bool = True) -> subprocess.CompletedProcess:
        return run([sys.executable, "-m", "storefs", *args], timeout=timeout, check=check, env=clean_env())

    def start(self, timeout: float = MOUNT_TIMEOUT, **cache: Any) -> StorefsMount:
        """Write the config (cache options updated with **cache), mount, and check the mount answers.

        The command's output goes to a file, not a pipe: a daemon hung while mounting would hold a
        pipe open and keep us waiting for ever. It fails with MountHung after `timeout` instead."""
        self.cache_options.update(cache)
        assert not self.mounted, f"{self._mnt} is already mounted"
        self.write_config()
        # an unnamed file: nothing appears beside the mount, which some tests check
        with tempfile.TemporaryFile("w+") as out:
            proc = subprocess.Popen([sys.executable, "-m", "storefs", "mount", "-c", str(self.config_path),
                                     "--log-level", self.log_level, "--log-file", str(self.log_path), str(self._mnt)],
                                    stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=clean_env())
            try:
                rc = proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                tail = self.log_tail()
                self.kill_stuck_daemon()
                raise MountHung(f"storefs mount did not return in {timeout:.0f}s (a daemon stuck while "
                                f"mounting?)\nlog tail:\n{tail}") from None
            out.seek(0)
            output = out.read()
        if rc != 0:
            raise AssertionError(f"storefs mount failed ({rc}):\n{output}\nlog tail:\n{self.log_tail()}")
        assert self.mounted, f"storefs mount returned 0 but {self._mnt} is not mounted\n{output}"
        self.pid = int(self.status()["pid"])
        self.assert_responsive(listing=False)  # a stat only: a listing would fill the mount's caches
        return self

    def assert_responsive(self, rel: str = "", timeout: float = RESPONSIVE_TIMEOUT, listing: bool = True) -> None:
        """The mount answers a stat (and a listing) within timeout, checked from a child process, which a
        hung FUSE request cannot keep: it is killed, and so are the stuck daemon and its mount."""
        path = str(self._mnt / rel) if rel else str(self._mnt)
        cmd = ["ls", "-la", path] if listing else ["stat", path]
        child = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            child.wait(timeout)
        except subprocess.TimeoutExpired:
            # not subprocess.run's kill-then-wait: a request the daemon already read keeps the child
            # in an uninterruptible wait until the daemon dies, so the daemon goes first
            child.kill()
            tail = self.log_tail()
            self.kill_stuck_daemon()
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(CHILD_GONE_TIMEOUT)
            raise MountHung(f"{path}: the mount did not answer `{' '.join(cmd[:-1])}` in {timeout:.0f}s "
                            f"(daemon stuck?)\nlog tail:\n{tail}") from None

    def kill_stuck_daemon(self) -> None:
        """SIGKILL the mount's own daemon and detach the mount: with the daemon stuck, every access to
        the mountpoint (even the lstat in realpath) would block, cleanup included."""
        for pid in daemon_pids(self.config_path):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            wait_pid_gone(pid, 10)
        lazy_unmount(self._mnt)
        self.pid = None

    def unmount(self, timeout: float = CMD_TIMEOUT) -> None:
        """`storefs unmount`: uploads everything dirty, unmounts, and the daemon has exited."""
        pid = self.pid
        self.storefs("unmount", str(self._mnt), timeout=timeout)
        assert not self.mounted, f"{self._mnt} still mounted after storefs unmount"
        if pid is not None:
            assert wait_pid_gone(pid, 30), f"daemon {pid} still alive after storefs unmount"
        self.pid = None

    def flush(self, timeout: float = CMD_TIMEOUT) -> None:
        """`storefs flush`: returns once nothing is dirty."""
        self.storefs("flush", str(self._mnt), timeout=timeout)

    def status(self) -> dict:
        res = self.storefs("status", str(self._mnt), "--json", timeout=60)
        try:
            st = json.loads(res.stdout)
        except json.JSONDecodeError as e:
            raise AssertionError(f"storefs status --json printed no JSON object: {res.stdout!r}") from e
        assert isinstance(st, dict), st
        return st

    def kill9(self) -> None:
        """kill -9 the daemon (its pid from start, else from status), then detach the dead mount."""
        pid = self.pid or int(self.status()["pid"])
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        assert wait_pid_gone(pid, 30), f"daemon {pid} survived SIGKILL"
        lazy_unmount(self._mnt)
        assert not self.mounted, f"{self._mnt} still mounted after fusermount3 -u -z"
        self.pid = None

    def remount(self, empty_cache: bool = False, **cache: Any) -> StorefsMount:
        """Unmount (uploading everything), optionally delete the cache folder, and mount again."""
        self.unmount()
        if empty_cache:
            shutil.rmtree(self._cache, ignore_errors=True)
            assert not self._cache.exists()
        return self.start(**cache)

    def cleanup(self) -> None:
        """Leave no mount and no daemon behind, whatever state the test left; what fails on the way
        is logged and the next, harder step runs (unmount, then SIGKILL, then a lazy unmount)."""
        pid = self.pid
        if self.mounted:
            try:
                pid = int(self.status().get("pid") or 0) or pid
                self.storefs("unmount", "--timeout", "30", str(self._mnt), timeout=60, check=False)
            except (AssertionError, subprocess.TimeoutExpired, ValueError) as e:
                log.warning("cleanup of %s: %s", self._mnt, e)
        for other in ([pid] if pid else []) + daemon_pids(self.config_path):
            if not wait_pid_gone(other, 5):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(other, signal.SIGKILL)
                wait_pid_gone(other, 10)
        lazy_unmount(self._mnt)
        self.pid = None

    def log_tail(self, lines: int = 60) -> str:
        texts = [f"--- {p}\n{file_tail(p, lines)}" for p in (self.log_path, self._cache / "storefs.log") if p.exists()]
        return "\n".join(texts) or "(no log)"

    # -- convenience

    def path(self, rel: str) -> Path:
        return self._mnt / rel
