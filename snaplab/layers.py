"""Applying OCI image layer tars to snapshots (reference §6).

A layer is a tar (plain, gzip or zstd) of the changes one image layer makes:
entries to add or replace, and whiteouts for what it deletes
(`.wh.NAME` removes NAME, `.wh..wh..opq` in a directory hides everything
the layers below had there). Its DiffID is the sha256 of the uncompressed
tar, and a chain of layers is named by ChainIDs (OCI image-spec identity):
that is how containerd names the committed snapshot of each layer, so
unpacking the same chain twice finds every layer already there.

    apply_layers(snapshotter, [tar, ...])   unpack a chain, one committed
                                            snapshot per layer named by its
                                            chainID (idempotent)
    apply_layer(snapshotter, key, tar)      apply one layer to an active
                                            snapshot
    apply_layer_to_directory(tar, dir)      apply one layer to a directory
                                            (a mounted snapshot)
    plan_layers(snapshotter, [tar, ...])    what apply_layers would do
    inspect_layer(tar)                      DiffID and safety scan, no writes

How a layer is written (containerd's pkg/archive + core/diff/apply):

- An active snapshot whose mounts are one overlay mount with an upperdir is
  written directly into that upper directory, without mounting; whiteouts
  become what overlayfs understands (a 0/0 character device for a deleted
  name, the xattr trusted.overlay.opaque=y for an opaque directory). A
  snapshot that is one read-write bind mount is written directly into the
  bind source. Anything else is mounted on a temporary directory first.
- Outside the overlay case whiteouts are applied by deleting ("naive"):
  `.wh.NAME` removes NAME; an opaque marker removes every entry of its
  directory that this same layer did not write before it.

Safety: a layer never writes outside the snapshot.

- Names are cleaned as containerd cleans them: a leading "/" is dropped
  (`/etc/x` is `etc/x` of the snapshot). A name or hardlink target whose
  ".." climbs above the root, a whiteout of "", "." or "..", and an entry
  type we cannot write are refused: InvalidArgument, and the whole layer is
  refused before anything is written (every layer is scanned first).
- Symlinks on the way to an entry are resolved inside the snapshot, the way
  continuity's fs.RootPath (and a process chrooted into the container) sees
  them: an absolute target starts at the snapshot's root and ".." stops at
  it. So `lib -> /usr/lib` followed by `lib/x` writes `usr/lib/x` of the
  snapshot, and `up -> ../../..` followed by `up/x` writes `x`; neither can
  reach the host. Every write re-checks that its directory's real path is
  inside the root, and the final name of an entry is never followed.
- A hardlink links to the entry inside the snapshot, never following a
  symlink at the target; its target must exist there (earlier in the layer,
  or in the snapshot below).
- What only the snapshot below can tell (a name under one of its files, a
  symlink loop, a hardlink target reached through a symlinked directory, a
  path too long once resolved under the root) is found by a dry run of the
  whole layer against the tree before the first write (_PlannedTree), so
  that a refused layer leaves the snapshot exactly as it was.
- Names are bounded as Linux bounds them: a component over 255 bytes, a
  name or link target of 4,096 bytes or more, is InvalidArgument.
- Size is bounded: the tar is streamed (never held in memory; a PAX or GNU
  long-name header over 1 MiB is refused, as Go's archive/tar refuses it), a
  damaged or truncated archive or a size field the data does not fill is
  InvalidArgument at scan time, `max_expanded_size` (bytes of uncompressed
  tar) refuses a bigger layer with InvalidArgument as soon as the stream
  passes it, and a layer whose regular files add up to more than the free
  space of the receiving filesystem, or whose entries outnumber its free
  inodes, is refused with FailedPrecondition before anything is written. What the scan and the dry run keep is one
  record per name, so their memory grows with the number of entries, which
  max_expanded_size bounds as well.
- overlayfs' own xattrs (trusted.overlay.*, user.overlay.*) in a layer's
  PAX records are never set: on an upper directory they would forge
  whiteouts, opaque directories or redirects.
"""

import base64
import collections
import contextlib
import errno
import gzip
import hashlib
import os
import posixpath
import shutil
import stat
import subprocess
import tarfile
import tempfile
import time
import zlib

from . import errors
from . import errors as snaplab_errors  # frombuf's `errors` parameter hides the module
from . import faults
from . import fsutil
from . import labels as labelrules
from . import leases
from .kernel import in_user_namespace
from .types import Kind

WHITEOUT_PREFIX = ".wh."
WHITEOUT_META_PREFIX = ".wh..wh."
WHITEOUT_OPAQUE = ".wh..wh..opq"
OVERLAY_OPAQUE_XATTR = "trusted.overlay.opaque"

# Labels containerd's unpacker puts on each layer's snapshot (§6.2).
SNAPSHOT_REF_LABEL = labelrules.SNAPSHOT_REF
DIFF_ID_LABEL = "containerd.io/snapshot/diff-id"
PARENT_CHAIN_ID_LABEL = "containerd.io/snapshot/parent-chain-id"

GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"

# As the kernel's and continuity's limit on symlinks followed for one path.
MAX_SYMLINKS = 255
NAME_MAX = 255    # bytes of one path component (Linux)
PATH_MAX = 4096   # bytes of a path with its NUL (Linux): a name must be shorter
# Go's archive/tar limit on a PAX or GNU long-name header: they are read whole.
MAX_SPECIAL_HEADER = 1 << 20
_SPECIAL_TYPES = (tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE,
                  tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK)
_CHUNK = 1 << 20
_PREPARE_TRIES = 3  # containerd's unpacker tries three extract keys
# What a damaged tar or compressed stream raises while being read.
_CORRUPT = (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile)


def _sha256_text(text):
    return "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()


def chain_ids(diff_ids):
    """ChainIDs of a list of DiffIDs, bottom layer first (OCI identity).

    ChainID(L0) = DiffID(L0); ChainID(Ln) = sha256(ChainID(Ln-1) + " " + DiffID(Ln)),
    all as "sha256:<hex>" strings.
    """
    chain = []
    for diff_id in diff_ids:
        chain.append(diff_id if not chain else _sha256_text(chain[-1] + " " + diff_id))
    return chain


# -- decompression ----------------------------------------------------------


def detect_compression(head):
    """"gzip", "zstd" or "none", from the first bytes of a layer (never its name)."""
    if head.startswith(GZIP_MAGIC):
        return "gzip"
    if head.startswith(ZSTD_MAGIC):
        return "zstd"
    return "none"


def _stdlib_zstd():
    try:  # Python 3.14+
        from compression import zstd
    except ImportError:
        return None
    return zstd


@contextlib.contextmanager
def open_uncompressed(path):
    """The uncompressed byte stream of the layer at `path`: (stream, compression)."""
    opened = contextlib.ExitStack()
    try:
        raw = opened.enter_context(open(path, "rb"))
        compression = detect_compression(raw.read(4))
        raw.seek(0)
        if compression == "gzip":
            stream = opened.enter_context(gzip.GzipFile(fileobj=raw, mode="rb"))
        elif compression == "zstd" and _stdlib_zstd() is not None:
            stream = opened.enter_context(_stdlib_zstd().ZstdFile(raw, "rb"))
        elif compression == "zstd":
            stream = opened.enter_context(_zstd_program(path))
        else:
            stream = raw
        yield stream, compression
    finally:
        opened.close()


@contextlib.contextmanager
def _zstd_program(path):
    """Decompress through the zstd program: this Python has no zstd module."""
    program = shutil.which("zstd")
    if program is None:
        raise errors.NotImplemented(
            "%s is zstd-compressed, but this Python has no compression.zstd (3.14+) and no "
            "zstd program is installed: install zstd (Debian: apt-get install zstd) or give "
            "the layer uncompressed or gzip-compressed" % path)
    with tempfile.TemporaryFile() as messages:
        process = subprocess.Popen([program, "-d", "-c", "-q", "--", path],
                                   stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                   stderr=messages)
        finished = False
        try:
            yield process.stdout
            finished = True
        finally:
            if not finished:
                process.kill()
            process.stdout.close()
            code = process.wait()
        if code != 0:
            messages.seek(0)
            detail = messages.read().decode("utf-8", "replace").strip()
            raise errors.InvalidArgument("%s: zstd cannot decompress it (exit %d): %s"
                                         % (path, code, detail))


class _HashingReader:
    """Reads through a stream, hashing what passes: the DiffID of a layer.
    InvalidArgument as soon as more than `limit` bytes came through (None:
    no limit), so that a decompression bomb is stopped, not read to its end."""

    def __init__(self, stream, limit=None, over_limit="more than %d bytes"):
        self.stream = stream
        self.sha256 = hashlib.sha256()
        self.size = 0
        self.limit = limit
        self.over_limit = over_limit

    def read(self, size=-1):
        if self.limit is not None and (size is None or size < 0):
            size = _CHUNK  # never an unbounded read of a stream with a limit
        data = self.stream.read(size)
        self.sha256.update(data)
        self.size += len(data)
        if self.limit is not None and self.size > self.limit:
            raise errors.InvalidArgument(self.over_limit % self.limit)
        return data

    def drain(self):
        """Read to the end: the DiffID covers what follows the tar's end too."""
        while self.read(_CHUNK):
            pass

    @property
    def digest(self):
        return "sha256:" + self.sha256.hexdigest()


class _StrictTarInfo(tarfile.TarInfo):
    """A tar header as Go's archive/tar reads it: Python's tarfile takes a
    damaged or truncated header after the first one for the end of the
    archive (and applies what came before); here it is an error. PAX and
    GNU long-name headers are read whole into memory: over 1 MiB they are
    refused, as Go refuses them."""

    @classmethod
    def frombuf(cls, buf, encoding, errors):  # pylint: disable=redefined-outer-name
        try:
            info = super().frombuf(buf, encoding, errors)
        except (tarfile.InvalidHeaderError, tarfile.TruncatedHeaderError) as err:
            raise tarfile.SubsequentHeaderError("damaged or truncated header: %s" % err) from None
        if info.type in _SPECIAL_TYPES and info.size > MAX_SPECIAL_HEADER:
            raise snaplab_errors.InvalidArgument(
                "a PAX or GNU long-name header of %d bytes (more than %d)"
                % (info.size, MAX_SPECIAL_HEADER))
        return info


@contextlib.contextmanager
def _layer_entries(path, limit=None, over_limit=None):
    """(tar members iterator, tar, hashing reader, compression) of the layer
    at `path`, read as one stream of at most `limit` bytes (None: any). A
    damaged archive is InvalidArgument."""
    if not os.path.isfile(path):
        raise errors.NotFound("layer %s does not exist or is not a file" % path)
    with open_uncompressed(path) as (stream, compression):
        reader = _HashingReader(stream, limit, over_limit or (
            "layer %s (%s) expands to more than %%d bytes" % (path, compression)))
        try:
            with tarfile.open(fileobj=reader, mode="r|", tarinfo=_StrictTarInfo) as tar:
                yield iter(tar), tar, reader, compression
        except _CORRUPT as err:
            raise errors.InvalidArgument("layer %s (%s) is not a readable tar archive: %s"
                                         % (path, compression, err)) from None


# -- what an entry means, checked in the scan and again when writing -------


def clean_name(name, what="entry"):
    """A tar name as a path relative to the snapshot's root ("" is the root).

    A leading "/" is dropped and the path is cleaned as Go's filepath.Clean
    does; InvalidArgument if ".." would climb above the root, or if it is
    longer than Linux takes (check_length).
    """
    if "\x00" in name:
        raise errors.InvalidArgument("%s %r holds a NUL byte" % (what, name))
    relative = posixpath.normpath(name.lstrip("/") or ".")
    if relative == ".." or relative.startswith("../"):
        raise errors.InvalidArgument("%s %r climbs out of the snapshot" % (what, name))
    relative = "" if relative == "." else relative
    check_length(relative, what)
    return relative


def check_length(path, what="entry"):
    """InvalidArgument if Linux would refuse `path` as too long
    (ENAMETOOLONG): a component over NAME_MAX bytes, or PATH_MAX bytes or
    more in all. Checked before writing, not met half-way through a layer."""
    encoded = os.fsencode(path)
    if len(encoded) >= PATH_MAX:
        raise errors.InvalidArgument("%s %r... is %d bytes long: a path must be shorter than "
                                     "%d bytes" % (what, path[:64], len(encoded), PATH_MAX))
    longest = max(encoded.split(b"/"), key=len)
    if len(longest) > NAME_MAX:
        raise errors.InvalidArgument("%s %r... has a %d-byte component: at most %d bytes"
                                     % (what, path[:64], len(longest), NAME_MAX))


_ENTRY_TYPES = {
    tarfile.DIRTYPE: "directory", tarfile.SYMTYPE: "symlink", tarfile.LNKTYPE: "hardlink",
    tarfile.CHRTYPE: "char device", tarfile.BLKTYPE: "block device", tarfile.FIFOTYPE: "fifo",
}


def entry_kind(member):
    """What a tar member makes: "file", "directory", "symlink", "hardlink",
    "char device", "block device" or "fifo". InvalidArgument for any other
    tar type (containerd refuses them too), and for a character device 0/0.

    A 0/0 character device is overlayfs' whiteout and nothing else: written
    as it is, it would be a device on native, a deletion in an overlay upper
    directory and EPERM through an overlay mount (half-way through the
    layer), as it is with containerd. A layer marks deletions with .wh.
    names; this one is refused, the same way on every backend."""
    if member.isreg():  # regular, old-style regular, contiguous, GNU sparse
        return "file"
    kind = _ENTRY_TYPES.get(member.type)
    if kind is None:
        raise errors.InvalidArgument("entry %r has tar type %r, which a layer cannot hold"
                                     % (member.name, member.type))
    if kind == "char device" and member.devmajor == 0 and member.devminor == 0:
        raise errors.InvalidArgument("entry %r is a character device 0/0, overlayfs' whiteout: "
                                     "a layer marks deletions with .wh. names" % member.name)
    return kind


def whiteout_of(relative):
    """What a cleaned name means as a whiteout:
    ("opaque", directory) for DIR/.wh..wh..opq,
    ("whiteout", directory, name) for DIR/.wh.NAME,
    ("meta", relative) for other .wh..wh. names and anything below one
    (AUFS bookkeeping: skipped, as Docker skips it),
    None for an ordinary entry. InvalidArgument for .wh. of "", "." or ".."."""
    directory, base = posixpath.split(relative)
    if any(part.startswith(WHITEOUT_META_PREFIX) for part in directory.split("/")):
        return ("meta", relative)
    if not base.startswith(WHITEOUT_PREFIX):
        return None
    if base == WHITEOUT_OPAQUE:
        return ("opaque", directory)
    if base.startswith(WHITEOUT_META_PREFIX):
        return ("meta", relative)
    hidden = base[len(WHITEOUT_PREFIX):]
    if hidden in ("", ".", ".."):
        raise errors.InvalidArgument("invalid whiteout name %r: it must name an entry of "
                                     "its own directory" % relative)
    return ("whiteout", directory, hidden)


LayerScan = collections.namedtuple(
    "LayerScan", "path diff_id compression size entries links_outside_layer files_size")
LayerScan.__doc__ = """What inspect_layer learned: the DiffID, the compression, the
uncompressed size, the number of entries, whether a hardlink names a
target the layer itself does not hold (then the snapshot below must), and
the bytes of its regular files (what writing it takes on disk, at least)."""


def _read_through(tar, member, path):
    """Read a regular file's stored data (up to the next header) now: a
    size field the archive does not fill is InvalidArgument here, not
    half-way through writing, and a huge one (base-256 fields reach 2**63)
    ends at the end of the stream, where tarfile's skipping forward would
    read empty blocks for ever. Sparse members too: their stored data."""
    remaining = tar.offset - member.offset_data
    while remaining > 0:
        got = len(tar.fileobj.read(min(remaining, _CHUNK)))
        if not got:
            raise errors.InvalidArgument(
                "layer %s is truncated: entry %r claims %d more bytes than the archive holds"
                % (path, member.name[:64], remaining))
        remaining -= got


def inspect_layer(path, max_expanded_size=None):
    """Read the layer at `path` once without writing: its DiffID, and every
    entry checked as the write will check it. InvalidArgument (nothing is
    written anywhere) for a layer that would leave the snapshot, cannot be
    written, is damaged or truncated, or expands to more than
    `max_expanded_size` bytes of tar (None: no limit); NotFound if there is
    no such file."""
    kinds = {}  # cleaned name -> kind of the latest entry there, for hardlinks
    links_outside = False
    count = 0
    files_size = 0
    with _layer_entries(path, max_expanded_size) as (members, tar, reader, compression):
        for member in members:
            count += 1
            kind = entry_kind(member)
            if kind == "file":
                files_size += member.size
                _read_through(tar, member, path)
            relative = clean_name(member.name)
            whiteout = whiteout_of(relative)
            if whiteout is not None:
                if whiteout[0] == "whiteout":
                    kinds.pop(posixpath.join(whiteout[1], whiteout[2]), None)
                continue
            if kind == "hardlink":
                target = clean_name(member.linkname, "hardlink target of %r" % member.name)
                if target == "" or kinds.get(target) == "directory":
                    raise errors.InvalidArgument("hardlink %r points to a directory (%r)"
                                                 % (member.name, member.linkname))
                links_outside = links_outside or target not in kinds
            elif kind == "symlink":  # any target is fine, but not a NUL or too long
                if "\x00" in member.linkname:
                    raise errors.InvalidArgument("symlink %r has a NUL byte in its target"
                                                 % member.name)
                if len(os.fsencode(member.linkname)) >= PATH_MAX:
                    raise errors.InvalidArgument("symlink %r has a target of %d bytes: at "
                                                 "most %d" % (member.name, len(os.fsencode(
                                                     member.linkname)), PATH_MAX - 1))
            kinds[relative] = kind
        reader.drain()
        return LayerScan(path, reader.digest, compression, reader.size, count, links_outside,
                         files_size)


# -- resolving paths inside the root ---------------------------------------


def _is_overlay_whiteout(st):
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def _is_opaque(path):
    try:
        return os.getxattr(path, OVERLAY_OPAQUE_XATTR, follow_symlinks=False) == b"y"
    except OSError:
        return False


class _Tree:
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
                whiteout = self.overlay and _is_overlay_whiteout(st)
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


class _PlannedTree(_Tree):
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
        """As _LayerWriter.make_parents: missing directories are made, any
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
        """Plan one member as _LayerWriter.entry writes it; InvalidArgument
        where the writer would fail."""
        kind = entry_kind(member)
        relative = clean_name(member.name)
        whiteout = whiteout_of(relative)
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
        _LayerWriter.hardlink_target resolves it; it must be there, and not
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
        """As _LayerWriter.remove_unwritten: under `resolved` only what this
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


def _dry_run(tree, scan):
    """Plan every entry of the scanned layer against `tree` without writing."""
    planned = _PlannedTree(tree)
    with _layer_entries(scan.path, scan.size, _CHANGED % scan.path) as (members, _tar, _r, _c):
        for member in members:
            try:
                planned.entry(member)
            except OSError as err:  # it only looks; a name too long to look up is refused
                if err.errno != errno.ENAMETOOLONG:
                    raise
                raise errors.InvalidArgument("entry %r: its path under %s is too long (%s)"
                                             % (member.name[:64], tree.root, err.strerror))


def _check_free_space(tree, scan):
    """FailedPrecondition if the layer's files cannot fit in what is free
    where they are written (sparse files are counted at their full size;
    free is f_bavail, without the blocks a filesystem keeps for root)."""
    fs = os.statvfs(tree.root)
    free = fs.f_bavail * fs.f_frsize
    if scan.files_size > free:
        raise errors.FailedPrecondition(
            "layer %s holds %d bytes of files, more than the %d bytes free on the filesystem "
            "of %s" % (scan.path, scan.files_size, free, tree.root))
    # Each entry takes an inode at most (hardlinks and naive whiteouts none):
    # a layer of many empty files would otherwise stop half-way at ENOSPC.
    # f_files is 0 where inodes are not counted (btrfs).
    if fs.f_files and scan.entries > fs.f_favail:
        raise errors.FailedPrecondition(
            "layer %s has %d entries, more than the %d inodes free on the filesystem of %s"
            % (scan.path, scan.entries, fs.f_favail, tree.root))


_CHANGED = "layer %s changed since it was scanned: it is now more than %%d bytes"


# -- writing a layer ---------------------------------------------------------


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


class _LayerWriter:
    """Writes the entries of one layer into a _Tree."""

    def __init__(self, tree):
        self.tree = tree
        self.written = set()     # absolute paths this layer wrote (an opaque keeps them)
        self.directories = {}    # path -> (atime_ns, mtime_ns), set at the very end
        self.same_owner = os.geteuid() == 0  # as tar: only root can give files away

    def write(self, scan):
        """Write every entry of the scanned layer; return the DiffID. First,
        with nothing written yet: FailedPrecondition if its files do not fit,
        InvalidArgument if the dry run against the tree refuses it.
        InvalidArgument too if the file changed since it was scanned."""
        _check_free_space(self.tree, scan)
        _dry_run(self.tree, scan)
        with _layer_entries(scan.path, scan.size, _CHANGED % scan.path) as (
                members, tar, reader, _compression):
            for member in members:
                faults.point("apply.entry")
                self.entry(tar, member)
            reader.drain()
            diff_id = reader.digest
        if diff_id != scan.diff_id:
            raise errors.InvalidArgument("layer %s changed while it was applied: DiffID %s, "
                                         "expected %s" % (scan.path, diff_id, scan.diff_id))
        # Directory times last: writing into a directory changes its mtime.
        for path, times in self.directories.items():
            try:
                if stat.S_ISDIR(os.lstat(path).st_mode):
                    os.utime(path, ns=times, follow_symlinks=False)
            except FileNotFoundError:
                pass  # removed by a later entry of the layer
        return diff_id

    def entry(self, tar, member):
        kind = entry_kind(member)
        relative = clean_name(member.name)
        whiteout = whiteout_of(relative)
        if whiteout is not None:
            if whiteout[0] == "opaque":
                self.opaque(whiteout[1])
            elif whiteout[0] == "whiteout":
                self.whiteout(whiteout[1], whiteout[2], member)
            return
        directory, base = posixpath.split(relative)
        if not base:
            return  # the root itself: containerd leaves it alone
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

    # -- whiteouts

    def whiteout(self, directory, hidden, member):
        resolved = self.tree.existing_directory(directory)
        if resolved is None:
            return  # no such directory: nothing to hide
        if self.tree.overlay:
            self.make_parents(resolved)  # the directory may so far be in a lower only
        path = self.tree.path(posixpath.join(resolved, hidden))
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
            upper_whiteout = self.tree.overlay and st is not None and _is_overlay_whiteout(st)
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
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                         | os.O_CLOEXEC, 0o600)
            with os.fdopen(fd, "wb") as out:
                shutil.copyfileobj(tar.extractfile(member), out, _CHUNK)
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
        setuid bits and capabilities, so mode and xattrs come after it."""
        if self.same_owner:
            os.chown(path, member.uid, member.gid, follow_symlinks=False)
        for name, value in _xattrs(member):
            try:
                os.setxattr(path, name, value, follow_symlinks=False)
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
            os.utime(path, ns=(atime, mtime), follow_symlinks=False)


def apply_layer_to_directory(tar_path, directory):
    """Apply the layer at `tar_path` to `directory` (for example a mounted
    snapshot) with the naive whiteout converter. Returns the DiffID.
    The layer is scanned first: a hostile one is refused before any write."""
    scan = inspect_layer(tar_path)
    return _LayerWriter(_Tree(directory)).write(scan)


# -- layers and snapshots ----------------------------------------------------


def _overlay_upper(mounts):
    """(upperdir, lowerdirs) if `mounts` can be written without mounting as
    an overlay upper directory, else None (containerd's fast path)."""
    if len(mounts) != 1 or mounts[0].type != "overlay" or mounts[0].target:
        return None
    options = mounts[0].options
    upper = [o[len("upperdir="):] for o in options if o.startswith("upperdir=")]
    if not upper or "userxattr" in options or in_user_namespace():
        return None  # rootless overlay: whiteouts need mknod 0/0 and trusted.* xattrs
    lowers = []
    for option in options:
        if option.startswith("lowerdir="):
            lowers = option[len("lowerdir="):].split(":")
    return upper[0], lowers


def _bind_source(mounts):
    """The directory of a single read-write bind mount, else None."""
    if len(mounts) != 1 or mounts[0].type != "bind" or mounts[0].target:
        return None
    return None if mounts[0].read_only else mounts[0].source


def _apply_scanned(snapshotter, key, scan, direct=True):
    info = snapshotter.stat(key)
    if info.kind != Kind.ACTIVE:
        raise errors.FailedPrecondition("a layer can only be applied to an active snapshot; "
                                        "%r is %s" % (key, info.kind))
    mounts = snapshotter.mounts(key)
    overlay = _overlay_upper(mounts) if direct else None
    if overlay is not None and not scan.links_outside_layer:
        upper, lowers = overlay
        return _LayerWriter(_Tree(upper, lowers)).write(scan)
    source = _bind_source(mounts) if direct else None
    if source is not None:
        return _LayerWriter(_Tree(source)).write(scan)
    # Mounted: a hardlink to a file of a lower layer, or mounts we cannot
    # write directly. The kernel then does the copy-up and the whiteouts.
    # Under the root and a lease: if this process is killed meanwhile, the
    # next Cleanup takes the mount down (a mount in /tmp stayed for good).
    with snapshotter.temporary_mount(mounts) as target:
        faults.point("apply.mounted")
        return _LayerWriter(_Tree(target)).write(scan)


def apply_layer(snapshotter, key, tar_path, direct=True, max_expanded_size=None):
    """Apply the layer at `tar_path` to the active snapshot `key`; return its
    DiffID. NotFound if `key` or the file is missing, FailedPrecondition if
    `key` is not active, InvalidArgument (nothing written) for a layer that is
    not a tar or would write outside the snapshot. `direct=False` always
    mounts the snapshot instead of writing its directory. FailedPrecondition
    (nothing written) if its files do not fit in the free space (or inodes)
    there;
    `max_expanded_size` as in inspect_layer."""
    scan = inspect_layer(tar_path, max_expanded_size)
    return _apply_scanned(snapshotter, key, scan, direct)


PlannedLayer = collections.namedtuple("PlannedLayer", "path diff_id chain_id present scan")
AppliedLayer = collections.namedtuple("AppliedLayer", "diff_id chain_id applied")


def _committed(snapshotter, name):
    """True if `name` is a committed snapshot; FailedPrecondition if the name
    is taken by an active snapshot or a view."""
    if snapshotter is None:
        return False
    try:
        info = snapshotter.stat(name)
    except errors.NotFound:
        return False
    if info.kind != Kind.COMMITTED:
        raise errors.FailedPrecondition("chainID %s is the key of a %s snapshot, not of a "
                                        "committed layer" % (name, info.kind))
    return True


def plan_layers(snapshotter, tar_paths, max_expanded_size=None):
    """Scan each layer (bottom first) and say whether its chainID is already
    committed. `snapshotter` may be None (no root yet: nothing is present).
    Writes nothing; InvalidArgument/NotFound (and `max_expanded_size`, for
    each layer) as inspect_layer."""
    if not tar_paths:
        raise errors.InvalidArgument("no layers given")
    scans = [inspect_layer(path, max_expanded_size) for path in tar_paths]
    chain = chain_ids([scan.diff_id for scan in scans])
    return [PlannedLayer(scan.path, scan.diff_id, chain_id, _committed(snapshotter, chain_id),
                         scan)
            for scan, chain_id in zip(scans, chain)]


def _extract_key(chain_id):
    """containerd's UnpackKeyFormat "extract-<unique> <chainID>"."""
    unique = "%d-%s" % (time.time_ns() % 10**9,
                        base64.urlsafe_b64encode(os.urandom(3)).decode("ascii"))
    return "extract-%s %s" % (unique, chain_id)


def _unpack(snapshotter, layer, parent, labels):
    """Prepare, apply and commit one layer as containerd's unpacker does.
    Returns False if its chainID turned out to be there already.

    The extract snapshot lives under a lease of this process (containerd's
    unpack runs under a lease too): if the process is killed half-way,
    Cleanup removes the half-applied snapshot.
    """
    with snapshotter.lease("extract") as name:
        extract_labels = dict(labels)
        extract_labels[leases.LEASE_LABEL] = name
        return _unpack_in_lease(snapshotter, layer, parent, labels, extract_labels)


def _unpack_in_lease(snapshotter, layer, parent, labels, extract_labels):
    for _attempt in range(_PREPARE_TRIES):
        key = _extract_key(layer.chain_id)
        try:
            snapshotter.prepare(key, parent, labels=extract_labels)
            break
        except errors.AlreadyExists:
            if _committed(snapshotter, layer.chain_id):
                return False
    else:
        raise errors.AlreadyExists("no free extract key for %s after %d tries"
                                   % (layer.chain_id, _PREPARE_TRIES))
    try:
        _apply_scanned(snapshotter, key, layer.scan)
        # The committed layer takes `labels`, not the lease's label: it
        # lives on after the unpack.
        snapshotter.commit(layer.chain_id, key, labels=labels)
        return True
    except errors.AlreadyExists:
        # Committed meanwhile by someone else: the layer is there, as wanted.
        snapshotter.remove(key)
        if _committed(snapshotter, layer.chain_id):
            return False
        raise
    except BaseException:
        try:
            snapshotter.remove(key)
        except errors.SnapshotError:
            pass  # committed after all, or already gone
        raise


def apply_layers(snapshotter, tar_paths, labels=None, plan=None, max_expanded_size=None):
    """Unpack a chain of layer tars (bottom first) into committed snapshots
    named by chainID, each on the previous one. A layer whose chainID is
    already committed is skipped, so running it again changes nothing.

    Each new snapshot gets `labels` plus containerd's
    containerd.io/snapshot.ref=<chainID>, containerd.io/snapshot/diff-id and
    (above the first) containerd.io/snapshot/parent-chain-id; labels of
    existing layers are left alone. `plan` is a plan_layers() result to reuse.
    Returns [AppliedLayer(diff_id, chain_id, applied)]. A failing layer
    leaves the layers below it committed and nothing of its own.
    `max_expanded_size` bounds each layer as in inspect_layer.
    """
    labels = labelrules.validate(labels)
    plan = plan if plan is not None else plan_layers(snapshotter, tar_paths, max_expanded_size)
    results = []
    parent = ""
    for layer in plan:
        applied = False
        if not _committed(snapshotter, layer.chain_id):
            layer_labels = dict(labels)
            layer_labels[SNAPSHOT_REF_LABEL] = layer.chain_id
            layer_labels[DIFF_ID_LABEL] = layer.diff_id
            if parent:
                layer_labels[PARENT_CHAIN_ID_LABEL] = parent
            applied = _unpack(snapshotter, layer, parent, layer_labels)
        results.append(AppliedLayer(layer.diff_id, layer.chain_id, applied))
        parent = layer.chain_id
    return results
