"""What every backend shares: the metadata flow around the filesystem work.

A backend is the metadata store plus the few filesystem operations that
differ (containerd's pattern): it subclasses StoreSnapshotter and fills in the
hooks at the bottom. The order of checks and the transaction boundaries live
here once, so every backend raises the same error in the same case.
"""

import contextlib
import errno
import functools
import logging
import os
import tempfile
import time

from .. import errors
from .. import faults
from .. import filters
from .. import fsutil
from .. import labels as labelrules
from .. import leases
from .. import mount as mountlib
from .. import options as optionlib
from . import reserve
from .removal import BackgroundRemoval
from . import zfs_commands
from ..metastore import METADATA_FILE, WRITE_PROBE_PREFIX, MetaStore
from ..snapshotter import Snapshotter
from ..types import Finding, Kind, Usage

log = logging.getLogger("snaplab")


def nearest_existing(path):
    """The path itself or its closest existing ancestor (to probe before creating)."""
    while not os.path.exists(path):
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return path


LEASE_LABEL = leases.LEASE_LABEL
# Temporary mounts (a layer applied through the kernel) live under
# <root>/mounts/<lease name>, each under a lease of that name.
MOUNTS_DIRECTORY = "mounts"
# How old a probe directory (see probe_prefixes) must be before Cleanup takes
# it for a crash's leftover: a probe lives for milliseconds while a root is
# opened, outside any lock.
PROBE_GRACE_SECONDS = 60
# Data a Cleanup took away from under its id, to be deleted outside the lock.
CLAIMED_PREFIX = "rm-"
# The lease a Remove holds on its snapshot's data until it has deleted it.
REMOVAL_LEASE = "remove-%s"


class StoreSnapshotter(Snapshotter):
    """A Snapshotter over MetaStore; subclasses supply the filesystem part.

    read_only=True opens an existing root for the verbs that only read
    (Stat, Walk, Usage, Mounts, doctor): nothing at all is written to the
    root, so a root on a filesystem mounted read-only works; a writing
    verb then fails with FailedPrecondition.
    """

    name = None  # the backend's name, as given to --backend
    _background_removal = None  # see remove_data_in_background()
    # Temporary names made in the root for a moment, outside any lock: the
    # d_type probe, the metadata store's write probe, the reserve being made.
    probe_prefixes = (fsutil.D_TYPE_PROBE_PREFIX, WRITE_PROBE_PREFIX,
                      reserve.RESERVE_STAGING_PREFIX)

    def __init__(self, root, read_only=False, **options):
        if not isinstance(root, str) or not root:
            raise errors.InvalidArgument("the snapshotter root must be a non-empty path")
        self.root = os.path.abspath(root)
        if os.path.exists(self.root) and not os.path.isdir(self.root):
            raise errors.InvalidArgument("snapshotter root %s exists and is not a directory"
                                         % self.root)
        self.read_only = read_only
        # Every declared option, typed: the given ones checked against the
        # declaration (InvalidArgument), the others at their declared default.
        self.options = {option.name: option.convert(option.default)
                        for option in self.declared_options}
        self.options.update(optionlib.convert(self.declared_options, options, self.name))
        # Refuse an unsuitable filesystem before creating anything on it.
        self.check_filesystem(nearest_existing(self.root))
        if read_only and not os.path.isdir(self.root):
            raise errors.NotFound("no snapshotter root at %s" % self.root)
        if not read_only:
            if os.path.isdir(self.root) and os.statvfs(self.root).f_flag & os.ST_RDONLY:
                raise errors.FailedPrecondition(
                    "the filesystem of snapshotter root %s is mounted read-only: only the "
                    "verbs that read (ls, info, usage, mounts, doctor...) work there" % self.root)
            os.makedirs(self.root, mode=0o700, exist_ok=True)
        try:
            self.store = self._open_store()
        except OSError as err:
            # Too full even for SQLite's lock files: the reserve makes room.
            if err.errno != errno.ENOSPC or read_only or not reserve.give_back(self.root):
                raise
            self.store = self._open_store()
        try:
            self.setup_layout()
        except BaseException:
            self.store.close()
            raise
        if not read_only:
            reserve.refill(self.root)

    def _open_store(self):
        return MetaStore(os.path.join(self.root, METADATA_FILE), backend=self.name,
                         read_only=self.read_only)

    def ensure_directory(self, path):
        """makedirs for setup_layout: a read-only root gets nothing made."""
        if not self.read_only:
            os.makedirs(path, mode=0o700, exist_ok=True)

    # -- the interface ----------------------------------------------------

    def stat(self, key):
        with self.store.transaction() as tx:
            return self.decorate_info(tx.get_info(key)[1], tx)

    def update(self, info, *fieldpaths):
        labelrules.validate_existing_key(info.name)
        labelrules.validate(info.labels)
        with self.store.transaction(write=True) as tx:
            return self.decorate_info(tx.update_info(info, fieldpaths), tx)

    def usage(self, key):
        with self.store.transaction() as tx:
            info, stored = tx.get_info(key)[1:]
            if info.kind != Kind.ACTIVE:
                return stored if info.kind == Kind.COMMITTED else Usage()
            snap = tx.get_snapshot(key)
        # Measured outside the transaction: it may take long (containerd
        # asks the same, so that writers are not held up).
        return self.active_usage(snap)

    def mounts(self, key):
        with self.store.transaction() as tx:
            snap = tx.get_snapshot(key)
            info = tx.get_info(key)[1]
        return self.snapshot_mounts(snap, info)

    def prepare(self, key, parent="", labels=None):
        return self._create(Kind.ACTIVE, key, parent, labels)

    def view(self, key, parent="", labels=None):
        return self._create(Kind.VIEW, key, parent, labels)

    def _create(self, kind, key, parent, labels):
        labelrules.validate_key(key)
        if parent:
            labelrules.validate_existing_key(parent, "parent")
        labels = labelrules.validate(labels)
        snap = None
        try:
            with self.store.transaction(write=True) as tx:
                snap = tx.create_snapshot(kind, key, parent or "", labels)
                info = tx.get_info(key)[1]
                # SQLite's id sequence rolls back with the transaction, so
                # this id may have been given before to an operation killed
                # before its metadata committed: what that one left under
                # the id belongs to no snapshot, and must not block this one.
                self.clear_stale_storage(snap.id)
                self.create_storage(snap, info)
                faults.point("create.stored")
        except BaseException:
            if snap is not None:  # the row is rolled back; do not leave its data
                self.remove_storage_entries(self.storage_entries_of(snap.id))
            raise
        return self.snapshot_mounts(snap, info)

    def commit(self, name, key, labels=None, parent=None):
        labelrules.validate_key(name, "name")
        labelrules.validate_existing_key(key)
        labels = labelrules.validate(labels)
        stored = None
        try:
            with self.store.transaction(write=True) as tx:
                info = tx.get_info(key)[1]  # NotFound before anything else
                usage = Usage()
                snap = None
                if info.kind == Kind.ACTIVE:
                    snap = tx.get_snapshot(key)
                    usage = self.commit_usage(snap)
                snapshot_id = tx.commit_active(key, name, usage, labels, parent)
                self.commit_storage(snap, snapshot_id)
                stored = (snap, snapshot_id)
                faults.point("commit.stored")
        except BaseException:
            # The metadata was rolled back after the disk work was done:
            # the snapshot is still active, so its data must be too.
            if stored is not None:
                self.undo_commit_storage(*stored)
            raise

    def remove(self, key):
        labelrules.validate_existing_key(key)
        snapshot_id, kind, lease = reserve.freeing_space(
            self.root, lambda: self._remove_metadata(key))
        faults.point("remove.committed")
        if self._background_removal is not None and not self.async_remove:
            self._background_removal.submit(key, snapshot_id, lease)  # it releases the lease
            return
        with lease:
            self._delete_removed_data(key, snapshot_id)
        reserve.refill(self.root)  # given back if the filesystem was full

    def _delete_removed_data(self, key, snapshot_id):
        """Delete the data of `snapshot_id`, whose Remove has committed (only
        its own: sweeping every orphan per Remove costs a listing). A failure
        is only logged: what is left is an orphan for cleanup(), as in containerd."""
        if self.async_remove:
            return
        try:
            self.remove_storage_entries(self.storage_entries_of(snapshot_id))
        except OSError as err:
            log.warning("snapshot %r removed, but its data is left for cleanup: %s",
                        key, err)

    def remove_data_in_background(self):
        """Remove returns once its metadata is committed; a BackgroundRemoval
        thread deletes the data (a kill leaves orphans for Cleanup)."""
        if self._background_removal is None:
            self._background_removal = BackgroundRemoval(self.root, self._delete_removed_data)

    def _remove_metadata(self, key):
        """The metadata part of Remove; returns (id, kind, lease): the lease
        on the id's data, taken inside the transaction, keeps a Cleanup
        (which needs the write lock, so comes after the commit) from
        deleting the same data at the same time until the caller is done."""
        lease = contextlib.ExitStack()
        try:
            with self.store.transaction(write=True) as tx:
                snapshot_id, kind = tx.remove(key)
                if not self.async_remove:
                    try:
                        lease.enter_context(
                            leases.hold(self.root, REMOVAL_LEASE % snapshot_id))
                    except OSError:  # no room even for a lock file: Cleanup may race
                        pass
                self.remove_storage(snapshot_id, kind)
                faults.point("remove.stored")
        except BaseException:
            lease.close()
            raise
        return snapshot_id, kind, lease

    def walk(self, fn, *filter_strings):
        matcher = filters.parse(*filter_strings)
        with self.store.transaction() as tx:
            found = [self.decorate_info(info, tx) for info in tx.walk(matcher)]
        # The callback runs outside the transaction so it can call Stat & co.
        for info in found:
            fn(info)

    def cleanup(self):
        """Repair what doctor() finds, as far as snaplab may: the repairs
        that touch metadata or names run under the write lock (so no
        operation can start on what they change); the deletions they hand
        back run after it, so writers are not held up by a long removal."""
        if self._background_removal is not None:
            self._background_removal.wait()  # what Remove left is freed too
        later = reserve.freeing_space(self.root, self._repair)
        for entry in later:
            faults.point("cleanup.entry")
            self.remove_storage_entries([entry])
        self._remove_old_probes()
        reserve.refill(self.root)

    def _repair(self):
        with self.store.transaction(write=True) as tx:  # blocks creators meanwhile
            later = []
            for finding in self._findings(tx):
                if finding.repair is not None:
                    later.extend(finding.repair(tx) or ())
        return later

    def doctor(self):
        """Every inconsistency between the metadata, the storage, the mounts
        and the temporary names of the root, as [Finding]. Reads only: it
        works on a root opened read-only."""
        with self.store.transaction() as tx:
            findings = self._findings(tx)
        for probe in self._old_probes():
            findings.append(Finding("probe", probe, "a temporary name left by a process "
                                    "killed while it opened the root", "remove it"))
        return findings

    def close(self):
        if self._background_removal is not None:
            self._background_removal.stop()  # finishes the deletions handed over
        self.store.close()

    # -- what doctor finds and cleanup repairs -------------------------------

    def _findings(self, tx):
        rows = tx.snapshot_rows()
        findings = self._stale_mounts()
        findings += self._expired_leases(rows)
        findings += self.storage_findings(rows)
        findings += self._orphans(rows)
        findings += self._stale_lease_files()
        return findings

    def _stale_mounts(self):
        """Temporary mounts whose process is gone (killed while applying)."""
        directory = os.path.join(self.root, MOUNTS_DIRECTORY)
        try:
            names = sorted(os.listdir(directory))
        except FileNotFoundError:
            return []
        found = []
        for name in names:
            path = os.path.join(directory, name)
            if leases.is_held(self.root, name) or not os.path.lexists(path):
                continue  # in use, or its process has just finished with it
            mounted = mountlib.mounts_under(path)

            def repair(tx, path=path):
                unmount_tree(path)
                with contextlib.suppress(FileNotFoundError):
                    os.rmdir(path)
                return []
            found.append(Finding(
                "stale-mount", path,
                ("a temporary mount (%s) whose process is gone" % ", ".join(mounted))
                if mounted else "an empty temporary mount point whose process is gone",
                "unmount it and remove the directory", repair))
        return found

    def _expired_leases(self, rows):
        """Active snapshots tied to a lease no live process holds: the
        extract snapshots of a killed layer unpack."""
        found = []
        for snapshot_id, key, kind, _parent, labels in rows:
            lease = labels.get(LEASE_LABEL)
            if not lease or kind == Kind.COMMITTED or leases.is_held(self.root, lease):
                continue

            def repair(tx, key=key):
                removed_id, removed_kind = tx.remove(key)
                self.remove_storage(removed_id, removed_kind)
                return self.storage_entries_of(removed_id)
            found.append(Finding(
                "expired-lease", key,
                "%s snapshot (id %s) of lease %s, which no live process holds (a layer "
                "unpack was killed)" % (kind, snapshot_id, lease),
                "remove the snapshot", repair))
        return found

    def _orphans(self, rows):
        live = {str(row[0]) for row in rows}
        found = []
        for entry in self.storage_entries():
            if entry.id in live or leases.is_held(self.root, REMOVAL_LEASE % entry.id):
                continue
            found.append(Finding(
                "orphan", entry.path,
                "storage of no snapshot (%s)" % self.orphan_reason(entry),
                "delete it", lambda tx, entry=entry: self.claim_orphan(entry)))
        return found

    def _stale_lease_files(self):
        found = []
        for name in leases.lease_names(self.root):
            if leases.is_held(self.root, name):
                continue

            def repair(tx, name=name):
                leases.remove_if_free(self.root, name)
                return []
            found.append(Finding(
                "lease-file", leases.lease_path(self.root, name),
                "the lock file of a lease no process holds", "remove the file", repair))
        return found

    def _old_probes(self):
        """Probes a crash left: old enough, or named <prefix><pid>-... by a dead pid."""
        try:
            names = os.listdir(self.root)
        except FileNotFoundError:
            return []
        old = []
        prefixes = self.probe_prefixes
        for path in (os.path.join(self.root, n) for n in names if n.startswith(prefixes)):
            pid = os.path.basename(path).rpartition("-")[0].rpartition("-")[2]
            try:
                age = time.time() - os.lstat(path).st_mtime
            except FileNotFoundError:
                continue
            if age > PROBE_GRACE_SECONDS or pid.isdigit() and not mountlib.pid_alive(int(pid)):
                old.append(path)
        return old

    def _remove_old_probes(self):
        for path in self._old_probes():
            unmount_tree(path)  # overlay's upper probe mounts inside its directory
            fsutil.remove_tree(path)
        mountlib.sweep_idmap_leftovers()  # a killed idmapped mount's binds, outside the root

    # -- leases and temporary mounts -----------------------------------------

    def lease(self, prefix="lease"):
        """Hold a new lease of this root (see snaplab.leases) for a block:
        `with sn.lease("extract") as name: sn.prepare(key, labels={LEASE_LABEL: name})`
        makes a snapshot that Cleanup removes once this process is gone."""
        name = "%s-%d-%s" % (prefix, os.getpid(), os.urandom(6).hex())
        return leases.hold(self.root, name)

    @contextlib.contextmanager
    def temporary_mount(self, mounts):
        """Mount `mounts` on a new directory under <root>/mounts for a block.

        Under a lease: if this process is killed meanwhile, the mount stays,
        but the next Cleanup (and doctor) finds it and takes it down.
        """
        with self.lease("mount") as name:
            path = os.path.join(self.root, MOUNTS_DIRECTORY, name)
            with mountlib.temporary_mount(mounts, path=path) as target:
                yield target

    # -- helpers for backends ----------------------------------------------

    @functools.cached_property
    def _dataset_of_root(self):
        """The ZFS dataset the root is on, or None; asked once: a backend
        that measures with disk_usage keeps its data on the root's filesystem."""
        return zfs_commands.dataset_of(self.root)

    def sync_before_measuring(self):
        """Before fsutil.disk_usage of the root's data: a tree on a ZFS
        dataset (a native or overlay root may be one) counts in st_blocks
        only what its pool has synced, so the pool is synced first (nothing
        elsewhere)."""
        if self._dataset_of_root:
            zfs_commands.sync_dataset(self._dataset_of_root)

    @contextlib.contextmanager
    def staged_directory(self, final_path, mode=0o755):
        """Build a directory under a temp name next to `final_path`, then rename.

        Made inside the write transaction, so a crash leaves only a `new-*`
        directory that Cleanup removes, never a half-built snapshot.
        """
        parent = os.path.dirname(final_path)
        staging = tempfile.mkdtemp(prefix="new-", dir=parent)
        try:
            os.chmod(staging, mode)
            yield staging
            faults.point("create.staged")
            os.rename(staging, final_path)
        except BaseException:
            fsutil.remove_tree(staging)
            raise

    # -- hooks -------------------------------------------------------------

    async_remove = False

    # The keyword options the backend understands (snaplab.options.Option).
    declared_options = ()

    def check_filesystem(self, path):
        """Raise FailedPrecondition if the filesystem at `path` cannot hold a root."""

    def setup_layout(self):
        """Create the backend's directories under self.root."""

    def create_storage(self, snap, info):
        """Make the on-disk data of a new active/view snapshot (inside the tx)."""
        raise NotImplementedError

    def snapshot_mounts(self, snap, info):
        """The Mounts of an active or view snapshot."""
        raise NotImplementedError

    def active_usage(self, snap):
        """Usage of an active snapshot's own changes, measured now."""
        raise NotImplementedError

    def commit_usage(self, snap):
        """The usage to store when `snap` is committed (default: active usage)."""
        return self.active_usage(snap)

    def commit_storage(self, snap, snapshot_id):
        """On-disk work of Commit, inside the tx (none when data stays in place)."""

    def undo_commit_storage(self, snap, snapshot_id):
        """Reverse commit_storage when the metadata transaction failed after it."""

    def remove_storage(self, snapshot_id, kind):
        """On-disk work of Remove inside the tx (e.g. a rename); orphans go after."""

    def storage_entries(self):
        """Every on-disk entry (StorageEntry) the backend owns under root."""
        raise NotImplementedError

    def storage_entries_of(self, snapshot_id):
        """The on-disk entries of one snapshot (backends may know them directly)."""
        return [e for e in self.storage_entries() if e.id == str(snapshot_id)]

    def remove_storage_entries(self, entries):
        """Delete entries; what vanishes meanwhile (a concurrent Cleanup or
        Remove deleting the same) is no error."""
        for entry in entries:
            fsutil.remove_tree(entry.path)

    def clear_stale_storage(self, snapshot_id):
        """Remove what a killed operation left under `snapshot_id` (inside
        the write tx of the snapshot that now gets this id)."""
        self.remove_storage_entries(self.storage_entries_of(snapshot_id))

    def claim_orphan(self, entry):
        """Take an orphan away from under its name, inside Cleanup's write
        tx, and return the entries to delete after it. A numeric name is
        renamed: once the lock is released, a Prepare may get that id again
        (a rolled-back id) and must not find its new data deleted."""
        if not entry.id.isdigit():
            return [entry]
        claimed = os.path.join(os.path.dirname(entry.path),
                               "%s%s-%s" % (CLAIMED_PREFIX, entry.id, os.urandom(4).hex()))
        try:
            os.rename(entry.path, claimed)
        except FileNotFoundError:
            return []  # gone already
        return [StorageEntry(entry.id, claimed)]

    def orphan_reason(self, entry):
        """Why an entry may be an orphan, for doctor's report."""
        if entry.id.startswith("new-"):
            return "a snapshot being made when its process was killed"
        if entry.id.startswith(CLAIMED_PREFIX):
            return "taken by a Cleanup that did not finish deleting it"
        if entry.id.isdigit():
            return "its snapshot was removed, or its creation was rolled back"
        return "a name snaplab does not make"

    def storage_findings(self, rows):
        """Backend checks of each snapshot's storage against its metadata
        (rows: [(id, key, Kind, parent_id, labels)]): missing data, a wrong
        read-only flag... as [Finding]."""
        return []

    def decorate_info(self, info, tx):
        """Add backend-computed labels to Info (overlay's upperdir label)."""
        return info


def unmount_tree(path):
    """Unmount everything mounted at or below `path`, deepest first."""
    for where in mountlib.mounts_under(path):  # latest first
        try:
            mountlib.unmount_all(where)
        except OSError:  # busy: detach it now, the kernel frees it when unused
            mountlib.unmount_all(where, mountlib.MNT_DETACH)


def missing_storage(rows, missing_of):
    """Findings for the snapshots whose storage is missing (no automatic fix:
    the snapshot's data is gone, only its owner can say what to do).
    missing_of(snapshot_id, kind, parent_id) names what is missing, or None."""
    found = []
    for snapshot_id, key, kind, parent_id, _labels in rows:
        where = missing_of(snapshot_id, kind, parent_id)
        if where is not None:
            found.append(Finding(
                "missing-data", key,
                "%s snapshot (id %s) has no data at %s" % (kind, snapshot_id, where),
                ""))
    return found


class StorageEntry:
    """One directory (or dataset...) under the root; `id` is the snapshot id it
    belongs to, or something else (new-xxxx, rm-12) for leftovers."""

    __slots__ = ("id", "path")

    def __init__(self, id, path):  # noqa: A002 - it is the snapshot id
        self.id = id
        self.path = path

    def __repr__(self):
        return "StorageEntry(%r, %r)" % (self.id, self.path)


def directory_entries(directory):
    """StorageEntry for each name in a backend directory like <root>/snapshots."""
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    return [StorageEntry(name, os.path.join(directory, name)) for name in names]
