"""snaplab/imagefile.py on real filesystems: a sparse copy keeps its holes
(ext4, no reflink), a clone shares its extents (xfs with reflink, btrfs);
and the superblock reading of mkfs-made images."""

import os
import subprocess

import pytest

from snaplab import imagefile
from snaplab import mount as mountlib
from snaplab.types import Mount

MIB = 1024 * 1024


def _sparse_file(path):
    """A 32 MiB file with 1 MiB of data at 0 and 1 MiB at 16 MiB, holes elsewhere."""
    with open(path, "wb") as f:
        f.write(os.urandom(MIB))
        f.seek(16 * MIB)
        f.write(os.urandom(MIB))
        f.truncate(32 * MIB)
        os.fsync(f.fileno())


def _content(path):
    with open(path, "rb") as f:
        return f.read()


def _used_bytes(path):
    st = os.statvfs(path)
    return (st.f_blocks - st.f_bfree) * st.f_frsize


def test_a_sparse_copy_keeps_its_holes_on_ext4(loop_filesystem):
    with loop_filesystem("ext4", "snaplab-test-imagefile-") as fs:
        source = os.path.join(fs.mountpoint, "source")
        copy = os.path.join(fs.mountpoint, "copy")
        _sparse_file(source)
        assert imagefile.clone_or_copy(source, copy) == "copy"
        assert _content(copy) == _content(source)
        st = os.stat(copy)
        assert st.st_size == 32 * MIB
        # 2 MiB of data (and a few blocks of extent tree), not 32
        assert 2 * MIB <= st.st_blocks * 512 < 3 * MIB
        with open(copy, "rb") as f:
            assert os.lseek(f.fileno(), MIB, os.SEEK_HOLE) == MIB
            assert os.lseek(f.fileno(), MIB, os.SEEK_DATA) == 16 * MIB
        assert imagefile.shared_bytes(copy) == (0, 2 * MIB)
        assert oct(os.stat(copy).st_mode & 0o777) == oct(0o600)


@pytest.mark.parametrize("name", ["xfs", "btrfs"])
def test_a_clone_shares_every_extent(loop_filesystem, name):
    with loop_filesystem(name, "snaplab-test-imagefile-") as fs:
        source = os.path.join(fs.mountpoint, "source")
        copy = os.path.join(fs.mountpoint, "copy")
        _sparse_file(source)
        before = _used_bytes(fs.mountpoint)
        assert imagefile.clone_or_copy(source, copy) == "clone"
        assert _content(copy) == _content(source)
        shared, total = imagefile.shared_bytes(copy)
        assert shared == total == 2 * MIB
        assert _used_bytes(fs.mountpoint) - before < MIB // 2  # metadata only
        # Writing into the clone unshares only what is written.
        with open(copy, "r+b") as f:
            f.write(b"x" * 4096)
            os.fsync(f.fileno())
        shared, total = imagefile.shared_bytes(copy)
        assert total == 2 * MIB and 2 * MIB - 64 * 1024 <= shared < 2 * MIB


def test_an_existing_target_is_not_overwritten(tmp_path):
    (tmp_path / "source").write_bytes(b"new")
    (tmp_path / "target").write_bytes(b"old")
    with pytest.raises(FileExistsError):
        imagefile.clone_or_copy(str(tmp_path / "source"), str(tmp_path / "target"))
    assert (tmp_path / "target").read_bytes() == b"old"


@pytest.mark.parametrize("fs_type, mkfs, size", [
    ("ext4", ["mkfs.ext4", "-q", "-F"], 8 * MIB),
    ("xfs", ["mkfs.xfs", "-q", "-f"], 300 * MIB),
])
def test_the_superblock_names_the_filesystem_and_its_uuid(tmp_path, fs_type, mkfs, size):
    image = str(tmp_path / "image")
    with open(image, "wb") as f:
        f.truncate(size)
    assert imagefile.filesystem_of(image) is None
    assert imagefile.uuid_of(image) is None
    uuid = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"
    option = ["-U", uuid] if fs_type == "ext4" else ["-m", "uuid=" + uuid]
    subprocess.run(mkfs + option + [image], check=True, capture_output=True)
    assert imagefile.filesystem_of(image) == fs_type
    assert imagefile.uuid_of(image) == bytes.fromhex(uuid.replace("-", ""))


def test_copy_skipping_zeros_leaves_holes_where_zeros_were_written(loop_filesystem):
    """What a filesystem that reports no holes (zfs-fuse) gets: zeros that were
    written, not only holes, become holes in the copy."""
    with loop_filesystem("ext4", "snaplab-test-imagefile-") as fs:
        source = os.path.join(fs.mountpoint, "source")
        copy = os.path.join(fs.mountpoint, "copy")
        data = os.urandom(100 * 1024)
        with open(source, "wb") as f:
            f.write(data + bytes(8 * MIB) + data)  # the zeros allocated
            f.truncate(16 * MIB)
            os.fsync(f.fileno())
        assert os.stat(source).st_blocks * 512 >= 8 * MIB
        sfd = os.open(source, os.O_RDONLY)
        dfd = os.open(copy, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            imagefile.copy_skipping_zeros(sfd, dfd, os.fstat(sfd).st_size)
            os.fsync(dfd)
        finally:
            os.close(sfd)
            os.close(dfd)
        assert _content(copy) == _content(source)
        assert os.stat(copy).st_blocks * 512 < MIB


def test_a_sparse_copy_on_xfs_without_reflink_takes_what_its_source_takes(scratch_dir):
    """xfs preallocates beyond the end of a growing file; a copy that wrote
    its data ranges in order, each one past the end, kept that preallocation
    in the holes between them (8.4 MiB for a 4.5 MiB source, the lab's V4
    xfs found it). The copy sets its size first."""
    with scratch_dir("snaplab-test-imagefile-") as base:
        image, mountpoint = os.path.join(base, "xfs.img"), os.path.join(base, "mnt")
        with open(image, "wb") as f:
            f.truncate(512 * MIB)
        subprocess.run(["mkfs.xfs", "-q", "-m", "reflink=0", image], check=True)
        os.mkdir(mountpoint)
        mountlib.mount(Mount("xfs", image, options=["loop"]), mountpoint)
        try:
            source = os.path.join(mountpoint, "source")
            with open(source, "wb") as f:
                f.truncate(64 * MIB)
                for offset in range(0, 64 * MIB, 8 * MIB):  # as ext4's group metadata
                    f.seek(offset)
                    f.write(os.urandom(64 * 1024))
                f.seek(10 * MIB)
                f.write(os.urandom(4 * MIB))
                os.fsync(f.fileno())
            copy = os.path.join(mountpoint, "copy")
            assert imagefile.clone_or_copy(source, copy) == "copy"
            assert _content(copy) == _content(source)
            assert os.stat(copy).st_blocks <= os.stat(source).st_blocks
        finally:
            mountlib.unmount(mountpoint)
