"""Reading a layer tar and refusing a hostile one before anything is written
(containerd's pkg/archive, the reading half).

A layer is a tar (plain, gzip or zstd: told by its first bytes, never by
its name) of the changes one image layer makes: entries to add or replace,
and whiteouts for what it deletes (`.wh.NAME` removes NAME,
`.wh..wh..opq` in a directory hides everything the layers below had
there). Its DiffID is the sha256 of the uncompressed tar.

inspect_layer reads the whole layer once, writing nothing, so that a
layer the writer would refuse is refused before its first entry is
written; the writer (apply.py) checks every entry again with the same
functions (clean_name, entry_kind, whiteout_of) as it writes.

- Names are cleaned as containerd cleans them: a leading "/" is dropped
  (`/etc/x` is `etc/x` of the snapshot). A name or hardlink target whose
  ".." climbs above the root, a whiteout of "", "." or "..", and an entry
  type we cannot write are InvalidArgument.
- Names are bounded as Linux bounds them: a component over 255 bytes, a
  name or link target of 4,096 bytes or more, is InvalidArgument.
- Size is bounded: the tar is streamed (never held in memory; a PAX or GNU
  long-name header over 1 MiB is refused, as Go's archive/tar refuses it),
  a damaged or truncated archive or a size field the data does not fill
  is InvalidArgument at scan time, and `max_expanded_size` (bytes of
  uncompressed tar) refuses a bigger layer with InvalidArgument as soon as
  the stream passes it. What the scan keeps is one record per name, so its
  memory grows with the number of entries, which max_expanded_size bounds
  as well.
"""

import collections
import contextlib
import gzip
import os
import posixpath
import shutil
import subprocess
import tarfile
import tempfile
import zlib

from .. import errors
from .. import errors as snaplab_errors  # frombuf's `errors` parameter hides the module
from .stream import CHUNK, FileHasher, LayerFile, ScannedTar, ThreadedReader, seekable

WHITEOUT_PREFIX = ".wh."
WHITEOUT_META_PREFIX = ".wh..wh."
WHITEOUT_OPAQUE = ".wh..wh..opq"

GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"

NAME_MAX = 255    # bytes of one path component (Linux)
PATH_MAX = 4096   # bytes of a path with its NUL (Linux): a name must be shorter
# Go's archive/tar limit on a PAX or GNU long-name header: they are read whole.
MAX_SPECIAL_HEADER = 1 << 20
_SPECIAL_TYPES = (tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE,
                  tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK)
# What a damaged tar or compressed stream raises while being read.
_CORRUPT = (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile)


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
    """The uncompressed byte stream of the layer at `path`: (stream,
    compression, the layer's file opened)."""
    # `with`, not close() in a finally: the zstd program's context must see
    # an error raised while reading, or it takes the SIGPIPE of its closed
    # pipe for a damaged stream and reports that instead.
    with contextlib.ExitStack() as opened:
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
        yield stream, compression, raw


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
def layer_entries(path, limit=None, over_limit=None, hashing=True, identity=None):
    """(tar members iterator, tar, reader, compression) of the layer at
    `path`, read as one stream of at most `limit` bytes (None: any); the
    reader's drain() reads to the end and its digest is then the DiffID
    (`hashing`=False: no digest). A damaged archive is InvalidArgument, and
    so is a file that is not `identity` (when given) or changes meanwhile.

    An uncompressed layer is parsed from its file, seeking over the file
    data (tar.fileobj is then that file: copy_data copies in the kernel);
    a compressed one is decompressed on a thread of its own."""
    if not os.path.isfile(path):
        raise errors.NotFound("layer %s does not exist or is not a file" % path)
    with open_uncompressed(path) as (stream, compression, raw):
        over_limit = over_limit or (
            "layer %s (%s) expands to more than %%d bytes" % (path, compression))
        try:
            if compression == "none":
                reader = FileHasher(stream, limit, over_limit, hashing)
                source, mode = LayerFile(stream), "r:"
            else:
                reader = ThreadedReader(stream, raw, limit, over_limit, hashing)
                source, mode = reader, "r|"
            with contextlib.closing(reader):
                if identity is not None and reader.identity != identity:
                    raise errors.InvalidArgument("layer %s changed since it was scanned" % path)
                with tarfile.open(fileobj=source, mode=mode, tarinfo=_StrictTarInfo) as tar:
                    yield iter(tar), tar, reader, compression
        except _CORRUPT as err:
            raise errors.InvalidArgument("layer %s (%s) is not a readable tar archive: %s"
                                         % (path, compression, err)) from None


_CHANGED = "layer %s changed since it was scanned: it is now more than %%d bytes"


@contextlib.contextmanager
def reread_entries(scan, hashing=True):
    """The layer inspect_layer scanned, read again (to plan it, then to
    write it), as layer_entries: InvalidArgument if it now holds more
    than the scan read.

    The headers are not parsed again where the scan kept them: the dry run
    (`hashing`=False) needs nothing else and reads no file; the write of an
    uncompressed layer reads only the data (copy_data, from the file, which
    must be the one scanned: same device, inode, size and times, when the
    write starts and when it ends) and hashes it only if the scan did not:
    the kernel copies the bytes the scan hashed. The tar is then a stand-in
    holding that file."""
    if scan.members is not None and not hashing:
        yield iter(scan.members), None, None, scan.compression
        return
    if scan.members is None or scan.compression != "none":
        with layer_entries(scan.path, scan.size, _CHANGED % scan.path, hashing,
                           scan.identity) as entries:
            yield entries
        return
    with open(scan.path, "rb") as raw:
        reader = FileHasher(raw, scan.size, _CHANGED % scan.path, scan.diff_id is None)
        with contextlib.closing(reader):
            if reader.identity != scan.identity:
                raise errors.InvalidArgument("layer %s changed since it was scanned"
                                             % scan.path)
            yield iter(scan.members), ScannedTar(LayerFile(raw)), reader, "none"


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


def checked_entry(member):
    """(kind, cleaned name, whiteout) of a member: entry_kind, clean_name
    and whiteout_of, in that order (so the same error comes first), kept
    on the member, so that the passes after the scan ask once."""
    checked = getattr(member, "snaplab_checked", None)
    if checked is None:
        kind = entry_kind(member)
        relative = clean_name(member.name)
        checked = member.snaplab_checked = (kind, relative, whiteout_of(relative))
    return checked


LayerScan = collections.namedtuple(
    "LayerScan", "path diff_id compression size entries links_outside_layer files_size "
    "members identity", defaults=(None, None))
LayerScan.__doc__ = """What inspect_layer learned: the DiffID (None if not hashed), the
compression, the uncompressed size, the number of entries, whether a hardlink names a
target the layer itself does not hold (then the snapshot below must), and
the bytes of its regular files (what writing it takes on disk, at least).
`members`: the tar headers read, in order (tarfile keeps them all while
reading anyway), so that the dry run and the write of an uncompressed
layer do not parse them again; None for a layer with sparse files, whose
data only tarfile can read. `identity`: what the file was (file_identity)."""


def read_through(tar, member, path):
    """Read a regular file's stored data (up to the next header) now: a
    size field the archive does not fill is InvalidArgument here, not
    half-way through writing, and a huge one (base-256 fields reach 2**63)
    ends at the end of the stream, where tarfile's skipping forward would
    read empty blocks for ever. Sparse members too: their stored data.
    From an uncompressed file nothing is read: its size tells."""
    remaining = tar.offset - member.offset_data
    if seekable(tar):
        if tar.offset > tar.fileobj.size:
            raise errors.InvalidArgument(
                "layer %s is truncated: entry %r claims more bytes than the archive holds"
                % (path, member.name[:64]))
        return
    while remaining > 0:
        got = len(tar.fileobj.read(min(remaining, CHUNK)))
        if not got:
            raise errors.InvalidArgument(
                "layer %s is truncated: entry %r claims %d more bytes than the archive holds"
                % (path, member.name[:64], remaining))
        remaining -= got


class EntryChecks:
    """The checks inspect_layer makes of each entry, entry by entry, and
    what they learn on the way (the one-pass write makes them too, just
    before each entry is written)."""

    def __init__(self):
        self.kinds = {}  # cleaned name -> kind of the latest entry there, for hardlinks
        self.links_outside = False
        self.count = 0
        self.files_size = 0

    def check(self, member):
        """(kind, cleaned name, whiteout) of the member (checked_entry);
        InvalidArgument if a layer cannot hold it."""
        self.count += 1
        kind, relative, whiteout = checked_entry(member)
        if kind == "file":
            self.files_size += member.size
        if whiteout is not None:
            if whiteout[0] == "whiteout":
                self.kinds.pop(posixpath.join(whiteout[1], whiteout[2]), None)
            return kind, relative, whiteout
        if kind == "hardlink":
            target = clean_name(member.linkname, "hardlink target of %r" % member.name)
            if target == "" or self.kinds.get(target) == "directory":
                raise errors.InvalidArgument("hardlink %r points to a directory (%r)"
                                             % (member.name, member.linkname))
            self.links_outside = self.links_outside or target not in self.kinds
        elif kind == "symlink":  # any target is fine, but not a NUL or too long
            if "\x00" in member.linkname:
                raise errors.InvalidArgument("symlink %r has a NUL byte in its target"
                                             % member.name)
            if len(os.fsencode(member.linkname)) >= PATH_MAX:
                raise errors.InvalidArgument("symlink %r has a target of %d bytes: at "
                                             "most %d" % (member.name, len(os.fsencode(
                                                 member.linkname)), PATH_MAX - 1))
        self.kinds[relative] = kind
        return kind, relative, whiteout


def inspect_layer(path, max_expanded_size=None, hashing=True):
    """Read the layer at `path` once without writing: its DiffID, and every
    entry checked as the write will check it. InvalidArgument (nothing is
    written anywhere) for a layer that would leave the snapshot, cannot be
    written, is damaged or truncated, or expands to more than
    `max_expanded_size` bytes of tar (None: no limit); NotFound if there is
    no such file. `hashing`=False: no DiffID (None), for a caller that
    learns it from the write (which checks the file is the one scanned)."""
    checks = EntryChecks()
    with layer_entries(path, max_expanded_size, hashing=hashing) as (
            members, tar, reader, compression):
        for member in members:
            if entry_kind(member) == "file":
                read_through(tar, member, path)
            checks.check(member)
        reader.drain()
        members = None if any(member.issparse() for member in tar.members) else tar.members
        return LayerScan(path, reader.digest if hashing else None, compression, reader.size,
                         checks.count, checks.links_outside, checks.files_size, members,
                         reader.identity)
