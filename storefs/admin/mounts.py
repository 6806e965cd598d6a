"""Running mounts of the same store, found by their control sockets, asked what they have not uploaded yet.

A cleanup must not delete an artifact a mount still has changes for: the mount would upload
them afterwards (a half artifact reappears) or lose track of what it thought was there.
"""

from __future__ import annotations

import glob
import logging
import os
from dataclasses import dataclass

from ..config import Config, LocalProviderConfig, S3ProviderConfig, load_config
from ..control import ask, private_socket_folders
from ..errors import ConfigError
from .common import AdminError

log = logging.getLogger(__name__)

@dataclass
class RunningMount:
    """What a daemon's status answer says about it."""

    mountpoint: str
    pid: int
    config: str
    cache_dir: str
    socket: str


def socket_dirs() -> list[str]:
    """Where this user's daemons put their sockets (storefs.control.socket_folders), the ones that exist.

    A folder that is not private (another owner, a link, a wide mode) is refused, not skipped:
    a cleanup that could not ask a mount what it has pending must not delete anything.
    """
    found, unsafe = private_socket_folders()
    if unsafe is not None:
        raise AdminError(f"{unsafe}; nothing deleted")
    return found


def running_mounts() -> list[RunningMount]:
    """Every daemon of this user that answers on its socket (stale sockets are skipped)."""
    found = []
    for folder in socket_dirs():
        for path in sorted(glob.glob(os.path.join(folder, "*.sock"))):
            try:
                st = ask(path, {"cmd": "status"})
            except (OSError, ValueError) as e:
                log.debug("no daemon at %s: %s", path, e)
                continue
            found.append(RunningMount(st.get("mountpoint", "?"), int(st.get("pid", 0)), st.get("config", ""),
                                      st.get("cache_dir", ""), path))
    return found


def storage_identity(pcfg: object) -> tuple:
    """What makes two provider sections the same storage: the folder, or endpoint + bucket + prefix."""
    if isinstance(pcfg, LocalProviderConfig):
        return ("local", os.path.realpath(pcfg.base_path))
    if isinstance(pcfg, S3ProviderConfig):
        return ("s3", (pcfg.endpoint_url or "").rstrip("/"), pcfg.bucket, (pcfg.prefix or "").strip("/"))
    return ("?", repr(pcfg))


def shares_storage(cfg: Config, mount: RunningMount) -> bool:
    """Whether the mount fronts any of cfg's providers; when its config cannot be read, assume it does."""
    if mount.cache_dir and os.path.realpath(mount.cache_dir) == os.path.realpath(cfg.cache.dir):
        return True
    try:
        theirs = load_config(None if mount.config.startswith("<") else mount.config)
    except (ConfigError, OSError) as e:
        log.debug("config %s of %s unreadable (%s): treating it as the same store", mount.config,
                  mount.mountpoint, e)
        return True
    ours = {storage_identity(p) for p in cfg.providers.values()}
    return any(storage_identity(p) in ours for p in theirs.providers.values())


def pending_keys(cfg: Config) -> dict[str, set[str]]:
    """Keys with changes not yet uploaded, per mountpoint, of every running mount of this store.

    A mount that does not answer the question (an older storefs) makes this fail: deleting
    under it blindly could drop its pending work.
    """
    out: dict[str, set[str]] = {}
    for m in running_mounts():
        if not shares_storage(cfg, m):
            continue
        try:
            answer = ask(m.socket, {"cmd": "pending"})
        except (OSError, ValueError) as e:
            raise AdminError(f"the storefs mount at {m.mountpoint} (pid {m.pid}) did not say what it has pending "
                             f"({e}); nothing deleted") from None
        if "keys" not in answer:
            raise AdminError(f"the storefs mount at {m.mountpoint} (pid {m.pid}) cannot list its pending changes "
                             f"({answer.get('error', 'no answer')}; an older storefs?): unmount it first; "
                             "nothing deleted")
        out[m.mountpoint] = set(answer["keys"])
    return out
