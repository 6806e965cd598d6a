"""The kernel's read-ahead for one FUSE mount, which it starts at 128 KiB.

With 128 KiB the kernel splits a sequential reader's 1 MiB reads into eight requests
that it sends one after the other, so a read of a cached file waits on the daemon eight
times per MiB and never has more than one request in flight. Raising the mount's
read-ahead (its backing device's `read_ahead_kb` in sysfs) lets the kernel ask for up to
that much ahead in requests of up to `max_read` (1008 KiB), several at a time. Only root
may write it; other users keep the kernel's default, and say so once in the log.
"""

from __future__ import annotations

import logging
import os

from .control import unescape_mount_field

log = logging.getLogger(__name__)

MOUNTINFO = "/proc/self/mountinfo"
SYSFS_BDI = "/sys/class/bdi"


def mount_device(mountpoint: str, mountinfo: str = MOUNTINFO) -> str | None:
    """The "major:minor" of the FUSE mount on top at mountpoint, or None if there is none."""
    found = None
    try:
        with open(mountinfo, encoding="utf-8", errors="surrogateescape") as f:
            for line in f:
                fields = line.split()
                try:
                    fstype = fields[fields.index("-", 6) + 1]
                except (ValueError, IndexError):
                    continue
                if unescape_mount_field(fields[4]) == mountpoint and fstype.startswith("fuse"):
                    found = fields[2]  # later lines are mounts stacked on top of earlier ones
    except OSError as e:
        log.debug("cannot read %s: %s", mountinfo, e)
    return found


def set_read_ahead(mountpoint: str, size: int, sysfs: str = SYSFS_BDI,
                   mountinfo: str = MOUNTINFO) -> bool:
    """Set the mount's read-ahead to size bytes (rounded up to KiB); False if it stays as it was."""
    if size <= 0:
        return False
    dev = mount_device(mountpoint, mountinfo)
    if dev is None:
        log.info("read-ahead of %s left as it is: no FUSE mount there in %s", mountpoint, mountinfo)
        return False
    path = os.path.join(sysfs, dev, "read_ahead_kb")
    kib = (size + 1023) // 1024
    try:
        with open(path, "w", encoding="ascii") as f:
            f.write(f"{kib}\n")
    except OSError as e:
        log.info("read-ahead of %s left at the kernel's default: cannot write %s (%s); "
                 "as root storefs sets it to %d KiB (fuse.read_ahead)", mountpoint, path, e.strerror or e, kib)
        return False
    log.debug("read-ahead of %s set to %d KiB (%s)", mountpoint, kib, path)
    return True
