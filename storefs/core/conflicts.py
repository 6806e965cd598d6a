"""Names of conflict copies: where storefs puts its own bytes when another writer changed a key first.

`keep.png` becomes `keep.conflict-web1-20261202T120501Z.png` (HOST is this machine's short host
name, the time is UTC), `keep.conflict-web1-20261202T120501Z-2.png` if that name is taken too.
"""

from __future__ import annotations

import re
import socket
import time

from .. import keys
from ..cache.journal import OP_COPY, Entry
from .types import Found

#: what a conflict copy's name carries between the file's name and its extension
MARKER = "conflict"
#: a host name keeps these characters; every other one becomes '-'
_HOST_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")
#: the host part when the host name has nothing usable
UNKNOWN_HOST = "host"
#: the longest host part kept
HOST_MAX = 32
#: a file name's limit in bytes (a conflict copy shortens its stem to stay within it)
NAME_MAX_BYTES = 255
#: how many numbered names are tried after the first one is taken
MAX_NUMBERED = 99


def host_label(hostname: str | None = None) -> str:
    """This machine's short host name, safe in a file name (web1.example.com -> web1)."""
    short = (hostname if hostname is not None else socket.gethostname()).split(".", 1)[0]
    label = _HOST_UNSAFE.sub("-", short).strip("-")[:HOST_MAX]
    return label or UNKNOWN_HOST


def _fit(stem: str, tail: str) -> str:
    """stem + tail, the stem cut (never the tail) so that the name fits in NAME_MAX_BYTES."""
    room = NAME_MAX_BYTES - len(tail.encode("utf-8", "surrogateescape"))
    raw = stem.encode("utf-8", "surrogateescape")
    if len(raw) > room:
        stem = raw[:max(0, room)].decode("utf-8", "ignore")
    return stem + tail


def conflict_key(key: str, wall: float, host: str, n: int = 1) -> str:
    """The key of the n-th conflict copy of key made at wall-clock time wall (seconds) on host."""
    parent, name = keys.split(key)
    dot = name.rfind(".")
    stem, ext = (name[:dot], name[dot:]) if dot > 0 else (name, "")
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(wall))
    tail = f".{MARKER}-{host}-{stamp}" + (f"-{n}" if n > 1 else "") + ext
    return parent + _fit(stem, tail)


def candidates(key: str, wall: float, host: str) -> list[str]:
    """The conflict-copy keys to try, in order."""
    return [conflict_key(key, wall, host, n) for n in range(1, MAX_NUMBERED + 2)]


def known_etag(e: Entry | None, f: Found | None) -> str | None:
    """The version of key's object storefs knows (what a conditional change of it is based on): its
    row's etag, unless the row is a pending copy (whose etag is its source's), else what f was read as."""
    if e is not None and e.op != OP_COPY and e.etag:
        return e.etag
    return f.remote[1].etag if f is not None and f.remote is not None else None
