"""Helpers for the tests of mounts shared with other users (issue 18): running file operations
as another uid, s3fs-style objects planted with boto3, and a real nginx serving from a mount.

    res = as_user(NOBODY, [("read", p), ("unlink", q)])      # [("ok", b"..."), ("EPERM", msg)]
    assert user_errno(NOBODY, "chmod", p, 0o600) == "EPERM"

Operations run in a small Python program started with `setpriv --reuid U --regid G
--clear-groups`, so the kernel sees a process of that user with no supplementary groups.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

NOBODY = 65534  # the second user
THIRD = 65533  # a third user (sticky-folder tests)
S_IFLNK_0777 = stat.S_IFLNK | 0o777  # 41471, the mode s3fs stores for a symlink

# executed by the other user's interpreter: one JSON list of operations in, one JSON list out
_DRIVER = r"""
import base64, errno, json, os, socket, sys
def enc(v):
    if isinstance(v, bytes):
        return {"b64": base64.b64encode(v).decode()}
    return v
def dec(v):
    if isinstance(v, dict) and "b64" in v:
        return base64.b64decode(v["b64"])
    return v
def st(p, follow=True):
    s = os.stat(p) if follow else os.lstat(p)
    return {"mode": s.st_mode, "uid": s.st_uid, "gid": s.st_gid, "size": s.st_size,
            "mtime_ns": s.st_mtime_ns, "ctime_ns": s.st_ctime_ns, "atime_ns": s.st_atime_ns}
def op(name, *a):
    a = [dec(x) for x in a]
    if name == "read":
        with open(a[0], "rb") as f:
            return f.read()
    if name == "write":              # path, data, [flags], [mode]: create/truncate unless flags given
        flags = a[2] if len(a) > 2 and a[2] is not None else os.O_WRONLY | os.O_CREAT | os.O_TRUNC
        fd = os.open(a[0], flags, a[3] if len(a) > 3 else 0o666)
        try:
            os.write(fd, a[1])
        finally:
            os.close(fd)
        return None
    if name == "append":
        fd = os.open(a[0], os.O_WRONLY | os.O_APPEND)
        try:
            os.write(fd, a[1])
        finally:
            os.close(fd)
        return None
    if name == "open":               # path, flags: open and close
        os.close(os.open(a[0], a[1], 0o666))
        return None
    if name == "listdir":
        return sorted(os.listdir(a[0]))
    if name == "stat":
        return st(a[0])
    if name == "lstat":
        return st(a[0], False)
    if name == "utime":              # path, None (now) or [atime_ns, mtime_ns]
        if a[1] is None:
            os.utime(a[0])
        else:
            os.utime(a[0], ns=tuple(a[1]))
        return None
    if name == "chown":
        os.chown(a[0], a[1], a[2])
        return None
    if name == "mknod":              # path, mode, major, minor
        os.mknod(a[0], a[1], os.makedev(a[2], a[3]))
        return None
    if name == "bind":
        s = socket.socket(socket.AF_UNIX)
        s.bind(a[0])
        s.close()
        return None
    fn = getattr(os, name)           # unlink, rename, rmdir, mkdir, chmod, symlink, link, mkfifo, ...
    fn(*a)
    return None
os.umask(0o022)
out = []
for item in json.loads(sys.argv[1]):
    try:
        out.append(["ok", enc(op(*item))])
    except OSError as e:
        out.append([errno.errorcode.get(e.errno, str(e.errno)), str(e)])
print(json.dumps(out))
"""


def _enc(v: Any) -> Any:
    if isinstance(v, bytes):
        return {"b64": base64.b64encode(v).decode()}
    if isinstance(v, os.PathLike):
        return os.fspath(v)
    if isinstance(v, (list, tuple)):
        return [_enc(x) for x in v]
    return v


def _dec(v: Any) -> Any:
    if isinstance(v, dict) and "b64" in v:
        return base64.b64decode(v["b64"])
    return v


def _setpriv(uid: int, gid: int | None, groups: list[int] | None = None) -> list[str]:
    g = uid if gid is None else gid
    grp = f"--groups={','.join(map(str, groups))}" if groups else "--clear-groups"
    return ["setpriv", f"--reuid={uid}", f"--regid={g}", grp, "--"]


@functools.cache
def user_python(uid: int = NOBODY) -> str:
    """A Python interpreter that uid may run (the test's own may live in root's 0700 home)."""
    candidates = [sys.executable, os.path.realpath(sys.executable), "/usr/bin/python3",
                  shutil.which("python3") or "", "/usr/local/bin/python3"]
    for exe in dict.fromkeys(c for c in candidates if c):
        with contextlib.suppress(Exception):
            r = subprocess.run(_setpriv(uid, None) + [exe, "-c", "pass"], capture_output=True, timeout=30)
            if r.returncode == 0:
                return exe
    raise AssertionError(f"no Python interpreter that uid {uid} may run (tried {candidates})")


def as_user(uid: int, ops: list[tuple], *, gid: int | None = None, groups: list[int] | None = None,
            cwd: str = "/") -> list[tuple[str, Any]]:
    """Run file operations as uid (gid: same number unless given; supplementary groups: none
    unless given), with umask 022.

    Each op is (name, *args) with names: read, write (path, data[, flags[, mode]]), append, open (path,
    flags), listdir, stat, lstat, utime (path, None | (atime_ns, mtime_ns)), chown, mknod (path,
    mode, major, minor), bind, or any os function (unlink, rename, chmod, mkdir, symlink, link...).
    Returns one (status, value) per op: ("ok", result) or (errno name, message)."""
    payload = json.dumps([[_enc(x) for x in op] for op in ops])
    r = subprocess.run(_setpriv(uid, gid, groups) + [user_python(uid), "-c", _DRIVER, payload], capture_output=True,
                       text=True, timeout=120, cwd=cwd)
    if r.returncode != 0:
        raise AssertionError(f"operations as uid {uid} crashed ({r.returncode}): {r.stderr[-3000:]}")
    return [(status, _dec(value)) for status, value in json.loads(r.stdout)]


def user_do(uid: int, *op: Any, gid: int | None = None) -> tuple[str, Any]:
    return as_user(uid, [op], gid=gid)[0]


def user_errno(uid: int, *op: Any, gid: int | None = None) -> str:
    """'ok' or the errno name of one operation run as uid."""
    return user_do(uid, *op, gid=gid)[0]


def user_run(uid: int, cmd: list[str], *, gid: int | None = None, check: bool = True, timeout: float = 120,
             **kw: Any) -> subprocess.CompletedProcess:
    """A command run as uid (setpriv), output captured as text, in the C locale."""
    env = {**os.environ, "LC_ALL": "C", "HOME": "/"}
    r = subprocess.run(_setpriv(uid, gid) + cmd, capture_output=True, text=True, timeout=timeout, env=env,
                       cwd=kw.pop("cwd", "/"), **kw)
    if check and r.returncode != 0:
        raise AssertionError(f"as uid {uid}: {' '.join(map(str, cmd))} failed ({r.returncode})\n"
                             f"stdout: {r.stdout[-2000:]}\nstderr: {r.stderr[-2000:]}")
    return r


def s3_client(store: Any) -> Any:
    """(boto3 client, bucket) of an S3 store; None on the local provider."""
    b = store.backend
    return (b.client, b.bucket) if hasattr(b, "client") else None


def s3_head(store: Any, key: str) -> dict | None:
    """The S3 HEAD of key (ContentLength, ContentType, Metadata ...), None when absent."""
    client, bucket = s3_client(store)
    try:
        return client.head_object(Bucket=bucket, Key=key)
    except Exception as e:
        if "404" in str(e) or "NoSuchKey" in str(e) or "Not Found" in str(e):
            return None
        raise


def settle(seconds: float = 0.02) -> None:
    """A short pause, so that two timestamps taken around it differ even at coarse clocks."""
    time.sleep(seconds)


# --------------------------------------------------------------------------- nginx


def nginx_binary() -> str | None:
    return shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if os.access(p, os.X_OK)), None)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Nginx:
    """Debian's nginx serving `root` on a free loopback port: master as root, workers as www-data."""

    def __init__(self, root: str | os.PathLike, workdir: str | os.PathLike, user: str = "www-data") -> None:
        self.root = os.fspath(root)
        self.workdir = Path(workdir)
        self.user = user
        self.port = 0
        self.proc: subprocess.Popen | None = None

    def config(self) -> str:
        w = self.workdir
        return f"""
user {self.user};
worker_processes 1;
pid {w}/nginx.pid;
error_log {w}/error.log info;
events {{ worker_connections 64; }}
http {{
    types {{ image/png png; image/jpeg jpg; video/mp4 mp4; application/octet-stream bin; }}
    default_type application/octet-stream;
    access_log {w}/access.log;
    client_body_temp_path {w}/body;
    proxy_temp_path {w}/proxy;
    fastcgi_temp_path {w}/fastcgi;
    uwsgi_temp_path {w}/uwsgi;
    scgi_temp_path {w}/scgi;
    sendfile on;
    server {{
        listen 127.0.0.1:{self.port};
        server_name localhost;
        root {self.root};
        location / {{ }}
    }}
}}
"""

    def start(self) -> Nginx:
        exe = nginx_binary()
        assert exe, "nginx is not installed"
        self.workdir.mkdir(parents=True, exist_ok=True)
        conf = self.workdir / "nginx.conf"
        last = ""
        for _attempt in range(3):
            self.port = free_port()
            conf.write_text(self.config())
            self.proc = subprocess.Popen([exe, "-p", str(self.workdir), "-e", str(self.workdir / "error.log"),
                                          "-c", str(conf), "-g", "daemon off;"],
                                         stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                         stderr=subprocess.STDOUT, start_new_session=True)
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline and self.proc.poll() is None:
                with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return self
                time.sleep(0.05)
            last = self.log_tail()
            self.stop()
        raise AssertionError(f"nginx did not start:\n{last}")

    def get(self, path: str, headers: dict | None = None) -> tuple[int, dict, bytes]:
        """(status, headers, body) of a GET; errors (4xx/5xx) are answers too."""
        import urllib.error
        import urllib.request

        req = urllib.request.Request(f"http://127.0.0.1:{self.port}/{path.lstrip('/')}", headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status, dict(r.headers), r.read()
        except urllib.error.HTTPError as e:
            return e.code, dict(e.headers), e.read()

    def log_tail(self, n: int = 30) -> str:
        out = []
        for name in ("error.log", "access.log"):
            with contextlib.suppress(OSError):
                out.append(f"--- {name}\n" + "\n".join((self.workdir / name).read_text(errors="replace")
                                                     .splitlines()[-n:]))
        return "\n".join(out)

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()  # SIGTERM: fast shutdown of master and workers
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, 9)
                proc.wait(5)
        if proc.stdout:
            proc.stdout.close()


# --------------------------------------------------------------------------- provider views


def is_s3(store: Any) -> bool:
    return hasattr(store.backend, "client")


def plant(store: Any, key: str, body: bytes = b"", metadata: dict | None = None,
          content_type: str | None = None) -> None:
    """Write an object behind storefs's back, as another S3 client (s3fs, boto3) would; S3 only."""
    client, bucket = s3_client(store)
    kw: dict[str, Any] = {"Bucket": bucket, "Key": key, "Body": body}
    if metadata is not None:
        kw["Metadata"] = metadata
    if content_type:
        kw["ContentType"] = content_type
    client.put_object(**kw)


def provider_snapshot(store: Any) -> dict:
    """Everything the provider holds: per key (markers included) its size, ETag and metadata on
    S3; per path its lstat fields, bytes or link target and user.* xattrs on the local provider."""
    if is_s3(store):
        client, bucket = s3_client(store)
        out = {}
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            for o in page.get("Contents", []):
                h = client.head_object(Bucket=bucket, Key=o["Key"])
                out[o["Key"]] = (h["ContentLength"], h["ETag"], h.get("ContentType"), h.get("Metadata", {}))
        return out
    base = store.data
    out = {}
    for dirpath, dirs, files in os.walk(base):
        for name in dirs + files:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            if stat.S_ISLNK(st.st_mode):
                body: Any = os.readlink(p)
            elif stat.S_ISREG(st.st_mode):
                with open(p, "rb") as f:
                    body = f.read()
            else:
                body = None
            xattrs = {}
            if not stat.S_ISLNK(st.st_mode):
                with contextlib.suppress(OSError):
                    xattrs = {n: os.getxattr(p, n) for n in os.listxattr(p)}
            out[os.path.relpath(p, base)] = (st.st_mode, st.st_uid, st.st_gid, st.st_size, st.st_mtime_ns,
                                             st.st_rdev, body, xattrs)
    return out


def journal_rows(cache_dir: str | os.PathLike) -> int:
    """Rows in the cache folder's journal (0 when there is no journal at all)."""
    import sqlite3

    path = os.path.join(cache_dir, "journal.db")
    if not os.path.exists(path):
        return 0
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return con.execute("SELECT COUNT(*) FROM entries").fetchone()[0]
    finally:
        con.close()


def expect_statuses(results: list[tuple[str, Any]], expected: list[str], ops: list[tuple]) -> None:
    """Each result's status ('ok' or errno name) must be the expected one; all differences at once."""
    assert len(results) == len(expected) == len(ops)
    bad = [f"  {op[0]}{tuple(str(a) for a in op[1:])}: got {r[0]} ({r[1] if r[0] != 'ok' else ''}), "
           f"expected {e}" for op, r, e in zip(ops, results, expected, strict=True) if r[0] != e]
    assert not bad, "operations as another user answered otherwise:\n" + "\n".join(bad)


# --------------------------------------------------------------------------- mounts that may hang


def start_guarded(store: Any, timeout: float = 90) -> None:
    """store.start(), but a daemon that hangs while mounting fails the test after `timeout` instead
    of blocking it: the command's output goes to a file (a pipe held open by the hung daemon would
    keep subprocess waiting forever), and the mount must answer a stat right after."""
    from helpers import clean_env, is_mounted

    assert not store.mounted, f"{store.mnt} is already mounted"
    store.write_config()
    out_path = store.root / "mount-command.out"
    with open(out_path, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "storefs", "mount", "-c", str(store.config_path),
                                 "--log-level", store.log_level, "--log-file", str(store.log_path), str(store.mnt)],
                                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=clean_env())
        try:
            rc = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            log = store.log_tail()
            kill_stuck_daemon(store)
            raise AssertionError(f"storefs mount did not finish in {timeout:.0f}s (a daemon stuck while "
                                 f"mounting?)\nlog tail:\n{log}") from None
    if rc != 0:
        raise AssertionError(f"storefs mount failed ({rc}): {out_path.read_text()}\n{store.log_tail()}")
    assert is_mounted(store.mnt)
    store.pid = int(store.status()["pid"])
    assert_responsive(store)


def _daemon_pids(store: Any) -> list[int]:
    """Pids of this mount's own daemon: the processes started with its config file (unique per test)."""
    needle = f"\0-c\0{store.config_path}\0".encode()
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    if needle in f.read() + b"\0":
                        pids.append(int(entry))
    return pids


def kill_stuck_daemon(store: Any) -> None:
    """SIGKILL the mount's own daemon and detach the mount: with the daemon stuck, every access to
    the mountpoint (even the lstat in realpath) would block, cleanup included."""
    from helpers import lazy_unmount, wait_pid_gone

    for pid in _daemon_pids(store):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, 9)
        wait_pid_gone(pid, 10)
    lazy_unmount(store.mnt)
    store.pid = None


def assert_responsive(store: Any, rel: str = "", timeout: float = 30) -> None:
    """The mount answers a stat and a listing within timeout (checked from a child process, which a
    hung FUSE request cannot keep: it is killed)."""
    path = str(store.mnt / rel) if rel else str(store.mnt)
    try:
        subprocess.run(["ls", "-la", path], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       timeout=timeout)
    except subprocess.TimeoutExpired:
        log = store.log_tail()
        kill_stuck_daemon(store)
        raise AssertionError(f"{path}: the mount did not answer `ls -la` in {timeout:.0f}s (daemon stuck?)\n"
                             f"log tail:\n{log}") from None


def remount_guarded(store: Any, empty_cache: bool = True) -> None:
    """store.remount(empty_cache) with start_guarded."""
    store.unmount()
    if empty_cache:
        shutil.rmtree(store.cache, ignore_errors=True)
    start_guarded(store)
