"""What every benchmark needs: progress lines, commands, sizes, polling, and processes' memory."""

from __future__ import annotations

import argparse
import errno
import logging
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from storefs.control import pid_alive

log = logging.getLogger(__name__)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the repository
MiB = 1024 * 1024
MB = 1e6  # MB/s are 10^6 bytes per second
DROP_CACHES = "/proc/sys/vm/drop_caches"


def say(msg: str, tag: str = "bench") -> None:
    """A progress line on stderr, with the time (stdout keeps the tables)."""
    print(f"[{tag} {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def parse_size(text: str) -> int:
    """Bytes in "128MiB", "1G", "4096" (argparse type)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(i?B?)\s*", text, re.I)
    if not m:
        raise argparse.ArgumentTypeError(f"not a size: {text!r}")
    mult = {"": 1, "K": 1024, "M": MiB, "G": 1024 * MiB, "T": 1024 ** 4}[m.group(2).upper()]
    return int(float(m.group(1)) * mult)


def run(cmd: list[str], timeout: float = 600, **kw: Any) -> subprocess.CompletedProcess:
    """subprocess.run with text output captured and a timeout; the caller reads returncode."""
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)


def first_line(cmd: list[str]) -> str:
    """The first line a command prints (a version), or "unavailable" when it cannot run."""
    try:
        r = run(cmd, timeout=60)
        return (r.stdout or r.stderr).strip().splitlines()[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        return "unavailable"


def git_version() -> str:
    """The commit storefs runs from, and whether storefs/ has uncommitted changes."""
    rev = run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"]).stdout.strip()
    dirty = run(["git", "-C", ROOT, "status", "--porcelain", "--", "storefs"]).stdout.strip()
    return f"git {rev}" + (" + uncommitted changes in storefs/" if dirty else "")


#: utime and stime in /proc/PID/stat, counted from the field after the process name (proc(5): fields 14 and 15)
STAT_UTIME, STAT_STIME = 11, 12
#: the unit of those fields (10 ms on most kernels)
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def vm(pid: int, field: str) -> int:
    """A /proc/PID/status field in bytes (VmRSS now, VmHWM the peak so far); 0 once the process is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


def tree(pid: int) -> list[int]:
    """pid and all its descendants (JuiceFS runs a supervisor process and a child that serves FUSE)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for tid in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{tid}/children") as f:
                    todo += [int(c) for c in f.read().split()]
        except (FileNotFoundError, ProcessLookupError):  # it (or a thread) ended while we looked
            pass
    return out


def tree_vm(pid: int, field: str) -> int:
    """vm() summed over pid's process tree."""
    return sum(vm(p, field) for p in tree(pid))


def cpu_seconds(pid: int) -> float | None:
    """CPU time (user + system) a process has used so far, its ended threads included; None once it is gone
    (a daemon in C may well have used 0 ticks yet)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()  # after the name, which may hold spaces
    except (FileNotFoundError, ProcessLookupError):
        return None
    return (int(fields[STAT_UTIME]) + int(fields[STAT_STIME])) / CLOCK_TICKS


def tree_cpu(pid: int) -> float | None:
    """cpu_seconds() summed over pid's process tree; None once pid itself is gone."""
    own = cpu_seconds(pid)
    if own is None:
        return None
    return own + sum(cpu_seconds(p) or 0.0 for p in tree(pid) if p != pid)


def poll(cond: Callable[[], bool], timeout: float, what: str, interval: float = 0.1) -> float:
    """Calls cond until it is true; the monotonic time it became true."""
    deadline = time.monotonic() + timeout
    while True:
        if cond():
            return time.monotonic()
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not done after {timeout:.0f}s")
        time.sleep(interval)


def drop_caches() -> bool:
    """Flush dirty pages and drop the page cache; False where the kernel does not let us."""
    os.sync()
    try:
        with open(DROP_CACHES, "w") as f:
            f.write("3\n")
        return True
    except OSError as e:
        if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):  # not root, or a read-only /proc/sys
            return False
        raise


def wait_gone(pid: int | None, timeout: float = 60, tag: str = "bench") -> None:
    """Wait for a daemon to exit after its unmount; SIGKILL it after timeout."""
    if pid is None:
        return
    deadline = time.monotonic() + timeout
    while pid_alive(pid):
        if time.monotonic() > deadline:
            say(f"pid {pid} still alive after unmount: SIGKILL", tag)
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            return
        time.sleep(0.1)


def exit_on_sigterm() -> None:
    """SIGTERM raises SystemExit, so that every finally (unmounts, SIGCONT, server stop) runs."""
    def _raise(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)
    signal.signal(signal.SIGTERM, _raise)
