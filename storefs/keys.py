"""Keys, the one naming of entries in the cache and at the providers.

A key is a path below the mount's root without a leading '/' ('a/b/c'); a folder's key ends
with '/' ('a/b/'); '' is the root.
"""

from __future__ import annotations

from collections.abc import Iterator


def ancestors(key: str) -> Iterator[tuple[str, str]]:
    """(folder prefix, child name) pairs from the root down to key; dir names end in '/'."""
    is_dir = key.endswith("/")
    parts = key.rstrip("/").split("/")
    prefix = ""
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        name = part if (last and not is_dir) else part + "/"
        yield prefix, name
        prefix += part + "/"


def parents(key: str) -> list[str]:
    """'a/b/c' or 'a/b/c/' -> ['a/', 'a/b/']: the folders that hold key, from the root down."""
    return [prefix for prefix, _ in ancestors(key)][1:]
