"""The command line against a real mount: status and flush find the mount from any path in it."""

from __future__ import annotations

import json
import sys

import pytest

from storefs.testing.data import ART
from storefs.testing.mount import clean_env, run

pytestmark = pytest.mark.timeout(180)


# the path lookup is the command line's, the same for every provider: one mount is enough
@pytest.mark.parametrize("provider_kind", ["local"], indirect=True)
@pytest.mark.storefs_config(writeback_delay="30s")  # the file is still pending when flush is asked
def test_status_and_flush_take_any_path_in_the_mount(store):
    art = store.mnt / ART
    art.mkdir(parents=True)
    (art / "x.png").write_bytes(b"png")
    for path in (store.mnt, art, art / "x.png"):
        st = json.loads(store.storefs("status", "--json", str(path)).stdout)
        assert st["pid"] == store.pid and st["mountpoint"] == str(store.mnt), path
    assert store.provider_read(f"{ART}/x.png") is None
    # relative, from a folder inside the mount, as `url` and `refresh` take theirs
    text = run([sys.executable, "-m", "storefs", "status", "x.png"], cwd=art, env=clean_env()).stdout
    assert text.startswith(f"mountpoint:   {store.mnt} (daemon pid {store.pid})"), text
    res = run([sys.executable, "-m", "storefs", "flush", "."], cwd=art, env=clean_env())
    assert "everything is in the provider" in res.stderr, res.stderr
    assert store.provider_read(f"{ART}/x.png") == b"png"
