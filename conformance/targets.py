"""Targets of the conformance suite: a snapshotter backend on a real filesystem.

The cases know nothing of backends (as containerd's testsuite gets only a
factory): a target makes a snapshotter on a root, and a FilesystemPool makes
the real, loop-backed filesystems those roots live on, on the running kernel.
A new backend joins by adding a Target kind here, not by editing cases.
"""

import os
import shutil
import subprocess
import tempfile

from snaplab import backends, errors
from snaplab.backends import aufs
from snaplab import mount as mountlib

from . import resultlog

MIB = 1024 * 1024


class FilesystemSpec:
    """How to make one kind of test filesystem."""

    def __init__(self, name, fstype, mkfs, size_mib, description, d_type=True):
        self.name = name
        self.fstype = fstype  # None: a plain directory on the host, no loop device
        self.mkfs = mkfs
        self.size_mib = size_mib
        self.description = description
        self.d_type = d_type


FILESYSTEMS = {spec.name: spec for spec in [
    FilesystemSpec("ext4", "ext4", ["mkfs.ext4", "-q", "-F"], 256, "ext4 on a loop device"),
    # xfsprogs >= 5.19 will not make an xfs smaller than 300 MiB
    FilesystemSpec("xfs", "xfs", ["mkfs.xfs", "-q", "-f", "-n", "ftype=1"], 320,
                   "xfs (ftype=1) on a loop device"),
    FilesystemSpec("xfs-noftype", "xfs", ["mkfs.xfs", "-q", "-f", "-m", "crc=0", "-n", "ftype=0"],
                   320, "xfs V4 without ftype (no d_type) on a loop device", d_type=False),
    FilesystemSpec("btrfs", "btrfs", ["mkfs.btrfs", "-q", "-f"], 256, "btrfs on a loop device"),
    FilesystemSpec("ext4-nodtype", "ext4", ["mkfs.ext4", "-q", "-F", "-O", "^filetype"], 256,
                   "ext4 without the filetype feature (no d_type) on a loop device",
                   d_type=False),
    FilesystemSpec("host-dir", None, None, 0, "a plain directory on the host's filesystem"),
]}

DEFAULT_FILESYSTEMS = ["ext4", "xfs", "btrfs", "ext4-nodtype", "host-dir"]
DEFAULT_BACKENDS = ["native", "overlay", "btrfs", "zfs", "aufs"]


class FilesystemUnavailable(Exception):
    """This filesystem cannot be made or mounted here; the reason says why."""


class Filesystem:
    """A made and mounted filesystem; `mountpoint` is where roots go."""

    def __init__(self, spec, mountpoint, loop_device=None, image=None, provided=False):
        self.spec = spec
        self.mountpoint = mountpoint
        self.loop_device = loop_device
        self.image = image
        self.provided = provided  # made by someone else: only our directory in it is removed


def _run(argv):
    done = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          universal_newlines=True, check=False)
    if done.returncode != 0:
        raise FilesystemUnavailable("%s failed: %s" % (" ".join(argv), done.stdout.strip()))
    return done.stdout.strip()


class FilesystemPool:
    """Makes each filesystem once per run, on demand; destroy() removes them all.

    Everything lives under one temp directory named snaplab-conformance-*, so
    what a killed run leaves behind is recognisable as ours.
    """

    def __init__(self, base_dir=None, provided=None):
        self.base = tempfile.mkdtemp(prefix="snaplab-conformance-", dir=base_dir)
        self._made = {}
        self._failed = {}
        # name -> mount point of filesystems someone else made: used, never removed
        self._provided = dict(provided or {})
        unknown = sorted(set(self._provided) - set(FILESYSTEMS))
        if unknown:
            raise errors.InvalidArgument("unknown filesystem %s (known: %s)" % (
                ", ".join(unknown), ", ".join(FILESYSTEMS)))

    def get(self, name):
        if name in self._failed:
            raise FilesystemUnavailable(self._failed[name])
        if name not in self._made:
            try:
                self._made[name] = self._make(FILESYSTEMS[name])
            except FilesystemUnavailable as unavailable:
                self._failed[name] = str(unavailable)
                raise
        return self._made[name]

    def _use_provided(self, spec, path):
        """A filesystem mounted by someone else; check it is what it claims."""
        if not os.path.isdir(path):
            raise FilesystemUnavailable("%s: %s is not a directory" % (spec.name, path))
        if spec.fstype is not None:
            found = mountlib.lookup(path).fstype
            if found != spec.fstype:
                raise FilesystemUnavailable("%s at %s is %s, not %s" % (
                    spec.name, path, found, spec.fstype))
        # The cases' own directories go in a subdirectory that is ours to remove.
        mountpoint = tempfile.mkdtemp(prefix="snaplab-conformance-", dir=path)
        return Filesystem(spec, mountpoint, provided=True)

    def _make(self, spec):
        if spec.name in self._provided:
            return self._use_provided(spec, self._provided[spec.name])
        mountpoint = os.path.join(self.base, spec.name)
        os.mkdir(mountpoint)
        if spec.fstype is None:
            return Filesystem(spec, mountpoint)
        tool = spec.mkfs[0]
        if shutil.which(tool) is None:
            raise FilesystemUnavailable("%s is not installed" % tool)
        image = os.path.join(self.base, spec.name + ".img")
        with open(image, "wb") as sparse:
            sparse.truncate(spec.size_mib * MIB)
        loop_device = None
        try:
            _run(spec.mkfs + [image])
            loop_device = _run(["losetup", "--find", "--show", image])
            try:
                mountlib.mount(mountlib.Mount(spec.fstype, loop_device), mountpoint)
            except mountlib.MountError as err:
                raise FilesystemUnavailable(
                    "kernel %s cannot mount %s: %s%s" % (
                        os.uname().release, spec.description, err, _kernel_hint(spec)))
        except BaseException:
            if loop_device:
                _run(["losetup", "-d", loop_device])
            os.unlink(image)
            raise
        return Filesystem(spec, mountpoint, loop_device, image)

    def destroy(self):
        """Unmount, detach and delete everything; report what could not be."""
        problems = []
        for fs in self._made.values():
            for where in mountlib.mounts_under(fs.mountpoint):
                try:
                    mountlib.unmount_all(where)
                except mountlib.MountError as err:
                    problems.append(str(err))
            if fs.loop_device:
                try:
                    _run(["losetup", "-d", fs.loop_device])
                except FilesystemUnavailable as err:
                    problems.append(str(err))
            if fs.provided and not problems:
                shutil.rmtree(fs.mountpoint, ignore_errors=True)
        self._made.clear()
        if not problems:
            shutil.rmtree(self.base, ignore_errors=True)
        if problems:
            raise RuntimeError("conformance clean-up left things behind: " + "; ".join(problems))


def _kernel_hint(spec):
    if spec.name == "xfs-noftype":
        return (" (xfs without ftype needs the V4 format, which kernels built without "
                "CONFIG_XFS_SUPPORT_V4 refuse; test it in a lab VM with an older kernel)")
    return ""


ZFS_FSTYPES = ("zfs", "fuse.zfs")  # OpenZFS in the kernel; zfs-fuse


def openzfs_version():
    """(major, minor) of the kernel's OpenZFS module; (0, 0) without one."""
    try:
        with open("/sys/module/zfs/version") as version:
            return tuple(int(part) for part in version.read().split("-")[0].split(".")[:2])
    except (OSError, ValueError):
        return (0, 0)


class Refusal:
    """What a backend's refusal of a filesystem must say: `reason` (why),
    and each of `fixes` (how to fix it, or what to use instead)."""

    def __init__(self, reason, *fixes, explanation=None):
        self.reason = reason
        self.fixes = fixes
        self.explanation = explanation  # shown in the report; no temp paths in it

    def __str__(self):
        return self.reason

    def skip_reason(self, target):
        """Why the target's cases are skipped (the report marks the cell refused)."""
        return resultlog.refusal_skip_reason(target.backend, self.reason, self.explanation)


class Target:
    """A snaplab backend on one filesystem, e.g. overlay-on-xfs."""

    def __init__(self, backend, filesystem, options=None):
        self.backend = backend
        self.filesystem = filesystem
        self.options = dict(options or {})
        self.name = "%s-on-%s" % (backend, filesystem)

    def __repr__(self):
        return self.name

    @property
    def spec(self):
        return FILESYSTEMS[self.filesystem]

    def fstype(self):
        """The type of the filesystem roots go on, as mounted (host-dir is
        whatever the host has; zfs is "zfs" or zfs-fuse's "fuse.zfs")."""
        made = getattr(self, "fs", None)
        if made is not None:
            return mountlib.lookup(made.mountpoint).fstype
        return self.spec.fstype

    def expected_refusal(self):
        """The Refusal the backend must give on this filesystem, or None
        where it must work."""
        fstype = self.fstype()
        if self.backend == "aufs":
            return Refusal("not runnable", "overlay backend",
                           explanation=aufs.why_not_runnable())
        if self.backend == "btrfs" and fstype != "btrfs":
            return Refusal("not btrfs", "mkfs.btrfs")
        if self.backend == "zfs" and fstype not in ZFS_FSTYPES:
            return Refusal("not a ZFS dataset", "zfs create")
        if self.backend == "overlay":
            if not self.spec.d_type:
                return Refusal("d_type", "ftype=1", "filetype")
            if fstype == "fuse.zfs" or (fstype == "zfs" and openzfs_version() < (2, 2)):
                # overlayfs needs RENAME_WHITEOUT and tmpfile from its upper
                # filesystem: FUSE has neither, OpenZFS has both since 2.2.
                return Refusal("overlay upper", "ext4, xfs or btrfs")
        return None

    def open(self, root, **options):
        """A snapshotter on `root`; raises what the backend raises."""
        return backends.open_snapshotter(root, self.backend, **dict(self.options, **options))


def all_targets(backend_names, filesystem_names):
    unknown = [b for b in backend_names if b not in backends.BACKENDS]
    unknown += [f for f in filesystem_names if f not in FILESYSTEMS]
    if unknown:
        raise errors.InvalidArgument(
            "unknown backend or filesystem: %s (backends: %s; filesystems: %s)" % (
                ", ".join(unknown), ", ".join(sorted(backends.BACKENDS)),
                ", ".join(FILESYSTEMS)))
    return [Target(b, f) for b in backend_names for f in filesystem_names]


__all__ = ["FILESYSTEMS", "FilesystemPool", "FilesystemUnavailable", "Refusal", "Target",
           "all_targets"]
