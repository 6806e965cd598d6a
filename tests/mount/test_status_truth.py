"""What a mount says of itself: one log line per refusal, a status that names a provider that does not
answer and the changes waiting for their next try, and an unmount whose --timeout is a real bound."""

from __future__ import annotations

import errno
import os
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from storefs.testing.data import ART, create_file, expect_errno
from storefs.testing.mount import clean_env, wait_pid_gone

pytestmark = pytest.mark.timeout(240)

s3_only = pytest.mark.parametrize("provider_kind", ["s3"])
#: a frozen server times a request out after about this (s3 read_timeout and connect_timeout, one attempt)
FROZEN_S3 = {"read_timeout": "2s", "connect_timeout": "2s", "max_attempts": 1}
#: how long status may take to call a frozen provider down (request timeout or probe, with margin)
DOWN_WITHIN = 20.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _scrape(store) -> str:
    with urllib.request.urlopen(store.status()["metrics_url"], timeout=10) as resp:
        return str(resp.read().decode())


def _log_lines(store, needle: str) -> list[str]:
    return [line for line in store.log_path.read_text(errors="replace").splitlines() if needle in line]


@pytest.mark.parametrize("provider_kind", ["local"])
def test_each_refusal_logs_one_line(store):
    """A rename the layout refuses (EINVAL) and a 256-byte name (ENAMETOOLONG) write one log line each."""
    (store.mnt / ART).mkdir(parents=True)
    create_file(store.mnt / ART / "f", b"f")
    expect_errno(errno.EINVAL, os.rename, store.mnt / "t1/image/b1", store.mnt / "t1/image/.b1")
    res = subprocess.run(["mv", str(store.mnt / "t1/image/b1"), str(store.mnt / "t1/image/.bad")],
                         capture_output=True, text=True)
    assert res.returncode != 0
    long_name = "n" * 256
    res = subprocess.run(["touch", str(store.mnt / ART / long_name)], capture_output=True, text=True)
    assert res.returncode != 0
    time.sleep(0.5)  # the daemon's log is written by its own threads
    for needle in ("t1/image/.b1", "t1/image/.bad"):
        lines = _log_lines(store, needle)
        assert len(lines) == 1, f"{needle}: {lines}"
    lines = _log_lines(store, long_name)
    assert len(lines) == 1, lines


def _wait_status(store, ok, within: float, what: str) -> dict:
    deadline = time.monotonic() + within
    st: dict = {}
    while time.monotonic() < deadline:
        st = store.status()
        if ok(st):
            return st
        time.sleep(0.5)
    raise AssertionError(f"status did not show {what} within {within:.0f}s: {st}")


@s3_only
@pytest.mark.parametrize("s3_options", [FROZEN_S3], ids=["short-timeouts"])
def test_status_names_a_frozen_provider_and_waiting_changes(store, seaweed, s3_options):
    """Server frozen: status says the provider is down (since when, why) and the file waits for its next
    try; after the thaw the provider is up again and the file lands."""
    store.extra_config["metrics_port"] = _free_port()
    store.unmount()
    store.start()
    (store.mnt / ART).mkdir(parents=True)
    store.flush()
    text = _scrape(store)
    assert 'storefs_provider_down{provider="s3"} 0' in text
    assert 'storefs_fuse_request_seconds_count{op="mkdir"}' in text
    assert 'storefs_provider_request_seconds_bucket{provider="s3",op="make_dir",le="+Inf"}' in text
    t0 = time.time()
    seaweed.pause()
    try:
        create_file(store.mnt / ART / "frozen.bin", b"x" * 1000)
        st = _wait_status(store, lambda s: s["provider_health"][store.provider]["state"] == "down",
                          DOWN_WITHIN, "the provider down")
        health = st["provider_health"][store.provider]
        assert t0 - 1 <= health["since"] <= time.time(), health
        assert health["error"], health
        st = _wait_status(store, lambda s: any(e["key"] == f"{ART}/frozen.bin" and e["state"] == "waiting"
                                               and e["next_try"] for e in s["errors"]),
                          DOWN_WITHIN, "the file waiting for its next try")
        err = next(e for e in st["errors"] if e["key"] == f"{ART}/frozen.bin")
        assert err["attempts"] >= 1 and err["error"], err
        assert st["waiting_retry"] >= 1 and st["next_try"] is not None, st
        human = store.storefs("status", str(store.mnt)).stdout
        assert "down since" in human and "waiting" in human, human
        assert 'storefs_provider_down{provider="s3"} 1' in _scrape(store)
    finally:
        seaweed.resume()
    store.flush(timeout=120)
    st = _wait_status(store, lambda s: s["provider_health"][store.provider]["state"] == "up", 30, "the provider up")
    assert st["pending"] == 0 and not st["errors"], st
    assert store.provider_read(f"{ART}/frozen.bin") == b"x" * 1000


@s3_only
@pytest.mark.parametrize("s3_options", [{"read_timeout": "30s", "max_attempts": 5}], ids=["slow-timeouts"])
def test_unmount_force_keeps_its_timeout_with_a_frozen_server(store, seaweed, s3_options):
    """--timeout 4 --force returns in about 4 s (not after the client's timeouts), prints what it waits for,
    says the changes stay in the journal; the next mount uploads them."""
    (store.mnt / ART).mkdir(parents=True)
    store.flush()
    pid = store.pid
    seaweed.pause()
    try:
        create_file(store.mnt / ART / "late.bin", b"y" * 1000)
        time.sleep(1.0)  # its upload is under way, and hangs
        t0 = time.monotonic()
        res = subprocess.run([sys.executable, "-m", "storefs", "unmount", "--timeout", "4", "--force",
                              str(store.mnt)], capture_output=True, text=True, timeout=60, env=clean_env())
        took = time.monotonic() - t0
        assert res.returncode == 0, res.stderr
        assert took < 4 + 6, f"unmount --timeout 4 --force took {took:.1f}s: {res.stderr}"
        assert "pending" in res.stderr and "journal" in res.stderr, res.stderr
        assert "storefs unmount" in res.stderr, res.stderr  # progress while it waited
        assert not store.mounted
        if pid is not None:
            assert wait_pid_gone(pid, 10), "the daemon outlived its unmount by far"
        store.pid = None
    finally:
        seaweed.resume()
    store.start()
    store.flush(timeout=120)
    assert store.provider_read(f"{ART}/late.bin") == b"y" * 1000
