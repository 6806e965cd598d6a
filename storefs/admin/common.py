"""What the operator commands share: the config and its providers, argument parsing, the merged scan."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from ..config import Config, find_config, load_config
from ..errors import ConfigError, StorefsError, UsageError
from ..keys import parents
from ..layout import Layout
from ..providers.base import NS_PER_SECOND, ObjectInfo, Provider
from ..providers.factory import make_providers
from ..view import merge
from .escape import printable

log = logging.getLogger(__name__)

#: parallel HEAD requests when an object store's listing lacks the metadata (mtime) we need
HEAD_THREADS = 16
_AGE_RE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(s|m|h|d|w)\s*")
_AGE_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


class AdminError(Exception):
    """A command cannot do what was asked; the message is the one line the user sees (exit 1)."""

    exit_code = 1


# -- arguments ----------------------------------------------------------------------------

def parse_age(text: str) -> float:
    """'30d', '12h', '90m', '45s', '2w' -> seconds; a bare number is refused (minutes or days?)."""
    m = _AGE_RE.fullmatch(text or "")
    if not m:
        raise UsageError(f"--older-than: not an age: {text!r} (use a number and a unit: 30d, 12h, 90m, 45s, 2w)")
    return float(m.group(1)) * _AGE_UNITS[m.group(2)]


def parse_when(text: str, option: str, end_of_day: bool = False) -> float:
    """An ISO date or date-time (local time unless it names a zone) -> epoch seconds.

    With end_of_day, a bare date means the end of that day, so `--until 2024-12-30` includes the 30th.
    """
    try:
        dt = datetime.fromisoformat(text.strip())
    except ValueError:
        raise UsageError(f"{option}: not an ISO date or date-time: {text!r} "
                         "(e.g. 2024-12-30, 2024-12-30T14:30, 2024-12-30T14:30:00+00:00)") from None
    if end_of_day and re.fullmatch(r"\s*\d{4}-?\d{2}-?\d{2}\s*", text):
        dt += timedelta(days=1)
    return dt.timestamp()


def normalize_prefix(text: str | None) -> str:
    """'t1/image/' or '/t1/image' -> 't1/image' (the key prefix, no slashes at either end)."""
    prefix = (text or "").strip().strip("/")
    if any(p in ("", ".", "..") for p in prefix.split("/")) and prefix:
        raise UsageError(f"not a key prefix: {text!r}")
    return prefix


def format_time(t: float) -> str:
    """Local time to the second, the way ls -l users read it."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) if t else "-"


def iso_time(t: float) -> str | None:
    """ISO 8601 with the UTC offset, for --json."""
    return datetime.fromtimestamp(t).astimezone().isoformat(timespec="seconds") if t else None


# -- the store ----------------------------------------------------------------------------

class Store:
    """One config's providers, in the mount's order (default first), opened without a mount."""

    def __init__(self, cfg: Config, providers: dict[str, Provider]) -> None:
        self.cfg = cfg
        self.providers = providers
        self.order = merge.provider_order(cfg.default_provider, providers)
        self.layout = Layout(cfg.layout, cfg.max_file_size)
        self.levels = cfg.layout.levels

    @classmethod
    def open(cls, config_path: str | None) -> Store:
        """The same config a mount would use: -c, else the one `storefs mount` finds without it."""
        try:
            cfg = load_config(find_config(config_path).path)
        except ConfigError as e:
            raise AdminError(f"bad config: {e}") from None
        except OSError as e:
            raise AdminError(f"cannot read config {config_path}: {e.strerror or e}") from None
        return cls(cfg, make_providers(cfg))

    def provider(self, name: str, option: str) -> Provider:
        """The provider called name, or a UsageError listing the configured ones."""
        if name not in self.providers:
            raise UsageError(f"{option}: no provider {name!r} in {self.cfg.source} "
                             f"(configured: {', '.join(self.order)})")
        return self.providers[name]

    def require_prefix(self, prefix: str, found_anything: bool) -> None:
        """A prefix that names nothing on any provider is a typo, not an empty result."""
        if prefix and not found_anything and not any(self.providers[p].dir_exists(prefix + "/") for p in self.order):
            raise AdminError(f"no such prefix: {prefix} (in providers {', '.join(self.order)})")

    def check_level(self, name: str, option: str, allow_last: bool = False) -> int:
        """Index of a layout level named on the command line (tenant, type, board, ...)."""
        levels = self.levels if allow_last else self.levels[:-1]
        if name not in levels:
            raise UsageError(f"{option}: unknown level {name!r} (one of: {', '.join(levels)})")
        return self.levels.index(name)

    def close(self) -> None:
        for p in self.providers.values():
            p.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class Artifact:
    """An artifact folder (the last layout level) with its files, as the mount shows it."""

    key: str                                   # 't1/image/b1/a1' (no trailing '/')
    files: dict[str, tuple[str, ObjectInfo]] = field(default_factory=dict)   # key -> (provider, info)
    #: every copy on every provider, shadowed ones too (a cleanup deletes them all): provider -> keys
    copies: dict[str, set[str]] = field(default_factory=dict)
    #: folders below (and including) the artifact, per provider: a cleanup removes their markers
    folders: dict[str, set[str]] = field(default_factory=dict)
    folder_mtime_ns: int = 0

    @property
    def size(self) -> int:
        return sum(info.size for _, info in self.files.values())

    @property
    def mtime(self) -> float:
        """The newest file's mtime in seconds (what ls shows and --older-than compares); an empty
        artifact has its folder's."""
        newest = max((info.mtime_ns for _, info in self.files.values()), default=self.folder_mtime_ns)
        return newest / NS_PER_SECOND

    @property
    def providers(self) -> list[str]:
        return sorted({p for p, _ in self.files.values()} or set(self.folders))

    def board(self) -> str:
        return self.key.rpartition("/")[0]


def _ancestors_within(key: str, top: str) -> list[str]:
    """Folder prefixes ('a/b/') of key that lie at or below top ('a/'): the folders a file implies."""
    own = [key.rstrip("/") + "/"] if key.endswith("/") else []  # a folder key implies itself
    return [prefix for prefix in parents(key) + own if prefix.startswith(top)]


def walk_merged(store: Store, prefix: str) -> Iterator[tuple[str, ObjectInfo, bool]]:
    """(provider, info, shadowed) for every key below prefix; shadowed: an earlier provider has the key too.

    The same merge as the mount's listings (storefs.view.merge): the default provider first, a key counted once.
    """
    return merge.walk_merged(store.providers, store.order, prefix + "/" if prefix else "")


def artifacts(store: Store, prefix: str, need_mtime: bool = True) -> dict[str, Artifact]:
    """The artifacts at or below prefix, by key; need_mtime fetches each file's stored mtime where
    the listing does not carry it (one HEAD per file on object stores, in parallel)."""
    depth = len(store.levels)
    found: dict[str, Artifact] = {}
    for pname, info, shadowed in walk_merged(store, prefix):
        parts = info.key.rstrip("/").split("/")
        if len(parts) < depth or (len(parts) == depth and not info.is_dir):
            continue  # above the artifact level: not part of any artifact
        akey = "/".join(parts[:depth])
        art = found.get(akey)
        if art is None:
            art = found[akey] = Artifact(akey)
        if info.is_dir:
            art.folders.setdefault(pname, set()).add(info.key)
            if info.key == akey + "/" and not shadowed:
                art.folder_mtime_ns = info.mtime_ns
            continue
        art.copies.setdefault(pname, set()).add(info.key)
        art.folders.setdefault(pname, set()).update(_ancestors_within(info.key, akey + "/"))
        if not shadowed:
            art.files[info.key] = (pname, info)
    if need_mtime:
        fill_metadata(store, [f for a in found.values() for f in a.files.values()])
    return found


def fill_metadata(store: Store, items: Iterable[tuple[str, ObjectInfo]]) -> None:
    """Replace listing entries by head()s (mtime, mode, content type) where the listing lacks them."""
    todo = [(p, info) for p, info in items if not store.providers[p].listing_has_metadata]
    if not todo:
        return

    def head(item: tuple[str, ObjectInfo]) -> None:
        pname, info = item
        try:
            full = store.providers[pname].head(info.key)
        except StorefsError as e:  # deleted meanwhile, or unreadable: keep what the listing said
            log.debug("head %s on %s: %s", info.key, pname, e)
            return
        info.mtime_ns, info.mode, info.content_type = full.mtime_ns, full.mode, full.content_type
        info.xattrs = full.xattrs

    with ThreadPoolExecutor(HEAD_THREADS) as pool:
        list(pool.map(head, todo))


def content_type(store: Store, info: ObjectInfo) -> str:
    """The stored Content-Type, or what the mount would give the file by its name."""
    return info.content_type or store.layout.content_type("/" + info.key)


def print_table(headers: list[str], rows: list[list[object]]) -> None:
    """Columns padded to their widest cell; numbers and sizes right-aligned, names left-aligned; keys escaped."""
    cells = [headers] + [[printable(str(c)) for c in row] for row in rows]
    right = [all(_numeric(r[i]) for r in cells[1:]) and bool(rows) for i in range(len(headers))]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    for r in cells:
        line = "  ".join(c.rjust(w) if ra else c.ljust(w) for c, w, ra in zip(r, widths, right, strict=False))
        print(line.rstrip())


def _numeric(cell: str) -> bool:
    """A count or a size ('12', '1.5 MiB'): right-aligned so the digits line up."""
    head = cell.split(" ", 1)[0]
    return head.replace(".", "", 1).isdigit() or cell == "-"
