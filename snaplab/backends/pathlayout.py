"""The layout of native and blockfile: each snapshot's data is one path,
<root>/snapshots/<id> (a directory tree for native, an image file for
blockfile), and a view of a parent has none of its own (it mounts the
parent's). What the two backends share of listing and checking it."""

import os

from ..types import Kind
from .base import StorageEntry, directory_entries, missing_storage


class OnePathPerSnapshot:
    """A mixin before StoreSnapshotter; `holds_data(path)` says whether the
    path found is whole (os.path.isdir for a tree, isfile for an image)."""

    holds_data = staticmethod(os.path.isdir)

    @property
    def snapshots_dir(self):
        return os.path.join(self.root, "snapshots")

    def path_of(self, snapshot_id):
        return os.path.join(self.snapshots_dir, str(snapshot_id))

    def storage_entries(self):
        return directory_entries(self.snapshots_dir)

    def storage_entries_of(self, snapshot_id):
        path = self.path_of(snapshot_id)
        return [StorageEntry(str(snapshot_id), path)] if os.path.lexists(path) else []

    def storage_findings(self, rows):
        def missing(snapshot_id, kind, parent_id):
            if kind == Kind.VIEW and parent_id is not None:
                return None  # a view of a parent has no data of its own
            path = self.path_of(snapshot_id)
            return None if self.holds_data(path) else path
        return missing_storage(rows, missing)
