"""Filesystem appliers and directory comparison, after continuity's fs/fstest.

An *applier* is a callable taking a root directory and changing something
under it: ``create_file("/etc/hosts", b"...", 0o644)(root)``. Names are
relative to the root even when written with a leading "/", as in the Go
suite. ``apply(*appliers)`` composes several into one, so a snapshot layer is
described once and applied both to a mounted snapshot and to a flat reference
directory.

``check_directory_equal(expected, actual)`` compares two trees the way
continuity's manifests do: every entry below the root (the root itself is
skipped), sorted by path, compared by path, mode (type bits included), uid,
gid and, by type, regular file size + sha256 + hard-link paths, symlink
target, device major/minor. Times and xattrs are deliberately not compared:
snapshotters need not preserve them bit for bit and the Go suite does not ask.

Standard library only, Python >= 3.9: the suite runs on lab VMs as they come.
"""

import dataclasses
import hashlib
import os
import random
import shutil
import socket
import stat
import tempfile


class Applier:
    """A named change to a directory tree; call it with the root to apply.

    The description only serves error messages and test reports.
    """

    def __init__(self, description, fn):
        self.description = description
        self._fn = fn

    def __call__(self, root):
        self._fn(root)

    def __repr__(self):
        return "<applier %s>" % self.description


def _path(root, name):
    """`name` below `root`; a leading "/" is relative to root, like Go's Join."""
    full = os.path.normpath(os.path.join(root, name.lstrip("/")))
    root = os.path.normpath(root)
    if full != root and not full.startswith(root.rstrip("/") + "/"):
        # A test typo must never write outside the tree it is building.
        raise ValueError("%r escapes the root %r" % (name, root))
    return full


def create_file(name, data, perm):
    """Create or truncate `name`, write `data`, fsync, then chmod `perm`.

    The chmod makes the mode independent of the umask, as continuity does.
    """
    if isinstance(data, str):
        data = data.encode()

    def fn(root):
        path = _path(root, name)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, perm)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.chmod(path, perm)

    return Applier("create_file(%s, %d bytes, %o)" % (name, len(data), perm), fn)


def create_random_file(name, seed, size, perm):
    """A file of `size` pseudo-random bytes; the same seed gives the same bytes."""
    applier = create_file(name, random.Random(seed).randbytes(size), perm)
    applier.description = "create_random_file(%s, seed=%d, %d bytes, %o)" % (name, seed, size, perm)
    return applier


def create_dir(name, perm):
    """makedirs `name` (parents too), then chmod `perm` on the last one."""

    def fn(root):
        path = _path(root, name)
        os.makedirs(path, perm, exist_ok=True)
        os.chmod(path, perm)

    return Applier("create_dir(%s, %o)" % (name, perm), fn)


def remove(name):
    """Remove one file or one empty directory (Go's os.Remove)."""

    def fn(root):
        path = _path(root, name)
        try:
            os.unlink(path)
        except IsADirectoryError:
            os.rmdir(path)

    return Applier("remove(%s)" % name, fn)


def remove_all(name):
    """Remove `name` and everything below it; a missing name is fine (os.RemoveAll)."""

    def fn(root):
        path = _path(root, name)
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(st.st_mode):
            shutil.rmtree(path)  # does not follow symlinks inside the tree
        else:
            os.unlink(path)  # a symlink to a directory is removed, not followed

    return Applier("remove_all(%s)" % name, fn)


def rename(old, new):
    """rename(2) `old` to `new`, replacing `new` if it exists."""

    def fn(root):
        os.rename(_path(root, old), _path(root, new))

    return Applier("rename(%s, %s)" % (old, new), fn)


def chown(name, uid, gid):
    """lchown `name` (a symlink itself, never its target)."""

    def fn(root):
        os.lchown(_path(root, name), uid, gid)

    return Applier("chown(%s, %d, %d)" % (name, uid, gid), fn)


def chmod(name, perm):
    """chmod `name` (follows symlinks, like Go's os.Chmod)."""

    def fn(root):
        os.chmod(_path(root, name), perm)

    return Applier("chmod(%s, %o)" % (name, perm), fn)


def symlink(old, new):
    """Create symlink `new` pointing at `old`, which is stored verbatim."""

    def fn(root):
        os.symlink(old, _path(root, new))

    return Applier("symlink(%s, %s)" % (old, new), fn)


def link(old, new):
    """Create hard link `new` to `old` (a symlink is linked, not followed)."""

    def fn(root):
        os.link(_path(root, old), _path(root, new), follow_symlinks=False)

    return Applier("link(%s, %s)" % (old, new), fn)


def chtimes(name, atime, mtime):
    """Set access and modification times (seconds since the epoch, floats allowed)."""

    def fn(root):
        os.utime(_path(root, name), (atime, mtime))

    return Applier("chtimes(%s, %s, %s)" % (name, atime, mtime), fn)


def set_xattr(name, key, value):
    """Set extended attribute `key` on `name` itself (not a symlink's target)."""
    if isinstance(value, str):
        value = value.encode()

    def fn(root):
        os.setxattr(_path(root, name), key, value, follow_symlinks=False)

    return Applier("set_xattr(%s, %s)" % (name, key), fn)


def create_device_file(name, mode, major, minor):
    """mknod `name`; `mode` carries the type (stat.S_IFCHR, S_IFBLK, S_IFIFO) and permissions.

    The permission bits are chmod'ed afterwards so the umask does not matter.
    """

    def fn(root):
        path = _path(root, name)
        os.mknod(path, mode, os.makedev(major, minor))
        os.chmod(path, stat.S_IMODE(mode))

    return Applier("create_device_file(%s, %o, %d:%d)" % (name, mode, major, minor), fn)


def create_socket(name, perm):
    """Bind a unix socket at `name`, close it (the inode stays), chmod `perm`."""

    def fn(root):
        path = _path(root, name)
        # sun_path holds only 108 bytes; binding through /proc/self/fd/<dir fd>
        # keeps the address short however deep the test directory is.
        dirfd = os.open(os.path.dirname(path), os.O_RDONLY | os.O_DIRECTORY)
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.bind("/proc/self/fd/%d/%s" % (dirfd, os.path.basename(path)))
        finally:
            os.close(dirfd)
        os.chmod(path, perm)

    return Applier("create_socket(%s, %o)" % (name, perm), fn)


def apply(*appliers):
    """One applier running `appliers` in order; the first failure stops it."""

    def fn(root):
        for applier in appliers:
            applier(root)

    return Applier("apply(%s)" % ", ".join(a.description if isinstance(a, Applier) else repr(a)
                                           for a in appliers), fn)


# --- manifests and comparison ------------------------------------------------


@dataclasses.dataclass
class Entry:
    """One manifest entry: what continuity records about a filesystem object.

    `paths` lists every hard link of a regular file or fifo (sorted), and
    `path` is the first of them; other objects have just their own path.
    """

    path: str
    mode: int
    uid: int
    gid: int
    paths: tuple = ()
    size: int = 0
    sha256: str = ""
    target: str = ""
    major: int = 0
    minor: int = 0

    def kind(self):
        """Short type name for diff listings."""
        fmt = stat.S_IFMT(self.mode)
        names = {stat.S_IFREG: "file", stat.S_IFDIR: "dir", stat.S_IFLNK: "symlink",
                 stat.S_IFCHR: "char device", stat.S_IFBLK: "block device",
                 stat.S_IFIFO: "fifo", stat.S_IFSOCK: "socket"}
        return names.get(fmt, "type %o" % fmt)

    def summary(self):
        """One-line description used for added/deleted entries."""
        text = "%s %s uid=%d gid=%d" % (self.kind(), _mode(self.mode), self.uid, self.gid)
        if stat.S_ISREG(self.mode):
            text += " size=%d sha256=%s" % (self.size, self.sha256[:12])
        elif stat.S_ISLNK(self.mode):
            text += " -> %s" % self.target
        elif stat.S_ISCHR(self.mode) or stat.S_ISBLK(self.mode):
            text += " %d:%d" % (self.major, self.minor)
        if len(self.paths) > 1:
            text += " links=%s" % ",".join(self.paths)
        return text

    def differences(self, other):
        """What differs from `other` (same path), as readable strings; [] if equal.

        Like continuity, the type-specific fields are compared only once the
        common ones (mode with type bits, uid, gid) match.
        """
        diffs = []
        if self.mode != other.mode:
            diffs.append("mode %s != %s" % (_mode(self.mode), _mode(other.mode)))
        if self.uid != other.uid:
            diffs.append("uid %d != %d" % (self.uid, other.uid))
        if self.gid != other.gid:
            diffs.append("gid %d != %d" % (self.gid, other.gid))
        if diffs:
            return diffs
        if stat.S_ISREG(self.mode):
            if self.size != other.size:
                diffs.append("size %d != %d" % (self.size, other.size))
            if self.sha256 != other.sha256:
                diffs.append("sha256 %s != %s" % (self.sha256[:12], other.sha256[:12]))
        if stat.S_ISREG(self.mode) or stat.S_ISFIFO(self.mode):
            if self.paths != other.paths:
                diffs.append("hard links %s != %s" % (list(self.paths), list(other.paths)))
        elif stat.S_ISLNK(self.mode):
            if self.target != other.target:
                diffs.append("symlink target %r != %r" % (self.target, other.target))
        elif stat.S_ISCHR(self.mode) or stat.S_ISBLK(self.mode):
            if (self.major, self.minor) != (other.major, other.minor):
                diffs.append("device %d:%d != %d:%d" % (self.major, self.minor,
                                                        other.major, other.minor))
        return diffs


def _mode(mode):
    return "%s (0%o)" % (stat.filemode(mode), mode)


def _sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def build_manifest(root):
    """Every object below `root` as Entry records sorted by path ("/a/b" form).

    Hard links (regular files and fifos with more than one link, by device
    and inode) become one entry listing all their paths. Symlinks are never
    followed. Errors reading the tree propagate.
    """
    entries = []
    by_inode = {}  # (st_dev, st_ino) -> Entry of the first link seen

    def walk(directory, prefix):
        with os.scandir(directory) as it:
            names = sorted(e.name for e in it)
        for name in names:
            full = os.path.join(directory, name)
            rel = prefix + "/" + name
            st = os.lstat(full)
            entry = Entry(path=rel, mode=st.st_mode, uid=st.st_uid, gid=st.st_gid, paths=(rel,))
            if stat.S_ISREG(st.st_mode):
                entry.size = st.st_size
                entry.sha256 = _sha256(full)
            elif stat.S_ISLNK(st.st_mode):
                entry.target = os.readlink(full)
            elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                entry.major, entry.minor = os.major(st.st_rdev), os.minor(st.st_rdev)
            if (stat.S_ISREG(st.st_mode) or stat.S_ISFIFO(st.st_mode)) and st.st_nlink > 1:
                first = by_inode.get((st.st_dev, st.st_ino))
                if first is not None:
                    first.paths += (rel,)
                    continue
                by_inode[(st.st_dev, st.st_ino)] = entry
            entries.append(entry)
            if stat.S_ISDIR(st.st_mode):
                walk(full, rel)

    walk(root, "")
    for entry in entries:
        entry.paths = tuple(sorted(entry.paths))
        entry.path = entry.paths[0]
    entries.sort(key=lambda e: e.path)
    return entries


def diff_manifests(expected, actual):
    """Lines "+ path: ..." (only in actual), "- path: ..." (only in expected)
    and "~ path: ..." (changed), in path order; [] when the manifests match.
    """
    want = {e.path: e for e in expected}
    have = {e.path: e for e in actual}
    lines = []
    for path in sorted(set(want) | set(have)):
        if path not in have:
            lines.append("- %s: missing, expected %s" % (path, want[path].summary()))
        elif path not in want:
            lines.append("+ %s: unexpected %s" % (path, have[path].summary()))
        else:
            diffs = want[path].differences(have[path])
            if diffs:
                lines.append("~ %s: %s (expected != actual)" % (path, "; ".join(diffs)))
    return lines


def check_directory_equal(expected, actual):
    """Raise AssertionError listing every difference between two trees."""
    lines = diff_manifests(build_manifest(expected), build_manifest(actual))
    if lines:
        raise AssertionError("directory %s differs from expected %s:\n  %s"
                             % (actual, expected, "\n  ".join(lines)))


def check_directory_equal_with_applier(actual, applier, tmpdir=None):
    """Apply `applier` to a fresh temporary directory and compare `actual` to it."""
    expected = tempfile.mkdtemp(prefix="fstest-", dir=tmpdir)
    try:
        applier(expected)
        check_directory_equal(expected, actual)
    finally:
        shutil.rmtree(expected)
