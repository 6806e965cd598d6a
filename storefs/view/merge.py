"""Several providers seen as one key space: the default provider first, a key counted once.

The mount's listings and the operator commands (stats, ls, cleanup, migrate) merge the same way,
here: when two providers hold a key, the earlier one in the order shows it, the later one's copy
is shadowed.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Mapping

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
    for pname, infos in per_provider:
        for info in infos:
            merged.setdefault(entry_name(info), (pname, info))
    return merged


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
