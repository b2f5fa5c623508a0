"""Writing one scanned layer into a directory (containerd's pkg/archive
applier with its whiteout converters, and core/diff/apply).

The directory is a Tree (tree.py): a plain directory (a mounted snapshot
or a bind source), or an overlay upper directory over its lowers.

- Written straight into an overlay upper directory, whiteouts become what
  overlayfs understands: a 0/0 character device for a deleted name, the
  xattr trusted.overlay.opaque=y for an opaque directory, and a directory
  made in the upper for one of a lower takes that directory's owner, mode,
  xattrs and times (containerd's mkparent).
- Anywhere else whiteouts are applied by deleting ("naive"): `.wh.NAME`
  removes NAME; an opaque marker removes every entry of its directory that
  this same layer did not write before it.
- A hardlink links to the entry inside the snapshot, never following a
  symlink at the target; its target must exist there (earlier in the
  layer, or in the snapshot below).
- overlayfs' own xattrs (trusted.overlay.*, user.overlay.*) in a layer's
  PAX records are never set: on an upper directory they would forge
  whiteouts, opaque directories or redirects.
- Before the first write: a layer whose regular files add up to more than
  the free space of the receiving filesystem, or whose entries outnumber
  its free inodes, is FailedPrecondition; then the dry run (tree.dry_run)
  refuses what the snapshot below makes impossible. A refused layer leaves
  the directory as it was. A staged directory (a snapshot made for this
  layer alone, removed by the caller at a failure: apply_layers) has no dry
  run: the write refuses the same entries with the same errors, half-way.
- The layer is read once while written: decompressed and hashed on a
  thread (stream.ThreadedReader), the DiffID the scanned one at the end;
  or, uncompressed, its data copied in the kernel (stream.copy_data) from
  the file the scan parsed (and hashed, if it did), which must be the
  same file, unchanged, from the write's start to its end.
"""

import contextlib
import errno
import os
import posixpath
import stat

from .. import errors
from .. import faults
from .. import fsutil
from .archive import (EntryChecks, check_length, checked_entry, clean_name, inspect_layer,
                      layer_entries, read_through, reread_entries)
from .stream import copy_data
from .tree import OVERLAY_OPAQUE_XATTR, Tree, dry_run, is_overlay_whiteout


def _check_free_space(tree, path, files_size, entries, fs=None):
    """FailedPrecondition if the files (`files_size` bytes) and `entries`
    entries of the layer at `path` cannot fit in what is free where they
    are written (`fs`: statvfs of it, taken now if None; sparse files are
    counted at their full size; free is f_bavail, without the blocks a
    filesystem keeps for root)."""
    fs = fs or os.statvfs(tree.root)
    free = fs.f_bavail * fs.f_frsize
    if files_size > free:
        raise errors.FailedPrecondition(
            "layer %s holds %d bytes of files, more than the %d bytes free on the filesystem "
            "of %s" % (path, files_size, free, tree.root))
    # Each entry takes an inode at most (hardlinks and naive whiteouts none):
    # a layer of many empty files would otherwise stop half-way at ENOSPC.
    # f_files is 0 where inodes are not counted (btrfs).
    if fs.f_files and entries > fs.f_favail:
        raise errors.FailedPrecondition(
            "layer %s has %d entries, more than the %d inodes free on the filesystem of %s"
            % (path, entries, fs.f_favail, tree.root))


def _time_ns(member, field):
    """A header time in nanoseconds; PAX records keep the fraction."""
    text = member.pax_headers.get(field)
    if text is not None:
        negative = text.startswith("-")
        seconds, _dot, fraction = text.lstrip("-").partition(".")
        value = int(seconds or 0) * 10**9 + int((fraction + "000000000")[:9])
        return -value if negative else value
    if field == "mtime":
        return int(member.mtime) * 10**9
    return None


# overlayfs' own xattrs: trusted.overlay.* and, on a userxattr mount, user.overlay.*
OVERLAY_XATTR_PREFIXES = ("trusted.overlay.", "user.overlay.")


def _xattrs(member):
    """The SCHILY.xattr.* records of an entry, as (name, bytes). overlayfs'
    own xattrs are left out: on an upper directory they would forge
    whiteouts and opaque directories or steer the kernel's lookups
    (redirects, metacopy), which is not a layer's business."""
    prefix = "SCHILY.xattr."
    return [(key[len(prefix):], value.encode("utf-8", "surrogateescape"))
            for key, value in member.pax_headers.items()
            if key.startswith(prefix)
            and not key[len(prefix):].startswith(OVERLAY_XATTR_PREFIXES)]


def _copy_up_directory(lower, upper):
    """Owner, mode, xattrs (not overlay's own) and times of a lower directory
    onto the upper directory made for it (containerd's mkparent WithParents),
    so the merged directory looks as it did."""
    st = os.lstat(lower)
    os.chown(upper, st.st_uid, st.st_gid, follow_symlinks=False)
    os.chmod(upper, stat.S_IMODE(st.st_mode))
    try:
        names = os.listxattr(lower, follow_symlinks=False)
    except OSError:
        names = []
    for name in names:
        if name.startswith(OVERLAY_XATTR_PREFIXES):
            continue
        try:
            os.setxattr(upper, name, os.getxattr(lower, name, follow_symlinks=False),
                        follow_symlinks=False)
        except OSError as err:
            if err.errno not in (errno.EOPNOTSUPP, errno.EPERM):
                raise
    os.utime(upper, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)


# Descriptors of checked directories kept open at most (a layer may hold
# many thousands of directories; the process's descriptors are fewer).
_MAX_DIRECTORY_FDS = 256
_NEW_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


class _LayerWriter:
    """Writes the entries of one layer into a Tree.

    The common entry, a file new in a directory already there, is written
    through a descriptor of its directory (checked once to be the real
    directory of that name in the root, as Tree.plain_directory does) and
    its own descriptor: create, data, owner, xattrs, mode and times
    without a path lookup each (tar's way). Anything that removes from the
    tree forgets the directory descriptors, since a directory of the layer
    may then be replaced by a symlink; everything else takes the path road.
    """

    def __init__(self, tree, staged=False):
        self.tree = tree
        self.staged = staged     # a snapshot of our own, removed if the layer fails
        self.written = set()     # absolute paths this layer wrote (an opaque keeps them)
        self.directories = {}    # path -> (atime_ns, mtime_ns), set at the very end
        self.directory_fds = {}  # cleaned relative directory -> O_PATH descriptor
        self.same_owner = os.geteuid() == 0  # as tar: only root can give files away

    def write(self, scan):
        """Write every entry of the scanned layer; return the DiffID. First,
        with nothing written yet: FailedPrecondition if its files do not fit,
        InvalidArgument if the dry run against the tree refuses it.
        InvalidArgument too if the file changed since it was scanned.

        A staged tree (a snapshot made for this layer alone, removed by the
        caller if this fails) has no dry run: the write itself refuses what
        the dry run would have, with the same error class, half-way."""
        _check_free_space(self.tree, scan.path, scan.files_size, scan.entries)
        if not self.staged:
            dry_run(self.tree, scan)
        with self.refusing(scan.path):
            with reread_entries(scan) as (members, tar, reader, _compression):
                for member in members:
                    faults.point("apply.entry")
                    self.entry(tar, member)
                reader.drain()
                # No digest: an uncompressed layer the scan hashed, the same file
                # (reread_entries); the kernel copied the bytes the scan hashed.
                diff_id = reader.digest or scan.diff_id
        return self.finish(scan.path, diff_id, scan.diff_id)

    def write_in_one_pass(self, path, expected_diff_id, max_expanded_size=None):
        """Write the layer at `path`, never scanned, into a staged tree: each
        entry checked as inspect_layer checks it just before it is written,
        the DiffID hashed on the way and compared with `expected_diff_id` at
        the end (InvalidArgument if it differs: the caller removes the
        staged snapshot, nothing is committed). FailedPrecondition before
        the file that would take the layer's files or entries past what was
        free at the start (the scan's check, counted as the layer goes: the
        filesystem is never filled); NeedsMount (nothing to keep) where a
        hardlink names a file of a lower layer of an overlay."""
        checks = EntryChecks()
        free = os.statvfs(self.tree.root)
        with self.refusing(path):
            with layer_entries(path, max_expanded_size) as (members, tar, reader, _compression):
                for member in members:
                    faults.point("apply.entry")
                    kind = checks.check(member)[0]
                    try:
                        _check_free_space(self.tree, path, checks.files_size, checks.count,
                                          free)
                    except errors.FailedPrecondition:
                        if kind == "file":  # as in the scan: a size the archive lacks first
                            read_through(tar, member, path)
                        raise
                    if kind == "hardlink" and self.tree.overlay and checks.links_outside:
                        raise NeedsMount("hardlink %r names a file below the layer"
                                         % member.name)
                    self.entry(tar, member)
                reader.drain()
                diff_id = reader.digest
        return self.finish(path, diff_id, expected_diff_id)

    @contextlib.contextmanager
    def refusing(self, path):
        """What a staged write meets half-way, as the checks before a write
        refuse it: a path the dry run would refuse (InvalidArgument), a full
        filesystem (FailedPrecondition); the directory descriptors closed."""
        try:
            yield
        except OSError as err:
            if not self.staged:
                raise
            if err.errno in (errno.ENAMETOOLONG, errno.ELOOP):
                raise errors.InvalidArgument("layer %s: a path under %s cannot be written (%s)"
                                             % (path, self.tree.root, err)) from None
            if err.errno in (errno.ENOSPC, errno.EDQUOT):
                raise errors.FailedPrecondition("layer %s does not fit in %s (%s)"
                                                % (path, self.tree.root, err)) from None
            raise
        finally:
            self.forget_directories()

    def finish(self, path, diff_id, expected_diff_id):
        """InvalidArgument unless the DiffID read is the one expected (None:
        any); then the directory times, last: writing into a directory
        changes its mtime. Returns the DiffID."""
        if expected_diff_id is not None and diff_id != expected_diff_id:
            raise errors.InvalidArgument("layer %s changed while it was applied: DiffID %s, "
                                         "expected %s" % (path, diff_id, expected_diff_id))
        for directory, times in self.directories.items():
            try:
                if stat.S_ISDIR(os.lstat(directory).st_mode):
                    os.utime(directory, ns=times, follow_symlinks=False)
            except FileNotFoundError:
                pass  # removed by a later entry of the layer
        return diff_id

    # -- directory descriptors

    def directory_fd(self, directory):
        """An O_PATH descriptor of the directory `directory` (cleaned,
        relative) of the root if it is reached through real directories
        only (Tree.plain_directory's test), else None."""
        fd = self.directory_fds.get(directory)
        if fd is not None:
            return fd
        path = os.path.join(self.tree.root, directory) if directory else self.tree.root
        try:
            fd = os.open(path, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            return None  # missing or not a directory: the path road says more
        try:
            plain = os.readlink("/proc/self/fd/%d" % fd) == path
        except OSError:
            plain = False  # no /proc: the path road
        if not plain:
            os.close(fd)
            return None
        if len(self.directory_fds) >= _MAX_DIRECTORY_FDS:
            self.forget_directories()
        self.directory_fds[directory] = fd
        return fd

    def forget_directories(self):
        """Close the directory descriptors: something was removed, so a
        directory they name may since have been replaced."""
        fds, self.directory_fds = self.directory_fds, {}
        for fd in fds.values():
            os.close(fd)

    def entry(self, tar, member):
        kind, relative, whiteout = checked_entry(member)
        if whiteout is not None:
            if whiteout[0] == "opaque":
                self.opaque(whiteout[1])
            elif whiteout[0] == "whiteout":
                self.whiteout(whiteout[1], whiteout[2], member)
            return
        directory, base = posixpath.split(relative)
        if not base:
            return  # the root itself: containerd leaves it alone
        if kind == "file" and self.new_file(directory, relative, tar, member):
            return
        if self.tree.plain_directory(directory):
            # Nothing to resolve or make, and its real path is itself, as
            # tree.path() would check: one question to the kernel, not a
            # lookup per path component (most entries of a layer).
            path = os.path.join(self.tree.root, relative)
        else:
            parent = self.tree.resolve(directory)
            self.make_parents(parent)
            path = self.tree.path(posixpath.join(parent, base))
        self.replace(path, kind, tar, member)

    def new_file(self, directory, relative, tar, member):
        """Write a regular file that is new in a plain directory through
        descriptors; False (nothing done) if it is not that case."""
        dir_fd = self.directory_fd(directory)
        if dir_fd is None:
            return False
        path = os.path.join(self.tree.root, relative)
        check_length(path, "entry %r written at" % member.name)  # as the dry run
        try:
            fd = os.open(posixpath.basename(relative), _NEW_FILE_FLAGS, 0o600, dir_fd=dir_fd)
        except FileExistsError:
            return False  # replace() removes what is there first
        try:
            copy_data(tar, member, fd)
            self.set_metadata(fd, "file", member)
        finally:
            os.close(fd)
        self.written.add(path)
        return True

    # -- whiteouts

    def whiteout(self, directory, hidden, member):
        resolved = self.tree.existing_directory(directory)
        if resolved is None:
            return  # no such directory: nothing to hide
        if self.tree.overlay:
            self.make_parents(resolved)  # the directory may so far be in a lower only
        path = self.tree.path(posixpath.join(resolved, hidden))
        self.forget_directories()
        fsutil.remove_tree(path)
        self.written.discard(path)
        if self.tree.overlay:  # overlayfs' whiteout: a 0/0 character device
            os.mknod(path, stat.S_IFCHR, 0)  # mode 0, as containerd and the kernel
            if self.same_owner:
                os.chown(path, member.uid, member.gid, follow_symlinks=False)

    def opaque(self, directory):
        resolved = self.tree.existing_directory(directory)
        if resolved is None:
            return
        if self.tree.overlay:
            self.make_parents(resolved)
        path = self.tree.path(resolved)
        self.forget_directories()
        self.remove_unwritten(path)
        if self.tree.overlay:  # the lower directories' entries are hidden by the kernel
            os.setxattr(path, OVERLAY_OPAQUE_XATTR, b"y", follow_symlinks=False)

    def remove_unwritten(self, directory):
        """Remove every entry under `directory` this layer did not write."""
        with os.scandir(directory) as entries:
            children = list(entries)
        for child in children:
            if child.path not in self.written:
                fsutil.remove_tree(child.path)
            elif child.is_dir(follow_symlinks=False):
                self.remove_unwritten(child.path)

    # -- entries

    def make_parents(self, resolved):
        """Make the resolved (symlink-free) directory path exist: missing
        directories are made 0755 or, over an overlay, with the attributes of
        the lower directory they continue (containerd's mkparent)."""
        if not resolved:
            return
        parts = resolved.split("/")
        path = self.tree.root
        for depth in range(len(parts)):
            relative = "/".join(parts[:depth + 1])
            # Each step is checked to be a real directory (lstat, not stat)
            # or made here, so the whole chain stays inside the root.
            path = os.path.join(path, parts[depth])
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                st = None
            if st is not None and stat.S_ISDIR(st.st_mode):
                continue
            # Over an overlay the upper dir may hold a whiteout here (this
            # layer deleted the directory); a new directory replaces it.
            upper_whiteout = self.tree.overlay and st is not None and is_overlay_whiteout(st)
            shown = self.tree.lookup(relative) if self.tree.overlay else None
            if (st is not None and not upper_whiteout) or (
                    shown is not None and not stat.S_ISDIR(shown[1].st_mode)):
                raise errors.InvalidArgument("cannot write under %s: it is not a directory"
                                             % relative)
            if upper_whiteout:
                os.unlink(path)
            os.mkdir(path, 0o755)
            os.chmod(path, 0o755)
            if upper_whiteout:  # what the deleted directory held stays deleted
                os.setxattr(path, OVERLAY_OPAQUE_XATTR, b"y", follow_symlinks=False)
            elif shown is not None:
                _copy_up_directory(os.path.join(shown[0], relative), path)

    def replace(self, path, kind, tar, member):
        """Write the entry at `path`: what is there is removed first, except
        a directory where the entry is a directory (they merge)."""
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            st = None
        merge = st is not None and kind == "directory" and stat.S_ISDIR(st.st_mode)
        if st is not None and not merge:
            if stat.S_ISDIR(st.st_mode):
                self.forget_directories()
            fsutil.remove_tree(path)
        self.create(path, kind, tar, member, merge)
        if st is not None and not merge and self.tree.overlay and kind == "directory":
            # A directory replacing something in the upper dir must not let
            # a lower directory at the same path show through.
            os.setxattr(path, OVERLAY_OPAQUE_XATTR, b"y", follow_symlinks=False)
        if kind != "hardlink":  # a hardlink shares the inode its target's entry set up
            self.set_metadata(path, kind, member)
        self.written.add(path)

    def create(self, path, kind, tar, member, merge):
        if kind == "directory":
            if not merge:
                os.mkdir(path, 0o700)
        elif kind == "file":
            fd = os.open(path, _NEW_FILE_FLAGS, 0o600)
            try:
                copy_data(tar, member, fd)
            finally:
                os.close(fd)
        elif kind == "symlink":
            os.symlink(member.linkname, path)
        elif kind == "hardlink":
            # follow_symlinks=False: a link to a symlink links the symlink
            # itself, never what it points to.
            os.link(self.hardlink_target(member), path, follow_symlinks=False)
        elif kind in ("char device", "block device"):
            kind_bits = stat.S_IFCHR if kind == "char device" else stat.S_IFBLK
            os.mknod(path, kind_bits | 0o600, os.makedev(member.devmajor, member.devminor))
        elif kind == "fifo":
            os.mkfifo(path, 0o600)

    def hardlink_target(self, member):
        """The path of a hardlink's target inside the root, as containerd's
        hardlinkRootPath: the target's directory resolved in the root, its
        final name not followed."""
        target = clean_name(member.linkname, "hardlink target of %r" % member.name)
        directory, base = posixpath.split(target)
        path = self.tree.path(posixpath.join(self.tree.resolve(directory), base))
        try:
            st = os.lstat(path)
        except (FileNotFoundError, NotADirectoryError):
            st = None
        if st is None or stat.S_ISDIR(st.st_mode):
            raise errors.InvalidArgument(
                "hardlink %r: its target %r is not a file of this layer or of the snapshot"
                % (member.name, member.linkname))
        return path

    def set_metadata(self, path, kind, member):
        """Owner, xattrs, mode, times, in containerd's order: chown clears
        setuid bits and capabilities, so mode and xattrs come after it.
        `path` may be an open descriptor of the entry (not of a directory:
        their times are set at the end, by path)."""
        # A descriptor is the entry itself: Python refuses follow_symlinks with one.
        nofollow = {} if isinstance(path, int) else {"follow_symlinks": False}
        if self.same_owner:
            os.chown(path, member.uid, member.gid, **nofollow)
        for name, value in _xattrs(member):
            try:
                os.setxattr(path, name, value, **nofollow)
            except OSError as err:
                tolerated = err.errno == errno.EOPNOTSUPP or (
                    err.errno == errno.EPERM and name.startswith("user.")
                    and kind not in ("file", "directory"))
                if not tolerated:
                    raise
        if kind != "symlink":  # Linux has no lchmod; a symlink's mode is always 0777
            os.chmod(path, member.mode & 0o7777)
        mtime = _time_ns(member, "mtime")
        atime = max(_time_ns(member, "atime") or mtime, mtime)
        if kind == "directory":
            self.directories[path] = (atime, mtime)
        else:
            os.utime(path, ns=(atime, mtime), **nofollow)


class NeedsMount(Exception):
    """A one-pass write into an overlay upper directory met a hardlink to a
    file of a lower layer: only the kernel's copy-up can make it."""


def write_in_one_pass(path, diff_id, root, lowers=None, max_expanded_size=None):
    """Write the layer at `path`, whose DiffID should be `diff_id`, into the
    staged directory `root` (the upper directory of an overlay over
    `lowers`, top first, when given) in one read. Errors as
    _LayerWriter.write_in_one_pass: the caller removes the staged snapshot."""
    return _LayerWriter(Tree(root, lowers), staged=True).write_in_one_pass(
        path, diff_id, max_expanded_size)


def write_scanned(scan, root, lowers=None, staged=False):
    """Write the layer inspect_layer scanned into the directory `root`, the
    upper directory of an overlay over `lowers` (top first) when they are
    given; return its DiffID. `staged`: `root` is a snapshot made for this
    layer, which the caller removes if this fails (no dry run). Errors as
    _LayerWriter.write."""
    return _LayerWriter(Tree(root, lowers), staged).write(scan)


def apply_layer_to_directory(tar_path, directory):
    """Apply the layer at `tar_path` to `directory` (for example a mounted
    snapshot) with the naive whiteout converter. Returns the DiffID.
    The layer is scanned first: a hostile one is refused before any write."""
    scan = inspect_layer(tar_path, hashing=False)  # the DiffID comes from the write
    return write_scanned(scan, directory)
