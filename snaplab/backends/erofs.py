"""erofs: committed snapshots as EROFS images under overlayfs (containerd 2.1's erofs).

Layout (containerd 2.1's): <root>/snapshots/<id>/fs is an active snapshot's
upper directory and <id>/work its overlay workdir, as overlay's. Commit packs
fs/ into <id>/layer.erofs with mkfs.erofs and empties fs/: from then on fs/
is only the mount point of that image (read-only, through a loop device).

The Mounts handed out are overlay's: an overlay whose lowerdirs are the
parents' fs/ directories (a bind mount without parents, or for a View of one
parent). As containerd 2.1 does, the snapshotter itself mounts each parent's
image on the parent's fs/ when it hands out a child's Mounts, and leaves it
mounted: so a consumer that has only mount(2) (containerd 1.6 through
`snaplab serve`, the suite) can use them. Nothing survives a reboot: the
next Prepare, View or Mounts of a child mounts the images again. Remove and
Cleanup unmount them. A mount is made under an flock of its image, so two
processes never stack two mounts on one fs/.

Where snaplab differs from containerd 2.1, and why:
- No .erofslayer marker in the snapshot directories: it tells containerd's
  erofs differ to write layer.erofs itself and leave fs/ empty, and Commit
  here always packs fs/ (snaplab's layer apply writes there). Without the
  marker that differ declines and containerd falls back to one that writes
  into the mounts.
- A View whose parent has no parent is a read-only bind of the parent's
  mounted fs/, not an erofs Mount with the `loop` option (which only a
  consumer that makes loop devices can mount).
- The image gets no FS_IMMUTABLE_FL (containerd sets it, and clears it again
  before Remove): a crash between the two would leave a file Cleanup cannot
  delete.
- Commit builds the image inside the metadata write lock (containerd builds
  it under a read transaction first), so a crash leaves at most a staged
  image, which Cleanup removes.
"""

import contextlib
import fcntl
import logging
import os
import shutil
import subprocess
import tempfile

from .. import errors
from .. import faults
from .. import fsutil
from .. import kernel
from .. import loop
from .. import mount as mountlib
from ..types import Finding, Kind, Mount
from .base import unmount_tree
from .overlay import OverlaySnapshotter

IMAGE_NAME = "layer.erofs"
# An image being written by Commit, in the snapshot's directory.
STAGED_IMAGE_PREFIX = ".layer.erofs-"
MKFS_EROFS = "mkfs.erofs"
# As containerd's erofsutils.ConvertErofs, less its --quiet: older
# erofs-utils (bullseye's 1.2.1) refuse that option, and the output is
# captured anyway (shown only when mkfs.erofs fails).
MKFS_OPTIONS = ("-Enoinline_data",)

log = logging.getLogger("snaplab")


class ErofsSnapshotter(OverlaySnapshotter):
    name = "erofs"

    def check_filesystem(self, path):
        if not kernel.filesystem_in_kernel("erofs"):
            raise errors.FailedPrecondition(
                "erofs backend: kernel %s has no erofs filesystem (not listed in "
                "/proc/filesystems; Linux has it since 5.4): load its module (modprobe "
                "erofs) or use --backend overlay" % kernel.release())
        if shutil.which(MKFS_EROFS) is None:
            raise errors.FailedPrecondition(
                "erofs backend: no %s on PATH, which Commit needs to build a snapshot's "
                "image; install erofs-utils or use --backend overlay" % MKFS_EROFS)
        if kernel.in_user_namespace():
            raise errors.FailedPrecondition(
                "erofs backend: images are mounted through loop devices, which a user "
                "namespace cannot set up; run it as root or use --backend overlay")
        if not os.path.exists(loop.LOOP_CONTROL):
            raise errors.FailedPrecondition(
                "erofs backend: no %s, so no loop device to mount images with; load the "
                "loop module or use --backend overlay" % loop.LOOP_CONTROL)
        super().check_filesystem(path)

    def image_of(self, snapshot_id):
        return os.path.join(self.snapshots_dir, str(snapshot_id), IMAGE_NAME)

    def layer_mount(self, snapshot_id):
        """The Mount of a committed snapshot's image on its fs/."""
        return Mount("erofs", self.image_of(snapshot_id), options=["ro", "loop"])

    @contextlib.contextmanager
    def probe_lower(self, content):
        """The idmap probe's lowerdir: `content` as an erofs image, mounted
        as a parent layer is (whether erofs takes an idmapped mount depends
        on the kernel, not on the root's filesystem)."""
        probe = os.path.dirname(content)
        image, lower = os.path.join(probe, IMAGE_NAME), os.path.join(probe, "lower")
        os.mkdir(lower)
        self._build_image(content, image)
        mountlib.mount(Mount("erofs", image, options=["ro", "loop"]), lower)
        try:
            yield lower
        finally:
            mountlib.unmount_all(lower)

    # -- mounts ---------------------------------------------------------------

    def snapshot_mounts(self, snap, info):
        self.mount_layers(snap.parent_ids)
        return super().snapshot_mounts(snap, info)

    def layer_mounted(self, snapshot_id, table=None):
        """Whether the image of `snapshot_id` is what is mounted on its fs/."""
        entry = mountlib.mount_on_top(self.upper_of(snapshot_id), table)
        return entry is not None and mountlib.is_mount_of(self.layer_mount(snapshot_id), entry)

    def mount_layers(self, snapshot_ids):
        """Mount the image of each committed snapshot in `snapshot_ids` that is
        not mounted on its fs/ (after a reboot, none is)."""
        if not snapshot_ids:
            return
        table = mountlib.mount_table()
        for snapshot_id in snapshot_ids:
            if not self.layer_mounted(snapshot_id, table):
                with self._image_lock(snapshot_id):
                    if self.layer_mounted(snapshot_id):
                        continue  # another process mounted it meanwhile
                    if not self.read_only:
                        self._empty_upper(snapshot_id)  # what a killed Commit left
                    mountlib.mount(self.layer_mount(snapshot_id), self.upper_of(snapshot_id))

    @contextlib.contextmanager
    def _image_lock(self, snapshot_id):
        """An flock of the snapshot's image: who mounts it, or empties its fs/."""
        image = self.image_of(snapshot_id)
        try:
            descriptor = os.open(image, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise errors.FailedPrecondition(
                "erofs backend: committed snapshot (id %s) has no image at %s; see "
                "snaplab doctor" % (snapshot_id, image)) from None
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX)
            yield
        finally:
            os.close(descriptor)

    def _empty_upper(self, snapshot_id):
        """Delete what is left in a committed snapshot's fs/ (its content is
        in the image); the caller holds the image lock and fs/ is not mounted."""
        upper = self.upper_of(snapshot_id)
        for name in os.listdir(upper):
            fsutil.remove_tree(os.path.join(upper, name))

    # -- commit -----------------------------------------------------------------

    def commit_usage(self, snap):
        """Pack the upper dir into layer.erofs; the image's disk usage is the
        committed snapshot's (containerd: DiskUsage of the blob)."""
        image = self.image_of(snap.id)
        descriptor, staged = tempfile.mkstemp(prefix=STAGED_IMAGE_PREFIX,
                                              dir=os.path.dirname(image))
        os.close(descriptor)
        try:
            self._build_image(self.upper_of(snap.id), staged)
            faults.point("erofs.image_built")
            os.rename(staged, image)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(staged)
            raise
        _fsync_directory(os.path.dirname(image))
        faults.point("erofs.image_stored")
        self.sync_before_measuring()  # on ZFS, st_blocks waits for the pool's sync
        return fsutil.disk_usage(image)

    @staticmethod
    def _build_image(upper, image):
        done = subprocess.run([MKFS_EROFS, *MKFS_OPTIONS, image, upper],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, check=False)
        if done.returncode != 0:
            raise errors.FailedPrecondition(
                "erofs backend: %s of %s failed (exit %d): %s"
                % (MKFS_EROFS, upper, done.returncode,
                   done.stdout.decode(errors="replace").strip()[-500:]))
        descriptor = os.open(image, os.O_RDONLY | os.O_CLOEXEC)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)

    def commit(self, name, key, labels=None, parent=None):
        super().commit(name, key, labels=labels, parent=parent)
        # Committed: the content is in the image, the upper's copy is freed.
        # A kill before it is done leaves it for the next mount or Cleanup.
        faults.point("erofs.committed")
        if self.read_only:
            return
        with self.store.transaction() as tx:
            try:
                snapshot_id = tx.get_info(name)[0]
            except errors.NotFound:
                return  # removed meanwhile
        try:
            with self._image_lock(snapshot_id):
                if not self.layer_mounted(snapshot_id):
                    self._empty_upper(snapshot_id)
        except (errors.FailedPrecondition, OSError) as err:  # committed all the same
            log.warning("snapshot %r committed, but its upper's files are left for the next "
                        "mount or Cleanup: %s", name, err)

    # -- remove, cleanup and doctor ---------------------------------------------

    def remove_storage_entries(self, entries):
        # The image mounted on fs/ goes first (detached if a consumer's
        # overlay still holds it).
        for entry in entries:
            unmount_tree(entry.path)
            faults.point("erofs.unmounted")
        super().remove_storage_entries(entries)

    def absent_storage(self, snapshot_id, kind):
        absent = super().absent_storage(snapshot_id, kind)
        if kind == Kind.COMMITTED and not os.path.isfile(self.image_of(snapshot_id)):
            absent.append(self.image_of(snapshot_id))
        return absent

    def storage_findings(self, rows):
        found = super().storage_findings(rows)
        table = mountlib.mount_table()
        for snapshot_id, key, kind, _parent_id, _labels in rows:
            found += self._leftovers(snapshot_id, key, kind, table)
        return found

    def _leftovers(self, snapshot_id, key, kind, table):
        """What a killed Commit left in a snapshot's directory."""
        directory = os.path.join(self.snapshots_dir, str(snapshot_id))
        found = []
        try:
            names = os.listdir(directory)
        except FileNotFoundError:
            return found
        for name in names:
            if not name.startswith(STAGED_IMAGE_PREFIX) and not (
                    name == IMAGE_NAME and kind != Kind.COMMITTED):
                continue
            path = os.path.join(directory, name)

            def repair(tx, path=path):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
                return []
            found.append(Finding(
                "staged-image", path,
                "an image of %s snapshot %r whose Commit was killed before it finished"
                % (kind, key), "delete it", repair))
        upper = self.upper_of(snapshot_id)
        if kind == Kind.COMMITTED and os.path.isfile(self.image_of(snapshot_id)) \
                and not self.layer_mounted(snapshot_id, table) \
                and os.path.isdir(upper) and os.listdir(upper):

            def empty(tx, snapshot_id=snapshot_id):
                with self._image_lock(snapshot_id):
                    if not self.layer_mounted(snapshot_id):
                        self._empty_upper(snapshot_id)
                return []
            found.append(Finding(
                "committed-upper", upper,
                "committed snapshot %r still has its upper directory's files (its content "
                "is in %s; a Commit was killed before it freed them)" % (key, IMAGE_NAME),
                "delete them", empty))
        return found

    # -- for tests and tools ------------------------------------------------------

    @classmethod
    def kept_mounts_under(cls, directory):
        """The image mounts erofs roots below `directory` keep by design
        (<root>/snapshots/<id>/fs), latest first: not leaks, but what a
        reboot takes away."""
        table = mountlib.mount_table()
        kept = []
        for where in mountlib.mounts_under(directory):
            parts = where.rsplit("/", 3)
            if len(parts) == 4 and parts[1] == "snapshots" and parts[3] == "fs" \
                    and mountlib.mount_on_top(where, table).fstype == "erofs":
                kept.append(where)
        return kept


def _fsync_directory(path):
    descriptor = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
