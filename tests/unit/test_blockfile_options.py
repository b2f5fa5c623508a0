"""The blockfile backend's refusals that need no loop device: each names
its reason and what to do (the kernel's side is the suite's test_blockfile.py)."""

import os

import pytest

from snaplab import errors
from snaplab import kernel
from snaplab import loop
from snaplab.backends import open_snapshotter
from snaplab.backends.blockfile import parse_size


@pytest.mark.parametrize("text, size", [("64M", 64 << 20), ("300MiB", 300 << 20),
                                        ("1G", 1 << 30), ("8k", 8 << 10), ("4096", 4096)])
def test_scratch_sizes(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "big", "64Q", "-1M", "1.5G"])
def test_a_bad_scratch_size_is_an_invalid_argument(tmp_path, text):
    with pytest.raises(errors.InvalidArgument) as refused:
        parse_size(text)
    assert "not a size" in str(refused.value)


def test_an_unknown_fs_type_is_refused_before_anything_is_made(tmp_path):
    root = str(tmp_path / "root")
    with pytest.raises(errors.InvalidArgument) as refused:
        open_snapshotter(root, "blockfile", fs_type="btrfs")
    assert "fs_type 'btrfs' is not one of ext4, xfs" in str(refused.value)
    assert not os.path.exists(root)


def test_no_loop_devices_is_refused_with_the_fix(tmp_path, monkeypatch):
    monkeypatch.setattr(loop, "LOOP_CONTROL", str(tmp_path / "no-loop-control"))
    with pytest.raises(errors.FailedPrecondition) as refused:
        open_snapshotter(str(tmp_path / "root"), "blockfile")
    assert "no %s" % loop.LOOP_CONTROL in str(refused.value)
    assert "modprobe loop" in str(refused.value)


def test_a_filesystem_the_kernel_lacks_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(kernel, "filesystem_in_kernel", lambda name: name != "xfs")
    with pytest.raises(errors.FailedPrecondition) as refused:
        open_snapshotter(str(tmp_path / "root"), "blockfile", fs_type="xfs")
    assert "no xfs filesystem" in str(refused.value)


def test_no_mkfs_is_refused_naming_the_package(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # nothing to run there
    with pytest.raises(errors.FailedPrecondition) as refused:
        open_snapshotter(str(tmp_path / "root"), "blockfile")
    assert "no mkfs.ext4 to make the scratch image" in str(refused.value)
    assert "e2fsprogs" in str(refused.value) and "scratch_file" in str(refused.value)
    assert not os.path.exists(str(tmp_path / "root" / "scratch"))
