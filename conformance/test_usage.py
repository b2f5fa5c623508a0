"""Usage: what a snapshot itself costs (docs/semantics.md §1, §7 for the tolerances).

Active = measured now, own data only; committed = the value stored at commit;
view = zero. Backends whose snapshots are full copies (native) include the
parent's content, as containerd's native does; the case that needs
parent exclusion says so and is skipped for them.
"""

import pytest

from snaplab.types import Usage

from . import fstest
from .helpers import apply_to_mounts

MIB = 1024 * 1024

FULL_COPY_BACKENDS = {"native"}
# zfs reports the dataset's `used` bytes and no inode count (-1), as containerd's zfs.
INODES_NOT_COUNTED = {"zfs"}


def _counts_inodes(target, usage):
    counted = target.model not in INODES_NOT_COUNTED
    assert (usage.inodes != -1) == counted, "inodes %s for %s" % (usage.inodes, target.backend)
    return counted


def test_usage_of_empty_active_snapshot_is_not_zero(snapshotter, target):
    # containerd's zfs and devmapper cases: an empty snapshot still costs
    # something (its root directory; a dataset's metadata).
    snapshotter.prepare("empty", "")
    usage = snapshotter.usage("empty")
    if _counts_inodes(target, usage):
        assert usage.inodes >= 1
        assert usage.size >= 0  # btrfs directories have no blocks of their own
    else:
        assert usage.size > 0


def test_usage_of_one_mib_file_is_at_least_one_mib(snapshotter, work, target):
    mounts = snapshotter.prepare("layer", "")
    apply_to_mounts(mounts, work, fstest.create_random_file("/a", 12345679, MIB, 0o644))
    active = snapshotter.usage("layer")
    assert active.size >= MIB
    if _counts_inodes(target, active):
        assert active.inodes >= 2


def test_committed_usage_is_the_value_measured_at_commit(snapshotter, work):
    mounts = snapshotter.prepare("layer", "")
    apply_to_mounts(mounts, work, fstest.create_random_file("/a", 1, MIB, 0o644))
    before = snapshotter.usage("layer")
    snapshotter.commit("committed", "layer")
    assert snapshotter.usage("committed") == before


def test_usage_of_view_is_zero(snapshotter, work):
    mounts = snapshotter.prepare("layer", "")
    apply_to_mounts(mounts, work, fstest.create_random_file("/a", 1, MIB, 0o644))
    snapshotter.commit("committed", "layer")
    snapshotter.view("view", "committed")
    snapshotter.view("empty-view", "")
    assert snapshotter.usage("view") == Usage(0, 0)
    assert snapshotter.usage("empty-view") == Usage(0, 0)


def test_usage_of_child_excludes_its_parent(snapshotter, work, target):
    if target.model in FULL_COPY_BACKENDS:
        pytest.skip("%s snapshots are full copies: their usage includes the parent's "
                    "content, as containerd's %s reports it" % (target.backend, target.backend))
    mounts = snapshotter.prepare("layer-1", "")
    apply_to_mounts(mounts, work, fstest.create_random_file("/one", 1, MIB, 0o644))
    snapshotter.commit("committed-1", "layer-1")
    mounts = snapshotter.prepare("layer-2", "committed-1")
    apply_to_mounts(mounts, work, fstest.create_random_file("/two", 2, 2 * MIB, 0o644))
    layer2 = snapshotter.usage("layer-2")
    assert 2 * MIB <= layer2.size < 3 * MIB
    snapshotter.commit("committed-2", "layer-2")
    assert snapshotter.usage("committed-2") == layer2
    # and a grandchild excludes both (containerd's TestZFSUsage layer-3)
    mounts = snapshotter.prepare("layer-3", "committed-2")
    apply_to_mounts(mounts, work, fstest.create_random_file("/three", 3, MIB, 0o644))
    layer3 = snapshotter.usage("layer-3")
    assert MIB <= layer3.size < layer2.size


def test_usage_counts_hardlinked_data_once(snapshotter, work):
    mounts = snapshotter.prepare("layer", "")
    apply_to_mounts(mounts, work, fstest.apply(
        fstest.create_random_file("/a", 3, MIB, 0o644),
        fstest.link("/a", "/b"), fstest.link("/a", "/c")))
    usage = snapshotter.usage("layer")
    assert MIB <= usage.size < 2 * MIB
