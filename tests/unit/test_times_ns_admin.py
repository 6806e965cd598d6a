"""migrate carries times to the nanosecond (issue 21: S3 metadata after migrate showed `.123457000`),
and a second run finds every key already verified."""

from __future__ import annotations

import os
import uuid

import pytest
import yaml

from storefs.cli import main
from storefs.providers.s3.codec import parse_mtime
from storefs.testing.backends import S3Backend

TOUCHED_NS = 1683263105_123456789  # touch -d '2023-05-05T05:05:05.123456789' (UTC)
KEYS = ("t1/image/b1/a1/x.png", "t1/image/b1/a1/y.png")


def _source(tmp_path):
    """A local source holding KEYS, each with its own nanosecond mtime and atime."""
    src = tmp_path / "src"
    want = {}
    for i, key in enumerate(KEYS):
        p = src / key
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"payload %d" % i)
        times = (TOUCHED_NS + 7 + i, TOUCHED_NS + i)  # (atime, mtime), as os.utime takes them
        os.utime(p, ns=times)
        want[key] = times[1]
    return src, want


def _migrate(tmp_path, dst_config: dict, src) -> str:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"default_provider": "src", "cache": {"dir": str(tmp_path / "cache")},
                                   "providers": {"src": {"type": "local", "base_path": str(src)},
                                                 "dst": dst_config}}))
    assert main(["migrate", "-c", str(cfg), "--from", "src", "--to", "dst", "-q"]) == 0
    return str(cfg)


def test_migrate_to_a_local_provider_keeps_every_nanosecond(tmp_path, capsys):
    src, want = _source(tmp_path)
    dst = tmp_path / "dst"
    dst.mkdir()
    cfg = _migrate(tmp_path, {"type": "local", "base_path": str(dst)}, src)
    assert {key: os.lstat(dst / key).st_mtime_ns for key in KEYS} == want
    capsys.readouterr()
    assert main(["migrate", "-c", cfg, "--from", "src", "--to", "dst"]) == 0
    assert "2 skipped" in capsys.readouterr().out  # the state file's mtimes match the source's again


def test_migrate_to_s3_writes_all_nine_digits(tmp_path, request: pytest.FixtureRequest):
    src, want = _source(tmp_path)
    bucket = S3Backend(request.getfixturevalue("seaweed"), f"t-{uuid.uuid4().hex[:20]}")
    _migrate(tmp_path, bucket.provider_config(), src)
    metadata = {key: bucket.head(key)["Metadata"] for key in KEYS}
    assert {key: parse_mtime(md["mtime"]) for key, md in metadata.items()} == want
    assert metadata[KEYS[0]]["mtime"] == "1683263105.123456789"
