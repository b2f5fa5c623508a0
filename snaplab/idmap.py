"""uid/gid mapping: containerd's uidmapping/gidmapping labels, the user
namespace a mapping needs, idmapped bind mounts and the chown remap.

A mapping is containerd's label value `ctrID:hostID:size[,...]`: container
id ctrID..ctrID+size-1 is host id hostID..hostID+size-1. Two ways make a
snapshot show a layer's files (stored with container ids) with host ids:

- an idmapped mount (overlay): the kernel shifts the ids of a bind mount
  through a user namespace whose uid_map/gid_map is the mapping
  (open_tree + mount_setattr(MOUNT_ATTR_IDMAP) + move_mount); nothing on
  disk changes;
- a chown remap (native, btrfs): every entry of the new snapshot is
  lchown'ed to its host ids, as containerd's client does for a snapshotter
  without the remap-ids capability.

Only the standard library and ctypes: the collection ships this module.
"""

import contextlib
import ctypes
import ctypes.util
import errno
import os
import stat
import subprocess

from . import errors
from . import faults

UID_MAPPING_LABEL = "containerd.io/snapshot/uidmapping"
GID_MAPPING_LABEL = "containerd.io/snapshot/gidmapping"
# The Mount options that carry a mapping to the mount code (containerd's).
UIDMAP_OPTION = "uidmap="
GIDMAP_OPTION = "gidmap="
# The capability a snapshotter advertises when it honours the labels itself
# (containerd's client then neither chowns nor refuses).
REMAP_CAPABILITY = "remap-ids"

# containerd refuses ids of 2^32-1 and above: (uid_t)-1 means "no id" to
# the kernel (chown's "leave it"), so no mapping may reach it.
_ID_LIMIT = 2 ** 32 - 1
# Lines the kernel takes in a uid_map/gid_map (since Linux 4.15).
_MAX_RANGES = 340


class IDMap:
    """One direction's ranges: [(container id, host id, size)]."""

    __slots__ = ("ranges", "text")

    def __init__(self, text, what="uidmapping"):
        self.text = text
        self.ranges = []
        for part in text.split(","):
            fields = part.split(":")
            if len(fields) != 3:
                raise errors.InvalidArgument(
                    "%s %r: each range is containerID:hostID:size (%r is not)" % (what, text, part))
            try:
                numbers = [int(field, 10) for field in fields]
            except ValueError:
                raise errors.InvalidArgument(
                    "%s %r: %r holds something that is not a decimal id" % (what, text, part)) \
                    from None
            container, host, size = numbers
            if min(numbers) < 0 or size == 0:
                raise errors.InvalidArgument(
                    "%s %r: ids must not be negative and a size not 0 (%r)" % (what, text, part))
            if max(container, host) + size > _ID_LIMIT or size >= _ID_LIMIT:
                raise errors.InvalidArgument(
                    "%s %r: range %r reaches id %d or beyond (4294967295 means no id)"
                    % (what, text, part, _ID_LIMIT))
            self.ranges.append((container, host, size))
        if len(self.ranges) > _MAX_RANGES:
            raise errors.InvalidArgument("%s %r: more than %d ranges (the kernel's limit)"
                                         % (what, text, _MAX_RANGES))
        # The kernel refuses a map whose ranges overlap on either side.
        for side, name in ((0, "container"), (1, "host")):
            spans = sorted((r[side], r[side] + r[2]) for r in self.ranges)
            for earlier, later in zip(spans, spans[1:]):
                if later[0] < earlier[1]:
                    raise errors.InvalidArgument("%s %r: two ranges overlap on the %s side"
                                                 % (what, text, name))
        if self.to_host(0) is None:
            raise errors.InvalidArgument(
                "%s %r does not map container id 0: the snapshot's root needs an owner "
                "in the container" % (what, text))

    def to_host(self, container_id):
        """The host id of `container_id`, or None when no range maps it."""
        for container, host, size in self.ranges:
            if container <= container_id < container + size:
                return host + container_id - container
        return None

    def kernel_map(self):
        """The text to write to /proc/PID/uid_map or gid_map."""
        return "".join("%d %d %d\n" % r for r in self.ranges)


class Mapping:
    """A snapshot's uid and gid maps."""

    __slots__ = ("uids", "gids")

    def __init__(self, uid_text, gid_text):
        self.uids = IDMap(uid_text, "uidmapping")
        self.gids = IDMap(gid_text, "gidmapping")

    @property
    def root_pair(self):
        """(uid, gid) on the host of the container's root."""
        return self.uids.to_host(0), self.gids.to_host(0)

    def mount_options(self):
        return [UIDMAP_OPTION + self.uids.text, GIDMAP_OPTION + self.gids.text]


def from_labels(labels):
    """The Mapping the labels ask for, or None; InvalidArgument if malformed."""
    uid_text = (labels or {}).get(UID_MAPPING_LABEL)
    gid_text = (labels or {}).get(GID_MAPPING_LABEL)
    if not uid_text and not gid_text:
        return None
    if not uid_text or not gid_text:
        raise errors.InvalidArgument(
            "a uid/gid mapping needs both labels %s and %s (only one is given)"
            % (UID_MAPPING_LABEL, GID_MAPPING_LABEL))
    return Mapping(uid_text, gid_text)


def from_options(options):
    """(Mapping or None, the other options) of a Mount's options."""
    uid_text = gid_text = None
    rest = []
    for option in options:
        if option.startswith(UIDMAP_OPTION):
            uid_text = option[len(UIDMAP_OPTION):]
        elif option.startswith(GIDMAP_OPTION):
            gid_text = option[len(GIDMAP_OPTION):]
        else:
            rest.append(option)
    if uid_text is None and gid_text is None:
        return None, rest
    if uid_text is None or gid_text is None:
        raise errors.InvalidArgument("mount options carry only one of uidmap= and gidmap=: "
                                     "an idmapped mount needs both")
    return Mapping(uid_text, gid_text), rest


# -- the user namespace of a mapping --------------------------------------------

@contextlib.contextmanager
def user_namespace(mapping):
    """`with user_namespace(mapping) as fd`: an fd of a new user namespace
    whose uid_map/gid_map are the mapping (what MOUNT_ATTR_IDMAP takes).

    Made without forking Python: `snaplab serve` is multi-threaded, and a
    forked copy of a threaded interpreter may deadlock on a lock another
    thread held. subprocess starts `unshare --user cat` with fork+exec done
    in C (_posixsubprocess runs no Python between them): unshare(1) enters
    a new, still unmapped, user namespace and execs cat. The line cat
    echoes back proves the unshare is done; this process (root in the
    initial namespace) then writes the maps, opens /proc/PID/ns/user and
    closes cat's stdin, so cat ends. A kill of this process closes the pipe
    too: the child never outlives it. The fd keeps the namespace alive.
    """
    try:
        child = subprocess.Popen(["unshare", "--user", "cat"], stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    except FileNotFoundError:
        raise errors.FailedPrecondition(
            "an idmapped mount needs unshare(1) (util-linux) to make its user namespace; "
            "install util-linux") from None
    try:
        try:
            child.stdin.write(b"ready\n")
            child.stdin.flush()
            echoed = child.stdout.readline()
        except BrokenPipeError:  # unshare failed and exited
            echoed = b""
        if echoed != b"ready\n":
            raise errors.FailedPrecondition(
                "cannot make a user namespace for an idmapped mount (unshare --user: %s); "
                "user namespaces may be disabled (sysctl user.max_user_namespaces)"
                % child.stderr.read(500).decode(errors="replace").strip())
        proc = "/proc/%d/" % child.pid
        try:
            for name, idmap in (("uid_map", mapping.uids), ("gid_map", mapping.gids)):
                with open(proc + name, "w", encoding="ascii") as file:
                    file.write(idmap.kernel_map())
        except OSError as err:
            raise errors.FailedPrecondition(
                "the kernel refuses the mapping for a user namespace (%s %s): %s"
                % (mapping.uids.text, mapping.gids.text, os.strerror(err.errno))) from None
        userns_fd = os.open(proc + "ns/user", os.O_RDONLY | os.O_CLOEXEC)
    finally:
        child.stdin.close()
        child.stdout.close()
        child.stderr.close()
        child.wait()
    try:
        yield userns_fd
    finally:
        os.close(userns_fd)


# -- idmapped bind mounts --------------------------------------------------------

# The new mount API's calls have the same numbers on every architecture
# that came after it (x86_64 and arm64 alike: the unified table from 424 on).
_SYS_OPEN_TREE = 428
_SYS_MOVE_MOUNT = 429
_SYS_MOUNT_SETATTR = 442
_AT_FDCWD = -100
_AT_EMPTY_PATH = 0x1000
_AT_RECURSIVE = 0x8000
_OPEN_TREE_CLONE = 1
_MOVE_MOUNT_F_EMPTY_PATH = 0x4
_MOUNT_ATTR_RDONLY = 0x1
_MOUNT_ATTR_IDMAP = 0x100000


class _MountAttr(ctypes.Structure):
    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
                ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]


_libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


class IDMapError(errors.SnapshotError, OSError):
    """The kernel refused an idmapped mount; errno and the step are in the message."""


def _call(what, number, *args):
    result = _libc.syscall(ctypes.c_long(number), *args)
    if result < 0:
        err = ctypes.get_errno()
        reason = os.strerror(err)
        if err in (errno.ENOSYS, errno.EINVAL, errno.EPERM, errno.EOPNOTSUPP):
            reason += " (the kernel or this filesystem cannot idmap a mount)"
        raise IDMapError(err, "%s: %s" % (what, reason))
    return result


def idmapped_bind(source, target, userns_fd, recursive=False, read_only=False):
    """Bind `source` on `target` with its ids shifted through `userns_fd`."""
    flags = _AT_RECURSIVE if recursive else 0
    tree = _call("open_tree %s" % source, _SYS_OPEN_TREE, ctypes.c_int(_AT_FDCWD),
                 os.fsencode(source),
                 ctypes.c_uint(_OPEN_TREE_CLONE | os.O_CLOEXEC | flags))
    try:
        attr = _MountAttr(_MOUNT_ATTR_IDMAP | (_MOUNT_ATTR_RDONLY if read_only else 0),
                          0, 0, userns_fd)
        _call("mount_setattr(MOUNT_ATTR_IDMAP) %s" % source, _SYS_MOUNT_SETATTR,
              ctypes.c_int(tree), b"", ctypes.c_uint(_AT_EMPTY_PATH | flags),
              ctypes.byref(attr), ctypes.c_size_t(ctypes.sizeof(attr)))
        _call("move_mount %s to %s" % (source, target), _SYS_MOVE_MOUNT, ctypes.c_int(tree),
              b"", ctypes.c_int(_AT_FDCWD), os.fsencode(target),
              ctypes.c_uint(_MOVE_MOUNT_F_EMPTY_PATH))
    finally:
        os.close(tree)  # a clone never moved is freed with its fd


# -- the chown remap ---------------------------------------------------------------

_CAPABILITY_XATTR = "security.capability"


_VFS_CAP_REVISION_MASK = 0xFF000000
_VFS_CAP_REVISION_2 = 0x02000000
_VFS_CAP_REVISION_3 = 0x03000000
_VFS_CAP_V2_SIZE = 20


def _remapped_capability(value, mapping, path):
    """A security.capability value as an idmapped mount shows it: version 3,
    its root id (0 for version 2, which has none) shifted like a uid. So a
    capability applies to the container's root, as the kernel has it."""
    magic = int.from_bytes(value[:4], "little")
    revision = magic & _VFS_CAP_REVISION_MASK
    if revision == _VFS_CAP_REVISION_2 and len(value) == _VFS_CAP_V2_SIZE:
        root_id = 0
    elif revision == _VFS_CAP_REVISION_3 and len(value) == _VFS_CAP_V2_SIZE + 4:
        root_id = int.from_bytes(value[_VFS_CAP_V2_SIZE:], "little")
    else:
        return value  # version 1 has no root to shift
    host_root = mapping.uids.to_host(root_id)
    if host_root is None:
        raise errors.FailedPrecondition(
            "%s has a file capability for root id %d, which the uidmapping %s does not map"
            % (path, root_id, mapping.uids.text))
    new_magic = (magic & ~_VFS_CAP_REVISION_MASK) | _VFS_CAP_REVISION_3
    return (new_magic.to_bytes(4, "little") + value[4:_VFS_CAP_V2_SIZE]
            + host_root.to_bytes(4, "little"))


def remap_tree(top, mapping):
    """lchown every entry under `top` (itself included) from container ids
    to host ids. chown clears setuid/setgid and file capabilities: both
    are put back as they were. An id the mapping does not map is refused
    (as containerd's client does), naming the entry: the caller removes
    the half-remapped copy. Crash point remap.entry before each entry."""
    seen = set()  # (dev, ino) of hard-linked files done already

    def remap(path, st):
        if st.st_nlink > 1 and not stat.S_ISDIR(st.st_mode):
            if (st.st_dev, st.st_ino) in seen:
                return
            seen.add((st.st_dev, st.st_ino))
        uid, gid = mapping.uids.to_host(st.st_uid), mapping.gids.to_host(st.st_gid)
        if uid is None or gid is None:
            raise errors.FailedPrecondition(
                "%s is owned by %d:%d, which the mapping (uidmapping %s, gidmapping %s) does "
                "not map: widen the mapping" % (path, st.st_uid, st.st_gid,
                                                mapping.uids.text, mapping.gids.text))
        if (uid, gid) == (st.st_uid, st.st_gid):
            return
        faults.point("remap.entry")
        capability = None
        if stat.S_ISREG(st.st_mode):
            try:
                capability = os.getxattr(path, _CAPABILITY_XATTR, follow_symlinks=False)
            except OSError:
                pass  # none, or no xattrs here
        os.chown(path, uid, gid, follow_symlinks=False)
        if not stat.S_ISLNK(st.st_mode) and st.st_mode & (stat.S_ISUID | stat.S_ISGID):
            os.chmod(path, stat.S_IMODE(st.st_mode))
        if capability is not None:
            os.setxattr(path, _CAPABILITY_XATTR, _remapped_capability(capability, mapping, path),
                        follow_symlinks=False)

    def walk(directory):
        with os.scandir(directory) as entries:
            for entry in entries:
                st = entry.stat(follow_symlinks=False)
                remap(entry.path, st)
                if stat.S_ISDIR(st.st_mode):
                    walk(entry.path)

    remap(top, os.lstat(top))
    walk(top)
