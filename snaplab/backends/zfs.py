"""zfs: every snapshot is a ZFS dataset (docs/semantics.md §5, containerd/zfs).

The root is the mount point of a dataset of its own, <rootds> (it holds
metadata.db). Snapshot <id> is the dataset <rootds>/<id>, whatever its kind;
a committed one is frozen in the ZFS snapshot <rootds>/<id>@snapshot. A
parentless snapshot is a new dataset (`zfs create`), one with a parent a
`zfs clone` of the parent's @snapshot: O(1), copy on write, and its `used`
counts only its own changes.

Two mount modes, chosen from the root's filesystem type:
- OpenZFS in the kernel ("zfs"): containerd's shape. Datasets have
  mountpoint=legacy and the caller mounts them: Mount(type="zfs",
  source="<rootds>/<id>").
- zfs-fuse ("fuse.zfs"): its datasets cannot be mounted with mount(2), and
  it refuses legacy ones, so each dataset is mounted by the daemon at
  <root>/snapshots/<id> and the caller gets a bind mount of that. Commit
  sets mountpoint=none on the committed dataset (its data lives on in the
  immutable @snapshot and its clones).

Deviations from containerd's zfs snapshotter, and why:
- Views are clones with readonly=on (containerd's are writable clones with
  only an "ro" mount option), and Mounts() of a view says "ro" (containerd's
  Mounts() returns the rw form); active mounts say "rw".
- Usage forces a transaction group sync first: `used` lags the data written
  until the txg syncs (seconds), so an unsynced figure is too small.
- Remove refuses (FailedPrecondition) while the dataset is mounted anywhere
  but its own zfs-fuse mount point, instead of letting `zfs destroy`
  unmount it under the caller.
- cleanup() destroys orphan datasets (containerd's zfs has no Cleanup).

The zfs command itself (running it, syncing, listing, destroying with the
busy retries) is in zfs_commands.py; this module is the Snapshotter.
"""

import contextlib
import logging
import os
import re
import shutil

from .. import errors
from .. import mount as mountlib
from ..kernel import FUSE_ZFS_FSTYPE, ZFS_FSTYPES
from ..types import Finding, Kind, Mount, Usage
from .base import StorageEntry, StoreSnapshotter, missing_storage
from .zfs_commands import (ZfsError, child_filesystems, destroy_dataset,
                           mountpoints_under, run_zfs, sync_dataset, used_bytes)

log = logging.getLogger("snaplab")

SNAPSHOT_SUFFIX = "@snapshot"  # containerd's name for a committed snapshot's ZFS snapshot
NUMERIC = re.compile(r"[0-9]+")


class ZfsSnapshotter(StoreSnapshotter):
    name = "zfs"

    def check_filesystem(self, path):
        # `path` is the root or, when the root is missing, its nearest
        # existing ancestor: a root must already be a dataset's mount point.
        backing = mountlib.lookup(path)
        root = os.path.realpath(self.root)
        if backing.fstype in ZFS_FSTYPES and backing.mountpoint == root:
            if shutil.which("zfs") is None:
                raise errors.FailedPrecondition(
                    "zfs backend: %s is a ZFS dataset, but the zfs command is not installed "
                    "(zfsutils-linux, or zfs-fuse)" % root)
            # Kept: every operation names datasets and picks the mount mode by these.
            self.root_dataset = backing.source
            self.fuse = backing.fstype == FUSE_ZFS_FSTYPE
            self.real_root = root
            return
        if path != self.root:
            why = "it does not exist"
        elif backing.fstype in ZFS_FSTYPES:
            why = ("it is a directory in the dataset %s mounted at %s; each root needs a "
                   "dataset of its own" % (backing.source, backing.mountpoint))
        else:
            why = "it is on %s (%s)" % (backing.fstype, backing.source)
        parent = backing.source if backing.fstype in ZFS_FSTYPES else "<pool>"
        raise errors.FailedPrecondition(
            "zfs backend: %s is not a ZFS dataset's mount point (%s); create one with "
            "`zfs create -o mountpoint=%s %s/<name>`" % (root, why, root, parent))

    def setup_layout(self):
        if self.fuse:
            self.ensure_directory(self.snapshots_dir)

    @property
    def snapshots_dir(self):
        return os.path.join(self.real_root, "snapshots")

    def dataset_of(self, snapshot_id):
        return "%s/%s" % (self.root_dataset, snapshot_id)

    def home_of(self, snapshot_id):
        """Where zfs-fuse mounts the snapshot's dataset (None with kernel zfs)."""
        return os.path.join(self.snapshots_dir, str(snapshot_id)) if self.fuse else None

    # -- hooks -------------------------------------------------------------

    def create_storage(self, snap, info):
        properties = ["-o", "mountpoint=%s" % (self.home_of(snap.id) or "legacy")]
        if snap.kind == Kind.VIEW:
            properties += ["-o", "readonly=on"]
        dataset = self.dataset_of(snap.id)
        if snap.parent_ids:
            command = ("clone", *properties,
                       self.dataset_of(snap.parent_ids[0]) + SNAPSHOT_SUFFIX, dataset)
        else:
            command = ("create", *properties, dataset)
        try:
            run_zfs(*command)
        except ZfsError as err:
            if not err.exists:
                raise
            # Left by an operation killed before its metadata committed (the
            # id came back with the rollback): nobody's, so it goes.
            self.remove_storage_entries(self.storage_entries_of(snap.id))
            run_zfs(*command)

    def clear_stale_storage(self, snapshot_id):
        # Asking zfs costs a command per Prepare; create_storage instead
        # clears a stale dataset when zfs says it already exists.
        pass

    def snapshot_mounts(self, snap, info):
        mode = "rw" if snap.kind == Kind.ACTIVE else "ro"
        dataset = self.dataset_of(snap.id)
        home = self.home_of(snap.id)
        if home is None:
            return [Mount(type="zfs", source=dataset, options=[mode])]
        if not mountlib.is_mountpoint(home):
            # Unmounted behind our back (a destroy that failed busy unmounts
            # first): a bind of the empty directory would hide the data.
            try:
                run_zfs("mount", dataset)
            except ZfsError:
                if snap.kind != Kind.ACTIVE:
                    raise
                # A Commit killed after it set mountpoint=none: mount the
                # active dataset back where it lives.
                run_zfs("set", "mountpoint=" + home, dataset)
        return [Mount(type="bind", source=home, options=["rbind", mode])]

    def active_usage(self, snap):
        dataset = self.dataset_of(snap.id)
        sync_dataset(dataset)
        return Usage(size=used_bytes(dataset), inodes=-1)  # zfs counts no inodes (containerd: -1)

    def commit_storage(self, snap, snapshot_id):
        if snap is None:
            return
        dataset = self.dataset_of(snapshot_id)
        try:
            run_zfs("snapshot", dataset + SNAPSHOT_SUFFIX)
        except ZfsError as err:
            if not err.exists:
                raise
            # Left by a Commit killed before its metadata committed; the
            # dataset may have changed since, so it is taken again.
            run_zfs("destroy", dataset + SNAPSHOT_SUFFIX)
            run_zfs("snapshot", dataset + SNAPSHOT_SUFFIX)
        if self.fuse:
            try:
                run_zfs("set", "mountpoint=none", dataset)
            except BaseException:
                with contextlib.suppress(ZfsError):
                    self.undo_commit_storage(snap, snapshot_id)
                raise
            self._remove_home(snapshot_id)

    def undo_commit_storage(self, snap, snapshot_id):
        if snap is None:
            return
        dataset = self.dataset_of(snapshot_id)
        if self.fuse:  # zfs-fuse mounts it back (and makes the directory)
            run_zfs("set", "mountpoint=" + self.home_of(snapshot_id), dataset)
        run_zfs("destroy", dataset + SNAPSHOT_SUFFIX)

    def remove_storage(self, snapshot_id, kind):
        # Inside the transaction: if the dataset is in use, the snapshot
        # stays, metadata and data alike. The destroy itself comes after the
        # commit, as in the other backends: destroying inside the
        # transaction (containerd does) leaves, when the process is killed
        # between the two, a snapshot whose data is gone.
        dataset = self.dataset_of(snapshot_id)
        home = self.home_of(snapshot_id)
        held = [entry.mountpoint for entry in mountlib.mount_table()
                if entry.source == dataset and entry.fstype in ZFS_FSTYPES
                and entry.mountpoint != home]
        if held:
            raise errors.FailedPrecondition(
                "zfs backend: the dataset %s of snapshot id %s is mounted at %s; unmount it "
                "before removing the snapshot" % (dataset, snapshot_id, ", ".join(held)))

    def storage_entries(self):
        prefix = self.root_dataset + "/"
        ids = {name[len(prefix):] for name in child_filesystems(self.root_dataset)
               if NUMERIC.fullmatch(name[len(prefix):])}
        if self.fuse:  # mount point directories left by a crash between destroy and rmdir
            with contextlib.suppress(FileNotFoundError):
                ids.update(name for name in os.listdir(self.snapshots_dir)
                           if NUMERIC.fullmatch(name))
        return [StorageEntry(i, self.dataset_of(i)) for i in sorted(ids, key=int)]

    def storage_entries_of(self, snapshot_id):
        # Cheap: whether the dataset still exists is destroy's question.
        return [StorageEntry(str(snapshot_id), self.dataset_of(snapshot_id))]

    def remove_storage_entries(self, entries):
        for entry in entries:
            # With its dependents: a clone of a dataset no snapshot uses any
            # more is itself an orphan (a snapshot's parent is always in the
            # metadata), left by a Prepare whose own undo failed.
            destroy_dataset(entry.path, dependents=True)
            self._remove_home(entry.id)

    def claim_orphan(self, entry):
        # A dataset cannot be renamed away as cheaply as a directory:
        # orphans (rare: a crash's leftovers) are destroyed under the lock.
        self.remove_storage_entries([entry])
        return []

    def storage_findings(self, rows):
        mountpoints = mountpoints_under(self.root_dataset)

        def missing(snapshot_id, kind, _parent_id):
            dataset = self.dataset_of(snapshot_id)
            if dataset not in mountpoints:
                return dataset
            if kind == Kind.COMMITTED and dataset + SNAPSHOT_SUFFIX not in mountpoints:
                return dataset + SNAPSHOT_SUFFIX
            return None
        found = missing_storage(rows, missing)
        for snapshot_id, key, kind, _parent, _labels in rows:
            dataset = self.dataset_of(snapshot_id)
            if kind != Kind.ACTIVE or dataset not in mountpoints:
                continue
            if dataset + SNAPSHOT_SUFFIX in mountpoints:
                def repair(tx, dataset=dataset):
                    run_zfs("destroy", dataset + SNAPSHOT_SUFFIX)
                    return []
                found.append(Finding(
                    "stale-zfs-snapshot", dataset + SNAPSHOT_SUFFIX,
                    "active snapshot %r has the ZFS snapshot of a Commit killed before its "
                    "metadata committed" % key, "destroy the ZFS snapshot", repair))
            home = self.home_of(snapshot_id)
            if home is not None and mountpoints[dataset] != home:
                def remount(tx, dataset=dataset, home=home):
                    run_zfs("set", "mountpoint=" + home, dataset)
                    return []
                found.append(Finding(
                    "zfs-mountpoint", dataset,
                    "active snapshot %r has mountpoint=%s (a Commit killed after it unmounted "
                    "the dataset)" % (key, mountpoints[dataset]),
                    "set mountpoint=%s" % home, remount))
        return found

    # -- helpers -------------------------------------------------------------

    def _remove_home(self, snapshot_id):
        """zfs-fuse leaves the mount point directory behind; remove it if empty."""
        home = self.home_of(snapshot_id)
        if home is None:
            return
        try:
            os.rmdir(home)
        except FileNotFoundError:
            pass
        except OSError as err:
            log.warning("zfs backend: cannot remove the mount point %s: %s", home, err)


__all__ = ["ZfsSnapshotter", "SNAPSHOT_SUFFIX"]
