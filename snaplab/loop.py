"""Loop devices for mounts of image files (the `loop` mount option).

containerd's mount package turns a Mount with the option `loop` into a loop
device over the source file, then mounts the device; blockfile's snapshots
and erofs' layers are mounted that way. This does the same with the
kernel's loop ioctls (no losetup in between):

- a free device from /dev/loop-control (LOOP_CTL_GET_FREE), bound to the
  file with LOOP_CONFIGURE (Linux 5.8; LOOP_SET_FD + LOOP_SET_STATUS64
  before), retried when another process took the same device first;
- always with LO_FLAGS_AUTOCLEAR: the kernel detaches the device when its
  last user goes, so once the filesystem on it is mounted and our
  descriptor closed, unmounting frees the device too. Nothing has to
  remember a device, and a process killed after binding leaves nothing
  (its descriptor closes with it);
- read-only when the mount is (`ro`), direct I/O with `direct-io`.
"""

import contextlib
import ctypes
import errno
import fcntl
import os

from . import errors

LOOP_CONTROL = "/dev/loop-control"
LOOP_CTL_GET_FREE = 0x4C82
LOOP_SET_FD = 0x4C00
LOOP_CLR_FD = 0x4C01
LOOP_SET_STATUS64 = 0x4C04
LOOP_CONFIGURE = 0x4C0A
LOOP_SET_DIRECT_IO = 0x4C08
LO_FLAGS_READ_ONLY = 1
LO_FLAGS_AUTOCLEAR = 4
LO_FLAGS_DIRECT_IO = 16
LO_NAME_SIZE = 64
# Another process may bind the device LOOP_CTL_GET_FREE named before we do.
BIND_ATTEMPTS = 16


class _LoopInfo64(ctypes.Structure):
    _fields_ = [("lo_device", ctypes.c_uint64), ("lo_inode", ctypes.c_uint64),
                ("lo_rdevice", ctypes.c_uint64), ("lo_offset", ctypes.c_uint64),
                ("lo_sizelimit", ctypes.c_uint64), ("lo_number", ctypes.c_uint32),
                ("lo_encrypt_type", ctypes.c_uint32), ("lo_encrypt_key_size", ctypes.c_uint32),
                ("lo_flags", ctypes.c_uint32), ("lo_file_name", ctypes.c_char * LO_NAME_SIZE),
                ("lo_crypt_name", ctypes.c_char * LO_NAME_SIZE),
                ("lo_encrypt_key", ctypes.c_ubyte * 32), ("lo_init", ctypes.c_uint64 * 2)]


class _LoopConfig(ctypes.Structure):
    _fields_ = [("fd", ctypes.c_uint32), ("block_size", ctypes.c_uint32),
                ("info", _LoopInfo64), ("reserved", ctypes.c_uint64 * 8)]


def _info(path, flags):
    info = _LoopInfo64()
    info.lo_flags = flags
    # Shown by /sys/block/loopN/loop/backing_file; truncated as losetup does.
    info.lo_file_name = os.fsencode(path)[:LO_NAME_SIZE - 1]
    return info


def _configure(device_fd, file_fd, path, flags):
    """Bind `file_fd` to the device; OSError(EBUSY) when it is taken."""
    config = _LoopConfig()
    config.fd = file_fd
    config.info = _info(path, flags)
    try:
        fcntl.ioctl(device_fd, LOOP_CONFIGURE, config)
        return
    except OSError as err:
        if err.errno not in (errno.EINVAL, errno.ENOTTY):  # EINVAL: before Linux 5.8
            raise
    fcntl.ioctl(device_fd, LOOP_SET_FD, file_fd)
    try:
        fcntl.ioctl(device_fd, LOOP_SET_STATUS64, _info(path, flags & ~LO_FLAGS_DIRECT_IO))
        if flags & LO_FLAGS_DIRECT_IO:
            fcntl.ioctl(device_fd, LOOP_SET_DIRECT_IO, 1)
    except BaseException:
        fcntl.ioctl(device_fd, LOOP_CLR_FD, 0)
        raise


@contextlib.contextmanager
def attached(path, read_only=False, direct_io=False):
    """A loop device over the file `path` for a block: yields its /dev path.

    The device is bound with autoclear and our descriptor of it is closed
    after the block: whatever mounted it in the block keeps it, and it is
    detached when that is unmounted (or at once, when nothing did).
    An image that cannot be opened or bound is an OSError with its errno;
    a machine without loop devices is FailedPrecondition.
    """
    flags = LO_FLAGS_AUTOCLEAR
    if read_only:
        flags |= LO_FLAGS_READ_ONLY
    if direct_io:
        flags |= LO_FLAGS_DIRECT_IO
    try:
        file_fd = os.open(path, (os.O_RDONLY if read_only else os.O_RDWR) | os.O_CLOEXEC)
    except OSError as err:
        # An OSError with its errno, as mount(2) of a missing source gives.
        raise OSError(err.errno, "loop device for %s: cannot open the image: %s"
                      % (path, os.strerror(err.errno))) from None
    try:
        device_fd, device = _bind(file_fd, path, flags, read_only)
    finally:
        os.close(file_fd)
    try:
        yield device
    finally:
        os.close(device_fd)


def _bind(file_fd, path, flags, read_only):
    try:
        control = os.open(LOOP_CONTROL, os.O_RDWR | os.O_CLOEXEC)
    except OSError as err:
        raise errors.FailedPrecondition("no loop devices here (%s: %s); load the loop module"
                                        % (LOOP_CONTROL, os.strerror(err.errno))) from None
    try:
        for _attempt in range(BIND_ATTEMPTS):
            number = fcntl.ioctl(control, LOOP_CTL_GET_FREE)
            device = "/dev/loop%d" % number
            device_fd = os.open(device, (os.O_RDONLY if read_only else os.O_RDWR) | os.O_CLOEXEC)
            try:
                _configure(device_fd, file_fd, path, flags)
            except OSError as err:
                os.close(device_fd)
                if err.errno == errno.EBUSY:
                    continue  # another process bound it first
                raise OSError(err.errno, "loop device %s for %s: %s"
                              % (device, path, os.strerror(err.errno))) from None
            return device_fd, device
        raise errors.FailedPrecondition("no free loop device for %s after %d attempts"
                                        % (path, BIND_ATTEMPTS))
    finally:
        os.close(control)


def backing_file(device):
    """The file behind loop device `device` (/dev/loopN), or None when it is
    no bound loop device."""
    name = os.path.basename(os.path.realpath(device))
    try:
        with open("/sys/block/%s/loop/backing_file" % name, encoding="utf-8",
                  errors="surrogateescape") as source:
            return source.read().rstrip("\n")
    except OSError:
        return None


def devices_of(path):
    """The loop devices bound to the file `path` now (/dev/loopN, sorted)."""
    wanted = os.path.realpath(path)
    try:
        names = os.listdir("/sys/block")
    except OSError:
        return []
    return sorted("/dev/" + name for name in names
                  if name.startswith("loop") and backing_file("/dev/" + name) == wanted)


def mounted_devices_of(path, fs_type):
    """The loop devices bound to the file `path` whose filesystem of type
    `fs_type` (ext4, xfs) is mounted now, in any mount namespace: those with
    a /sys/fs/<fs_type>/loopN, which the filesystem has from its mount to its
    last unmount. Only those entries are read, not every loop device's."""
    try:
        names = os.listdir("/sys/fs/%s" % fs_type)
    except FileNotFoundError:
        return []  # nothing of that type mounted (its module not even loaded)
    wanted = os.path.realpath(path)
    return sorted("/dev/" + name for name in names
                  if name.startswith("loop") and backing_file("/dev/" + name) == wanted)


__all__ = ["attached", "backing_file", "devices_of", "mounted_devices_of"]
