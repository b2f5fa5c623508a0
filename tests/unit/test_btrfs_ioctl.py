"""The btrfs ioctl wrappers of snaplab.backends.btrfs.

The request numbers and struct layouts are checked against the values of
<linux/btrfs.h> (printed by a C program compiled against the header, on
x86_64 and the other architectures with the generic _IOC encoding). The
wrappers then run on a real loop-mounted btrfs, and btrfs-progs checks what
they did.
"""

import os
import platform
import shutil
import subprocess
import sys
import tempfile

import pytest

from snaplab import fsutil
from snaplab.backends import btrfs

MIB = 1 << 20
GENERIC_IOC = not platform.machine().lower().startswith(("ppc", "powerpc", "mips", "sparc",
                                                          "alpha"))


@pytest.mark.skipif(not GENERIC_IOC, reason="numbers below are for the generic _IOC encoding")
def test_request_numbers_are_the_kernel_headers():
    assert btrfs.BTRFS_IOC_SUBVOL_CREATE == 0x5000940E
    assert btrfs.BTRFS_IOC_SNAP_DESTROY == 0x5000940F
    assert btrfs.BTRFS_IOC_INO_LOOKUP == 0xD0009412
    assert btrfs.BTRFS_IOC_SNAP_CREATE_V2 == 0x50009417
    assert btrfs.BTRFS_IOC_SUBVOL_GETFLAGS == 0x80089419
    assert btrfs.BTRFS_IOC_SUBVOL_SETFLAGS == 0x4008941A


def test_struct_layouts_are_the_kernel_headers():
    assert btrfs.VOL_ARGS.size == 4096  # sizeof(struct btrfs_ioctl_vol_args)
    assert btrfs.VOL_ARGS_V2.size == 4096
    assert btrfs.INO_LOOKUP_ARGS.size == 4096
    packed = btrfs.VOL_ARGS_V2.pack(7, 0, btrfs.BTRFS_SUBVOL_RDONLY, b"", b"name")
    # offsetof(flags) == 16, offsetof(name) == 56
    assert int.from_bytes(packed[16:24], sys.byteorder) == btrfs.BTRFS_SUBVOL_RDONLY == 2
    assert packed[56:61] == b"name\0"


def test_bad_names_are_refused_before_any_ioctl():
    for bad in ("/tmp/x/..", "/tmp/x/", "/tmp/x/.", "/tmp/" + "n" * 256):
        with pytest.raises(ValueError):
            btrfs.create_subvolume(bad)


# -- on a real btrfs ---------------------------------------------------------


def _run(*argv):
    return subprocess.run(argv, check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture(scope="module")
def btrfs_dir():
    if os.geteuid() != 0:
        pytest.skip("loop devices and mounts need root")
    if shutil.which("mkfs.btrfs") is None:
        pytest.skip("mkfs.btrfs is not installed")
    base = tempfile.mkdtemp(prefix="snaplab-test-btrfs-ioctl-")
    image, mnt = os.path.join(base, "image"), os.path.join(base, "mnt")
    os.mkdir(mnt)
    device = None
    mounted = False
    try:
        with open(image, "wb") as f:
            f.truncate(128 * MIB)
        _run("mkfs.btrfs", "-q", "-f", image)
        device = _run("losetup", "--find", "--show", image)
        _run("mount", "-t", "btrfs", device, mnt)
        mounted = True
        yield mnt
    finally:
        if mounted:
            subprocess.run(["umount", mnt], check=False)
        if device:
            subprocess.run(["losetup", "-d", device], check=False)
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def fs(btrfs_dir):
    """A fresh plain directory on the btrfs; subvolumes left in it are deleted."""
    path = tempfile.mkdtemp(dir=btrfs_dir)
    yield path
    for name in os.listdir(path):
        btrfs.delete_subvolume_tree(os.path.join(path, name))
    os.rmdir(path)


def test_create_snapshot_flags_and_id(fs):
    a, b = os.path.join(fs, "a"), os.path.join(fs, "b")
    btrfs.create_subvolume(a)
    assert os.lstat(a).st_ino == btrfs.SUBVOLUME_ROOT_INO
    assert btrfs.subvolume_id(a) == int(_run("btrfs", "inspect-internal", "rootid", a))
    with open(os.path.join(a, "f"), "w") as f:
        f.write("data")
    btrfs.snapshot_subvolume(a, b, readonly=True)
    assert btrfs.subvolume_id(b) == int(_run("btrfs", "inspect-internal", "rootid", b))
    assert btrfs.subvolume_id(b) != btrfs.subvolume_id(a)
    assert _run("btrfs", "property", "get", b, "ro") == "ro=true"
    assert btrfs.is_readonly(b) and not btrfs.is_readonly(a)
    btrfs.set_readonly(a)
    assert _run("btrfs", "property", "get", a, "ro") == "ro=true"
    btrfs.set_readonly(a, False)
    assert _run("btrfs", "property", "get", a, "ro") == "ro=false"
    with open(os.path.join(b, "f")) as f:
        assert f.read() == "data"


def test_errors_name_the_operation_and_path(fs):
    missing = os.path.join(fs, "missing")
    with pytest.raises(FileNotFoundError) as err:
        btrfs.snapshot_subvolume(missing, os.path.join(fs, "x"))
    assert err.value.filename == missing
    plain = os.path.join(fs, "plain")
    os.mkdir(plain)
    with pytest.raises(OSError) as err:
        btrfs.destroy_subvolume(plain)
    assert "BTRFS_IOC_SNAP_DESTROY" in str(err.value) and err.value.filename == plain
    os.rmdir(plain)


def test_delete_tree_with_nested_subvolumes_in_a_read_only_one(fs):
    top = os.path.join(fs, "top")
    btrfs.create_subvolume(top)
    btrfs.create_subvolume(os.path.join(top, "nested"))
    os.mkdir(os.path.join(top, "nested", "dir"))
    btrfs.create_subvolume(os.path.join(top, "nested", "dir", "deeper"))
    btrfs.set_readonly(top)
    btrfs.set_readonly(os.path.join(top, "nested"))
    assert btrfs.subvolumes_under(top) == [os.path.join(top, "nested"),
                                           os.path.join(top, "nested", "dir", "deeper")]
    btrfs.delete_subvolume_tree(top)
    assert not os.path.lexists(top)
    assert os.path.relpath(fs, os.path.dirname(fs)) not in _run(
        "btrfs", "subvolume", "list", os.path.dirname(fs))


def test_delete_tree_of_a_plain_directory_holding_a_subvolume(fs):
    plain = os.path.join(fs, "new-plain")
    os.makedirs(os.path.join(plain, "d"))
    btrfs.create_subvolume(os.path.join(plain, "d", "sub"))
    btrfs.delete_subvolume_tree(plain)
    assert not os.path.lexists(plain)
    btrfs.delete_subvolume_tree(plain)  # a missing path is fine


def test_diff_usage_of_a_real_snapshot(fs):
    parent, child = os.path.join(fs, "parent"), os.path.join(fs, "child")
    btrfs.create_subvolume(parent)
    os.mkdir(os.path.join(parent, "dir"))
    for name in ("dir/kept", "dir/chmodded", "deleted"):
        with open(os.path.join(parent, name), "wb") as f:
            f.write(os.urandom(MIB))
    btrfs.snapshot_subvolume(parent, child, readonly=False)
    assert fsutil.diff_usage(parent, child).inodes == 0, "an untouched snapshot costs nothing"
    os.chmod(os.path.join(child, "dir", "chmodded"), 0o600)
    os.unlink(os.path.join(child, "deleted"))
    usage = fsutil.diff_usage(parent, child)
    # dir/chmodded (1 MiB); nothing for dir/kept or the deleted file;
    # dir itself is unchanged (same entries, same times).
    assert usage.inodes == 1 and MIB <= usage.size < 2 * MIB, usage
