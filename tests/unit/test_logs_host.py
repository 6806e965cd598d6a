"""Logs that fit the host: journald's priority prefix, the log file made 0600 and reopened after logrotate."""

from __future__ import annotations

import logging
import os
import re
import stat
import sys

import pytest

from storefs import logs

TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d")


def record(level: int, msg: str, exc: bool = False) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            raise ValueError("boom")
        except ValueError:
            exc_info = sys.exc_info()
    return logging.LogRecord("storefs.daemon", level, __file__, 1, msg, (), exc_info)


def journal_env(fd: int) -> dict[str, str]:
    st = os.fstat(fd)
    return {logs.JOURNAL_STREAM: f"{st.st_dev}:{st.st_ino}"}


@pytest.fixture
def root_logging():
    """The root logger's handlers and level as they were, whatever the test sets up."""
    root = logging.getLogger()
    saved, level = root.handlers[:], root.level
    yield root
    for h in root.handlers:
        if h not in saved:
            h.close()
    root.handlers[:] = saved
    root.setLevel(level)


@pytest.mark.parametrize(("level", "prefix"), [(logging.CRITICAL, "<2>"), (logging.ERROR, "<3>"),
                                               (logging.WARNING, "<4>"), (logging.INFO, "<6>"),
                                               (logging.DEBUG, "<7>")])
def test_each_level_gets_its_syslog_priority_and_no_timestamp(level, prefix):
    line = logs.PriorityFormatter().format(record(level, "cannot upload a/b"))
    assert line == f"{prefix}{logging.getLevelName(level)} storefs.daemon: cannot upload a/b"
    assert not TIMESTAMP.search(line)


def test_every_line_of_a_traceback_keeps_the_priority():
    text = logs.PriorityFormatter().format(record(logging.ERROR, "daemon crashed\nsecond line", exc=True))
    lines = text.split("\n")
    assert len(lines) > 3 and "ValueError: boom" in lines[-1]
    assert all(line.startswith("<3>") for line in lines), text


def test_stderr_is_the_journal_only_when_journal_stream_names_it(tmp_path):
    with open(tmp_path / "stream", "w") as f, open(tmp_path / "other", "w") as g:
        env = journal_env(f.fileno())
        assert logs.stderr_is_journal(env, f.fileno())
        assert not logs.stderr_is_journal(env, g.fileno()), "a redirected child inherits the variable too"
        assert not logs.stderr_is_journal({}, f.fileno())
        assert not logs.stderr_is_journal({logs.JOURNAL_STREAM: "garbage"}, f.fileno())
        assert not logs.stderr_is_journal({logs.JOURNAL_STREAM: "1:x"}, f.fileno())


def test_stderr_handler_is_prefixed_under_the_journal_or_with_dash():
    prefixed = logs.handler_for(logs.STDERR, {})
    assert isinstance(prefixed.formatter, logs.PriorityFormatter)
    plain = logs.handler_for(None, {})
    assert not isinstance(plain.formatter, logs.PriorityFormatter)
    assert TIMESTAMP.search(plain.format(record(logging.INFO, "x")))
    journal = logs.handler_for(None, journal_env(2))
    assert isinstance(journal.formatter, logs.PriorityFormatter)


def test_where_a_mount_logs(tmp_path, monkeypatch):
    monkeypatch.delenv(logs.JOURNAL_STREAM, raising=False)
    assert logs.log_target("/var/log/s.log", "/c", foreground=False) == "/var/log/s.log"
    assert logs.log_target(logs.STDERR, "/c", foreground=False) == logs.STDERR
    assert logs.log_target(None, "/c", foreground=True) is None
    assert logs.log_target(None, "/c", foreground=False) == "/c/storefs.log"
    monkeypatch.setenv(logs.JOURNAL_STREAM, journal_env(2)[logs.JOURNAL_STREAM])
    assert logs.log_target(None, "/c", foreground=False) is None, "under systemd a background daemon keeps stderr"


def test_log_file_is_created_0600_and_an_existing_one_appended_to(tmp_path):
    path = tmp_path / "storefs.log"
    old = os.umask(0)
    try:
        handler = logs.ReopeningFileHandler(str(path))
    finally:
        os.umask(old)
    handler.setFormatter(logging.Formatter("%(message)s"))
    handler.emit(record(logging.INFO, "first"))
    handler.close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    handler = logs.ReopeningFileHandler(str(path))
    handler.setFormatter(logging.Formatter("%(message)s"))
    handler.emit(record(logging.INFO, "second"))
    handler.close()
    assert path.read_text() == "first\nsecond\n"


def test_reopen_after_logrotate_moved_the_file(tmp_path, root_logging):
    path = tmp_path / "storefs.log"
    logs.setup_logging("INFO", str(path))
    log = logging.getLogger("storefs.test")
    log.info("before rotation")
    os.rename(path, tmp_path / "storefs.log.1")
    log.info("after the move, before HUP")  # still the old file: logrotate's window before its postrotate
    assert logs.reopen() == [str(path)]
    log.info("after HUP")
    log.warning("bad name \udcff")  # undecodable bytes from the kernel never fail a line
    rotated = (tmp_path / "storefs.log.1").read_text()
    fresh = path.read_text()
    assert "before rotation" in rotated and "before HUP" in rotated and "after HUP" not in rotated
    assert "after HUP" in fresh and "before" not in fresh and "\\udcff" in fresh
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_a_log_file_that_cannot_be_reopened_keeps_the_old_one(tmp_path, root_logging):
    folder = tmp_path / "logs"
    folder.mkdir()
    logs.setup_logging("INFO", str(folder / "storefs.log"))
    os.rename(folder, tmp_path / "moved")  # the folder itself went away: no fresh file can be made
    assert logs.reopen() == []
    logging.getLogger("storefs.test").warning("still logged")
    text = (tmp_path / "moved" / "storefs.log").read_text()
    assert "cannot reopen the log file" in text and "still logged" in text


def test_reopen_without_a_log_file_does_nothing(root_logging):
    logs.setup_logging("INFO", logs.STDERR)
    assert logs.reopen() == []
    assert logging.getLogger("botocore").level == logging.WARNING
