"""The control channel between the CLI and a running daemon: a Unix socket per mountpoint.

Requests and answers are JSON lines. `status` answers once; `flush` answers with
progress lines until nothing is left to upload, then a final line.

The socket lives in a folder only its user can enter: $XDG_RUNTIME_DIR/storefs, else
/run/storefs for root and /tmp/storefs-UID for others. storefs creates it 0700 and checks
it (a real folder, owned by the daemon's uid, no group or other bits) before it listens or
talks there; on top of that the daemon answers only its own uid and root (SO_PEERCRED).
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import re
import socket
import socketserver
import stat
import struct
import threading
from collections.abc import Callable, Iterator

log = logging.getLogger(__name__)

ROOT_RUNTIME_FOLDER = "/run/storefs"
RUNTIME_SUBFOLDER = "storefs"
PRIVATE_MODE = 0o700
SOCKET_MODE = 0o600
PEERCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid
ASK_TIMEOUT = 10.0  # seconds ask() waits for a daemon's answer


class UnsafeFolder(Exception):
    """A folder storefs keeps private exists but others could reach into it; the message says which and why."""


def check_private_folder(path: str, what: str, uid: int | None = None, forbidden: int = 0o077) -> None:
    """Refuse a folder that is a link, not a folder, owned by someone else, or has bits of `forbidden` set."""
    uid = os.geteuid() if uid is None else uid
    st = os.lstat(path)
    problem = None
    if stat.S_ISLNK(st.st_mode):
        problem = "it is a symbolic link, not a folder"
    elif not stat.S_ISDIR(st.st_mode):
        problem = "it is not a folder"
    elif st.st_uid != uid:
        problem = f"it is owned by uid {st.st_uid}, not by uid {uid} that runs storefs"
    elif st.st_mode & forbidden:
        problem = (f"its mode is {stat.S_IMODE(st.st_mode):04o}: others may "
                   + ("write into it" if forbidden == 0o022 else "enter it")
                   + f" (chmod {stat.S_IMODE(st.st_mode) & ~forbidden:04o} {path}, or remove it)")
    if problem:
        raise UnsafeFolder(f"refusing {what} {path}: {problem}")


def make_private_folder(path: str, what: str, mode: int = PRIVATE_MODE, forbidden: int = 0o077) -> None:
    """Create path (mode, never widened by the umask) unless it exists, then check it is ours alone."""
    parent = os.path.dirname(path.rstrip("/"))
    if parent:
        os.makedirs(parent, exist_ok=True)
    try:
        os.mkdir(path, mode)
    except FileExistsError:
        pass
    else:
        os.chmod(path, mode)  # the umask may have narrowed it: make it exact
    check_private_folder(path, what, forbidden=forbidden)


def socket_folders(uid: int | None = None, runtime_dir: str | None = None) -> list[str]:
    """Where this user's daemons listen, the daemon's own choice first.

    A daemon started by mount(8) or systemd has no XDG_RUNTIME_DIR and a login shell has one,
    so the CLI tries every place a daemon of its uid may have chosen. A runtime dir that is not
    the user's own (or does not exist) is skipped.
    """
    uid = os.geteuid() if uid is None else uid
    runtime = os.environ.get("XDG_RUNTIME_DIR") if runtime_dir is None else runtime_dir
    folders = []
    if runtime and os.path.isabs(runtime) and _owned_by(runtime, uid):
        folders.append(os.path.join(runtime, RUNTIME_SUBFOLDER))
    if uid == 0:
        folders.append(ROOT_RUNTIME_FOLDER)
    folders.append(f"/tmp/storefs-{uid}")
    return list(dict.fromkeys(folders))


def _owned_by(path: str, uid: int) -> bool:
    """The XDG spec: a runtime dir is its user's; another's (sudo -E keeps the caller's) is not used."""
    try:
        return os.stat(path).st_uid == uid
    except OSError:
        return False


def _socket_name(mountpoint: str) -> str:
    """Derived from the mountpoint's real path, so any CLI finds it."""
    digest = hashlib.sha256(os.path.realpath(mountpoint).encode("utf-8", "surrogateescape")).hexdigest()[:24]
    return f"{digest}.sock"


def socket_path(mountpoint: str) -> str:
    """Where the daemon of mountpoint listens; creates and checks the folder (UnsafeFolder if it is not private)."""
    folder = socket_folders()[0]
    make_private_folder(folder, "control socket folder")
    return os.path.join(folder, _socket_name(mountpoint))


def private_socket_folders() -> tuple[list[str], UnsafeFolder | None]:
    """This user's socket folders that exist and are private; and the refusal of the first one that
    exists but is not (never talked through)."""
    folders = []
    unsafe: UnsafeFolder | None = None
    for folder in socket_folders():
        try:
            check_private_folder(folder, "control socket folder")
        except FileNotFoundError:
            continue
        except UnsafeFolder as e:
            unsafe = unsafe or e
            continue
        folders.append(folder)
    return folders, unsafe


def _socket_paths(mountpoint: str) -> tuple[list[str], UnsafeFolder | None]:
    """Sockets the daemon of mountpoint may listen on (see private_socket_folders)."""
    folders, unsafe = private_socket_folders()
    return [os.path.join(folder, _socket_name(mountpoint)) for folder in folders], unsafe


def peer_credentials(sock: socket.socket) -> tuple[int, int]:
    """The pid and uid of the process at the other end of a Unix socket, as the kernel saw it connect."""
    pid, uid, _gid = PEERCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, PEERCRED.size))
    return pid, uid


def unescape_mount_field(field: str) -> str:
    """A path from /proc/*/mounts or mountinfo: the kernel writes space, tab, newline and backslash as octal escapes."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def pid_alive(pid: int) -> bool:
    """Running, and not a zombie waiting for whoever inherited it to reap it."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            st = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return False
    except OSError:
        return True  # there, but hidden from us (hidepid)
    # the state is the field right after the ")" that closes the command name
    fields = st.rsplit(")", 1)[-1].split()
    return bool(fields) and fields[0] != "Z"


def find_mount(path: str) -> tuple[str, str]:
    """The storefs mountpoint holding path and path relative to it ('/a/b'); NotRunning if none does."""
    target = os.path.realpath(path)
    best = ""
    with open("/proc/self/mounts", encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            fields = line.split()
            if len(fields) < 3 or fields[2] != "fuse.storefs":
                continue
            mnt = unescape_mount_field(fields[1])
            if (target == mnt or target.startswith(mnt.rstrip("/") + "/")) and len(mnt) > len(best):
                best = mnt
    if not best:
        raise NotRunning(f"{path} is not in a storefs mount")
    rel = os.path.relpath(target, best)
    return best, "/" if rel == "." else "/" + rel


Handler = Callable[[dict, Callable[[dict], None]], dict]


class ControlServer:
    """Serves requests on the socket in daemon threads; handler(request, send_progress) -> answer."""

    def __init__(self, path: str, handler: Handler) -> None:
        self.path = path
        self._handler = handler
        self._server: socketserver.ThreadingUnixStreamServer | None = None

    def start(self) -> None:
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        outer = self

        allowed = {0, os.geteuid()}

        class _Req(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                pid, uid = peer_credentials(self.request)
                if uid not in allowed:
                    log.warning("control socket: refused a connection from uid %d (pid %d): only uid %d and "
                                "root may talk to this daemon", uid, pid, os.geteuid())
                    return
                line = self.rfile.readline()
                if not line:
                    return
                def send(obj: dict) -> None:
                    self.wfile.write((json.dumps(obj) + "\n").encode())
                    self.wfile.flush()
                try:
                    answer = outer._handler(json.loads(line), send)
                except Exception as e:  # an answer, not a crash of the daemon
                    log.exception("control request failed")
                    answer = {"error": str(e)}
                try:
                    send({"final": True, **answer})
                except BrokenPipeError:
                    pass

        server = socketserver.ThreadingUnixStreamServer(self.path, _Req)
        server.daemon_threads = True
        os.chmod(self.path, SOCKET_MODE)
        self._server = server
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                         name="storefs-control", daemon=True).start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


class NotRunning(Exception):
    """No daemon answers for that mountpoint."""


def request(mountpoint: str, req: dict, timeout: float | None = 30.0) -> Iterator[dict]:
    """Send one request to the daemon of mountpoint and yield its answer lines.

    UnsafeFolder when no daemon answered and a socket folder was skipped for not being private.
    """
    paths, unsafe = _socket_paths(mountpoint)
    for path in paths:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(timeout)
        try:
            s.connect(path)
            break
        except (FileNotFoundError, ConnectionRefusedError):
            s.close()
        except OSError as e:
            s.close()
            if e.errno not in (errno.EACCES, errno.EPERM):
                raise
    else:
        if unsafe is not None:
            raise unsafe
        raise NotRunning(f"no storefs daemon answers for {mountpoint}")
    closed = NotRunning(f"the storefs daemon of {mountpoint} closed the connection without an answer "
                        "(only the user that runs it and root may talk to it)")
    with s:
        try:
            for msg in _exchange(s, req):
                yield msg
                if msg.get("final"):
                    return
        except (BrokenPipeError, ConnectionResetError):
            raise closed from None
        raise closed


def ask(path: str, req: dict, timeout: float = ASK_TIMEOUT) -> dict:
    """Send one request on the socket at path and return the daemon's final answer line (OSError if none)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(path)
        for msg in _exchange(s, req):
            if msg.get("final"):
                return msg
    raise OSError(f"{path}: the daemon closed the connection without an answer")


def _exchange(s: socket.socket, req: dict) -> Iterator[dict]:
    """The client side of the protocol on a connected socket: req as one JSON line, then the answer
    lines up to the final one; ends without one when the daemon closes the connection."""
    with s.makefile("rb") as f:
        s.sendall((json.dumps(req) + "\n").encode())
        for line in f:
            msg = json.loads(line)
            yield msg
            if msg.get("final"):
                return
