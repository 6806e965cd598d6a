"""Paths <-> keys and the layout rules: which names may go where, content types, size limits.

A FUSE path below the mount is the object key with a leading "/": "/t1/image/b1/a1/x.png" is
key "t1/image/b1/a1/x.png". The first ``len(levels)`` components are layout folders
(tenant / type / board / artifact by default) with checked names; files live deeper. Every
refusal is a LayoutError (EINVAL), NotPermitted (EPERM) or TooLarge (EFBIG) whose message names
the path and the reason, because the FUSE edge logs it as one line.
"""

from __future__ import annotations

import fnmatch
import functools
import logging
import mimetypes
import posixpath
import re

from .config import DEFAULT_NAME_PATTERN, LayoutConfig, SizeLimits
from .errors import LayoutError, NotPermitted

log = logging.getLogger(__name__)

NAME_MAX = 255
OCTET_STREAM = "application/octet-stream"

# Pinned so that the same file gets the same Content-Type whichever machine uploads it
# (Python's built-in table lacks several of these, and /etc/mime.types differs between hosts).
_ARTIFACT_TYPES = {
    ".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".webp": "image/webp",
    ".gif": "image/gif", ".avif": "image/avif", ".svg": "image/svg+xml",
    ".mp4": "video/mp4", ".webm": "video/webm", ".mov": "video/quicktime", ".mkv": "video/x-matroska",
    ".mp3": "audio/mpeg", ".wav": "audio/wav", ".flac": "audio/flac", ".ogg": "audio/ogg",
    ".m4a": "audio/mp4", ".json": "application/json", ".txt": "text/plain",
    ".safetensors": OCTET_STREAM, ".gguf": OCTET_STREAM, ".bin": OCTET_STREAM,
    ".pt": OCTET_STREAM, ".onnx": OCTET_STREAM,
}
# "x.tar.gz" guesses as (application/x-tar, gzip); without Content-Encoding the object is a gzip file.
_ENCODING_TYPES = {"gzip": "application/gzip", "bzip2": "application/x-bzip2",
                   "xz": "application/x-xz", "br": "application/x-brotli"}


def _mime_db() -> mimetypes.MimeTypes:
    """A private table: adding types to the global one would change other code's answers."""
    db = mimetypes.MimeTypes()  # built-in table only, no system files
    for ext, ctype in _ARTIFACT_TYPES.items():
        db.add_type(ctype, ext, strict=True)
    return db


def _shown(text: str) -> str:
    """Names with newlines or undecodable bytes must still log as one readable line."""
    return repr(text)[1:-1]


def _a(word: str) -> str:
    return f"an {word}" if word[0] in "aeiou" else f"a {word}"


#: names whose check is remembered: every listing checks each of its names again, and a folder's
#: names are the same from one listing to the next
NAME_CHECKS_KEPT = 16_384


@functools.lru_cache(maxsize=NAME_CHECKS_KEPT)
def _name_problem(name: str) -> str | None:
    if name in ("", ".", ".."):
        return "empty name" if not name else f"{name!r} is not a name"
    if "/" in name or "\0" in name:
        return "contains '/' or NUL"
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError:
        return "not valid UTF-8"
    # a printable name has no control character: only the rest is walked character by character
    bad = None if name.isprintable() else next((c for c in name if ord(c) < 0x20 or ord(c) == 0x7F), None)
    if bad is not None:
        return f"contains control character U+{ord(bad):04X} (breaks object keys for other tools)"
    if size > NAME_MAX:
        return f"name is {size} bytes long (at most {NAME_MAX})"
    return None


class Layout:
    """The configured key layout; stateless after construction, so safe to share between threads."""

    def __init__(self, layout: LayoutConfig, limits: SizeLimits) -> None:
        self.levels = layout.levels
        self.types = layout.types
        self.limits = limits
        self.content_types = layout.content_types
        self._pattern = re.compile(layout.name_pattern)
        self._rule = ("letters, digits and '._-', 1 to 128 characters, not starting with '.' or '-'"
                      if layout.name_pattern == DEFAULT_NAME_PATTERN else f"must match {layout.name_pattern}")
        self._type_index = self.levels.index("type") if "type" in self.levels else None
        self._mime = _mime_db()

    # ---- paths and keys ---------------------------------------------------------------

    @staticmethod
    def split(path: str) -> tuple[str, ...]:
        """Empty components are kept so that "a//b" fails check_name instead of passing as "a/b"."""
        path = path.strip("/")
        return tuple(path.split("/")) if path else ()

    @staticmethod
    def key(path: str) -> str:
        """Object keys have no leading "/"; the root is the empty key."""
        return path.strip("/")

    def type_of(self, path: str) -> str | None:
        """Routing and size limits depend on the type folder a path lives under."""
        parts = self.split(path)
        i = self._type_index
        return parts[i] if i is not None and len(parts) > i else None

    def content_type(self, path: str) -> str:
        """A CDN serves objects by their Content-Type, so it follows the file name."""
        # a leading "/" keeps guess_type from reading "data:x.png" as a URL scheme
        ctype, encoding = self._mime.guess_type("/" + posixpath.basename(path), strict=False)
        if encoding:
            return _ENCODING_TYPES.get(encoding, OCTET_STREAM)
        return ctype or OCTET_STREAM

    def max_size(self, path: str) -> int:
        """Limits are per type, so a huge video can be fine where a huge image is a mistake."""
        return self.limits.limit_for(self.type_of(path))

    # ---- checks -------------------------------------------------------------------

    def check_content_type(self, path: str) -> None:
        """A type folder holds only its kind of file (layout.content_types), like the web app.

        Names inside the artifact that start with a dot (rsync's .name.XXXXXX temporaries,
        .git/) are not checked: the final name is, when the file is renamed to it.
        """
        patterns = self.content_types.get(self.type_of(path) or "")
        if not patterns:
            return
        parts = self.split(path)
        if any(p.startswith(".") for p in parts[len(self.levels):]):
            return
        ctype = self.content_type(path)
        if not any(fnmatch.fnmatchcase(ctype, pat) for pat in patterns):
            raise LayoutError(f"{_shown(path)}: content type {ctype} is not allowed in a "
                              f"{self.type_of(path)} folder (allowed: {', '.join(patterns)})")

    def check_name(self, component: str) -> None:
        """Any name storefs accepts must also be a usable key segment for s3fs, rclone and CDNs."""
        problem = _name_problem(component)
        if problem:
            raise LayoutError(f"{component!r}: {problem}")

    def check_dir(self, path: str) -> None:
        """mkdir is where a bad tenant, type, board or artifact name is stopped."""
        parts = self.split(path)
        if not parts:
            raise LayoutError("/: the root folder can not be created")
        self._check_parts(path, parts)

    def check_file(self, path: str) -> None:
        """Files at tenant/type/board level would be invisible to the pipelines reading the layout."""
        parts = self.split(path)
        depth = len(parts)
        if depth <= len(self.levels):
            parent = f"directly in {_a(self.levels[depth - 2])} folder" if depth > 1 else "in the root folder"
            raise NotPermitted(f"{_shown(path)}: files live {self._where(len(self.levels) + 1)} "
                               f"({'/'.join(self.levels)}/...), not at {self._where(depth)} ({parent})")
        self._check_parts(path, parts)

    def check_rename(self, old: str, new: str, is_dir: bool) -> None:
        """A folder keeps its level when it moves, or its files would end up at the wrong depth."""
        if not is_dir:
            self.check_file(new)
            return
        self.check_dir(new)
        n, d_old, d_new = len(self.levels), len(self.split(old)), len(self.split(new))
        if d_old != d_new and not (d_old >= n and d_new >= n):
            raise NotPermitted(f"{_shown(old)} -> {_shown(new)}: a folder at {self._where(d_old)} can not "
                               f"move to {self._where(d_new)} (its contents would end up at the wrong level)")

    def _where(self, depth: int) -> str:
        if depth == 0:
            return "the root"
        if depth <= len(self.levels):
            return f"{self.levels[depth - 1]} level"
        return f"inside {_a(self.levels[-1])} folder"

    def _check_parts(self, path: str, parts: tuple[str, ...]) -> None:
        for i, name in enumerate(parts):
            problem = _name_problem(name)
            if problem:
                raise LayoutError(f"{_shown(path)}: {name!r}: {problem}")
            if i >= len(self.levels):
                continue
            if i == self._type_index:
                if name not in self.types:
                    raise LayoutError(f"{_shown(path)}: unknown type {name!r} (allowed: {', '.join(self.types)})")
            elif not self._pattern.fullmatch(name):
                raise LayoutError(f"{_shown(path)}: bad {self.levels[i]} name {name!r}: {self._rule}")
