"""File operations run as another uid, for the tests of mounts shared with other users.

    res = as_user(NOBODY, [("read", p), ("unlink", q)])      # [("ok", b"..."), ("EPERM", msg)]
    assert user_errno(NOBODY, "chmod", p, 0o600) == "EPERM"

Operations run in a small Python program started with `setpriv --reuid U --regid G
--clear-groups`, so the kernel sees a process of that user with no supplementary groups.
"""

from __future__ import annotations

import base64
import functools
import json
import logging
import os
import shutil
import subprocess
import sys
from typing import Any

log = logging.getLogger(__name__)

NOBODY = 65534  # the second user
THIRD = 65533  # a third user (sticky-folder tests)

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
        try:
            r = subprocess.run(_setpriv(uid, None) + [exe, "-c", "pass"], capture_output=True, timeout=30)
        except FileNotFoundError:  # no such interpreter here: try the next one
            continue
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


def expect_statuses(results: list[tuple[str, Any]], expected: list[str], ops: list[tuple]) -> None:
    """Each result's status ('ok' or errno name) must be the expected one; all differences at once."""
    assert len(results) == len(expected) == len(ops)
    bad = [f"  {op[0]}{tuple(str(a) for a in op[1:])}: got {r[0]} ({r[1] if r[0] != 'ok' else ''}), "
           f"expected {e}" for op, r, e in zip(ops, results, expected, strict=True) if r[0] != e]
    assert not bad, "operations as another user answered otherwise:\n" + "\n".join(bad)
