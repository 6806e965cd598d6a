"""Config: a YAML file (or the embedded default) turned into typed, frozen dataclasses.

Loading order:

1. the YAML file find_config() picks: ``-c``, else ``$STOREFS_CONFIG``, else
   ``$XDG_CONFIG_HOME/storefs/config.yaml``, else ``/etc/storefs/storefs.yaml``, else the embedded
   default: one local provider "local" under ``$XDG_DATA_HOME/storefs/data`` and the cache in
   ``$XDG_CACHE_HOME/storefs``;
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
(``providers.s3.bucket``, ``routing_rules[1].match.size_gt``) and what is wrong; a load goes on
past a mistake and raises them all together (ConfigErrors) at its end. Paths get ``~`` expanded
and are made absolute against the current directory. Config.warnings says when the file holds
literal secrets other users can read.
"""

from __future__ import annotations

import configparser
import dataclasses
import grp
import ipaddress
import logging
import math
import os
import pwd
import re
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVar, cast

import yaml

from .errors import ConfigError

log = logging.getLogger(__name__)

T = TypeVar("T")
Conv = Callable[[Any, str, str], T]

KiB, MiB, GiB, TiB = 1 << 10, 1 << 20, 1 << 30, 1 << 40
EMBEDDED = "<embedded default>"
#: the field metadata of settings that hold a secret: `config check` shows them as SECRET_SHOWN
SECRET = {"secret": True}
SECRET_SHOWN = "***"
#: a config other users can read (group or other read bits) must not hold literal secrets
OTHERS_READ = 0o044
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
    create: bool = False  # make a missing base_path (its parent must exist): else a typo would mount an empty store
    #: the embedded default's folder is storefs' own: made with its parents (not a config key)
    create_parents: bool = field(default=False, metadata={"internal": True})


@dataclass(frozen=True)
class S3ProviderConfig:
    name: str
    bucket: str
    endpoint_url: str | None = None
    region: str | None = None
    prefix: str = ""
    public_url_base: str | None = None
    access_key_id: str | None = field(default=None, repr=False)
    secret_access_key: str | None = field(default=None, repr=False, metadata=SECRET)
    session_token: str | None = field(default=None, repr=False, metadata=SECRET)
    path_style: bool = False
    presign_expiry: float = 3600.0
    multipart_threshold: int = 64 * MiB
    multipart_chunksize: int = 16 * MiB
    connect_timeout: float = 5.0
    read_timeout: float = 30.0
    max_attempts: int = 5
    #: seconds a read of uncached data may keep retrying before it fails with EIO
    read_deadline: float = 8.0
    #: a named profile of ~/.aws/config and ~/.aws/credentials for boto3's credential chain
    profile: str | None = None
    #: server-side encryption of every upload: AES256 or aws:kms (None: the bucket's default)
    sse: str | None = None
    #: the KMS key of sse aws:kms (None: the account's aws/s3 key)
    kms_key_id: str | None = None
    #: the storage class of every upload (None: the server's default, STANDARD on AWS)
    storage_class: str | None = None


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
    writeback_delay: float = 0.5
    uploaders: int = 16
    fsync: str = "local"
    retry_max_delay: float = 60.0
    chunk_size: int = 4 * MiB        # unit of ranged reads into the cache
    readahead: int = 16              # chunks fetched ahead of a sequential reader
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
    #: the IP address the /metrics endpoint listens on
    metrics_address: str = "127.0.0.1"
    #: what an upload does when another writer changed the key first: keep-both (a conflict copy) or overwrite
    conflicts: str = "keep-both"
    #: what the operator should hear about the config file itself (secrets others can read)
    warnings: tuple[str, ...] = field(default=(), compare=False)

    def provider_for(self, type_: str | None, size: int) -> str:
        """Routing is first match wins, so the order of rules in the file is the priority."""
        for rule in self.routing_rules:
            if rule.matches(type_, size):
                return rule.provider
        return self.default_provider


# ---- every mistake at once ------------------------------------------------------------


class ConfigErrors(ConfigError):
    """Several mistakes in one config: the first one's source, key and reason, and every one's line."""

    def __init__(self, found: list[ConfigError]) -> None:
        first = found[0]
        super().__init__(first.source, first.key, first.reason)
        self.errors = list(found)
        self.args = (f"{len(found)} errors:\n  " + "\n  ".join(str(e) for e in found),)


@dataclass
class _Found:
    """The mistakes a load found so far, and the keys whose ${VAR} is unset (their other mistakes follow from it)."""

    errors: list[ConfigError] = field(default_factory=list)
    unset: set[tuple[str, str]] = field(default_factory=set)


#: the load in progress (None outside one: the first mistake raises)
_FOUND: ContextVar[_Found | None] = ContextVar("storefs_config_errors", default=None)


def _report(error: ConfigError) -> bool:
    """Keep error for the end of the load; False outside a load (the caller raises it instead)."""
    found = _FOUND.get()
    if found is None:
        return False
    if (error.source, error.key) not in found.unset and not any(e is error for e in found.errors):
        found.errors.append(error)
    return True


def _attempt(build: Callable[[], T], fallback: T) -> T:
    """build(), or fallback once its mistake is kept, so that the rest of the file is checked too."""
    try:
        return build()
    except ConfigError as e:
        if not _report(e):
            raise
        return fallback


def _mistakes() -> int:
    """How many mistakes the load in progress has found: checks across keys skip a section that has one."""
    found = _FOUND.get()
    return len(found.errors) if found is not None else 0


@contextmanager
def _collecting() -> Iterator[_Found]:
    """Every mistake of a load is kept instead of stopping at the first; raised together at the end."""
    found = _Found()
    token = _FOUND.set(found)
    try:
        yield found
    except ConfigError as e:
        _report(e)
    finally:
        _FOUND.reset(token)
    if found.errors:
        raise found.errors[0] if len(found.errors) == 1 else ConfigErrors(found.errors)


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


def _ip(value: object, source: str, key: str) -> str:
    """An IPv4 or IPv6 address to listen on ("[::1]" as URLs write it is taken too)."""
    text = _str(value, source, key).strip()
    bare = text[1:-1] if text.startswith("[") and text.endswith("]") else text
    try:
        return str(ipaddress.ip_address(bare))
    except ValueError:
        raise ConfigError(source, key, f"expected an IP address such as 127.0.0.1, 0.0.0.0 or ::1, "
                                       f"got {text!r}") from None


#: sse: the server-side encryption S3 offers on a PUT, as x-amz-server-side-encryption names it
SSE_MODES = ("AES256", "aws:kms")
#: storage_class: the classes whose objects a GET reads at once
STORAGE_CLASSES = ("STANDARD", "REDUCED_REDUNDANCY", "STANDARD_IA", "ONEZONE_IA", "INTELLIGENT_TIERING",
                   "GLACIER_IR", "EXPRESS_ONEZONE")
#: classes whose objects need a restore before a GET: a mount could not read back what it wrote
ARCHIVE_CLASSES = ("GLACIER", "DEEP_ARCHIVE")


def _sse(value: object, source: str, key: str) -> str:
    text = _str(value, source, key).strip()
    for mode in SSE_MODES:
        if text.lower() == mode.lower():
            return mode
    raise ConfigError(source, key, f"expected {' or '.join(SSE_MODES)}, got {text!r}")


def _storage_class(value: object, source: str, key: str) -> str:
    text = _str(value, source, key).strip().upper()
    if text in ARCHIVE_CLASSES:
        raise ConfigError(source, key, f"{text} objects must be restored before they can be read, so the "
                                       "mount could not read back what it writes (use GLACIER_IR, or a "
                                       "lifecycle rule on the bucket)")
    if text not in STORAGE_CLASSES:
        raise ConfigError(source, key, f"expected one of {', '.join(STORAGE_CLASSES)}, got {_shown(value)}")
    return text


def _aws_file(var: str, default: str) -> str:
    return os.path.expanduser(os.environ.get(var) or default)


def aws_profiles() -> set[str]:
    """The profiles boto3 finds: [default] and [profile NAME] in ~/.aws/config, [NAME] in ~/.aws/credentials."""
    names: set[str] = set()
    for var, default, config_file in (("AWS_CONFIG_FILE", "~/.aws/config", True),
                                      ("AWS_SHARED_CREDENTIALS_FILE", "~/.aws/credentials", False)):
        parser = configparser.RawConfigParser()
        try:
            parser.read(_aws_file(var, default), encoding="utf-8")
        except (configparser.Error, UnicodeDecodeError) as e:
            log.debug("cannot read %s: %s", _aws_file(var, default), e)
            continue
        for section in parser.sections():
            if not config_file:
                names.add(section.strip())
            elif section.strip() == "default":
                names.add("default")
            elif section.startswith("profile ") or section.startswith("profile\t"):
                names.add(section[len("profile"):].strip())
    return names


def _profile(value: object, source: str, key: str) -> str:
    """A profile boto3 will find, checked now: a typo would otherwise surface as 'no credentials' at mount."""
    name = _str(value, source, key).strip()
    known = aws_profiles()
    if name not in known:
        files = f"{_aws_file('AWS_CONFIG_FILE', '~/.aws/config')} or " \
                f"{_aws_file('AWS_SHARED_CREDENTIALS_FILE', '~/.aws/credentials')}"
        raise ConfigError(source, key, f"no AWS profile {name!r} in {files} "
                                       f"(profiles: {', '.join(sorted(known)) or 'none'})")
    return name


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
                error = ConfigError(source, self._join(key, k), f"unknown key (known: {', '.join(known)})")
                if not _report(error):
                    raise error
        self.data, self.source, self.key = value, source, key

    @staticmethod
    def _join(key: str, name: object) -> str:
        return f"{key}.{name}" if key else str(name)

    def raw(self, name: str) -> Any:
        """The value as YAML gave it, for mappings whose keys are data (types, tenants)."""
        return self.data.get(name)

    def get(self, name: str, conv: Conv[T], default: Any = _REQUIRED) -> T:
        """The converted value; a mistake is kept (during a load) and reads as the default, or None if required."""
        value = self.data.get(name)
        # a required key's mistake reads as None: the load raises before that Config leaves it
        fallback: Any = None if default is self._REQUIRED else default
        if value is None:
            if default is self._REQUIRED:
                error = ConfigError(self.source, self._join(self.key, name), "missing (required)")
                if not _report(error):
                    raise error
            return cast(T, fallback)
        return _attempt(lambda: conv(value, self.source, self._join(self.key, name)), cast(T, fallback))


#: config `conflicts`: keep both versions (the default), or let the last writer win
CONFLICT_MODES = ("keep-both", "overwrite")

_TOP_KEYS = ("default_provider", "providers", "routing_rules", "layout", "max_file_size",
             "cache", "fuse", "log_level", "tenant", "metrics_port", "conflicts", "metrics_address")
_S3_KEYS = ("type", "bucket", "endpoint_url", "region", "prefix", "public_url_base",
            "access_key_id", "secret_access_key", "session_token", "path_style", "presign_expiry",
            "multipart_threshold", "multipart_chunksize", "connect_timeout", "read_timeout",
            "max_attempts", "read_deadline", "profile", "sse", "kms_key_id", "storage_class")


def _provider(name: object, spec: object, source: str) -> ProviderConfig:
    key = f"providers.{name}"
    if not isinstance(name, str) or not _PROVIDER_NAME_RE.fullmatch(name):
        raise ConfigError(source, key, "provider names are letters, digits, '_', '.' and '-'")
    if not isinstance(spec, dict):
        raise ConfigError(source, key, f"expected a mapping with 'type: local' or 'type: s3', got {_kind(spec)}")
    kind = spec.get("type")
    if kind == "local":
        m = _Map(spec, source, key, ("type", "base_path", "create"))
        return LocalProviderConfig(name, m.get("base_path", _path), create=m.get("create", _bool, False),
                                   create_parents=source == EMBEDDED)
    if kind != "s3":
        raise ConfigError(source, key + ".type", f"expected local or s3, got {_shown(kind)}")
    before = _mistakes()
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
        read_deadline=m.get("read_deadline", _bounded(parse_duration, 0), 8.0),
        profile=m.get("profile", _profile, None),
        sse=m.get("sse", _sse, None),
        kms_key_id=m.get("kms_key_id", _str, "") or None,
        storage_class=m.get("storage_class", _storage_class, None),
    )
    if _mistakes() > before:
        return s3  # a key with a mistake reads as unset: the checks across keys would only echo it
    if bool(s3.access_key_id) != bool(s3.secret_access_key) or (s3.session_token and not s3.access_key_id):
        raise ConfigError(source, key, "give access_key_id and secret_access_key together (and "
                                       "session_token only with them), or none for boto3's chain")
    if s3.profile and s3.access_key_id:
        raise ConfigError(source, key, "give either profile or access_key_id and secret_access_key, not both")
    if s3.kms_key_id and s3.sse != "aws:kms":
        raise ConfigError(source, key + ".kms_key_id", "a KMS key is used with sse: aws:kms only")
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


def _routing(value: object, source: str, providers: Collection[str],
             layout: LayoutConfig) -> tuple[RoutingRule, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise ConfigError(source, "routing_rules", f"expected a list of rules, got {_kind(value)}")
    rules = (_attempt(partial(_rule, i, item, source, providers, layout), None) for i, item in enumerate(value))
    return tuple(rule for rule in rules if rule is not None)


def _rule(i: int, item: object, source: str, providers: Collection[str], layout: LayoutConfig) -> RoutingRule:
    key = f"routing_rules[{i}]"
    m = _Map(item, source, key, ("match", "provider"), "a mapping like {match: {...}, provider: NAME}")
    provider = m.get("provider", _str)
    if provider is not None and provider not in providers:
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
    return rule


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
    before = _mistakes()
    m = _Map(value, source, "fuse", _FUSE_NAMES)
    fuse = FuseConfig(**{n: m.get(n, _FUSE_CONV.get(n, parse_duration), getattr(FuseConfig, n))
                         for n in _FUSE_NAMES})
    return fuse if _mistakes() > before else _check_fuse(fuse, source, "fuse")


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


def _default_provider(top: _Map, providers: Collection[str], source: str) -> str | None:
    """STOREFS_DEFAULT_PROVIDER, else the file's default_provider; None with one provider (that one)."""
    names = ", ".join(providers)
    env_default = os.environ.get("STOREFS_DEFAULT_PROVIDER")
    if env_default:
        if env_default not in providers:
            raise ConfigError(ENVIRONMENT, "STOREFS_DEFAULT_PROVIDER",
                              f"unknown provider {env_default!r} (providers in {source}: {names})")
        return env_default
    default = top.get("default_provider", _str, None)
    if default is None and len(providers) > 1:
        raise ConfigError(source, "default_provider", f"missing: required with more than one provider ({names})")
    if default is not None and default not in providers:
        raise ConfigError(source, "default_provider", f"unknown provider {default!r} (providers: {names})")
    return default


def _build(raw: dict[str, Any], source: str) -> Config:
    top = _Map(raw, source, "", _TOP_KEYS)
    spec = raw.get("providers")
    if not isinstance(spec, dict) or not spec:
        got = "an empty mapping" if isinstance(spec, dict) else _kind(spec)
        raise ConfigError(source, "providers", f"expected a mapping of provider names to settings, got {got}")
    built = {name: _attempt(partial(_provider, name, s, source), None) for name, s in spec.items()}
    providers = {name: p for name, p in built.items() if p is not None}
    # a provider with a mistake is still a name the default and the rules may use: `built` has them all
    default = _attempt(lambda: _default_provider(top, built, source), None)
    layout = _attempt(lambda: _layout(raw.get("layout"), source), LayoutConfig())
    return Config(
        source=source,
        default_provider=default or next(iter(built)),
        providers=providers,
        routing_rules=_attempt(lambda: _routing(raw.get("routing_rules"), source, built, layout), ()),
        layout=layout,
        max_file_size=_attempt(lambda: _limits(raw.get("max_file_size"), source, layout.types), SizeLimits()),
        cache=_attempt(lambda: _cache(raw.get("cache"), source), _cache(None, source)),
        fuse=_attempt(lambda: _fuse(raw.get("fuse"), source), FuseConfig()),
        log_level=top.get("log_level", _choice(*LOG_LEVELS, fold=str.upper), "INFO"),
        tenant=_attempt(lambda: _tenant(top.get("tenant", _str, None), source, layout), None),
        metrics_port=top.get("metrics_port", _bounded(_int, 0, 65535), 0),
        metrics_address=top.get("metrics_address", _ip, Config.metrics_address),
        conflicts=top.get("conflicts", _choice(*CONFLICT_MODES), CONFLICT_MODES[0]),
    )


def _apply_env(cfg: Config) -> Config:
    """STOREFS_* variables win over the file, so one file can serve several mounts."""
    cache: dict[str, Any] = {}
    top: dict[str, Any] = {}
    for var, (name, conv) in _ENV_OVERRIDES.items():
        value = os.environ.get(var)
        if value:
            (top if name == "log_level" else cache)[name] = _attempt(partial(conv, value, ENVIRONMENT, var),
                                                                     getattr(cfg.cache, name, cfg.log_level))
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
                error = ConfigError(source, key, f"environment variable {name} is not set "
                                                 f"(write ${{{name}:-default}} to give a fallback)")
                if not _report(error):
                    raise error
                found = _FOUND.get()
                if found is not None:
                    found.unset.add((source, key))
                return m.group(0)
            if got or default is None:
                return got or ""
            return default
        return _VAR_RE.sub(repl, value)
    if isinstance(value, dict):
        return {k: _substitute(v, source, f"{key}.{k}" if key else str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, source, f"{key}[{i}]") for i, v in enumerate(value)]
    return value


#: the config every user of the host shares, when neither -c, $STOREFS_CONFIG nor the user's own names one
SYSTEM_CONFIG = "/etc/storefs/storefs.yaml"
CONFIG_ENV = "STOREFS_CONFIG"
USER_CONFIG = ("storefs", "config.yaml")  # below $XDG_CONFIG_HOME


@dataclass(frozen=True)
class ConfigFile:
    """The config file a command uses (None: the embedded default) and the rule that chose it."""

    path: str | None
    rule: str


def find_config(explicit: str | None) -> ConfigFile:
    """-c, else $STOREFS_CONFIG, else $XDG_CONFIG_HOME/storefs/config.yaml, else /etc/storefs/storefs.yaml,
    else the embedded default: the first two must exist (they were asked for), the others are looked for."""
    if explicit:
        return ConfigFile(os.path.abspath(os.path.expanduser(explicit)), "-c")
    named = os.environ.get(CONFIG_ENV)
    if named:
        return ConfigFile(os.path.abspath(os.path.expanduser(named)), f"${CONFIG_ENV}")
    user = _xdg("XDG_CONFIG_HOME", "~/.config", *USER_CONFIG)
    xdg = "$XDG_CONFIG_HOME" if os.path.isabs(os.environ.get("XDG_CONFIG_HOME", "")) else "~/.config"
    if os.path.exists(user):
        return ConfigFile(user, f"{xdg}/{'/'.join(USER_CONFIG)}")
    if os.path.exists(SYSTEM_CONFIG):
        return ConfigFile(SYSTEM_CONFIG, f"the system config (no -c, no ${CONFIG_ENV}, no {user})")
    return ConfigFile(None, f"no config file (no -c, no ${CONFIG_ENV}, no {user}, no {SYSTEM_CONFIG})")


def _secret_names() -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(S3ProviderConfig) if f.metadata.get("secret"))


def literal_secrets(raw: dict[str, Any]) -> list[str]:
    """The keys of a config file as written that hold a secret itself rather than a ${VAR} naming one."""
    providers = raw.get("providers")
    found = []
    for name, spec in (providers.items() if isinstance(providers, dict) else ()):
        for key in _secret_names():
            value = spec.get(key) if isinstance(spec, dict) else None
            if value is not None and (not isinstance(value, str) or _VAR_RE.sub("", value).strip()):
                found.append(f"providers.{name}.{key}")
    return found


def exposed_secrets(path: str, raw: dict[str, Any]) -> str | None:
    """A warning when the file holds literal secrets other users can read (as ssh and rclone warn), else None."""
    keys = literal_secrets(raw)
    try:
        mode = os.stat(path).st_mode & 0o777
    except OSError:
        return None
    if not keys or not mode & OTHERS_READ:
        return None
    return (f"{path} holds secrets ({', '.join(keys)}) that other users can read (mode {mode:04o}): "
            f"chmod 600 {path}, or write ${{VAR}} in their place and keep the values in the environment "
            "(the systemd unit reads /etc/storefs/INSTANCE.env)")


def load_config(path: str | None) -> Config:
    """One entry point for the CLI and the tests, so every source is validated the same way."""
    warnings: list[str] = []
    with _collecting():
        if path is None:
            source = EMBEDDED
            raw: dict[str, Any] = {"providers": {"local": {
                "type": "local", "base_path": _xdg("XDG_DATA_HOME", "~/.local/share", "storefs", "data"),
                "create": True}}}
        else:
            source, written = path, _read_yaml(path)
            raw = _substitute(written, path, "")
            warning = exposed_secrets(path, written)
            warnings += [warning] if warning else []
        cfg = dataclasses.replace(_apply_env(_build(raw, source)), warnings=tuple(warnings))
    log.debug("config from %s: providers %s, default %s, cache %s", source,
              ", ".join(cfg.providers), cfg.default_provider, cfg.cache.dir)
    return cfg
