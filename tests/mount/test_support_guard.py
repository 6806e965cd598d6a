"""The support package's guard: a mount whose daemon is stuck fails a test fast instead of blocking it."""

from __future__ import annotations

import contextlib
import os
import signal
import time

import pytest

from storefs.testing.mount import MountHung, wait_pid_gone

pytestmark = pytest.mark.timeout(120)

CHECK_SECONDS = 2  # how long the check may wait for the stuck mount
LIMIT_SECONDS = 30  # what the whole failure (check, kill, detach) may take


@pytest.mark.parametrize("provider_kind", ["local"])
def test_a_stuck_daemon_fails_the_check_and_is_detached(store):
    pid = store.pid
    assert pid
    os.kill(pid, signal.SIGSTOP)  # every FUSE request now waits for ever
    try:
        t0 = time.monotonic()
        with pytest.raises(MountHung, match="did not answer"):
            store.assert_responsive(timeout=CHECK_SECONDS)
        assert time.monotonic() - t0 < LIMIT_SECONDS
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)
    assert wait_pid_gone(pid, 10), "the stuck daemon was not killed"
    assert not store.mounted, "the stuck mount was not detached"
