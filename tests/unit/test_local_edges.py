"""The local provider's edges: a base_path that does not exist (a typo must not mount an empty store),
and inotify's limits (the mount goes on unwatched, with one WARNING naming the sysctl)."""

from __future__ import annotations

import errno
import logging
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from storefs.cache.datafiles import DataFiles
from storefs.cache.journal import Journal
from storefs.config import EMBEDDED, ConfigError, load_config
from storefs.daemon import build_core
from storefs.errors import ProviderError
from storefs.layout import Layout
from storefs.providers.base import ObjectMeta
from storefs.providers.factory import make_provider
from storefs.providers.local import LocalProvider
from storefs.testing.mount import clean_env, is_mounted, lazy_unmount

REPO = str(Path(__file__).resolve().parents[2])


# ---- a base_path that does not exist ---------------------------------------------------------------


def test_a_missing_base_path_is_refused_naming_the_path_and_the_fix(tmp_path: Path) -> None:
    base = tmp_path / "artifcats"  # the typo
    with pytest.raises(ProviderError) as refused:
        LocalProvider("local", str(base)).check()
    text = str(refused.value)
    assert "local provider local" in text and str(base) in text and "does not exist" in text
    assert "create: true" in text and f"mkdir {base}" in text
    assert not base.exists()


def test_create_makes_the_folder_only_when_its_parent_exists(tmp_path: Path) -> None:
    LocalProvider("local", str(tmp_path / "data"), create=True).check()
    assert (tmp_path / "data").is_dir()
    deep = tmp_path / "srv" / "data"
    with pytest.raises(ProviderError) as refused:
        LocalProvider("local", str(deep), create=True).check()
    assert str(deep) in str(refused.value) and f"parent folder {tmp_path / 'srv'}" in str(refused.value)
    assert not (tmp_path / "srv").exists()
    LocalProvider("local", str(deep), create=True, create_parents=True).check()
    assert deep.is_dir()


def test_an_existing_base_path_needs_no_create(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    p = LocalProvider("local", str(tmp_path / "data"))
    p.check()
    assert p.url("k").startswith("file://")


def test_config_create_key_reaches_the_provider(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"providers: {{local: {{type: local, base_path: {tmp_path / 'd'}, create: true}}}}\n")
    pcfg = load_config(str(cfg)).providers["local"]
    assert pcfg.create and not pcfg.create_parents  # type: ignore[union-attr]
    p = make_provider(pcfg)
    assert isinstance(p, LocalProvider) and p.create and not p.create_parents
    cfg.write_text(f"providers: {{local: {{type: local, base_path: {tmp_path / 'd'}}}}}\n")
    assert not load_config(str(cfg)).providers["local"].create  # type: ignore[union-attr]
    cfg.write_text(f"providers: {{local: {{type: local, base_path: {tmp_path / 'd'}, create: maybe}}}}\n")
    with pytest.raises(ConfigError, match="providers.local.create"):
        load_config(str(cfg))


def test_the_embedded_default_makes_its_own_folder_with_its_parents(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "fresh-home" / "share"))
    cfg = load_config(None)
    assert cfg.source == EMBEDDED
    p = make_provider(cfg.providers["local"])
    p.check(writable=True)
    assert (tmp_path / "fresh-home/share/storefs/data").is_dir()


def test_storefs_mount_refuses_a_missing_base_path_before_mounting(tmp_path: Path) -> None:
    if shutil.which("fusermount3") is None or not os.path.exists("/dev/fuse"):
        pytest.skip("the providers are checked after the FUSE check")
    base, mnt = tmp_path / "no" / "such" / "data", tmp_path / "mnt"
    mnt.mkdir()
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"providers: {{store: {{type: local, base_path: {base}}}}}\ncache: {{dir: {tmp_path / 'cache'}}}\n")
    try:
        res = subprocess.run([sys.executable, "-m", "storefs", "mount", "-c", str(cfg), str(mnt)],
                             capture_output=True, text=True, timeout=60, cwd=tmp_path,
                             env={**clean_env(), "PYTHONPATH": REPO})
        assert res.returncode != 0, res.stdout + res.stderr
        assert str(base) in res.stderr and "providers.store" in res.stderr and "does not exist" in res.stderr, \
            res.stderr
        assert not is_mounted(mnt)
        assert not (tmp_path / "no").exists()
    finally:
        if is_mounted(mnt):
            lazy_unmount(mnt)


# ---- inotify's limits -------------------------------------------------------------------------------------


def _limit_reached(code: int):  # type: ignore[no-untyped-def]
    def start(self: object) -> None:
        raise OSError(code, os.strerror(code))
    return start


@pytest.mark.parametrize("code, setting", [(errno.ENOSPC, "max_user_watches"), (errno.EMFILE, "max_user_instances")])
def test_at_the_inotify_limit_the_folder_is_unwatched_with_one_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                                                       monkeypatch: pytest.MonkeyPatch, code: int,
                                                                       setting: str) -> None:
    from watchdog.observers import Observer
    monkeypatch.setattr(Observer, "start", _limit_reached(code))
    p = LocalProvider("local", str(tmp_path / "data"), create=True)
    p.check()
    with caplog.at_level(logging.WARNING, logger="storefs.providers.local"):
        p.watch(lambda key: None)
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(lines) == 1, lines
    assert f"fs.inotify.{setting}" in lines[0] and f"sysctl fs.inotify.{setting}=" in lines[0], lines[0]
    assert "dir_cache_ttl" in lines[0] and str(tmp_path / "data") in lines[0]
    # the provider works on, unwatched
    src = tmp_path / "src"
    src.write_bytes(b"still works")
    p.put_file("t/image/b/a/f", str(src), ObjectMeta(mtime_ns=1_000_000_000, mode=0o100644))
    assert [i.key for i in p.list("t/image/b/a/")] == ["t/image/b/a/f"]
    p.close()


def test_a_mount_core_at_the_inotify_limit_works_unwatched(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """The core starts its watcher thread as a mount does: the limit costs one WARNING, no traceback,
    and files still go through to the folder."""
    from watchdog.observers import Observer
    monkeypatch.setattr(Observer, "start", _limit_reached(errno.ENOSPC))
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text(f"providers: {{local: {{type: local, base_path: {tmp_path / 'data'}, create: true}}}}\n"
                        f"cache: {{dir: {tmp_path / 'cache'}, writeback_delay: 0s}}\n")
    cfg = load_config(str(cfg_file))
    provider = make_provider(cfg.providers["local"])
    provider.check()
    core = build_core(cfg, Layout(cfg.layout, cfg.max_file_size), {"local": provider},
                      Journal(os.path.join(cfg.cache.dir, "journal.db")), DataFiles(cfg.cache.dir))
    with caplog.at_level(logging.WARNING):
        core.start()
        try:
            for d in ("t", "t/image", "t/image/b", "t/image/b/a"):
                core.mkdir(d, 0o755, os.getuid(), os.getgid())
            fh = core.create("t/image/b/a/f", 0o644, os.getuid(), os.getgid(), exclusive=True)
            core.write(fh, b"unwatched", 0)
            core.release(fh)
            assert core.flush_all(30)
            for t in threading.enumerate():
                if t.name == "storefs-watch":  # the core's watcher thread has had its say
                    t.join(10)
        finally:
            core.stop()
    assert (tmp_path / "data/t/image/b/a/f").read_bytes() == b"unwatched"
    problems = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert [r.name for r in problems] == ["storefs.providers.local"], [r.getMessage() for r in problems]
    assert "fs.inotify.max_user_watches" in problems[0].getMessage()


def test_another_watch_error_is_not_taken_for_the_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from watchdog.observers import Observer
    monkeypatch.setattr(Observer, "start", _limit_reached(errno.EACCES))
    p = LocalProvider("local", str(tmp_path), create=True)
    with pytest.raises(OSError) as raised:
        p.watch(lambda key: None)
    assert raised.value.errno == errno.EACCES


_IN_USERNS = r"""
import logging, sys
sys.path.insert(0, sys.argv[1])
logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
from storefs.providers.local import LocalProvider
p = LocalProvider("local", sys.argv[2])
p.watch(lambda key: None)
print("watching" if p._observer is not None else "unwatched")
"""


@pytest.mark.parametrize("sysctl, setting", [("max_inotify_watches", "max_user_watches"),
                                             ("max_inotify_instances", "max_user_instances")])
def test_the_real_inotify_limit_in_a_user_namespace(tmp_path: Path, sysctl: str, setting: str) -> None:
    """The kernel's own refusal, not a stand-in: a user namespace whose inotify limit is 0 (its own, so
    nothing else on the machine is touched)."""
    probe = subprocess.run(["unshare", "-U", "-r", "sh", "-c", f"echo 0 > /proc/sys/user/{sysctl}"],
                           capture_output=True, text=True) if shutil.which("unshare") else None
    if probe is None or probe.returncode != 0:
        pytest.skip("no user namespaces with their own inotify limits here")
    res = subprocess.run(["unshare", "-U", "-r", "sh", "-c", f'echo 0 > /proc/sys/user/{sysctl} && exec "$@"', "sh",
                          sys.executable, "-c", _IN_USERNS, REPO, str(tmp_path)],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "unwatched"
    warnings = [line for line in res.stderr.splitlines() if line.startswith("WARNING")]
    assert len(warnings) == 1 and f"fs.inotify.{setting}" in warnings[0], res.stderr
    assert "Traceback" not in res.stderr, res.stderr
