"""blockfile: every snapshot is a filesystem image file (containerd's blockfile plugin).

Layout: <root>/scratch is an empty image of fs_type (ext4 or xfs), the base
of parentless snapshots; <root>/metadata.db; <root>/snapshots/<id> is one
image file per snapshot. Prepare copies the parent's image (the scratch
without a parent) to snapshots/<id>: a clone sharing every extent where the
root's filesystem can (FICLONE: xfs with reflink, btrfs), else a sparse copy
that keeps holes (snaplab/imagefile.py). A View without a parent gets
its own copy of the scratch; a View of a parent has no data of its own and
mounts the parent's image. Mounts are `<fs_type> <image>` with the option
`loop` (snaplab.mount binds a loop device that the unmount frees), `ro` for
views, `rw` for active snapshots. Commit moves nothing.

Deviations from containerd's blockfile, and why:
- Without scratch_file, snaplab makes the scratch itself with mkfs
  (containerd skips the plugin): the backend works out of the box.
  lost+found is removed from a scratch snaplab makes, as containerd's
  test does, so that a new snapshot is an empty directory.
- An existing <root>/scratch that does not match the options (another
  filesystem type, size or scratch_file) is refused, not kept silently.
- xfs images get `nouuid`: every copy of one scratch has the same
  filesystem UUID, and xfs refuses to mount a second one at once without it.
- Usage is the image's allocated size (st_blocks), the disk it costs on the
  root: it includes what the image copied from its parent (trait
  usage_includes_parent). containerd reports the apparent size minus the
  parent's stored size, which is about 0 for every child and below 0 for a
  View. Inodes are -1: what is inside an image is not counted (it would
  need a mount); containerd reports 1, the image file.
"""

import contextlib
import os
import re
import shutil
import subprocess

from .. import errors
from .. import faults
from .. import imagefile
from .. import kernel
from .. import loop
from .. import mount as mountlib
from ..options import Option
from ..types import Kind, Mount, Usage
from .base import StoreSnapshotter
from .pathlayout import OnePathPerSnapshot

MIB = 1024 * 1024
SCRATCH = "scratch"
# A scratch being made or replaced (mkfs, then rename over <root>/scratch):
# a crash leaves it, and Cleanup removes it as an old probe.
SCRATCH_STAGING_PREFIX = ".snaplab-scratch-"
FS_TYPES = ("ext4", "xfs")
# The scratch snaplab makes when scratch_size is not given: small, since
# each snapshot starts as a copy of it, but xfsprogs 5.19 and later make no
# xfs below 300 MiB.
DEFAULT_SCRATCH_MIB = {"ext4": 64, "xfs": 300}
# mkfs of an empty scratch. ext4: a new sparse file reads as zeros, so the
# journal need not be written (384 KiB allocated for 64 MiB instead of 4.4 MiB).
MKFS = {"ext4": ["mkfs.ext4", "-q", "-F", "-J", "size=1", "-E", "lazy_journal_init=1"],
        "xfs": ["mkfs.xfs", "-q", "-f"]}
_SIZE = re.compile(r"^\s*(\d+)\s*([KMGT]?)(i?B)?\s*$", re.IGNORECASE)


def parse_size(text):
    """Bytes of a size like 64M, 300MiB, 1G or 1048576 (InvalidArgument otherwise)."""
    match = _SIZE.match(text)
    if not match:
        raise errors.InvalidArgument("scratch_size %r is not a size (64M, 300MiB, 1G, bytes)"
                                     % text)
    unit = match.group(2).upper()
    return int(match.group(1)) * (1024 ** ("KMGT".index(unit) + 1) if unit else 1)


@contextlib.contextmanager
def staged_file(final_path, prefix="new-", crash_point="create.staged"):
    """StoreSnapshotter.staged_directory for a file: yields a free path
    named `prefix`... next to `final_path` for the block to create; renamed
    into place after it, removed if it fails. A crash leaves only that
    file, which Cleanup removes (an orphan new-*, an old scratch staging)."""
    staging = os.path.join(os.path.dirname(final_path), prefix + os.urandom(6).hex())
    try:
        yield staging
        faults.point(crash_point)
        os.rename(staging, final_path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(staging)
        raise


class BlockfileSnapshotter(OnePathPerSnapshot, StoreSnapshotter):
    name = "blockfile"
    holds_data = staticmethod(os.path.isfile)  # an image file, not a tree
    probe_prefixes = StoreSnapshotter.probe_prefixes + (SCRATCH_STAGING_PREFIX,)
    declared_options = (
        Option("scratch_file", "str", "",
               "A pre-formatted empty image of fs_type, copied to <root>/scratch as the base "
               "of parentless snapshots; without it snaplab makes one with mkfs."),
        Option("scratch_size", "str", "",
               "Size of the scratch snaplab makes (64M, 1G...); default 64 MiB for ext4, "
               "300 MiB for xfs (the smallest xfs mkfs.xfs makes)."),
        Option("fs_type", "str", "ext4", "The filesystem of the images, ext4 or xfs."),
        Option("mount_options", "list", [],
               "Options of every image mount (loop is always there), e.g. direct-io,sync."),
        Option("recreate_scratch", "bool", False,
               "Replace <root>/scratch at open, from scratch_file or with mkfs (existing "
               "snapshots keep their images)."),
    )

    # -- opening -----------------------------------------------------------

    def check_filesystem(self, path):
        fs_type = self.options["fs_type"]
        if fs_type not in FS_TYPES:
            raise errors.InvalidArgument("blockfile backend: fs_type %r is not one of %s"
                                         % (fs_type, ", ".join(FS_TYPES)))
        if self.options["scratch_size"]:
            parse_size(self.options["scratch_size"])
        if not kernel.filesystem_in_kernel(fs_type):
            raise errors.FailedPrecondition(
                "blockfile backend: this kernel has no %s filesystem (not listed in "
                "/proc/filesystems); load its module or choose another fs_type" % fs_type)
        if not os.path.exists(loop.LOOP_CONTROL):
            raise errors.FailedPrecondition(
                "blockfile backend: no %s, so no loop device can mount an image; load the "
                "loop module (modprobe loop) or use another backend" % loop.LOOP_CONTROL)

    def setup_layout(self):
        self.ensure_directory(self.snapshots_dir)
        fs_type = self.options["fs_type"]
        self.image_options = ["loop"] + [o for o in self.options["mount_options"] if o != "loop"]
        if fs_type == "xfs" and "nouuid" not in self.image_options:
            self.image_options.append("nouuid")
        exists = os.path.exists(self.scratch)
        if exists and not self.options["recreate_scratch"]:
            self._check_scratch()
        elif not self.read_only:
            self._replace_scratch(imagefile.filesystem_of(self.scratch) if exists else None)

    @property
    def scratch(self):
        return os.path.join(self.root, SCRATCH)

    def _refuse(self, why, fix):
        return errors.FailedPrecondition("blockfile backend: %s; %s" % (why, fix))

    def _scratch_size(self):
        given = self.options["scratch_size"]
        return parse_size(given) if given else DEFAULT_SCRATCH_MIB[self.options["fs_type"]] * MIB

    def _check_scratch(self):
        """Refuse a <root>/scratch that is not what the options describe."""
        fs_type = self.options["fs_type"]
        recreate = "open with recreate_scratch=true to replace it"
        found = imagefile.filesystem_of(self.scratch)
        if found != fs_type:
            raise self._refuse("%s holds %s, not fs_type %s" % (
                self.scratch, "an %s image" % found if found else "no ext4 or xfs image",
                fs_type), "give fs_type=%s, or %s" % (found, recreate) if found else recreate)
        size = os.stat(self.scratch).st_size
        if self.options["scratch_size"] and size != self._scratch_size():
            raise self._refuse("%s is %d bytes, not scratch_size %s" % (
                self.scratch, size, self.options["scratch_size"]), recreate)
        given = self.options["scratch_file"]
        if given:
            source = self._checked_scratch_file()
            if (os.stat(source).st_size, imagefile.uuid_of(source)) != (
                    size, imagefile.uuid_of(self.scratch)):
                raise self._refuse("%s is not a copy of scratch_file %s (another size or "
                                   "filesystem UUID)" % (self.scratch, given), recreate)

    def _checked_scratch_file(self):
        given = self.options["scratch_file"]
        fs_type = self.options["fs_type"]
        try:
            found = imagefile.filesystem_of(given)
        except OSError as err:
            raise self._refuse("scratch_file %s cannot be read (%s)" % (
                given, os.strerror(err.errno)), "give an existing image file") from None
        if found != fs_type:
            raise self._refuse("scratch_file %s is %s, not an image of fs_type %s" % (
                given, "an %s image" % found if found else "no ext4 or xfs image", fs_type),
                "make it with mkfs.%s, or give the fs_type it has" % fs_type)
        return given

    def _replace_scratch(self, previous):
        """Make <root>/scratch (from scratch_file, or with mkfs) under a
        temporary name, check that it mounts through a loop device here, then
        rename it into place."""
        fs_type = self.options["fs_type"]
        if previous is not None and previous != fs_type:
            with self.store.transaction() as tx:
                if tx.snapshot_rows():
                    raise self._refuse(
                        "the snapshots of %s are %s images, fs_type is %s" % (
                            self.root, previous, fs_type),
                        "keep fs_type=%s, or use another root for %s" % (previous, fs_type))
        with staged_file(self.scratch, SCRATCH_STAGING_PREFIX, "blockfile.scratch") as staging:
            if self.options["scratch_file"]:
                imagefile.clone_or_copy(self._checked_scratch_file(), staging)
            else:
                self._make_scratch(staging)
            self._probe_mount(staging, made=not self.options["scratch_file"])

    def _make_scratch(self, path):
        fs_type = self.options["fs_type"]
        argv = MKFS[fs_type] + [path]
        if shutil.which(argv[0]) is None:
            raise self._refuse("no %s to make the scratch image" % argv[0],
                               "install it (%s) or give scratch_file"
                               % ("e2fsprogs" if fs_type == "ext4" else "xfsprogs"))
        with open(path, "xb") as image:
            os.chmod(path, 0o600)
            image.truncate(self._scratch_size())
        done = subprocess.run(argv, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise self._refuse("%s failed: %s" % (" ".join(argv), (
                done.stderr or done.stdout).strip().splitlines()[0]),
                "check scratch_size (%s)" % self._scratch_size())

    def _probe_mount(self, image, made):
        """Mount the new scratch through a loop device: the kernel decides
        whether an image of this root's filesystem mounts (and a given
        scratch_file really is a clean fs_type image). A scratch snaplab made
        loses its lost+found there, so that a new snapshot is empty."""
        try:
            writable = Mount(self.options["fs_type"], image, options=self.image_options + ["rw"])
            with self.temporary_mount([writable]) as target:
                if made:
                    with contextlib.suppress(FileNotFoundError):
                        os.rmdir(os.path.join(target, "lost+found"))
        except (mountlib.MountError, errors.FailedPrecondition) as err:
            backing = mountlib.lookup(self.root)
            raise self._refuse("an %s image in %s (%s at %s) does not mount through a loop "
                               "device (%s)" % (self.options["fs_type"], self.root,
                                                backing.fstype, backing.mountpoint, err),
                               "put the root on ext4, xfs or btrfs") from None
        with open(image, "rb+") as written:  # what the mount changed, on disk before rename
            os.fsync(written.fileno())

    # -- snapshots ---------------------------------------------------------

    def create_storage(self, snap, info):
        if snap.kind == Kind.VIEW and snap.parent_ids:
            return  # a view of a parent mounts the parent's image read-only
        source = self.path_of(snap.parent_ids[0]) if snap.parent_ids else self.scratch
        if not os.path.exists(source):
            raise errors.FailedPrecondition(
                "blockfile backend: %s is missing; %s" % (source, "run doctor" if snap.parent_ids
                                                          else "reopen the root to remake it"))
        with staged_file(self.path_of(snap.id)) as staging:
            imagefile.clone_or_copy(source, staging)

    def snapshot_mounts(self, snap, info):
        if snap.kind == Kind.VIEW and snap.parent_ids:
            image = self.path_of(snap.parent_ids[0])
        else:
            image = self.path_of(snap.id)
        mode = "rw" if snap.kind == Kind.ACTIVE else "ro"
        return [Mount(type=self.options["fs_type"], source=image,
                      options=self.image_options + [mode])]

    def commit_usage(self, snap):
        # An image still mounted read-write would be committed with its
        # journal open, and every read-only mount of it (a view, a child's
        # copy) would then fail with "recovery required". containerd does
        # not look; its clients unmount first. Mounted is the filesystem's
        # own /sys/fs/<type>/loopN, gone with the unmount in every mount
        # namespace: the loop device itself may stay bound a moment longer
        # (Linux 6.1 frees an autoclear device from a work queue).
        devices = loop.mounted_devices_of(self.path_of(snap.id), self.options["fs_type"])
        if devices:
            raise errors.FailedPrecondition(
                "blockfile backend: the image %s of the snapshot to commit is still mounted "
                "(through %s); unmount it before Commit"
                % (self.path_of(snap.id), ", ".join(devices)))
        return super().commit_usage(snap)

    def active_usage(self, snap):
        self.sync_before_measuring()
        return Usage(os.stat(self.path_of(snap.id)).st_blocks * 512, -1)
