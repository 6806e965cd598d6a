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


def parent(key: str) -> str:
    """'a/b/c' -> 'a/b'; a key directly below the root -> '' (the root)."""
    return key.rpartition("/")[0]


def name(key: str) -> str:
    """'a/b/c' -> 'c': the last component, the name a listing shows."""
    return key.rpartition("/")[2]


def split(key: str) -> tuple[str, str]:
    """'a/b/x' or 'a/b/x/' -> ('a/b/', 'x'): the listing prefix that holds key, and its name there."""
    folder, _, last = key.rstrip("/").rpartition("/")
    return prefix(folder), last


def dir_key(key: str) -> str:
    """'a/b' -> 'a/b/': the journal's key of the folder at key."""
    return key + "/"


def child(key: str, child_name: str) -> str:
    """The key of child_name inside folder key ('' is the root)."""
    return f"{key}/{child_name}" if key else child_name


def prefix(key: str) -> str:
    """'a/b' -> 'a/b/', '' -> '': what every key below folder key starts with."""
    return key + "/" if key else ""


def as_path(key: str) -> str:
    """'a/b' -> '/a/b': the absolute form the layout rules match on."""
    return "/" + key


def from_mount_path(root: str, path: str | None) -> str:
    """The key of a path below the mount ('/x/y'); a single-tenant mount's root is the tenant's folder."""
    if not path or path == "/":
        return root
    return f"{root}{path}" if root else path[1:]


def to_mount_path(root: str, key: str) -> str | None:
    """The path below the mount of key ('/x/y'), None for a key outside a single-tenant mount's root."""
    if key == root:
        return "/"
    if not root:
        return "/" + key
    return key[len(root):] if key.startswith(root + "/") else None


#: the name a file takes beside a folder of the same name: when a provider holds both 'a/h1' and keys
#: below 'a/h1/' (as other S3 tools may write), the folder keeps 'h1' and the file shows as 'h1.storefs-file'
FILE_SUFFIX = ".storefs-file"


def is_alias(key: str) -> bool:
    """Whether the last component of key is a file's name beside a folder of the same name ('h1.storefs-file')."""
    last = name(key)
    return last.endswith(FILE_SUFFIX) and len(last) > len(FILE_SUFFIX)


def alias(key: str) -> str:
    """'a/h1' -> 'a/h1.storefs-file': the mount's key of the file at key beside folder 'a/h1/'."""
    return key + FILE_SUFFIX


def object_key(key: str) -> str:
    """The provider's key of a mount key: 'a/h1.storefs-file' -> 'a/h1'; any other key is itself."""
    return key[:-len(FILE_SUFFIX)] if is_alias(key) else key
