"""Once close() has returned, a kill -9 of the daemon loses nothing.

200 files are written and closed, then the daemon is killed before its (30 s) write-back
delay has passed, so (almost) nothing is uploaded yet. The next mount on the same cache finds
the dirty entries in its journal and uploads them all.
"""

from __future__ import annotations

import os

import pytest

from storefs.testing.data import ART, payload

pytestmark = pytest.mark.timeout(300)

N_FILES = 200
SIZES = [0, 1, 100, 4096, 5000, 65536, 70001, 250000]


def expected_files() -> dict[str, bytes]:
    files = {}
    for i in range(N_FILES):
        size = SIZES[i % len(SIZES)]
        sub = f"d{i % 4}/" if i % 3 == 0 else ""
        name = f"{ART}/{sub}f{i:03d}.bin"
        data = b"" if size == 0 and i == 0 else (f"{i:04d}".encode() + payload(i, size))[: max(size, 4)]
        files[name] = data
    return files


@pytest.mark.storefs_config(writeback_delay="30s")
def test_kill9_after_close_loses_nothing(store):
    files = expected_files()
    assert len({v for v in files.values()}) == N_FILES, "contents must be distinct"
    for key, data in files.items():
        path = store.mnt / key
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        finally:
            os.close(fd)

    before = store.provider_keys(ART)
    assert len(before) <= 10, f"{len(before)} files were uploaded before the write-back delay of 30s"
    st = store.status()
    assert st["dirty_files"] >= N_FILES - len(before), st

    store.kill9()
    assert not store.mounted

    store.start(writeback_delay="0.2s")
    store.flush()
    keys = store.provider_keys(ART)
    missing = sorted(set(files) - set(keys))
    assert not missing, f"{len(missing)} files lost after kill -9, e.g. {missing[:5]}"
    assert sorted(keys) == sorted(files)
    wrong = [k for k, data in files.items() if store.provider_read(k) != data]
    assert not wrong, f"{len(wrong)} files with wrong bytes after kill -9, e.g. {wrong[:5]}"
    st = store.status()
    assert st["dirty_files"] == 0 and st["dirty_bytes"] == 0, st

    # and the mount shows them too, with their mode
    for key in list(files)[::17]:
        assert (store.mnt / key).read_bytes() == files[key]
        assert os.stat(store.mnt / key).st_mode & 0o777 == 0o640


@pytest.mark.storefs_config(writeback_delay="30s")
def test_kill9_keeps_renames_and_deletes(store):
    """Journal order survives a crash: renamed and deleted dirty files end up as they were left."""
    base = store.mnt / ART
    base.mkdir(parents=True)
    for i in range(10):
        (base / f"tmp{i}").write_bytes(payload(("r", i), 1000 + i))
    for i in range(10):
        if i % 2:
            os.rename(base / f"tmp{i}", base / f"final{i}")
        else:
            os.unlink(base / f"tmp{i}")
    store.kill9()
    store.start(writeback_delay="0.2s")
    store.flush()
    assert store.provider_keys(ART) == sorted(f"{ART}/final{i}" for i in range(1, 10, 2))
    for i in range(1, 10, 2):
        assert store.provider_read(f"{ART}/final{i}") == payload(("r", i), 1000 + i)
