"""What every backend shares: the metadata flow around the filesystem work.

A backend is the metadata store plus the few filesystem operations that
differ (containerd's pattern): it subclasses StoreSnapshotter and fills in the
hooks at the bottom. The order of checks and the transaction boundaries live
here once, so every backend raises the same error in the same case.
"""

import contextlib
import logging
import os
import tempfile

from .. import errors
from .. import filters
from .. import fsutil
from .. import labels as labelrules
from ..metastore import MetaStore
from ..snapshotter import Snapshotter
from ..types import Kind, Usage

log = logging.getLogger("snaplab")


def nearest_existing(path):
    """The path itself or its closest existing ancestor (to probe before creating)."""
    while not os.path.exists(path):
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return path


class StoreSnapshotter(Snapshotter):
    """A Snapshotter over MetaStore; subclasses supply the filesystem part."""

    name = None  # the backend's name, as given to --backend

    def __init__(self, root, **options):
        if not isinstance(root, str) or not root:
            raise errors.InvalidArgument("the snapshotter root must be a non-empty path")
        self.root = os.path.abspath(root)
        if os.path.exists(self.root) and not os.path.isdir(self.root):
            raise errors.InvalidArgument("snapshotter root %s exists and is not a directory"
                                         % self.root)
        self.options = options
        self._check_options(options)
        # Refuse an unsuitable filesystem before creating anything on it.
        self.check_filesystem(nearest_existing(self.root))
        os.makedirs(self.root, mode=0o700, exist_ok=True)
        self.store = MetaStore(os.path.join(self.root, "metadata.db"), backend=self.name)
        try:
            self.setup_layout()
        except BaseException:
            self.store.close()
            raise

    def _check_options(self, options):
        unknown = set(options) - set(self.accepted_options())
        if unknown:
            raise errors.InvalidArgument(
                "backend %s has no option %s (it accepts: %s)" % (
                    self.name, ", ".join(sorted(unknown)),
                    ", ".join(sorted(self.accepted_options())) or "none"))

    # -- the interface ----------------------------------------------------

    def stat(self, key):
        with self.store.transaction() as tx:
            return self.decorate_info(tx.get_info(key)[1], tx)

    def update(self, info, *fieldpaths):
        labelrules.validate_key(info.name)
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
            labelrules.validate_key(parent, "parent")
        labels = labelrules.validate(labels)
        snap = None
        try:
            with self.store.transaction(write=True) as tx:
                snap = tx.create_snapshot(kind, key, parent or "", labels)
                info = tx.get_info(key)[1]
                self.create_storage(snap, info)
        except BaseException:
            if snap is not None:  # the row is rolled back; do not leave its data
                self.remove_storage_entries(self.storage_entries_of(snap.id))
            raise
        return self.snapshot_mounts(snap, info)

    def commit(self, name, key, labels=None, parent=None):
        labelrules.validate_key(name, "name")
        labelrules.validate_key(key)
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
        except BaseException:
            # The metadata was rolled back after the disk work was done:
            # the snapshot is still active, so its data must be too.
            if stored is not None:
                self.undo_commit_storage(*stored)
            raise

    def remove(self, key):
        labelrules.validate_key(key)
        with self.store.transaction(write=True) as tx:
            snapshot_id, kind = tx.remove(key)
            self.remove_storage(snapshot_id, kind)
        # Only this snapshot's data goes now: sweeping every orphan on each
        # Remove (containerd's overlay does) costs a directory listing per
        # call; other leftovers wait for cleanup().
        orphans = [] if self.async_remove else self.storage_entries_of(snapshot_id)
        # After the commit: the id is gone for good, nobody can want its data.
        # The removal itself succeeded, so a failure here is only logged, and
        # what is left stays an orphan for cleanup() (as containerd does).
        try:
            self.remove_storage_entries(orphans)
        except OSError as err:
            log.warning("snapshot %r removed, but its data is left for cleanup: %s", key, err)

    def walk(self, fn, *filter_strings):
        matcher = filters.parse(*filter_strings)
        with self.store.transaction() as tx:
            found = [self.decorate_info(info, tx) for info in tx.walk(matcher)]
        # The callback runs outside the transaction so it can call Stat & co.
        for info in found:
            fn(info)

    def cleanup(self):
        with self.store.transaction(write=True) as tx:  # blocks creators meanwhile
            orphans = self._orphans(tx)
        self.remove_storage_entries(orphans)

    def close(self):
        self.store.close()

    def _orphans(self, tx):
        live = {str(i) for i in tx.id_map()}
        return [entry for entry in self.storage_entries() if entry.id not in live]

    # -- helpers for backends ----------------------------------------------

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
            os.rename(staging, final_path)
        except BaseException:
            fsutil.remove_tree(staging)
            raise

    # -- hooks -------------------------------------------------------------

    async_remove = False

    @classmethod
    def accepted_options(cls):
        """Names of the keyword options the backend understands."""
        return ()

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
        for entry in entries:
            fsutil.remove_tree(entry.path)

    def decorate_info(self, info, tx):
        """Add backend-computed labels to Info (overlay's upperdir label)."""
        return info


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
