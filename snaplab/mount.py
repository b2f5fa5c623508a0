"""Mounting the Mounts a snapshotter returns, and reading the mount table.

mount(2) is called directly through ctypes (no mount(8) in between) so that
the options mean exactly what containerd's mount package makes of them
(docs/semantics.md §6): flag words become mount flags, the rest is filesystem data.
"""

import contextlib
import ctypes
import ctypes.util
import errno
import os
import re
import tempfile
import threading

from . import errors
from . import idmap
from . import loop
from .types import Mount

MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_SYNCHRONOUS = 0x10
MS_REMOUNT = 0x20
MS_MANDLOCK = 0x40
MS_DIRSYNC = 0x80
MS_NOATIME = 0x400
MS_NODIRATIME = 0x800
MS_BIND = 0x1000
MS_REC = 0x4000
MS_RELATIME = 0x200000
MS_STRICTATIME = 0x1000000
CLONE_FS = 0x200

# option -> (clear?, flag), as containerd's table: "rw" clears MS_RDONLY...
_FLAGS = {
    "async": (True, MS_SYNCHRONOUS), "atime": (True, MS_NOATIME),
    "bind": (False, MS_BIND), "defaults": (False, 0), "dev": (True, MS_NODEV),
    "diratime": (True, MS_NODIRATIME), "dirsync": (False, MS_DIRSYNC),
    "exec": (True, MS_NOEXEC), "mand": (False, MS_MANDLOCK),
    "noatime": (False, MS_NOATIME), "nodev": (False, MS_NODEV),
    "nodiratime": (False, MS_NODIRATIME), "noexec": (False, MS_NOEXEC),
    "nomand": (True, MS_MANDLOCK), "norelatime": (True, MS_RELATIME),
    "nostrictatime": (True, MS_STRICTATIME), "nosuid": (False, MS_NOSUID),
    "rbind": (False, MS_BIND | MS_REC), "relatime": (False, MS_RELATIME),
    "remount": (False, MS_REMOUNT), "ro": (False, MS_RDONLY), "rw": (True, MS_RDONLY),
    "strictatime": (False, MS_STRICTATIME), "suid": (True, MS_NOSUID),
    "sync": (False, MS_SYNCHRONOUS),
}

_libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p,
                        ctypes.c_ulong, ctypes.c_char_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
_libc.unshare.argtypes = [ctypes.c_int]


class MountError(errors.SnapshotError, OSError):
    """mount(2) or umount(2) failed; errno and the call are in the message."""


def _fs(text):
    return None if text is None else os.fsencode(text)


def _check(result, what):
    if result != 0:
        err = ctypes.get_errno()
        raise MountError(err, "%s: %s" % (what, os.strerror(err)))


def parse_options(options):
    """Split mount options into (flags, data list), as containerd does."""
    flags = 0
    data = []
    for option in options:
        if option in _FLAGS:
            clear, flag = _FLAGS[option]
            flags = flags & ~flag if clear else flags | flag
        elif option.startswith("X-containerd."):
            raise errors.InvalidArgument("mount option %r must be handled before mounting" % option)
        else:
            data.append(option)
    return flags, data


def _syscall_mount(source, target, fstype, flags, data):
    _check(_libc.mount(_fs(source), _fs(target), _fs(fstype), flags, _fs(data)),
           "mount %s on %s (type %s, options %r)" % (source, target, fstype, data))


def _mount_from(directory, source, target, fstype, flags, data):
    """mount(2) with `directory` as working directory, without moving ours.

    A thread that unshared CLONE_FS has its own cwd (containerd does the same
    from a locked OS thread), so relative lowerdirs resolve from `directory`.
    """
    outcome = []

    def run():
        try:
            _check(_libc.unshare(CLONE_FS), "unshare(CLONE_FS)")
            os.chdir(directory)
            _syscall_mount(source, target, fstype, flags, data)
            outcome.append(None)
        except BaseException as err:  # carried to the caller's thread
            outcome.append(err)

    worker = threading.Thread(target=run, name="snaplab-mount")
    worker.start()
    worker.join()
    if outcome[0] is not None:
        raise outcome[0]


def _compact_overlay_data(data):
    """Make a too-long overlay option string fit a page: relative lowerdirs.

    Returns (common directory, new data list). Lowerdirs usually share
    <root>/snapshots/, so "1/fs:2/fs:..." from there is several times shorter
    (this is what lets 128 layers mount, containerd #2502).
    """
    lower_index = next(i for i, o in enumerate(data) if o.startswith("lowerdir="))
    lowers = data[lower_index][len("lowerdir="):].split(":")
    common = os.path.commonpath(lowers) if len(lowers) > 1 else os.path.dirname(lowers[0])
    if common in lowers:  # back off to a real parent, as containerd does
        common = os.path.dirname(common)
    relative = [os.path.relpath(lower, common) for lower in lowers]
    data = list(data)
    data[lower_index] = "lowerdir=" + ":".join(relative)
    return common, data


# Options about the loop device of a `loop` mount, not filesystem data.
LOOP_OPTIONS = ("loop", "direct-io")


def mount(m, target):
    """Mount one Mount at `target` (a directory).

    With the option `loop` the source is an image file: it is mounted
    through a loop device that the kernel frees again at the unmount
    (snaplab/loop.py). With uidmap=/gidmap= it is idmapped (_mount_idmapped).
    """
    mapping, options = idmap.from_options(m.options)
    if mapping is not None:
        _mount_idmapped(Mount(m.type, m.source, m.target, options), target, mapping)
        return
    flags, data = parse_options(m.options)
    if "loop" in data:
        rest = [option for option in data if option not in LOOP_OPTIONS]
        _check_length(",".join(rest))
        try:
            with loop.attached(m.source, read_only=bool(flags & MS_RDONLY),
                               direct_io="direct-io" in data) as device:
                _syscall_mount(device, target, m.type, flags, ",".join(rest) or None)
        except MountError:
            raise
        except OSError as err:  # the image could not be opened or bound
            raise MountError(err.errno, "mount %s on %s (type %s): %s"
                             % (m.source, target, m.type, err.strerror)) from None
        return
    if m.type == "bind" or flags & MS_BIND:
        # A read-only bind needs a second call: MS_BIND ignores MS_RDONLY
        # (containerd #1368), so bind first, then remount read-only.
        _syscall_mount(m.source, target, None, (flags & ~MS_RDONLY) | MS_BIND, None)
        if flags & MS_RDONLY:
            try:
                _syscall_mount(None, target, None,
                               MS_REMOUNT | MS_BIND | MS_RDONLY | (flags & ~(MS_REC | MS_RDONLY)),
                               None)
            except BaseException:
                unmount(target)
                raise
        return
    joined = ",".join(data)
    page = os.sysconf("SC_PAGE_SIZE")
    if m.type == "overlay" and len(joined) >= page - 512 and any(
            o.startswith("lowerdir=") for o in data):
        common, data = _compact_overlay_data(data)
        joined = ",".join(data)
        if len(joined) >= page:
            raise errors.InvalidArgument("mount options are too long (%d bytes, even with "
                                         "relative lowerdirs)" % len(joined))
        _mount_from(common, m.source, target, m.type, flags, joined)
        return
    _check_length(joined)
    _syscall_mount(m.source, target, m.type, flags, joined or None)


# The private directory the idmapped lowerdirs of one overlay mount are bound
# in: <tmp>/snaplab-idmap-<pid of the mounter>-<random>.
IDMAP_LOWERS_PREFIX = "snaplab-idmap-"


def pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_idmap_leftovers(directory=None):
    """Detach and remove the idmapped lowerdir binds of mounters that died
    between binding and detaching them (a kill inside _mount_idmapped); a
    live mounter's are left alone. Run before every idmapped overlay mount
    and by every Cleanup. Returns the directories removed."""
    directory = directory or tempfile.gettempdir()
    removed = []
    try:
        names = os.listdir(directory)
    except OSError:
        return removed
    for name in names:
        pid = name[len(IDMAP_LOWERS_PREFIX):].split("-", 1)[0]
        if not name.startswith(IDMAP_LOWERS_PREFIX) or not pid.isdigit() or pid_alive(int(pid)):
            continue
        private = os.path.join(directory, name)
        for where in mounts_under(private):
            unmount_all(where, MNT_DETACH)
        _remove_empty_directories(private)
        removed.append(private)
    return removed


def _remove_empty_directories(top):
    for path, _subdirectories, _files in sorted(os.walk(top), reverse=True):
        os.rmdir(path)  # only empty directories: never through a mount


def _mount_idmapped(m, target, mapping):
    """Mount `m` (its options without uidmap=/gidmap=) with ids shifted by
    `mapping`, as containerd's mount package does: a bind is itself an
    idmapped bind; an overlay gets each lowerdir idmap-bound at
    <tmp>/snaplab-idmap-*/<the lowerdir's own path> and is mounted over
    those (the upper is not idmapped: its owner is the mapped root
    already). The temporary binds are detached and their directories
    removed once the overlay holds its layers (overlayfs keeps its own
    reference to each); mounted_at knows such a lowerdir by its suffix."""
    flags, data = parse_options(m.options)
    with idmap.user_namespace(mapping) as userns_fd:
        if m.type == "bind" or flags & MS_BIND:
            idmap.idmapped_bind(m.source, target, userns_fd, recursive=bool(flags & MS_REC),
                                read_only=bool(flags & MS_RDONLY))
            return
        lower_index = next((i for i, o in enumerate(data) if o.startswith("lowerdir=")), None)
        if m.type != "overlay" or lower_index is None:
            raise errors.InvalidArgument("uidmap=/gidmap= work on a bind or an overlay with "
                                         "lowerdirs, not a %s mount" % m.type)
        sweep_idmap_leftovers()
        private = tempfile.mkdtemp(prefix="%s%d-" % (IDMAP_LOWERS_PREFIX, os.getpid()))
        bound = []
        try:
            for lower in data[lower_index][len("lowerdir="):].split(":"):
                where = private + os.path.abspath(lower)
                os.makedirs(where, mode=0o700)
                idmap.idmapped_bind(lower, where, userns_fd)
                bound.append(where)
            data[lower_index] = "lowerdir=" + ":".join(bound)
            mount(Mount(m.type, m.source, options=data), target)
        finally:
            for where in bound:
                unmount(where, MNT_DETACH)
            _remove_empty_directories(private)


def _check_length(joined):
    if len(joined) >= os.sysconf("SC_PAGE_SIZE"):
        raise errors.InvalidArgument("mount options are too long (%d bytes)" % len(joined))


def mount_all(mounts, target):
    """Mount the list in order at `target`; on failure undo what was done."""
    done = []
    try:
        for m in mounts:
            where = m.point_under(target)
            mount(m, where)
            done.append(where)
    except BaseException:
        for where in reversed(done):
            unmount_all(where)
        raise


MNT_DETACH = 2  # umount2(2): detach now, free when no longer busy


def unmount(target, flags=0):
    """One umount2(2); MountError if it fails."""
    _check(_libc.umount2(_fs(target), flags), "umount %s" % target)


def unmount_all(target, flags=0):
    """Unmount everything stacked on `target` (not below it), until nothing is.

    A path that is not a mount point, or does not exist, is fine.
    """
    while True:
        result = _libc.umount2(_fs(target), flags)
        if result == 0:
            continue
        err = ctypes.get_errno()
        if err in (errno.EINVAL, errno.ENOENT):
            return
        raise MountError(err, "umount %s: %s" % (target, os.strerror(err)))


# The temporary directory temporary_mount makes when given no path.
TEMPORARY_MOUNT_PREFIX = "snaplab-mount-"


@contextlib.contextmanager
def temporary_mount(mounts, path=None, prefix=TEMPORARY_MOUNT_PREFIX, parent=None):
    """Mount `mounts` on a new directory for a block and yield its path;
    afterwards (also on error) unmount them and remove the directory.

    The directory is `path` (made with its missing parents; it must not
    exist yet), or else a fresh `prefix`* directory under `parent` (the
    system's temporary directory by default). Both are mode 0700.
    """
    if path is None:
        path = tempfile.mkdtemp(prefix=prefix, dir=parent)
    else:
        os.makedirs(path, mode=0o700)
    done = False
    try:
        mount_all(mounts, path)
        try:
            yield path
        finally:
            unmount_all(path)
        done = True
    finally:
        # Only rmdir, never a recursive delete: if the unmount failed, that
        # would go through the mount into the snapshot's data. After an
        # error, that error is the one to report.
        try:
            os.rmdir(path)
        except OSError:
            if done:
                raise


# -- the mount table -------------------------------------------------------

_OCTAL_ESCAPE = re.compile(r"\\([0-7]{3})")


class MountInfo:
    """One line of /proc/self/mountinfo."""

    __slots__ = ("mount_id", "parent_id", "device", "root", "mountpoint", "options",
                 "fstype", "source", "super_options")

    def __init__(self, line):
        def unescape(text):  # mountinfo escapes space, tab, newline, backslash in octal
            return _OCTAL_ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), text)
        left, right = line.rstrip("\n").split(" - ", 1)
        fields = left.split(" ")
        self.mount_id = int(fields[0])
        self.parent_id = int(fields[1])
        self.device = fields[2]
        self.root = unescape(fields[3])
        self.mountpoint = unescape(fields[4])
        self.options = fields[5].split(",")
        fstype, source, super_options = (right.split(" ") + ["", ""])[:3]
        self.fstype = fstype
        self.source = unescape(source)
        self.super_options = super_options.split(",")

    def __repr__(self):
        return "MountInfo(%s on %s type %s)" % (self.source, self.mountpoint, self.fstype)


def _mountinfo_text():
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as table:
        return table.read()


def mount_table(text=None):
    """[MountInfo] of the mount table (`text`: /proc/self/mountinfo, read already)."""
    # split("\n"), not splitlines(): a path may hold \x1c or \u2028, which
    # mountinfo leaves unescaped.
    return [MountInfo(line) for line in (text or _mountinfo_text()).split("\n") if line]


def _escaped(path):
    """`path` as mountinfo writes it (octal escapes; the backslash first)."""
    for char in "\\ \t\n":
        path = path.replace(char, "\\%03o" % ord(char))
    return path


def _is_under(path, directory):
    return path == directory or path.startswith(directory.rstrip("/") + "/")


def lookup(path):
    """The mount that holds `path`: the longest mount point above it."""
    path = os.path.realpath(path)
    best = None
    for entry in mount_table():
        if _is_under(path, entry.mountpoint):
            if best is None or len(entry.mountpoint) >= len(best.mountpoint):
                best = entry  # later entries stack on earlier ones
    if best is None:
        raise errors.NotFound("no mount holds %s" % path)
    return best


def mounts_under(directory):
    """Mount points at or below `directory`, latest first (the order to unmount)."""
    directory = os.path.realpath(directory)
    text = _mountinfo_text()
    # Every deletion asks (remove_tree), and nearly always nothing is there:
    # a mount point at or below `directory` has it in its line, so when the
    # text does not, the table needs no parsing.
    if _escaped(directory) not in text:
        return []
    return [e.mountpoint for e in reversed(mount_table(text))
            if _is_under(e.mountpoint, directory)]


def mount_on_top(path, table=None):
    """The mount visible at mount point `path` (the last one stacked there),
    or None when `path` is no mount point. `table`: a mount_table() already read."""
    path = os.path.realpath(path)
    on_top = None
    for entry in mount_table() if table is None else table:
        if entry.mountpoint == path:
            on_top = entry
    return on_top


def is_mountpoint(path):
    return mount_on_top(path) is not None


def _options(words):
    return dict(word.partition("=")[::2] for word in words)


def _same_lowers(wanted, shown, idmapped=False):
    # A deep chain is mounted with lowerdirs relative to their common
    # directory, and the kernel then shows them relative. An idmapped
    # lowerdir is shown as the temporary bind's path: it ends with the
    # lowerdir's own path (_mount_idmapped).
    def same(w, s):
        if idmapped and IDMAP_LOWERS_PREFIX in s:
            return s.endswith(w)
        return w == s or w.endswith("/" + s)
    return len(wanted) == len(shown) and all(same(w, s) for w, s in zip(wanted, shown))


def is_mount_of(m, entry):
    """Whether mount table entry `entry` (a MountInfo) is what mounting Mount `m` made."""
    if m.type == "bind" or "bind" in m.options or "rbind" in m.options:
        # A bind mount shows the very directory it binds: same device and inode.
        try:
            source, there = os.stat(m.source), os.stat(entry.mountpoint)
        except OSError:
            return False
        same_directory = (source.st_dev, source.st_ino) == (there.st_dev, there.st_ino)
        return same_directory and ("ro" in entry.options) == m.read_only
    if m.type == "overlay":
        if entry.fstype != "overlay":
            return False
        wanted, shown = _options(m.options), _options(entry.super_options)
        return (wanted.get("upperdir") == shown.get("upperdir")
                and wanted.get("workdir") == shown.get("workdir")
                and _same_lowers(wanted.get("lowerdir", "").split(":"),
                                 shown.get("lowerdir", "").split(":"),
                                 idmapped=idmap.UIDMAP_OPTION[:-1] in wanted))
    if "loop" in m.options:
        # The table shows the loop device; the Mount names its file.
        backing = loop.backing_file(entry.source)
        return (entry.fstype == m.type and backing is not None
                and os.path.realpath(backing) == os.path.realpath(m.source)
                and ("ro" in entry.options) == m.read_only)
    return entry.fstype == m.type and entry.source == m.source


def mounted_at(target, mounts, table=None):
    """Whether a snapshot's `mounts` are what is mounted at `target`: each
    one is the mount on top at its point_under(target). False when nothing is
    mounted at `target`. `table`: a mount_table() already read."""
    target = os.path.realpath(target)
    table = mount_table() if table is None else table
    if mount_on_top(target, table) is None:
        return False
    for m in mounts:
        entry = mount_on_top(m.point_under(target), table)
        if entry is None or not is_mount_of(m, entry):
            return False
    return True


__all__ = ["Mount", "MountError", "MNT_DETACH", "mount", "mount_all",
           "sweep_idmap_leftovers",
           "temporary_mount", "unmount", "unmount_all", "lookup", "mounts_under", "mount_table",
           "mount_on_top", "is_mountpoint", "is_mount_of", "mounted_at", "parse_options"]
