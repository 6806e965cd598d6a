"""Config: a YAML file (or the embedded default) turned into typed, frozen dataclasses.

Loading order:

1. the YAML file given with ``-c``, or with none the embedded default: one local provider
   "local" under ``$XDG_DATA_HOME/storefs/data`` and the cache in ``$XDG_CACHE_HOME/storefs``;
2. ``${VAR}`` and ``${VAR:-default}`` replaced in every string value (a variable that is not
   set and has no default is an error; ``:-`` also replaces a variable set to "");
3. these environment variables on top of whatever the file says:

       STOREFS_DEFAULT_PROVIDER        default_provider
       STOREFS_CACHE_DIR               cache.dir
       STOREFS_CACHE_MAX_SIZE          cache.max_size
       STOREFS_CACHE_WRITEBACK_DELAY   cache.writeback_delay
       STOREFS_CACHE_UPLOADERS         cache.uploaders
       STOREFS_CACHE_FSYNC             cache.fsync
       STOREFS_LOG_LEVEL               log_level

Every mistake is a ConfigError naming the file (or "environment"), the dotted key
(``providers.s3.bucket``, ``routing_rules[1].match.size_gt``) and what is wrong. Paths get
``~`` expanded and are made absolute against the current directory.
"""

from __future__ import annotations

import dataclasses
import grp
import logging
import math
import os
import pwd
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import yaml

from .errors import ConfigError

log = logging.getLogger(__name__)

T = TypeVar("T")
Conv = Callable[[Any, str, str], T]

KiB, MiB, GiB, TiB = 1 << 10, 1 << 20, 1 << 30, 1 << 40
EMBEDDED = "<embedded default>"
ENVIRONMENT = "environment"
DEFAULT_LEVELS = ("tenant", "type", "board", "artifact")
DEFAULT_TYPES = ("image", "video", "audio", "model", "metadata")
DEFAULT_NAME_PATTERN = r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
ATIME_MODES = ("relatime", "strictatime", "noatime")
MAX_MODE = 0o7777
MAX_ID = 0xFFFFFFFE  # (uid_t)-1 means "unchanged" to chown, never an owner
DEFAULT_FILE_MODE = 0o644
DEFAULT_DIR_MODE = 0o755
#: with a umask, rclone's bases: files 0666, folders 0777, minus the umask
UMASK_FILE_BASE = 0o666
UMASK_DIR_BASE = 0o777
OPTIONS_SOURCE = "-o"

_SIZE_UNITS = {"": 1, "b": 1}
for _i, _p in enumerate("kmgt", 1):
    _SIZE_UNITS.update({_p: 1024**_i, _p + "i": 1024**_i, _p + "ib": 1024**_i, _p + "b": 1000**_i})
_SIZE_RE = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([A-Za-z]*)\s*")
_DURATION_UNITS = {"": 1.0, "ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION_RE = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|m|h|d|)\s*")
_VAR_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_PROVIDER_NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
_LEVEL_NAME_RE = re.compile(r"[A-Za-z][A-Za-z0-9_-]*")
_BUCKET_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*[A-Za-z0-9]")


# ---- the typed config ----------------------------------------------------------------


@dataclass(frozen=True)
class LocalProviderConfig:
    name: str
    base_path: str


@dataclass(frozen=True)
class S3ProviderConfig:
    name: str
    bucket: str
    endpoint_url: str | None = None
    region: str | None = None
    prefix: str = ""
    public_url_base: str | None = None
    access_key_id: str | None = field(default=None, repr=False)
    secret_access_key: str | None = field(default=None, repr=False)
    session_token: str | None = field(default=None, repr=False)
    path_style: bool = False
    presign_expiry: float = 3600.0
    multipart_threshold: int = 64 * MiB
    multipart_chunksize: int = 16 * MiB
    connect_timeout: float = 5.0
    read_timeout: float = 30.0
    max_attempts: int = 5
    #: seconds a read of uncached data may keep retrying before it fails with EIO
    read_deadline: float = 20.0


ProviderConfig = LocalProviderConfig | S3ProviderConfig


@dataclass(frozen=True)
class RoutingRule:
    provider: str
    type: str | None = None
    size_gt: int | None = None
    size_lt: int | None = None

    def matches(self, type_: str | None, size: int) -> bool:
        """A rule without conditions is the catch-all; every condition it has must hold."""
        return ((self.type is None or self.type == type_)
                and (self.size_gt is None or size > self.size_gt)
                and (self.size_lt is None or size < self.size_lt))


@dataclass(frozen=True)
class LayoutConfig:
    levels: tuple[str, ...] = DEFAULT_LEVELS
    types: tuple[str, ...] = DEFAULT_TYPES
    name_pattern: str = DEFAULT_NAME_PATTERN
    #: per type, the content types (by file name, shell patterns like "image/*") it may hold;
    #: a type not named here takes any file
    content_types: dict[str, tuple[str, ...]] = field(default_factory=dict)


@dataclass(frozen=True)
class SizeLimits:
    default: int = 1 * GiB
    per_type: dict[str, int] = field(default_factory=dict)

    def limit_for(self, type_: str | None) -> int:
        """Paths above the type level (or layouts without one) get the default limit."""
        return self.per_type.get(type_, self.default) if type_ is not None else self.default


@dataclass(frozen=True)
class MinFree:
    """cache.min_free as written (bytes, a share of the disk or the lesser of both): the disk is known at mount."""

    size: int | None = None
    percent: float | None = None

    def bytes_of(self, disk_size: int) -> int:
        """The free bytes to keep on a cache disk of disk_size bytes."""
        shares = [self.size] if self.size is not None else []
        if self.percent is not None:
            shares.append(int(disk_size * self.percent / 100))
        return min(shares, default=0)


#: 5 % of the cache disk or 1 GiB, whichever is less
DEFAULT_MIN_FREE = MinFree(size=1 * GiB, percent=5.0)
MAX_MIN_FREE_PERCENT = 100.0


@dataclass(frozen=True)
class CacheConfig:
    dir: str
    max_size: int = 20 * GiB
    writeback_delay: float = 2.0
    uploaders: int = 16
    fsync: str = "local"
    retry_max_delay: float = 60.0
    chunk_size: int = 4 * MiB        # unit of ranged reads into the cache
    readahead: int = 8               # chunks fetched ahead of a sequential reader
    space_wait: float = 30.0         # how long a writer waits for room in a full cache before ENOSPC
    min_free: MinFree = DEFAULT_MIN_FREE  # free space eviction keeps on the cache disk


@dataclass(frozen=True)
class FuseConfig:
    attr_timeout: float = 1.0
    entry_timeout: float = 1.0
    negative_timeout: float = 0.5
    dir_cache_ttl: float = 30.0
    #: the kernel's read-ahead for the mount, in bytes (0: the kernel's own, 128 KiB)
    read_ahead: int = 4 * 1024 * 1024
    #: other users may use the mount (a non-root daemon needs user_allow_other in /etc/fuse.conf)
    allow_other: bool = False
    #: root may use the mount too (never together with allow_other)
    allow_root: bool = False
    #: every change answers EROFS; nothing is uploaded (option `ro`; `rw` clears it)
    read_only: bool = False
    #: owner shown for objects without uid metadata (default: the daemon's)
    uid: int | None = None
    gid: int | None = None
    #: applied to file_mode/dir_mode defaults (rclone semantics)
    umask: int | None = None
    #: mode bits shown for files without mode metadata (default 0o644)
    file_mode: int | None = None
    #: mode bits shown for folders without mode metadata (default 0o755)
    dir_mode: int | None = None
    #: relatime | strictatime | noatime
    atime: str = "relatime"

    def default_file_mode(self) -> int:
        """Permission bits of a file that carries no mode metadata, as rclone derives them."""
        if self.umask is None:
            return DEFAULT_FILE_MODE if self.file_mode is None else self.file_mode
        base = UMASK_FILE_BASE if self.file_mode is None else self.file_mode
        return base & ~self.umask & MAX_MODE

    def default_dir_mode(self) -> int:
        """Permission bits of a folder that carries no mode metadata, as rclone derives them."""
        if self.umask is None:
            return DEFAULT_DIR_MODE if self.dir_mode is None else self.dir_mode
        base = UMASK_DIR_BASE if self.dir_mode is None else self.dir_mode
        return base & ~self.umask & MAX_MODE


@dataclass(frozen=True)
class Config:
    source: str
    default_provider: str
    providers: dict[str, ProviderConfig]
    routing_rules: tuple[RoutingRule, ...]
    layout: LayoutConfig
    max_file_size: SizeLimits
    cache: CacheConfig
    fuse: FuseConfig
    log_level: str = "INFO"
    #: a single-tenant mount shows only this tenant's folder, as the mount root
    tenant: str | None = None
    #: loopback port of the Prometheus /metrics endpoint (0: none)
    metrics_port: int = 0
    metrics_address: str = "127.0.0.1"
    #: what an upload does when another writer changed the key first: keep-both (a conflict copy) or overwrite
    conflicts: str = "keep-both"

    def provider_for(self, type_: str | None, size: int) -> str:
        """Routing is first match wins, so the order of rules in the file is the priority."""
        for rule in self.routing_rules:
            if rule.matches(type_, size):
                return rule.provider
        return self.default_provider


# ---- scalar converters: (value, source, key) -> typed value or ConfigError ------------


def _kind(value: object) -> str:
    """Describes a wrong value without echoing it: string settings may hold secrets."""
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return "true/false"
    return {dict: "a mapping", list: "a list", str: "a string", int: "a number",
            float: "a number"}.get(type(value), type(value).__name__)


def _shown(value: object) -> str:
    return repr(value) if isinstance(value, (str, int, float)) and not isinstance(value, bool) else _kind(value)


def parse_size(value: object, source: str, key: str) -> int:
    """Sizes are written the way storage people write them ("20GiB", "1.5GB"); the code wants bytes."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if math.isfinite(value) and value >= 0:
            return int(value)
    elif isinstance(value, str):
        m = _SIZE_RE.fullmatch(value)
        if m and m.group(2).lower() in _SIZE_UNITS:
            number, unit = m.group(1), _SIZE_UNITS[m.group(2).lower()]
            return int(number) * unit if number.isdigit() else int(float(number) * unit)
    raise ConfigError(source, key, f"expected a size such as 512KiB, 100MiB, 1.5GB or a number of "
                                   f"bytes, got {_shown(value)}")


def parse_min_free(value: object, source: str, key: str) -> MinFree:
    """A size ("2GiB") or a share of the cache disk ("10%"), which only the mount can turn into bytes."""
    if isinstance(value, str) and value.strip().endswith("%"):
        number = value.strip()[:-1].strip()
        try:
            percent = float(number)
        except ValueError:
            percent = math.nan
        if not 0 <= percent <= MAX_MIN_FREE_PERCENT:
            raise ConfigError(source, key, f"expected a share of the cache disk between 0% and "
                                           f"{MAX_MIN_FREE_PERCENT:g}%, got {_shown(value)}")
        return MinFree(percent=percent)
    try:
        return MinFree(size=parse_size(value, source, key))
    except ConfigError:
        raise ConfigError(source, key, f"expected a size such as 2GiB or 500MB, or a share of the cache "
                                       f"disk such as 10%, got {_shown(value)}") from None


def parse_duration(value: object, source: str, key: str) -> float:
    """Delays read better as "500ms" or "1h" than as a bare number of seconds."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if math.isfinite(value) and value >= 0:
            return float(value)
    elif isinstance(value, str):
        m = _DURATION_RE.fullmatch(value)
        if m:
            return float(m.group(1)) * _DURATION_UNITS[m.group(2)]
    raise ConfigError(source, key, f"expected a duration such as 500ms, 2s, 1m, 1h, 1d or a number "
                                   f"of seconds, got {_shown(value)}")


def _str(value: object, source: str, key: str) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)  # YAML reads `bucket: 12345` as a number
    if not isinstance(value, str):
        raise ConfigError(source, key, f"expected a string, got {_kind(value)}")
    return value


def _int(value: object, source: str, key: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    raise ConfigError(source, key, f"expected a whole number, got {_shown(value)}")


def _bool(value: object, source: str, key: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower() if isinstance(value, (str, int)) else ""
    if text in ("true", "yes", "on", "1", "false", "no", "off", "0"):
        return text in ("true", "yes", "on", "1")
    raise ConfigError(source, key, f"expected true or false, got {_shown(value)}")


def _path(value: object, source: str, key: str) -> str:
    text = _str(value, source, key)
    if not text:
        raise ConfigError(source, key, "expected a path, got an empty string")
    return os.path.abspath(os.path.expanduser(text))


def _url(value: object, source: str, key: str) -> str:
    text = _str(value, source, key)
    if not re.match(r"https?://[^/\s]", text):
        raise ConfigError(source, key, f"expected an http:// or https:// URL, got {text!r}")
    return text.rstrip("/")


def _bucket(value: object, source: str, key: str) -> str:
    text = _str(value, source, key)
    if not 3 <= len(text) <= 63 or not _BUCKET_RE.fullmatch(text):
        raise ConfigError(source, key, f"bad bucket name {text!r}: 3 to 63 letters, digits, '.', "
                                       "'-' or '_', starting and ending with a letter or digit")
    return text


def _mode(value: object, source: str, key: str) -> int:
    """Modes are octal ("022", "0640", "0o755") in strings; a YAML number is taken as it reads it (0640 is octal)."""
    n: int | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        n = value
    elif isinstance(value, str):
        text = value.strip().lower().removeprefix("0o")
        if text and all(c in "01234567" for c in text):
            n = int(text, 8)
    if n is None:
        raise ConfigError(source, key, f"expected an octal mode such as 022, 0640 or 0755, got {_shown(value)}")
    if not 0 <= n <= MAX_MODE:
        raise ConfigError(source, key, f"must be between 0 and 07777 (octal), got {_shown(value)}")
    return n


def _owner(kind: str) -> Conv[int]:
    """A uid (or gid) as a number, or a user (or group) name looked up on this host."""
    lookup: Callable[[str], int] = ((lambda name: pwd.getpwnam(name).pw_uid) if kind == "user"
                                    else (lambda name: grp.getgrnam(name).gr_gid))

    def conv(value: object, source: str, key: str) -> int:
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise ConfigError(source, key, f"expected a {kind} name or number, got {_kind(value)}")
        text = str(value).strip()
        if text.isdigit():
            n = int(text)
            if n > MAX_ID:
                raise ConfigError(source, key, f"must be between 0 and {MAX_ID}, got {_shown(value)}")
            return n
        if isinstance(value, int):
            raise ConfigError(source, key, f"must be between 0 and {MAX_ID}, got {_shown(value)}")
        try:
            return lookup(text)
        except KeyError:
            raise ConfigError(source, key, f"no {kind} named {text!r} on this host") from None
    return conv


def _choice(*options: str, fold: Callable[[str], str] = str.lower) -> Conv[str]:
    def conv(value: object, source: str, key: str) -> str:
        text = fold(_str(value, source, key).strip())
        if text not in options:
            raise ConfigError(source, key, f"expected one of {', '.join(options)}, got {_shown(value)}")
        return text
    return conv


def _num(x: float) -> str:
    """A bound as written: whole byte counts in full, not as 2.68435e+08."""
    return str(x) if isinstance(x, int) else f"{x:g}"


def _bounded(conv: Conv[T], lo: float, hi: float = math.inf) -> Conv[T]:
    def check(value: object, source: str, key: str) -> T:
        n = conv(value, source, key)
        if not lo <= n <= hi:  # type: ignore[operator]
            span = f"at least {_num(lo)}" if hi == math.inf else f"between {_num(lo)} and {_num(hi)}"
            raise ConfigError(source, key, f"must be {span}, got {_shown(value)}")
        return n
    return check


def _names(what: str, pattern: re.Pattern[str] | None = None) -> Conv[tuple[str, ...]]:
    def conv(value: object, source: str, key: str) -> tuple[str, ...]:
        if not isinstance(value, list):
            raise ConfigError(source, key, f"expected a list of {what}, got {_kind(value)}")
        names = tuple(_str(v, source, f"{key}[{i}]") for i, v in enumerate(value))
        for i, name in enumerate(names):
            if pattern is not None and not pattern.fullmatch(name):
                raise ConfigError(source, f"{key}[{i}]", f"bad name {name!r}: must match {pattern.pattern}")
            if name in names[:i]:
                raise ConfigError(source, f"{key}[{i}]", f"{name!r} is listed twice")
        return names
    return conv


# ---- mappings ---------------------------------------------------------------------


class _Map:
    """One YAML mapping being read, so that every error can name its dotted key."""

    _REQUIRED: Any = object()

    def __init__(self, value: object, source: str, key: str, known: tuple[str, ...],
                 what: str = "a mapping") -> None:
        if value is None:
            value = {}  # `cache:` with nothing under it
        if not isinstance(value, dict):
            raise ConfigError(source, key, f"expected {what}, got {_kind(value)}")
        for k in value:
            if k not in known:
                raise ConfigError(source, self._join(key, k), f"unknown key (known: {', '.join(known)})")
        self.data, self.source, self.key = value, source, key

    @staticmethod
    def _join(key: str, name: object) -> str:
        return f"{key}.{name}" if key else str(name)

    def raw(self, name: str) -> Any:
        """The value as YAML gave it, for mappings whose keys are data (types, tenants)."""
        return self.data.get(name)

    def get(self, name: str, conv: Conv[T], default: Any = _REQUIRED) -> T:
        value = self.data.get(name)
        if value is None:
            if default is self._REQUIRED:
                raise ConfigError(self.source, self._join(self.key, name), "missing (required)")
            return default
        return conv(value, self.source, self._join(self.key, name))


#: config `conflicts`: keep both versions (the default), or let the last writer win
CONFLICT_MODES = ("keep-both", "overwrite")

_TOP_KEYS = ("default_provider", "providers", "routing_rules", "layout", "max_file_size",
             "cache", "fuse", "log_level", "tenant", "metrics_port", "metrics_address",
             "conflicts")
_S3_KEYS = ("type", "bucket", "endpoint_url", "region", "prefix", "public_url_base",
            "access_key_id", "secret_access_key", "session_token", "path_style", "presign_expiry",
            "multipart_threshold", "multipart_chunksize", "connect_timeout", "read_timeout",
            "max_attempts", "read_deadline")


def _provider(name: object, spec: object, source: str) -> ProviderConfig:
    key = f"providers.{name}"
    if not isinstance(name, str) or not _PROVIDER_NAME_RE.fullmatch(name):
        raise ConfigError(source, key, "provider names are letters, digits, '_', '.' and '-'")
    if not isinstance(spec, dict):
        raise ConfigError(source, key, f"expected a mapping with 'type: local' or 'type: s3', got {_kind(spec)}")
    kind = spec.get("type")
    if kind == "local":
        m = _Map(spec, source, key, ("type", "base_path"))
        return LocalProviderConfig(name, m.get("base_path", _path))
    if kind != "s3":
        raise ConfigError(source, key + ".type", f"expected local or s3, got {_shown(kind)}")
    m = _Map(spec, source, key, _S3_KEYS)
    prefix = m.get("prefix", _str, "").lstrip("/")
    s3 = S3ProviderConfig(
        name=name,
        bucket=m.get("bucket", _bucket),
        endpoint_url=m.get("endpoint_url", _url, None),
        region=m.get("region", _str, "") or None,
        prefix=prefix + "/" if prefix and not prefix.endswith("/") else prefix,
        public_url_base=m.get("public_url_base", _url, None),
        access_key_id=m.get("access_key_id", _str, "") or None,
        secret_access_key=m.get("secret_access_key", _str, "") or None,
        session_token=m.get("session_token", _str, "") or None,
        path_style=m.get("path_style", _bool, False),
        presign_expiry=m.get("presign_expiry", _bounded(parse_duration, 1, 7 * 86400), 3600.0),
        multipart_threshold=m.get("multipart_threshold", _bounded(parse_size, 5 * MiB), 64 * MiB),
        multipart_chunksize=m.get("multipart_chunksize", _bounded(parse_size, 5 * MiB, 5 * GiB), 16 * MiB),
        connect_timeout=m.get("connect_timeout", _bounded(parse_duration, 0.1), 5.0),
        read_timeout=m.get("read_timeout", _bounded(parse_duration, 0.1), 30.0),
        max_attempts=m.get("max_attempts", _bounded(_int, 1, 50), 5),
        read_deadline=m.get("read_deadline", _bounded(parse_duration, 0), 20.0),
    )
    if bool(s3.access_key_id) != bool(s3.secret_access_key) or (s3.session_token and not s3.access_key_id):
        raise ConfigError(source, key, "give access_key_id and secret_access_key together (and "
                                       "session_token only with them), or none for boto3's chain")
    return s3


def _bounded_len(conv: Conv[tuple[str, ...]], lo: int, hi: int) -> Conv[tuple[str, ...]]:
    def check(value: object, source: str, key: str) -> tuple[str, ...]:
        names = conv(value, source, key)
        if not lo <= len(names) <= hi:
            raise ConfigError(source, key, f"expected {lo} to {hi} names, got {len(names)}")
        return names
    return check


def _layout(value: object, source: str) -> LayoutConfig:
    m = _Map(value, source, "layout", ("levels", "types", "name_pattern", "content_types"))
    levels = m.get("levels", _bounded_len(_names("level names", _LEVEL_NAME_RE), 1, 8), DEFAULT_LEVELS)
    pattern = m.get("name_pattern", _str, DEFAULT_NAME_PATTERN)
    try:
        compiled = re.compile(pattern)
    except re.error as e:
        raise ConfigError(source, "layout.name_pattern", f"not a valid regular expression: {e}") from None
    types = m.get("types", _names("types", compiled), DEFAULT_TYPES)
    if "type" in levels and not types:
        raise ConfigError(source, "layout.types", "a layout with a 'type' level needs at least one type")
    return LayoutConfig(levels, types, pattern, _content_types(m.raw("content_types"), source, types))


def _content_types(value: object, source: str, types: tuple[str, ...]) -> dict[str, tuple[str, ...]]:
    if value is None:
        return {}
    m = _Map(value, source, "layout.content_types", types)
    out: dict[str, tuple[str, ...]] = {}
    for t in types:
        raw = m.raw(t)
        if raw is None:
            continue
        key = f"layout.content_types.{t}"
        items = [raw] if isinstance(raw, str) else raw
        if not isinstance(items, list) or not items or not all(isinstance(i, str) and "/" in i for i in items):
            raise ConfigError(source, key, "expected a list of content types like image/* or application/json")
        out[t] = tuple(items)
    return out


def _tenant(value: str | None, source: str, layout: LayoutConfig) -> str | None:
    if value is not None and not re.fullmatch(layout.name_pattern, value):
        raise ConfigError(source, "tenant", f"{value!r} is not a valid folder name (pattern {layout.name_pattern})")
    return value


def with_tenant(cfg: Config, tenant: str, source: str = "--tenant") -> Config:
    """The same config, mounted for one tenant only (name checked like a tenant folder)."""
    if not re.fullmatch(cfg.layout.name_pattern, tenant):
        raise ConfigError(source, "tenant",
                          f"{tenant!r} is not a valid folder name (pattern {cfg.layout.name_pattern})")
    return dataclasses.replace(cfg, tenant=tenant)


def _limits(value: object, source: str, types: tuple[str, ...]) -> SizeLimits:
    size = _bounded(parse_size, 1)
    if value is None:
        return SizeLimits()
    if not isinstance(value, dict):
        return SizeLimits(size(value, source, "max_file_size"))
    m = _Map(value, source, "max_file_size", ("default", *types))
    per_type = {t: m.get(t, size) for t in types if value.get(t) is not None}
    return SizeLimits(m.get("default", size, 1 * GiB), per_type)


def _routing(value: object, source: str, providers: dict[str, ProviderConfig],
             layout: LayoutConfig) -> tuple[RoutingRule, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise ConfigError(source, "routing_rules", f"expected a list of rules, got {_kind(value)}")
    rules = []
    for i, item in enumerate(value):
        key = f"routing_rules[{i}]"
        m = _Map(item, source, key, ("match", "provider"), "a mapping like {match: {...}, provider: NAME}")
        provider = m.get("provider", _str)
        if provider not in providers:
            raise ConfigError(source, key + ".provider",
                              f"unknown provider {provider!r} (providers: {', '.join(providers)})")
        mm = _Map(m.data.get("match"), source, key + ".match", ("type", "size_gt", "size_lt"))
        rule = RoutingRule(provider, mm.get("type", _str, None),
                           mm.get("size_gt", parse_size, None), mm.get("size_lt", parse_size, None))
        if rule.type is not None and "type" in layout.levels and rule.type not in layout.types:
            raise ConfigError(source, key + ".match.type",
                              f"unknown type {rule.type!r} (allowed: {', '.join(layout.types)})")
        if rule.size_gt is not None and rule.size_lt is not None and rule.size_lt <= rule.size_gt + 1:
            raise ConfigError(source, key + ".match", "size_gt and size_lt leave no size that matches")
        rules.append(rule)
    return tuple(rules)


_CACHE_CONV: dict[str, Conv[Any]] = {
    "max_size": parse_size,
    "writeback_delay": parse_duration,
    "uploaders": _bounded(_int, 1, 64),
    "fsync": _choice("local", "upload"),
    "retry_max_delay": _bounded(parse_duration, 0.1),
    "chunk_size": _bounded(parse_size, 64 * KiB, 256 * MiB),
    "readahead": _bounded(_int, 0, 64),
    "space_wait": _bounded(parse_duration, 0),
    "min_free": parse_min_free,
}
_ENV_OVERRIDES = {  # variable -> (cache field or top-level key, converter)
    "STOREFS_CACHE_DIR": ("dir", _path),
    "STOREFS_CACHE_MAX_SIZE": ("max_size", _CACHE_CONV["max_size"]),
    "STOREFS_CACHE_WRITEBACK_DELAY": ("writeback_delay", _CACHE_CONV["writeback_delay"]),
    "STOREFS_CACHE_UPLOADERS": ("uploaders", _CACHE_CONV["uploaders"]),
    "STOREFS_CACHE_FSYNC": ("fsync", _CACHE_CONV["fsync"]),
    "STOREFS_LOG_LEVEL": ("log_level", _choice(*LOG_LEVELS, fold=str.upper)),
}


def _cache(value: object, source: str) -> CacheConfig:
    m = _Map(value, source, "cache", tuple(f.name for f in dataclasses.fields(CacheConfig)))
    return CacheConfig(
        dir=m.get("dir", _path, None) or _xdg("XDG_CACHE_HOME", "~/.cache", "storefs"),
        **{name: m.get(name, conv, getattr(CacheConfig, name)) for name, conv in _CACHE_CONV.items()})


_FUSE_CONV: dict[str, Conv[Any]] = {
    "read_ahead": _bounded(parse_size, 0, 1024 * MiB),
    "allow_other": _bool,
    "allow_root": _bool,
    "read_only": _bool,
    "uid": _owner("user"),
    "gid": _owner("group"),
    "umask": _mode,
    "file_mode": _mode,
    "dir_mode": _mode,
    "atime": _choice(*ATIME_MODES),
}
_FUSE_NAMES = tuple(f.name for f in dataclasses.fields(FuseConfig))
#: -o options without a value -> (FuseConfig field, value); default_permissions is always on
OPTION_FLAGS: dict[str, tuple[str, Any] | None] = {
    "allow_other": ("allow_other", True),
    "allow_root": ("allow_root", True),
    "ro": ("read_only", True),
    "rw": ("read_only", False),
    **{mode: ("atime", mode) for mode in ATIME_MODES},
    "default_permissions": None,
}


#: the key=value options named in messages (every fuse: key is also taken as key=value)
VALUE_OPTIONS = ("uid", "gid", "umask", "file_mode", "dir_mode", "attr_timeout", "entry_timeout",
                 "negative_timeout", "dir_cache_ttl", "read_ahead")


def _check_fuse(fuse: FuseConfig, source: str, key: str) -> FuseConfig:
    """Settings that make sense alone but not together."""
    if fuse.allow_other and fuse.allow_root:
        raise ConfigError(source, key, "allow_other and allow_root exclude each other "
                                       "(allow_other already lets root in)")
    return fuse


def _fuse(value: object, source: str) -> FuseConfig:
    m = _Map(value, source, "fuse", _FUSE_NAMES)
    fuse = FuseConfig(**{n: m.get(n, _FUSE_CONV.get(n, parse_duration), getattr(FuseConfig, n))
                         for n in _FUSE_NAMES})
    return _check_fuse(fuse, source, "fuse")


def parse_mount_options(groups: list[str], source: str = OPTIONS_SOURCE) -> dict[str, Any]:
    """mount(8)-style `-o a,b=c` groups -> FuseConfig field values; later options win, like mount(8)."""
    out: dict[str, Any] = {}
    for group in groups:
        for opt in (o.strip() for o in group.split(",")):
            if not opt:
                continue
            name, eq, value = opt.partition("=")
            name = name.strip()
            if not eq and name in OPTION_FLAGS:
                flag = OPTION_FLAGS[name]
                if flag is not None:
                    out[flag[0]] = flag[1]
            elif eq and name in _FUSE_NAMES:
                out[name] = _FUSE_CONV.get(name, parse_duration)(value.strip(), source, name)
            else:
                raise ConfigError(source, opt, f"unknown option (storefs takes {', '.join(OPTION_FLAGS)}, "
                                               f"{', '.join(n + '=' for n in VALUE_OPTIONS)})")
    return out


def mount_options(fuse: FuseConfig) -> list[str]:
    """The sharing options in effect, as `-o` would write them (for `storefs status`)."""
    out = [name for name in ("allow_other", "allow_root") if getattr(fuse, name)]
    out.append("ro" if fuse.read_only else "rw")
    out += [f"{name}={getattr(fuse, name)}" for name in ("uid", "gid") if getattr(fuse, name) is not None]
    out += [f"{name}={getattr(fuse, name):04o}" for name in ("umask", "file_mode", "dir_mode")
            if getattr(fuse, name) is not None]
    return out + [fuse.atime]


def with_mount_options(cfg: Config, groups: list[str], source: str = OPTIONS_SOURCE) -> Config:
    """The config with `-o` options on top of its fuse: section (the command line wins over the file)."""
    values = parse_mount_options(groups, source)
    if not values:
        return cfg
    fuse = dataclasses.replace(cfg.fuse, **values)
    return dataclasses.replace(cfg, fuse=_check_fuse(fuse, source, "allow_other"))


def _build(raw: dict[str, Any], source: str) -> Config:
    top = _Map(raw, source, "", _TOP_KEYS)
    spec = raw.get("providers")
    if not isinstance(spec, dict) or not spec:
        got = "an empty mapping" if isinstance(spec, dict) else _kind(spec)
        raise ConfigError(source, "providers", f"expected a mapping of provider names to settings, got {got}")
    providers = {name: _provider(name, s, source) for name, s in spec.items()}
    names = ", ".join(providers)
    env_default = os.environ.get("STOREFS_DEFAULT_PROVIDER")
    if env_default:
        if env_default not in providers:
            raise ConfigError(ENVIRONMENT, "STOREFS_DEFAULT_PROVIDER",
                              f"unknown provider {env_default!r} (providers in {source}: {names})")
        default = env_default
    else:
        default = top.get("default_provider", _str, None)
        if default is None and len(providers) > 1:
            raise ConfigError(source, "default_provider", f"missing: required with more than one provider ({names})")
        if default is not None and default not in providers:
            raise ConfigError(source, "default_provider", f"unknown provider {default!r} (providers: {names})")
    layout = _layout(raw.get("layout"), source)
    return Config(
        source=source,
        default_provider=default or next(iter(providers)),
        providers=providers,
        routing_rules=_routing(raw.get("routing_rules"), source, providers, layout),
        layout=layout,
        max_file_size=_limits(raw.get("max_file_size"), source, layout.types),
        cache=_cache(raw.get("cache"), source),
        fuse=_fuse(raw.get("fuse"), source),
        log_level=top.get("log_level", _choice(*LOG_LEVELS, fold=str.upper), "INFO"),
        tenant=_tenant(top.get("tenant", _str, None), source, layout),
        metrics_port=top.get("metrics_port", _bounded(_int, 0, 65535), 0),
        metrics_address=top.get("metrics_address", _str, "127.0.0.1"),
        conflicts=top.get("conflicts", _choice(*CONFLICT_MODES), CONFLICT_MODES[0]),
    )


def _apply_env(cfg: Config) -> Config:
    """STOREFS_* variables win over the file, so one file can serve several mounts."""
    cache: dict[str, Any] = {}
    top: dict[str, Any] = {}
    for var, (name, conv) in _ENV_OVERRIDES.items():
        value = os.environ.get(var)
        if value:
            (top if name == "log_level" else cache)[name] = conv(value, ENVIRONMENT, var)
    if cache:
        top["cache"] = dataclasses.replace(cfg.cache, **cache)
    return dataclasses.replace(cfg, **top) if top else cfg


# ---- sources ----------------------------------------------------------------------


def _xdg(var: str, fallback: str, *sub: str) -> str:
    """The XDG spec says relative values are to be ignored, not resolved."""
    base = os.environ.get(var, "")
    return os.path.join(base if os.path.isabs(base) else os.path.expanduser(fallback), *sub)


def _read_yaml(path: str) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        raise ConfigError(path, "", "no such file") from None
    except OSError as e:
        raise ConfigError(path, "", f"can not read it: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise ConfigError(path, "", "not UTF-8 text") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(path, "", f"invalid YAML{where}: {getattr(e, 'problem', None) or e}") from None
    if not isinstance(data, dict):
        raise ConfigError(path, "", f"expected a mapping of settings at the top level, got {_kind(data)}")
    return data


def _substitute(value: Any, source: str, key: str) -> Any:
    """Secrets stay out of the file: any string value may name environment variables."""
    if isinstance(value, str):
        def repl(m: re.Match[str]) -> str:
            name, default = m.group(1), m.group(2)
            got = os.environ.get(name)
            if got is None and default is None:
                raise ConfigError(source, key, f"environment variable {name} is not set "
                                               f"(write ${{{name}:-default}} to give a fallback)")
            if got or default is None:
                return got or ""
            return default
        return _VAR_RE.sub(repl, value)
    if isinstance(value, dict):
        return {k: _substitute(v, source, f"{key}.{k}" if key else str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, source, f"{key}[{i}]") for i, v in enumerate(value)]
    return value


def load_config(path: str | None) -> Config:
    """One entry point for the CLI and the tests, so every source is validated the same way."""
    if path is None:
        source = EMBEDDED
        raw: dict[str, Any] = {"providers": {"local": {
            "type": "local", "base_path": _xdg("XDG_DATA_HOME", "~/.local/share", "storefs", "data")}}}
    else:
        source, raw = path, _substitute(_read_yaml(path), path, "")
    cfg = _apply_env(_build(raw, source))
    log.debug("config from %s: providers %s, default %s, cache %s", source,
              ", ".join(cfg.providers), cfg.default_provider, cfg.cache.dir)
    return cfg
