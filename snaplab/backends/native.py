"""native: every snapshot is a full copy of its parent (docs/semantics.md §5).

Layout: <root>/snapshots/<id>/ is the snapshot's tree itself. Works on any
filesystem (it needs no d_type, no overlay, no CoW), at the cost of O(size)
time and space per snapshot.
"""

import os

from .. import fsutil
from .. import idmap
from ..types import Kind, Mount
from .base import StorageEntry, StoreSnapshotter, directory_entries, missing_storage


class NativeSnapshotter(StoreSnapshotter):
    name = "native"

    def capabilities(self):
        # The mapping labels are honoured by a chown remap at Prepare/View.
        return [idmap.REMAP_CAPABILITY]

    def setup_layout(self):
        self.ensure_directory(self.snapshots_dir)

    @property
    def snapshots_dir(self):
        return os.path.join(self.root, "snapshots")

    def path_of(self, snapshot_id):
        return os.path.join(self.snapshots_dir, str(snapshot_id))

    def create_storage(self, snap, info):
        mapping = idmap.from_labels(info.labels)
        if snap.kind == Kind.VIEW and snap.parent_ids and mapping is None:
            return  # a view of a parent just binds the parent read-only
        # 0755 whatever the umask: containerd's RootPermission case.
        with self.staged_directory(self.path_of(snap.id), mode=0o755) as staging:
            if snap.parent_ids:
                fsutil.copy_tree(self.path_of(snap.parent_ids[0]), staging)
            if mapping is not None:  # a mapped view is a remapped copy of its own
                idmap.remap_tree(staging, mapping)

    def snapshot_mounts(self, snap, info):
        if (snap.kind == Kind.VIEW and snap.parent_ids
                and not os.path.isdir(self.path_of(snap.id))):
            source = self.path_of(snap.parent_ids[0])
        else:
            source = self.path_of(snap.id)
        mode = "rw" if snap.kind == Kind.ACTIVE else "ro"
        return [Mount(type="bind", source=source, options=["rbind", mode])]

    def active_usage(self, snap):
        # A full copy: the committed usage includes the parent's content,
        # exactly as containerd's native snapshotter reports it.
        path = self.path_of(snap.id)
        self.sync_before_measuring()
        return fsutil.disk_usage(path)

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
            return None if os.path.isdir(path) else path
        return missing_storage(rows, missing)
