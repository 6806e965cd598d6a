"""Two mounts of one bucket, as two hosts have them (issue 20, item 2): no closed version is lost.

The tests mount one SeaweedFS bucket twice (host1/ and host2/, each with its own cache folder;
the tests that order the hosts' uploads share one such pair, each in its own folder) and change
files through both with the programs users run (`cp`, `echo >`, `mv`, `rm`, Python's
open/write). Every version a mount closed must end either at its key or in a conflict copy
(`NAME.conflict-HOST-UTCTIME.EXT`), byte for byte, and nothing else may appear: checked in the
bucket, through both mounts once their views caught up, and through a third mount started with
an empty cache. A version that a mount read and then replaced or deleted on purpose may go.

The last two tests measure how soon a change made by one mount shows in the other: within
write-back delay + upload + `fuse.dir_cache_ttl` (+ the kernel's attribute and entry timeouts),
and at once after `storefs refresh PATH`.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import uuid
from pathlib import Path

import pytest
from conftest import require_fuse

from storefs.core.state import DELETE_MEMORY_SLACK
from storefs.testing.backends import S3Backend
from storefs.testing.data import ART, payload
from storefs.testing.mount import run
from storefs.testing.pair import (
    MountPair,
    TcpGate,
    conflict_copies,
    describe,
    files_below,
    gated,
    lost_or_foreign,
    running,
)

pytestmark = pytest.mark.timeout(300)

# each mount sees the other's uploads within a second: short listing TTL and kernel caches
QUICK_VIEWS = {"dir_cache_ttl": "0.5s", "attr_timeout": "0.2s", "entry_timeout": "0.2s", "negative_timeout": "0.2s"}
HELD = "30s"  # a write-back delay that holds uploads until `storefs flush`: the test orders them
SIZE = 64 * 1024
POLL = 0.05  # seconds between two looks while waiting for a change to show
REQUEST_SLACK = 0.5  # seconds for the other mount's own listing request, on a loaded machine


def new_bucket(seaweed) -> S3Backend:
    """A fresh bucket on the session's SeaweedFS server (the two mounts' shared provider)."""
    require_fuse()
    return S3Backend(seaweed, f"t-{uuid.uuid4().hex[:20]}")


@pytest.fixture
def bucket(seaweed):
    b = new_bucket(seaweed)
    try:
        yield b
    finally:
        b.close()


@pytest.fixture(scope="module")
def held_pair(seaweed, tmp_path_factory):
    """Two mounts whose uploads wait for `storefs flush`, shared by the tests that order the
    changes of both hosts (each in an artifact folder of its own: see `art`)."""
    b = new_bucket(seaweed)
    try:
        with running(MountPair(tmp_path_factory.mktemp("held"), b, fuse=QUICK_VIEWS, writeback_delay=HELD)) as pair:
            yield pair
    finally:
        b.close()


@pytest.fixture
def held(held_pair, request):
    """held_pair for one test, with both mounts' log tails printed when the test failed."""
    yield held_pair
    rep = getattr(request.node, "rep_call", None)
    if rep is None or rep.failed:
        print(held_pair.log_tails())


@pytest.fixture
def art() -> str:
    """A new artifact folder for this test."""
    return f"t1/image/b1/{uuid.uuid4().hex[:12]}"


def sh(script: str, *args: str | os.PathLike) -> subprocess.CompletedProcess:
    """A bash script with positional arguments, as a user types it (`echo x > "$1"`)."""
    return run(["bash", "-c", script, "bash", *map(str, args)])


def write_source(folder: Path, name: str, data: bytes) -> Path:
    """A file outside any mount, for `cp` to copy in."""
    folder.mkdir(exist_ok=True)
    (folder / name).write_bytes(data)
    return folder / name


def assert_nothing_lost(pair: MountPair, versions: dict[tuple[str, bytes], bool], rel: str = ART, *,
                        deleted: bool = False) -> None:
    """The invariant, in the bucket, through both mounts once their views caught up (later when a
    mount deleted something: see caught_up), and through a fresh mount with an empty cache."""
    views = {"bucket": pair.provider_files(rel)}
    time.sleep(caught_up(pair) if deleted else pair.view_lag())
    for m in pair.both:
        views[m.root.name] = files_below(m.mnt / rel)
    views["fresh mount"] = pair.fresh_files(rel)
    problems = [f"{view}: {line}" for view, files in views.items() for line in lost_or_foreign(files, versions)]
    assert not problems, "\n".join(problems)


def caught_up(pair: MountPair) -> float:
    """Seconds after which both mounts show what the bucket holds: their view lag, and the time a
    mount's own delete keeps hiding the key from its listings (a listing fetched before the
    delete landed may still name it)."""
    return pair.view_lag() + DELETE_MEMORY_SLACK


def assert_conflicts_reported(pair: MountPair, rel: str, name: str, count: int) -> None:
    """count conflict copies of rel/name are in the bucket, and `storefs status --json` of the mounts
    lists each with both keys (under `conflicts`: the name the conditional-upload change gives it)."""
    copies = [f"{rel}/{c}" for c in conflict_copies(pair.provider_files(rel), name)]
    assert len(copies) == count, f"conflict copies of {name} in the bucket: {copies}"
    reported = json.dumps([m.status().get("conflicts") for m in pair.both])
    for copy in copies:
        assert f"{rel}/{name}" in reported and copy in reported, f"{copy} not in storefs status: {reported}"


def read_by_both(pair: MountPair, tmp_path: Path, rel: str, data: bytes) -> None:
    """host1 `cp`s a file in and uploads it; then both hosts read it (each has seen that version)."""
    run(["cp", str(write_source(tmp_path / "src", os.path.basename(rel), data)), str(pair.a.mnt / rel)])
    pair.a.flush()
    time.sleep(pair.view_lag())
    assert [(m.mnt / rel).read_bytes() == data for m in pair.both] == [True, True]


def mkdir_both(pair: MountPair, rel: str = ART) -> None:
    """`mkdir -p` of rel on both mounts, uploaded."""
    for m in pair.both:
        run(["mkdir", "-p", str(m.mnt / rel)])
    pair.flush_both()


def test_the_check_finds_lost_replaced_and_foreign_versions():
    """lost_or_foreign on folders made up by hand (no mount): what it accepts and what it reports."""
    versions = {("a.png", b"old"): False, ("a.png", b"mine"): True, ("a.png", b"theirs"): True}
    copy, copy2 = "a.conflict-web1-20261202T120501Z.png", "a.conflict-web2-20261202T120502Z.png"
    assert lost_or_foreign({"a.png": b"theirs", copy: b"mine"}, versions) == []
    assert lost_or_foreign({"a.png": b"mine", copy: b"theirs", copy2: b"old"}, versions) == []
    found = lost_or_foreign({"a.png": b"old", copy: b"mine", copy2: b"zzz", "b.png": b"x"}, versions)
    assert [line.split(":")[0] for line in found] == [
        "missing", f"conflict copy {copy2} holds bytes no mount wrote at ['a.png']",
        "a.png holds a version replaced or deleted on purpose", "unexpected file b.png"], found
    found = lost_or_foreign({"a.png": b"zzz", copy: b"mine", copy2: b"theirs"}, versions)
    assert found == ["a.png holds bytes no mount wrote there: b'zzz'"], found


def test_the_gate_cuts_and_restores_the_way_to_a_server():
    """TcpGate relays to its target while open, refuses while shut, and opens again on its port."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        gate = TcpGate("127.0.0.1", server.getsockname()[1]).open()
        try:
            for _round in range(2):
                with socket.create_connection(("127.0.0.1", gate.port), timeout=5) as c:
                    peer, _addr = server.accept()
                    with peer:
                        c.sendall(b"ping")
                        assert peer.recv(4) == b"ping"
                        peer.sendall(b"pong")
                        assert c.recv(4) == b"pong"
                        gate.shut()
                        assert c.recv(4) == b"", "an open connection survived the shut"
                with pytest.raises(ConnectionRefusedError):
                    socket.create_connection(("127.0.0.1", gate.port), timeout=5)
                gate.open()
        finally:
            if gate.is_open:
                gate.shut()


def test_both_write_the_same_new_key_at_once(held, art, tmp_path):
    """Both hosts `cp` a different file to the same new name at the same moment."""
    va, vb = payload("same/a", SIZE), payload("same/b", SIZE + 7)
    mkdir_both(held, art)
    sources = [write_source(tmp_path / "src", n, v) for n, v in (("a.png", va), ("b.png", vb))]
    procs = [subprocess.Popen(["cp", str(src), str(m.mnt / art / "same.png")])
             for src, m in zip(sources, held.both, strict=True)]
    assert [p.wait(60) for p in procs] == [0, 0]
    held.flush_both()
    assert_nothing_lost(held, {("same.png", va): True, ("same.png", vb): True}, art)
    assert_conflicts_reported(held, art, "same.png", 1)


def test_both_edit_a_file_both_read_earlier(held, art, tmp_path):
    """Both hosts read doc.png, then each saves its own edit (Python on one, `echo >` on the other)."""
    v0, va = payload("edit/0", SIZE), payload("edit/a", SIZE + 1)
    vb = b"the edit of host2\n"
    mkdir_both(held, art)
    read_by_both(held, tmp_path, f"{art}/doc.png", v0)
    with open(held.a.mnt / art / "doc.png", "wb") as f:
        f.write(va)
    sh('echo "the edit of host2" > "$1"', held.b.mnt / art / "doc.png")
    held.flush_both()
    assert_nothing_lost(held, {("doc.png", v0): False, ("doc.png", va): True, ("doc.png", vb): True}, art)


@pytest.mark.parametrize("first", ["write", "delete"], ids=["write-lands-first", "delete-lands-first"])
def test_one_deletes_while_the_other_writes(held, art, tmp_path, first):
    """host1 `rm`s f.png while host2 overwrites it (`echo >`); either change may reach the bucket first."""
    v0, vb = payload("del/0", SIZE), b"host2 keeps writing\n"
    mkdir_both(held, art)
    read_by_both(held, tmp_path, f"{art}/f.png", v0)
    run(["rm", str(held.a.mnt / art / "f.png")])
    sh('echo "host2 keeps writing" > "$1"', held.b.mnt / art / "f.png")
    for m in [held.b, held.a] if first == "write" else [held.a, held.b]:
        m.flush()
    assert_nothing_lost(held, {("f.png", v0): False, ("f.png", vb): True}, art, deleted=True)


@pytest.mark.parametrize("first", ["writes", "rename"], ids=["writes-land-first", "rename-lands-first"])
def test_one_renames_a_folder_while_the_other_writes_into_it(held, art, tmp_path, first):
    """host1 `mv`s sub/ to moved/ while host2 edits sub/x.png and `cp`s a new file into sub/."""
    v0, vx, vnew = payload("mv/0", SIZE), payload("mv/x", SIZE + 3), payload("mv/new", 5000)
    mkdir_both(held, f"{art}/sub")
    read_by_both(held, tmp_path, f"{art}/sub/x.png", v0)
    with open(held.b.mnt / art / "sub/x.png", "wb") as f:
        f.write(vx)
    run(["cp", str(write_source(tmp_path / "src", "new.png", vnew)), str(held.b.mnt / art / "sub/new.png")])
    run(["mv", str(held.a.mnt / art / "sub"), str(held.a.mnt / art / "moved")])
    for m in [held.b, held.a] if first == "writes" else [held.a, held.b]:
        m.flush()
    assert_nothing_lost(held, {("sub/x.png", v0): False, ("moved/x.png", v0): True,
                               ("sub/x.png", vx): True, ("sub/new.png", vnew): True}, art, deleted=True)


def test_noclobber_during_an_outage_never_replaces_the_bucket_copy(bucket, tmp_path):
    """host2 loses the server; `set -o noclobber; echo x > keep.png`, where keep.png is in the bucket
    (written by host1) but not in host2's cache, must not replace it once the server is back."""
    vk = payload("keep", SIZE)
    with gated(bucket) as gated_bucket, \
            running(MountPair(tmp_path, bucket, backend_b=gated_bucket, fuse=QUICK_VIEWS,
                              retry_max_delay="1s")) as pair:
        mkdir_both(pair)
        run(["cp", str(write_source(tmp_path / "src", "keep.png", vk)), str(pair.a.mnt / ART / "keep.png")])
        pair.a.flush()
        assert bucket.read(f"{ART}/keep.png") == vk
        gated_bucket.gate.shut()
        time.sleep(pair.view_lag())  # host2's listing of the folder has expired: it has to ask
        res = subprocess.run(["bash", "-c", 'set -o noclobber; echo x > "$1"', "bash",
                              str(pair.b.mnt / ART / "keep.png")], capture_output=True, text=True, timeout=120)
        print(f"noclobber echo while host2 is cut off: exit {res.returncode} {res.stderr.strip()}")
        gated_bucket.gate.open()
        pair.b.flush()
        assert bucket.read(f"{ART}/keep.png") == vk, "host2's upload replaced keep.png in the bucket"
        versions = {("keep.png", vk): True}
        if res.returncode == 0:  # the write was accepted: its bytes are a closed version to keep
            versions[("keep.png", b"x\n")] = True
        assert_nothing_lost(pair, versions)
        assert_conflicts_reported(pair, ART, "keep.png", len(versions) - 1)


def wait_until(what: str, get, want: bytes | None, deadline: float) -> float:
    """The monotonic time at which get() first gave want; fails with what it gave once deadline passed."""
    while True:
        got = get()
        if got == want:
            return time.monotonic()
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: {describe(got)} instead of {describe(want)} at the deadline")
        time.sleep(POLL)


def shown(folder: Path, name: str) -> bytes | None:
    """What a user of the mount sees of folder/name: its bytes when `ls` lists it, else None."""
    if name not in os.listdir(folder):
        return None
    try:
        return (folder / name).read_bytes()
    except FileNotFoundError:
        return None


def test_a_change_shows_in_the_other_mount_within_the_bound(bucket, tmp_path):
    """A file made, changed, deleted and made again on host1 shows on host2 (listed, with its bytes)
    within write-back delay + upload + dir_cache_ttl + the kernel's timeouts, the upload measured
    in the bucket; also after host2 itself had deleted it."""
    with running(MountPair(tmp_path, bucket, fuse=QUICK_VIEWS)) as pair:
        mkdir_both(pair)
        assert os.listdir(pair.b.mnt / ART) == []
        delay = float(pair.a.cache_options["writeback_delay"].rstrip("s"))
        key, name = f"{ART}/seen.png", "seen.png"
        here, there = pair.a.mnt / ART, pair.b.mnt / ART
        steps = [("new", b"first version\n"), ("changed", b"the second version, longer\n"), ("deleted", None),
                 ("made again", b"third\n"), ("deleted on host2", None), ("made again after that", b"fourth\n")]
        for step, data in steps:
            if step == "deleted on host2":
                run(["rm", str(there / name)])
                pair.b.flush()
                assert bucket.read(key) is None
                time.sleep(caught_up(pair))
                continue
            if data is None:
                run(["rm", str(here / name)])
            else:
                sh('printf "%s" "$1" > "$2"', data.decode(), here / name)
            closed = time.monotonic()
            # the upload's own time is measured; the rest of the bound is the configuration
            uploaded = wait_until(f"{step}: the bucket", lambda: bucket.read(key), data, closed + 60)
            bound = delay + (uploaded - closed - delay) + pair.view_lag() + REQUEST_SLACK + 2 * POLL
            seen = wait_until(f"{step}: host2 within {bound:.2f}s", lambda: shown(there, name), data,
                              closed + bound)
            print(f"{step}: in the bucket after {uploaded - closed:.2f}s, on host2 after "
                  f"{seen - closed:.2f}s (bound {bound:.2f}s)")


def test_refresh_shows_the_other_mounts_change_at_once(bucket, tmp_path):
    """With a long dir_cache_ttl, `storefs refresh PATH` on host2 shows host1's uploaded changes at once."""
    with running(MountPair(tmp_path, bucket, fuse={"dir_cache_ttl": "300s"})) as pair:
        mkdir_both(pair)
        there = pair.b.mnt / ART
        assert os.listdir(there) == []
        for step, data in (("new", b"first version\n"), ("changed", b"the second version, longer\n")):
            (pair.a.mnt / ART / "fresh.png").write_bytes(data)
            pair.a.flush()
            res = pair.b.storefs("refresh", str(there), check=False)
            if res.returncode != 0 and "invalid choice" in res.stderr:
                pytest.skip("`storefs refresh` does not exist on this branch")
            assert res.returncode == 0, f"storefs refresh failed: {res.stderr}"
            assert "fresh.png" in os.listdir(there), f"{step}: not listed on host2 right after refresh"
            assert (there / "fresh.png").read_bytes() == data, f"{step}: other bytes on host2 after refresh"


def test_on_moto_too_a_race_and_a_stale_edit_keep_every_version(moto_server, tmp_path):
    """The same two races on moto's S3 server (the other server the issue names): both write one
    new name, then both edit a file both read; every version at its key or in a conflict copy."""
    require_fuse()
    b = S3Backend(moto_server, f"t-{uuid.uuid4().hex[:20]}")
    art = f"t1/image/b1/{uuid.uuid4().hex[:12]}"
    try:
        with running(MountPair(tmp_path / "pair", b, fuse=QUICK_VIEWS, writeback_delay=HELD)) as pair:
            va, vb = payload("moto/a", SIZE), payload("moto/b", SIZE + 3)
            mkdir_both(pair, art)
            for data, m in ((va, pair.a), (vb, pair.b)):
                (m.mnt / art / "same.png").write_bytes(data)
            pair.flush_both()
            assert_conflicts_reported(pair, art, "same.png", 1)
            v0, e1, e2 = payload("moto/0", SIZE), payload("moto/e1", SIZE + 1), b"host2's edit\n"
            read_by_both(pair, tmp_path, f"{art}/doc.png", v0)
            (pair.a.mnt / art / "doc.png").write_bytes(e1)
            sh('echo "host2'"'"'s edit" > "$1"', pair.b.mnt / art / "doc.png")
            pair.flush_both()
            assert_nothing_lost(pair, {("same.png", va): True, ("same.png", vb): True, ("doc.png", v0): False,
                                       ("doc.png", e1): True, ("doc.png", e2): True}, art)
    finally:
        b.close()
