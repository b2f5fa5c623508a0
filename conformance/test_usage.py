"""Usage: what a snapshot itself costs (docs/semantics.md §1, §7 for the tolerances).

Active = measured now, own data only; committed = the value stored at commit;
view = zero. Snapshotters whose snapshots are full copies (trait
usage_includes_parent, native's) include the parent's content, as containerd's
native does; the case that needs parent exclusion skips for them. Those that
count no inodes (trait inodes_reported, zfs's) report -1.
"""

import os
import tempfile
import time

import pytest

from snaplab import errors
from snaplab.types import Usage

from . import fstest
from .helpers import apply_to_mounts, mounted

MIB = 1024 * 1024
# How long removed data may linger behind a collector that runs on its own
# (containerd's garbage collection runs right after deletions).
COLLECTION_WAIT_S = 10


def _counts_inodes(target, usage):
    counted = target.traits.inodes_reported
    assert (usage.inodes != -1) == counted, "inodes %s where %s declares inodes_reported: %s" % (
        usage.inodes, target.traits.source, counted)
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


def _check_committed_usage(target, committed, active):
    """Usage of a committed snapshot against its active's before Commit:
    the same value, or (trait committed_usage: image) the image's, which
    holds the same data in one file."""
    if target.traits.committed_usage == "measured":
        assert committed == active
    else:
        assert active.size - MIB // 4 <= committed.size <= active.size + MIB // 4
        assert committed.inodes == (1 if target.traits.inodes_reported else -1)


def test_committed_usage_is_the_value_measured_at_commit(snapshotter, work, target):
    mounts = snapshotter.prepare("layer", "")
    apply_to_mounts(mounts, work, fstest.create_random_file("/a", 1, MIB, 0o644))
    before = snapshotter.usage("layer")
    snapshotter.commit("committed", "layer")
    _check_committed_usage(target, snapshotter.usage("committed"), before)
    assert snapshotter.usage("committed") == snapshotter.usage("committed")


def test_usage_of_view_is_zero(snapshotter, work):
    mounts = snapshotter.prepare("layer", "")
    apply_to_mounts(mounts, work, fstest.create_random_file("/a", 1, MIB, 0o644))
    snapshotter.commit("committed", "layer")
    snapshotter.view("view", "committed")
    snapshotter.view("empty-view", "")
    assert snapshotter.usage("view") == Usage(0, 0)
    assert snapshotter.usage("empty-view") == Usage(0, 0)


def test_usage_of_child_excludes_its_parent(snapshotter, work, target):
    if target.traits.usage_includes_parent:
        pytest.skip(target.traits.skip_reason("usage_includes_parent", [False]))
    mounts = snapshotter.prepare("layer-1", "")
    apply_to_mounts(mounts, work, fstest.create_random_file("/one", 1, MIB, 0o644))
    snapshotter.commit("committed-1", "layer-1")
    mounts = snapshotter.prepare("layer-2", "committed-1")
    apply_to_mounts(mounts, work, fstest.create_random_file("/two", 2, 2 * MIB, 0o644))
    layer2 = snapshotter.usage("layer-2")
    assert 2 * MIB <= layer2.size < 3 * MIB
    snapshotter.commit("committed-2", "layer-2")
    _check_committed_usage(target, snapshotter.usage("committed-2"), layer2)
    # and a grandchild excludes both (containerd's TestZFSUsage layer-3)
    mounts = snapshotter.prepare("layer-3", "committed-2")
    apply_to_mounts(mounts, work, fstest.create_random_file("/three", 3, MIB, 0o644))
    layer3 = snapshotter.usage("layer-3")
    assert MIB <= layer3.size < layer2.size


def test_usage_counts_hardlinked_data_once(snapshotter, work):
    # What an empty snapshot already counts (blockfile: its copy of the
    # scratch image's metadata, in the root filesystem's allocation units)
    # is not the data's.
    snapshotter.prepare("empty", "")
    empty = snapshotter.usage("empty").size
    mounts = snapshotter.prepare("layer", "")
    apply_to_mounts(mounts, work, fstest.apply(
        fstest.create_random_file("/a", 3, MIB, 0o644),
        fstest.link("/a", "/b"), fstest.link("/a", "/c")))
    usage = snapshotter.usage("layer")
    assert MIB <= usage.size - empty < 2 * MIB


def _still_there(mounts, work):
    """Whether a removed parentless active snapshot's data is still there,
    as its mounts name it: a bind mount's source, an overlay's upperdir and
    workdir (not its lowers: a parent's) exist; any other mount (a btrfs
    subvolid=, a zfs dataset) still mounts."""
    directories = []
    for mount in mounts:
        if mount.type == "bind" or "bind" in mount.options or "rbind" in mount.options:
            directories.append(mount.source)
        elif mount.type == "overlay":
            directories += [option.split("=", 1)[1] for option in mount.options
                            if option.startswith(("upperdir=", "workdir="))]
        else:
            return _mounts(mounts, work)
    return [path for path in directories if os.path.lexists(path)]


def _mounts(mounts, work):
    """[what still mounts] when `mounts` can be mounted, else []."""
    try:
        with mounted(mounts, tempfile.mkdtemp(prefix="removed-", dir=work)):
            return ["the mounts Prepare returned (%s)" % ", ".join(
                sorted({m.type for m in mounts}))]
    except OSError:
        return []


def test_remove_frees_the_data_its_mounts_named(snapshotter, work, target):
    """The data of a removed snapshot goes: when Remove returns (trait
    removal: immediate), or by Cleanup (until-cleanup); behind containerd,
    whose Cleanup is not the plugin's, by its garbage collection, which
    containerd runs after deletions on its own."""
    mounts = snapshotter.prepare("layer", "")
    apply_to_mounts(mounts, work, fstest.create_random_file("/a", 5, MIB, 0o644))
    snapshotter.remove("layer")
    left = _still_there(mounts, work)
    if target.traits.removal == "immediate":
        assert not left, "Remove returned and %s declares removal: immediate, but %s is " \
            "still there" % (target.traits.source, ", ".join(left))
        return
    try:
        snapshotter.cleanup()
    except errors.NotImplemented:
        pass
    deadline = time.monotonic() + COLLECTION_WAIT_S
    while left and time.monotonic() < deadline:
        time.sleep(0.1)
        left = _still_there(mounts, work)
    assert not left, "%s still there %d s after Remove and Cleanup" % (
        ", ".join(left), COLLECTION_WAIT_S)
