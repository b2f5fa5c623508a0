"""The tree a layer is written into, and the dry run that writes nothing
(continuity's fs.RootPath, and what containerd learns only by failing).

A Tree is a root directory seen alone (a mounted snapshot, a bind
source: "naive") or as the upper directory of an overlay over its lower
directories, looked up as overlayfs would show the merged snapshot.

Symlinks on the way to an entry are resolved inside the snapshot, the way
continuity's fs.RootPath (and a process chrooted into the container) sees
them: an absolute target starts at the snapshot's root and ".." stops at
it. So `lib -> /usr/lib` followed by `lib/x` writes `usr/lib/x` of the
snapshot, and `up -> ../../..` followed by `up/x` writes `x`; neither can
reach the host. Every write re-checks that its directory's real path is
inside the root (Tree.path), and the final name of an entry is never
followed.

What only the snapshot below can tell (a name under one of its files, a
symlink loop, a hardlink target reached through a symlinked directory, a
path too long once resolved under the root) is found by a dry run of the
whole layer against the tree before the first write (dry_run), so that a
refused layer leaves the snapshot exactly as it was. What the dry run
keeps is one record per name, bounded as the scan's is.
"""

import collections
import errno
import os
import posixpath
import stat

from .. import errors
from .archive import check_length, checked_entry, clean_name, reread_entries

OVERLAY_OPAQUE_XATTR = "trusted.overlay.opaque"
# As the kernel's and continuity's limit on symlinks followed for one path.
MAX_SYMLINKS = 255


def is_overlay_whiteout(st):
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def _is_opaque(path):
    try:
        return os.getxattr(path, OVERLAY_OPAQUE_XATTR, follow_symlinks=False) == b"y"
    except OSError:
        return False


class Tree:
    """Where a layer is written: a root directory, seen alone (naive) or as
    the upper directory of an overlay over `lowers` (top first)."""

    def __init__(self, root, lowers=None):
        self.root = os.path.realpath(root)
        self.lowers = list(lowers or [])
        self.overlay = lowers is not None

    def lookup(self, relative):
        """(directory holding it, lstat) of what the snapshot shows at
        `relative`, or None. With lowers this is overlayfs' merged lookup:
        upper first; a whiteout hides; a directory merges with the lower
        directories below it unless it is opaque. `relative` holds no
        symlink before its last component (resolve() makes it so)."""
        if not self.overlay:
            try:
                return self.root, os.lstat(os.path.join(self.root, relative))
            except (FileNotFoundError, NotADirectoryError):
                return None
        return self.last_of_walk(relative)

    def last_of_walk(self, relative):
        found, depth = None, 0
        for depth, (_prefix, found) in enumerate(self.walk(relative), 1):
            pass
        return found if depth == relative.count("/") + 1 else None

    def walk(self, relative):
        """What lookup() shows at each prefix of `relative`, shallowest
        first, in one pass: (prefix, found or None). It stops after a
        prefix that shows nothing or a non-directory."""
        layers = [self.root] + self.lowers
        prefix = ""
        for part in relative.split("/"):
            prefix = prefix + "/" + part if prefix else part
            found, merged = None, []
            for layer in layers:
                path = os.path.join(layer, prefix)
                try:
                    st = os.lstat(path)
                except (FileNotFoundError, NotADirectoryError):
                    continue
                whiteout = self.overlay and is_overlay_whiteout(st)
                if found is None and whiteout:
                    break  # deleted by a layer above
                if not stat.S_ISDIR(st.st_mode) or whiteout:
                    if found is None:
                        found = (layer, st)
                    break  # a non-directory ends the merge
                if found is None:
                    found = (layer, st)
                merged.append(layer)
                if self.overlay and _is_opaque(path):
                    break
            yield prefix, found
            if found is None or not stat.S_ISDIR(found[1].st_mode):
                return
            layers = merged

    def resolve(self, relative):
        """`relative` with every symlink in it resolved inside the root, as
        continuity's fs.RootPath: absolute targets start at the root and ".."
        stops there. The result contains no symlink (in the snapshot's view)."""
        pending = [p for p in relative.split("/") if p][::-1]
        done = []
        followed = 0
        while pending:
            part = pending.pop()
            if part == ".":
                continue
            if part == "..":
                if done:
                    done.pop()
                continue
            candidate = "/".join(done + [part])
            found = self.lookup(candidate)
            if found is not None and stat.S_ISLNK(found[1].st_mode):
                followed += 1
                if followed > MAX_SYMLINKS:
                    raise errors.InvalidArgument("too many levels of symbolic links in %r"
                                                 % relative)
                target = self.link_target(candidate, found)
                if target.startswith("/"):
                    done = []
                pending.extend([p for p in target.split("/") if p][::-1])
                continue
            done.append(part)
        return "/".join(done)

    def link_target(self, relative, found):
        """The target of the symlink lookup(relative) found."""
        return os.readlink(os.path.join(found[0], relative))

    def existing_directory(self, directory):
        """`directory` resolved, if the snapshot shows a directory there; else None."""
        resolved = self.resolve(directory)
        if resolved == "":
            return resolved
        found = self.lookup(resolved)
        if found is None or not stat.S_ISDIR(found[1].st_mode):
            return None
        return resolved

    def plain_directory(self, relative):
        """Whether `relative` (a cleaned name) is a directory of the root
        reached through real directories only, so that resolve() would give
        it back unchanged and make_parents() would find it all there (in an
        overlay too: a directory of the upper hides what the lowers have).
        Asked of the kernel in one go: the path it gives an open descriptor
        of the directory is exactly this one when no symlink was on the way.
        The common case of a layer entry: its directory is already there."""
        path = os.path.join(self.root, relative) if relative else self.root
        try:
            fd = os.open(path, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            return False  # missing or not a directory: resolve() says more
        try:
            return os.readlink("/proc/self/fd/%d" % fd) == path
        except OSError:
            return False  # no /proc: the slow road
        finally:
            os.close(fd)

    def path(self, relative):
        """The absolute path in the root, after checking that its directory
        really is inside the root (a symlink swapped in would show here)."""
        path = os.path.join(self.root, relative) if relative else self.root
        directory = os.path.dirname(path) if relative else path
        if self.plain_directory(posixpath.dirname(relative)):
            return path  # its real path is itself: inside the root
        real = os.path.realpath(directory)
        if real != directory or not (real == self.root or real.startswith(self.root + "/")):
            raise errors.InvalidArgument("refusing to write %s: its directory resolves to %s, "
                                         "outside the snapshot" % (relative, real))
        return path


# What lookup() shows of an entry the dry run planned: its type bits, and
# its target when it is a symlink.
_Planned = collections.namedtuple("_Planned", "st_mode link")
_PLANNED_DIRECTORY = _Planned(stat.S_IFDIR, "")
_UNCHANGED = object()


class _PlannedTree(Tree):
    """A dry run of a layer against a tree: the tree as it will look after
    the entries seen so far, the real tree below and this layer's entries
    and removals on top, nothing written. Every decision that depends on the
    snapshot below (a name under a file, a symlink loop, a hardlink target,
    the length of a resolved path) is taken here as the writer takes it, so
    the writer finds no surprise once it starts.

    What it knows is indexed by directory (`children`), so that removing a
    directory or an opaque marker costs what lies below it, not the layer."""

    def __init__(self, tree):
        super().__init__(tree.root, tree.lowers if tree.overlay else None)
        self.tree = tree
        self.changed = {}      # resolved name -> _Planned, or None: removed by the layer
        self.fresh = set()     # directories whose contents in the tree are hidden ("" = root)
        self.entries = set()   # names this layer wrote as entries (an opaque keeps them)
        self.plain = {""}      # directories reached through directories only
        self.children = collections.defaultdict(set)  # directory -> names known below it

    def know(self, name):
        self.children[posixpath.dirname(name)].add(name)

    def forget(self, name):
        """Forget `name` and everything known below it (it is gone)."""
        pending = [name]
        while pending:
            current = pending.pop()
            pending.extend(self.children.pop(current, ()))
            self.changed.pop(current, None)
            for names in (self.fresh, self.entries, self.plain):
                names.discard(current)
        self.children[posixpath.dirname(name)].discard(name)

    def walk(self, relative):
        real = self.tree.walk(relative)
        hidden = "" in self.fresh
        prefix = ""
        for part in relative.split("/"):
            prefix = prefix + "/" + part if prefix else part
            real_found = next(real, (None, None))[1]  # in step with ours
            shown = self.changed.get(prefix, _UNCHANGED)
            if shown is _UNCHANGED:
                found = None if hidden else real_found
            else:
                found = None if shown is None else (None, shown)
                hidden = hidden or prefix in self.fresh
            yield prefix, found
            if found is None or not stat.S_ISDIR(found[1].st_mode):
                return

    def lookup(self, relative):
        return self.last_of_walk(relative)

    def link_target(self, relative, found):
        if found[0] is None:
            return found[1].link
        return self.tree.link_target(relative, found)

    def shown(self, relative):
        """What lookup() shows at `relative` as a _Planned, or None."""
        found = self.lookup(relative)
        if found is None or found[0] is None:
            return found and found[1]
        mode = found[1].st_mode
        return _Planned(mode, self.link_target(relative, found) if stat.S_ISLNK(mode) else "")

    def resolve_directory(self, directory):
        """The directory an entry's name is written in, made as the writer
        makes it. One walk when no symlink is on the way (the usual case),
        and nothing at all when it is a directory already seen."""
        if directory in self.plain:
            return directory
        resolved = directory
        for _prefix, found in self.walk(directory):
            if found is not None and stat.S_ISLNK(found[1].st_mode):
                resolved = self.resolve(directory)
                break
        self.make_parents(resolved)
        return resolved

    def make_parents(self, resolved):
        """As apply._LayerWriter.make_parents: missing directories are made, any
        other non-directory on the way refuses the entry."""
        if not resolved:
            return
        parts = resolved.split("/")
        missing_from = len(parts)
        prefix = ""
        for depth, (prefix, found) in enumerate(self.walk(resolved)):
            if found is None:
                missing_from = depth
                prefix = posixpath.dirname(prefix)
                break
            if not stat.S_ISDIR(found[1].st_mode):
                raise errors.InvalidArgument("cannot write under %s: it is not a directory"
                                             % prefix)
            self.plain.add(prefix)
            self.know(prefix)
        for part in parts[missing_from:]:  # below a missing directory all is missing
            prefix = prefix + "/" + part if prefix else part
            self.changed[prefix] = _PLANNED_DIRECTORY
            self.fresh.add(prefix)
            self.plain.add(prefix)
            self.know(prefix)

    def remove(self, relative):
        self.forget(relative)
        self.changed[relative] = None
        self.know(relative)

    def entry(self, member):
        """Plan one member as apply._LayerWriter.entry writes it; InvalidArgument
        where the writer would fail."""
        kind, relative, whiteout = checked_entry(member)
        if whiteout is not None:
            if whiteout[0] == "meta":
                return
            resolved = self.existing_directory(whiteout[1])
            if resolved is None:
                return
            if whiteout[0] == "whiteout":
                self.remove(posixpath.join(resolved, whiteout[2]))
            else:
                self.opaque(resolved)
            return
        directory, base = posixpath.split(relative)
        if not base:
            return
        path = posixpath.join(self.resolve_directory(directory), base)
        check_length(os.path.join(self.tree.root, path), "entry %r written at" % member.name)
        shown = self.hardlink_target(member) if kind == "hardlink" else _Planned(
            stat.S_IFDIR if kind == "directory" else stat.S_IFLNK if kind == "symlink"
            else stat.S_IFREG, member.linkname)
        before = self.lookup(path)
        merge = before is not None and kind == "directory" and stat.S_ISDIR(before[1].st_mode)
        if not merge:
            self.remove(path)
            if kind == "directory":
                self.fresh.add(path)
        self.changed[path] = shown
        self.entries.add(path)
        self.know(path)

    def hardlink_target(self, member):
        """What a hardlink links: the entry at its target, resolved as
        apply._LayerWriter.hardlink_target resolves it; it must be there, and not
        a directory."""
        target = clean_name(member.linkname, "hardlink target of %r" % member.name)
        directory, base = posixpath.split(target)
        shown = self.shown(posixpath.join(self.resolve(directory), base)) if base else None
        if shown is None or stat.S_ISDIR(shown.st_mode):
            raise errors.InvalidArgument(
                "hardlink %r: its target %r is not a file of this layer or of the snapshot"
                % (member.name, member.linkname))
        return shown

    def opaque(self, resolved):
        """As apply._LayerWriter.remove_unwritten: under `resolved` only what this
        layer wrote as entries, through entries it wrote, stays; what the
        tree had there is hidden, below the kept directories too."""
        pending = [resolved]
        while pending:
            directory = pending.pop()
            self.fresh.add(directory)
            for child in list(self.children.get(directory, ())):
                if child not in self.entries:
                    self.forget(child)
                elif stat.S_ISDIR(self.changed[child].st_mode):
                    pending.append(child)
        if resolved and resolved not in self.changed:
            self.changed[resolved] = _PLANNED_DIRECTORY
            self.know(resolved)


def dry_run(tree, scan):
    """Plan every entry of the scanned layer against `tree` without writing."""
    planned = _PlannedTree(tree)
    with reread_entries(scan, hashing=False) as (members, _tar, _reader, _compression):
        for member in members:
            try:
                planned.entry(member)
            except OSError as err:  # it only looks; a name too long to look up is refused
                if err.errno != errno.ENAMETOOLONG:
                    raise
                raise errors.InvalidArgument("entry %r: its path under %s is too long (%s)"
                                             % (member.name[:64], tree.root, err.strerror))
