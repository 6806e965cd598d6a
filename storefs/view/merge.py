"""Several providers seen as one key space: the default provider first, a key counted once.

The mount's listings and the operator commands (stats, ls, cleanup, migrate) merge the same way,
here: when two providers hold a key, the earlier one in the order shows it, the later one's copy
is shadowed. A file whose key is also a folder's prefix ('a/h1' beside 'a/h1/x.png') shows under
its alias 'h1.storefs-file' (storefs.keys.FILE_SUFFIX), so that both stay reachable.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable, Iterator, Mapping

from .. import keys
from ..providers.base import ObjectInfo, Provider

log = logging.getLogger(__name__)

#: (provider name, what it holds): one entry of a merged listing or lookup
Found = tuple[str, ObjectInfo]


def provider_order(default: str, names: Iterable[str]) -> list[str]:
    """The providers in merge order: the default one first, then the others as configured."""
    return [default] + [n for n in names if n != default]


def entry_name(info: ObjectInfo) -> str:
    """A listing entry's name in its folder: 'x' for a file, 'x/' for a folder."""
    return info.name + ("/" if info.is_dir else "")


def merge_listings(per_provider: Iterable[tuple[str, Iterable[ObjectInfo]]]) -> dict[str, Found]:
    """One folder's children by name, from each provider's listing given in merge order."""
    merged: dict[str, Found] = {}
    suffixes = (keys.FILE_SUFFIX, keys.FILE_SUFFIX + "/")
    for pname, infos in per_provider:
        for info in infos:
            if info.key.endswith(suffixes) and keys.is_alias(info.key.rstrip("/")):
                # the mount's own spelling of a file beside a folder: a key spelt so could not be told apart
                log.warning("skipping %r in a listing: names ending in %s are storefs' own", info.key, keys.FILE_SUFFIX)
                continue
            merged.setdefault(entry_name(info), (pname, info))
    return show_clashes(merged)


def show_clashes(names: dict[str, Found]) -> dict[str, Found]:
    """names with each file that has a folder of the same name ('x' beside 'x/') renamed to its alias
    'x.storefs-file' (keys.FILE_SUFFIX): the folder keeps the name, the file stays reachable beside it."""
    clashes = [n for n, (_, info) in names.items() if not info.is_dir and n + "/" in names]
    if not clashes:
        return names
    out = dict(names)
    for n in clashes:
        pname, info = out.pop(n)
        out[n + keys.FILE_SUFFIX] = (pname, dataclasses.replace(info, key=keys.alias(info.key)))
    return out


def walk_merged(providers: Mapping[str, Provider], order: list[str],
                start: str) -> Iterator[tuple[str, ObjectInfo, bool]]:
    """(provider, info, shadowed) for every key below the folder prefix start ('' or 'a/b/');
    shadowed: an earlier provider in order holds the key too."""
    seen: set[str] | None = set() if len(order) > 1 else None
    for pname in order:
        for info in providers[pname].walk(start):
            if seen is None:
                yield pname, info, False
            elif info.key in seen:
                yield pname, info, True
            else:
                seen.add(info.key)
                yield pname, info, False
