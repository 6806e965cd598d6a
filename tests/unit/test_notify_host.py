"""systemd: sd_notify on a socket the test binds, and the unit storefs@.service, checked by systemd-analyze."""

from __future__ import annotations

import os
import shutil
import socket
import stat
import subprocess
from pathlib import Path

import pytest

from storefs import notify, systemd_unit
from storefs.cli import main

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def listener(tmp_path, monkeypatch):
    """A unix datagram socket standing in for systemd's, named in $NOTIFY_SOCKET."""
    path = tmp_path / "notify"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(str(path))
    s.settimeout(5)
    monkeypatch.setenv(notify.NOTIFY_SOCKET, str(path))
    try:
        yield s
    finally:
        s.close()


def test_ready_status_and_stopping_reach_the_socket(listener):
    assert notify.ready("serving /mnt/store")
    assert listener.recv(4096) == b"READY=1\nSTATUS=serving /mnt/store"
    assert notify.ready("serving /mnt/store", main_pid=4242)
    assert listener.recv(4096) == b"READY=1\nSTATUS=serving /mnt/store\nMAINPID=4242"
    assert notify.status("flushing: 3 changes\nleft")  # one line whatever the text holds
    assert listener.recv(4096) == b"STATUS=flushing: 3 changes left"
    assert notify.stopping("SIGTERM: unmounting")
    assert listener.recv(4096) == b"STOPPING=1\nSTATUS=SIGTERM: unmounting"


def test_abstract_namespace_socket(monkeypatch):
    name = f"storefs-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.bind("\0" + name)
        s.settimeout(5)
        monkeypatch.setenv(notify.NOTIFY_SOCKET, "@" + name)
        assert notify.notify("READY=1")
        assert s.recv(4096) == b"READY=1"


def test_nothing_is_sent_outside_systemd(monkeypatch, tmp_path):
    monkeypatch.delenv(notify.NOTIFY_SOCKET, raising=False)
    assert not notify.ready("serving")
    assert not notify.notify("READY=1", environ={notify.NOTIFY_SOCKET: "vsock:2:1234"})
    # a socket nobody listens on any more (the manager restarted): a warning, never an exception
    assert not notify.notify("READY=1", environ={notify.NOTIFY_SOCKET: str(tmp_path / "gone")})


# --------------------------------------------------------------------------- the unit


def test_shipped_unit_is_the_one_install_writes():
    """scripts/storefs@.service is the unit with the paths of an install by hand: the two never drift."""
    assert (REPO / "scripts" / "storefs@.service").read_text() == systemd_unit.render()


def test_unit_is_type_notify_with_an_env_file_and_this_storefs():
    text = systemd_unit.host_unit()
    lines = text.splitlines()
    for wanted in ("Type=notify", "NotifyAccess=main", "EnvironmentFile=-/etc/storefs/%i.env"):
        assert wanted in lines, wanted
    start = next(line for line in lines if line.startswith("ExecStart="))
    program = start.split("=", 1)[1].split()[0]
    assert os.path.isabs(program) and os.access(program, os.X_OK), start
    assert " mount -f -c /etc/storefs/%i.yaml %f" in start
    assert "shims" not in program, "a pyenv shim needs the user's shell setup, which boot has not"


def test_unit_words_are_escaped():
    assert systemd_unit.unit_word("/opt/store fs/bin/storefs") == '"/opt/store fs/bin/storefs"'
    assert systemd_unit.unit_word("/opt/100%/storefs") == "/opt/100%%/storefs"


def test_install_helper_systemd_writes_and_removes_the_unit(tmp_path, capsys):
    assert main(["install-helper", "--systemd", "--dir", str(tmp_path)]) == 0
    unit = tmp_path / systemd_unit.UNIT_NAME
    assert unit.read_text() == systemd_unit.host_unit()
    assert stat.S_IMODE(unit.stat().st_mode) == 0o644
    assert "installed" in capsys.readouterr().err
    assert not (tmp_path / "mount.fuse.storefs").exists(), "--systemd writes the unit, not the mount helper"
    assert main(["install-helper", "--systemd", "--dir", str(tmp_path), "--remove"]) == 0
    assert not unit.exists()


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
@pytest.mark.parametrize("written", ["installed", "shipped"])
def test_systemd_analyze_verify_passes(tmp_path, written):
    if written == "installed":
        systemd_unit.install(str(tmp_path))
        text = (tmp_path / systemd_unit.UNIT_NAME).read_text()
    else:
        text = (REPO / "scripts" / "storefs@.service").read_text()
        if not os.access(systemd_unit.DEFAULT_STOREFS, os.X_OK):  # verify checks that ExecStart exists
            text = text.replace(systemd_unit.DEFAULT_STOREFS, systemd_unit.storefs_command())
    # verify checks an instance (a template alone is barely looked at)
    instance = tmp_path / "storefs@mnt-store.service"
    instance.write_text(text)
    res = subprocess.run(["systemd-analyze", "verify", str(instance)], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "SYSTEMD_LOG_LEVEL": "notice"})
    complaints = [line for line in (res.stdout + res.stderr).splitlines() if "storefs" in line]
    assert res.returncode == 0 and not complaints, res.stdout + res.stderr
