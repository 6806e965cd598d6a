"""Where the daemon's log lines go, in the form the host expects.

A log file is created 0600 (it names every file touched), appended to, and reopened on
SIGHUP, so logrotate can move it away without copytruncate. Under systemd (stderr is the
stream $JOURNAL_STREAM names) or with `--log-file -`, lines go to stderr without a
timestamp of their own (the journal adds one) and with the `<N>` syslog priority prefix
of sd-daemon(3), so journald keeps each line's priority. Otherwise stderr gets plain
timestamped lines, as a terminal wants.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping
from typing import TextIO

log = logging.getLogger(__name__)

LOG_FILE_MODE = 0o600
#: `--log-file -`: stderr, in journald's form
STDERR = "-"
FILE_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
#: the journal (or the supervisor reading stderr) times each line itself
PREFIXED_FORMAT = "%(levelname)s %(name)s: %(message)s"
#: syslog priorities (sd-daemon(3)): logging's levels, highest first, and the priority from there up
PRIORITIES = ((logging.CRITICAL, 2), (logging.ERROR, 3), (logging.WARNING, 4), (logging.INFO, 6))
DEBUG_PRIORITY = 7
#: libraries whose INFO lines would drown the daemon's own
QUIET_LIBRARIES = ("mfusepy", "botocore", "boto3", "urllib3", "s3transfer")
JOURNAL_STREAM = "JOURNAL_STREAM"


def open_log_file(path: str) -> int:
    """The log file, appended to, readable by the daemon's user only (it names every file touched)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, LOG_FILE_MODE)
    st = os.fstat(fd)
    if st.st_uid == os.geteuid() and st.st_mode & 0o777 != LOG_FILE_MODE:
        os.fchmod(fd, LOG_FILE_MODE)
    return fd


def stderr_is_journal(environ: Mapping[str, str] | None = None, fd: int = 2) -> bool:
    """Whether fd is the journal stream systemd gave the service ($JOURNAL_STREAM is its device:inode).

    The variable alone is not enough: a child whose stderr was redirected inherits it too."""
    value = (os.environ if environ is None else environ).get(JOURNAL_STREAM, "")
    dev, sep, ino = value.partition(":")
    try:
        st = os.fstat(fd)
        return bool(sep) and (st.st_dev, st.st_ino) == (int(dev), int(ino))
    except (OSError, ValueError):
        return False


def priority(levelno: int) -> int:
    """The syslog priority of a logging level (DEBUG and anything below INFO: 7)."""
    return next((prio for level, prio in PRIORITIES if levelno >= level), DEBUG_PRIORITY)


class PriorityFormatter(logging.Formatter):
    """Each line of a record (a traceback's too) starts with <N>, which journald reads as its priority."""

    def __init__(self) -> None:
        super().__init__(PREFIXED_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{priority(record.levelno)}>"
        return "\n".join(prefix + line for line in super().format(record).split("\n"))


def _same_file(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


class ReopeningFileHandler(logging.StreamHandler):
    """Appends to a log file made 0600; reopen() starts a fresh file where logrotate moved the old one away."""

    def __init__(self, path: str) -> None:
        self.path = path
        super().__init__(self._open())

    def _open(self) -> TextIO:
        # names from the kernel may hold undecodable bytes (surrogates): a log line must never fail
        return os.fdopen(open_log_file(self.path), "a", encoding="utf-8", errors="backslashreplace")

    def reopen(self) -> None:
        """Open the path again; stdout and stderr follow when they were the old file (a background
        daemon's are, so libfuse's messages and a crash's traceback land in the new file too)."""
        new = self._open()
        old = self.setStream(new)  # under the handler's lock: no record is half written into the old file
        if old is None:
            return
        try:
            was = os.fstat(old.fileno())
            for fd in (1, 2):
                try:
                    if _same_file(os.fstat(fd), was):
                        os.dup2(new.fileno(), fd, inheritable=True)
                except OSError:
                    continue  # a closed stdout follows nothing
        finally:
            old.close()

    def close(self) -> None:
        self.acquire()
        try:
            if self.stream is not None:
                self.stream.close()
                self.stream = None
        finally:
            self.release()
        super().close()


def handler_for(target: str | None, environ: Mapping[str, str] | None = None) -> logging.Handler:
    """The handler for a --log-file value: a path, STDERR (prefixed), or None (stderr, prefixed under systemd)."""
    if target and target != STDERR:
        handler: logging.Handler = ReopeningFileHandler(target)
        handler.setFormatter(logging.Formatter(FILE_FORMAT))
        return handler
    sys.stderr.reconfigure(errors="backslashreplace")  # type: ignore[union-attr]
    handler = logging.StreamHandler(sys.stderr)
    prefixed = target == STDERR or stderr_is_journal(environ)
    handler.setFormatter(PriorityFormatter() if prefixed else logging.Formatter(FILE_FORMAT))
    return handler


def setup_logging(level: str, target: str | None) -> None:
    """Send the process's log lines to target (see handler_for) at level; quiet the chatty libraries."""
    root = logging.getLogger()
    root.handlers[:] = [handler_for(target)]  # once per process: the CLI's or the daemon's setup
    root.setLevel(getattr(logging, level.upper(), logging.INFO))
    for noisy in QUIET_LIBRARIES:
        logging.getLogger(noisy).setLevel(logging.WARNING)


def reopen() -> list[str]:
    """Reopen every log file of the root logger (SIGHUP, after logrotate); the paths reopened."""
    done = []
    for handler in logging.getLogger().handlers:
        if isinstance(handler, ReopeningFileHandler):
            try:
                handler.reopen()
            except OSError as e:  # a folder gone, a full disk: keep writing where the lines went so far
                log.error("cannot reopen the log file %s: %s; still writing the file opened before",
                          handler.path, e.strerror or e)
                continue
            done.append(handler.path)
    return done


def log_target(log_file: str | None, cache_dir: str, foreground: bool) -> str | None:
    """Where a mount logs: --log-file, else stderr in the foreground or under systemd's journal,
    else CACHE_DIR/storefs.log (a background daemon has no terminal)."""
    if log_file:
        return log_file
    if foreground or stderr_is_journal():
        return None
    return os.path.join(cache_dir, "storefs.log")
