"""Filesystem image files: copy one cheaply, and read what one holds.

The blockfile backend keeps each snapshot as an ext4 or xfs image and
starts a new one as a copy of its parent's: a clone sharing every extent
where the filesystem can (FICLONE: btrfs, xfs with reflink=1), a sparse copy
elsewhere. Which filesystem an image holds, and its UUID, are read from its
superblock, without mounting it. shared_bytes() asks the kernel (FIEMAP)
how much of a file shares its extents with another: the tests check
clones with it.
"""

import errno
import fcntl
import os
import platform
import stat
import struct

from . import fsutil

# _IOW/_IOWR as most architectures encode them (2 direction bits, 14 size
# bits); powerpc, mips, sparc and alpha use 3 and 13, with other values.
if platform.machine().lower().startswith(("ppc", "powerpc", "mips", "sparc", "alpha")):
    _IOC_WRITE, _IOC_READ, _IOC_SIZEBITS = 4, 2, 13
else:
    _IOC_WRITE, _IOC_READ, _IOC_SIZEBITS = 1, 2, 14


def _ioc(direction, kind, number, size):
    return (direction << (16 + _IOC_SIZEBITS)) | (size << 16) | (kind << 8) | number


# FICLONE = _IOW(0x94, 9, int): the destination shares every extent of the source.
FICLONE = _ioc(_IOC_WRITE, 0x94, 9, 4)
# What FICLONE answers when these two files cannot share extents: the
# filesystem has no reflink (EOPNOTSUPP, ENOTTY, EINVAL), or they are on two
# filesystems (EXDEV).
_CLONE_FALLBACK_ERRNOS = (errno.EOPNOTSUPP, errno.ENOTTY, errno.EINVAL, errno.EXDEV,
                          errno.ENOSYS)

# struct fiemap { u64 fm_start, fm_length; u32 fm_flags, fm_mapped_extents,
# fm_extent_count, fm_reserved; } followed by struct fiemap_extent { u64
# fe_logical, fe_physical, fe_length, fe_reserved64[2]; u32 fe_flags,
# fe_reserved[3]; } * fm_extent_count.
_FIEMAP = struct.Struct("=QQIIII")
_FIEMAP_EXTENT = struct.Struct("=QQQ16sI12s")
FS_IOC_FIEMAP = _ioc(_IOC_READ | _IOC_WRITE, ord("f"), 11, _FIEMAP.size)
FIEMAP_FLAG_SYNC = 0x1
FIEMAP_EXTENT_LAST = 0x1
FIEMAP_EXTENT_SHARED = 0x2000
_EXTENTS_PER_CALL = 256
_ZEROS = bytes(64 * 1024)


def clone_or_copy(source, target, mode=0o600):
    """Make the new file `target` a copy of the regular file `source`;
    returns "clone" or "copy", how it was made.

    A clone (FICLONE) when the filesystem can share the extents, which
    costs no data blocks until either file is written; otherwise a sparse
    copy (fsutil.copy_data): holes stay holes; on a filesystem that reports
    no holes, zeros are not written (copy_skipping_zeros). Either way the copy is
    fsynced before returning, so once it is renamed into place a crash
    cannot leave it half written. `target` must not exist.
    """
    sfd = os.open(source, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        st = os.fstat(sfd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(errno.EINVAL, "not a regular file", source)
        dfd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
        try:
            how = "clone"
            try:
                fcntl.ioctl(dfd, FICLONE, sfd)
            except OSError as err:
                if err.errno not in _CLONE_FALLBACK_ERRNOS:
                    raise
                how = "copy"
                if _reports_no_hole(sfd, st):
                    copy_skipping_zeros(sfd, dfd, st.st_size)
                else:
                    fsutil.copy_data(sfd, dfd, st)
            os.fsync(dfd)
        finally:
            os.close(dfd)
    finally:
        os.close(sfd)
    return how


def _reports_no_hole(fd, st):
    """Whether the filesystem reports no hole anywhere in the file. Then its
    holes, if any, are hidden and only the zeros can tell: FUSE without lseek
    (zfs-fuse) says every byte is data, and OpenZFS may do so for a file
    with changes not yet synced (zfs_dmu_offset_next_sync=0), such as a
    scratch just made or an image just unmounted. st_blocks lags there too,
    so it proves nothing for a sparse-looking file; but a file it counts as
    fully allocated has no hole, and keeps the in-kernel copy."""
    if st.st_size == 0 or st.st_blocks * 512 >= st.st_size:
        return False
    try:
        return os.lseek(fd, 0, os.SEEK_HOLE) >= st.st_size
    except OSError:
        return True


def copy_skipping_zeros(sfd, dfd, size):
    """Copy `size` bytes of `sfd` into `dfd`, leaving a hole wherever a
    64 KiB chunk is all zeros: a 64 MiB image holding a few MiB stays a
    few MiB where holes cannot be found otherwise. The size is set first, as
    in fsutil.copy_data, so that no write extends the file."""
    os.ftruncate(dfd, size)
    offset = 0
    while offset < size:
        chunk = os.pread(sfd, min(len(_ZEROS), size - offset), offset)
        if not chunk:
            break
        if chunk != _ZEROS[:len(chunk)]:
            written = 0
            while written < len(chunk):
                written += os.pwrite(dfd, chunk[written:], offset + written)
        offset += len(chunk)


def shared_bytes(path):
    """(bytes in extents shared with another file, bytes in all extents)
    of `path`, as FIEMAP reports them (synced first)."""
    shared = total = 0
    start = 0
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        while True:
            request = bytearray(_FIEMAP.pack(start, 2 ** 64 - 1 - start, FIEMAP_FLAG_SYNC, 0,
                                             _EXTENTS_PER_CALL, 0))
            request += bytes(_FIEMAP_EXTENT.size * _EXTENTS_PER_CALL)
            fcntl.ioctl(fd, FS_IOC_FIEMAP, request, True)
            mapped = _FIEMAP.unpack_from(request)[3]
            if not mapped:
                return shared, total
            for i in range(mapped):
                logical, _physical, length, _r, flags, _r2 = _FIEMAP_EXTENT.unpack_from(
                    request, _FIEMAP.size + i * _FIEMAP_EXTENT.size)
                total += length
                if flags & FIEMAP_EXTENT_SHARED:
                    shared += length
                if flags & FIEMAP_EXTENT_LAST:
                    return shared, total
                start = logical + length
    finally:
        os.close(fd)


# Where each filesystem's superblock says what it is, and its UUID.
_EXT_MAGIC_AT, _EXT_MAGIC = 1024 + 0x38, b"\x53\xef"
_XFS_MAGIC_AT, _XFS_MAGIC = 0, b"XFSB"
_UUID_AT = {"ext4": 1024 + 0x68, "xfs": 32}


def filesystem_of(path):
    """The filesystem the image file `path` holds, read from its superblock:
    "ext4" (ext2, ext3 and ext4 share it), "xfs", or None. OSError if it
    cannot be read."""
    with open(path, "rb") as image:
        head = image.read(4096)
    if head[_XFS_MAGIC_AT:_XFS_MAGIC_AT + 4] == _XFS_MAGIC:
        return "xfs"
    if head[_EXT_MAGIC_AT:_EXT_MAGIC_AT + 2] == _EXT_MAGIC:
        return "ext4"
    return None


def uuid_of(path):
    """The filesystem UUID (16 bytes) of an ext4 or xfs image, or None."""
    offset = _UUID_AT.get(filesystem_of(path))
    if offset is None:
        return None
    with open(path, "rb") as image:
        image.seek(offset)
        return image.read(16)


__all__ = ["FICLONE", "clone_or_copy", "copy_skipping_zeros", "filesystem_of", "shared_bytes",
           "uuid_of"]
