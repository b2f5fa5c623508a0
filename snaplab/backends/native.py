"""native: every snapshot is a full copy of its parent (docs/semantics.md §5).

Layout: <root>/snapshots/<id>/ is the snapshot's tree itself. Works on any
filesystem (it needs no d_type, no overlay, no CoW), at the cost of O(size)
time and space per snapshot.
"""

import os

from .. import fsutil
from .. import idmap
from ..types import Kind, Mount
from .base import StoreSnapshotter
from .pathlayout import OnePathPerSnapshot


class NativeSnapshotter(OnePathPerSnapshot, StoreSnapshotter):
    name = "native"

    def capabilities(self):
        # The mapping labels are honoured by a chown remap at Prepare/View.
        return [idmap.REMAP_CAPABILITY]

    def setup_layout(self):
        self.ensure_directory(self.snapshots_dir)

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
