"""Mount helpers: option parsing, deep-overlay compaction, real binds."""

import os

import pytest

from snaplab import errors
from snaplab import mount as mountlib
from snaplab.types import Mount


def test_parse_options_splits_flags_from_data():
    flags, data = mountlib.parse_options(["rbind", "ro", "nosuid", "lowerdir=/a", "index=off"])
    assert flags == mountlib.MS_BIND | mountlib.MS_REC | mountlib.MS_RDONLY | mountlib.MS_NOSUID
    assert data == ["lowerdir=/a", "index=off"]
    flags, _ = mountlib.parse_options(["ro", "rw"])
    assert flags & mountlib.MS_RDONLY == 0


def test_unconsumed_containerd_option_is_refused():
    with pytest.raises(errors.InvalidArgument):
        mountlib.parse_options(["X-containerd.mkdir.path=/x"])


def test_long_lowerdir_list_is_made_relative_to_the_common_directory():
    lowers = ["/var/lib/snaplab/root/snapshots/%d/fs" % i for i in range(128, 0, -1)]
    data = ["workdir=/w", "upperdir=/u", "lowerdir=" + ":".join(lowers), "index=off"]
    common, compact = mountlib._compact_overlay_data(data)
    assert common == "/var/lib/snaplab/root/snapshots"
    assert compact[2] == "lowerdir=" + ":".join("%d/fs" % i for i in range(128, 0, -1))
    assert compact[0] == "workdir=/w" and compact[3] == "index=off"
    assert len(",".join(compact)) < os.sysconf("SC_PAGE_SIZE")


def test_mountinfo_unescapes_octal(tmp_path):
    line = ("36 35 98:0 /a\\040b /mnt/with\\040space rw,noatime master:1 - ext3 /dev/root "
            "rw,errors=continue\n")
    entry = mountlib.MountInfo(line)
    assert entry.mountpoint == "/mnt/with space"
    assert entry.root == "/a b"
    assert (entry.fstype, entry.source) == ("ext3", "/dev/root")


@pytest.fixture
def bind_dirs(tmp_path):
    source = tmp_path / "source"
    target = tmp_path / "target"
    source.mkdir()
    target.mkdir()
    (source / "file").write_text("content")
    yield str(source), str(target)
    mountlib.unmount_all(str(target))


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting needs root")
def test_read_only_bind_is_really_read_only(bind_dirs):
    source, target = bind_dirs
    mountlib.mount_all([Mount("bind", source, options=["rbind", "ro"])], target)
    assert mountlib.is_mountpoint(target)
    with open(os.path.join(target, "file")) as f:
        assert f.read() == "content"
    with pytest.raises(OSError) as denied:
        open(os.path.join(target, "new"), "w").close()
    assert denied.value.errno == 30  # EROFS
    mountlib.unmount_all(target)
    assert not mountlib.is_mountpoint(target)


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting needs root")
def test_unmount_all_removes_stacked_mounts(bind_dirs):
    source, target = bind_dirs
    for _ in range(3):
        mountlib.mount(Mount("bind", source, options=["rbind", "rw"]), target)
    assert mountlib.mounts_under(target).count(os.path.realpath(target)) == 3
    mountlib.unmount_all(target)
    assert mountlib.mounts_under(target) == []
    mountlib.unmount_all(target)  # nothing mounted: fine


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting needs root")
def test_failed_mount_raises_mount_error_and_leaves_nothing(bind_dirs):
    _, target = bind_dirs
    with pytest.raises(mountlib.MountError):
        mountlib.mount_all([Mount("bind", "/nonexistent/source", options=["rbind"])], target)
    assert mountlib.mounts_under(target) == []


def test_mount_point_is_the_mounts_target_under_the_directory():
    assert Mount("bind", "/s").point_under("/mnt/x") == "/mnt/x"
    assert Mount("bind", "/s", target="/sub/dir").point_under("/mnt/x") == \
        "/mnt/x/sub/dir"
    assert Mount("bind", "/s", target="sub").point_under("/mnt/x") == "/mnt/x/sub"


def _entry(mount_id, mountpoint, fstype="tmpfs", source="none", super_options="rw"):
    return mountlib.MountInfo("%d 1 0:1 / %s rw - %s %s %s\n"
                              % (mount_id, mountpoint, fstype, source, super_options))


def test_mount_on_top_is_the_last_one_stacked_at_the_point():
    table = [_entry(1, "/"), _entry(2, "/m", source="first"), _entry(3, "/m/sub"),
             _entry(4, "/m", source="second")]
    assert mountlib.mount_on_top("/m", table).source == "second"
    assert mountlib.mount_on_top("/m/sub", table).mount_id == 3
    assert mountlib.mount_on_top("/elsewhere", table) is None


def test_mounted_at_compares_an_overlay_by_its_directories():
    lowers = "lowerdir=/r/snapshots/2/fs:/r/snapshots/1/fs"
    mounts = [Mount("overlay", "overlay",
                    options=["workdir=/r/snapshots/3/work", "upperdir=/r/snapshots/3/fs", lowers])]
    shown = "rw,%s,upperdir=/r/snapshots/3/fs,workdir=/r/snapshots/3/work" % lowers
    assert mountlib.mounted_at("/m", mounts, [_entry(2, "/m", "overlay", "overlay", shown)])
    relative = "rw,lowerdir=2/fs:1/fs,upperdir=/r/snapshots/3/fs,workdir=/r/snapshots/3/work"
    assert mountlib.mounted_at("/m", mounts, [_entry(2, "/m", "overlay", "overlay", relative)])
    other = shown.replace("snapshots/3/fs", "snapshots/4/fs")
    assert not mountlib.mounted_at("/m", mounts, [_entry(2, "/m", "overlay", "overlay", other)])
    covered = [_entry(2, "/m", "overlay", "overlay", shown), _entry(3, "/m")]
    assert not mountlib.mounted_at("/m", mounts, covered)
    assert not mountlib.mounted_at("/m", mounts, [])


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting needs root")
def test_mounted_at_tells_the_snapshots_bind_from_another(bind_dirs, tmp_path):
    source, target = bind_dirs
    other = tmp_path / "other"
    other.mkdir()
    ours = [Mount("bind", source, options=["rbind", "ro"])]
    assert not mountlib.mounted_at(target, ours)
    mountlib.mount_all(ours, target)
    assert mountlib.mounted_at(target, ours)
    assert not mountlib.mounted_at(target, [Mount("bind", source, options=["rbind", "rw"])])
    assert not mountlib.mounted_at(target, [Mount("bind", str(other), options=["rbind", "ro"])])


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting needs root")
def test_temporary_mount_unmounts_and_removes_its_directory_also_on_error(bind_dirs, tmp_path):
    source, _ = bind_dirs
    mounts = [Mount("bind", source, options=["rbind", "rw"])]
    with mountlib.temporary_mount(mounts, parent=str(tmp_path), prefix="tm-") as target:
        assert os.path.basename(target).startswith("tm-")
        assert mountlib.mounted_at(target, mounts)
        with open(os.path.join(target, "file")) as f:
            assert f.read() == "content"
    assert not os.path.exists(target)
    with pytest.raises(KeyError):
        with mountlib.temporary_mount(mounts, path=str(tmp_path / "new" / "dir")) as target:
            assert mountlib.is_mountpoint(target)
            raise KeyError("in the block")
    assert not os.path.exists(target) and not mountlib.mounts_under(str(tmp_path))
    with pytest.raises(mountlib.MountError):
        with mountlib.temporary_mount([Mount("bind", "/nonexistent/source", options=["rbind"])],
                                      parent=str(tmp_path)):
            pytest.fail("the block must not run when the mount fails")
    assert sorted(os.listdir(tmp_path)) == ["new", "source", "target"]


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting needs root")
def test_mounts_under_finds_a_mount_below_a_path_mountinfo_escapes(tmp_path):
    """mountinfo writes space, tab, newline and backslash as octal escapes:
    the quick look for the path in its text must look for them so."""
    outer = tmp_path / "a b\\c\td"
    source, target = outer / "source", outer / "in\nside" / "target"
    source.mkdir(parents=True)
    target.mkdir(parents=True)
    mountlib.mount_all([Mount("bind", str(source), options=["rbind", "ro"])], str(target))
    try:
        assert mountlib.mounts_under(str(outer)) == [str(target)]
        assert mountlib.mounts_under(str(target)) == [str(target)]
        assert mountlib.mounts_under(str(source)) == []
    finally:
        mountlib.unmount_all(str(target))
    assert mountlib.mounts_under(str(outer)) == []
