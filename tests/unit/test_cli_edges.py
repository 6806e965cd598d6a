"""The command line's rough edges: the import path, closed pipes, hostile key names, where migrate keeps
its resume state, and the README's links."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import signal
import subprocess
import sys
import venv
from pathlib import Path

import pytest

import storefs
from storefs.admin.common import Store
from storefs.admin.escape import printable, printable_lines
from storefs.admin.migrate import legacy_state_path, state_dir, state_path
from storefs.cli import main
from storefs.mount_helper import install

REPO = Path(storefs.__file__).resolve().parent.parent
TIMEOUT = 120

# ---- a `storefs/` folder in the current folder ------------------------------------------------------------

#: setuptools' editable-install hook, as `pip install -e` (in its default mode) writes it for a flat
#: layout: a finder asked after the path search, so a `storefs/` folder found on sys.path wins
EDITABLE_HOOK = '''
import importlib.machinery, importlib.util, sys
PKG = {pkg!r}
class EditableFinder:
    @classmethod
    def find_spec(cls, name, path=None, target=None):
        if name == "storefs":
            return importlib.util.spec_from_file_location(name, PKG + "/__init__.py", submodule_search_locations=[PKG])
        parent, _, _ = name.rpartition(".")
        if parent == "storefs":
            return importlib.machinery.PathFinder.find_spec(name, path=[PKG])
        return None
sys.meta_path.insert(sys.meta_path.index(importlib.machinery.PathFinder) + 1, EditableFinder)
'''


def _editable_env(tmp_path: Path) -> dict[str, str]:
    """An environment where storefs is importable only through an editable-install hook."""
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(EDITABLE_HOOK.format(pkg=str(REPO / "storefs")))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "STOREFS_"))}
    env["PYTHONPATH"] = str(hook)
    return env


@pytest.mark.parametrize("planted", ["an empty folder", "a package"])
def test_the_mount_helper_ignores_a_storefs_folder_where_it_is_run(tmp_path, planted):
    sbin, cwd = tmp_path / "sbin", tmp_path / "src"
    sbin.mkdir()
    (cwd / "storefs").mkdir(parents=True)
    if planted == "a package":  # mount(8) runs the helper as root: a folder's package must never run
        (cwd / "storefs" / "__init__.py").write_text("raise SystemExit('planted package imported')\n")
    install(str(sbin))
    res = subprocess.run([str(sbin / "mount.fuse.storefs"), "none", str(tmp_path / "no-such-mnt")], cwd=cwd,
                         env=_editable_env(tmp_path), capture_output=True, text=True, timeout=TIMEOUT)
    assert "Traceback" not in res.stderr and "planted" not in res.stderr, res.stderr
    assert res.returncode == 32 and "no-such-mnt does not exist" in res.stderr, res.stderr


def _build_isolation() -> list[str]:
    """As scripts/install.sh decides: the installed setuptools builds, when it can without the wheel package."""
    import setuptools
    if tuple(int(x) for x in setuptools.__version__.split(".")[:2]) >= (70, 1) or importlib.util.find_spec("wheel"):
        return ["--no-build-isolation"]
    return []


def test_an_editable_install_runs_from_a_folder_holding_storefs(tmp_path):
    """`pip install -e` as scripts/install.sh runs it, then `python -m storefs` and `storefs` from the parent
    of a clone."""
    src = tmp_path / "clone"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    shutil.copytree(REPO / "storefs", src / "storefs", ignore=shutil.ignore_patterns("__pycache__"))
    env_dir = tmp_path / "venv"
    venv.create(env_dir, system_site_packages=True, with_pip=False)
    py = env_dir / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "STOREFS_"))}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    res = subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", *_build_isolation(), "-e", str(src)],
                         env=env, capture_output=True, text=True, timeout=300)
    if res.returncode != 0 and "satisfies the requirement setuptools" in res.stderr:
        pytest.skip(f"no package index to build with: {res.stderr.strip()[-300:]}")
    assert res.returncode == 0, res.stderr
    here = tmp_path / "work"
    (here / "storefs").mkdir(parents=True)
    for cmd in ([str(py), "-m", "storefs", "--version"], [str(env_dir / "bin" / "storefs"), "--version"]):
        out = subprocess.run(cmd, cwd=here, env=env, capture_output=True, text=True, timeout=TIMEOUT)
        assert out.returncode == 0 and out.stdout.strip() == f"storefs {storefs.__version__}", (cmd, out.stderr)


# ---- output into a closed pipe ---------------------------------------------------------------------------

BOARDS = 1500  # enough lines that the output outgrows a pipe's buffer and head's first read


@pytest.fixture(scope="module")
def big_store(tmp_path_factory) -> Path:
    """A local provider with one artifact in each of BOARDS boards, and a config naming it."""
    root = tmp_path_factory.mktemp("big")
    for i in range(BOARDS):
        art = root / "data" / "t1" / "image" / f"board{i:05d}" / "a1"
        art.mkdir(parents=True)
        (art / "x.png").write_bytes(b"x")
    cfg = root / "c.yaml"
    cfg.write_text(f"providers:\n  local: {{type: local, base_path: {root / 'data'}}}\n"
                   f"cache: {{dir: {root / 'cache'}}}\n")
    return cfg


@pytest.mark.parametrize("args", [["ls", "t1"], ["stats", "--by", "board"], ["--help"]], ids=["ls", "stats", "help"])
def test_a_closed_pipe_ends_the_command_quietly(big_store, args):
    cmd = " ".join([sys.executable, "-m", "storefs", *args[:1], "-c", str(big_store), *args[1:]]
                   if args[0] != "--help" else [sys.executable, "-m", "storefs", "--help"])
    res = subprocess.run(["bash", "-c", f'{cmd} 2>"$1" | head -1; echo "${{PIPESTATUS[0]}}"', "bash",
                          str(big_store.parent / "err")], capture_output=True, text=True, timeout=TIMEOUT,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    first, status = res.stdout.splitlines()
    err = (big_store.parent / "err").read_text()
    assert first.split()[0] in ("artifact", "board", "usage:"), res.stdout
    assert err == "", err
    assert int(status) in (0, 128 + signal.SIGPIPE), status


# ---- key names that would drive the terminal -------------------------------------------------------------

@pytest.mark.parametrize(("raw", "shown"), [
    ("t1/image/b1/a1", "t1/image/b1/a1"),
    ("a\x1b[2Jb", "a\\x1b[2Jb"),
    ("x\ny", "x\\ny"),
    ("tab\there", "tab\\there"),
    ("back\\slash", "back\\\\slash"),
    ("del\x7f", "del\\x7f"),
    ("csi\x9b", "csi\\x9b"),
    ("rtl\u202eexe.png", "rtl\\u202eexe.png"),
    ("raw\udcff", "raw\\xff"),
    ("née.png", "née.png"),
])
def test_printable_escapes_what_a_terminal_would_act_on(raw, shown):
    assert printable(raw) == shown
    if "\n" not in raw:  # an error list's own line breaks stay
        assert printable_lines(f"one {raw}\ntwo") == f"one {shown}\ntwo"


@pytest.fixture
def hostile_store(tmp_path) -> Path:
    """Keys another client wrote: a board name that clears the screen, artifact and file names with a newline."""
    bad = tmp_path / "data" / "t1" / "image" / "b\x1b[2Jb" / "a\nz"
    bad.mkdir(parents=True)
    (bad / "x\ny.png").write_bytes(b"x")
    os.utime(bad / "x\ny.png", (1e9, 1e9))
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"providers:\n  local: {{type: local, base_path: {tmp_path / 'data'}}}\n"
                   f"cache: {{dir: {tmp_path / 'cache'}}}\n")
    return cfg


@pytest.mark.parametrize("args", [["ls", "t1"], ["stats", "--by", "board", "t1"],
                                  ["cleanup", "--older-than", "1d", "--dry-run", "t1"]])
def test_admin_output_never_prints_a_raw_control_character(hostile_store, args, capsys):
    assert main([args[0], "-c", str(hostile_store), *args[1:]]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "t1/image/b\\x1b[2Jb" in out, out
    if args[0] != "stats":
        assert "t1/image/b\\x1b[2Jb/a\\nz " in out, out


# ---- migrate's resume state outlives the cache ----------------------------------------------------------

def _two_providers(tmp_path: Path) -> Path:
    src = tmp_path / "src" / "t1" / "image" / "b1" / "a1"
    src.mkdir(parents=True)
    for name in ("x.png", "y.png"):
        (src / name).write_bytes(name.encode())
    (tmp_path / "dst").mkdir()
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"default_provider: src\nproviders:\n  src: {{type: local, base_path: {tmp_path / 'src'}}}\n"
                   f"  dst: {{type: local, base_path: {tmp_path / 'dst'}}}\ncache: {{dir: {tmp_path / 'cache'}}}\n")
    return cfg


def _migrate(cfg: Path, *extra: str) -> int:
    return main(["migrate", "-c", str(cfg), "--from", "src", "--to", "dst", "-q", *extra])


def test_migrate_keeps_its_state_in_the_state_folder_not_the_cache(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    cfg = _two_providers(tmp_path)
    assert _migrate(cfg) == 0
    with Store.open(str(cfg)) as store:
        path = state_path(store, "src", "dst")
    assert os.path.dirname(path) == str(tmp_path / "state" / "storefs") == state_dir()
    assert os.path.exists(path) and not list(tmp_path.glob("cache/migrate-*"))
    shutil.rmtree(tmp_path / "cache", ignore_errors=True)  # a wiped cache: the next run still knows its keys
    capsys.readouterr()
    assert _migrate(cfg) == 0
    assert "0 copied, 2 skipped (verified before)" in capsys.readouterr().out


def test_a_state_file_left_in_the_cache_folder_is_moved_once(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    cfg = _two_providers(tmp_path)
    with Store.open(str(cfg)) as store:
        old, new = legacy_state_path(store, "src", "dst"), state_path(store, "src", "dst")
    assert _migrate(cfg, "--state", old) == 0  # what an older storefs left behind
    capsys.readouterr()
    assert _migrate(cfg) == 0
    captured = capsys.readouterr()
    assert f"moved the resume state {old} to {new}" in captured.err
    assert "0 copied, 2 skipped (verified before)" in captured.out
    assert os.path.exists(new) and not os.path.exists(old)


def test_the_state_folder_follows_xdg_and_root(monkeypatch):
    monkeypatch.setenv("XDG_STATE_HOME", "relative/is/ignored")
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert state_dir() == "/var/lib/storefs"
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setenv("HOME", "/home/u")
    assert state_dir() == "/home/u/.local/state/storefs"


def test_two_configs_naming_other_storage_alike_keep_separate_states(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a, b = _two_providers(tmp_path / "a"), _two_providers(tmp_path / "b")
    with Store.open(str(a)) as sa, Store.open(str(b)) as sb:
        assert state_path(sa, "src", "dst") != state_path(sb, "src", "dst")


# ---- the README ----------------------------------------------------------------------------------------

def _anchor(title: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces as dashes."""
    text = re.sub(r"[`*]", "", title.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def test_every_link_in_the_readme_resolves():
    text = (REPO / "README.md").read_text()
    anchors = {_anchor(m) for m in re.findall(r"^#+ (.+)$", text, re.M)}
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target):
            continue
        path, _, anchor = target.partition("#")
        if path and not (REPO / path).exists():
            broken.append(target)
        elif not path and anchor not in anchors:
            broken.append(target)
    assert not broken, broken
    assert "DESIGN.md" not in text  # not in the repository
    assert "--version" in text
