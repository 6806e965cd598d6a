"""sd_notify(3) without libsystemd: tell the service manager (a `Type=notify` unit) what the mount is doing.

READY=1 once the mount answers, STATUS=... while it uploads at stop, STOPPING=1 when it
goes. The message is one datagram to the unix socket $NOTIFY_SOCKET names (a leading '@'
is the abstract namespace); without the variable, as outside systemd, nothing is sent.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping

log = logging.getLogger(__name__)

NOTIFY_SOCKET = "NOTIFY_SOCKET"


def _address(value: str) -> str | None:
    """The socket address of a $NOTIFY_SOCKET value; None for kinds storefs does not speak (vsock)."""
    if value.startswith("@"):
        return "\0" + value[1:]
    if value.startswith("/"):
        return value
    return None


def notify(*fields: str, environ: Mapping[str, str] | None = None) -> bool:
    """Send fields ("READY=1", "STATUS=...") as one message; whether a service manager was told."""
    value = (os.environ if environ is None else environ).get(NOTIFY_SOCKET, "")
    address = _address(value) if value else None
    if address is None:
        if value:
            log.debug("%s=%s: not a unix socket, not notified", NOTIFY_SOCKET, value)
        return False
    message = "\n".join(fields).encode("utf-8", "backslashreplace")
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.sendto(message, address)
    except OSError as e:
        log.warning("cannot notify the service manager through %s: %s", value, e.strerror or e)
        return False
    return True


def status_field(text: str) -> str:
    """A STATUS= field: one line, whatever text holds (the protocol is newline-separated)."""
    return "STATUS=" + " ".join(text.split())


def ready(status: str, main_pid: int | None = None) -> bool:
    """The mount is usable; main_pid names the daemon when the notifying process is its parent."""
    fields = ["READY=1", status_field(status)]
    if main_pid is not None:
        fields.append(f"MAINPID={main_pid}")
    return notify(*fields)


def status(text: str) -> bool:
    """What the daemon is doing, shown by `systemctl status`."""
    return notify(status_field(text))


def stopping(text: str) -> bool:
    """The daemon is going away (its final uploads may still run)."""
    return notify("STOPPING=1", status_field(text))
