"""Host security of a shared mount: the control socket's folder and peer check, the cache folder, the log file."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import socket
import stat
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from storefs import cli, control
from storefs.admin.common import AdminError
from storefs.admin.mounts import socket_dirs
from storefs.control import (
    ControlServer,
    NotRunning,
    UnsafeFolder,
    check_private_folder,
    make_private_folder,
    request,
    socket_folders,
)
from storefs.daemon import DaemonError, lock_cache, prepare_cache_folder

OTHER_UID = 65534
ROOT_FOLDER = "/run/storefs"
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (files of another owner, a second uid)")


@pytest.fixture
def shared_tmp() -> Iterator[Path]:
    """A 0755 folder under /tmp (pytest's own are 0700, so a second uid could not reach into them)."""
    path = Path(tempfile.mkdtemp(prefix="storefs-host-"))
    os.chmod(path, 0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


# ---- where the socket lives ------------------------------------------------------------------------


def test_socket_folders(tmp_path) -> None:
    me = os.geteuid()
    runtime = str(tmp_path)  # owned by this uid
    assert socket_folders(0, "") == ["/run/storefs", "/tmp/storefs-0"]
    assert socket_folders(1000, "") == ["/tmp/storefs-1000"]
    assert socket_folders(me, runtime)[0] == f"{runtime}/storefs"
    assert socket_folders(me, runtime)[-1] == f"/tmp/storefs-{me}"
    if me == 0:
        assert socket_folders(0, runtime) == [f"{runtime}/storefs", "/run/storefs", "/tmp/storefs-0"]
    assert socket_folders(me, "relative/dir")[0] != "relative/dir/storefs"  # the XDG spec: relative is ignored
    assert f"{tmp_path}/missing/storefs" not in socket_folders(me, str(tmp_path / "missing"))
    other = me + 1  # a runtime dir that is not the user's own (sudo -E keeps the caller's) is not used
    assert socket_folders(other, runtime) == ([ROOT_FOLDER] if other == 0 else []) + [f"/tmp/storefs-{other}"]


def test_daemon_and_cli_agree_on_the_socket_with_and_without_xdg(tmp_path, monkeypatch) -> None:
    """A daemon started by systemd (no XDG_RUNTIME_DIR) is found from a login shell (with one)."""
    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    path = control.socket_path("/mnt/x")
    assert path.startswith(str(runtime / "storefs") + "/")
    assert stat.S_IMODE(os.stat(runtime / "storefs").st_mode) == 0o700
    assert control._socket_paths("/mnt/x")[0][0] == path
    monkeypatch.setattr(control, "socket_folders", lambda: [str(runtime / "storefs"), str(tmp_path / "fallback")])
    assert control._socket_paths("/mnt/x") == ([path], None)  # a folder that does not exist is skipped
    (tmp_path / "fallback").mkdir(mode=0o700)
    assert len(control._socket_paths("/mnt/x")[0]) == 2


def test_new_socket_folder_is_0700_whatever_the_umask(tmp_path) -> None:
    old = os.umask(0o777)
    try:
        make_private_folder(str(tmp_path / "sock"), "control socket folder")
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "sock").st_mode) == 0o700


@pytest.mark.parametrize("mode", [0o755, 0o750, 0o701, 0o710, 0o777, 0o1777])
def test_a_socket_folder_others_may_enter_is_refused(tmp_path, mode) -> None:
    folder = tmp_path / "sock"
    folder.mkdir()
    os.chmod(folder, mode)
    with pytest.raises(UnsafeFolder) as e:
        make_private_folder(str(folder), "control socket folder")
    assert str(e.value).startswith(f"refusing control socket folder {folder}: its mode is {mode:04o}")


@needs_root
def test_a_socket_folder_of_another_owner_is_refused(tmp_path) -> None:
    folder = tmp_path / "sock"
    folder.mkdir(mode=0o700)
    os.chown(folder, OTHER_UID, OTHER_UID)
    with pytest.raises(UnsafeFolder, match=f"refusing control socket folder {folder}: it is owned by uid "
                                           f"{OTHER_UID}, not by uid 0"):
        make_private_folder(str(folder), "control socket folder")


def test_a_socket_folder_that_is_a_symlink_is_refused(tmp_path) -> None:
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    link = tmp_path / "sock"
    link.symlink_to(real)
    with pytest.raises(UnsafeFolder, match=f"refusing control socket folder {link}: it is a symbolic link"):
        make_private_folder(str(link), "control socket folder")
    (tmp_path / "file").write_text("")
    with pytest.raises(UnsafeFolder, match="it is not a folder"):
        check_private_folder(str(tmp_path / "file"), "control socket folder")


def test_the_daemon_side_refuses_to_listen_in_an_unsafe_folder(tmp_path, monkeypatch) -> None:
    runtime = tmp_path / "runtime"
    (runtime / "storefs").mkdir(parents=True)
    os.chmod(runtime / "storefs", 0o777)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    with pytest.raises(UnsafeFolder, match="its mode is 0777"):
        control.socket_path("/mnt/x")


def test_the_cli_refuses_to_talk_through_an_unsafe_folder(tmp_path, monkeypatch, capsys) -> None:
    bad = tmp_path / "sock"
    bad.mkdir()
    os.chmod(bad, 0o755)
    monkeypatch.setattr(control, "socket_folders", lambda: [str(bad)])
    with pytest.raises(UnsafeFolder, match=f"refusing control socket folder {bad}"):
        next(iter(request("/mnt/x", {"cmd": "status"})))
    assert cli.main(["status", "/mnt/x"]) == 1
    assert f"storefs: refusing control socket folder {bad}: its mode is 0755" in capsys.readouterr().err
    with pytest.raises(AdminError, match="nothing deleted"):  # cleanup must not guess what a mount has pending
        socket_dirs()


def test_a_safe_folder_wins_over_an_unsafe_one(tmp_path, monkeypatch) -> None:
    good, bad = tmp_path / "good", tmp_path / "bad"
    good.mkdir(mode=0o700)
    bad.mkdir(mode=0o777)
    os.chmod(bad, 0o777)
    monkeypatch.setattr(control, "socket_folders", lambda: [str(bad), str(good)])
    paths, unsafe = control._socket_paths("/mnt/x")
    assert [os.path.dirname(p) for p in paths] == [str(good)] and unsafe is not None
    with serving(good, control._socket_name("/mnt/x")):
        assert next(iter(request("/mnt/x", {"cmd": "status"})))["cmd"] == "status"
    with pytest.raises(UnsafeFolder, match="its mode is 0777"):  # no answer: the skipped folder is the news
        next(iter(request("/mnt/x", {"cmd": "status"})))


# ---- SO_PEERCRED: only the daemon's uid and root get answers ------------------------------------


@contextlib.contextmanager
def serving(folder: Path, name: str = "ctl.sock") -> Iterator[str]:
    """A control server answering `status`, on a socket any uid may connect to (so the peer check decides)."""
    path = str(folder / name)
    server = ControlServer(path, lambda req, send: {"pid": os.getpid(), "cmd": req.get("cmd")})
    server.start()
    os.chmod(path, 0o666)
    try:
        yield path
    finally:
        server.stop()


def run_as(uid: int, work: Callable[[], bytes]) -> bytes:
    """What work() returns when run in a forked child that dropped to uid (an error fails the test)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: drop to uid, work, report through the pipe
        code = 0
        try:
            os.close(r)
            if uid != os.geteuid():
                os.setgroups([])
                os.setresgid(uid, uid, uid)
                os.setresuid(uid, uid, uid)
            os.write(w, b"ok:" + work())
        except BaseException as e:  # noqa: BLE001 - reported to the parent, never raised in a forked pytest
            os.write(w, f"error:{e!r}".encode())
            code = 1
        finally:
            os._exit(code)
    os.close(w)
    out = b""
    while chunk := os.read(r, 65536):
        out += chunk
    os.close(r)
    os.waitpid(pid, 0)
    assert out.startswith(b"ok:"), out
    return out[3:]


def ask_as(uid: int, path: str) -> bytes:
    """What a client running as uid reads back after sending a status request (b'' when refused)."""
    def ask() -> bytes:
        got = b""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(10)
            s.connect(path)
            try:
                s.sendall(b'{"cmd": "status"}\n')
                while chunk := s.recv(4096):
                    got += chunk
            except (BrokenPipeError, ConnectionResetError):
                got = b""
        return got
    return run_as(uid, ask)


@needs_root
def test_another_uid_gets_no_answer_and_one_log_line(shared_tmp, caplog) -> None:
    caplog.set_level(logging.WARNING, logger="storefs.control")
    with serving(shared_tmp) as path:
        assert ask_as(OTHER_UID, path) == b""
        deadline = time.monotonic() + 5
        while not any("refused a connection" in r.getMessage() for r in caplog.records):
            assert time.monotonic() < deadline, "no log line for a refused connection"
            time.sleep(0.01)
        refused = [r.getMessage() for r in caplog.records if "refused a connection" in r.getMessage()]
        assert len(refused) == 1
        assert f"from uid {OTHER_UID}" in refused[0] and "only uid 0 and root may talk" in refused[0]
        answer = json.loads(ask_as(os.geteuid(), path).splitlines()[0])  # the daemon's own uid: answered
        assert answer == {"final": True, "pid": os.getpid(), "cmd": "status"}


@needs_root
def test_a_refused_client_is_told_the_daemon_closed_the_connection(shared_tmp, monkeypatch) -> None:
    """The CLI's side of a refusal: a clear NotRunning, not a traceback (run as the other uid)."""
    with serving(shared_tmp) as path:
        monkeypatch.setattr(control, "_socket_paths", lambda mnt: ([path], None))

        def status() -> bytes:
            try:
                next(iter(request("/mnt/x", {"cmd": "status"}, timeout=10)))
                return b"answered"
            except NotRunning as e:
                return str(e).encode()
        out = run_as(OTHER_UID, status)
    assert b"closed the connection without an answer" in out, out


# ---- the cache folder ------------------------------------------------------------------------------


def test_a_new_cache_folder_is_0700(tmp_path) -> None:
    old = os.umask(0)
    try:
        prepare_cache_folder(str(tmp_path / "a" / "cache"))
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "a" / "cache").st_mode) == 0o700


@pytest.mark.parametrize("mode, ok", [(0o700, True), (0o750, True), (0o755, True), (0o770, False),
                                      (0o757, False), (0o777, False), (0o1777, False)])
def test_a_cache_folder_others_may_write_into_is_refused(tmp_path, mode, ok) -> None:
    """An older storefs made 0755 caches: readable is tolerated, writable by others never."""
    cache = tmp_path / "cache"
    cache.mkdir()
    os.chmod(cache, mode)
    if ok:
        os.close(lock_cache(str(cache)))
        return
    with pytest.raises(DaemonError) as e:
        lock_cache(str(cache))
    assert str(e.value).startswith(f"refusing cache folder {cache}: its mode is {mode:04o}: others may write")
    assert not (cache / "lock").exists()


@needs_root
def test_a_cache_folder_of_another_owner_is_refused(tmp_path) -> None:
    cache = tmp_path / "cache"
    cache.mkdir(mode=0o700)
    os.chown(cache, OTHER_UID, OTHER_UID)
    with pytest.raises(DaemonError, match=f"refusing cache folder {cache}: it is owned by uid {OTHER_UID}"):
        prepare_cache_folder(str(cache))


def test_a_cache_folder_reached_through_a_symlink_is_checked_at_its_target(tmp_path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    os.chmod(real, 0o777)
    (tmp_path / "cache").symlink_to(real)
    with pytest.raises(DaemonError, match=f"refusing cache folder {real}: its mode is 0777"):
        prepare_cache_folder(str(tmp_path / "cache"))
    os.chmod(real, 0o700)
    prepare_cache_folder(str(tmp_path / "cache"))


def test_mount_refuses_an_open_cache_folder_before_mounting(tmp_path, capsys) -> None:
    cache, mnt = tmp_path / "cache", tmp_path / "mnt"
    cache.mkdir()
    os.chmod(cache, 0o777)
    mnt.mkdir()
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"providers: {{local: {{type: local, base_path: {tmp_path / 'data'}}}}}\n"
                   f"cache: {{dir: {cache}}}\n")
    if cli.shutil.which("fusermount3") is None or not os.path.exists("/dev/fuse"):
        pytest.skip("the cache folder is checked after the FUSE check")
    assert cli.main(["mount", "-c", str(cfg), str(mnt)]) == 1
    assert f"storefs: refusing cache folder {cache}: its mode is 0777" in capsys.readouterr().err
    assert not list(cache.iterdir()), "no log file or journal is made in a refused cache folder"


# ---- the log file ---------------------------------------------------------------------------------


def test_log_file_is_0600_whatever_the_umask(tmp_path) -> None:
    log_file = tmp_path / "storefs.log"
    old = os.umask(0)
    try:
        os.close(cli.open_log_file(str(log_file)))
    finally:
        os.umask(old)
    assert stat.S_IMODE(log_file.stat().st_mode) == 0o600
    os.chmod(log_file, 0o644)  # an older storefs's log: narrowed when opened again
    os.close(cli.open_log_file(str(log_file)))
    assert stat.S_IMODE(log_file.stat().st_mode) == 0o600
