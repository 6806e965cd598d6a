"""The mount's read-ahead: finding its device in mountinfo and writing its sysfs knob."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from storefs.bdi import mount_device, set_read_ahead

MOUNTINFO = """\
22 1 252:1 / / rw,relatime shared:1 - ext4 /dev/vda rw
36 22 0:31 / /mnt/store rw,relatime shared:2 - tmpfs tmpfs rw
37 36 0:39 / /mnt/store rw,nosuid,nodev,relatime shared:3 - fuse.storefs storefs:s3 rw,user_id=0,group_id=0
38 22 0:40 / /mnt/two\\040words rw,nosuid,nodev shared:4 - fuse.storefs storefs:local rw,user_id=0,group_id=0
39 22 0:41 / /mnt/other rw,nosuid,nodev shared:5 master:7 - fuse.rclone remote: rw,user_id=0,group_id=0
40 37 0:42 / /mnt/store rw,nosuid,nodev,relatime shared:6 - fuse.storefs storefs:s3 rw,user_id=0,group_id=0
"""


@pytest.fixture
def mountinfo(tmp_path: Path) -> str:
    p = tmp_path / "mountinfo"
    p.write_text(MOUNTINFO)
    return str(p)


def test_the_device_is_the_fuse_mount_on_top_of_the_mount_point(mountinfo: str) -> None:
    assert mount_device("/mnt/store", mountinfo) == "0:42"  # not the tmpfs below, not the older FUSE mount
    assert mount_device("/mnt/two words", mountinfo) == "0:40"
    assert mount_device("/mnt/other", mountinfo) == "0:41"  # optional fields before the "-" are skipped
    assert mount_device("/mnt", mountinfo) is None
    assert mount_device("/", mountinfo) is None  # ext4: not a FUSE mount
    assert mount_device("/mnt/store", mountinfo + ".missing") is None


def test_the_read_ahead_is_written_in_kib_for_the_mounts_device(mountinfo: str, tmp_path: Path) -> None:
    sysfs = tmp_path / "bdi"
    (sysfs / "0:42").mkdir(parents=True)
    knob = sysfs / "0:42" / "read_ahead_kb"
    knob.write_text("128\n")
    assert set_read_ahead("/mnt/store", 4 * 1024 * 1024, str(sysfs), mountinfo)
    assert knob.read_text() == "4096\n"
    assert set_read_ahead("/mnt/store", 1000, str(sysfs), mountinfo)
    assert knob.read_text() == "1\n"  # rounded up: never 0, which would turn read-ahead off


def test_zero_leaves_the_kernel_default(mountinfo: str, tmp_path: Path) -> None:
    sysfs = tmp_path / "bdi"
    (sysfs / "0:42").mkdir(parents=True)
    knob = sysfs / "0:42" / "read_ahead_kb"
    knob.write_text("128\n")
    assert not set_read_ahead("/mnt/store", 0, str(sysfs), mountinfo)
    assert knob.read_text() == "128\n"


def test_a_knob_it_may_not_write_is_one_log_line_and_no_error(mountinfo: str, tmp_path: Path,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    sysfs = tmp_path / "bdi"  # no device folder: as open() fails for a user who is not root
    sysfs.mkdir()
    with caplog.at_level(logging.INFO, logger="storefs.bdi"):
        assert not set_read_ahead("/mnt/store", 4 * 1024 * 1024, str(sysfs), mountinfo)
        assert not set_read_ahead("/mnt/nothing", 4 * 1024 * 1024, str(sysfs), mountinfo)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2, lines
    assert "/mnt/store" in lines[0] and "read_ahead_kb" in lines[0] and "4096 KiB" in lines[0]
    assert "no FUSE mount" in lines[1]

