"""The backends the model tests drive, on real filesystems made once per run
(the fixtures are in conftest.py).

native, overlay, blockfile and erofs go on a loop ext4, btrfs on a loop btrfs, zfs on a pool
(zfs-fuse where the kernel has no zfs module), all made by the conformance
harness's FilesystemPool in a `snaplab-test-model-*` scratch directory and
removed at the end of the session, also when tests fail. Each example or
test gets a fresh root: a directory of its own, or for zfs a dataset of its
own (`zfs create -o mountpoint=<root>`), destroyed when it ends.

SNAPLAB_MODEL_BACKENDS (comma-separated) narrows the backends.
"""

import contextlib
import os
import tempfile

import pytest

from snaplab import mount as mountlib
from snaplab.backends import open_snapshotter

# name -> (backend, its options, the FilesystemPool name its roots go on).
# overlay-async is overlay as containerd's plugin runs it by default: Remove
# leaves the data to Cleanup.
BACKENDS = {
    "native": ("native", {}, "ext4"),
    "overlay": ("overlay", {}, "ext4"),
    "overlay-async": ("overlay", {"async_remove": True}, "ext4"),
    "btrfs": ("btrfs", {}, "btrfs"),
    "zfs": ("zfs", {}, "zfs"),
    "blockfile": ("blockfile", {}, "ext4"),
    "erofs": ("erofs", {}, "ext4"),
}


def chosen_backends():
    names = [b.strip() for b in os.environ.get("SNAPLAB_MODEL_BACKENDS", "").split(",")
             if b.strip()] or list(BACKENDS)
    unknown = sorted(set(names) - set(BACKENDS))
    if unknown:
        raise pytest.UsageError("SNAPLAB_MODEL_BACKENDS: unknown backend %s (known: %s)"
                                % (", ".join(unknown), ", ".join(BACKENDS)))
    return names


class BackendEnv:
    """A backend (by its name in BACKENDS) and the filesystem its roots go on."""

    def __init__(self, name, fs):
        self.name = name
        self.backend, self.options, _ = BACKENDS[name]
        self.fs = fs

    def open(self, root):
        return open_snapshotter(root, self.backend, **self.options)

    @contextlib.contextmanager
    def fresh_root(self):
        """(root, scratch): a new empty root and a scratch directory beside it
        (for mount points); both go, with what is mounted there, on leaving."""
        base = tempfile.mkdtemp(prefix="model-", dir=self.fs.mountpoint)
        try:
            root = os.path.join(base, "root")
            scratch = os.path.join(base, "scratch")
            os.mkdir(scratch)
            if self.backend == "zfs":  # a zfs root is a dataset's mount point
                self.fs.make_root_dataset(root)
            yield root, scratch
        finally:
            self._release(base)

    def _release(self, base):
        # zfs-fuse's own mounts of the root's datasets go with the datasets;
        # anything else mounted there is a test's and goes now.
        ours = os.path.join(base, "scratch") if self.backend == "zfs" else base
        for where in mountlib.mounts_under(ours):
            mountlib.unmount_all(where)
        problems = self.fs.release_under(base) + self.fs.remove_tree(base)
        assert not problems, problems

    @contextlib.contextmanager
    def snapshotter(self):
        """A snapshotter on a fresh root, and its scratch directory."""
        with self.fresh_root() as (root, scratch):
            sn = self.open(root)
            try:
                yield sn, scratch
            finally:
                sn.close()
