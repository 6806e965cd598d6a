"""The pieces of the operator commands that need no mount: parsing, the cleanup plan, progress, state, walks."""

from __future__ import annotations

import io
import os
import re
import stat
import time
from datetime import datetime

import pytest

from storefs.admin.cleanup import plan
from storefs.admin.common import Artifact, normalize_prefix, parse_age, parse_when
from storefs.admin.migrate import MigrationState
from storefs.admin.progress import Progress, format_duration, format_size
from storefs.errors import UsageError
from storefs.keys import parents
from storefs.providers import ObjectInfo, ObjectMeta
from storefs.providers.local import TMP_PREFIX, LocalProvider


@pytest.mark.parametrize("text, seconds", [("30d", 30 * 86400), ("12h", 43200), ("90m", 5400), ("45s", 45),
                                           ("2w", 14 * 86400), ("1.5h", 5400), (" 7d ", 7 * 86400)])
def test_ages(text, seconds):
    assert parse_age(text) == seconds


@pytest.mark.parametrize("text", ["30", "d", "30x", "-1d", "", "1 day"])
def test_bad_ages_name_the_value(text):
    with pytest.raises(UsageError, match=re.escape(repr(text))) as e:
        parse_age(text)
    assert e.value.exit_code == 2


def test_dates_local_time_and_until_a_whole_day():
    assert parse_when("2024-12-30", "--since") == datetime(2024, 12, 30).timestamp()
    assert parse_when("2024-12-30", "--until", end_of_day=True) == datetime(2024, 12, 31).timestamp()
    assert parse_when("2024-12-30T14:30", "--until", end_of_day=True) == datetime(2024, 12, 30, 14, 30).timestamp()
    assert parse_when("2024-12-30T00:00:00+00:00", "--since") == 1735516800
    with pytest.raises(UsageError, match="--since: not an ISO date.*'30/12/2024'"):
        parse_when("30/12/2024", "--since")


def test_prefixes():
    assert normalize_prefix("/t1/image/") == "t1/image"
    assert normalize_prefix("") == ""
    for bad in ("t1//image", "t1/../t2", "./t1"):
        with pytest.raises(UsageError):
            normalize_prefix(bad)


def _art(key: str, mtime: float) -> Artifact:
    a = Artifact(key)
    a.files[key + "/x.png"] = ("local", ObjectInfo(key=key + "/x.png", size=1, mtime_ns=round(mtime * 1e9)))
    return a


def test_plan_keeps_newest_n_per_board_and_everything_young():
    now = 1_000_000.0
    found = {a.key: a for a in [_art("t/image/b1/a1", now - 100), _art("t/image/b1/a2", now - 200),
                                _art("t/image/b1/a3", now - 300), _art("t/image/b1/a4", now - 5),
                                _art("t/image/b2/z1", now - 400)]}
    doomed, kept = plan(found, cutoff=now - 50, keep_count=1)
    assert [a.key for a in doomed] == ["t/image/b1/a1", "t/image/b1/a2", "t/image/b1/a3"]
    assert kept == 2  # a4 (newest of b1, and young), z1 (newest of b2)
    doomed, kept = plan(found, cutoff=now - 250, keep_count=0)
    assert [a.key for a in doomed] == ["t/image/b1/a3", "t/image/b2/z1"] and kept == 3
    empty = Artifact("t/image/b3/e")
    empty.folder_mtime = now - 1000
    assert [a.key for a in plan({"e": empty}, now, 0)[0]] == ["t/image/b3/e"]


def test_sizes_and_durations():
    assert [format_size(n) for n in (0, 1023, 1024, 1536 * 1024, 5 << 30, 3 << 50)] == \
        ["0 B", "1023 B", "1.0 KiB", "1.5 MiB", "5.0 GiB", "3.0 PiB"]
    assert [format_duration(s) for s in (5, 65, 3725)] == ["5s", "1m05s", "1h02m"]


def test_progress_plain_lines_when_not_a_terminal():
    out = io.StringIO()
    p = Progress("migrate", total_files=4, total_bytes=4096, stream=out, tty=False, interval=0)
    p.add(files=1, nbytes=1024)
    p.set(files_done=4, bytes_done=4096)
    p.close()
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("migrate: 1/4 files, 1.0 KiB/4.0 KiB, ")
    assert lines[-1].startswith("migrate: 4/4 files, 4.0 KiB/4.0 KiB, ") and "/s" in lines[-1]
    assert "\r" not in out.getvalue()


def test_progress_bar_redraws_one_line_on_a_terminal():
    out = io.StringIO()
    p = Progress("copy", total_files=2, total_bytes=2 << 20, stream=out, tty=True, interval=0)
    p.add(files=1, nbytes=1 << 20)
    p.close()
    text = out.getvalue()
    assert text.count("\n") == 1 and text.endswith("\n") and text.startswith("\rcopy: [")
    assert "] 100% 2/2 files" not in text and " 50% 1/2 files, 1.0 MiB/2.0 MiB" in text


def test_progress_draws_at_most_every_interval():
    out = io.StringIO()
    p = Progress("x", stream=out, tty=False, interval=60)
    for _ in range(1000):
        p.add(files=1, nbytes=10)
    assert out.getvalue() == ""
    p.close()
    assert out.getvalue().startswith("x: 1000 files, 9.8 KiB")


def test_state_counts_copies_and_survives_reopening(tmp_path):
    path = str(tmp_path / "state.db")
    st = MigrationState(path)
    src = ObjectInfo(key="a/b", size=3, mtime_ns=1_500_000_000, etag="e1")
    st.copying("a/b", src, "sha")
    st.verified("a/b")
    st.copying("a/b", src, "sha")  # a second send
    st.close()
    row = MigrationState(path).get("a/b")
    assert (row.size, row.etag, row.mtime, row.sha256, row.state, row.copies) == (3, "e1", 1.5, "sha", "copying", 2)


def test_parents():
    assert parents("a/b/c") == ["a/", "a/b/"]
    assert parents("a/b/") == ["a/"]
    assert parents("x") == []


def test_local_walk_and_read_stream(tmp_path):
    prov = LocalProvider("local", str(tmp_path / "data"), create=True)
    prov.check()
    src = tmp_path / "src"
    src.write_bytes(b"0123456789" * 1000)
    meta = ObjectMeta(mtime_ns=time.time_ns())
    for key in ("t/image/b/a/x.png", "t/image/b/a/sub/y.png", "t/video/b/v/z.mp4"):
        prov.put_file(key, str(src), meta)
    prov.make_dir("t/image/b/empty/", ObjectMeta(mtime_ns=time.time_ns(), mode=0o40755))
    (tmp_path / "data/t/image/b/a" / (TMP_PREFIX + "junk")).write_bytes(b"half written")
    os.symlink("/etc", tmp_path / "data/t/image/b/link")
    walked = list(prov.walk("t/image/"))
    found = {(i.key, i.is_dir) for i in walked}
    # a planted link is a link object (issue 18: links are kept, as s3fs keeps them), never followed into /etc
    assert found == {("t/image/b/", True), ("t/image/b/a/", True), ("t/image/b/a/x.png", False),
                     ("t/image/b/a/sub/", True), ("t/image/b/a/sub/y.png", False), ("t/image/b/empty/", True),
                     ("t/image/b/link", False)}
    assert stat.S_ISLNK(next(i for i in walked if i.key == "t/image/b/link").mode or 0)
    assert len(list(prov.walk(""))) == 13  # 9 folders, 3 files, 1 link
    chunks = list(prov.read_stream("t/video/b/v/z.mp4", chunk_size=4096))
    assert [len(c) for c in chunks] == [4096, 4096, 1808] and b"".join(chunks) == src.read_bytes()


def test_two_providers_merge_like_the_mount_and_cleanup_removes_every_copy(tmp_path, capsys):
    """A key on both providers counts once (the default provider's copy); cleanup deletes both copies."""
    import json

    import yaml

    from storefs.cli import main

    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"default_provider": "a", "cache": {"dir": str(tmp_path / "cache")}, "providers": {
        "a": {"type": "local", "base_path": str(tmp_path / "a")},
        "b": {"type": "local", "base_path": str(tmp_path / "b")}}}))
    old = time.time() - 10 * 86400
    for root, key, size in (("a", "t/image/b1/x/1.png", 10), ("b", "t/image/b1/x/1.png", 99),
                            ("b", "t/image/b1/y/2.png", 20), ("a", "t/image/b1/z/3.png", 30)):
        p = tmp_path / root / key
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x" * size)
        os.utime(p, (old, old))

    assert main(["stats", "-c", str(cfg), "--json"]) == 0
    st = json.loads(capsys.readouterr().out)
    assert st["total"]["files"] == 3 and st["total"]["bytes"] == 60 and st["total"]["artifacts"] == 3
    assert st["providers"] == {"a": {"files": 2, "bytes": 40}, "b": {"files": 1, "bytes": 20, "shadowed": 1}}
    assert main(["ls", "-c", str(cfg), "t/image", "--json"]) == 0
    rows = {r["artifact"]: r for r in json.loads(capsys.readouterr().out)}
    assert (rows["t/image/b1/x"]["bytes"], rows["t/image/b1/x"]["providers"]) == (10, ["a"])
    assert rows["t/image/b1/y"]["providers"] == ["b"]

    assert main(["cleanup", "-c", str(cfg), "t/image/b1", "--older-than", "1d", "--keep-count", "1"]) == 0
    out = capsys.readouterr().out
    assert out.count("deleted t/image/b1/") == 2
    left = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.glob("[ab]/**/*.png"))
    assert len(left) == 1 and "/x/" not in left[0], left  # both copies of x went, with its folders
    assert not (tmp_path / "a/t/image/b1/x").exists() and not (tmp_path / "b/t/image/b1/x").exists()


# ---- migrate to a local provider: no setuid/setgid from metadata, owners only for root on request ----------

OTHER_UID = 65534


def _migrate_setup(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    (src / "t1/image/b1/a1").mkdir(parents=True)
    (src / "t1/image/b1/empty").mkdir(parents=True)
    dst.mkdir()
    prog = src / "t1/image/b1/a1/tool.png"
    prog.write_bytes(b"#!/bin/sh\necho root\n")
    plain = src / "t1/image/b1/a1/plain.png"
    plain.write_bytes(b"plain")
    os.chmod(plain, 0o640)
    if os.geteuid() == 0:
        os.chown(prog, OTHER_UID, OTHER_UID)
        os.chown(src / "t1/image/b1/empty", OTHER_UID, OTHER_UID)
    os.chmod(prog, 0o6755)  # setuid + setgid, after chown (which clears them)
    os.chmod(src / "t1/image/b1/empty", 0o2775)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"default_provider: src\nproviders:\n  src: {{type: local, base_path: {src}}}\n"
                   f"  dst: {{type: local, base_path: {dst}}}\ncache: {{dir: {tmp_path / 'cache'}}}\n")
    return str(cfg), dst


def _migrate(cfg: str, *extra: str) -> int:
    from storefs.cli import main
    return main(["migrate", "-c", cfg, "--from", "src", "--to", "dst", "-q", *extra])


def test_migrate_to_local_drops_setuid_setgid_and_owners(tmp_path):
    cfg, dst = _migrate_setup(tmp_path)
    assert _migrate(cfg) == 0
    tool = os.stat(dst / "t1/image/b1/a1/tool.png")
    assert stat.S_IMODE(tool.st_mode) == 0o755, oct(tool.st_mode)
    assert (tool.st_uid, tool.st_gid) == (os.geteuid(), os.getegid()), "owners only with --keep-owner"
    assert stat.S_IMODE(os.stat(dst / "t1/image/b1/a1/plain.png").st_mode) == 0o640  # other bits kept
    folder = os.stat(dst / "t1/image/b1/empty")
    assert stat.S_IMODE(folder.st_mode) == 0o775 and folder.st_uid == os.geteuid()


@pytest.mark.skipif(os.geteuid() != 0, reason="only root may give files to other users")
def test_migrate_keep_owner_as_root_applies_owners_never_setuid(tmp_path):
    cfg, dst = _migrate_setup(tmp_path)
    assert _migrate(cfg, "--keep-owner") == 0
    tool = os.stat(dst / "t1/image/b1/a1/tool.png")
    assert (tool.st_uid, tool.st_gid) == (OTHER_UID, OTHER_UID)
    assert stat.S_IMODE(tool.st_mode) == 0o755
    folder = os.stat(dst / "t1/image/b1/empty")
    assert folder.st_uid == OTHER_UID and stat.S_IMODE(folder.st_mode) == 0o775


def test_migrate_keep_owner_is_refused_to_a_non_root_user(tmp_path, monkeypatch, capsys):
    cfg, dst = _migrate_setup(tmp_path)
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert _migrate(cfg, "--keep-owner") == 2
    assert "--keep-owner: only root may give files to other users" in capsys.readouterr().err
    assert not list(dst.iterdir())


def test_migrate_help_documents_the_rules(capsys):
    from storefs.cli import build_parser
    with pytest.raises(SystemExit):
        build_parser().parse_args(["migrate", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "setuid and setgid bits in object metadata are dropped" in out
    assert "--keep-owner" in out and "root only" in out
