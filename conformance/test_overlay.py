"""overlay-specific cases (containerd's overlay_test.go, docs/semantics.md §5, §7).

Mount shapes are checked as data, then really mounted: a shape the kernel
refuses, or that shows the wrong content, fails here.
"""

import os

import pytest

from snaplab import errors, kernel

from . import fstest
from .helpers import apply_to_mounts, mounted


pytestmark = pytest.mark.storage_layout("snaplab-overlay")


def _index_supported():
    return os.path.exists("/sys/module/overlay/parameters/index")


def _auto_options():
    """What the backend adds to every overlay mount: userxattr in a user
    namespace (rootless: the case runs where the snapshotter does), then
    index=off where overlay has that parameter."""
    added = ["userxattr"] if kernel.in_user_namespace() else []
    return added + (["index=off"] if _index_supported() else [])


def _fs(root, snapshot_id):
    return os.path.join(root, "snapshots", str(snapshot_id), "fs")


def test_parentless_prepare_is_a_rw_bind_of_its_own_upper(open_snapshotter, root):
    sn = open_snapshotter(root)
    mounts = sn.prepare("/tmp/test", "")
    assert len(mounts) == 1
    assert (mounts[0].type, mounts[0].source, mounts[0].options) == (
        "bind", _fs(root, 1), ["rw", "rbind"])


def test_child_is_an_overlay_with_work_upper_and_lower(open_snapshotter, root, work):
    sn = open_snapshotter(root)
    apply_to_mounts(sn.prepare("base-tmp", ""), work, fstest.create_file("/foo", b"hi", 0o644))
    sn.commit("base", "base-tmp")
    mounts = sn.prepare("child", "base")
    assert len(mounts) == 1
    assert (mounts[0].type, mounts[0].source) == ("overlay", "overlay")
    assert mounts[0].options == [
        "workdir=" + os.path.join(root, "snapshots", "2", "work"),
        "upperdir=" + _fs(root, 2),
        "lowerdir=" + _fs(root, 1),
    ] + _auto_options()
    target = os.path.join(work, "read")
    os.mkdir(target)
    with mounted(mounts, target):
        with open(os.path.join(target, "foo"), "rb") as f:
            assert f.read() == b"hi"


def test_views_bind_one_parent_and_overlay_several(open_snapshotter, root, work):
    sn = open_snapshotter(root, mount_options=["volatile"])
    apply_to_mounts(sn.prepare("base-tmp", ""), work, fstest.create_file("/a", b"a", 0o644))
    sn.commit("base", "base-tmp")
    apply_to_mounts(sn.prepare("top-tmp", "base"), work, fstest.create_file("/b", b"b", 0o644))
    sn.commit("top", "top-tmp")
    one = sn.view("view-one", "base")
    assert (one[0].type, one[0].source, one[0].options) == ("bind", _fs(root, 1), ["ro", "rbind"])
    two = sn.view("view-two", "top")
    assert (two[0].type, two[0].source) == ("overlay", "overlay")
    assert two[0].options == ["lowerdir=%s:%s" % (_fs(root, 2), _fs(root, 1)),
                              "volatile"] + _auto_options()
    for mounts in (one, two):
        target = os.path.join(work, "view")
        os.makedirs(target, exist_ok=True)
        with mounted(mounts, target):
            with pytest.raises(OSError):
                open(os.path.join(target, "write-must-fail"), "w").close()


def test_configured_index_option_is_not_overridden(open_snapshotter, root, work):
    if not _index_supported():
        pytest.skip("this kernel's overlay has no index parameter")
    sn = open_snapshotter(root, mount_options=["index=on", "nfs_export=on"])
    sn.prepare("base-tmp", "")
    sn.commit("base", "base-tmp")
    options = sn.prepare("child", "base")[0].options
    assert "index=off" not in options
    extra = [o for o in options if not o.startswith(("workdir=", "upperdir=", "lowerdir="))]
    assert extra == ["index=on", "nfs_export=on"] + [o for o in _auto_options() if o != "index=off"]


def test_deleting_a_lower_file_leaves_a_whiteout_in_the_upper(open_snapshotter, root, work):
    sn = open_snapshotter(root)
    apply_to_mounts(sn.prepare("base-tmp", ""), work, fstest.create_file("/gone", b"x", 0o644))
    sn.commit("base", "base-tmp")
    apply_to_mounts(sn.prepare("child", "base"), work, fstest.remove("/gone"))
    whiteout = os.lstat(os.path.join(_fs(root, 2), "gone"))
    assert os.major(whiteout.st_rdev) == 0 and os.minor(whiteout.st_rdev) == 0
    assert sn.usage("child").inodes >= 2  # the upper root and the whiteout


def test_synchronous_remove_deletes_the_directory_at_once(open_snapshotter, root):
    sn = open_snapshotter(root)
    sn.prepare("a", "")
    assert os.path.isdir(_fs(root, 1))
    sn.remove("a")
    assert not os.path.exists(os.path.join(root, "snapshots", "1"))


def test_asynchronous_remove_defers_deletion_to_cleanup(open_snapshotter, root):
    sn = open_snapshotter(root, async_remove=True)
    sn.prepare("a", "")
    sn.remove("a")
    assert os.path.isdir(_fs(root, 1)), "async remove must leave the data for cleanup"
    sn.prepare("a", "")  # the key is reusable at once
    sn.cleanup()
    assert not os.path.exists(os.path.join(root, "snapshots", "1"))
    assert os.path.isdir(_fs(root, 2))


def test_cleanup_removes_orphans_and_keeps_live_snapshots(open_snapshotter, root):
    sn = open_snapshotter(root)
    sn.prepare("live", "")
    stray = [os.path.join(root, "snapshots", name) for name in ("new-crashed", "999", "rm-3")]
    for path in stray:
        os.makedirs(os.path.join(path, "fs"))
    sn.cleanup()
    assert not any(os.path.exists(p) for p in stray)
    assert os.path.isdir(_fs(root, 1))


def test_upperdir_label_reports_the_upper_directory(open_snapshotter, root):
    sn = open_snapshotter(root, upperdir_label=True)
    sn.prepare("a", "", {"mine": "1"})
    label = "containerd.io/snapshot/overlay.upperdir"
    assert sn.stat("a").labels == {"mine": "1", label: _fs(root, 1)}
    assert [i.labels[label] for i in sn.list()] == [_fs(root, 1)]


def test_unknown_option_is_invalid_argument(target, test_dir):
    root = os.path.join(test_dir, "root")
    with pytest.raises(errors.InvalidArgument):
        target.open(root, no_such_option=True)
    assert not os.path.exists(root)
