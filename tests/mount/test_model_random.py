"""Random operation sequences on a mount, checked against a plain local folder (the model).

`test_random_ops_match_model` is a Hypothesis state machine: each example starts from an empty
artifact folder (`t1/image/b1/a1/` in the mount, `tmp_path/model` as the model), applies the
same random operation to both sides (create, write at an offset — past the end too —, truncate,
rename of files and of folders, unlink, mkdir, rmdir, chmod, utime with nanosecond times,
setxattr/removexattr `user.*`), expects the same outcome (or the same errno), and after every
step compares the two trees: names, types, sizes,
SHA-256 of the content, mode bits, `user.*` xattrs (not storefs' read-only `user.storefs.*`), and
the mtime of every file set by utime since its last write (to the nanosecond). At the end of each
example: `storefs flush`, a remount with an empty cache, and the same comparison against what
the provider kept. A failure message lists the steps of its example (also when the failure is
timing dependent and Hypothesis cannot replay it) and what the provider holds at each differing path.

`test_fsx_short` runs storefs.testing.fsx (pread/pwrite, ftruncate, mmap reads and writes, reopen,
fsync, all checked against an in-memory model) on one file in the mount, then checks the
provider's copy after a flush and an empty-cache remount.

More examples for a long run: STOREFS_RANDOM_EXAMPLES=200 STOREFS_RANDOM_STEPS=50
(STOREFS_RANDOM_SHRINK_SECONDS, default 120, bounds the time Hypothesis spends shrinking a failure).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import random
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, note, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from storefs.testing.data import ART, file_sha256

pytestmark = pytest.mark.timeout(600)

FSX = "storefs.testing.fsx"  # python -m FSX PATH

MAX_EXAMPLES = int(os.environ.get("STOREFS_RANDOM_EXAMPLES", "8"))
STEPS = int(os.environ.get("STOREFS_RANDOM_STEPS", "25"))
# every replay costs a remount (~2 s): cap Hypothesis' shrinking (its own default is 300 s)
SHRINK_SECONDS = int(os.environ.get("STOREFS_RANDOM_SHRINK_SECONDS", "120"))
MAX_FILE = 300 * 1024
MTIME_SLACK_NS = 0  # storefs keeps times as integer nanoseconds, as the model's disk does

NAMES = st.from_regex(r"[a-z0-9]{1,8}(\.png|\.bin)?", fullmatch=True)
XATTR_NAMES = st.sampled_from(["user.a", "user.b", "user.prompt", "user.k1", "user.x.y"])
XATTR_VALUES = st.one_of(st.binary(max_size=32), st.text("abcdefghij klmnop=/", max_size=24).map(str.encode))
SIZES = st.one_of(st.integers(0, 300), st.integers(0, 5000), st.integers(0, MAX_FILE))
SEEDS = st.integers(0, 2**32 - 1)
NS_TIMES = st.integers(1_000_000_000 * 10**9, 4_000_000_000 * 10**9 - 1)
MODES = st.one_of(st.sampled_from([0o644, 0o600, 0o755, 0o444, 0o640, 0o000]), st.integers(0, 0o777))


def errname(code: int | None) -> str:
    return "success" if code is None else errno.errorcode.get(code, str(code))


def content(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


def user_xattrs(path: str) -> dict[str, bytes]:
    out = {}
    for name in os.listxattr(path, follow_symlinks=False):
        if name.startswith("user.") and not name.startswith("user.storefs."):
            out[name] = os.getxattr(path, name, follow_symlinks=False)
    return out


def snapshot(root: Path) -> dict[str, tuple]:
    """{relative path: description} of everything below root (root itself excluded).

    A name that is listed but cannot be looked up or read shows as ("error", op, errno name)."""
    out: dict[str, tuple] = {}
    for dirpath, dirs, files in os.walk(root, onerror=lambda e: out.__setitem__(
            os.path.relpath(e.filename, root), ("error", "listdir", errname(e.errno)))):
        dirs.sort()
        for name in sorted(dirs + files):
            p = os.path.join(dirpath, name)
            rel = os.path.relpath(p, root)
            step = "lstat"
            try:
                st_ = os.lstat(p)
                if stat.S_ISDIR(st_.st_mode):
                    out[rel] = ("dir", oct(stat.S_IMODE(st_.st_mode)))
                elif stat.S_ISREG(st_.st_mode):
                    step = "read"
                    with open(p, "rb") as f:
                        data = f.read()
                    step = "xattrs"
                    out[rel] = ("file", st_.st_size, len(data), hashlib.sha256(data).hexdigest()[:16],
                                oct(stat.S_IMODE(st_.st_mode)), tuple(sorted(user_xattrs(p).items())))
                else:
                    out[rel] = ("other", stat.S_IFMT(st_.st_mode))
            except OSError as e:
                out[rel] = ("error", step, errname(e.errno))
    return out


def diff(model: dict[str, tuple], mount: dict[str, tuple]) -> list[str]:
    problems = []
    for rel in sorted(set(model) | set(mount)):
        a, b = model.get(rel), mount.get(rel)
        if a != b:
            problems.append(f"{rel}: model {a}, mount {b}")
    return problems


class ModelMachine(RuleBasedStateMachine):
    """One mount (class attribute `store`) and one model folder (`model_root`), side by side."""

    store = None  # set by the test: a StorefsMount
    model_root: Path = None  # set by the test

    def __init__(self) -> None:
        super().__init__()
        self.utimed: dict[str, int] = {}  # file -> mtime_ns set by the last utime since its last write
        self.broken = False
        self.history: list[str] = []  # this example's steps, for failure messages (flaky ones too)

    # -- the two roots

    @property
    def mount_root(self) -> Path:
        return self.store.mnt / ART

    def roots(self) -> tuple[Path, Path]:
        return self.model_root, self.mount_root

    def both(self, what: str, fn) -> int | None:
        """fn(root) on the model, then on the mount: same outcome (success or errno) expected."""
        results = []
        for root in self.roots():
            try:
                fn(root)
                results.append(None)
            except OSError as e:
                results.append(e.errno)
        note(f"{what}: {errname(results[0])}")
        self.history.append(f"{what}: {errname(results[0])}")
        if results[0] != results[1]:
            self.fail(f"{what}: model gives {errname(results[0])}, mount gives {errname(results[1])}")
        return results[0]

    def fail(self, message: str) -> None:
        self.broken = True
        steps = "\n    ".join(self.history) or "(none)"
        raise AssertionError(f"{message}\n  steps of this example:\n    {steps}")

    # -- what the model holds (the model folder is the truth for choosing targets)

    def files(self) -> list[str]:
        return sorted(k for k, v in self._walk().items() if v == "file")

    def dirs(self) -> list[str]:
        return sorted(k for k, v in self._walk().items() if v == "dir")

    def _walk(self) -> dict[str, str]:
        out = {}
        for dirpath, dirs, files in os.walk(self.model_root):
            for name in dirs:
                out[os.path.relpath(os.path.join(dirpath, name), self.model_root)] = "dir"
            for name in files:
                out[os.path.relpath(os.path.join(dirpath, name), self.model_root)] = "file"
        return out

    def pick_dir(self, data, with_root: bool = True) -> str:
        choices = ([""] if with_root else []) + self.dirs()
        return data.draw(st.sampled_from(choices), label="folder")

    def pick_file(self, data) -> str:
        return data.draw(st.sampled_from(self.files()), label="file")

    def pick_name(self, data, folder: str) -> str:
        """A name in folder: often one that exists there already (file or folder), else a new one."""
        here = sorted(n for n in os.listdir(self.model_root / folder))
        strat = st.one_of(st.sampled_from(here), NAMES) if here else NAMES
        return data.draw(strat, label="name")

    @staticmethod
    def join(folder: str, name: str) -> str:
        return f"{folder}/{name}" if folder else name

    def forget_below(self, rel: str) -> None:
        for k in [k for k in self.utimed if k == rel or k.startswith(rel + "/")]:
            del self.utimed[k]

    # -- start of every example: an empty artifact folder on both sides

    @initialize()
    def wipe(self) -> None:
        for root in self.roots():
            root.mkdir(parents=True, exist_ok=True)
            for entry in os.listdir(root):
                p = root / entry
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p)
                else:
                    p.unlink()
        self.utimed.clear()
        if os.listdir(self.mount_root):
            self.fail(f"the artifact folder is not empty after the wipe: {os.listdir(self.mount_root)}")

    # -- rules

    @rule(data=st.data(), size=SIZES, seed=SEEDS)
    def create_file(self, data, size: int, seed: int) -> None:
        folder = self.pick_dir(data)
        rel = self.join(folder, self.pick_name(data, folder))
        body = content(seed, size)

        def op(root: Path) -> None:
            fd = os.open(root / rel, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                done = 0
                while done < len(body):
                    done += os.write(fd, body[done:])
            finally:
                os.close(fd)

        if self.both(f"create {rel} ({size} bytes)", op) is None:
            self.utimed.pop(rel, None)

    @precondition(lambda self: self.files())
    @rule(data=st.data(), seed=SEEDS, length=st.integers(0, 70_000))
    def write_at(self, data, seed: int, length: int) -> None:
        rel = self.pick_file(data)
        size = os.path.getsize(self.model_root / rel)
        offset = data.draw(st.one_of(st.integers(0, size), st.integers(0, size + 80_000),
                                     st.just(size)), label="offset")
        body = content(seed, length)

        def op(root: Path) -> None:
            fd = os.open(root / rel, os.O_WRONLY)
            try:
                done = 0
                while done < len(body):
                    done += os.pwrite(fd, body[done:], offset + done)
            finally:
                os.close(fd)

        self.both(f"write {rel} at {offset} ({length} bytes, size {size})", op)
        if length:
            self.utimed.pop(rel, None)

    @precondition(lambda self: self.files())
    @rule(data=st.data())
    def truncate(self, data) -> None:
        rel = self.pick_file(data)
        size = os.path.getsize(self.model_root / rel)
        length = data.draw(st.one_of(st.integers(0, size), st.integers(size, size + 100_000), st.just(0)),
                           label="length")
        self.both(f"truncate {rel} {size} -> {length}", lambda root: os.truncate(root / rel, length))
        self.utimed.pop(rel, None)

    @precondition(lambda self: self.files())
    @rule(data=st.data())
    def rename_file(self, data) -> None:
        src = self.pick_file(data)
        folder = self.pick_dir(data)
        dst = self.join(folder, self.pick_name(data, folder))
        if self.both(f"rename {src} -> {dst}", lambda root: os.rename(root / src, root / dst)) is None \
                and src != dst:
            self.utimed.pop(dst, None)
            if src in self.utimed:
                self.utimed[dst] = self.utimed.pop(src)

    @precondition(lambda self: self.dirs())
    @rule(data=st.data())
    def rename_dir(self, data) -> None:
        src = data.draw(st.sampled_from(self.dirs()), label="folder to move")
        folder = self.pick_dir(data)
        dst = self.join(folder, self.pick_name(data, folder))
        if self.both(f"rename folder {src} -> {dst}", lambda root: os.rename(root / src, root / dst)) is None \
                and src != dst:
            self.forget_below(dst)
            for k in [k for k in self.utimed if k.startswith(src + "/")]:
                self.utimed[dst + k[len(src):]] = self.utimed.pop(k)

    @precondition(lambda self: self.files())
    @rule(data=st.data())
    def unlink(self, data) -> None:
        rel = self.pick_file(data)
        self.both(f"unlink {rel}", lambda root: os.unlink(root / rel))
        self.utimed.pop(rel, None)

    @rule(data=st.data())
    def mkdir(self, data) -> None:
        folder = self.pick_dir(data)
        rel = self.join(folder, self.pick_name(data, folder))
        self.both(f"mkdir {rel}", lambda root: os.mkdir(root / rel))

    @precondition(lambda self: self.dirs())
    @rule(data=st.data())
    def rmdir(self, data) -> None:
        rel = data.draw(st.sampled_from(self.dirs()), label="folder")
        self.both(f"rmdir {rel} ({len(os.listdir(self.model_root / rel))} entries)",
                  lambda root: os.rmdir(root / rel))

    @precondition(lambda self: self.files())
    @rule(data=st.data(), mode=MODES)
    def chmod(self, data, mode: int) -> None:
        rel = self.pick_file(data)
        self.both(f"chmod {rel} {mode:o}", lambda root: os.chmod(root / rel, mode))

    @precondition(lambda self: self.files())
    @rule(data=st.data(), atime=NS_TIMES, mtime=NS_TIMES)
    def utime(self, data, atime: int, mtime: int) -> None:
        rel = self.pick_file(data)
        if self.both(f"utime {rel} mtime_ns={mtime}", lambda root: os.utime(root / rel, ns=(atime, mtime))) is None:
            self.utimed[rel] = mtime

    @precondition(lambda self: self.files())
    @rule(data=st.data(), name=XATTR_NAMES, value=XATTR_VALUES)
    def setxattr(self, data, name: str, value: bytes) -> None:
        rel = self.pick_file(data)
        self.both(f"setxattr {rel} {name}={value!r}", lambda root: os.setxattr(root / rel, name, value))

    @precondition(lambda self: self.files())
    @rule(data=st.data(), name=XATTR_NAMES)
    def removexattr(self, data, name: str) -> None:
        rel = self.pick_file(data)
        self.both(f"removexattr {rel} {name}", lambda root: os.removexattr(root / rel, name))

    # -- checks

    def provider_view(self, rel: str) -> str:
        """What the provider itself holds at rel (for failure messages)."""
        key = f"{ART}/{rel}"
        try:
            meta = self.store.provider_meta(key)
            if meta is not None:
                meta = {k: v for k, v in meta.items() if k in ("size", "mode", "mtime", "metadata")}
            return f"provider: exists={self.store.provider_exists(key)} meta={meta}"
        except Exception as e:  # a diagnostic must not hide the failure
            return f"provider: {type(e).__name__}: {e}"

    def compare(self, when: str) -> None:
        model, mount = snapshot(self.model_root), snapshot(self.mount_root)
        problems = [f"{line}\n      {self.provider_view(line.split(': ', 1)[0])}" for line in diff(model, mount)]
        for rel, want in sorted(self.utimed.items()):
            for side, root in zip(("model", "mount"), self.roots(), strict=True):
                try:
                    got = os.stat(root / rel).st_mtime_ns
                except OSError as e:
                    problems.append(f"{rel}: {side} stat: {e}")
                    continue
                if abs(got - want) > MTIME_SLACK_NS:
                    problems.append(f"{rel}: {side} mtime_ns {got}, utime set {want} (off by {got - want} ns)")
        if problems:
            try:
                keys = [k[len(ART) + 1:] for k in self.store.provider_keys(ART)]
            except Exception as e:
                keys = f"{type(e).__name__}: {e}"
            problems.append(f"(file keys in the provider under the artifact: {keys})")
            self.fail(f"{when}: the mount differs from the model:\n  " + "\n  ".join(problems))

    @invariant()
    def same_tree(self) -> None:
        self.compare("after the step")

    def teardown(self) -> None:
        """Flush, remount with an empty cache, compare: what the provider kept is the model.

        The next example then starts on a fresh daemon, even after a failure (Hypothesis
        replays failing examples while shrinking, and they must not see this one's leftovers)."""
        if self.broken:  # a step already failed: report that, not a consequence of it
            with contextlib.suppress(Exception):
                self.store.flush()
            with contextlib.suppress(Exception):
                self.store.remount(empty_cache=True)
            return
        self.store.flush()
        self.history.append("storefs flush; remount with an empty cache")
        self.store.remount(empty_cache=True)
        self.compare("after flush and a remount with an empty cache")


def test_random_ops_match_model(store, tmp_path, monkeypatch):
    class Machine(ModelMachine):
        pass

    try:  # a private knob: without it shrinking still works, only for longer
        from hypothesis.internal.conjecture import engine
        if hasattr(engine, "MAX_SHRINKING_SECONDS"):
            monkeypatch.setattr(engine, "MAX_SHRINKING_SECONDS", SHRINK_SECONDS)
    except ImportError:
        pass

    Machine.store = store
    Machine.model_root = tmp_path / "model"
    run_state_machine_as_test(Machine, settings=settings(
        max_examples=MAX_EXAMPLES, stateful_step_count=STEPS, deadline=None,
        # CI replays the same examples every run; a long run (STOREFS_RANDOM_EXAMPLES) explores
        derandomize="STOREFS_RANDOM_EXAMPLES" not in os.environ,
        database=None, print_blob=True, suppress_health_check=[HealthCheck.too_slow]))


def test_fsx_short(store):
    (store.mnt / ART).mkdir(parents=True)
    target = store.mnt / ART / "fsx.bin"
    res = subprocess.run([sys.executable, "-m", FSX, "--ops", "3000", "--seed", "1", str(target)],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, f"fsx failed ({res.returncode}):\n{res.stdout}\n{res.stderr}"
    last = res.stdout.strip().splitlines()[-1]
    assert last.startswith("sha256 "), res.stdout
    digest = last.split()[1]
    print(res.stdout)
    assert file_sha256(target) == digest
    store.flush()
    store.remount(empty_cache=True)
    assert file_sha256(store.mnt / ART / "fsx.bin") == digest
