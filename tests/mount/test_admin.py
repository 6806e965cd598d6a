"""storefs stats / ls / cleanup / migrate on real stores: written through a real mount, read by the commands.

Each `store` test runs on the local provider and on SeaweedFS (S3). The migration test runs
local -> S3, is killed with SIGKILL half-way, resumes, and must end with every key copied once.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import yaml

from storefs.testing.backends import S3Backend
from storefs.testing.data import payload
from storefs.testing.mount import clean_env, run

DAY = 86400.0


def storefs(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return run([sys.executable, "-m", "storefs", *args], check=check, env=clean_env())


def admin(store, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """An admin command on the config of the running mount."""
    cmd, rest = args[0], args[1:]
    return storefs(cmd, "-c", str(store.config_path), *rest, check=check)


def admin_json(store, *args: str):
    return json.loads(admin(store, *args, "--json").stdout)


def write(store, key: str, data: bytes, mtime: float | None = None) -> None:
    """A file written through the mount (folders made as needed), with an mtime if given."""
    p = store.path(key)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data)
    if mtime is not None:
        os.utime(p, (mtime, mtime))


def wait_listing(path: Path, expected: list[str], timeout: float = 15.0) -> list[str]:
    """The mount's listing of path once it shows expected (the mount notices within its listing TTL)."""
    deadline = time.monotonic() + timeout
    while True:
        names = sorted(os.listdir(path))
        if names == expected or time.monotonic() > deadline:
            return names
        time.sleep(0.2)


# -- stats and ls ---------------------------------------------------------------------------

def test_stats_and_ls_match_what_was_written(store):
    old = time.time() - 400 * DAY
    write(store, "t1/image/b1/a1/x.png", payload("x", 1000))
    write(store, "t1/image/b1/a1/sub/y.jpg", payload("y", 2000))
    write(store, "t1/image/b1/a2/z.png", payload("z", 500), mtime=old)
    write(store, "t1/video/b2/v1/m.mp4", payload("m", 3000))
    store.path("t2/image/b1/empty").mkdir(parents=True)
    store.flush()

    st = admin_json(store, "stats")
    assert st["total"] == {"tenants": 2, "types": 3, "boards": 3, "artifacts": 4, "files": 4, "bytes": 6500}
    assert st["providers"][store.provider] == {"files": 4, "bytes": 6500}
    by_tenant = admin_json(store, "stats", "--by", "tenant")
    assert by_tenant["groups"] == [
        {"tenant": "t1", "types": 2, "boards": 2, "artifacts": 3, "files": 4, "bytes": 6500},
        {"tenant": "t2", "types": 1, "boards": 1, "artifacts": 1, "files": 0, "bytes": 0}]
    by_board = admin_json(store, "stats", "--by", "board", "t1/image")
    assert by_board["groups"] == [{"board": "t1/image/b1", "artifacts": 2, "files": 3, "bytes": 3500}]
    human = admin(store, "stats", "--by", "type").stdout.splitlines()
    assert re.match(r"type\s+boards\s+artifacts\s+files\s+size$", human[0]), human
    assert re.match(r"t1/image\s+1\s+2\s+3\s+3\.4 KiB$", human[1]), human
    assert human[0].index("size") + 4 == len(human[1]), "columns are aligned"

    rows = {r["artifact"]: r for r in admin_json(store, "ls", "t1")}
    assert sorted(rows) == ["t1/image/b1/a1", "t1/image/b1/a2", "t1/video/b2/v1"]
    a1, a2 = rows["t1/image/b1/a1"], rows["t1/image/b1/a2"]
    assert (a1["files"], a1["bytes"], a1["content_types"]) == (2, 3000, ["image/jpeg", "image/png"])
    assert a1["providers"] == [store.provider]
    assert abs(a2["mtime"] - old) < 0.01 and a2["files"] == 1 and a2["bytes"] == 500
    assert rows["t1/video/b2/v1"]["content_types"] == ["video/mp4"]

    since = time.strftime("%Y-%m-%d", time.localtime(time.time() - 30 * DAY))
    names = lambda *a: [r["artifact"] for r in admin_json(store, "ls", *a)]  # noqa: E731
    assert names("t1", "--since", since) == ["t1/image/b1/a1", "t1/video/b2/v1"]
    assert names("t1", "--until", since) == ["t1/image/b1/a2"]
    assert names("t1", "--type", "video") == ["t1/video/b2/v1"]
    assert names("t1", "--type", "image/jpeg") == ["t1/image/b1/a1"]
    assert names("t2/image") == ["t2/image/b1/empty"]
    table = admin(store, "ls", "t1/image/b1").stdout.splitlines()
    assert table[0].split() == ["artifact", "files", "size", "modified", "provider", "content", "type"]
    assert "t1/image/b1/a2" in table[2] and "500 B" in table[2] and store.provider in table[2]
    assert table[-1] == "2 artifacts, 3 files, 3.4 KiB"


@pytest.mark.parametrize("provider_kind", ["local"])  # argument checks do not depend on the provider
def test_bad_arguments_name_the_value_and_touch_nothing(store):
    write(store, "t1/image/b1/a1/x.png", b"x", mtime=time.time() - 100 * DAY)
    store.flush()
    cases = [(("ls", "t9"), 1, "no such prefix: t9"),
             (("ls", "t1", "--since", "last week"), 2, "'last week'"),
             (("ls", "t1", "--type", "pictures"), 2, "'pictures'"),
             (("stats", "--by", "shelf"), 2, "'shelf'"),
             (("cleanup", "t1", "--older-than", "30"), 2, "'30'"),
             (("cleanup", "t1", "--older-than", "1d", "--keep-count", "-1"), 2, "-1"),
             (("cleanup", "t9", "--older-than", "1d"), 1, "no such prefix: t9"),
             (("migrate", "--from", store.provider, "--to", "nowhere"), 2, "'nowhere'"),
             (("migrate", "--from", "nowhere", "--to", store.provider), 2, "'nowhere'")]
    for args, code, text in cases:
        res = admin(store, *args, check=False)
        assert res.returncode == code, (args, res.stdout, res.stderr)
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("storefs: ") and text in lines[0], (args, res.stderr)
    assert store.provider_keys("") == ["t1/image/b1/a1/x.png"]


# -- cleanup --------------------------------------------------------------------------------

def test_cleanup_keeps_the_newest_n_per_board(store):
    store.extra_config["fuse"] = {"dir_cache_ttl": "5s"}  # the mount sees the deletions within it
    store.remount()
    now = time.time()
    ages = {"b1": {"fresh": 0, "d10": 10, "d20": 20, "d30": 30, "d40": 40, "d50": 50},
            "b2": {"d90": 90, "d100": 100}}
    for board, arts in ages.items():
        for art, days in arts.items():
            write(store, f"t1/image/{board}/{art}/one.png", payload(art, 300), mtime=now - days * DAY - 60)
            write(store, f"t1/image/{board}/{art}/sub/two.png", payload(art + "2", 200),
                  mtime=now - days * DAY - 120)
    write(store, "t2/image/b1/d500/x.png", b"other tenant", mtime=now - 500 * DAY)
    store.flush()
    before = store.provider_keys("")

    dry = admin(store, "cleanup", "t1", "--older-than", "15d", "--keep-count", "2", "--dry-run").stdout
    doomed = ["t1/image/b1/d20", "t1/image/b1/d30", "t1/image/b1/d40", "t1/image/b1/d50"]
    assert re.findall(r"^would delete (\S+) \(2 files, 500 B", dry, re.M) == doomed, dry
    assert "cleanup: would delete 4 artifacts (8 files, 2.0 KiB); kept 4; skipped 0" in dry
    assert store.provider_keys("") == before, "--dry-run deleted something"

    out = admin(store, "cleanup", "t1", "--older-than", "15d", "--keep-count", "2").stdout
    assert re.findall(r"^deleted (\S+) \(2 files", out, re.M) == doomed, out
    assert store.provider_keys("") == sorted(k for k in before if not any(k.startswith(d + "/") for d in doomed))
    for d in doomed:
        assert not store.provider_exists(d), f"{d} left behind on the provider"
    assert wait_listing(store.path("t1/image/b1"), ["d10", "fresh"]) == ["d10", "fresh"]
    assert sorted(os.listdir(store.path("t1/image/b2"))) == ["d100", "d90"]

    again = admin(store, "cleanup", "t1/image/b2", "--older-than", "1d", "--keep-count", "1").stdout
    assert re.findall(r"^deleted (\S+)", again, re.M) == ["t1/image/b2/d100"]
    assert store.provider_keys("t2") == ["t2/image/b1/d500/x.png"], "another tenant was touched"


@pytest.mark.storefs_config(writeback_delay="120s")
def test_cleanup_skips_an_artifact_with_pending_changes(store):
    old = time.time() - 60 * DAY
    for art in ("a1", "a2", "a3"):
        write(store, f"t1/image/b1/{art}/x.png", payload(art, 100), mtime=old)
    store.flush()
    # a change the mount has not uploaded yet (its writeback delay is two minutes)
    write(store, "t1/image/b1/a2/late.png", b"not uploaded yet", mtime=old)
    assert store.status()["pending"] >= 1

    res = admin(store, "cleanup", "t1", "--older-than", "30d")
    assert f"skipped t1/image/b1/a2: pending changes in the mount at {os.path.realpath(store.mnt)}" in res.stdout
    assert re.findall(r"^deleted (\S+)", res.stdout, re.M) == ["t1/image/b1/a1", "t1/image/b1/a3"]
    assert "skipped 1" in res.stdout
    store.flush()
    assert store.provider_keys("t1") == ["t1/image/b1/a2/late.png", "t1/image/b1/a2/x.png"]
    assert store.path("t1/image/b1/a2/late.png").read_bytes() == b"not uploaded yet"


# -- migrate --------------------------------------------------------------------------------

N_KEYS = 240


def _migrate_config(tmp_path: Path, s3: S3Backend) -> Path:
    cfg = {"default_provider": "local",
           "providers": {"local": {"type": "local", "base_path": str(tmp_path / "data")}, "s3": s3.provider_config()},
           "cache": {"dir": str(tmp_path / "cache")}}
    path = tmp_path / "storefs.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _make_source(root: Path) -> dict[str, dict]:
    """N_KEYS files under the local provider's folder, each with its own size, mode and mtime."""
    expected = {}
    for i in range(N_KEYS):
        key = f"t{i % 2}/image/b{i % 3}/a{i % 20}/f{i}.png"
        data = payload(key, 1000 + (i * 7919) % 60000)
        p = root / key
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        mode = (0o644, 0o600, 0o640)[i % 3]
        os.chmod(p, mode)
        mtime = 1_700_000_000 + i * 1000 + 0.25
        os.utime(p, (mtime, mtime))
        expected[key] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data), "mode": mode, "mtime": mtime}
    (root / "t0/image/b9/empty").mkdir(parents=True)
    return expected


def _summary(text: str) -> dict[str, int]:
    m = re.search(r"(\d+) copied, (\d+) skipped \(verified before\), (\d+) verified without copying, (\d+) failed",
                  text)
    assert m, text
    return dict(zip(("copied", "skipped", "resumed", "failed"), map(int, m.groups()), strict=True))


def _rows(state: Path) -> dict[str, tuple[str, int]]:
    db = sqlite3.connect(f"file:{state}?mode=ro", uri=True, timeout=10)
    try:
        return {k: (s, c) for k, s, c in db.execute("SELECT key, state, copies FROM keys")}
    finally:
        db.close()


def test_migrate_local_to_s3_survives_kill9_and_copies_each_key_once(seaweed, tmp_path):
    s3 = S3Backend(seaweed, f"mig-{uuid.uuid4().hex[:16]}")
    config = _migrate_config(tmp_path, s3)
    expected = _make_source(tmp_path / "data")
    state = tmp_path / "migrate-state.db"
    cmd = [sys.executable, "-m", "storefs", "migrate", "-c", str(config), "--from", "local", "--to", "s3",
           "--state", str(state), "--jobs", "2"]

    proc = subprocess.Popen(cmd, env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    verified = 0
    while time.monotonic() < deadline and proc.poll() is None:
        if state.exists():
            try:
                verified = sum(1 for s, _ in _rows(state).values() if s == "verified")
            except sqlite3.OperationalError:
                verified = 0  # the file exists before its table does
            if verified >= 30:
                break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL, "the first run finished before it could be interrupted"
    at_kill = _rows(state)
    done_before = sum(1 for s, _ in at_kill.values() if s == "verified")
    assert 30 <= done_before < N_KEYS

    res = run(cmd, env=clean_env())
    counts = _summary(res.stdout)
    assert counts["failed"] == 0
    assert counts["skipped"] == done_before, (counts, done_before)
    assert counts["copied"] + counts["resumed"] == N_KEYS - done_before
    assert counts["resumed"] <= 2, "at most the in-flight keys of two workers were left half-done"
    rows = _rows(state)
    assert sorted(rows) == sorted(expected) and {s for s, _ in rows.values()} == {"verified"}
    twice = [k for k, (_, copies) in rows.items() if copies != 1]
    # a key is sent a second time only if the kill landed while it was being sent (and it did not arrive)
    assert all(at_kill.get(k, ("", 0))[0] == "copying" for k in twice) and len(twice) <= 2, twice

    for key, exp in expected.items():
        body = s3.read(key)
        assert body is not None and hashlib.sha256(body).hexdigest() == exp["sha256"], key
        meta = s3.meta(key)
        assert meta["size"] == exp["size"] and meta["mode"] == exp["mode"], (key, meta)
        assert abs(meta["mtime"] - exp["mtime"]) < 0.001 and meta["content_type"] == "image/png", (key, meta)
    assert s3.exists("t0/image/b9/empty"), "an empty folder is migrated as a folder marker"

    final = run(cmd + ["--delete-source"], env=clean_env())
    counts = _summary(final.stdout)
    assert counts == {"copied": 0, "skipped": N_KEYS, "resumed": 0, "failed": 0}
    assert f"{N_KEYS} source files deleted" in final.stdout
    left = [str(p.relative_to(tmp_path / "data")) for p in (tmp_path / "data").rglob("*")]
    assert left == [], left
    assert s3.keys("") == sorted(expected)

    st = json.loads(storefs("stats", "-c", str(config), "--json").stdout)
    assert st["total"]["files"] == N_KEYS and st["providers"]["s3"]["files"] == N_KEYS
    assert st["providers"]["local"]["files"] == 0
