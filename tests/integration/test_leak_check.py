"""conformance.leaks on the real system: a loop filesystem the harness made
is reported while it exists, and no longer once it is destroyed."""

import os

import pytest

from conformance import leaks

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="loop devices and mounts need root")


def test_a_loop_filesystem_is_reported_until_it_is_destroyed(loop_filesystem):
    with loop_filesystem("ext4", "snaplab-test-leaks-") as fs:
        found = leaks.left_behind()
        assert [line for line in found if " %s " % fs.mountpoint in line], found
        assert [line for line in found
                if line.startswith(fs.loop_device + ":") and fs.image in line], found
    # Only what this test made: other runs may be going on beside it.
    found = leaks.left_behind()
    assert [line for line in found if fs.mountpoint in line or fs.image in line] == []
