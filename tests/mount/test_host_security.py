"""A shared mount lets nobody in where they don't belong, through real mounts and a second uid.

- read-only mounts: `storefs status` says so, flush and unmount work, reads work;
- `-o` options on the command line reach the daemon (and win over the config file);
- another uid gets no answer from the control socket: it cannot find it, and when the test
  opens the socket to everyone, the daemon's SO_PEERCRED check closes the connection;
- a socket folder or cache folder that others could reach into is refused before mounting;
- allow_other for a non-root user without `user_allow_other` in /etc/fuse.conf is refused before mounting.

The second uid is 65534 (nobody), through `setpriv`. pytest's tmp folders are 0700, so the tests that
need the second uid to reach a file put their whole mount in a 0755 folder of their own under /tmp.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import require_fuse

from storefs.testing.backends import LocalBackend
from storefs.testing.data import ART
from storefs.testing.mount import StorefsMount, clean_env, is_mounted, run

OTHER_UID = 65534
REPO = str(Path(__file__).resolve().parents[2])


@pytest.fixture
def shared_root() -> Iterator[Path]:
    """A 0755 folder under /tmp that uid 65534 can enter; removed afterwards."""
    require_fuse()
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to act as a second uid")
    path = Path(tempfile.mkdtemp(prefix="storefs-hostsec-"))
    os.chmod(path, 0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def second_uid_python() -> str:
    """An interpreter uid 65534 can run and import storefs with (pyenv's may live under a 0700 /root)."""
    for exe in (sys.executable, shutil.which("python3"), "/usr/bin/python3"):
        if not exe or not os.path.exists(exe):
            continue
        res = as_other([exe, "-c", "import storefs.cli"], check=False)
        if res.returncode == 0:
            return exe
    pytest.skip("no Python that uid 65534 may run imports storefs here")


def as_other(cmd: list[str], check: bool = True, **env: str) -> subprocess.CompletedProcess:
    """cmd as uid/gid 65534 with no supplementary groups, in /, with this checkout on its PYTHONPATH."""
    environ = {**clean_env(), "PYTHONPATH": REPO, "HOME": "/", **env}
    environ.pop("XDG_RUNTIME_DIR", None)
    return run(["setpriv", f"--reuid={OTHER_UID}", f"--regid={OTHER_UID}", "--clear-groups", *cmd],
               check=check, cwd="/", env=environ, timeout=60)


@pytest.fixture
def local_mount(shared_root: Path) -> Iterator[StorefsMount]:
    """An unstarted mount of the local provider, all of it below shared_root."""
    m = StorefsMount(shared_root, LocalBackend(shared_root))
    try:
        yield m
    finally:
        m.cleanup()


def mount_with(m: StorefsMount, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """`storefs mount` with extra command-line arguments (the config written first)."""
    m.write_config()
    res = m.storefs("mount", "-c", str(m.config_path), "--log-file", str(m.log_path), *args, str(m.mnt),
                    check=False)
    if check:
        assert res.returncode == 0, f"mount failed: {res.stderr}\n{m.log_tail()}"
        m.pid = int(m.status()["pid"])
    return res


def mount_options_in_kernel(mnt: Path) -> list[str]:
    with open("/proc/self/mounts") as f:
        for line in f:
            parts = line.split()
            if len(parts) > 3 and parts[1] == str(mnt):
                return parts[3].split(",")
    raise AssertionError(f"{mnt} is not mounted")


# ---- read-only mounts -----------------------------------------------------------------------------


def test_status_says_read_only_and_flush_and_unmount_work(store: StorefsMount) -> None:
    (store.mnt / ART).mkdir(parents=True)
    (store.mnt / ART / "x.png").write_bytes(b"written before")
    store.unmount()
    store.extra_config["fuse"] = {"read_only": True}
    store.start()
    st = store.status()
    assert st["read_only"] is True
    assert "ro" in st["mount_options"]
    text = store.storefs("status", str(store.mnt)).stdout
    assert "access:       read-only" in text
    assert (store.mnt / ART / "x.png").read_bytes() == b"written before"
    assert sorted(os.listdir(store.mnt / ART)) == ["x.png"]
    store.flush()  # nothing to upload: returns at once
    assert store.status()["pending"] == 0
    store.unmount()
    assert store.provider_read(f"{ART}/x.png") == b"written before"


def test_a_read_write_mount_says_so(store: StorefsMount) -> None:
    st = store.status()
    assert st["read_only"] is False and "rw" in st["mount_options"]
    assert "access:       read-write" in store.storefs("status", str(store.mnt)).stdout


def test_ro_reaches_the_kernel(local_mount: StorefsMount) -> None:
    """Needs storefs.fs.mount to pass ro to libfuse (cfg.fuse.read_only)."""
    mount_with(local_mount, "-o", "ro")
    assert "ro" in mount_options_in_kernel(local_mount.mnt)
    with pytest.raises(OSError) as e:
        (local_mount.mnt / "t1").mkdir()
    assert e.value.errno == 30  # EROFS, whoever answers it (the kernel for an ro mount)


# ---- -o on the command line -------------------------------------------------------------------------


def test_o_options_reach_the_daemon(local_mount: StorefsMount) -> None:
    local_mount.extra_config["fuse"] = {"uid": 0, "attr_timeout": "2s"}
    mount_with(local_mount, "-o", "ro,uid=65534", "-o", "noatime,umask=027")
    st = local_mount.status()
    assert st["read_only"] is True
    assert st["mount_options"] == ["ro", f"uid={OTHER_UID}", "umask=0027", "noatime"]
    local_mount.unmount()

    local_mount.extra_config["fuse"] = {"read_only": True}
    mount_with(local_mount, "-o", "rw")  # the command line wins over the file
    assert local_mount.status()["read_only"] is False
    (local_mount.mnt / ART).mkdir(parents=True)
    (local_mount.mnt / ART / "y.png").write_bytes(b"rw")
    local_mount.unmount()
    assert local_mount.provider_read(f"{ART}/y.png") == b"rw"


def test_bad_o_options_are_refused_before_mounting(local_mount: StorefsMount) -> None:
    for opts, says in (("colour=blue", "-o: colour=blue: unknown option"),
                       ("allow_other,allow_root", "allow_other and allow_root exclude each other"),
                       ("uid=nosuchuser-storefs", "no user named 'nosuchuser-storefs'"),
                       ("umask=9", "expected an octal mode")):
        res = mount_with(local_mount, "-o", opts, check=False)
        assert res.returncode == 1 and says in res.stderr, res.stderr
        assert not is_mounted(local_mount.mnt)


# ---- the control socket: a second uid gets nothing ----------------------------------------------------


def test_a_second_uid_gets_no_answer_from_status(local_mount: StorefsMount) -> None:
    py = second_uid_python()
    mount_with(local_mount)
    res = as_other([py, "-m", "storefs", "status", "--json", str(local_mount.mnt)], check=False)
    assert res.returncode == 1, res.stdout
    assert not res.stdout.strip(), "no status for another uid"
    assert "no storefs daemon answers" in res.stderr, res.stderr
    assert local_mount.status()["pid"] == local_mount.pid  # root still gets its answer


def test_peer_check_closes_a_second_uids_connection(local_mount: StorefsMount, shared_root: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """With the socket opened to everyone (by the test), SO_PEERCRED still keeps uid 65534 out."""
    py = second_uid_python()
    runtime = shared_root / "runtime"
    runtime.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    mount_with(local_mount)
    folder = runtime / "storefs"
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700 and folder.stat().st_uid == 0
    [sock] = list(folder.glob("*.sock"))
    assert stat.S_IMODE(sock.lstat().st_mode) == 0o600
    os.chmod(runtime, 0o755)
    os.chmod(folder, 0o755)
    os.chmod(sock, 0o666)
    try:
        client = ("import socket, sys\n"
                  "s = socket.socket(socket.AF_UNIX)\n"
                  "s.settimeout(20)\n"
                  "s.connect(sys.argv[1])\n"
                  "try:\n"
                  "    s.sendall(b'{\"cmd\": \"status\"}\\n')\n"
                  "    got = s.recv(65536)\n"
                  "except (BrokenPipeError, ConnectionResetError):\n"
                  "    got = b''\n"
                  "print('answer:', got.decode())\n")
        res = as_other([py, "-c", client, str(sock)])
        assert res.stdout.strip() == "answer:", res.stdout
        log = local_mount.log_path.read_text()
        assert log.count(f"refused a connection from uid {OTHER_UID}") == 1, log[-2000:]
        # the CLI does not talk through a folder others may enter, even to its own daemon
        res = local_mount.storefs("status", str(local_mount.mnt), check=False)
        assert res.returncode == 1 and f"refusing control socket folder {folder}: its mode is 0755" in res.stderr
    finally:
        os.chmod(folder, 0o700)
        os.chmod(sock, 0o600)
    assert json.loads(local_mount.storefs("status", "--json", str(local_mount.mnt)).stdout)["pid"] == local_mount.pid
    local_mount.unmount()


def test_a_socket_folder_others_may_enter_is_refused_before_mounting(local_mount: StorefsMount, shared_root: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    runtime = shared_root / "runtime"
    (runtime / "storefs").mkdir(parents=True)
    os.chmod(runtime / "storefs", 0o777)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    res = mount_with(local_mount, check=False)
    assert res.returncode == 1
    assert f"refusing control socket folder {runtime / 'storefs'}: its mode is 0777" in res.stderr, res.stderr
    assert not is_mounted(local_mount.mnt)
    os.chmod(runtime / "storefs", 0o700)
    os.chown(runtime / "storefs", OTHER_UID, OTHER_UID)
    res = mount_with(local_mount, check=False)
    assert res.returncode == 1 and f"it is owned by uid {OTHER_UID}, not by uid 0" in res.stderr, res.stderr
    assert not is_mounted(local_mount.mnt)


# ---- the cache folder ----------------------------------------------------------------------------------


def test_a_cache_folder_anyone_may_write_into_is_refused_before_mounting(local_mount: StorefsMount) -> None:
    local_mount.cache.mkdir()
    os.chmod(local_mount.cache, 0o777)
    res = mount_with(local_mount, check=False)
    assert res.returncode == 1
    assert f"refusing cache folder {local_mount.cache}: its mode is 0777: others may write" in res.stderr, res.stderr
    assert not is_mounted(local_mount.mnt)
    assert not list(local_mount.cache.iterdir()), "nothing is written into a refused cache folder"


def test_cache_files_are_the_daemons_alone(local_mount: StorefsMount) -> None:
    old = os.umask(0)  # the daemon inherits it: nothing it makes may come out wider than 0600/0700
    try:
        res = local_mount.storefs("mount", "-c", str(_config(local_mount)), str(local_mount.mnt), check=False)
    finally:
        os.umask(old)
    assert res.returncode == 0, res.stderr
    local_mount.pid = int(local_mount.status()["pid"])
    (local_mount.mnt / ART).mkdir(parents=True)
    (local_mount.mnt / ART / "z.png").write_bytes(b"cached")
    local_mount.flush()
    cache = local_mount.cache
    assert stat.S_IMODE(cache.stat().st_mode) == 0o700
    for dirpath, dirs, files in os.walk(cache):
        for d in dirs:
            assert stat.S_IMODE(os.stat(os.path.join(dirpath, d)).st_mode) == 0o700, os.path.join(dirpath, d)
        for f in files:
            assert stat.S_IMODE(os.stat(os.path.join(dirpath, f)).st_mode) == 0o600, os.path.join(dirpath, f)
    assert (cache / "storefs.log").exists() and (cache / "journal.db").exists()


def _config(m: StorefsMount) -> Path:
    m.write_config()
    return m.config_path


# ---- allow_other needs user_allow_other for a non-root user ----------------------------------------------


def test_allow_other_without_user_allow_other_is_refused_before_mounting(shared_root: Path) -> None:
    from storefs.cli import fuse_conf_allows_other
    if fuse_conf_allows_other():
        pytest.skip("/etc/fuse.conf has user_allow_other here")
    py = second_uid_python()
    mnt = shared_root / "mnt"
    mnt.mkdir()
    os.chown(mnt, OTHER_UID, OTHER_UID)
    cfg = shared_root / "c.yaml"
    cfg.write_text(f"providers: {{local: {{type: local, base_path: {shared_root / 'data'}}}}}\n"
                   f"cache: {{dir: {shared_root / 'cache'}}}\n")
    os.chmod(cfg, 0o644)
    res = as_other([py, "-m", "storefs", "mount", "-c", str(cfg), "-o", "allow_other", str(mnt)], check=False)
    assert res.returncode == 1
    assert "allow_other needs the line `user_allow_other` in /etc/fuse.conf" in res.stderr, res.stderr
    assert "echo user_allow_other >> /etc/fuse.conf" in res.stderr
    assert not is_mounted(mnt)
