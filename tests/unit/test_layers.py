"""snaplab.layers on real snapshots: tars built here, applied to native and
overlay snapshots in a temp directory, and the result read back through a
real mount of a view -- what a container would see.

Hostile layers are applied with a sentinel directory beside the snapshotter
root; whatever the layer does, the sentinel (and the host's /etc/passwd) must
look exactly as before.
"""

import contextlib
import gzip
import hashlib
import io
import json
import os
import shutil
import stat
import subprocess
import tarfile
import tempfile
import threading

import pytest

from snaplab import errors, layers, open_snapshotter
from snaplab.layers import archive, stream
from snaplab.mount import mount_all, unmount_all

needs_root = pytest.mark.skipif(os.geteuid() != 0,
                                reason="needs root (chown, mknod, trusted.* xattrs, mount)")

MTIME = 1_600_000_000
HAS_ZSTD = archive._stdlib_zstd() is not None or shutil.which("zstd") is not None


# -- building layers ---------------------------------------------------------


def _info(name, kind, mode, uid=0, gid=0, mtime=MTIME, xattrs=None):
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.uid, info.gid = uid, gid
    info.mtime = mtime
    if xattrs:
        info.pax_headers = {"SCHILY.xattr." + k: v for k, v in xattrs.items()}
    return info


def F(name, data=b"", mode=0o644, uid=0, gid=0, mtime=MTIME, xattrs=None):
    info = _info(name, tarfile.REGTYPE, mode, uid, gid, mtime, xattrs)
    info.size = len(data)
    return info, data


def D(name, mode=0o755, uid=0, gid=0):
    return _info(name, tarfile.DIRTYPE, mode, uid, gid), None


def L(name, target, uid=0, gid=0):
    info = _info(name, tarfile.SYMTYPE, 0o777, uid, gid)
    info.linkname = target
    return info, None


def H(name, target):
    info = _info(name, tarfile.LNKTYPE, 0o644)
    info.linkname = target
    return info, None


def W(name):
    """The whiteout of `name`."""
    directory, base = os.path.split(name)
    return F(os.path.join(directory, ".wh." + base))


def OPQ(directory):
    return F(os.path.join(directory, ".wh..wh..opq"))


def DEV(name, kind, major, minor):
    info = _info(name, tarfile.CHRTYPE if kind == "chr" else tarfile.BLKTYPE, 0o666)
    info.devmajor, info.devminor = major, minor
    return info, None


def FIFO(name):
    return _info(name, tarfile.FIFOTYPE, 0o600), None


def tar_bytes(*entries):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in entries:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buffer.getvalue()


def compress(data, compression):
    if compression == "gzip":
        return gzip.compress(data, mtime=0)
    if compression == "zstd":
        return subprocess.run(["zstd", "-q", "-c"], input=data, stdout=subprocess.PIPE,
                              check=True).stdout
    return data


def write_layer(path, *entries, compression=None):
    path.write_bytes(compress(tar_bytes(*entries), compression))
    return str(path)


# -- reading snapshots back ------------------------------------------------------


def describe(root):
    """{relative path: what it is}, without following symlinks, plus the
    hardlink groups (sets of paths sharing an inode)."""
    tree, inodes = {}, {}

    def walk(directory, prefix):
        for entry in sorted(os.scandir(directory), key=lambda e: e.name):
            path, name = entry.path, prefix + entry.name
            st = os.lstat(path)
            mode = stat.S_IMODE(st.st_mode)
            if stat.S_ISDIR(st.st_mode):
                tree[name + "/"] = ("dir", mode, st.st_uid, st.st_gid)
                walk(path, name + "/")
                continue
            if stat.S_ISLNK(st.st_mode):
                tree[name] = ("symlink", os.readlink(path))
            elif stat.S_ISREG(st.st_mode):
                with open(path, "rb") as f:
                    tree[name] = ("file", f.read(), mode, st.st_uid, st.st_gid)
                inodes.setdefault(st.st_ino, set()).add(name)
            elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                kind = "chr" if stat.S_ISCHR(st.st_mode) else "blk"
                tree[name] = (kind, os.major(st.st_rdev), os.minor(st.st_rdev), mode)
            elif stat.S_ISFIFO(st.st_mode):
                tree[name] = ("fifo", mode)
    walk(root, "")
    return tree, sorted(sorted(group) for group in inodes.values() if len(group) > 1)


@contextlib.contextmanager
def mounted_view(sn, name):
    """A read-only view of committed `name`, mounted on a temp directory."""
    key = "check-view-of-" + name
    mounts = sn.view(key, name)
    target = tempfile.mkdtemp(prefix="snaplab-test-layers-")
    try:
        mount_all(mounts, target)
        try:
            yield target
        finally:
            unmount_all(target)
    finally:
        os.rmdir(target)
        sn.remove(key)


def view_of(sn, name):
    with mounted_view(sn, name) as target:
        return describe(target)


@pytest.fixture(params=["native", "overlay"])
def backend(request):
    return request.param


@pytest.fixture
def sn(tmp_path, backend):
    with open_snapshotter(str(tmp_path / "root"), backend) as snapshotter:
        yield snapshotter


def unpack_by_hand(sn, tar_paths, direct):
    """apply_layers' steps with apply_layer(direct=...): the mounted path too."""
    parent = ""
    for index, path in enumerate(tar_paths):
        key = "by-hand-%d" % index
        sn.prepare(key, parent)
        layers.apply_layer(sn, key, path, direct=direct)
        parent = "layer-%d" % index
        sn.commit(parent, key)
    return parent


# -- pure functions ----------------------------------------------------------------


def test_chain_ids_follow_oci_identity():
    a, b, c = ("sha256:" + hashlib.sha256(x).hexdigest() for x in (b"a", b"b", b"c"))
    ab = "sha256:" + hashlib.sha256((a + " " + b).encode()).hexdigest()
    abc = "sha256:" + hashlib.sha256((ab + " " + c).encode()).hexdigest()
    assert layers.chain_ids([a, b, c]) == [a, ab, abc]
    assert layers.chain_ids([]) == []


@pytest.mark.parametrize("name, cleaned", [
    ("etc/passwd", "etc/passwd"), ("/etc/abs", "etc/abs"), ("./a/./b/", "a/b"),
    ("a/../b", "b"), ("//x", "x"), ("./", ""), ("/", ""), (".wh...", ".wh..."),
])
def test_names_are_cleaned_relative_to_the_root(name, cleaned):
    assert layers.clean_name(name) == cleaned


@pytest.mark.parametrize("name", ["..", "../escape", "a/../../escape", "/../x", "x/../..",
                                  "bad\x00name"])
def test_names_that_climb_out_are_refused(name):
    with pytest.raises(errors.InvalidArgument):
        layers.clean_name(name)


@pytest.mark.parametrize("name, meaning", [
    ("d/.wh..wh..opq", ("opaque", "d")), (".wh..wh..opq", ("opaque", "")),
    ("d/.wh.x", ("whiteout", "d", "x")), (".wh.x", ("whiteout", "", "x")),
    (".wh..wh.plnk", ("meta", ".wh..wh.plnk")), (".wh..wh.plnk/1.2", ("meta", ".wh..wh.plnk/1.2")),
    ("d/x", None), (".wh.../x", None),
])
def test_whiteout_names(name, meaning):
    assert layers.whiteout_of(name) == meaning


@pytest.mark.parametrize("name", [".wh.", "d/.wh.", "d/.wh..", ".wh..."])
def test_whiteouts_of_nothing_or_of_the_parent_are_refused(name):
    with pytest.raises(errors.InvalidArgument, match="whiteout"):
        layers.whiteout_of(name)


def test_compression_is_detected_by_magic_bytes():
    assert layers.detect_compression(b"\x1f\x8b\x08\x00") == "gzip"
    assert layers.detect_compression(b"\x28\xb5\x2f\xfd") == "zstd"
    assert layers.detect_compression(b"etc/") == "none"


# -- reading layers ------------------------------------------------------------------


@pytest.mark.parametrize("compression", [None, "gzip",
                                         pytest.param("zstd", marks=pytest.mark.skipif(
                                             not HAS_ZSTD, reason="no zstd module or program"))])
def test_diff_id_is_the_sha256_of_the_uncompressed_tar(tmp_path, compression):
    entries = (D("etc"), F("etc/hostname", b"box\n"))
    plain = tar_bytes(*entries)
    # The name says nothing: a gzip layer called .tar, a plain one called .gz.
    path = write_layer(tmp_path / "layer.tar.gz", *entries, compression=compression)
    scan = layers.inspect_layer(path)
    assert scan.diff_id == "sha256:" + hashlib.sha256(plain).hexdigest()
    assert scan.compression == (compression or "none")
    assert scan.size == len(plain) and scan.entries == 2


def test_zstd_without_module_or_program_is_not_implemented(tmp_path, monkeypatch):
    path = tmp_path / "layer"
    path.write_bytes(b"\x28\xb5\x2f\xfd" + b"\0" * 64)
    monkeypatch.setattr(archive, "_stdlib_zstd", lambda: None)
    monkeypatch.setattr(archive.shutil, "which", lambda name: None)
    with pytest.raises(errors.NotImplemented, match="install zstd"):
        layers.inspect_layer(str(path))


@pytest.mark.parametrize("content", [
    b"this is not a tar at all" * 40,
    gzip.compress(tar_bytes(F("x", os.urandom(4000))))[:2000],
    gzip.compress(tar_bytes(F("x", b"data")))[:-8],
], ids=["not a tar", "truncated gzip", "gzip without its trailer"])
def test_unreadable_layers_are_invalid(tmp_path, content):
    path = tmp_path / "broken"
    path.write_bytes(content)
    with pytest.raises(errors.InvalidArgument, match="not a readable tar"):
        layers.inspect_layer(str(path))


def test_a_missing_layer_is_not_found(tmp_path):
    with pytest.raises(errors.NotFound):
        layers.inspect_layer(str(tmp_path / "nope.tar"))


# -- applying chains ---------------------------------------------------------------------


def chain(tmp_path):
    """Three layers with everything a layer can hold; bottom first."""
    base = write_layer(
        tmp_path / "l1.tar",
        D("etc"), F("etc/keep", b"keep"), F("etc/gone", b"gone"),
        D("etc/app", 0o750, 1000, 1000), F("etc/app/conf", b"v1", 0o640, 1000, 1000),
        D("d"), F("d/old", b"old"), D("d/sub"), F("d/sub/old2", b"old2"),
        D("usr"), D("usr/bin"), F("usr/bin/tool", b"tool", 0o4755),
        D("usr/lib"), F("usr/lib/libx", b"x"), L("lib", "usr/lib"),
        D("wiped"), F("wiped/a", b"a"))
    middle = write_layer(
        tmp_path / "l2.tar",
        W("etc/gone"),
        D("d", 0o700), OPQ("d"), F("d/new", b"new"),          # opaque: d/old, d/sub hidden
        F("etc/app/conf", b"v2", 0o600, 1000, 1000),
        F("lib/liby", b"y"),                                  # through lib -> usr/lib
        F("/abs/file", b"abs"),                               # leading / dropped
        W("wiped"),
        compression="gzip")
    top = write_layer(
        tmp_path / "l3.tar",
        W("etc"), D("etc", 0o711), F("etc/only", b"only"),    # etc replaced as a whole
        D("a"), F("a/f", b"f", 0o600), H("a/g", "a/f"),
        DEV("dev/null", "chr", 1, 3), DEV("dev/loop9", "blk", 7, 9), FIFO("run/fifo"),
        F("usr/lib/libz", b"z", 0o644, 1234, 5678, xattrs={"user.note": "hello"}),
        compression="zstd" if HAS_ZSTD else "gzip")
    return [base, middle, top]


EXPECTED_VIEW = {
    "a/": ("dir", 0o755, 0, 0),
    "a/f": ("file", b"f", 0o600, 0, 0),
    "a/g": ("file", b"f", 0o600, 0, 0),
    "abs/": ("dir", 0o755, 0, 0),
    "abs/file": ("file", b"abs", 0o644, 0, 0),
    "d/": ("dir", 0o700, 0, 0),
    "d/new": ("file", b"new", 0o644, 0, 0),
    "dev/": ("dir", 0o755, 0, 0),
    "dev/loop9": ("blk", 7, 9, 0o666),
    "dev/null": ("chr", 1, 3, 0o666),
    "etc/": ("dir", 0o711, 0, 0),
    "etc/only": ("file", b"only", 0o644, 0, 0),
    "lib": ("symlink", "usr/lib"),
    "run/": ("dir", 0o755, 0, 0),
    "run/fifo": ("fifo", 0o600),
    "usr/": ("dir", 0o755, 0, 0),
    "usr/bin/": ("dir", 0o755, 0, 0),
    "usr/bin/tool": ("file", b"tool", 0o4755, 0, 0),
    "usr/lib/": ("dir", 0o755, 0, 0),
    "usr/lib/libx": ("file", b"x", 0o644, 0, 0),
    "usr/lib/liby": ("file", b"y", 0o644, 0, 0),
    "usr/lib/libz": ("file", b"z", 0o644, 1234, 5678),
}


@needs_root
def test_a_chain_shows_what_a_plain_filesystem_would(tmp_path, sn):
    results = layers.apply_layers(sn, chain(tmp_path))
    assert [r.applied for r in results] == [True, True, True]
    assert [r.chain_id for r in results] == layers.chain_ids([r.diff_id for r in results])
    with mounted_view(sn, results[-1].chain_id) as root:
        tree, hardlinks = describe(root)
        assert os.getxattr(os.path.join(root, "usr/lib/libz"), "user.note") == b"hello"
        assert os.stat(os.path.join(root, "usr/bin/tool")).st_mtime_ns == MTIME * 10**9
    assert tree == EXPECTED_VIEW
    assert hardlinks == [["a/f", "a/g"]]
    # The layers in between look as they should too.
    assert view_of(sn, results[0].chain_id)[0]["etc/app/conf"] == \
        ("file", b"v1", 0o640, 1000, 1000)
    middle = view_of(sn, results[1].chain_id)[0]
    assert middle["etc/app/conf"] == ("file", b"v2", 0o600, 1000, 1000)
    assert "etc/gone" not in middle and "etc/keep" in middle and "wiped/" not in middle
    assert sorted(k for k in middle if k.startswith("d/")) == ["d/", "d/new"]


@needs_root
@pytest.mark.parametrize("direct", [True, False], ids=["direct", "mounted"])
def test_apply_layer_direct_and_mounted_agree(tmp_path, sn, direct):
    top = unpack_by_hand(sn, chain(tmp_path), direct)
    tree, hardlinks = view_of(sn, top)
    assert tree == EXPECTED_VIEW
    assert hardlinks == [["a/f", "a/g"]]


@needs_root
def test_overlay_upper_dirs_hold_overlay_whiteouts(tmp_path):
    with open_snapshotter(str(tmp_path / "root"), "overlay") as sn:
        results = layers.apply_layers(sn, chain(tmp_path))
        uppers = os.path.join(str(tmp_path / "root"), "snapshots")
        middle = os.path.join(uppers, "2", "fs")  # ids follow the order of the layers
        gone = os.lstat(os.path.join(middle, "etc", "gone"))
        assert stat.S_ISCHR(gone.st_mode) and gone.st_rdev == 0
        assert os.getxattr(os.path.join(middle, "d"), "trusted.overlay.opaque") == b"y"
        assert not os.path.exists(os.path.join(middle, "d", ".wh..wh..opq"))
        # etc/app was made in the upper dir with the lower directory's attributes.
        app = os.stat(os.path.join(middle, "etc", "app"))
        assert (stat.S_IMODE(app.st_mode), app.st_uid, app.st_gid) == (0o750, 1000, 1000)
        top = os.path.join(uppers, "3", "fs")
        # .wh.etc then etc/: a new opaque directory over the whited-out one.
        assert os.getxattr(os.path.join(top, "etc"), "trusted.overlay.opaque") == b"y"
        assert sn.stat(results[-1].chain_id).parent == results[1].chain_id


@needs_root
def test_chains_are_idempotent_by_chain_id(tmp_path, sn):
    tars = chain(tmp_path)
    first = layers.apply_layers(sn, tars[:1])
    assert [r.applied for r in first] == [True]
    again = layers.apply_layers(sn, tars)
    assert [r.applied for r in again] == [False, True, True]
    before = sn.list()
    third = layers.apply_layers(sn, tars)
    assert [r.applied for r in third] == [False, False, False]
    assert [r.chain_id for r in third] == [r.chain_id for r in again]
    assert sn.list() == before
    plan = layers.plan_layers(sn, tars)
    assert all(layer.present for layer in plan)


@needs_root
def test_layers_carry_containerds_labels(tmp_path, sn):
    tars = chain(tmp_path)[:2]
    bottom, top = layers.apply_layers(sn, tars, labels={"org.example/image": "demo"})
    assert sn.stat(bottom.chain_id).labels == {
        "org.example/image": "demo",
        "containerd.io/snapshot.ref": bottom.chain_id,
        "containerd.io/snapshot/diff-id": bottom.diff_id}
    info = sn.stat(top.chain_id)
    assert info.parent == bottom.chain_id
    assert info.labels["containerd.io/snapshot/parent-chain-id"] == bottom.chain_id
    assert info.labels["containerd.io/snapshot/diff-id"] == top.diff_id


@needs_root
def test_hardlink_to_a_file_of_a_lower_layer(tmp_path, sn):
    base = write_layer(tmp_path / "a.tar", D("bin"), F("bin/busybox", b"bb", 0o755))
    links = write_layer(tmp_path / "b.tar", H("bin/sh", "bin/busybox"), H("/bin/ls", "/bin/busybox"))
    assert layers.inspect_layer(links).links_outside_layer
    results = layers.apply_layers(sn, [base, links])
    tree, hardlinks = view_of(sn, results[-1].chain_id)
    assert tree["bin/sh"] == ("file", b"bb", 0o755, 0, 0)
    assert hardlinks == [["bin/busybox", "bin/ls", "bin/sh"]]


@needs_root
def test_a_layer_failing_half_way_leaves_the_layers_below_and_nothing_else(tmp_path, sn):
    good = write_layer(tmp_path / "good.tar", F("ok", b"ok"))
    # Scans fine (the target could be in the snapshot below); apply_layers
    # writes "first" into the snapshot it prepared, refuses "second" there
    # and removes that snapshot.
    bad = write_layer(tmp_path / "bad.tar", F("first", b"1"), H("second", "no/such/file"))
    with pytest.raises(errors.InvalidArgument, match="not a file of this layer"):
        layers.apply_layers(sn, [good, bad])
    names = [info.name for info in sn.list()]
    assert names == [layers.inspect_layer(good).diff_id]


@needs_root
def test_apply_layer_needs_an_active_snapshot(tmp_path, sn):
    tar = write_layer(tmp_path / "x.tar", F("x", b"x"))
    sn.prepare("work", "")
    layers.apply_layer(sn, "work", tar)
    sn.commit("done", "work")
    sn.view("look", "done")
    for key in ("done", "look"):
        with pytest.raises(errors.FailedPrecondition, match="active"):
            layers.apply_layer(sn, key, tar)
    with pytest.raises(errors.NotFound):
        layers.apply_layer(sn, "missing", tar)


@needs_root
def test_apply_layer_to_directory_is_the_naive_apply(tmp_path):
    target = tmp_path / "dir"
    (target / "old").mkdir(parents=True)
    (target / "old" / "f").write_bytes(b"f")
    (target / "gone").write_bytes(b"g")
    tar = write_layer(tmp_path / "x.tar", W("gone"), OPQ("old"), F("old/new", b"n"))
    layers.apply_layer_to_directory(tar, str(target))
    assert sorted(describe(str(target))[0]) == ["old/", "old/new"]


# -- hostile layers ------------------------------------------------------------


def snapshot_of_files(top):
    """Everything about a tree that a stray write could change."""
    seen = {}
    for directory, dirnames, filenames in os.walk(top):
        for name in [""] + dirnames + filenames:
            path = os.path.join(directory, name)
            st = os.lstat(path)
            content = None
            if stat.S_ISREG(st.st_mode):
                with open(path, "rb") as f:
                    content = f.read()
            seen[path] = (st.st_mode, st.st_uid, st.st_gid, st.st_nlink, st.st_size,
                          st.st_mtime_ns, content, sorted(os.listxattr(path, follow_symlinks=False)))
    return seen


@pytest.fixture
def sentinel(tmp_path):
    """A directory beside the snapshotter root that no layer may touch."""
    path = tmp_path / "sentinel"
    path.mkdir()
    (path / "inside").write_bytes(b"precious")
    os.chmod(str(path), 0o755)
    return str(path)


@pytest.fixture
def deep_sn(tmp_path, backend):
    """A root a few directories down, so that "../../.." from a snapshot lands
    in tmp_path (where the sentinel is) if anything followed it on the host."""
    with open_snapshotter(str(tmp_path / "a" / "b" / "root"), backend) as snapshotter:
        yield snapshotter


REFUSED = {
    "dotdot name": lambda s: [F("../escape", b"x")],
    "dotdot inside a name": lambda s: [D("a"), F("a/../../escape", b"x")],
    "absolute dotdot": lambda s: [F("/../escape", b"x")],
    "deep dotdot": lambda s: [F("a/b/../../../../../../sentinel/inside", b"x")],
    "hardlink climbing out": lambda s: [H("x", "../outside")],
    "hardlink to the root": lambda s: [H("x", "/")],
    "whiteout of the parent": lambda s: [D("d"), F("d/.wh..", b"")],
    "whiteout of the directory itself": lambda s: [F("d/.wh.", b"")],
    "unknown entry type": lambda s: [(_info("weird", b"V", 0o644), None)],
}


@needs_root
@pytest.mark.parametrize("case", sorted(REFUSED))
def test_hostile_layers_are_refused_before_anything_is_written(tmp_path, deep_sn, sentinel,
                                                               case):
    before = snapshot_of_files(sentinel)
    passwd = os.lstat("/etc/passwd")
    # A harmless first entry: it must not be written either.
    tar = write_layer(tmp_path / "hostile.tar", F("first", b"1"), *REFUSED[case](sentinel))
    with pytest.raises(errors.InvalidArgument):
        layers.apply_layers(deep_sn, [tar])
    assert deep_sn.list() == []  # refused by the scan: no snapshot was even prepared
    with pytest.raises(errors.InvalidArgument):
        layers.apply_layer_to_directory(tar, str(tmp_path / "plain"))
    assert not (tmp_path / "plain").exists()
    assert snapshot_of_files(sentinel) == before
    assert os.lstat("/etc/passwd") == passwd
    assert not os.path.lexists(str(tmp_path / "a" / "escape"))
    assert not os.path.lexists(str(tmp_path / "escape"))


# Layers that are legitimate but aim at the host: the rule is containerd's
# (a leading / is dropped, symlinks resolve inside the snapshot), so they
# land inside the snapshot, at the path given with each ({sentinel} is the
# sentinel's absolute path without its leading /).
CONTAINED = {
    "absolute name": (lambda s: [F("/etc/abs", b"x")], "etc/abs"),
    "symlink to / then a file under it": (
        lambda s: [L("link", "/"), D("link/etc"), F("link/etc/x", b"x")], "etc/x"),
    "symlink to the sentinel then a file under it": (
        lambda s: [L("link", s), F("link/pwned", b"x")], "{sentinel}/pwned"),
    "symlink climbing out then a file under it": (
        lambda s: [L("up", "../../../../../../../.."), F("up/pwned", b"x")], "pwned"),
    "chained symlinks climbing out": (
        lambda s: [L("one", "two/../.."), L("two", "../three"), D("three"),
                   F("one/sentinel/inside", b"x")], "sentinel/inside"),
    "symlink replaced by a file": (
        lambda s: [L("s", s + "/inside"), F("s", b"x")], "s"),
    "symlink replaced by a directory": (
        lambda s: [L("s", s), D("s", 0o777), F("s/inside", b"x")], "s/inside"),
    "hardlink to the host's passwd": (
        lambda s: [D("etc"), F("etc/passwd", b"root:x:0:0::/root:/bin/sh\n"),
                   H("stolen", "/etc/passwd")], "stolen"),
    "hardlink to a symlink pointing out": (
        lambda s: [L("s", "/etc/passwd"), H("h", "s"), F("marker", b"x")], "marker"),
    "owner and mode on a symlink pointing out": (
        lambda s: [L("s", s + "/inside", uid=4242, gid=4242), F("marker", b"x")], "marker"),
    "whiteout and opaque through a symlink pointing out": (
        lambda s: [L("link", s), W("link/inside"), OPQ("link"), F("marker", b"x")], "marker"),
    "a name under a whiteout-looking directory": (
        lambda s: [F(".wh.../x", b"x")], ".wh.../x"),
}


@needs_root
@pytest.mark.parametrize("case", sorted(CONTAINED))
def test_layers_aiming_outside_stay_inside_the_snapshot(tmp_path, deep_sn, sentinel, case):
    entries, landed = CONTAINED[case]
    landed = landed.format(sentinel=sentinel.lstrip("/"))
    before = snapshot_of_files(sentinel)
    passwd = os.lstat("/etc/passwd")
    tar = write_layer(tmp_path / "aiming.tar", *entries(sentinel))
    result = layers.apply_layers(deep_sn, [tar])
    tree, _ = view_of(deep_sn, result[0].chain_id)
    assert tree[landed][0] == "file" and tree[landed][1] != b"precious"
    assert snapshot_of_files(sentinel) == before
    assert os.lstat("/etc/passwd") == passwd
    for stray in ("/etc/abs", "/etc/x", "/pwned"):
        assert not os.path.lexists(stray)
    if case == "hardlink to a symlink pointing out":
        assert tree["h"] == ("symlink", "/etc/passwd")  # the link itself, not its target


@needs_root
def test_paths_through_a_symlink_of_a_lower_layer_stay_inside(tmp_path, deep_sn, sentinel):
    before = snapshot_of_files(sentinel)
    lower = write_layer(tmp_path / "lower.tar", L("evil", sentinel),
                        L("up", "../../../../../.."), D("keep"), F("keep/me", b"me"))
    upper = write_layer(tmp_path / "upper.tar",
                        F("evil/pwned", b"x"), W("evil/inside"), OPQ("evil"),
                        F("up/pwned", b"x"), F("up/keep/me2", b"2"), W("up/keep/gone"))
    results = layers.apply_layers(deep_sn, [lower, upper])
    tree, _ = view_of(deep_sn, results[-1].chain_id)
    inside = sentinel.lstrip("/")
    assert tree[inside + "/pwned"][0] == "file" and inside + "/inside" not in tree
    assert tree["pwned"][0] == "file"
    assert tree["keep/me"][0] == "file" and tree["keep/me2"][0] == "file"
    assert tree["evil"] == ("symlink", sentinel)
    assert snapshot_of_files(sentinel) == before


# -- the CLI verbs ---------------------------------------------------------------------


@needs_root
def test_cli_apply_layers_and_apply_layer(tmp_path, backend, capsys):
    from snaplab import cli
    root = str(tmp_path / "root")
    tars = chain(tmp_path)[:2]
    common = ["--root", root, "--backend", backend]
    out = io.StringIO()
    assert cli.run(common + ["apply-layers", "--json", "--label", "a=b"] + tars, out=out) == 0
    first = json.loads(out.getvalue())
    assert [layer["applied"] for layer in first["layers"]] == [True, True]
    assert first["chain_id"] == first["layers"][-1]["chain_id"]

    out = io.StringIO()
    assert cli.run(common + ["apply-layers"] + tars, out=out) == 0
    lines = out.getvalue().splitlines()
    assert lines[0].split() == ["LAYER", "DIFF-ID", "CHAIN-ID", "STATUS"]
    assert [line.split()[-1] for line in lines[1:]] == ["present", "present"]

    extra = write_layer(tmp_path / "extra.tar", F("extra", b"x"))
    assert cli.run(common + ["prepare", "work", first["chain_id"]], out=io.StringIO()) == 0
    out = io.StringIO()
    assert cli.run(common + ["apply-layer", "work", extra], out=out) == 0
    assert out.getvalue().strip() == layers.inspect_layer(extra).diff_id

    hostile = write_layer(tmp_path / "hostile.tar", F("../x", b"x"))
    assert cli.main(common + ["apply-layers", hostile]) == errors.InvalidArgument.exit_code
    assert "climbs out of the snapshot" in capsys.readouterr().err
    for diff_ids in ([], ["--diff-id", "sha256:" + "0" * 64]):  # scanned; one pass
        assert cli.main(common + ["apply-layers"] + diff_ids + [hostile]) == \
            errors.InvalidArgument.exit_code
        assert "climbs out of the snapshot" in capsys.readouterr().err

    given = []
    for diff_id in given_diff_ids([extra]):
        given += ["--diff-id", diff_id]
    out = io.StringIO()
    assert cli.run(common + ["apply-layers", "--json"] + given + [extra], out=out) == 0
    assert json.loads(out.getvalue())["layers"][0]["diff_id"] == given[1]


# -- one pass: the DiffID read while writing, the reader threads, the copies -----------


@needs_root
@pytest.mark.parametrize("compression", [None, "gzip"])
def test_a_layer_changed_after_its_scan_commits_nothing(tmp_path, sn, compression):
    """apply_layers writes a planned layer in one pass into its own snapshot:
    a layer whose bytes changed since the plan (same size, so every header
    still reads) has another DiffID, and nothing is committed."""
    path = tmp_path / "layer.tar"
    write_layer(path, F("a", b"A" * 5000), F("b", b"B" * 5000), compression=compression)
    plan = layers.plan_layers(sn, [str(path)])
    write_layer(path, F("a", b"A" * 5000), F("b", b"C" * 5000), compression=compression)
    with pytest.raises(errors.InvalidArgument, match="changed"):
        layers.apply_layers(sn, [str(path)], plan=plan)
    assert list(sn.list()) == []


@needs_root
@pytest.mark.parametrize("compression", ["gzip", pytest.param("zstd", marks=pytest.mark.skipif(
    not HAS_ZSTD, reason="no zstd module or program"))])
def test_a_refused_compressed_layer_stops_its_reader_thread(tmp_path, sn, compression):
    """The decompressing thread ends with the apply, also when a refusal
    stops the reading early, far before the end of the stream."""
    bad = write_layer(tmp_path / "bad.tar", F("first", os.urandom(3 << 20)),
                      H("second", "no/such/file"), F("big", os.urandom(12 << 20)),
                      compression=compression)
    with pytest.raises(errors.InvalidArgument, match="not a file of this layer"):
        layers.apply_layers(sn, [bad])
    assert [t.name for t in threading.enumerate() if t.name.startswith("layer-")] == []
    assert list(sn.list()) == []


@needs_root
def test_uncompressed_file_data_is_copied_without_copy_file_range_too(tmp_path, sn,
                                                                       monkeypatch):
    """Where the kernel refuses copy_file_range between the two files,
    sendfile copies; both give the bytes of the layer, at any size and
    offset (a file of several chunks among small ones)."""
    entries = [F("small", b"s" * 700), F("big", os.urandom((1 << 20) * 3 + 12345)),
               F("empty"), F("last", b"tail")]
    path = write_layer(tmp_path / "layer.tar", *entries)
    wanted = {info.name: data for info, data in entries}
    for use_copy_file_range in (True, False):
        monkeypatch.setitem(stream._RANGE_COPY, "copy_file_range", use_copy_file_range)
        (applied,) = layers.apply_layers(sn, [path])
        tree, _links = view_of(sn, applied.chain_id)
        assert {name: what[1] for name, what in tree.items()} == wanted
        sn.remove(applied.chain_id)


@needs_root
def test_many_directories_leave_no_descriptor_open(tmp_path, sn):
    """The writer keeps directory descriptors (at most a few hundred, all
    closed at the end): a layer of more directories than that, with a
    directory replaced by a symlink half-way, is written whole and right."""
    entries = []
    for index in range(600):
        entries += [D("d%03d" % index), F("d%03d/f" % index, b"%d" % index)]
    entries += [L("d001", "d002"), F("d001/through-link", b"x")]
    path = write_layer(tmp_path / "layer.tar", *entries)
    before = sorted(os.listdir("/proc/self/fd"))
    (applied,) = layers.apply_layers(sn, [path])
    assert sorted(os.listdir("/proc/self/fd")) == before
    tree, _links = view_of(sn, applied.chain_id)
    assert tree["d599/f"][1] == b"599"
    assert tree["d001"] == ("symlink", "d002")
    assert tree["d002/through-link"][1] == b"x"


@pytest.mark.parametrize("compression", [None, "gzip"])
def test_a_layer_changed_between_scan_and_write_writes_nothing(tmp_path, compression):
    """apply_layer hashes the layer once, while writing: the write checks
    first that the file is the one its scan checked, and writes nothing
    otherwise."""
    from snaplab.layers.apply import write_scanned
    path = tmp_path / "layer.tar"
    write_layer(path, F("a", b"A" * 5000), compression=compression)
    scan = layers.inspect_layer(str(path), hashing=False)
    assert scan.diff_id is None
    write_layer(path, F("a", b"B" * 5000), compression=compression)
    target = tmp_path / "target"
    target.mkdir()
    with pytest.raises(errors.InvalidArgument, match="changed since it was scanned"):
        write_scanned(scan, str(target))
    assert os.listdir(target) == []


# -- DiffIDs given: one read per layer, the digest checked before the commit ------------


def given_diff_ids(paths):
    """The DiffIDs as an image config lists them: sha256 of the uncompressed
    tar, worked out here without snaplab."""
    ids = []
    for path in paths:
        with open(path, "rb") as f:
            data = f.read()
        if data.startswith(b"\x1f\x8b"):
            data = gzip.decompress(data)
        elif data.startswith(b"\x28\xb5\x2f\xfd"):
            data = subprocess.run(["zstd", "-d", "-c", "-q"], input=data, check=True,
                                  stdout=subprocess.PIPE).stdout
        ids.append("sha256:" + hashlib.sha256(data).hexdigest())
    return ids


@needs_root
def test_a_chain_with_its_diff_ids_is_the_chain_scanned(tmp_path, backend):
    """Written in one pass each (DiffIDs given), a chain of plain, gzip and
    zstd layers with whiteouts, an opaque directory and links is committed
    under the same chainIDs, with the same contents, as when scanned first."""
    tars = chain(tmp_path)
    results = {}
    for way, diff_ids in (("scanned", None), ("given", given_diff_ids(tars))):
        with open_snapshotter(str(tmp_path / way), backend) as snapshotter:
            applied = layers.apply_layers(snapshotter, tars, diff_ids=diff_ids)
            assert all(layer.applied for layer in applied)
            results[way] = ([layer.chain_id for layer in applied],
                            view_of(snapshotter, applied[-1].chain_id))
    assert results["given"] == results["scanned"]


@needs_root
def test_a_wrong_diff_id_commits_nothing(tmp_path, sn):
    path = write_layer(tmp_path / "layer.tar", F("a", b"A" * 3000), compression="gzip")
    (right,) = given_diff_ids([path])
    wrong = "sha256:" + "0" * 64
    with pytest.raises(errors.InvalidArgument, match="expected " + wrong):
        layers.apply_layers(sn, [path], diff_ids=[wrong])
    assert list(sn.list()) == []
    (applied,) = layers.apply_layers(sn, [path], diff_ids=[right])
    assert applied.chain_id == right


@needs_root
def test_layers_present_by_diff_id_are_not_read(tmp_path, sn):
    path = write_layer(tmp_path / "layer.tar", F("a", b"a"))
    diff_ids = given_diff_ids([path])
    layers.apply_layers(sn, [path], diff_ids=diff_ids)
    os.unlink(path)
    (again,) = layers.apply_layers(sn, [path], diff_ids=diff_ids)
    assert not again.applied


@needs_root
def test_a_hardlink_to_a_lower_file_in_one_pass_falls_back_to_the_mount(tmp_path, sn):
    base = write_layer(tmp_path / "a.tar", D("bin"), F("bin/busybox", b"bb", 0o755))
    links = write_layer(tmp_path / "b.tar", F("bin/new", b"n"), H("bin/sh", "bin/busybox"))
    results = layers.apply_layers(sn, [base, links], diff_ids=given_diff_ids([base, links]))
    tree, hardlinks = view_of(sn, results[-1].chain_id)
    assert tree["bin/sh"] == ("file", b"bb", 0o755, 0, 0)
    assert tree["bin/new"][1] == b"n"
    assert hardlinks == [["bin/busybox", "bin/sh"]]
    assert len(sn.list()) == 2  # the abandoned one-pass snapshot is gone


@pytest.mark.parametrize("diff_ids", [["sha256:abc"], ["md5:" + "0" * 64],
                                      ["sha256:" + "0" * 64] * 2, ["sha256:" + "G" * 64]])
def test_diff_ids_that_are_not_one_sha256_per_layer_are_refused(tmp_path, diff_ids):
    with open_snapshotter(str(tmp_path / "root"), "native") as snapshotter:
        with pytest.raises(errors.InvalidArgument):
            layers.apply_layers(snapshotter, [str(tmp_path / "x.tar")], diff_ids=diff_ids)
