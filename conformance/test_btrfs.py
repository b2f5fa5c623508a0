"""btrfs-specific cases (containerd's btrfs_test.go, docs/semantics.md §5).

Mounts are checked as data and then really mounted. What the backend claims
about subvolumes (ids, read-only flags, nothing left after Remove/Cleanup) is
checked with btrfs-progs and the kernel's own answers (EROFS, inode 256 of
subvolume roots), not with the backend's ioctl wrappers.
"""

import errno
import os
import subprocess

import pytest

from snaplab import errors
from snaplab import mount as mountlib
from snaplab.types import Kind

from . import fstest
from .helpers import apply_to_mounts, mounted


pytestmark = pytest.mark.storage_layout("snaplab-btrfs")

MIB = 1024 * 1024
SUBVOLUME_ROOT_INO = 256


def _btrfs(*argv):
    return subprocess.run(["btrfs", *argv], check=True, capture_output=True,
                          text=True).stdout.strip()


def _snapshot_path(root, name, sn):
    """<root>/snapshots/<id> of snapshot `name`, the id read from the metadata."""
    with sn.store.transaction() as tx:
        return os.path.join(root, "snapshots", str(tx.get_info(name)[0]))


def _subvolumes_below(path):
    """Every subvolume root (a directory with inode 256) at or below `path`."""
    return [walked[0] for walked in os.walk(path)
            if os.lstat(walked[0]).st_ino == SUBVOLUME_ROOT_INO]


def _listed_subvolumes(root):
    """Subvolumes under `root` as `btrfs subvolume list` sees them. It names them
    from the top of the filesystem, which is where the btrfs is mounted: the
    target's own directory may be deeper (a filesystem node_storage made)."""
    top = mountlib.lookup(root).mountpoint
    below = os.path.relpath(root, top) + "/"
    paths = [line.split(" path ", 1)[1] for line in _btrfs("subvolume", "list", top)
             .splitlines() if " path " in line]
    return [p for p in paths if p.startswith(below)]


def _rootid(path):
    return int(_btrfs("inspect-internal", "rootid", path))


def _write_fails_with_erofs(path):
    with pytest.raises(OSError) as refused:
        with open(path, "wb") as f:
            f.write(b"must not be written")
    assert refused.value.errno == errno.EROFS, refused.value


def test_mounts_are_subvolid_mounts_of_the_root_device(open_snapshotter, root, work):
    """containerd TestBtrfsMounts: the first option is subvolid=, the source the
    root's device; data written, committed and read back through a child."""
    sn = open_snapshotter(root)
    target = os.path.join(work, "test")
    os.mkdir(target)
    mounts = sn.prepare(target, "")
    assert len(mounts) == 1
    assert mounts[0].type == "btrfs"
    assert mounts[0].source == mountlib.lookup(root).source
    assert mounts[0].options[0].startswith("subvolid="), mounts[0].options
    assert mounts[0].options == ["subvolid=%d" % _rootid(os.path.join(root, "snapshots", "1"))]

    with mounted(mounts, target):
        assert mountlib.lookup(target).fstype == "btrfs"
        fstest.create_file("/foo", b"content\n", 0o644)(target)
    sn.commit(os.path.join(work, "snapshot"), target)

    child = os.path.join(work, "test2")
    os.mkdir(child)
    mounts = sn.prepare(child, os.path.join(work, "snapshot"))
    with mounted(mounts, child):
        with open(os.path.join(child, "foo"), "rb") as f:
            assert f.read() == b"content\n"
        fstest.create_file("/bar", b"more\n", 0o644)(child)  # the child is writable


def test_active_mounts_rw_views_and_committed_mount_ro(open_snapshotter, root, work):
    sn = open_snapshotter(root)
    active = sn.prepare("layer", "")
    assert "ro" not in active[0].options
    apply_to_mounts(active, work, fstest.create_file("/a", b"a", 0o644))
    sn.commit("base", "layer")
    views = {"view-of-base": sn.view("view-of-base", "base"),
             "empty-view": sn.view("empty-view", "")}
    for name, mounts in views.items():
        assert mounts[0].options[0].startswith("subvolid=")
        assert mounts[0].options[1:] == ["ro"], (name, mounts[0].options)
        target = os.path.join(work, name)
        os.mkdir(target)
        with mounted(mounts, target):
            _write_fails_with_erofs(os.path.join(target, "write-must-fail"))
    # A view of a parent is its own read-only snapshot, never the parent itself.
    base_id = _rootid(_snapshot_path(root, "base", sn))
    assert views["view-of-base"][0].options[0] != "subvolid=%d" % base_id


def test_committed_data_is_read_only_on_disk(open_snapshotter, root, work):
    sn = open_snapshotter(root)
    apply_to_mounts(sn.prepare("layer", ""), work, fstest.create_file("/a", b"a", 0o644))
    path = _snapshot_path(root, "layer", sn)
    assert _btrfs("property", "get", path, "ro") == "ro=false"
    sn.commit("committed", "layer")
    assert _snapshot_path(root, "committed", sn) == path, "Commit keeps the subvolume in place"
    assert _btrfs("property", "get", path, "ro") == "ro=true"
    _write_fails_with_erofs(os.path.join(path, "a"))
    _write_fails_with_erofs(os.path.join(path, "new"))
    with open(os.path.join(path, "a"), "rb") as f:
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
    assert len(_listed_subvolumes(root)) == 6
    for key in ("active", "view", "empty-view", "empty-active", "c2", "c1"):
        sn.remove(key)
    sn.cleanup()
    assert os.listdir(os.path.join(root, "snapshots")) == []
    assert _subvolumes_below(root) == []
    assert _listed_subvolumes(root) == []


def test_cleanup_removes_orphans_and_keeps_live_snapshots(open_snapshotter, root):
    sn = open_snapshotter(root)
    sn.prepare("live", "")
    snapshots = os.path.join(root, "snapshots")
    # What a crash or a failed delete may leave: a subvolume under a stale
    # id, a read-only one, a staged new-* subvolume, a plain new-* directory.
    _btrfs("subvolume", "create", os.path.join(snapshots, "999"))
    _btrfs("subvolume", "create", os.path.join(snapshots, "998"))
    _btrfs("subvolume", "create", os.path.join(snapshots, "998", "nested"))
    _btrfs("property", "set", os.path.join(snapshots, "998"), "ro", "true")
    _btrfs("subvolume", "create", os.path.join(snapshots, "new-0123abcd"))
    os.makedirs(os.path.join(snapshots, "new-plain", "deep"))
    assert len(_listed_subvolumes(root)) == 5
    sn.cleanup()
    assert os.listdir(snapshots) == ["1"]
    assert _subvolumes_below(root) == [os.path.join(snapshots, "1")]
    assert _listed_subvolumes(root) == [
        os.path.relpath(os.path.join(snapshots, "1"), mountlib.lookup(root).mountpoint)]
    assert sn.stat("live").kind == Kind.ACTIVE


@pytest.mark.parametrize("commit_first", [False, True], ids=["active", "committed"])
def test_remove_deletes_nested_subvolumes(open_snapshotter, root, work, commit_first):
    """A user made subvolumes inside an active snapshot; Remove takes them too
    (inside a committed, read-only one as well)."""
    sn = open_snapshotter(root)
    mounts = sn.prepare("layer", "")
    inside = os.path.join(work, "inside")
    os.mkdir(inside)
    with mounted(mounts, inside):
        _btrfs("subvolume", "create", os.path.join(inside, "nested"))
        _btrfs("subvolume", "create", os.path.join(inside, "nested", "deeper"))
        fstest.create_file("/nested/deeper/file", b"x", 0o644)(inside)
    key = "layer"
    if commit_first:
        sn.commit("committed", "layer")
        key = "committed"
    assert len(_listed_subvolumes(root)) == 3
    sn.remove(key)
    assert os.listdir(os.path.join(root, "snapshots")) == []
    assert _listed_subvolumes(root) == []


def test_usage_counts_changed_metadata_and_not_deleted_files(open_snapshotter, root, work):
    """A child's usage is what differs from its parent: a chmod of an
    inherited file counts that file, deleting one costs nothing."""
    sn = open_snapshotter(root)
    apply_to_mounts(sn.prepare("l1", ""), work, fstest.apply(
        fstest.create_random_file("/big", 1, 2 * MIB, 0o644),
        fstest.create_random_file("/gone", 2, MIB, 0o644),
        fstest.create_file("/small", b"s", 0o644)))
    sn.commit("c1", "l1")
    sn.prepare("child", "c1")
    assert sn.usage("child").inodes == 0, "an untouched snapshot of its parent costs nothing"
    apply_to_mounts(sn.mounts("child"), work, fstest.apply(
        fstest.remove("/gone"), fstest.chmod("/big", 0o600)))
    usage = sn.usage("child")
    assert usage.inodes == 1, usage  # /big only: the deletion costs nothing
    assert 2 * MIB <= usage.size < 3 * MIB
    sn.commit("c2", "child")
    assert sn.usage("c2") == usage


def test_view_of_a_missing_parent_creates_no_subvolume(open_snapshotter, root):
    sn = open_snapshotter(root)
    with pytest.raises(errors.NotFound):
        sn.view("view", "no-such-parent")
    assert os.listdir(os.path.join(root, "snapshots")) == []
    assert _listed_subvolumes(root) == []


def test_failed_snapshot_leaves_no_row_and_no_subvolume(open_snapshotter, root):
    """The parent's subvolume vanished behind the backend's back: Prepare on
    it fails, and neither the snapshot nor a staged subvolume remains."""
    sn = open_snapshotter(root)
    sn.prepare("l1", "")
    sn.commit("c1", "l1")
    path = _snapshot_path(root, "c1", sn)
    _btrfs("subvolume", "delete", path)
    with pytest.raises(FileNotFoundError):
        sn.prepare("child", "c1")
    with pytest.raises(errors.NotFound):
        sn.stat("child")
    assert os.listdir(os.path.join(root, "snapshots")) == []
    assert _listed_subvolumes(root) == []
