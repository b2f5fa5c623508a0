"""erofs-specific cases (containerd 2.1's erofs snapshotter, in our words).

containerd's own erofs tests are its generic suite plus fs-verity; these
check what makes erofs erofs: a committed snapshot is an EROFS image, a
child's lowers are those images mounted, whiteouts and opaque directories
keep working through them, and a root whose mounts are gone (a reboot)
mounts them again.
"""

import os
import stat

import pytest

from snaplab import loop
from snaplab import mount as mountlib

from . import fstest
from .helpers import apply_to_mounts, mounted

pytestmark = pytest.mark.storage_layout("snaplab-erofs")

EROFS_SUPER_MAGIC = bytes.fromhex("e2e1f5e0")  # 0xE0F5E1E2, little-endian
EROFS_SUPER_OFFSET = 1024
OPAQUE_XATTR = "trusted.overlay.opaque"


def _dir(root, snapshot_id):
    return os.path.join(root, "snapshots", str(snapshot_id))


def _fs(root, snapshot_id):
    return os.path.join(_dir(root, snapshot_id), "fs")


def _image(root, snapshot_id):
    return os.path.join(_dir(root, snapshot_id), "layer.erofs")


def _erofs_mount_of(path):
    """The mount on top at `path` if it is an erofs image's, else None."""
    entry = mountlib.mount_on_top(path)
    return entry if entry is not None and entry.fstype == "erofs" else None


def _commit_base(sn, work, *appliers):
    apply_to_mounts(sn.prepare("base-tmp", ""), work, fstest.apply(*appliers))
    sn.commit("base", "base-tmp")


def test_a_committed_snapshot_is_an_erofs_image_and_its_usage(open_snapshotter, root, work):
    sn = open_snapshotter(root)
    _commit_base(sn, work, fstest.create_random_file("/data", 7, 300 * 1024, 0o644),
                 fstest.create_dir("/dir", 0o755))
    with open(_image(root, 1), "rb") as image:
        image.seek(EROFS_SUPER_OFFSET)
        assert image.read(4) == EROFS_SUPER_MAGIC
    # The upper's files are in the image now: fs/ is only its mount point.
    assert os.listdir(_fs(root, 1)) == []
    blocks = os.stat(_image(root, 1)).st_blocks
    usage = sn.usage("base")
    assert (usage.size, usage.inodes) == (blocks * 512, 1)
    assert usage.size >= 300 * 1024


def test_the_lowers_of_a_child_are_its_parents_images_mounted(open_snapshotter, root, work):
    sn = open_snapshotter(root)
    _commit_base(sn, work, fstest.create_file("/a", b"a", 0o644))
    apply_to_mounts(sn.prepare("mid-tmp", "base"), work, fstest.create_file("/b", b"b", 0o644))
    sn.commit("mid", "mid-tmp")
    assert _erofs_mount_of(_fs(root, 1)) is not None  # mounted for mid-tmp's mounts
    mounts = sn.prepare("child", "mid")
    assert (mounts[0].type, mounts[0].source) == ("overlay", "overlay")
    # Commit keeps the id: mid is 2, the child 3.
    assert "lowerdir=%s:%s" % (_fs(root, 2), _fs(root, 1)) in mounts[0].options
    for snapshot_id in (1, 2):
        entry = _erofs_mount_of(_fs(root, snapshot_id))
        assert entry is not None, "no erofs mount on %s" % _fs(root, snapshot_id)
        assert loop.backing_file(entry.source) == _image(root, snapshot_id)
        assert "ro" in entry.options
    target = os.path.join(work, "child")
    os.mkdir(target)
    with mounted(mounts, target):
        assert sorted(os.listdir(target)) == ["a", "b"]
    # A View of a parentless snapshot is a read-only bind of its mounted image.
    view = sn.view("view", "base")
    assert (view[0].type, view[0].source, view[0].options) == ("bind", _fs(root, 1),
                                                               ["ro", "rbind"])
    with mounted(view, target):
        with open(os.path.join(target, "a"), "rb") as content:
            assert content.read() == b"a"
        with pytest.raises(OSError):
            open(os.path.join(target, "new"), "w").close()


def test_whiteouts_and_opaque_directories_work_through_images(open_snapshotter, root, work):
    sn = open_snapshotter(root)
    _commit_base(sn, work, fstest.create_file("/gone", b"x", 0o644),
                 fstest.create_file("/kept", b"k", 0o644),
                 fstest.create_dir("/dir", 0o755),
                 fstest.create_file("/dir/old", b"o", 0o644))
    # Through the child's overlay: /gone deleted (a whiteout), /dir removed
    # and made again (opaque: its lower content hidden).
    apply_to_mounts(sn.prepare("layer-tmp", "base"), work, fstest.apply(
        fstest.remove("/gone"), fstest.remove_all("/dir"), fstest.create_dir("/dir", 0o755),
        fstest.create_file("/dir/new", b"n", 0o644)))
    sn.commit("layer", "layer-tmp")
    sn.prepare("top", "layer")  # mounts layer's image
    # The image holds the overlay markers as they were in the upper.
    whiteout = os.lstat(os.path.join(_fs(root, 2), "gone"))
    assert stat.S_ISCHR(whiteout.st_mode) and whiteout.st_rdev == 0
    assert os.getxattr(os.path.join(_fs(root, 2), "dir"), OPAQUE_XATTR) == b"y"
    for mounts in (sn.mounts("top"), sn.view("top-view", "layer")):
        target = os.path.join(work, "merged")
        os.makedirs(target, exist_ok=True)
        with mounted(mounts, target):
            assert sorted(os.listdir(target)) == ["dir", "kept"]
            assert os.listdir(os.path.join(target, "dir")) == ["new"]


def test_a_reopened_root_mounts_its_images_again(open_snapshotter, target, root, work):
    sn = open_snapshotter(root)
    _commit_base(sn, work, fstest.create_file("/a", b"a", 0o644))
    apply_to_mounts(sn.prepare("child", "base"), work, fstest.create_file("/b", b"b", 0o644))
    sn.close()
    # As after a reboot: nothing the snapshotter mounted is there.
    for where in target.kept_mounts_under(root):
        mountlib.unmount_all(where)
    assert _erofs_mount_of(_fs(root, 1)) is None
    sn = open_snapshotter(root)
    assert sn.doctor() == []
    mounts = sn.mounts("child")
    assert _erofs_mount_of(_fs(root, 1)) is not None
    merged = os.path.join(work, "merged")
    os.mkdir(merged)
    with mounted(mounts, merged):
        assert sorted(os.listdir(merged)) == ["a", "b"]


def test_remove_unmounts_the_image(open_snapshotter, root, work):
    sn = open_snapshotter(root)
    _commit_base(sn, work, fstest.create_file("/a", b"a", 0o644))
    sn.prepare("child", "base")
    assert _erofs_mount_of(_fs(root, 1)) is not None
    sn.remove("child")
    sn.remove("base")
    sn.cleanup()  # served, Remove may leave the data to Cleanup
    assert mountlib.mounts_under(root) == []
    assert os.listdir(os.path.join(root, "snapshots")) == []


def test_cleanup_removes_what_a_killed_commit_left(open_snapshotter, root, work):
    sn = open_snapshotter(root)
    _commit_base(sn, work, fstest.create_file("/a", b"a", 0o644))
    apply_to_mounts(sn.prepare("active", ""), work, fstest.create_file("/b", b"b", 0o644))
    # A staged image, an image of a still active snapshot (killed before
    # the metadata committed), and an unmounted committed snapshot whose
    # upper files were not freed yet.
    staged = os.path.join(_dir(root, 2), ".layer.erofs-killed")
    for path in (staged, _image(root, 2)):
        with open(path, "wb") as leftover:
            leftover.write(b"\0" * 4096)
    with open(os.path.join(_fs(root, 1), "left"), "wb") as leftover:
        leftover.write(b"x")
    kinds = sorted((f.kind, f.subject) for f in sn.doctor())
    assert kinds == sorted([("staged-image", staged), ("staged-image", _image(root, 2)),
                            ("committed-upper", _fs(root, 1))])
    sn.cleanup()
    assert sn.doctor() == []
    assert sorted(os.listdir(_dir(root, 2))) == ["fs", "work"]
    assert os.listdir(_fs(root, 1)) == []
    merged = os.path.join(work, "merged")
    os.mkdir(merged)
    with mounted(sn.view("view", "base"), merged):
        assert os.listdir(merged) == ["a"]
