"""merge: several providers as one key space, the same for the mount and the operator commands."""

from __future__ import annotations

from pathlib import Path

from storefs.keys import FILE_SUFFIX
from storefs.providers.base import ObjectInfo, ObjectMeta
from storefs.providers.memory import MemoryProvider
from storefs.view.aliases import AliasedProvider
from storefs.view.merge import merge_listings, provider_order, walk_merged


def info(key: str, size: int = 1) -> ObjectInfo:
    is_dir = key.endswith("/")
    return ObjectInfo(key=key, size=0 if is_dir else size, mtime_ns=1_000_000_000, is_dir=is_dir)


def test_the_default_provider_comes_first() -> None:
    assert provider_order("s3", ["local", "s3", "cold"]) == ["s3", "local", "cold"]


def test_the_first_provider_wins_a_name_and_a_file_and_folder_of_one_name_both_show() -> None:
    merged = merge_listings([("a", [info("d/x", 1), info("d/sub/")]),
                             ("b", [info("d/x", 2), info("d/y"), info("d/x/")])])
    # the folder keeps the name; the file shows beside it under its alias, its info named so
    assert {n: (p, i.size, i.key) for n, (p, i) in merged.items()} == {
        f"x{FILE_SUFFIX}": ("a", 1, f"d/x{FILE_SUFFIX}"), "sub/": ("a", 0, "d/sub/"), "y": ("b", 1, "d/y"),
        "x/": ("b", 0, "d/x/")}


def test_a_key_spelt_like_an_alias_is_left_out_of_a_listing() -> None:
    merged = merge_listings([("a", [info(f"d/x{FILE_SUFFIX}"), info("d/z"), info(f"d/q{FILE_SUFFIX}/")])])
    assert list(merged) == ["z"]


def test_an_alias_names_the_objects_key_at_the_provider(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.write_bytes(b"the file")
    inner = MemoryProvider("m")
    p = AliasedProvider(inner)
    info_ = p.put_file(f"d/x{FILE_SUFFIX}", str(src), ObjectMeta(mtime_ns=1_000_000_000))
    assert info_.key == f"d/x{FILE_SUFFIX}" and inner.head("d/x").size == 8
    assert p.head(f"d/x{FILE_SUFFIX}").key == f"d/x{FILE_SUFFIX}"
    assert p.get_range(f"d/x{FILE_SUFFIX}", 0, 3) == b"the"
    assert p.copy(f"d/x{FILE_SUFFIX}", "d/y").key == "d/y"
    p.delete(f"d/x{FILE_SUFFIX}")
    assert sorted(inner._keys) == ["d/y"]
    assert p.lookup_by_listing is inner.lookup_by_listing and p.name == "m"


def test_a_walk_marks_later_copies_shadowed(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.write_bytes(b"x")
    first, second = MemoryProvider("first"), MemoryProvider("second")
    for p, keys in ((first, ["t/a", "t/b"]), (second, ["t/b", "t/c", "u/d"])):
        for k in keys:
            p.put_file(k, str(src), ObjectMeta(mtime_ns=1_000_000_000))
    got = sorted((p, i.key, shadowed) for p, i, shadowed in
                 walk_merged({"first": first, "second": second}, ["first", "second"], "t/"))
    assert got == [("first", "t/a", False), ("first", "t/b", False),
                   ("second", "t/b", True), ("second", "t/c", False)]
