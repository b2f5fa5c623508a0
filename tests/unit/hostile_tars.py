"""A corpus of hostile and odd layer tars, and what snaplab must do with each.

Not a test module: tests/unit/test_hostile_layers.py applies every tar of
CASES to real snapshots, and docs/hostile-layers.md is generated from the
same table, so the two cannot drift:

    python -m tests.unit.hostile_tars --markdown > docs/hostile-layers.md

Each case is built by a function of `host`, the absolute path of a "host"
directory beside the snapshotter root (canary files the layer must never
reach), so that escapes aim at something a test can watch. The snapshot a
layer is applied to has PARENT (built by parent_layer) below it, so cases
about the snapshot below are real.

The outcome of a case is what containerd's pkg/archive does with it:
refused (an error class of snaplab.errors, nothing written) or contained
(applied, every write inside the snapshot: absolute names and symlink
targets resolve inside it).
"""

import collections
import gzip
import io
import os
import sys
import tarfile

CONTAINED = "contained"
INVALID = "InvalidArgument"
PRECONDITION = "FailedPrecondition"

SCAN = "scan"
DRY_RUN = "dry run"
FREE_SPACE = "free space"

MTIME = 1_600_000_000
MIB = 1 << 20
# The bomb's file is bigger than the free space of the test's 64 MiB ext4.
BOMB_FILE_SIZE = 96 * MIB
BOMB_LIMIT = 16 * MIB  # the max_expanded_size of the limited bomb case

Case = collections.namedtuple("Case", "name group outcome stage why build options")
Case.__doc__ = """One tar of the corpus. `build(host)` returns the layer
file's bytes; `stage` says what refuses it: SCAN (inspect_layer, the layer
alone), DRY_RUN (the dry run against the snapshot below, before the first
write) or FREE_SPACE (its files against the free space), "" if it is
contained; `options` may hold max_expanded_size (passed to apply_*),
lands (a name, "{host}" for host's path without its leading "/", that the
layer must have written inside the snapshot), forged_xattrs ((name,
[xattr, ...]): overlayfs xattrs the layer sets on name, which it must not
carry afterwards) and message (a regular expression the refusal's message
must match)."""

# What the snapshot below every case holds (built by parent_layer).
PARENT_FILES = {
    "afile": "a regular file (cases write under it)",
    "etc/passwd": "a regular file",
    "etc/hosts": "a regular file",
    "d/keep": "a file in a directory (opaque and xattr cases)",
    "lib": "symlink to usr/lib",
    "usr/lib/libc": "a regular file",
    "hostlink": "absolute symlink to the host directory",
    "uplink": "relative symlink climbing far above the root, then to the host directory",
}


# -- building tars -------------------------------------------------------------


def _info(name, kind, mode=0o644, **fields):
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.mtime = MTIME
    for field, value in fields.items():
        setattr(info, field, value)
    return info


def F(name, data=b"", mode=0o644, xattrs=None, pax=None):
    info = _info(name, tarfile.REGTYPE, mode, size=len(data))
    info.pax_headers = dict(pax or {})
    info.pax_headers.update({"SCHILY.xattr." + k: v for k, v in (xattrs or {}).items()})
    return info, data


def D(name, mode=0o755, xattrs=None):
    info = _info(name, tarfile.DIRTYPE, mode)
    info.pax_headers = {"SCHILY.xattr." + k: v for k, v in (xattrs or {}).items()}
    return info, None


def L(name, target, pax=None):
    info = _info(name, tarfile.SYMTYPE, 0o777, linkname=target)
    info.pax_headers = dict(pax or {})
    return info, None


def H(name, target, pax=None):
    info = _info(name, tarfile.LNKTYPE, linkname=target)
    info.pax_headers = dict(pax or {})
    return info, None


def W(name):
    directory, base = os.path.split(name)
    return F(os.path.join(directory, ".wh." + base))


def OPQ(directory):
    return F(os.path.join(directory, ".wh..wh..opq"))


def DEV(name, kind, major, minor):
    return _info(name, kind, 0o666, devmajor=major, devminor=minor), None


def tar(*entries, fmt=tarfile.PAX_FORMAT):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=fmt) as out:
        for info, data in entries:
            out.addfile(info, io.BytesIO(data) if data is not None else None)
    return buffer.getvalue()


def _checksummed(header):
    """A 512-byte ustar header with its checksum recomputed (after a patch)."""
    header = bytearray(header)
    header[148:156] = b" " * 8
    header[148:156] = b"%06o\0 " % sum(header)
    return bytes(header)


def with_size_field(header, size):
    """The header with another size field: a size that lies."""
    header = bytearray(header)
    header[124:136] = b"%011o\0" % size
    return _checksummed(header)


def ustar_header(name, size, kind=tarfile.REGTYPE):
    return _info(name, kind, size=size).tobuf(format=tarfile.USTAR_FORMAT)


def _padded(data):
    return data + b"\0" * (-len(data) % 512)


END = b"\0" * 1024


def gzip_bomb(file_size):
    """A gzip layer of one file of `file_size` zero bytes, small compressed:
    gzip members concatenated (a valid multi-member stream), so it is built
    without compressing `file_size` bytes."""
    chunk = gzip.compress(b"\0" * MIB, compresslevel=9, mtime=0)
    return (gzip.compress(ustar_header("bomb", file_size), mtime=0)
            + chunk * (file_size // MIB) + gzip.compress(END, mtime=0))


def parent_layer(host):
    """The layer below every case (see PARENT_FILES)."""
    return tar(F("afile", b"a file"), D("etc"), F("etc/passwd", b"root:x:0:0::/:/bin/sh\n"),
               F("etc/hosts", b"127.0.0.1 localhost\n"), D("d"), F("d/keep", b"keep"),
               D("usr"), D("usr/lib"), F("usr/lib/libc", b"libc"), L("lib", "usr/lib"),
               L("hostlink", host), L("uplink", "../" * 40 + host.lstrip("/")))


# -- the corpus ------------------------------------------------------------------

CASES = []


def case(name, group, outcome, why, stage=None, **options):
    """Register a builder; `stage` defaults to SCAN for InvalidArgument and
    FREE_SPACE for FailedPrecondition."""
    if stage is None:
        stage = {CONTAINED: "", INVALID: SCAN, PRECONDITION: FREE_SPACE}[outcome]

    def register(build):
        CASES.append(Case(name, group, outcome, stage, why, build, options))
        return build
    return register


FIRST = F("first", b"written before the bad entry")  # must not be written either


def _climb(host):
    return "../" * 40 + host.lstrip("/")


# traversal in every header form

@case("dotdot-plain-name", "traversal", INVALID, "a name climbing above the root")
def _(host):
    return tar(FIRST, F("../escape", b"x"))


@case("dotdot-inside-name", "traversal", INVALID, "a/../../escape climbs once cleaned")
def _(host):
    return tar(FIRST, D("a"), F("a/../../escape", b"x"))


@case("dotdot-deep-to-host", "traversal", INVALID, "many ../ then the host's canary")
def _(host):
    return tar(FIRST, F(_climb(host) + "/canary", b"x"))


@case("dotdot-pax-path", "traversal", INVALID,
      "the PAX path record (which wins over the ustar name) climbs")
def _(host):
    return tar(FIRST, F("innocent", b"x", pax={"path": "../escape"}))


@case("dotdot-pax-linkpath-hardlink", "traversal", INVALID,
      "a hardlink whose PAX linkpath climbs")
def _(host):
    return tar(FIRST, H("h", "innocent", pax={"linkpath": "../../etc/passwd"}))


@case("dotdot-pax-linkpath-symlink", "traversal", CONTAINED,
      "a symlink's PAX linkpath is only text; written through, it resolves inside",
      lands="{host}/pwned")
def _(host):
    return tar(L("s", "innocent", pax={"linkpath": _climb(host)}), F("s/pwned", b"x"))


@case("dotdot-gnu-longname", "traversal", INVALID,
      "a GNU ././@LongLink (type L) name climbing")
def _(host):
    return tar(FIRST, F("../" + "n" * 150, b"x"), fmt=tarfile.GNU_FORMAT)


@case("dotdot-gnu-longlink", "traversal", INVALID,
      "a GNU ././@LongLink (type K) hardlink target climbing")
def _(host):
    return tar(FIRST, H("h", "../" + "t" * 150), fmt=tarfile.GNU_FORMAT)


@case("absolute-name", "traversal", CONTAINED, "a leading / is dropped: /etc/x is etc/x",
      lands="etc/x")
def _(host):
    return tar(F("/etc/x", b"x"))


@case("absolute-host-name", "traversal", CONTAINED,
      "the host directory's absolute path is a path of the snapshot", lands="{host}/canary")
def _(host):
    return tar(F(host + "/canary", b"x"))


@case("absolute-dotdot", "traversal", INVALID, "/../escape climbs once cleaned")
def _(host):
    return tar(FIRST, F("/../escape", b"x"))


# symlinks

@case("symlink-absolute-then-write", "symlink", CONTAINED,
      "an absolute symlink resolves from the snapshot's root", lands="{host}/pwned")
def _(host):
    return tar(L("s", host), F("s/pwned", b"x"))


@case("symlink-relative-climb-then-write", "symlink", CONTAINED,
      ".. stops at the snapshot's root", lands="{host}/pwned")
def _(host):
    return tar(L("up", _climb(host)), F("up/pwned", b"x"))


@case("symlink-chain", "symlink", CONTAINED, "a chain of three symlinks, each resolved inside",
      lands="{host}/pwned")
def _(host):
    return tar(L("one", "two"), L("two", "/three"), L("three", _climb(host)),
               F("one/pwned", b"x"))


@case("directory-replaced-by-symlink", "symlink", CONTAINED,
      "a directory of the layer replaced by a symlink, then written through",
      lands="{host}/pwned")
def _(host):
    return tar(D("dir"), F("dir/a", b"a"), L("dir", host), F("dir/pwned", b"x"))


@case("lower-directory-replaced-by-symlink", "symlink", CONTAINED,
      "a directory of the snapshot below replaced by a symlink, then written through",
      lands="{host}/pwned")
def _(host):
    return tar(L("d", host), F("d/pwned", b"x"))


@case("lower-absolute-symlink", "symlink", CONTAINED,
      "writing through the snapshot below's absolute symlink", lands="{host}/pwned")
def _(host):
    return tar(F("hostlink/pwned", b"x"))


@case("lower-relative-symlink", "symlink", CONTAINED,
      "writing through the snapshot below's climbing symlink", lands="{host}/pwned")
def _(host):
    return tar(F("uplink/pwned", b"x"))


@case("symlink-loop", "symlink", INVALID, "a/x through a -> b -> a: too many levels",
      stage=DRY_RUN)
def _(host):
    return tar(FIRST, L("loop1", "loop2"), L("loop2", "loop1"), F("loop1/x", b"x"))


@case("symlink-self-loop", "symlink", INVALID, "self -> self, then self/x",
      stage=DRY_RUN)
def _(host):
    return tar(FIRST, L("self", "self"), F("self/x", b"x"))


@case("symlink-loop-final-name", "symlink", CONTAINED,
      "a loop is never followed at the final name: the entry replaces the symlink",
      lands="loop1")
def _(host):
    return tar(L("loop1", "loop2"), L("loop2", "loop1"), F("loop1", b"x"))


@case("symlink-to-file-then-write", "symlink", INVALID,
      "a symlink to a file of the snapshot below, then a name under it: not a directory",
      stage=DRY_RUN)
def _(host):
    return tar(FIRST, L("f", "/etc/passwd"), F("f/x", b"x"))


@case("symlink-long-target", "symlink", INVALID, "a symlink target of 4,096 bytes")
def _(host):
    return tar(FIRST, L("s", "t/" * 2048))


# hardlinks

@case("hardlink-dotdot", "hardlink", INVALID, "a hardlink target climbing above the root")
def _(host):
    return tar(FIRST, H("h", "../outside"))


@case("hardlink-absolute-in-snapshot", "hardlink", CONTAINED,
      "/etc/passwd as a target is the snapshot's etc/passwd", lands="stolen")
def _(host):
    return tar(H("stolen", "/etc/passwd"))


@case("hardlink-absolute-host", "hardlink", INVALID,
      "the host canary's absolute path: not a file of the snapshot",
      stage=DRY_RUN)
def _(host):
    return tar(FIRST, H("stolen", host + "/canary"))


@case("hardlink-through-symlinked-directory", "hardlink", INVALID,
      "target through a symlink to the host directory: resolved inside, nothing there",
      stage=DRY_RUN)
def _(host):
    return tar(FIRST, L("s", host), H("stolen", "s/canary"))


@case("hardlink-through-lower-symlink", "hardlink", INVALID,
      "target through the snapshot below's symlink to the host: nothing there",
      stage=DRY_RUN)
def _(host):
    return tar(FIRST, H("stolen", "hostlink/canary"))


@case("hardlink-through-symlink-inside", "hardlink", CONTAINED,
      "target through a symlink to a directory of the snapshot: linked", lands="h")
def _(host):
    return tar(L("s", "etc"), H("h", "s/passwd"))


@case("hardlink-to-directory", "hardlink", INVALID, "a hardlink to a directory",
      stage=DRY_RUN)
def _(host):
    return tar(FIRST, H("h", "etc"))


@case("hardlink-to-missing", "hardlink", INVALID, "a hardlink to nothing",
      stage=DRY_RUN)
def _(host):
    return tar(FIRST, H("h", "no/such/file"))


# whiteouts and opaque markers

@case("whiteout-of-dotdot", "whiteout", INVALID, ".wh.. would delete the parent")
def _(host):
    return tar(FIRST, D("d"), F("d/.wh..", b""))


@case("whiteout-of-nothing", "whiteout", INVALID, ".wh. names no entry")
def _(host):
    return tar(FIRST, F("d/.wh.", b""))


@case("whiteout-climbing", "whiteout", INVALID, "../.wh.x climbs")
def _(host):
    return tar(FIRST, F("../.wh.x", b""))


@case("opaque-at-root", "whiteout", CONTAINED,
      ".wh..wh..opq at the root: native removes what is below; overlayfs ignores the "
      "opaque xattr on the upper root, so the lower entries stay visible (as with containerd)")
def _(host):
    return tar(F("kept", b"k"), OPQ(""))


@case("opaque-in-whiteouted-directory", "whiteout", CONTAINED,
      "an opaque marker in a directory the layer deleted: nothing to hide")
def _(host):
    return tar(W("d"), OPQ("d"), W("d/keep"))


@case("whiteout-of-own-entry", "whiteout", CONTAINED,
      "a whiteout of a name the same layer writes, before and after it", lands="again")
def _(host):
    return tar(F("x", b"x"), W("x"), W("again"), F("again", b"a"))


@case("opaque-under-a-file", "whiteout", CONTAINED,
      "an opaque marker under a regular file: nothing to hide")
def _(host):
    return tar(OPQ("etc/passwd"), W("afile/x"))


@case("opaque-through-host-symlink", "whiteout", CONTAINED,
      "opaque and whiteout through a symlink to the host: resolved inside")
def _(host):
    return tar(L("s", host), OPQ("s"), W("s/canary"), W("hostlink/canary"), OPQ("uplink"))


@case("opaque-marker-as-directory", "whiteout", CONTAINED,
      "a .wh..wh..opq directory with content: AUFS metadata, skipped")
def _(host):
    return tar(D(".wh..wh..opq"), F(".wh..wh..opq/x", b"x"), D("e"), D("e/.wh..wh..plnk"))


# xattrs

@case("xattr-overlay-opaque", "xattr", CONTAINED,
      "trusted.overlay.opaque in a PAX record: not set (it would hide d/keep)",
      forged_xattrs=("d", ["trusted.overlay.opaque"]))
def _(host):
    return tar(D("d", xattrs={"trusted.overlay.opaque": "y"}))


@case("xattr-overlay-redirect", "xattr", CONTAINED,
      "trusted.overlay.redirect and user.overlay.opaque: not set",
      forged_xattrs=("r", ["trusted.overlay.redirect", "user.overlay.opaque"]))
def _(host):
    return tar(D("r", xattrs={"trusted.overlay.redirect": "/etc",
                              "user.overlay.opaque": "y"}))


@case("xattr-security", "xattr", CONTAINED,
      "security.capability on a file: applied, as containerd applies it", lands="ping")
def _(host):
    capability = "\x01\x00\x00\x02\x00\x20\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"
    return tar(F("ping", b"ping", 0o755, xattrs={"security.capability": capability}))


# special files

@case("device-nodes", "special", CONTAINED, "char and block devices: made, as root does")
def _(host):
    return tar(D("dev"), DEV("dev/null", tarfile.CHRTYPE, 1, 3),
               DEV("dev/sda", tarfile.BLKTYPE, 8, 0))


@case("char-device-0-0", "special", INVALID,
      "a 0/0 char device, overlayfs' whiteout form, over a file of the snapshot below: a "
      "deliberate deviation (containerd makes a device on native, a deletion in an overlay "
      "upper, and fails half-way with EPERM through an overlay mount)")
def _(host):
    return tar(FIRST, DEV("etc/hosts", tarfile.CHRTYPE, 0, 0))


@case("fifo", "special", CONTAINED, "a named pipe")
def _(host):
    return tar((_info("pipe", tarfile.FIFOTYPE, 0o600), None))


@case("setuid-setgid", "special", CONTAINED, "mode bits kept, as containerd keeps them",
      lands="suid")
def _(host):
    return tar(F("suid", b"s", 0o4755), F("sgid", b"g", 0o2755), D("sticky", 0o1777))


@case("unknown-entry-type", "special", INVALID, "tar type V: not a layer's")
def _(host):
    return tar(FIRST, (_info("weird", b"V"), None))


# names

@case("name-4096-bytes", "names", INVALID, "a name of 4,096 bytes (PATH_MAX)")
def _(host):
    return tar(FIRST, F("a/" * 2047 + "bb", b"x"))


@case("component-256-bytes", "names", INVALID, "a component of 256 bytes (NAME_MAX + 1)")
def _(host):
    return tar(FIRST, F("n" * 256, b"x"))


@case("component-255-bytes", "names", CONTAINED, "a component of 255 bytes: the limit",
      lands="n" * 255)
def _(host):
    return tar(F("n" * 255, b"x"))


@case("resolved-path-too-long", "names", INVALID,
      "a 4,080-byte name: under PATH_MAX alone, over it under the snapshot's root",
      stage=DRY_RUN)
def _(host):
    return tar(FIRST, F(("b" * 200 + "/") * 20 + "c" * 60, b"x"))


@case("name-with-newline", "names", CONTAINED, "a newline is a legal byte of a name",
      lands="new\nline")
def _(host):
    return tar(F("new\nline", b"x"))


# duplicates

@case("same-name-twice", "duplicates", CONTAINED, "the later entry wins", lands="twice")
def _(host):
    return tar(F("twice", b"1"), F("twice", b"2"))


@case("file-then-directory", "duplicates", CONTAINED, "the directory replaces the file",
      lands="fd/x")
def _(host):
    return tar(F("fd", b"1"), D("fd"), F("fd/x", b"x"))


@case("directory-then-file", "duplicates", CONTAINED, "the file replaces the directory",
      lands="df")
def _(host):
    return tar(D("df"), F("df/x", b"x"), F("df", b"2"))


@case("under-a-lower-file", "duplicates", INVALID,
      "afile/b where the snapshot below has afile as a regular file",
      stage=DRY_RUN)
def _(host):
    return tar(FIRST, F("afile/b", b"x"))


@case("lower-file-replaced-by-directory", "duplicates", CONTAINED,
      "afile made a directory first, then written under", lands="afile/b")
def _(host):
    return tar(D("afile"), F("afile/b", b"x"))


# archives

@case("empty-tar", "archive", CONTAINED, "only the end-of-archive blocks: nothing to do")
def _(host):
    return END


@case("empty-file", "archive", INVALID,
      "zero bytes: refused as not a tar (containerd reads it as an empty layer)")
def _(host):
    return b""


@case("not-a-tar", "archive", INVALID, "text")
def _(host):
    return b"this is not a tar archive\n" * 40


@case("zero-length-file", "archive", CONTAINED, "a regular file of 0 bytes", lands="empty")
def _(host):
    return tar(F("empty", b""))


@case("truncated-in-data", "archive", INVALID, "the archive ends inside a file's data")
def _(host):
    return tar(FIRST, F("big", b"d" * 5000))[:2048 + 512 * 3]


@case("truncated-in-header", "archive", INVALID, "the archive ends inside a header")
def _(host):
    whole = tar(FIRST, F("second", b"s"), fmt=tarfile.USTAR_FORMAT)
    return whole[:1024 + 300]


@case("size-longer-than-archive", "archive", INVALID,
      "a size field of 1 MiB in an archive of a few blocks")
def _(host):
    return with_size_field(ustar_header("lies", 10), MIB) + _padded(b"short data") + END


@case("size-field-huge", "archive", INVALID,
      "a base-256 size field of 2**60 bytes in a small archive (reading it must not loop)")
def _(host):
    header = bytearray(ustar_header("huge", 10))
    header[124:136] = b"\x80" + (2 ** 60).to_bytes(11, "big")
    return _checksummed(header) + _padded(b"short data") + END


@case("sparse-size-field-huge", "archive", INVALID,
      "an old GNU sparse member whose stored size is 2**60 bytes")
def _(host):
    header = bytearray(_info("sparse", tarfile.GNUTYPE_SPARSE, size=10).tobuf(
        format=tarfile.GNU_FORMAT))
    header[386:410] = b"%011o\0%011o\0" % (0, 10)  # one sparse extent: 10 bytes at 0
    header[483:495] = b"%011o\0" % 10                # the file's real size
    header[124:136] = b"\x80" + (2 ** 60).to_bytes(11, "big")
    return _checksummed(header) + _padded(b"short data") + END


@case("size-swallows-a-header", "archive", INVALID,
      "the size field covers the next header; what follows is no header")
def _(host):
    second = ustar_header("second", 600) + _padded(b"s" * 600)
    return (with_size_field(ustar_header("lies", 10), 1024) + _padded(b"short data")
            + second + END)


@case("size-shorter-than-data", "archive", INVALID,
      "the size field stops inside the data: the rest is read as a header")
def _(host):
    return (with_size_field(ustar_header("lies", 2000), 10) + _padded(b"L" * 2000) + END)


@case("garbage-after-entry", "archive", INVALID,
      "a damaged header after a good entry (Python's tarfile would stop there silently)")
def _(host):
    return tar(FIRST, fmt=tarfile.USTAR_FORMAT)[:1024] + b"\xff" * 512 + END


@case("huge-pax-header", "archive", INVALID,
      "a 2 MiB PAX header (read whole into memory): over Go's 1 MiB limit")
def _(host):
    return gzip.compress(tar(FIRST, F("x", b"x", pax={"comment": "c" * (2 * MIB)})), mtime=0)


@case("gzip-bomb-over-free-space", "size", PRECONDITION,
      "%d MiB of zeros in about 100 KiB of gzip: more than the free space"
      % (BOMB_FILE_SIZE // MIB),
      message=r"holds %d bytes of files, more than the \d+ bytes free" % BOMB_FILE_SIZE)
def _(host):
    return gzip_bomb(BOMB_FILE_SIZE)


@case("gzip-bomb-over-limit", "size", INVALID,
      "the same bomb with max_expanded_size=%d MiB: stopped while reading"
      % (BOMB_LIMIT // MIB), max_expanded_size=BOMB_LIMIT)
def _(host):
    return gzip_bomb(BOMB_FILE_SIZE)


# -- files and the table ---------------------------------------------------------


def build_corpus(directory, host):
    """Write every case's layer into `directory`: {case name: path}."""
    paths = {}
    for each in CASES:
        path = os.path.join(directory, each.name + ".tar")
        with open(path, "wb") as out:
            out.write(each.build(host))
        paths[each.name] = path
    return paths


def markdown():
    """docs/hostile-layers.md: the table of CASES."""
    counts = collections.Counter(
        "refused" if each.outcome != CONTAINED else "contained" for each in CASES)
    lines = [
        "# Hostile and odd layers",
        "",
        "<!-- Generated by `python -m tests.unit.hostile_tars --markdown`; edit CASES in",
        "tests/unit/hostile_tars.py, not this file. -->",
        "",
        "What snaplab does with each layer of the test corpus (tests/unit/hostile_tars.py,",
        "applied by tests/unit/test_hostile_layers.py to native and overlay snapshots on a",
        "loop ext4 (overlay written into its upper directory, and through a mount) and btrfs",
        "snapshots on a loop btrfs, with apply_layer and apply_layers).",
        "The rule is containerd's pkg/archive: a layer is either **refused** (the error",
        "class, nothing left: apply_layer scans the whole layer, then dry-runs it against",
        "the snapshot, before the first write; apply_layers writes it in one pass into a",
        "snapshot of its own, refuses it where the dry run would, and removes that snapshot)",
        "or **contained** (applied; a leading `/` is dropped and symlinks resolve inside the",
        "snapshot, so every write stays in it).",
        "",
        "The snapshot below each case holds: " + "; ".join(
            "`%s` (%s)" % (name, what) for name, what in PARENT_FILES.items()) + ".",
        "",
        "%d layers: %d refused, %d contained." % (len(CASES), counts["refused"],
                                                  counts["contained"]),
        "",
        "Refused by: *scan* is inspect_layer, the layer alone; *dry run* is the pass against",
        "the snapshot below (apply_layers: the write, at the same entry); *free space*",
        "compares the layer's files with the free space of the filesystem that receives them.",
        "",
        "| Layer | Kind | Outcome | Refused by | Why |",
        "|---|---|---|---|---|",
    ]
    for each in CASES:
        outcome = "contained" if each.outcome == CONTAINED else "refused: " + each.outcome
        lines.append("| `%s` | %s | %s | %s | %s |" % (
            each.name, each.group, outcome, each.stage, each.why.replace("|", "\\|")))
    return "\n".join(lines) + "\n"


def main(argv):
    if argv != ["--markdown"]:
        sys.stderr.write("usage: python -m tests.unit.hostile_tars --markdown\n")
        return 2
    sys.stdout.write(markdown())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
