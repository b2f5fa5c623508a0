"""btrfs: every snapshot is a btrfs subvolume (docs/semantics.md §5).

Layout: <root>/metadata.db and <root>/snapshots/<id>, one subvolume per
snapshot whatever its kind. A parentless one is a new empty subvolume; one
with a parent is a snapshot of snapshots/<parent id> (copy on write, O(1));
views and committed snapshots are read-only subvolumes. Mounts are of the
root's btrfs device with subvolid=<tree id of the subvolume>.

Deviations from containerd's btrfs snapshotter, and why:
- One directory (snapshots/) for every kind instead of active/, view/ and
  snapshots/: the id is the name, the kind is in the metadata.
- Commit sets the read-only flag of the active subvolume in place
  (BTRFS_IOC_SUBVOL_SETFLAGS, one ioctl, O(1)); containerd makes a new
  read-only snapshot in snapshots/ and deletes the active one afterwards,
  which costs a second subvolume and leaves one behind if that delete fails.
- Remove deletes the subvolume after the metadata transaction (as the other
  snaplab backends) rather than snapshotting it to rm-<id> inside it; a
  failed delete leaves an orphan for cleanup(), never a dangling row.

The btrfs ioctls are called directly (fcntl.ioctl on struct-packed
arguments) instead of spawning btrfs-progs for each operation:
benchmarks/bench_btrfs_ioctl.py measures the difference.
"""

import errno
import fcntl
import logging
import os
import platform
import stat
import struct

from .. import errors
from .. import faults
from .. import fsutil
from .. import idmap
from .. import mount as mountlib
from ..types import Finding, Kind, Mount
from .base import StorageEntry, StoreSnapshotter, directory_entries, missing_storage

log = logging.getLogger("snaplab")

# --------------------------------------------------------------------------
# The btrfs ioctls (include/uapi/linux/btrfs.h)

BTRFS_IOCTL_MAGIC = 0x94
# The root directory of every subvolume has this inode number
# (BTRFS_FIRST_FREE_OBJECTID); nothing else in a subvolume does.
SUBVOLUME_ROOT_INO = 256
BTRFS_SUBVOL_RDONLY = 1 << 1

# _IOC encoding: most architectures use 2 direction bits and 14 size bits;
# powerpc, mips, sparc and alpha use 3 and 13, with other direction values.
if platform.machine().lower().startswith(("ppc", "powerpc", "mips", "sparc", "alpha")):
    _IOC_WRITE, _IOC_READ, _IOC_SIZEBITS = 4, 2, 13
else:
    _IOC_WRITE, _IOC_READ, _IOC_SIZEBITS = 1, 2, 14


def _ioc(direction, number, size):
    return (direction << (16 + _IOC_SIZEBITS)) | (size << 16) | (BTRFS_IOCTL_MAGIC << 8) | number


# struct btrfs_ioctl_vol_args { __s64 fd; char name[4088]; }
VOL_ARGS = struct.Struct("=q4088s")
# struct btrfs_ioctl_vol_args_v2 { __s64 fd; __u64 transid; __u64 flags;
#   union { ...; __u64 unused[4]; }; union { char name[4040]; ... }; }
VOL_ARGS_V2 = struct.Struct("=qQQ32s4040s")
# struct btrfs_ioctl_ino_lookup_args { __u64 treeid; __u64 objectid; char name[4080]; }
INO_LOOKUP_ARGS = struct.Struct("=QQ4080s")
U64 = struct.Struct("=Q")

BTRFS_IOC_SUBVOL_CREATE = _ioc(_IOC_WRITE, 14, VOL_ARGS.size)
BTRFS_IOC_SNAP_DESTROY = _ioc(_IOC_WRITE, 15, VOL_ARGS.size)
BTRFS_IOC_INO_LOOKUP = _ioc(_IOC_READ | _IOC_WRITE, 18, INO_LOOKUP_ARGS.size)
BTRFS_IOC_SNAP_CREATE_V2 = _ioc(_IOC_WRITE, 23, VOL_ARGS_V2.size)
BTRFS_IOC_SUBVOL_GETFLAGS = _ioc(_IOC_READ, 25, U64.size)
BTRFS_IOC_SUBVOL_SETFLAGS = _ioc(_IOC_WRITE, 26, U64.size)


def _open_dir(path):
    return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)


def _ioctl(fd, request, argument, what, path):
    """ioctl(2) on the bytes `argument`; returns them as the kernel left them.

    The buffer is passed mutable: fcntl.ioctl copies an immutable argument
    into a 1024-byte buffer, and the btrfs argument structs are 4096 bytes.
    OSError names the operation and the path.
    """
    buffer = bytearray(argument)
    try:
        fcntl.ioctl(fd, request, buffer, True)
    except OSError as err:
        raise OSError(err.errno, "%s: %s" % (what, os.strerror(err.errno)), path) from None
    return bytes(buffer)


def _split(path):
    """(parent directory, name as bytes) of the entry `path`, taken as written:
    normalising first would turn "a/b/.." into "a", another entry."""
    parent, name = os.path.split(os.fspath(path))
    name = os.fsencode(name)
    if not name or name in (b".", b"..") or len(name) > 255:
        raise errors.InvalidArgument("no subvolume name (or one of over 255 bytes) in %r"
                                     % (path,))
    return parent or ".", name


def create_subvolume(path):
    """Create an empty subvolume at `path` (BTRFS_IOC_SUBVOL_CREATE)."""
    parent, name = _split(path)
    fd = _open_dir(parent)
    try:
        _ioctl(fd, BTRFS_IOC_SUBVOL_CREATE, VOL_ARGS.pack(0, name),
               "BTRFS_IOC_SUBVOL_CREATE", path)
    finally:
        os.close(fd)


def snapshot_subvolume(source, path, readonly=False):
    """Snapshot subvolume `source` to `path` (BTRFS_IOC_SNAP_CREATE_V2)."""
    parent, name = _split(path)
    source_fd = _open_dir(source)
    try:
        fd = _open_dir(parent)
        try:
            flags = BTRFS_SUBVOL_RDONLY if readonly else 0
            _ioctl(fd, BTRFS_IOC_SNAP_CREATE_V2,
                   VOL_ARGS_V2.pack(source_fd, 0, flags, b"", name),
                   "BTRFS_IOC_SNAP_CREATE_V2 of %s" % source, path)
        finally:
            os.close(fd)
    finally:
        os.close(source_fd)


def destroy_subvolume(path):
    """Delete the subvolume at `path` and its content (BTRFS_IOC_SNAP_DESTROY).

    ENOTEMPTY if it holds another subvolume: see delete_subvolume_tree.
    """
    parent, name = _split(path)
    fd = _open_dir(parent)
    try:
        _ioctl(fd, BTRFS_IOC_SNAP_DESTROY, VOL_ARGS.pack(0, name),
               "BTRFS_IOC_SNAP_DESTROY", path)
    finally:
        os.close(fd)


def subvolume_flags(path):
    fd = _open_dir(path)
    try:
        raw = _ioctl(fd, BTRFS_IOC_SUBVOL_GETFLAGS, bytes(U64.size),
                     "BTRFS_IOC_SUBVOL_GETFLAGS", path)
    finally:
        os.close(fd)
    return U64.unpack(raw)[0]


def is_readonly(path):
    return bool(subvolume_flags(path) & BTRFS_SUBVOL_RDONLY)


def set_readonly(path, readonly=True):
    """Set or clear the read-only flag of the subvolume at `path`.

    RDONLY is the only flag the kernel lets us set, so one SETFLAGS call
    does it, without reading the flags first.
    """
    fd = _open_dir(path)
    try:
        _ioctl(fd, BTRFS_IOC_SUBVOL_SETFLAGS, U64.pack(BTRFS_SUBVOL_RDONLY if readonly else 0),
               "BTRFS_IOC_SUBVOL_SETFLAGS", path)
    finally:
        os.close(fd)


def subvolume_id(path):
    """The tree id of the subvolume holding `path` (BTRFS_IOC_INO_LOOKUP).

    treeid 0 asks for the tree of the file descriptor; looking up the
    subvolume's root directory needs no privilege.
    """
    fd = _open_dir(path)
    try:
        raw = _ioctl(fd, BTRFS_IOC_INO_LOOKUP, INO_LOOKUP_ARGS.pack(0, SUBVOLUME_ROOT_INO, b""),
                     "BTRFS_IOC_INO_LOOKUP", path)
    finally:
        os.close(fd)
    return INO_LOOKUP_ARGS.unpack(raw)[0]


def is_subvolume(st):
    """Whether the lstat result `st` (of a file on btrfs) is a subvolume root."""
    return stat.S_ISDIR(st.st_mode) and st.st_ino == SUBVOLUME_ROOT_INO


def subvolumes_under(path):
    """Subvolume roots strictly below directory `path`, parents before children."""
    found = []
    stack = [path]
    while stack:
        current = stack.pop()
        try:
            entries = os.scandir(current)
        except FileNotFoundError:
            continue
        with entries:
            for entry in entries:
                if not entry.is_dir(follow_symlinks=False):
                    continue
                if is_subvolume(entry.stat(follow_symlinks=False)):
                    found.append(entry.path)
                stack.append(entry.path)
    # Sorted by depth: parents before children; reversed, deepest first.
    found.sort(key=lambda p: p.count("/"))
    return found


def delete_subvolume_tree(path):
    """Delete `path`, a subvolume or a plain directory, with every subvolume in it.

    A subvolume with no subvolume inside (the common case) goes in one
    ioctl, without reading its content. Otherwise the nested subvolumes go
    first, deepest first; deleting one removes a directory entry from its
    container, so read-only containers lose their flag first. A missing
    path is fine. Anything mounted below `path` stops it with EBUSY.
    """
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(st.st_mode):
        os.unlink(path)
        return
    busy = mountlib.mounts_under(path)
    if busy:
        raise OSError(errno.EBUSY, "refusing to delete a subvolume holding mount points %s"
                      % ", ".join(busy), path)
    top_is_subvolume = is_subvolume(st)
    if top_is_subvolume:
        try:
            destroy_subvolume(path)
            return
        except OSError as err:
            if err.errno != errno.ENOTEMPTY:
                raise
    nested = subvolumes_under(path)
    containers = ([path] if top_is_subvolume else []) + nested
    for subvolume in containers:
        if is_readonly(subvolume):
            set_readonly(subvolume, False)
    for subvolume in reversed(nested):
        destroy_subvolume(subvolume)
    if top_is_subvolume:
        destroy_subvolume(path)
    else:
        fsutil.remove_tree(path)


# --------------------------------------------------------------------------
# The snapshotter


class BtrfsSnapshotter(StoreSnapshotter):
    name = "btrfs"

    def check_filesystem(self, path):
        backing = mountlib.lookup(path)
        if backing.fstype != "btrfs":
            raise errors.FailedPrecondition(
                "btrfs backend: %s is on %s (%s), not btrfs; put the root on a btrfs "
                "filesystem (mkfs.btrfs, or the node_storage role with fstype btrfs)"
                % (path, backing.fstype, backing.source))

    def capabilities(self):
        # The mapping labels are honoured by a chown remap at Prepare/View.
        return [idmap.REMAP_CAPABILITY]

    def setup_layout(self):
        self.ensure_directory(self.snapshots_dir)
        # Every mount is of this device (containerd remembers it the same way).
        self.device = mountlib.lookup(self.root).source

    @property
    def snapshots_dir(self):
        return os.path.join(self.root, "snapshots")

    def path_of(self, snapshot_id):
        return os.path.join(self.snapshots_dir, str(snapshot_id))

    def create_storage(self, snap, info):
        mapping = idmap.from_labels(info.labels)
        # A mapped view is remapped before it is frozen.
        staging = self._make_staged_subvolume(snap, writable=mapping is not None)
        try:
            if mapping is not None:
                idmap.remap_tree(staging, mapping)
                if snap.kind == Kind.VIEW:
                    set_readonly(staging)
            faults.point("create.staged")
            os.rename(staging, self.path_of(snap.id))
        except BaseException:
            delete_subvolume_tree(staging)
            raise

    def _make_staged_subvolume(self, snap, writable=False):
        """The snapshot's subvolume under a new-* name (a crash leaves only
        that, which cleanup() removes), complete but for the rename; a view's
        is read-only unless `writable`."""
        # 64 random bits: a name already taken (EEXIST, nothing made) is
        # not worth a retry loop.
        staging = os.path.join(self.snapshots_dir, "new-" + os.urandom(8).hex())
        if snap.parent_ids:
            snapshot_subvolume(self.path_of(snap.parent_ids[0]), staging,
                               readonly=snap.kind == Kind.VIEW and not writable)
            return staging
        create_subvolume(staging)
        try:
            # 0755 whatever the umask: containerd's RootPermission case.
            os.chmod(staging, 0o755)
            if snap.kind == Kind.VIEW and not writable:
                set_readonly(staging)
        except BaseException:
            delete_subvolume_tree(staging)
            raise
        return staging

    def snapshot_mounts(self, snap, info):
        # Any kind has its own subvolume: a view of a parent is a read-only
        # snapshot of it, so the parent's data is never mounted directly.
        path = self.path_of(snap.id)
        if snap.kind == Kind.ACTIVE and not self.read_only and is_readonly(path):
            self._unfreeze_active(info.name, snap.id, path)
        options = ["subvolid=%d" % subvolume_id(path)]
        if snap.kind != Kind.ACTIVE:
            options.append("ro")
        return [Mount(type="btrfs", source=self.device, options=options)]

    def active_usage(self, snap):
        # No sync_before_measuring: the root is btrfs (check_filesystem), so
        # st_blocks are current and there is no ZFS pool to wait for.
        path = self.path_of(snap.id)
        if not snap.parent_ids:
            return fsutil.disk_usage(path)
        # Unchanged files of a snapshot keep their inode and times, so the
        # entries that differ from the parent are this snapshot's own.
        return fsutil.diff_usage(self.path_of(snap.parent_ids[0]), path)

    def commit_storage(self, snap, snapshot_id):
        if snap is not None:
            set_readonly(self.path_of(snapshot_id))

    def undo_commit_storage(self, snap, snapshot_id):
        if snap is not None:
            set_readonly(self.path_of(snapshot_id), False)

    def storage_entries(self):
        return directory_entries(self.snapshots_dir)

    def storage_entries_of(self, snapshot_id):
        path = self.path_of(snapshot_id)
        return [StorageEntry(str(snapshot_id), path)] if os.path.lexists(path) else []

    def remove_storage_entries(self, entries):
        for entry in entries:
            try:
                delete_subvolume_tree(entry.path)
            except OSError as err:
                # Deleted meanwhile by a Cleanup or Remove racing this one.
                if err.errno != errno.ENOENT:
                    raise

    def _unfreeze_active(self, key, snapshot_id, path):
        """A Commit killed after it froze the subvolume but before its
        metadata committed leaves an active snapshot read-only: make it
        writable again, under the write lock (a Commit in flight holds it,
        so this never thaws a snapshot being committed)."""
        with self.store.transaction(write=True) as tx:
            found_id, info = tx.get_info(key)[:2]
            if found_id == snapshot_id and info.kind == Kind.ACTIVE and is_readonly(path):
                set_readonly(path, False)

    def storage_findings(self, rows):
        def missing(snapshot_id, _kind, _parent_id):
            path = self.path_of(snapshot_id)
            return None if os.path.isdir(path) else path
        found = missing_storage(rows, missing)
        for snapshot_id, key, kind, _parent, _labels in rows:
            path = self.path_of(snapshot_id)
            if not os.path.isdir(path):
                continue
            wanted = kind != Kind.ACTIVE
            if is_readonly(path) == wanted:
                continue

            def repair(tx, path=path, wanted=wanted):
                set_readonly(path, wanted)
                return []
            found.append(Finding(
                "readonly-flag", key,
                "%s snapshot (id %s): its subvolume %s is %s" % (
                    kind, snapshot_id, path, "writable" if wanted else "read-only (a Commit "
                    "was killed after freezing it)"),
                "make the subvolume %s" % ("read-only" if wanted else "writable"), repair))
        return found


__all__ = ["BtrfsSnapshotter", "create_subvolume", "snapshot_subvolume", "destroy_subvolume",
           "delete_subvolume_tree", "set_readonly", "is_readonly", "subvolume_flags",
           "subvolume_id", "is_subvolume", "subvolumes_under"]
