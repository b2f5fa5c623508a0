"""Real filesystems for tests: loop-backed ext4, xfs, btrfs, zfs pools, and their teardown.

The one test-infrastructure module that the conformance suite, tests/ and
benchmarks/ share:

    pool = FilesystemPool(base_dir)      # a snaplab-conformance-* directory
    fs = pool.get("xfs")                 # made and mounted on first use
    ... fs.mountpoint ...
    pool.destroy()                       # unmounts, detaches, deletes it all

FILESYSTEMS names what can be made (ext4, xfs, btrfs, ext4-nodtype, zfs,
...); a filesystem the kernel or the installed tools cannot give raises
FilesystemUnavailable with the reason. zfs is a pool on a loop device:
kernel OpenZFS, else zfs-fuse (a daemon started for it and stopped with
the last pool).

The harness makes and removes all this with the system's own tools (mkfs,
losetup, zpool, zfs, btrfs), never with the snaplab code under test: a
broken backend must not break the clean-up that follows its failure.

Everything made is named with one of the TEMP PREFIXES below, so that what a
killed run leaves behind is recognisable as ours (`python -m conformance.leaks`).
"""

import contextlib
import copy
import itertools
import os
import shutil
import signal
import stat
import subprocess
import tempfile
import time

from snaplab import errors, fsutil
from snaplab import mount as mountlib
from snaplab.backends import zfs_commands
from snaplab.kernel import FUSE_ZFS_FSTYPE, ZFS_FSTYPES

# -- temp prefixes: what the harness and the tests make is named so ----------

POOL_PREFIX = "snaplab-conformance-"  # FilesystemPool's directory, its zpools, ours in a provided fs
TEST_PREFIX = "snaplab-test-"  # tests' scratch directories (tests/**: scratch_dir(prefix))
CONTAINERD_PREFIX = "snaplab-containerd-"  # a private containerd's directory (conformance/containerd.py)
SERVE_TEMP_PREFIX = "snaplab-serve-"  # a snaplab serve process's socket and log (conformance/serve.py)

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


def kernel_zfs():
    """Whether OpenZFS is in the running kernel (module loaded)."""
    return os.path.exists("/sys/module/zfs")


def openzfs_version():
    """(major, minor) of the kernel's OpenZFS module; (0, 0) without one."""
    try:
        with open("/sys/module/zfs/version") as version:
            return tuple(int(part) for part in version.read().split("-")[0].split(".")[:2])
    except (OSError, ValueError):
        return (0, 0)


class ZfsSpec(FilesystemSpec):
    """A ZFS dataset in a pool on a loop device: kernel OpenZFS, else zfs-fuse.

    Its fstype is what the dataset mounts as, which depends on the road taken.
    """

    def __init__(self):
        # 2 GiB (sparse): blockfile's 128-layer case keeps 128 images, and
        # zfs-fuse can find no holes to skip in them (1 GiB ran out).
        super().__init__("zfs", None, None, 2048, "a ZFS dataset (kernel OpenZFS, else "
                         "zfs-fuse) in a pool on a loop device")

    @property
    def fstype(self):
        return "zfs" if kernel_zfs() else FUSE_ZFS_FSTYPE

    @fstype.setter
    def fstype(self, _value):
        pass  # always derived from the kernel, see the getter


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
    ZfsSpec(),
    # The column of endpoint rows (conformance/endpoint.py): a plain directory
    # for the cases' mount points; the storage is the endpoint's own.
    FilesystemSpec("endpoint", None, None, 0,
                   "the host's temp filesystem for the cases' mount points; the storage is "
                   "the endpoint's"),
]}

DEFAULT_FILESYSTEMS = ["ext4", "xfs", "btrfs", "ext4-nodtype", "host-dir", "zfs"]


class FilesystemUnavailable(Exception):
    """This filesystem cannot be made or mounted here; the reason says why."""


def make_loop_image(path, size_mib):
    """A sparse file of `size_mib` MiB at `path` for a loop device, root's
    alone whatever the umask (the suite runs under umask 0, and the rootless
    rows let others search the pool's directory)."""
    with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as sparse:
        sparse.truncate(size_mib * MIB)


def _run(argv):
    done = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          universal_newlines=True, check=False)
    if done.returncode != 0:
        raise FilesystemUnavailable("%s failed: %s" % (" ".join(argv), done.stdout.strip()))
    return done.stdout.strip()


class Filesystem:
    """A made and mounted filesystem; `mountpoint` is where roots go."""

    def __init__(self, spec, mountpoint, loop_device=None, image=None, provided=False):
        self.spec = spec
        self.mountpoint = mountpoint
        self.loop_device = loop_device
        self.image = image
        self.provided = provided  # made by someone else: only our directory in it is removed

    def leaked_mounts_under(self, directory):
        """What is mounted at or below `directory` that a test left behind, latest first."""
        return mountlib.mounts_under(directory)

    def release_under(self, directory):
        """Remove what the harness made for the roots below `directory` (nothing
        here); returns the problems."""
        return []

    @staticmethod
    def remove_tree(directory):
        """Remove `directory` (a case's, or ours in a provided filesystem) and
        everything in it; returns the problems.

        On btrfs a snapshotter's committed snapshots are read-only
        subvolumes, which neither unlink nor rmdir removes (EROFS, then
        ENOTEMPTY): they are deleted as subvolumes first. That matters where
        the filesystem outlives the run (a lab VM's disk, node_storage's)."""
        try:
            problems = delete_btrfs_subvolumes(directory)
            if problems:
                return problems
            fsutil.remove_tree(directory)
        except OSError as err:
            return ["could not remove %s: %s" % (directory, err)]
        return []

    def destroy(self):
        """Unmount and detach it (delete our directory in a provided one);
        returns the problems."""
        problems = []
        for where in mountlib.mounts_under(self.mountpoint):
            try:
                mountlib.unmount_all(where)
            except mountlib.MountError as err:
                problems.append(str(err))
        if self.loop_device:
            try:
                _run(["losetup", "-d", self.loop_device])
            except FilesystemUnavailable as err:
                problems.append(str(err))
        if self.provided and not problems:
            problems += self.remove_tree(self.mountpoint)
        return problems


class FilesystemPool:
    """Makes each filesystem once per run, on demand; destroy() removes them all.

    Everything lives under one temp directory named snaplab-conformance-*
    (POOL_PREFIX), so what a killed run leaves behind is recognisable as ours.
    """

    def __init__(self, base_dir=None, provided=None, sizes_mib=None):
        self.base = tempfile.mkdtemp(prefix=POOL_PREFIX, dir=base_dir)
        self._sizes_mib = dict(sizes_mib or {})  # name -> loop file size instead of the spec's
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
            spec = FILESYSTEMS[name]
            if name in self._sizes_mib:
                spec = copy.copy(spec)
                spec.size_mib = self._sizes_mib[name]
            try:
                self._made[name] = self._make(spec)
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
        mountpoint = tempfile.mkdtemp(prefix=POOL_PREFIX, dir=path)
        return Filesystem(spec, mountpoint, provided=True)

    def _make(self, spec):
        if isinstance(spec, ZfsSpec):
            if spec.name in self._provided:
                return ZfsFilesystem.use_provided(spec, self._provided[spec.name])
            return ZfsFilesystem.make(spec, self.base)
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
        make_loop_image(image, spec.size_mib)
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
            problems += fs.destroy()
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


# -- btrfs -------------------------------------------------------------------

BTRFS_SUBVOLUME_ROOT_INO = 256  # a subvolume's root directory is inode 256 on btrfs


def delete_btrfs_subvolumes(place):
    """Delete the btrfs subvolumes below `place` (and `place` itself if it is
    one), deepest first, with btrfs-progs: rm cannot remove read-only ones.
    A subvolume inside a read-only one cannot go while its container keeps
    the flag: after a failed first try every one is made writable, then
    deleted again. Returns the problems."""
    # The filesystem is looked up once: the callers never delete through a
    # mount, so everything below `place` is on its filesystem.
    if not os.path.lexists(place) or mountlib.lookup(place).fstype != "btrfs":
        return []
    # `place` itself too, unless it is the top of a mounted btrfs (also inode 256).
    found = [place] if _is_btrfs_subvolume(place) and not mountlib.is_mountpoint(place) else []
    for directory, subdirs, _files in os.walk(place):
        found += [path for path in (os.path.join(directory, sub) for sub in subdirs)
                  if _is_btrfs_subvolume(path)]
    if not found:
        return []
    found.sort(key=lambda path: path.count("/"), reverse=True)
    if _btrfs("subvolume", "delete", *found) is None:
        return []
    left = [path for path in found if os.path.lexists(path)]
    for path in left:
        _btrfs("property", "set", "-ts", path, "ro", "false")
    failed = _btrfs("subvolume", "delete", *left) if left else None
    return ["btrfs subvolume delete %s: %s" % (" ".join(left), failed)] if failed else []


def _is_btrfs_subvolume(path):
    try:
        info = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISDIR(info.st_mode) and info.st_ino == BTRFS_SUBVOLUME_ROOT_INO


def _btrfs(*argv):
    """Run `btrfs argv...`; None when it succeeded, else its stderr."""
    done = subprocess.run(("btrfs",) + argv, capture_output=True, text=True, check=False)
    return None if done.returncode == 0 else (done.stderr.strip() or "exit %d" % done.returncode)


# -- zfs ---------------------------------------------------------------------

ZFS_FUSE_WAIT_S = 30  # for the daemon to answer after start, or to exit after SIGTERM


def _zfs(*argv):
    """`zfs argv...`; its stdout, or FilesystemUnavailable with zfs's own words."""
    try:
        return zfs_commands.run_zfs(*argv)
    except zfs_commands.ZfsError as err:
        raise FilesystemUnavailable(str(err)) from None


def destroy_zfs_dataset(dataset):
    """`zfs destroy -R` the dataset with its snapshots, children and their
    clones, as the zfs backend destroys (unmounting what zfs-fuse has
    mounted first, waiting out "busy"); a missing dataset is fine."""
    try:
        zfs_commands.destroy_dataset(dataset, dependents=True)
    except zfs_commands.ZfsError as err:
        raise FilesystemUnavailable(str(err)) from None


def zfs_fuse_pids():
    """Pids of the running zfs-fuse daemons (there is at most one per machine)."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open("/proc/%s/stat" % entry) as stat_file:
                    fields = stat_file.read().rsplit(")", 1)
                    name, state = fields[0].split("(", 1)[1], fields[1].split()[0]
            except (OSError, IndexError):
                continue  # gone meanwhile
            if name == "zfs-fuse" and state != "Z":
                pids.append(int(entry))
    return pids


def _zpool_answers():
    return subprocess.run(["zpool", "list", "-H"], stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL, check=False).returncode == 0


def start_zfs_fuse(pidfile):
    """Start a zfs-fuse daemon (it daemonizes) and wait until it answers."""
    _run(["zfs-fuse", "--pidfile", pidfile, "--fuse-attr-timeout", "0"])
    deadline = time.monotonic() + ZFS_FUSE_WAIT_S
    while not _zpool_answers():
        if time.monotonic() > deadline:
            stop_zfs_fuse(pidfile)
            raise FilesystemUnavailable("zfs-fuse started but did not answer within %d s"
                                        % ZFS_FUSE_WAIT_S)
        time.sleep(0.1)


def stop_zfs_fuse(pidfile):
    """SIGTERM the daemon of `pidfile` (only if that pid is still the zfs-fuse
    started with it) and wait until it has exited; returns the problems."""
    try:
        with open(pidfile) as text:
            pid = int(text.read().strip())
        with open("/proc/%d/cmdline" % pid, "rb") as cmdline:
            ours = os.fsencode(pidfile) in cmdline.read().split(b"\0")
    except (OSError, ValueError):
        return []  # no pidfile, or the daemon is gone
    if not ours or pid not in zfs_fuse_pids():
        return []
    return _terminate_zfs_fuse(pid, pidfile)


def _terminate_zfs_fuse(pid, pidfile):
    """SIGTERM the daemon `pid`, wait until it has exited, remove its pidfile."""
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + ZFS_FUSE_WAIT_S
    while pid in zfs_fuse_pids():  # it unmounts and syncs on the way out
        if time.monotonic() > deadline:
            return ["zfs-fuse (pid %d) did not exit within %d s of SIGTERM" % (pid, ZFS_FUSE_WAIT_S)]
        time.sleep(0.1)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(pidfile)
    return []


def _harness_pidfile_of(pid):
    """The --pidfile a harness gave the zfs-fuse daemon `pid` (None if none)."""
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as cmdline:
            argv = [os.fsdecode(arg) for arg in cmdline.read().split(b"\0")]
    except OSError:
        return None
    if "--pidfile" in argv[:-1]:
        pidfile = argv[argv.index("--pidfile") + 1]
        if os.path.basename(pidfile) == "zfs-fuse.pid":
            return pidfile
    return None


def stop_idle_zfs_fuse(own_pidfile):
    """Stop the zfs-fuse daemon once no pool is left, if a harness started it:
    this one (`own_pidfile`) or one that has finished since (its pidfile's
    directory is gone). A daemon someone else started is never stopped."""
    pids = zfs_fuse_pids()
    if not pids:
        return []
    listing = subprocess.run(["zpool", "list", "-H", "-o", "name"], capture_output=True,
                             text=True, check=False)
    if listing.returncode == 0 and listing.stdout.strip():
        return []  # another run's pools: it still needs the daemon
    pidfile = _harness_pidfile_of(pids[0])
    if pidfile is None:
        return []
    if pidfile != own_pidfile and os.path.exists(os.path.dirname(pidfile)):
        return []  # its starter is still there and stops it
    return _terminate_zfs_fuse(pids[0], pidfile)


def _zfs_unavailable_reason():
    """Why neither kernel zfs nor zfs-fuse can be used here (None if one can)."""
    if not kernel_zfs() and shutil.which("modprobe"):
        subprocess.run(["modprobe", "zfs"], stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, check=False)
    if kernel_zfs():
        if shutil.which("zpool") is None:
            return ("the kernel has zfs but its tools are not installed: apt-get install "
                    "zfsutils-linux (Debian contrib)")
        return None
    if shutil.which("zfs-fuse") is None or shutil.which("zpool") is None:
        return "zfs-fuse is not installed: apt-get install zfs-fuse (Debian contrib)"
    if not os.path.exists("/dev/fuse"):
        return "the kernel has no zfs module and no /dev/fuse for zfs-fuse"
    return None


class ZfsFilesystem(Filesystem):
    """A ZFS dataset mounted where the roots go.

    A zfs backend root must be a dataset's mount point, so make_root_dataset
    gives each root a child dataset <dataset>/r<N>; release_under destroys
    them. Other backends use plain directories in the dataset.
    """

    def __init__(self, spec, mountpoint, dataset, pool=None, loop_device=None, image=None,
                 daemon_pidfile=None, provided=False):
        super().__init__(spec, mountpoint, loop_device, image, provided)
        self.dataset = dataset
        self.pool = pool  # the pool we made (None: the dataset is someone else's)
        self.daemon_pidfile = daemon_pidfile  # set if we started zfs-fuse
        self.root_datasets = {}  # root path -> the dataset made for it
        self._root_numbers = itertools.count(1)

    @classmethod
    def make(cls, spec, base):
        """A 1 GiB pool on a loop device over a sparse file, its own root
        dataset not mounted, <pool>/fs mounted at <base>/zfs."""
        reason = _zfs_unavailable_reason()
        if reason:
            raise FilesystemUnavailable(reason)
        fs = cls(spec, os.path.join(base, spec.name), dataset=None,
                 image=os.path.join(base, spec.name + ".img"))
        try:
            os.mkdir(fs.mountpoint)
            if not kernel_zfs() and not zfs_fuse_pids():
                fs.daemon_pidfile = os.path.join(base, "zfs-fuse.pid")
                start_zfs_fuse(fs.daemon_pidfile)
            make_loop_image(fs.image, spec.size_mib)
            fs.loop_device = _run(["losetup", "--find", "--show", fs.image])
            pool = POOL_PREFIX + os.urandom(5).hex()
            # cachefile=none: no later zfs start imports this test pool again.
            _run(["zpool", "create", "-o", "cachefile=none", "-m", "none", pool, fs.loop_device])
            fs.pool = pool
            fs.dataset = pool + "/fs"
            _zfs("create", "-o", "mountpoint=" + fs.mountpoint, fs.dataset)
        except BaseException:
            problems = fs.destroy()
            if problems:
                raise FilesystemUnavailable("making the zfs pool failed, and its clean-up "
                                            "too: " + "; ".join(problems))
            raise
        return fs

    @classmethod
    def use_provided(cls, spec, path):
        """The dataset mounted at `path` by someone else (node_storage, say):
        the cases' directories go in a directory of ours inside it."""
        if not os.path.isdir(path):
            raise FilesystemUnavailable("%s: %s is not a directory" % (spec.name, path))
        found = mountlib.lookup(path)
        if found.fstype not in ZFS_FSTYPES or found.mountpoint != os.path.realpath(path):
            raise FilesystemUnavailable("zfs at %s: it is not the mount point of a ZFS dataset "
                                        "(it is on %s %s)" % (path, found.fstype, found.source))
        mountpoint = tempfile.mkdtemp(prefix=POOL_PREFIX, dir=path)
        return cls(spec, mountpoint, dataset=found.source, provided=True)

    def make_root_dataset(self, root):
        """A new dataset <dataset>/r<N> mounted at `root` (zfs makes the directory)."""
        root = os.path.realpath(root)
        for number in self._root_numbers:
            name = "%s/r%d" % (self.dataset, number)
            try:
                _zfs("create", "-o", "mountpoint=" + root, name)
            except FilesystemUnavailable as err:
                if "already exists" in str(err):
                    continue  # someone else's, in a provided dataset
                destroy_zfs_dataset(name)  # made but not mounted, say
                raise
            self.root_datasets[root] = name
            return name

    def _homes(self):
        """{mount point: dataset} of the datasets zfs itself mounts under ours."""
        homes = {}
        for line in _zfs("list", "-H", "-o", "name,mountpoint", "-r", "-t", "filesystem",
                         self.dataset).splitlines():
            name, where = line.split("\t", 1)
            if where.startswith("/"):
                homes[os.path.realpath(where)] = name
        return homes

    def leaked_mounts_under(self, directory):
        # Each dataset's own mount at its mount point is zfs's; anything else
        # (a bind of a dataset, a second mount on a mount point) is a leak.
        homes = self._homes()
        directory = os.path.realpath(directory)
        leaked, seen = [], set()
        for entry in mountlib.mount_table():
            if not (entry.mountpoint == directory
                    or entry.mountpoint.startswith(directory.rstrip("/") + "/")):
                continue
            if (entry.fstype in ZFS_FSTYPES and entry.root == "/"
                    and homes.get(entry.mountpoint) == entry.source
                    and entry.mountpoint not in seen):
                seen.add(entry.mountpoint)
                continue
            leaked.append(entry.mountpoint)
        return leaked[::-1]

    def release_under(self, directory):
        directory = os.path.realpath(directory)
        problems = []
        for root, name in list(self.root_datasets.items()):
            if root == directory or root.startswith(directory.rstrip("/") + "/"):
                try:
                    destroy_zfs_dataset(name)
                    del self.root_datasets[root]
                except FilesystemUnavailable as err:
                    problems.append(str(err))
        return problems

    def destroy(self):
        problems = []
        if self.dataset:  # else making the pool failed before the dataset
            try:
                for where in self.leaked_mounts_under(self.mountpoint):
                    try:
                        mountlib.unmount_all(where)
                    except mountlib.MountError as err:
                        problems.append(str(err))
            except FilesystemUnavailable as err:
                problems.append(str(err))
            problems += self.release_under(self.mountpoint)
        if self.provided:
            if not problems:
                problems += self.remove_tree(self.mountpoint)
            return problems
        if self.pool and not problems:
            try:
                # zfs-fuse says "pool is busy" while datasets are mounted.
                destroy_zfs_dataset(self.dataset)
            except FilesystemUnavailable as err:
                # Reported, but the pool is ours: the forced destroy below
                # unmounts what is left, so nothing stays behind.
                problems.append(str(err))
            try:
                _run(["zpool", "destroy", "-f", self.pool])
                self.pool = None
            except FilesystemUnavailable as err:
                problems.append(str(err))
        if self.loop_device and not self.pool:
            try:
                _run(["losetup", "-d", self.loop_device])
                self.loop_device = None
            except FilesystemUnavailable as err:
                problems.append(str(err))
        if self.image and not self.loop_device:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.image)
        if not self.pool:
            # One zfs-fuse serves every pool of the machine: it stops when
            # the last pool made by a harness is gone, whoever started it
            # (several runs side by side share it; the first to finish must
            # not take it from the others).
            problems += stop_idle_zfs_fuse(self.daemon_pidfile)
        return problems


__all__ = ["CONTAINERD_PREFIX", "DEFAULT_FILESYSTEMS", "FILESYSTEMS", "Filesystem",
           "FilesystemPool", "FilesystemUnavailable", "POOL_PREFIX", "SERVE_TEMP_PREFIX",
           "TEST_PREFIX", "ZfsFilesystem", "delete_btrfs_subvolumes", "destroy_zfs_dataset"]
