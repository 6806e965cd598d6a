"""merge: several providers as one key space, the same for the mount and the operator commands."""

from __future__ import annotations

from pathlib import Path

from storefs.providers.base import ObjectInfo, ObjectMeta
from storefs.providers.memory import MemoryProvider
from storefs.view.merge import merge_listings, provider_order, walk_merged


def info(key: str, size: int = 1) -> ObjectInfo:
    is_dir = key.endswith("/")
    return ObjectInfo(key=key, size=0 if is_dir else size, mtime=1.0, is_dir=is_dir)


def test_the_default_provider_comes_first() -> None:
    assert provider_order("s3", ["local", "s3", "cold"]) == ["s3", "local", "cold"]


def test_the_first_provider_wins_a_name_and_a_file_and_folder_of_one_name_both_show() -> None:
    merged = merge_listings([("a", [info("d/x", 1), info("d/sub/")]),
                             ("b", [info("d/x", 2), info("d/y"), info("d/x/")])])
    assert {n: (p, i.size) for n, (p, i) in merged.items()} == {
        "x": ("a", 1), "sub/": ("a", 0), "y": ("b", 1), "x/": ("b", 0)}


def test_a_walk_marks_later_copies_shadowed(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.write_bytes(b"x")
    first, second = MemoryProvider("first"), MemoryProvider("second")
    for p, keys in ((first, ["t/a", "t/b"]), (second, ["t/b", "t/c", "u/d"])):
        for k in keys:
            p.put_file(k, str(src), ObjectMeta(mtime=1.0))
    got = sorted((p, i.key, shadowed) for p, i, shadowed in
                 walk_merged({"first": first, "second": second}, ["first", "second"], "t/"))
    assert got == [("first", "t/a", False), ("first", "t/b", False),
                   ("second", "t/b", True), ("second", "t/c", False)]
