"""Idmapped mounts (snaplab/idmap.py through snaplab/mount.py) and the
chown remap, on the machine's kernel: ids shifted through the mount, the
mount table recognising what was mounted, nothing left behind (mounts,
temporary directories, user namespace children) also when a mount fails."""

import glob
import os
import stat
import subprocess
import tempfile

import pytest

from snaplab import errors, idmap
from snaplab import mount as mountlib
from snaplab.types import Mount

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")

MAP = ["uidmap=0:1000:2000", "gidmap=0:3000:2000"]


def _leftovers():
    pattern = os.path.join(tempfile.gettempdir(), mountlib.IDMAP_LOWERS_PREFIX + "*")
    on_table = [e.mountpoint for e in mountlib.mount_table()
                if mountlib.IDMAP_LOWERS_PREFIX in e.mountpoint]
    return glob.glob(pattern) + on_table


@pytest.fixture
def layers(tmp_path):
    for name in ("lower1", "lower2", "upper", "work", "merged"):
        (tmp_path / name).mkdir()
    (tmp_path / "lower1" / "owned").write_text("1")
    os.chown(tmp_path / "lower1" / "owned", 5, 6)
    (tmp_path / "lower2" / "root-file").write_text("2")
    yield tmp_path
    mountlib.unmount_all(str(tmp_path / "merged"))


def _overlay(layers, lowers=("lower2", "lower1")):
    return Mount("overlay", "overlay", options=MAP + [
        "workdir=%s" % (layers / "work"), "upperdir=%s" % (layers / "upper"),
        "lowerdir=" + ":".join(str(layers / name) for name in lowers)])


def test_overlay_lowers_are_idmapped_and_the_upper_is_not(layers):
    merged = str(layers / "merged")
    mounts = [_overlay(layers)]
    mountlib.mount_all(mounts, merged)
    try:
        assert os.stat(os.path.join(merged, "owned"))[4:6] == (1005, 3006)
        assert os.stat(os.path.join(merged, "root-file"))[4:6] == (1000, 3000)
        assert mountlib.mounted_at(merged, mounts)
        assert not mountlib.mounted_at(merged, [_overlay(layers, ("lower1", "lower2"))])
        os.chown(os.path.join(merged, "root-file"), 1001, 3001)
        assert _leftovers() == []  # the temporary binds are gone already
    finally:
        mountlib.unmount_all(merged)
    # The copy-up landed in the upper with the host ids it was given.
    assert os.stat(layers / "upper" / "root-file")[4:6] == (1001, 3001)
    assert os.stat(layers / "lower1" / "owned")[4:6] == (5, 6)


def test_a_bind_is_an_idmapped_bind(layers):
    merged = str(layers / "merged")
    mounts = [Mount("bind", str(layers / "lower1"), options=MAP + ["ro", "rbind"])]
    mountlib.mount_all(mounts, merged)
    try:
        assert os.stat(os.path.join(merged, "owned"))[4:6] == (1005, 3006)
        assert mountlib.mounted_at(merged, mounts)
        with pytest.raises(OSError):
            open(os.path.join(merged, "new"), "w").close()
    finally:
        mountlib.unmount_all(merged)


def test_a_failed_mount_leaves_nothing(layers):
    merged = str(layers / "merged")
    with pytest.raises(OSError):  # a missing lowerdir: open_tree fails
        mountlib.mount(_overlay(layers, ("lower2", "missing")), merged)
    broken = _overlay(layers)
    broken.options = [o.replace("workdir=", "workdir=/nonexistent") for o in broken.options]
    with pytest.raises(mountlib.MountError):  # the overlay mount itself fails
        mountlib.mount(broken, merged)
    assert _leftovers() == []
    assert mountlib.mounts_under(str(layers)) == []


def test_a_mapping_the_kernel_refuses_is_an_error_not_a_leak(layers):
    # Host ids past the end of the id space: parsing refuses before any child.
    with pytest.raises(errors.InvalidArgument):
        mountlib.mount(Mount("bind", str(layers / "lower1"),
                             options=["uidmap=0:4294967290:100", "gidmap=0:1:1", "rbind"]),
                       str(layers / "merged"))
    assert _leftovers() == []


def test_binds_a_killed_mounter_left_are_swept_and_a_live_ones_kept(layers, tmp_path):
    """A kill between binding the idmapped lowers and detaching them leaves
    <tmp>/snaplab-idmap-<pid>-*: the sweep (before each idmapped mount and
    in every Cleanup) takes it once that pid is gone."""
    gone = subprocess.Popen(["true"])  # pylint: disable=consider-using-with
    gone.wait()
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    left, live = (temporary / ("%s%d-x" % (mountlib.IDMAP_LOWERS_PREFIX, pid))
                  for pid in (gone.pid, os.getpid()))
    for private in (left, live):
        where = private / "lower"
        where.mkdir(parents=True)
        mountlib.mount(Mount("bind", str(layers / "lower1"), options=["ro", "bind"]), str(where))
    try:
        assert mountlib.sweep_idmap_leftovers(str(temporary)) == [str(left)]
        assert not left.exists()
        assert mountlib.is_mountpoint(str(live / "lower"))  # its mounter is alive
    finally:
        mountlib.unmount_all(str(live / "lower"))
        if left.exists():
            mountlib.unmount_all(str(left / "lower"))


def test_remap_tree_shifts_every_entry_once(tmp_path):
    top = tmp_path / "tree"
    (top / "dir").mkdir(parents=True)
    (top / "dir" / "file").write_text("x")
    os.link(top / "dir" / "file", top / "hardlink")  # one inode, two names
    os.chown(top / "dir" / "file", 5, 6)
    os.chmod(top / "dir" / "file", 0o6755)
    os.symlink("dir/file", top / "link")
    os.chown(top / "link", 7, 8, follow_symlinks=False)
    mapping = idmap.Mapping("0:1000:2000", "0:3000:2000")
    idmap.remap_tree(str(top), mapping)
    assert os.lstat(top)[4:6] == (1000, 3000)
    assert os.lstat(top / "dir")[4:6] == (1000, 3000)
    file_stat = os.lstat(top / "hardlink")
    assert file_stat[4:6] == (1005, 3006)  # shifted once, not twice
    assert stat.S_IMODE(file_stat.st_mode) == 0o6755
    assert os.lstat(top / "link")[4:6] == (1007, 3008)


def test_remap_tree_refuses_an_id_the_mapping_does_not_map(tmp_path):
    (tmp_path / "file").write_text("x")
    os.chown(tmp_path / "file", 5000, 0)
    with pytest.raises(errors.FailedPrecondition, match="5000"):
        idmap.remap_tree(str(tmp_path), idmap.Mapping("0:1000:2000", "0:3000:2000"))
