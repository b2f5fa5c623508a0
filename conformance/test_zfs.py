"""zfs-specific cases (containerd's zfs_test.go, docs/semantics.md §5, §7).

The root of each case is a dataset of its own (the harness makes it). What
the backend claims about datasets (names, clones, @snapshot, read-only,
mount points, nothing left over) is checked with the zfs command and the
kernel's own answers (EROFS, the mount table), not with the backend's code.
Both mount modes are covered by the same cases: OpenZFS in the kernel
(type zfs mounts of legacy datasets) and zfs-fuse (binds of the datasets'
own mount points); which one runs follows the root's filesystem type.
"""

import errno
import os
import subprocess

import pytest

from snaplab import errors
from snaplab import mount as mountlib
from snaplab.kernel import FUSE_ZFS_FSTYPE
from snaplab.types import Kind, Mount

from . import fstest
from .helpers import apply_to_mounts, mounted

pytestmark = pytest.mark.storage_layout("snaplab-zfs")

MIB = 1024 * 1024


def _zfs(*argv):
    return subprocess.run(["zfs", *argv], check=True, capture_output=True,
                          text=True).stdout.strip()


def _get(prop, dataset):
    return _zfs("get", "-H", "-p", "-o", "value", prop, dataset)


def _root_dataset(root):
    return mountlib.lookup(root).source


def _is_fuse(root):
    return mountlib.lookup(root).fstype == FUSE_ZFS_FSTYPE


def _id(sn, key):
    with sn.store.transaction() as tx:
        return tx.get_info(key)[0]


def _dataset(sn, root, key):
    return "%s/%s" % (_root_dataset(root), _id(sn, key))


def _datasets_below(root):
    """Every dataset and ZFS snapshot under the root's dataset, the root's own included."""
    return _zfs("list", "-H", "-o", "name", "-r", "-t", "all", _root_dataset(root)).splitlines()


def _write_fails_with_erofs(path):
    with pytest.raises(OSError) as refused:
        with open(path, "wb") as f:
            f.write(b"must not be written")
    assert refused.value.errno == errno.EROFS, refused.value


def _mkdir(work, name):
    path = os.path.join(work, name)
    os.mkdir(path)
    return path


def _write_random_file(name, size):
    """Write `size` random bytes and close, without fsync (os.WriteFile, as
    containerd's case does): the data is still in the open transaction group."""
    def fn(directory):
        with open(os.path.join(directory, name.lstrip("/")), "wb") as f:
            f.write(os.urandom(size))
    return fn


def test_usage_of_layers_is_their_own_used_bytes(open_snapshotter, root, work):
    """containerd TestZFSUsage: an empty layer costs something, a layer with a
    1 MiB file at least that, and a 2 MiB layer on it excludes its parent.
    The files are not fsynced: usage must count data zfs has not synced yet."""
    sn = open_snapshotter(root)
    sn.prepare("prepare-1", "")
    empty = sn.usage("prepare-1")
    assert empty.size > 0 and empty.inodes == -1, empty
    sn.commit("layer-1", "prepare-1")

    apply_to_mounts(sn.prepare("prepare-2", "layer-1"), work,
                    _write_random_file("/file1", MIB))
    sn.commit("layer-2", "prepare-2")
    layer2 = sn.usage("layer-2")
    assert layer2.size > MIB, layer2

    apply_to_mounts(sn.prepare("prepare-3", "layer-2"), work,
                    _write_random_file("/file2", 2 * MIB))
    sn.commit("layer-3", "prepare-3")
    layer3 = sn.usage("layer-3")
    assert 2 * MIB < layer3.size < layer2.size + 2 * MIB, (layer2, layer3)
    # What was stored at Commit is the dataset's `used`, synced.
    assert layer3.size == int(_get("used", _dataset(sn, root, "layer-3")))


def test_mounts_follow_the_mode_of_the_root(open_snapshotter, root, work):
    """Kernel zfs: type zfs mounts of legacy datasets (containerd's shape);
    zfs-fuse: binds of <root>/snapshots/<id>, where the daemon mounts each
    dataset. Either way the data goes through to a child clone."""
    sn = open_snapshotter(root)
    fuse = _is_fuse(root)
    active = sn.prepare("layer", "")
    dataset = _dataset(sn, root, "layer")
    if fuse:
        home = os.path.join(root, "snapshots", str(_id(sn, "layer")))
        assert active == [Mount("bind", home, options=["rbind", "rw"])]
        assert _get("mountpoint", dataset) == home
        assert mountlib.lookup(home).source == dataset and mountlib.is_mountpoint(home)
    else:
        assert active == [Mount("zfs", dataset, options=["rw"])]
        assert _get("mountpoint", dataset) == "legacy"
    assert sn.mounts("layer") == active
    apply_to_mounts(active, work, fstest.create_file("/foo", b"content\n", 0o644))
    sn.commit("base", "layer")

    child = sn.prepare("child", "base")
    child_dataset = _dataset(sn, root, "child")
    assert _get("origin", child_dataset) == dataset + "@snapshot"
    assert child[0].type == ("bind" if fuse else "zfs")
    view = sn.view("view", "base")
    assert view[0].options == (["rbind", "ro"] if fuse else ["ro"])
    target = _mkdir(work, "child")
    with mounted(child, target):
        if not fuse:
            assert mountlib.lookup(target).fstype == "zfs"
        assert mountlib.lookup(target).source == child_dataset
        with open(os.path.join(target, "foo"), "rb") as f:
            assert f.read() == b"content\n"
        fstest.create_file("/bar", b"more\n", 0o644)(target)  # the child is writable


def test_views_are_read_only_datasets(open_snapshotter, root, work):
    """A view is a clone with readonly=on, not only a read-only mount:
    mounted read-write, its dataset still refuses writes."""
    sn = open_snapshotter(root)
    apply_to_mounts(sn.prepare("layer", ""), work, fstest.create_file("/a", b"a", 0o644))
    sn.commit("base", "layer")
    views = {"view-of-base": sn.view("view-of-base", "base"),
             "empty-view": sn.view("empty-view", "")}
    fuse = _is_fuse(root)
    for key, mounts in views.items():
        target = _mkdir(work, key)
        with mounted(mounts, target):
            _write_fails_with_erofs(os.path.join(target, "new"))
        dataset = _dataset(sn, root, key)
        rw = [Mount(mounts[0].type, mounts[0].source, options=[
            o for o in mounts[0].options if o != "ro"] + ["rw"])]
        with mounted(rw, target):
            _write_fails_with_erofs(os.path.join(target, "new"))
        if fuse:
            # zfs-fuse reports a mounted dataset's readonly as "off
            # (temporary)" whatever it is; unmounted, it tells the truth.
            _zfs("unmount", dataset)
            assert _get("readonly", dataset) == "on", key
            # Mounts() mounts it back where its bind points.
            assert sn.mounts(key) == mounts
            assert mountlib.lookup(mounts[0].source).source == dataset
        else:
            assert _get("readonly", dataset) == "on", key
    target = os.path.join(work, "view-of-base")
    with mounted(views["view-of-base"], target):
        with open(os.path.join(target, "a"), "rb") as f:
            assert f.read() == b"a"


def test_committed_data_lives_in_an_immutable_zfs_snapshot(open_snapshotter, root, work):
    sn = open_snapshotter(root)
    apply_to_mounts(sn.prepare("layer", ""), work, fstest.create_file("/a", b"a", 0o644))
    dataset = _dataset(sn, root, "layer")
    sn.commit("committed", "layer")
    assert _dataset(sn, root, "committed") == dataset, "Commit keeps the id and the dataset"
    assert _get("type", dataset + "@snapshot") == "snapshot"
    if _is_fuse(root):
        assert _get("mountpoint", dataset) == "none"
        assert _get("mounted", dataset) == "no"
        assert not os.path.exists(os.path.join(root, "snapshots", str(_id(sn, "committed"))))
    assert not any(entry.source == dataset for entry in mountlib.mount_table())
    with pytest.raises(errors.FailedPrecondition):
        sn.mounts("committed")
    # Its content reaches children through the @snapshot.
    target = _mkdir(work, "check")
    with mounted(sn.view("view", "committed"), target):
        with open(os.path.join(target, "a"), "rb") as f:
            assert f.read() == b"a"


def test_nothing_is_left_after_removing_everything(open_snapshotter, root, work):
    sn = open_snapshotter(root)
    apply_to_mounts(sn.prepare("l1", ""), work, fstest.create_file("/a", b"a", 0o644))
    sn.commit("c1", "l1")
    apply_to_mounts(sn.prepare("l2", "c1"), work, fstest.create_file("/b", b"b", 0o644))
    sn.commit("c2", "l2")
    sn.prepare("active", "c2")
    sn.view("view", "c2")
    sn.view("empty-view", "")
    sn.prepare("empty-active", "")
    root_dataset = _root_dataset(root)
    assert len(_datasets_below(root)) == 1 + 6 + 2  # root, datasets, @snapshots
    for key in ("active", "view", "empty-view", "empty-active", "c2", "c1"):
        sn.remove(key)
    assert _datasets_below(root) == [root_dataset]
    sn.cleanup()
    assert _datasets_below(root) == [root_dataset]
    if _is_fuse(root):  # no mount point directory is left either
        assert os.listdir(os.path.join(root, "snapshots")) == []


def test_cleanup_destroys_orphan_datasets_only(open_snapshotter, root):
    sn = open_snapshotter(root)
    sn.prepare("live", "")
    sn.commit("committed", "live")
    sn.prepare("live", "committed")
    root_dataset = _root_dataset(root)
    # A dataset under a stale id (with a ZFS snapshot and a clone of it, as a
    # crash may leave), and one that is not the backend's at all.
    # One is mounted (where it inherits from the root): cleanup unmounts it.
    _zfs("create", "-o", "mountpoint=none", root_dataset + "/999")
    _zfs("snapshot", root_dataset + "/999@snapshot")
    _zfs("create", root_dataset + "/998")
    assert mountlib.lookup(os.path.join(root, "998")).source == root_dataset + "/998"
    _zfs("create", "-o", "mountpoint=none", root_dataset + "/keep")
    before = set(_datasets_below(root))
    sn.cleanup()
    assert set(_datasets_below(root)) == before - {
        root_dataset + "/999", root_dataset + "/999@snapshot", root_dataset + "/998"}
    assert not mountlib.is_mountpoint(os.path.join(root, "998"))
    assert root_dataset + "/keep" in before
    assert sn.stat("live").kind == Kind.ACTIVE and sn.stat("committed").kind == Kind.COMMITTED
    _zfs("destroy", root_dataset + "/keep")


def test_remove_of_a_mounted_snapshot_fails_and_changes_nothing(open_snapshotter, root, work):
    sn = open_snapshotter(root)
    mounts = sn.prepare("busy", "")
    dataset = _dataset(sn, root, "busy")
    target = _mkdir(work, "busy")
    with mounted(mounts, target):
        fstest.create_file("/a", b"still here", 0o644)(target)
        before = sn.list()
        with pytest.raises(errors.FailedPrecondition, match="unmount"):
            sn.remove("busy")
        assert sn.list() == before
        assert sn.mounts("busy") == mounts
        assert dataset in _datasets_below(root)
        with open(os.path.join(target, "a"), "rb") as f:
            assert f.read() == b"still here"
    sn.remove("busy")
    assert _datasets_below(root) == [_root_dataset(root)]


def test_root_must_be_the_mount_point_of_its_own_dataset(target, test_dir):
    """A directory inside a dataset, or a missing path, is refused with the
    fix, and nothing is created (the harness's dataset roots aside)."""
    from snaplab import backends
    if target.expected_refusal() is not None:
        pytest.skip(target.expected_refusal().skip_reason(target))
    plain = os.path.join(test_dir, "plain")
    os.mkdir(plain)
    missing = os.path.join(test_dir, "missing")
    for root in (plain, missing):
        with pytest.raises(errors.FailedPrecondition) as refused:
            backends.open_snapshotter(root, "zfs")
        message = str(refused.value)
        assert "not a ZFS dataset" in message and "zfs create" in message
        assert mountlib.lookup(test_dir).source in message, "it names the dataset to put it in"
    assert os.listdir(plain) == []
    assert not os.path.exists(missing)
