"""How programs really save files: temp + rename, rename over, open-then-rename/unlink,
sqlite databases, truncate, sparse writes, append."""

from __future__ import annotations

import os
import sqlite3

import pytest

from storefs.testing.data import ART, create_file, payload, read_all_fd
from storefs.testing.mount import run

pytestmark = pytest.mark.timeout(300)


@pytest.fixture
def art(store):
    (store.mnt / ART).mkdir(parents=True)
    return store.mnt / ART


@pytest.mark.storefs_config(writeback_delay="30s")
def test_temp_then_rename_never_uploads_temp_name(store, art):
    data = payload("doc", 200_000)
    tmp = art / ".doc.txt.swp123"
    create_file(tmp, data)
    os.rename(tmp, art / "doc.txt")
    assert not store.provider_exists(f"{ART}/.doc.txt.swp123")
    assert store.provider_keys(ART) == []  # 30 s write-back delay: nothing uploaded yet
    assert os.listdir(art) == ["doc.txt"]
    store.flush()
    assert store.provider_keys(ART) == [f"{ART}/doc.txt"]
    assert store.provider_read(f"{ART}/doc.txt") == data
    store.remount(empty_cache=True)
    assert (store.mnt / ART / "doc.txt").read_bytes() == data
    assert store.provider_keys(ART) == [f"{ART}/doc.txt"]


def test_rename_over_existing_uploaded_file(store, art):
    v1, v2 = payload("v1", 50_000), payload("v2", 70_000)
    create_file(art / "doc.bin", v1)
    os.chmod(art / "doc.bin", 0o600)
    store.flush()
    assert store.provider_read(f"{ART}/doc.bin") == v1
    # the editor's save: a new file, then rename over the old one
    create_file(art / "doc.bin.tmp", v2)
    os.rename(art / "doc.bin.tmp", art / "doc.bin")
    assert (art / "doc.bin").read_bytes() == v2
    assert os.listdir(art) == ["doc.bin"]
    store.flush()
    assert store.provider_keys(ART) == [f"{ART}/doc.bin"]
    assert store.provider_read(f"{ART}/doc.bin") == v2
    store.remount(empty_cache=True)
    assert (store.mnt / ART / "doc.bin").read_bytes() == v2
    assert os.listdir(store.mnt / ART) == ["doc.bin"]


def test_rename_over_with_mv(store, art):
    create_file(art / "a", b"old")
    store.flush()
    create_file(art / "b", b"new")
    run(["mv", "-f", str(art / "b"), str(art / "a")])
    store.flush()
    assert store.provider_keys(ART) == [f"{ART}/a"]
    assert store.provider_read(f"{ART}/a") == b"new"


@pytest.mark.parametrize("uploaded_first", [False, True], ids=["dirty", "uploaded"])
def test_open_file_survives_rename(store, art, uploaded_first):
    path, moved = art / "f.bin", art / "g.bin"
    create_file(path, b"hello")
    if uploaded_first:
        store.flush()
    fd = os.open(path, os.O_RDWR)
    try:
        os.rename(path, moved)
        assert os.pwrite(fd, b"world", 5) == 5
        assert os.pread(fd, 100, 0) == b"helloworld"
        assert os.fstat(fd).st_size == 10
        assert moved.read_bytes() == b"helloworld"
        os.fsync(fd)
    finally:
        os.close(fd)
    assert not path.exists()
    store.flush()
    assert store.provider_keys(ART) == [f"{ART}/g.bin"]
    assert store.provider_read(f"{ART}/g.bin") == b"helloworld"
    store.remount(empty_cache=True)
    assert (store.mnt / ART / "g.bin").read_bytes() == b"helloworld"


@pytest.mark.parametrize("uploaded_first", [False, True], ids=["dirty", "uploaded"])
def test_open_file_survives_unlink(store, art, uploaded_first):
    path = art / "f.bin"
    create_file(path, b"hello")
    create_file(art / "keep.bin", b"keep")
    if uploaded_first:
        store.flush()
    fd = os.open(path, os.O_RDWR)
    try:
        os.unlink(path)
        assert not path.exists()
        assert "f.bin" not in os.listdir(art)
        assert os.pwrite(fd, b"world" * 1000, 5) == 5000
        data = read_all_fd(fd, 6000)
        assert data == b"hello" + b"world" * 1000
        assert os.fstat(fd).st_size == 5005
        # a new file may take the name while the old one is still open
        create_file(path, b"other")
        assert os.pread(fd, 5, 0) == b"hello"
    finally:
        os.close(fd)
    assert path.read_bytes() == b"other"
    store.flush()
    assert store.provider_keys(ART) == [f"{ART}/f.bin", f"{ART}/keep.bin"]
    assert store.provider_read(f"{ART}/f.bin") == b"other"
    os.unlink(path)
    store.flush()
    assert store.provider_keys(ART) == [f"{ART}/keep.bin"]
    assert sorted(os.listdir(art)) == ["keep.bin"]


def test_sqlite_database(store, art):
    db = art / "index.sqlite"
    con = sqlite3.connect(db)
    try:
        con.execute("create table t (id integer primary key, name text, blob blob)")
        for batch in range(5):
            with con:
                con.executemany("insert into t (name, blob) values (?, ?)",
                                [(f"n{batch}-{i}", payload((batch, i), 300)) for i in range(400)])
        with con:
            con.execute("update t set name = name || '!' where id % 7 = 0")
            con.execute("delete from t where id % 11 = 0")
        con.execute("create index t_name on t(name)")
        con.commit()
        expect = con.execute("select count(*), sum(length(name)), sum(length(blob)) from t").fetchone()
    finally:
        con.close()
    store.flush()
    # the rollback journal was deleted before upload: only the database itself is stored
    assert store.provider_keys(ART) == [f"{ART}/index.sqlite"]

    store.remount(empty_cache=True)
    con = sqlite3.connect(store.mnt / ART / "index.sqlite")
    try:
        assert con.execute("pragma integrity_check").fetchone() == ("ok",)
        got = con.execute("select count(*), sum(length(name)), sum(length(blob)) from t").fetchone()
        assert got == expect
        with con:  # update again after remount, on an uncached file
            con.execute("insert into t (name, blob) values ('after', x'00')")
    finally:
        con.close()
    # the sqlite3 program reads it too
    res = run(["sqlite3", str(store.mnt / ART / "index.sqlite"), "select count(*) from t where name = 'after'"])
    assert res.stdout.strip() == "1"
    store.remount(empty_cache=True)
    con = sqlite3.connect(store.mnt / ART / "index.sqlite")
    try:
        assert con.execute("select count(*) from t").fetchone() == (expect[0] + 1,)
    finally:
        con.close()


def test_truncate(store, art):
    path = art / "t.bin"
    data = payload("trunc", 100_000)
    create_file(path, data)
    run(["truncate", "-s", "1000", str(path)])
    assert path.read_bytes() == data[:1000]
    run(["truncate", "-s", "5000", str(path)])  # extends with zeros
    assert path.read_bytes() == data[:1000] + b"\0" * 4000
    os.truncate(path, 3000)
    with open(path, "r+b") as f:
        f.seek(0, os.SEEK_END)
        f.write(b"tail")
        f.truncate(2000)  # ftruncate on an open descriptor
    expect = data[:1000] + b"\0" * 1000
    assert path.read_bytes() == expect
    create_file(art / "empty.bin", b"something")
    with open(art / "empty.bin", "wb"):  # O_TRUNC to zero
        pass
    store.flush()
    assert store.provider_read(f"{ART}/t.bin") == expect
    assert store.provider_read(f"{ART}/empty.bin") == b""
    store.remount(empty_cache=True)
    assert (store.mnt / ART / "t.bin").read_bytes() == expect
    assert (store.mnt / ART / "empty.bin").read_bytes() == b""
    # truncate an uncached file: only what stays must be kept
    os.truncate(store.mnt / ART / "t.bin", 500)
    store.flush()
    assert store.provider_read(f"{ART}/t.bin") == data[:500]


def test_sparse_write(store, art):
    path = art / "sparse.bin"
    far = 6 * 1024 * 1024 + 123
    with open(path, "wb") as f:
        f.write(b"head")
        f.seek(far)
        f.write(b"end")
    assert os.stat(path).st_size == far + 3
    with open(path, "rb") as f:
        assert f.read(4) == b"head"
        f.seek(far - 10)
        assert f.read() == b"\0" * 10 + b"end"
    store.flush()
    expect = b"head" + b"\0" * (far - 4) + b"end"
    assert store.provider_read(f"{ART}/sparse.bin") == expect
    store.remount(empty_cache=True)
    fd = os.open(store.mnt / ART / "sparse.bin", os.O_RDWR)
    try:
        assert os.pread(fd, 3, far) == b"end"
        assert os.pread(fd, 8, 3 * 1024 * 1024) == b"\0" * 8
        # a write in the middle of an uncached file keeps the rest
        os.pwrite(fd, b"middle", 3 * 1024 * 1024)
    finally:
        os.close(fd)
    store.flush()
    expect = expect[: 3 * 1024 * 1024] + b"middle" + expect[3 * 1024 * 1024 + 6:]
    assert store.provider_read(f"{ART}/sparse.bin") == expect


def test_append(store, art):
    path = art / "log.txt"
    with open(path, "a") as f:
        f.write("one\n")
    with open(path, "a") as f:
        f.write("two\n")
    run(["sh", "-c", f"echo three >> '{path}'"])
    fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    try:
        os.write(fd, b"four\n")
        os.lseek(fd, 0, os.SEEK_SET)  # O_APPEND writes go to the end whatever the offset
        os.write(fd, b"five\n")
    finally:
        os.close(fd)
    expect = b"one\ntwo\nthree\nfour\nfive\n"
    assert path.read_bytes() == expect
    store.flush()
    assert store.provider_read(f"{ART}/log.txt") == expect
    store.remount(empty_cache=True)
    with open(store.mnt / ART / "log.txt", "a") as f:  # append to an uncached file
        f.write("six\n")
    assert (store.mnt / ART / "log.txt").read_bytes() == expect + b"six\n"
    store.flush()
    assert store.provider_read(f"{ART}/log.txt") == expect + b"six\n"


@pytest.mark.parametrize("provider_kind", ["s3"])
def test_truncate_to_zero_while_another_reader_fetches(store, art):
    """A program rewrites a file (O_TRUNC) while another reads the old one cold: the reader then sees
    the new file, and only the new bytes reach the bucket. (Whether a fetch is still under way at the
    cut is up to timing here; tests/unit/test_openfile.py pins that race.)"""
    old, new = payload("old", 24 * 1024 * 1024), payload("new", 3000)
    create_file(art / "model.bin", old)
    store.flush()
    store.remount(empty_cache=True)
    path = store.mnt / ART / "model.bin"
    reader = open(path, "rb")  # noqa: SIM115 - kept open across the rewrite
    try:
        assert reader.read(1 << 20) == old[:1 << 20]  # its chunks are being fetched ahead now
        fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
        try:
            os.write(fd, new)
        finally:
            os.close(fd)
        rest = reader.read()  # the same file, rewritten: what is past 1 MiB is gone
        assert rest == b""
    finally:
        reader.close()
    assert path.read_bytes() == new
    store.flush()
    assert store.provider_read(f"{ART}/model.bin") == new
    store.remount(empty_cache=True)
    assert (store.mnt / ART / "model.bin").read_bytes() == new
