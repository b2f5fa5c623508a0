"""blockfile-specific cases (containerd's blockfile plugin and its test, in our words).

Each snapshot is an image file under <root>/snapshots/<id>, a copy of its
parent's (or of <root>/scratch); it is mounted through a loop device,
read-only for views and committed snapshots. What the backend claims is
checked with the kernel's answers: the mount table, the loop device's
backing file and read-only flag, EROFS, FIEMAP's shared extents, st_blocks.
"""

import errno
import fcntl
import os
import signal
import subprocess
import sys
import tempfile
import time

import pytest

from snaplab import errors
from snaplab import imagefile
from snaplab import loop
from snaplab import mount as mountlib
from snaplab.types import Kind

from . import fstest
from .helpers import apply_to_mounts, mounted

pytestmark = pytest.mark.storage_layout("snaplab-blockfile")

MIB = 1024 * 1024


def _clones(directory):
    """Whether files in `directory` can share extents (FICLONE), asked of the
    filesystem itself: btrfs and xfs with reflink (mkfs.xfs's default since
    xfsprogs 5.1) can; a V4 xfs (the lab's xfs-noftype) cannot, nor ext4,
    nor OpenZFS before block cloning."""
    with tempfile.TemporaryDirectory(dir=directory) as probe:
        source, clone = os.path.join(probe, "source"), os.path.join(probe, "clone")
        with open(source, "wb") as out:
            out.write(b"x" * 4096)
        with open(source, "rb") as src, open(clone, "wb") as dst:
            try:
                fcntl.ioctl(dst.fileno(), imagefile.FICLONE, src.fileno())
            except OSError:
                return False
    return True


def _image(root, sn, name):
    """<root>/snapshots/<id> of snapshot `name`, the id read from the metadata."""
    with sn.store.transaction() as tx:
        return os.path.join(root, "snapshots", str(tx.get_info(name)[0]))


def _mountpoint(work, name):
    path = os.path.join(work, name)
    os.mkdir(path)
    return path


def _loop_of(target):
    """(backing file, read-only flag) of the loop device mounted at `target`."""
    device = mountlib.lookup(target).source
    name = os.path.basename(device)
    with open("/sys/block/%s/ro" % name, encoding="ascii") as flag:
        return loop.backing_file(device), flag.read().strip() == "1"


def _write_fails_with_erofs(path):
    with pytest.raises(OSError) as refused:
        with open(path, "wb") as f:
            f.write(b"must not be written")
    assert refused.value.errno == errno.EROFS, refused.value


def test_each_snapshot_is_an_image_copied_from_its_parent(open_snapshotter, root, work):
    sn = open_snapshotter(root)
    scratch = os.path.join(root, "scratch")
    assert imagefile.filesystem_of(scratch) == "ext4"
    mounts = sn.prepare("layer", "")
    image = _image(root, sn, "layer")
    assert [(m.type, m.source, m.options) for m in mounts] == [("ext4", image, ["loop", "rw"])]
    assert os.stat(image).st_size == os.stat(scratch).st_size == 64 * MIB
    assert imagefile.uuid_of(image) == imagefile.uuid_of(scratch)
    target = _mountpoint(work, "layer")
    with mounted(mounts, target):
        assert mountlib.lookup(target).fstype == "ext4"
        assert _loop_of(target) == (image, False)
        assert os.listdir(target) == [], "a new snapshot is empty (no lost+found)"
        fstest.create_file("/foo", b"content\n", 0o644)(target)
    sn.commit("base", "layer")
    assert _image(root, sn, "base") == image, "Commit keeps the image in place"
    child = sn.prepare("child", "base")
    assert child[0].source == _image(root, sn, "child") != image
    target = _mountpoint(work, "child")
    with mounted(child, target):
        with open(os.path.join(target, "foo"), "rb") as f:
            assert f.read() == b"content\n"
        fstest.create_file("/bar", b"more\n", 0o644)(target)
    target = _mountpoint(work, "base-again")
    with mounted(sn.view("view", "base"), target):
        assert sorted(os.listdir(target)) == ["foo"], "the child's write stays in the child"


def test_views_and_committed_mount_read_only(open_snapshotter, root, work):
    sn = open_snapshotter(root)
    apply_to_mounts(sn.prepare("layer", ""), work, fstest.create_file("/a", b"a", 0o644))
    sn.commit("base", "layer")
    images = sorted(os.listdir(os.path.join(root, "snapshots")))
    view = sn.view("view-of-base", "base")
    assert sorted(os.listdir(os.path.join(root, "snapshots"))) == images, \
        "a view of a parent mounts the parent's image, no copy"
    assert view[0].source == _image(root, sn, "base")
    empty_view = sn.view("empty-view", "")
    assert empty_view[0].source == _image(root, sn, "empty-view")
    for name, mounts in (("view-of-base", view), ("empty-view", empty_view)):
        assert mounts[0].options == ["loop", "ro"], (name, mounts[0].options)
        target = _mountpoint(work, name)
        with mounted(mounts, target):
            assert _loop_of(target) == (mounts[0].source, True)
            _write_fails_with_erofs(os.path.join(target, "write-must-fail"))
    # Two views of one image at once: two read-only loop devices over one file.
    first, second = _mountpoint(work, "first"), _mountpoint(work, "second")
    sn.view("second-view", "base")
    with mounted(view, first), mounted(sn.mounts("second-view"), second):
        assert os.listdir(first) == os.listdir(second) == ["a"]


def test_commit_of_a_mounted_image_is_refused_and_changes_nothing(open_snapshotter, root, work):
    """Committed with its journal open, an ext4 image would refuse every
    read-only mount after: Commit waits for the unmount."""
    sn = open_snapshotter(root)
    mounts = sn.prepare("layer", "")
    target = _mountpoint(work, "layer")
    with mounted(mounts, target):
        with open(os.path.join(target, "a"), "wb") as out:
            out.write(b"a")
        with pytest.raises(errors.FailedPrecondition, match="still mounted"):
            sn.commit("base", "layer")
        assert sn.stat("layer").kind == Kind.ACTIVE
    sn.commit("base", "layer")
    with mounted(sn.view("view", "base"), _mountpoint(work, "view")) as seen:
        assert os.listdir(seen) == ["a"]


def test_a_child_shares_extents_on_a_reflink_root_or_keeps_holes(open_snapshotter, root, work):
    sn = open_snapshotter(root)
    apply_to_mounts(sn.prepare("layer", ""), work,
                    fstest.create_random_file("/big", 1, 4 * MIB, 0o644))
    sn.commit("base", "layer")
    sn.prepare("child", "base")
    parent, child = _image(root, sn, "base"), _image(root, sn, "child")
    clones = _clones(os.path.dirname(root))
    try:
        shared, total = imagefile.shared_bytes(child)
    except OSError as err:  # no FIEMAP (zfs): the blocks alone say it is sparse
        if err.errno != errno.EOPNOTSUPP:
            raise
        shared = total = None  # (and a block clone on OpenZFS 2.2+ cannot be seen)
    parent_blocks = os.stat(parent).st_blocks * 512
    assert total is None or total >= 4 * MIB
    if clones:
        assert shared == total, "a clone shares every extent with its parent"
    else:
        assert shared in (0, None)
        # A sparse copy: what the parent allocated, not the 64 MiB image
        assert os.stat(child).st_blocks * 512 <= parent_blocks + MIB
        assert parent_blocks < 16 * MIB
    # Usage is the image's allocated size, the parent's content included
    usage = sn.usage("child")
    assert usage.size == os.stat(child).st_blocks * 512 >= 4 * MIB
    assert usage.inodes == -1
    assert sn.usage("base").size >= 4 * MIB


def test_xfs_images_mount_side_by_side(open_snapshotter, root, work, target):
    """Every copy of one xfs scratch has the same filesystem UUID: xfs mounts
    the second only with nouuid, which the backend adds."""
    needed = 4 * 70 * MIB  # the 300 MiB scratch allocates 65 MiB (its log)
    if not _clones(os.path.dirname(root)):
        free = os.statvfs(os.path.dirname(root))
        if free.f_bavail * free.f_frsize < needed:
            pytest.skip("xfs images are copied in full here (no reflink): needs %d MiB free"
                        % (needed // MIB))
    sn = open_snapshotter(root, fs_type="xfs")
    assert imagefile.filesystem_of(os.path.join(root, "scratch")) == "xfs"
    one, two = sn.prepare("one", ""), sn.prepare("two", "")
    assert one[0].type == "xfs" and one[0].options == ["loop", "nouuid", "rw"]
    assert imagefile.uuid_of(one[0].source) == imagefile.uuid_of(two[0].source)
    first, second = _mountpoint(work, "one"), _mountpoint(work, "two")
    with mounted(one, first), mounted(two, second):
        assert mountlib.lookup(second).fstype == "xfs"
        fstest.create_file("/only-in-two", b"2", 0o644)(second)
        assert os.listdir(first) == []


def test_recreate_scratch_replaces_only_the_scratch(open_snapshotter, root):
    sn = open_snapshotter(root)
    sn.prepare("before", "")
    old = imagefile.uuid_of(os.path.join(root, "scratch"))
    sn.close()
    sn = open_snapshotter(root, recreate_scratch=True)
    new = imagefile.uuid_of(os.path.join(root, "scratch"))
    assert new != old
    assert imagefile.uuid_of(_image(root, sn, "before")) == old
    sn.prepare("after", "")
    assert imagefile.uuid_of(_image(root, sn, "after")) == new


def test_a_scratch_unlike_the_options_is_refused(open_snapshotter, root):
    sn = open_snapshotter(root)
    sn.prepare("layer", "")
    sn.close()
    scratch = os.path.join(root, "scratch")
    before = (imagefile.uuid_of(scratch), os.stat(scratch).st_mtime_ns)
    for options, says in (({"fs_type": "xfs"}, "holds an ext4 image, not fs_type xfs"),
                          ({"scratch_size": "128M"}, "not scratch_size 128M"),
                          ({"fs_type": "xfs", "recreate_scratch": True},
                           "are ext4 images, fs_type is xfs")):
        with pytest.raises(errors.FailedPrecondition) as refused:
            open_snapshotter(root, **options)
        assert says in str(refused.value), refused.value
    assert (imagefile.uuid_of(scratch), os.stat(scratch).st_mtime_ns) == before, \
        "a refused open leaves the scratch as it was"
    for options in ({"fs_type": "btrfs"}, {"scratch_size": "big"}):
        with pytest.raises(errors.InvalidArgument):
            open_snapshotter(root, **options)


def test_scratch_file_is_copied_in_as_given(open_snapshotter, root, work):
    given = os.path.join(work, "scratch.img")
    with open(given, "wb") as f:
        f.truncate(16 * MIB)
    with pytest.raises(errors.FailedPrecondition) as refused:
        open_snapshotter(root, scratch_file=given)
    assert "no ext4 or xfs image" in str(refused.value)
    with pytest.raises(errors.FailedPrecondition) as refused:
        open_snapshotter(root, scratch_file=given + ".missing")
    assert "cannot be read" in str(refused.value)
    subprocess.run(["mkfs.ext4", "-q", "-F", given], check=True, capture_output=True)
    sn = open_snapshotter(root, scratch_file=given)
    assert imagefile.uuid_of(os.path.join(root, "scratch")) == imagefile.uuid_of(given)
    target = _mountpoint(work, "layer")
    with mounted(sn.prepare("layer", ""), target):
        assert os.listdir(target) == ["lost+found"], "a given scratch is used as it is"
    sn.close()
    open_snapshotter(root).close()  # the scratch in place is used
    other = os.path.join(work, "other.img")
    with open(other, "wb") as f:
        f.truncate(16 * MIB)
    subprocess.run(["mkfs.ext4", "-q", "-F", other], check=True, capture_output=True)
    with pytest.raises(errors.FailedPrecondition) as refused:
        open_snapshotter(root, scratch_file=other)
    assert "not a copy of scratch_file" in str(refused.value)


def test_cleanup_removes_what_a_crash_left(open_snapshotter, root):
    sn = open_snapshotter(root)
    sn.prepare("live", "")
    sn.prepare("lost", "")
    os.unlink(_image(root, sn, "lost"))
    staged = os.path.join(root, "snapshots", "new-0123456789ab")
    stale_scratch = os.path.join(root, ".snaplab-scratch-0123456789ab")
    for path in (staged, stale_scratch, os.path.join(root, "snapshots", "99")):
        with open(path, "wb") as f:
            f.truncate(MIB)
    old = time.time() - 3600
    os.utime(stale_scratch, (old, old))
    found = {(f.kind, f.subject) for f in sn.doctor()}
    assert ("orphan", staged) in found
    assert ("orphan", os.path.join(root, "snapshots", "99")) in found
    assert ("probe", stale_scratch) in found
    assert ("missing-data", "lost") in found
    sn.cleanup()
    assert sorted(os.listdir(os.path.join(root, "snapshots"))) == [
        os.path.basename(_image(root, sn, "live"))]
    assert not os.path.exists(stale_scratch)
    assert sn.stat("live").kind == Kind.ACTIVE


def test_a_kill_while_the_scratch_is_made_leaves_a_root_that_opens(open_snapshotter, root):
    """Killed between mkfs and the rename (crash point blockfile.scratch): no
    <root>/scratch yet, only its staging name, which the next open ignores
    and Cleanup removes once it is old."""
    env = dict(os.environ, SNAPLAB_CRASH_AT="blockfile.scratch")
    killed = subprocess.run([sys.executable, "-m", "snaplab", "--root", root, "--backend",
                             "blockfile", "prepare", "layer"], env=env, capture_output=True,
                            check=False)
    assert killed.returncode == -signal.SIGKILL, killed
    assert not os.path.exists(os.path.join(root, "scratch"))
    staged = [n for n in os.listdir(root) if n.startswith(".snaplab-scratch-")]
    assert len(staged) == 1
    assert mountlib.mounts_under(root) == [], "the probe mount was taken down before the kill"
    sn = open_snapshotter(root)
    sn.prepare("layer", "")
    old = time.time() - 3600
    os.utime(os.path.join(root, staged[0]), (old, old))
    sn.cleanup()
    assert not [n for n in os.listdir(root) if n.startswith(".snaplab-scratch-")]
