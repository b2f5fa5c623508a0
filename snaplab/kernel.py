"""What the running kernel offers: the probes every layer may ask.

Kept apart from the backends so that the layer code, the CLI and the suite
can ask "does this kernel have overlayfs?" without importing a backend.
"""

import os

# What the mount table calls a ZFS dataset: OpenZFS in the kernel, zfs-fuse.
FUSE_ZFS_FSTYPE = "fuse.zfs"  # a dataset zfs-fuse's daemon mounted
ZFS_FSTYPES = ("zfs", FUSE_ZFS_FSTYPE)


def filesystem_in_kernel(name):
    """True if /proc/filesystems lists `name` (built in or a loaded module)."""
    try:
        with open("/proc/filesystems") as known:
            return any(line.split()[-1] == name for line in known if line.strip())
    except OSError:
        return False


def in_user_namespace():
    """True unless we are in the initial user namespace (full identity map).

    overlayfs in a user namespace keeps its whiteouts and opaque markers in
    user.overlay.* xattrs (mount option userxattr) instead of trusted.*,
    which only the initial namespace may write."""
    try:
        with open("/proc/self/uid_map") as uid_map:
            return uid_map.read().split() != ["0", "0", "4294967295"]
    except OSError:
        return False


def release():
    """The kernel release, as `uname -r` prints it."""
    return os.uname().release
