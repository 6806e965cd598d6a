"""Operating a mount: `storefs url`, progress of flush and unmount, the mount(8) helper,
SIGTERM, the status counters and the Prometheus endpoint, each on a real mount."""

from __future__ import annotations

import contextlib
import os
import pty
import shutil
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from conftest import require_fuse

from storefs.testing.data import ART, payload
from storefs.testing.mount import StorefsMount, clean_env, is_mounted, run, wait_pid_gone

s3_only = pytest.mark.parametrize("provider_kind", ["s3"])
local_only = pytest.mark.parametrize("provider_kind", ["local"])


def fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=30) as resp:
        return resp.read()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def unmounted(backend, tmp_path):
    """A StorefsMount whose config is written but which the test mounts itself (cleaned up always)."""
    require_fuse()
    m = StorefsMount(tmp_path, backend)
    m.write_config()
    try:
        yield m
    finally:
        m.cleanup()


# --------------------------------------------------------------------------- storefs url


@pytest.mark.storefs_config(writeback_delay="30s")
def test_url_uploads_first_and_serves_the_bytes(store, tmp_path):
    art = store.mnt / ART
    art.mkdir(parents=True)
    data = payload("url", 300_000)
    (art / "x.png").write_bytes(data)
    assert store.provider_read(f"{ART}/x.png") is None, "uploaded before writeback_delay"

    res = store.storefs("url", "--expires", "10m", str(art / "x.png"))
    url = res.stdout.strip()
    assert store.provider_read(f"{ART}/x.png") == data, "url returned before the file was uploaded"
    assert fetch(url) == data
    if store.provider == "s3":
        query = urllib.parse.parse_qs(urllib.parse.urlparse(url).query)
        assert query.get("X-Amz-Expires") == ["600"], url
    else:
        assert url == (store.data / ART / "x.png").as_uri()

    # a relative path from inside the mount names the same file
    rel = run([sys.executable, "-m", "storefs", "url", "x.png"], cwd=art, env=clean_env()).stdout.strip()
    assert fetch(rel) == data

    for path, says in ((art, "a directory"), (art / "nope.png", "no such file"),
                       (tmp_path, "not in a storefs mount")):
        res = store.storefs("url", str(path), check=False)
        assert res.returncode == 1 and says in res.stderr, res.stderr
    res = store.storefs("url", "--expires", "30d", str(art / "x.png"), check=False)
    assert res.returncode == 1 and "--expires" in res.stderr, res.stderr


@s3_only
@pytest.mark.parametrize("s3_options", [{"public_url_base": "https://cdn.example.com/media"}], ids=["public"])
def test_url_public_base(store, s3_options):
    (store.mnt / ART).mkdir(parents=True)
    (store.mnt / ART / "a b.png").write_bytes(b"png")
    url = store.storefs("url", str(store.mnt / ART / "a b.png")).stdout.strip()
    assert url == f"https://cdn.example.com/media/{ART}/a%20b.png"


# --------------------------------------------------------------------------- progress


@local_only
@pytest.mark.storefs_config(writeback_delay="30s")
def test_flush_and_unmount_show_progress(store):
    art = store.mnt / ART
    art.mkdir(parents=True)
    for i in range(20):
        (art / f"f{i}.png").write_bytes(payload(i, 50_000))

    res = store.storefs("flush", str(store.mnt))
    assert "\r" not in res.stderr, "a bar drawn into a pipe"
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("storefs flush: ")]
    assert lines, res.stderr
    # the final line: everything done, with the byte total and the rate
    assert "files" in lines[-1] and "KiB/" in lines[-1] and "/s" in lines[-1], lines[-1]
    assert lines[-1].split(": ", 1)[1].startswith("2"), lines[-1]  # 20 or more changes (with the folders)
    assert "everything is in the provider" in res.stderr

    # on a terminal: one line redrawn with \r, a bar
    for i in range(10):
        (art / f"g{i}.png").write_bytes(payload(("g", i), 50_000))
    primary, secondary = pty.openpty()
    try:
        proc = subprocess.run([sys.executable, "-m", "storefs", "flush", str(store.mnt)], stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE, stderr=secondary, env=clean_env(), timeout=120)
        os.close(secondary)
        out = b""
        with contextlib.suppress(OSError):
            while chunk := os.read(primary, 65536):
                out += chunk
    finally:
        os.close(primary)
    assert proc.returncode == 0
    text = out.decode(errors="replace")
    assert "\rstorefs flush: [" in text and "100%" in text, text

    for i in range(5):
        (art / f"h{i}.png").write_bytes(payload(("h", i), 50_000))
    pid = store.pid
    res = store.storefs("unmount", str(store.mnt))
    assert any(ln.startswith("storefs unmount: ") and "/s" in ln for ln in res.stderr.splitlines()), res.stderr
    assert wait_pid_gone(pid, 30)
    store.pid = None
    assert len(store.provider_keys(ART)) == 35


# --------------------------------------------------------------------------- SIGTERM


@pytest.mark.storefs_config(writeback_delay="30s")
def test_sigterm_unmounts_after_the_uploads(store):
    art = store.mnt / ART
    art.mkdir(parents=True)
    files = {f"f{i}.png": payload(("term", i), 20_000 + i) for i in range(25)}
    for name, data in files.items():
        (art / name).write_bytes(data)
    assert store.status()["dirty_files"] == len(files)
    pid = store.pid
    os.kill(pid, signal.SIGTERM)
    assert wait_pid_gone(pid, 60), "daemon still running 60 s after SIGTERM"
    store.pid = None
    assert not is_mounted(store.mnt), "mount point left behind"
    for name, data in files.items():
        assert store.provider_read(f"{ART}/{name}") == data, name
    log = store.log_path.read_text()
    assert "SIGTERM: unmounting" in log
    assert "FUSE loop ended with an error" not in log and "Traceback" not in log


# --------------------------------------------------------------------------- mount(8) helper


def mount_helper() -> list[str]:
    exe = shutil.which("mount.storefs")
    return [exe] if exe else [sys.executable, "-m", "storefs.mount_helper"]


def test_mount_helper_mounts_from_a_config_path(unmounted, tmp_path):
    m = unmounted
    log_file = tmp_path / "helper.log"
    res = run([*mount_helper(), str(m.config_path), str(m.mnt), "-o",
               f"defaults,_netdev,nofail,x-systemd.automount,tenant=t1,log_level=debug,log_file={log_file}"],
              env=clean_env(), timeout=120)
    assert is_mounted(m.mnt), res.stderr
    m.pid = m.status()["pid"]
    (m.mnt / "image/b1/a1").mkdir(parents=True)
    (m.mnt / "image/b1/a1/x.png").write_bytes(b"fstab")
    m.unmount()
    assert m.provider_read("t1/image/b1/a1/x.png") == b"fstab", "tenant=t1 not applied"
    assert " DEBUG " in log_file.read_text(), "log_level=debug / log_file not applied"

    res = run([*mount_helper(), str(m.config_path), str(m.mnt), "-o", "colour=blue"], env=clean_env(), check=False)
    assert res.returncode == 1 and "colour=blue" in res.stderr and not is_mounted(m.mnt)
    res = run([*mount_helper(), str(m.config_path) + ".missing", str(m.mnt)], env=clean_env(), check=False)
    assert res.returncode == 32 and "no such file" in res.stderr and not is_mounted(m.mnt)


@local_only
def test_mount_t_fuse_storefs_and_umount(unmounted):
    if os.geteuid() != 0 or not os.access("/sbin", os.W_OK) or not shutil.which("mount"):
        pytest.skip("mount -t fuse.storefs needs root and a writable /sbin for the helper")
    m = unmounted
    helper = Path("/sbin/mount.fuse.storefs")
    ours = not helper.exists()
    if ours:
        run([sys.executable, "-m", "storefs", "install-helper"], env=clean_env())
    try:
        run(["mount", "-t", "fuse.storefs", str(m.config_path), str(m.mnt), "-o", "tenant=t2"], env=clean_env())
        assert is_mounted(m.mnt)
        pid = m.status()["pid"]
        (m.mnt / "image/b1/a1").mkdir(parents=True)
        (m.mnt / "image/b1/a1/y.png").write_bytes(b"mount(8)")
        run(["umount", str(m.mnt)])  # plain umount: the daemon still uploads what is pending
        assert wait_pid_gone(pid, 60)
        assert not is_mounted(m.mnt)
        assert m.provider_read("t2/image/b1/a1/y.png") == b"mount(8)"
    finally:
        if ours:
            run([sys.executable, "-m", "storefs", "install-helper", "--remove"], env=clean_env(), check=False)


# --------------------------------------------------------------------------- counters


@pytest.mark.storefs_config(writeback_delay="0.1s")
def test_status_counters_move(store):
    before = store.status()
    for key in ("operations", "operation_errors", "bytes_read", "bytes_written", "queue", "uploads_done",
                "upload_failures", "upload_retries", "cache_hit_ratio", "cache_bytes"):
        assert key in before, key
    art = store.mnt / ART
    art.mkdir(parents=True)
    data = payload("counters", 100_000)
    (art / "c.png").write_bytes(data)
    assert (art / "c.png").read_bytes() == data
    with pytest.raises(FileNotFoundError):
        (art / "missing.png").stat()
    store.flush()
    after = store.status()
    ops, errs = after["operations"], after["operation_errors"]
    assert ops["create"] >= before["operations"].get("create", 0) + 1
    assert ops["write"] >= 1 and ops["read"] >= 1 and ops["mkdir"] >= 4
    assert errs.get("getattr", 0) > before["operation_errors"].get("getattr", 0)  # the ENOENT
    assert after["bytes_written"] >= before["bytes_written"] + len(data)
    assert after["bytes_read"] >= before["bytes_read"] + len(data)
    assert after["uploads_done"] > before["uploads_done"]
    assert after["cache_bytes"] > 0 and 0.0 <= after["cache_hit_ratio"] <= 1.0
    assert after["queue"] == 0 and after["upload_failures"] == 0 and after["upload_retries"] == 0


# --------------------------------------------------------------------------- metrics


@local_only
def test_metrics_endpoint_on_loopback(unmounted):
    m = unmounted
    port = free_port()
    m.extra_config["metrics_port"] = port
    m.start()
    st = m.status()
    assert st["metrics_url"] == f"http://127.0.0.1:{port}/metrics"
    (m.mnt / ART).mkdir(parents=True)
    (m.mnt / ART / "m.png").write_bytes(b"metrics" * 100)
    m.flush()
    with urllib.request.urlopen(st["metrics_url"], timeout=10) as resp:
        assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = resp.read().decode()
    samples = dict(ln.rsplit(" ", 1) for ln in text.splitlines() if ln and not ln.startswith("#"))
    assert float(samples["storefs_written_bytes_total"]) >= 700
    assert float(samples["storefs_uploads_total"]) >= 1
    assert float(samples['storefs_operations_total{op="create"}']) >= 1
    assert "storefs_cache_hit_ratio" in samples and "storefs_uploads_queued" in samples
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10)
    assert e.value.code == 404
    listening = run(["ss", "-Hltn", f"sport = :{port}"]).stdout.split() if shutil.which("ss") else []
    if listening:
        assert f"127.0.0.1:{port}" in listening, listening

    # a second mount asking for the same port is refused before it mounts, naming the key
    other = StorefsMount(m.root / "second", m.backend)
    other.extra_config["metrics_port"] = port
    other.cache_options["dir"] = str(m.root / "second" / "cache")
    try:
        other.write_config()
        res = other.storefs("mount", "-c", str(other.config_path), str(other.mnt), check=False)
        assert res.returncode == 1 and "metrics_port" in res.stderr, res.stderr
        assert not other.mounted
    finally:
        other.cleanup()
    m.unmount()
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5)
