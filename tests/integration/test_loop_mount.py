"""Mounts with the `loop` option (snaplab/loop.py through snaplab/mount.py),
on real image files: mounted through a loop device, recognised in the mount
table by their file, and the device gone again after the unmount, also when
the mount itself failed."""

import errno
import os
import subprocess
import time

import pytest

from snaplab import loop
from snaplab import mount as mountlib
from snaplab.types import Mount

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not os.path.exists(loop.LOOP_CONTROL),
                                reason="needs root and /dev/loop-control")

# Autoclear detaches at the device's last close; some kernels do it from a
# work queue, a moment after umount2 returns.
DETACH_WAIT_S = 10


def devices_backed_by(image):
    found = []
    for name in os.listdir("/sys/block"):
        if name.startswith("loop") and loop.backing_file("/dev/" + name) == image:
            found.append("/dev/" + name)
    return found


def wait_detached(image):
    deadline = time.monotonic() + DETACH_WAIT_S
    while devices_backed_by(image) and time.monotonic() < deadline:
        time.sleep(0.05)
    return devices_backed_by(image)


@pytest.fixture
def image(tmp_path):
    path = str(tmp_path / "image.ext4")
    with open(path, "wb") as out:
        out.truncate(16 << 20)
    subprocess.run(["mkfs.ext4", "-q", "-F", path], check=True)
    yield path
    leftovers = devices_backed_by(path)
    for device in leftovers:  # a failed test must not leave one behind
        subprocess.run(["losetup", "-d", device], check=False)
    assert not leftovers, "loop devices left on %s: %s" % (path, leftovers)


def test_a_loop_mount_is_read_write_recognised_and_freed(image, tmp_path):
    target = str(tmp_path / "mnt")
    os.mkdir(target)
    m = Mount("ext4", image, options=["loop", "rw"])
    mountlib.mount(m, target)
    try:
        with open(os.path.join(target, "written"), "w", encoding="ascii") as out:
            out.write("through a loop device")
        entry = mountlib.mount_on_top(target)
        assert entry.source.startswith("/dev/loop")
        assert loop.backing_file(entry.source) == image
        assert mountlib.mounted_at(target, [m])
        assert not mountlib.mounted_at(target, [Mount("ext4", image, options=["loop", "ro"])])
    finally:
        mountlib.unmount(target)
    assert wait_detached(image) == []
    m_ro = Mount("ext4", image, options=["loop", "ro"])
    mountlib.mount(m_ro, target)
    try:
        with open(os.path.join(target, "written"), encoding="ascii") as back:
            assert back.read() == "through a loop device"
        with pytest.raises(OSError) as refused:
            open(os.path.join(target, "more"), "w", encoding="ascii").close()
        assert refused.value.errno == errno.EROFS
        device = mountlib.mount_on_top(target).source
        with open("/sys/block/%s/ro" % os.path.basename(device), encoding="ascii") as flag:
            assert flag.read().strip() == "1"  # the device too, not only the mount
        assert mountlib.mounted_at(target, [m_ro])
    finally:
        mountlib.unmount(target)
    assert wait_detached(image) == []


def test_a_failed_loop_mount_leaves_no_device(image, tmp_path):
    target = str(tmp_path / "mnt")
    os.mkdir(target)
    with pytest.raises(mountlib.MountError):
        mountlib.mount(Mount("xfs", image, options=["loop"]), target)  # not xfs
    assert not mountlib.is_mountpoint(target)
    assert wait_detached(image) == []


def test_a_missing_image_fails_as_a_missing_mount_source_does(tmp_path):
    # A MountError with ENOENT, as mount(2) of a missing device gives.
    with pytest.raises(mountlib.MountError, match="cannot open the image") as failed:
        mountlib.mount(Mount("ext4", str(tmp_path / "absent"), options=["loop"]), str(tmp_path))
    assert failed.value.errno == errno.ENOENT


def test_mounted_devices_of_an_image_are_those_its_filesystem_is_mounted_through(image, tmp_path):
    """blockfile's Commit asks this: mounted is the filesystem's own
    /sys/fs/ext4/loopN, there from the mount to the unmount, whether or not
    the loop device is still bound a moment after."""
    target = str(tmp_path / "mnt")
    os.mkdir(target)
    assert loop.mounted_devices_of(image, "ext4") == []
    mountlib.mount(Mount("ext4", image, options=["loop", "ro"]), target)
    try:
        device = mountlib.mount_on_top(target).source
        assert loop.mounted_devices_of(image, "ext4") == [device]
        assert loop.mounted_devices_of(image, "xfs") == []  # another type: not looked at
        assert loop.mounted_devices_of(str(tmp_path / "other"), "ext4") == []
    finally:
        mountlib.unmount(target)
    assert loop.mounted_devices_of(image, "ext4") == []
    assert wait_detached(image) == []
