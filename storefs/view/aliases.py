"""A file beside a folder of the same name, at the providers' edge: the mount's alias key becomes the object's key.

Other S3 tools can write both 'a/h1' and 'a/h1/x.png'. The merged listing (merge.show_clashes) shows
the folder as 'h1' and the file as 'h1.storefs-file' (keys.FILE_SUFFIX); the core then knows the file
by that alias key in every part (journal rows, open files, uploads). AliasedProvider wraps a provider
so that each request about a file names the object's real key ('a/h1'), and each answer names the alias
again: the core never spells the translation out, and a read, stat, overwrite, copy or delete of
'h1.storefs-file' reads or writes the object 'a/h1'.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, cast

from .. import keys
from ..errors import StorefsError
from ..providers.base import ObjectInfo, ObjectMeta, Provider

log = logging.getLogger(__name__)


def _named(info: ObjectInfo, key: str) -> ObjectInfo:
    """info under the mount's key (its alias where key is one), as the core asked for it."""
    return info if info.key == key else dataclasses.replace(info, key=key)


class AliasedProvider:
    """A provider whose file keys may be aliases ('a/h1.storefs-file' is the object 'a/h1').

    Folder prefixes pass unchanged (no folder is ever named so: the door refuses the name);
    everything that is not a key (flags, counters, the backend's own attributes) is the
    wrapped provider's, read and written through.
    """

    def __init__(self, inner: Provider) -> None:
        object.__setattr__(self, "_inner", inner)

    def __getattr__(self, attr: str) -> Any:
        return getattr(self._inner, attr)

    def __setattr__(self, attr: str, value: Any) -> None:
        setattr(self._inner, attr, value)

    @property
    def inner(self) -> Provider:
        """The wrapped provider."""
        return cast(Provider, self._inner)

    def head(self, key: str) -> ObjectInfo:
        return _named(self.inner.head(keys.object_key(key)), key)

    def head_many(self, many: Sequence[str]) -> Iterator[tuple[str, ObjectInfo | StorefsError]]:
        """head_many of the objects' keys, each answer named by the key it was asked for (in order)."""
        asked = list(many)
        for key, (_, found) in zip(asked, self.inner.head_many([keys.object_key(k) for k in asked]), strict=True):
            yield key, _named(found, key) if isinstance(found, ObjectInfo) else found

    def get_range(self, key: str, offset: int, length: int) -> bytes:
        return self.inner.get_range(keys.object_key(key), offset, length)

    def get_range_into(self, key: str, offset: int, length: int, fd: int) -> int:
        return self.inner.get_range_into(keys.object_key(key), offset, length, fd)

    def read_stream(self, key: str, *args: Any, **kwargs: Any) -> Iterator[bytes]:
        return self.inner.read_stream(keys.object_key(key), *args, **kwargs)

    def put_file(self, key: str, src_path: str, meta: ObjectMeta, **conditions: Any) -> ObjectInfo:
        return _named(self.inner.put_file(keys.object_key(key), src_path, meta, **conditions), key)

    def set_meta(self, key: str, meta: ObjectMeta) -> ObjectInfo:
        return _named(self.inner.set_meta(keys.object_key(key), meta), key)

    def copy(self, src: str, dst: str, meta: ObjectMeta | None = None, **conditions: Any) -> ObjectInfo:
        return _named(self.inner.copy(keys.object_key(src), keys.object_key(dst), meta, **conditions), dst)

    def delete(self, key: str, **conditions: Any) -> None:
        self.inner.delete(keys.object_key(key), **conditions)

    def delete_many(self, many: Iterable[str]) -> None:
        self.inner.delete_many(keys.object_key(k) for k in many)

    def url(self, key: str, *args: Any, **kwargs: Any) -> str | None:
        """The object's URL, with the provider's own default expiry unless one is given."""
        return self.inner.url(keys.object_key(key), *args, **kwargs)

    def check_key(self, key: str) -> None:
        """The object's key is what the provider must store (the alias's suffix is never sent)."""
        self.inner.check_key(keys.object_key(key))

    def check_meta(self, key: str, meta: ObjectMeta) -> None:
        self.inner.check_meta(keys.object_key(key), meta)


def with_aliases(providers: dict[str, Provider]) -> dict[str, Provider]:
    """The providers as the core and the view use them: each file key may be an alias."""
    return {name: cast(Provider, AliasedProvider(p)) for name, p in providers.items()}
