"""`storefs cleanup`: delete whole artifacts older than an age, keeping the newest N of every board."""

from __future__ import annotations

import argparse
import logging
import sys
import time

from ..errors import NotEmpty, StorefsError, UsageError
from .common import Artifact, Store, artifacts, format_time, normalize_prefix, parse_age
from .escape import printable
from .mounts import pending_keys
from .progress import format_size

log = logging.getLogger(__name__)


def plan(found: dict[str, Artifact], cutoff: float, keep_count: int) -> tuple[list[Artifact], int]:
    """The artifacts to delete (key order) and how many are kept: per board the newest keep_count
    always stay, and of the rest those whose newest file is older than cutoff go."""
    boards: dict[str, list[Artifact]] = {}
    for art in found.values():
        boards.setdefault(art.board(), []).append(art)
    doomed, kept = [], 0
    for arts in boards.values():
        arts.sort(key=lambda a: (a.mtime, a.key), reverse=True)
        for i, art in enumerate(arts):
            if i < keep_count or art.mtime >= cutoff:
                kept += 1
            else:
                doomed.append(art)
    return sorted(doomed, key=lambda a: a.key), kept


def _blockers(pending: dict[str, set[str]], akey: str) -> list[str]:
    """Mountpoints with a pending change at or below the artifact folder."""
    below = akey + "/"
    return [mp for mp, keys in pending.items() if any(k.startswith(below) for k in keys)]


def _describe(art: Artifact) -> str:
    return f"{len(art.files)} files, {format_size(art.size)}, newest {format_time(art.mtime)}"


def delete_artifact(store: Store, art: Artifact) -> list[str]:
    """Every copy of every file on every provider, then the folders deepest first; returns warnings."""
    warnings = []
    for pname in sorted(set(art.copies) | set(art.folders)):
        p = store.providers[pname]
        p.delete_many(sorted(art.copies.get(pname, ())))
        folders = art.folders.get(pname, set()) | {art.key + "/"}
        for folder in sorted(folders, key=lambda f: (f.count("/"), f), reverse=True):
            try:
                p.remove_dir(folder)
            except NotEmpty:
                warnings.append(f"folder {folder} on {pname} is not empty (written meanwhile?): left in place")
    return warnings


def cmd_cleanup(args: argparse.Namespace) -> int:
    prefix = normalize_prefix(args.prefix)
    if not prefix:
        raise UsageError("PREFIX: name at least a tenant (cleanup never runs on the whole store at once)")
    age = parse_age(args.older_than)
    if args.keep_count < 0:
        raise UsageError(f"--keep-count: must be 0 or more, got {args.keep_count}")
    verb = "would delete" if args.dry_run else "deleted"
    with Store.open(args.config) as store:
        cutoff = time.time() - age
        found = artifacts(store, prefix)
        store.require_prefix(prefix, bool(found))
        doomed, kept = plan(found, cutoff, args.keep_count)
        pending = pending_keys(store.cfg)
        done_files = done_bytes = done = skipped = failed = 0
        for art in doomed:
            blockers = _blockers(pending, art.key)
            if not args.dry_run and not blockers:
                pending = pending_keys(store.cfg)  # again, just before deleting: the mounts keep writing
                blockers = _blockers(pending, art.key)
            if blockers:
                print(printable(f"skipped {art.key}: pending changes in the mount at {', '.join(blockers)}"))
                skipped += 1
                continue
            if not args.dry_run:
                fresh = artifacts(store, art.key).get(art.key)
                if fresh is not None and fresh.mtime >= cutoff:
                    print(printable(f"skipped {art.key}: changed since the scan (newest {format_time(fresh.mtime)})"))
                    skipped += 1
                    continue
                if fresh is not None:  # the scan inside the artifact does not see the artifact's own folder
                    for pname, folders in art.folders.items():
                        fresh.folders.setdefault(pname, set()).update(folders)
                    art = fresh
                try:
                    for warning in delete_artifact(store, art):
                        print(printable(f"storefs: {art.key}: {warning}"), file=sys.stderr)
                except StorefsError as e:
                    print(printable(f"storefs: {art.key}: delete failed: {e}"), file=sys.stderr)
                    failed += 1
                    continue
            print(printable(f"{verb} {art.key} ({_describe(art)})"))
            done += 1
            done_files += len(art.files)
            done_bytes += art.size
    print(f"cleanup: {verb} {done} artifacts ({done_files} files, {format_size(done_bytes)}); kept {kept}; "
          f"skipped {skipped}" + (f"; {failed} failed" if failed else ""))
    return 1 if failed else 0
