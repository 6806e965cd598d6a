"""A mount as a system service: sd_notify on a socket the test binds (READY once the mount answers,
STATUS while it uploads at stop), journald's form on stderr, the log file reopened on SIGHUP, and
no libfuse complaint in the log."""

from __future__ import annotations

import os
import re
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import require_fuse

from storefs.testing.data import ART, payload
from storefs.testing.mount import StorefsMount, clean_env, is_mounted, wait_pid_gone

pytestmark = [pytest.mark.timeout(180), pytest.mark.parametrize("provider_kind", ["local"])]

NOTIFY_TIMEOUT = 60.0
TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d")


@pytest.fixture
def unmounted(backend, tmp_path):
    """A StorefsMount whose config holds changes back for a minute; the test mounts it itself."""
    require_fuse()
    m = StorefsMount(tmp_path, backend, writeback_delay="60s")
    m.write_config()
    try:
        yield m
    finally:
        m.cleanup()


class FakeSystemd:
    """The service manager's notify socket: a unix datagram socket bound by the test."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.messages: list[dict[str, str]] = []

    @staticmethod
    def parse(data: bytes) -> dict[str, str]:
        return dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)

    def env(self, **extra: str) -> dict[str, str]:
        return {**clean_env(), "NOTIFY_SOCKET": str(self.path), **extra}

    def wait_for(self, field: str, timeout: float = NOTIFY_TIMEOUT) -> dict[str, str]:
        """The next message holding field (the ones before it are kept in messages)."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {field} in {timeout:.0f}s; got {self.messages}")
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            msg = self.parse(data)
            self.messages.append(msg)
            if field in msg:
                return msg

    def statuses(self) -> list[str]:
        """Every STATUS sent so far, in order (the ones still queued on the socket read first)."""
        self.sock.setblocking(False)
        try:
            while True:
                data = self.sock.recv(65536)
                self.messages.append(self.parse(data))
        except BlockingIOError:
            pass
        finally:
            self.sock.setblocking(True)
        return [msg["STATUS"] for msg in self.messages if "STATUS" in msg]

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def systemd(tmp_path):
    s = FakeSystemd(tmp_path / "notify.sock")
    try:
        yield s
    finally:
        s.close()


def answers(mnt: Path) -> bool:
    """The mount answers a stat, from a child that a hung request cannot keep, with the FUSE file system's device."""
    res = subprocess.run(["stat", "-c", "%d", str(mnt), str(mnt.parent)], capture_output=True, text=True, timeout=30)
    devices = res.stdout.split()
    return res.returncode == 0 and len(devices) == 2 and devices[0] != devices[1]


def write_pending(m: StorefsMount, count: int) -> tuple[dict[str, bytes], int]:
    """count files written and held back (writeback_delay); the changes pending (the folders' too)."""
    art = m.mnt / ART
    art.mkdir(parents=True)
    files = {f"f{i}.png": payload(f"notify{i}", 20_000) for i in range(count)}
    for name, data in files.items():
        (art / name).write_bytes(data)
    pending = m.status()["pending"]
    assert pending >= count
    return files, pending


def test_foreground_mount_under_systemd_notifies_and_logs_to_the_journal(unmounted, systemd, tmp_path):
    """As the unit runs it: `mount -f`, stderr the journal's stream; READY=1 comes once the mount
    answers, the uploads at `storefs unmount` (ExecStop) show as STATUS, then STOPPING=1."""
    m = unmounted
    stderr_path = tmp_path / "journal"
    with open(stderr_path, "w") as journal:
        st = os.fstat(journal.fileno())
        proc = subprocess.Popen([sys.executable, "-m", "storefs", "mount", "-f", "-c", str(m.config_path), str(m.mnt)],
                                stdin=subprocess.DEVNULL, stdout=journal, stderr=journal,
                                env=systemd.env(JOURNAL_STREAM=f"{st.st_dev}:{st.st_ino}"))
    try:
        ready = systemd.wait_for("READY")
        assert is_mounted(m.mnt), "READY=1 before the mount was made"
        assert answers(m.mnt), "READY=1 but the mount does not answer"
        assert ready["READY"] == "1" and "MAINPID" not in ready, ready  # -f: the notifying process is the daemon
        assert str(m.mnt) in ready["STATUS"]
        m.pid = proc.pid
        files, pending = write_pending(m, 3)
        m.unmount()
        systemd.wait_for("STOPPING")
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    statuses = systemd.statuses()
    assert any(s.startswith(f"flushing: {pending} changes left to upload") for s in statuses), statuses
    for name, data in files.items():
        assert m.provider_read(f"{ART}/{name}") == data, name
    lines = [line for line in stderr_path.read_text().splitlines() if " storefs." in line]
    assert any(line.startswith("<6>INFO storefs.daemon: mounted ") for line in lines), lines
    assert all(re.match(r"<\d>", line) and not TIMESTAMP.search(line) for line in lines), lines
    assert not (m.cache / "storefs.log").exists()


def test_background_mount_hands_ready_on_and_reports_uploads_at_sigterm(unmounted, systemd, tmp_path):
    """`storefs mount` without -f: its parent says READY=1 with MAINPID (the daemon), so a Type=notify
    unit may run it too; SIGTERM says STOPPING=1 and what is left to upload while it uploads."""
    m = unmounted
    stderr_path = tmp_path / "stderr"
    with open(stderr_path, "w") as err:
        res = subprocess.run([sys.executable, "-m", "storefs", "mount", "--log-file", "-", "-c", str(m.config_path),
                              str(m.mnt)], stdin=subprocess.DEVNULL, stdout=err, stderr=err, env=systemd.env(),
                             timeout=120)
    assert res.returncode == 0, stderr_path.read_text()
    ready = systemd.wait_for("READY")
    m.pid = int(m.status()["pid"])
    assert ready.get("MAINPID") == str(m.pid), ready
    files, pending = write_pending(m, 2)
    os.kill(m.pid, signal.SIGTERM)
    systemd.wait_for("STOPPING")
    assert wait_pid_gone(m.pid, 60), "daemon still running 60 s after SIGTERM"
    m.pid = None
    statuses = systemd.statuses()
    assert any(s.startswith(f"unmounted {m.mnt}, uploading: {pending} changes left to upload")
               for s in statuses), statuses
    for name, data in files.items():
        assert m.provider_read(f"{ART}/{name}") == data, name
    text = stderr_path.read_text()
    assert "<6>INFO storefs.daemon: SIGTERM: unmounting" in text, text


def test_sighup_reopens_the_log_file_and_keeps_the_mount(store):
    """logrotate's way: mv the log, HUP the daemon; new lines (libfuse's stderr too) go to a fresh 0600
    file, and the mount stays. The log has no `Ignoring invalid max threads value` from libfuse."""
    log_path = store.log_path
    assert "mounted" in log_path.read_text()
    assert "Ignoring invalid max threads" not in log_path.read_text(), log_path.read_text()
    rotated = log_path.with_name(log_path.name + ".1")
    os.rename(log_path, rotated)
    os.kill(store.pid, signal.SIGHUP)
    deadline = time.monotonic() + 30
    stderr = f"/proc/{store.pid}/fd/2"
    # the daemon opens the new file, then points its stderr at it: wait for both
    while (not log_path.exists() or os.readlink(stderr) != str(log_path)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert log_path.exists(), "no fresh log file after SIGHUP"
    assert stat.S_IMODE(log_path.stat().st_mode) == 0o600
    assert os.readlink(stderr) == str(log_path), "the daemon's stderr still writes the old file"
    assert store.mounted and answers(store.mnt), "SIGHUP unmounted"
    (store.mnt / ART).mkdir(parents=True)
    (store.mnt / ART / "after.png").write_bytes(b"after rotation")
    store.unmount()
    assert store.provider_read(f"{ART}/after.png") == b"after rotation"
    fresh, old = log_path.read_text(), rotated.read_text()
    assert "SIGHUP: reopened" in fresh and "unmounted" in fresh, fresh
    assert "SIGHUP" not in old and "unmounted" not in old, old
