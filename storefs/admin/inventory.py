"""`storefs stats` and `storefs ls`: what the store holds, per level and per artifact, from the providers."""

from __future__ import annotations

import argparse
import fnmatch
import json
import logging
from collections import Counter, defaultdict
from collections.abc import Callable

from ..errors import UsageError
from .common import (
    Artifact,
    Store,
    artifacts,
    content_type,
    format_time,
    iso_time,
    normalize_prefix,
    parse_when,
    print_table,
    walk_merged,
)
from .progress import format_size

log = logging.getLogger(__name__)


# -- stats --------------------------------------------------------------------------------

class Tally:
    """Counts of one walk: distinct folders per level, files and bytes, overall and per group."""

    def __init__(self, levels: tuple[str, ...], by: int | None) -> None:
        self.levels = levels
        self.by = by
        self.level_sets: list[set[tuple[str, ...]]] = [set() for _ in levels]
        self.files = 0
        self.bytes = 0
        self.group_files: Counter[tuple[str, ...]] = Counter()
        self.group_bytes: Counter[tuple[str, ...]] = Counter()
        self.outside_files = 0
        self.outside_bytes = 0
        self.per_provider: dict[str, Counter[str]] = defaultdict(Counter)

    def add(self, pname: str, key: str, size: int, is_dir: bool, shadowed: bool) -> None:
        if shadowed:
            if not is_dir:
                self.per_provider[pname]["shadowed"] += 1
            return
        parts = tuple(key.rstrip("/").split("/"))
        depth = len(self.levels)
        # a file implies its folders; a folder (an empty one too) counts at its own level
        top = min(len(parts) if is_dir else len(parts) - 1, depth)
        for i in range(top):
            self.level_sets[i].add(parts[:i + 1])
        if is_dir:
            return
        self.per_provider[pname]["files"] += 1
        self.per_provider[pname]["bytes"] += size
        self.files += 1
        self.bytes += size
        if len(parts) <= depth:
            self.outside_files += 1
            self.outside_bytes += size
        if self.by is not None and len(parts) > self.by + 1:
            self.group_files[parts[:self.by + 1]] += 1
            self.group_bytes[parts[:self.by + 1]] += size

    def totals(self) -> dict[str, int]:
        out = {f"{name}s": len(s) for name, s in zip(self.levels, self.level_sets, strict=True)}
        return {**out, "files": self.files, "bytes": self.bytes}

    def groups(self) -> list[dict[str, object]]:
        """One row per folder at the --by level, with the counts of the levels below it."""
        if self.by is None:
            return []
        g = self.by
        below = [Counter(t[:g + 1] for t in s) for s in self.level_sets[g + 1:]]
        rows = []
        for group in sorted(self.level_sets[g]):
            row: dict[str, object] = {self.levels[g]: "/".join(group)}
            for name, counter in zip(self.levels[g + 1:], below, strict=True):
                row[f"{name}s"] = counter[group]
            row["files"] = self.group_files[group]
            row["bytes"] = self.group_bytes[group]
            rows.append(row)
        return rows


def cmd_stats(args: argparse.Namespace) -> int:
    with Store.open(args.config) as store:
        by = store.check_level(args.by, "--by") if args.by else None
        prefix = normalize_prefix(args.prefix)
        tally = Tally(store.levels, by)
        for pname, info, shadowed in walk_merged(store, prefix):
            tally.add(pname, info.key, info.size, info.is_dir, shadowed)
        store.require_prefix(prefix, bool(tally.files or any(tally.level_sets)))
        result = {"config": store.cfg.source, "prefix": prefix, "levels": list(store.levels),
                  "total": tally.totals(), "by": args.by, "groups": tally.groups(),
                  "providers": {p: dict(tally.per_provider.get(p, Counter(files=0, bytes=0))) for p in store.order},
                  "outside_layout": {"files": tally.outside_files, "bytes": tally.outside_bytes}}
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    _print_stats(result, store.levels)
    return 0


def _print_stats(result: dict, levels: tuple[str, ...]) -> None:
    total = result["total"]
    count_cols = [f"{name}s" for name in levels]
    if result["by"]:
        g = levels.index(result["by"])
        cols = count_cols[g + 1:] + ["files"]
        rows = [[row[result["by"]]] + [row[c] for c in cols] + [format_size(row["bytes"])] for row in result["groups"]]
        rows.append([f"total ({total[count_cols[g]]})"] + [total[c] for c in cols] + [format_size(total["bytes"])])
        print_table([result["by"]] + cols + ["size"], rows)
    else:
        print_table(count_cols + ["files", "size"],
                    [[total[c] for c in count_cols] + [total["files"], format_size(total["bytes"])]])
    print()
    provs = result["providers"]
    print_table(["provider", "files", "size", "shadowed"],
                [[p, c.get("files", 0), format_size(c.get("bytes", 0)), c.get("shadowed", 0)]
                 for p, c in provs.items()])
    outside = result["outside_layout"]
    if outside["files"]:
        print(f"\n{outside['files']} files ({format_size(outside['bytes'])}) lie outside artifact folders")


# -- ls -----------------------------------------------------------------------------------

def _type_filter(store: Store, wanted: str | None) -> Callable[[Artifact, list[str]], bool]:
    """--type T: a layout type (image, video, ...) or a content type pattern (image/png, video/*)."""
    if wanted is None:
        return lambda art, ctypes: True
    if "/" in wanted:
        return lambda art, ctypes: any(fnmatch.fnmatchcase(c, wanted) for c in ctypes)
    if "type" not in store.levels or wanted not in store.cfg.layout.types:
        raise UsageError(f"--type: unknown type {wanted!r} (types: {', '.join(store.cfg.layout.types)}; "
                         "or a content type such as image/png or video/*)")
    i = store.levels.index("type")
    return lambda art, ctypes: art.key.split("/")[i] == wanted


def content_types(store: Store, art: Artifact) -> list[str]:
    """The content types of an artifact's files, each once."""
    return sorted({content_type(store, info) for _, info in art.files.values()})


def artifact_row(store: Store, art: Artifact) -> dict[str, object]:
    """The --json form of one artifact (and what the table shows)."""
    ctypes = content_types(store, art)
    return {"artifact": art.key, "files": len(art.files), "bytes": art.size, "mtime": art.mtime,
            "modified": iso_time(art.mtime), "providers": art.providers, "content_types": ctypes}


def cmd_ls(args: argparse.Namespace) -> int:
    with Store.open(args.config) as store:
        prefix = normalize_prefix(args.prefix)
        since = parse_when(args.since, "--since") if args.since else None
        until = parse_when(args.until, "--until", end_of_day=True) if args.until else None
        keep = _type_filter(store, args.type)
        found = artifacts(store, prefix)
        store.require_prefix(prefix, bool(found))
        chosen: list[tuple[Artifact, dict[str, object]]] = []
        for key in sorted(found):
            art = found[key]
            if since is not None and art.mtime < since or until is not None and art.mtime >= until:
                continue
            if keep(art, content_types(store, art)):
                chosen.append((art, artifact_row(store, art)))
    if args.json:
        print(json.dumps([row for _, row in chosen], indent=2))
        return 0
    print_table(["artifact", "files", "size", "modified", "provider", "content type"],
                [[art.key, len(art.files), format_size(art.size), format_time(art.mtime),
                  ",".join(art.providers) or "-", ",".join(row["content_types"]) or "-"]  # type: ignore[arg-type]
                 for art, row in chosen])
    print(f"{len(chosen)} artifacts, {sum(len(a.files) for a, _ in chosen)} files, "
          f"{format_size(sum(a.size for a, _ in chosen))}")
    return 0
