"""The systemd unit storefs@.service: one mount per instance, written with this host's real paths.

`storefs install-helper --systemd` writes it (into /etc/systemd/system by default) with
ExecStart naming the storefs that runs the command, as mount.fuse.storefs does: at boot no
virtualenv or pyenv shim is on PATH. scripts/storefs@.service is the same text with
/usr/local/bin/storefs, for installs by hand.
"""

from __future__ import annotations

import os
import shutil
import sys

UNIT_NAME = "storefs@.service"
UNIT_DIR = "/etc/systemd/system"
UNIT_MODE = 0o644
#: what scripts/storefs@.service names, for installs by hand
DEFAULT_STOREFS = "/usr/local/bin/storefs"
DEFAULT_FUSERMOUNT = "/bin/fusermount3"
DEFAULT_MKDIR = "/bin/mkdir"

UNIT = """\
# storefs mount as a systemd service, one instance per mountpoint.
#
# The instance name is the escaped mountpoint, the config is /etc/storefs/INSTANCE.yaml and
# secrets (AWS_ACCESS_KEY_ID=..., AWS_SECRET_ACCESS_KEY=...) may go in /etc/storefs/INSTANCE.env (0600):
#   sudo storefs install-helper --systemd                # writes this unit with this host's storefs path
#   cp storefs.yaml /etc/storefs/mnt-store.yaml          # systemd-escape --path /mnt/store -> mnt-store
#   systemctl daemon-reload && systemctl enable --now storefs@mnt-store
#
# Type=notify: the daemon runs in the foreground (-f), logs to the journal with each line's
# priority, and tells systemd READY=1 once the mount is usable. Stop uploads everything
# pending first (`storefs unmount`, up to 4 minutes, shown in `systemctl status`), then
# unmounts; if that does not finish, systemd's SIGTERM makes the daemon unmount and keep
# uploading for 30 s more. What is still not uploaded stays in the cache journal and goes up
# at the next start. `systemctl kill -s HUP` reopens a log file given with --log-file.
#
# Sharing: as root (this unit), the mount serves only root unless it has allow_other. Put the
# mount options in the config's fuse: section (fuse: {{allow_other: true, uid: www-data, umask: "022"}})
# or add them to ExecStart, e.g. for a read-only mount every user can read:
#   ExecStart={storefs} mount -f -c /etc/storefs/%i.yaml -o allow_other,ro %f
# The control socket lives in /run/storefs (0700, created and checked by storefs: do not set
# RuntimeDirectory=storefs, systemd would make it 0755 and remove it when one instance stops).

[Unit]
Description=storefs mount of %f
Wants=network-online.target
After=network-online.target
Before=remote-fs.target

[Service]
Type=notify
NotifyAccess=main
EnvironmentFile=-/etc/storefs/%i.env
# a daemon that died leaves a dead mount ("Transport endpoint is not connected"): detach it first
ExecStartPre=-{fusermount} -u -z %f
ExecStartPre={mkdir} -p %f
ExecStart={storefs} mount -f -c /etc/storefs/%i.yaml %f
ExecStop={storefs} unmount --timeout 240 --force %f
ExecStopPost=-{fusermount} -u -z %f
TimeoutStartSec=90
TimeoutStopSec=300
KillMode=mixed
Restart=on-failure
RestartSec=5

[Install]
WantedBy=remote-fs.target
"""


def unit_word(path: str) -> str:
    """A path as one word of a unit's command line: '%' doubled (a specifier otherwise), quoted if it has blanks."""
    word = path.replace("%", "%%")
    if any(c.isspace() for c in word) or '"' in word or "\\" in word:
        word = '"' + word.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return word


def render(storefs: str = DEFAULT_STOREFS, fusermount: str = DEFAULT_FUSERMOUNT, mkdir: str = DEFAULT_MKDIR) -> str:
    """The unit's text with these programs (storefs may be several words: python -m storefs)."""
    return UNIT.format(storefs=storefs, fusermount=fusermount, mkdir=mkdir)


def storefs_command() -> str:
    """How systemd starts this storefs: the console script beside this Python, else this Python with -m."""
    script = os.path.join(os.path.dirname(sys.executable), "storefs")
    if os.path.isfile(script) and os.access(script, os.X_OK):
        return unit_word(os.path.abspath(script))
    return f"{unit_word(sys.executable)} -m storefs"


def host_unit() -> str:
    """The unit for this host: its storefs, fusermount3 and mkdir, where they really are."""
    return render(storefs_command(), unit_word(shutil.which("fusermount3") or DEFAULT_FUSERMOUNT),
                  unit_word(shutil.which("mkdir") or DEFAULT_MKDIR))


def install(directory: str = UNIT_DIR, remove: bool = False) -> list[str]:
    """Write (or remove) storefs@.service in directory; what was done, in words."""
    path = os.path.join(directory, UNIT_NAME)
    if remove:
        if not os.path.lexists(path):
            return [f"no {UNIT_NAME} in {directory}"]
        os.unlink(path)
        return [f"removed {path} (systemctl daemon-reload to forget it)"]
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, UNIT_MODE)
    with os.fdopen(fd, "w") as f:
        f.write(host_unit())
    os.chmod(tmp, UNIT_MODE)
    os.replace(tmp, path)  # a unit systemd reads meanwhile is the old one or the new one, never half
    return [f"installed {path} (ExecStart={storefs_command()} mount -f ...)",
            "next: systemctl daemon-reload && systemctl enable --now storefs@$(systemd-escape --path MOUNTPOINT)"]
