"""Every layer of the hostile corpus (tests/unit/hostile_tars.py) applied to
real snapshots: native and overlay snapshotters whose root lives in a
sandbox directory on a 64 MiB loop ext4, beside a "host" directory of canary
files that no layer may reach.

For each layer and backend: apply_layer to an active snapshot whose parent
holds hostile_tars.PARENT_FILES, then apply_layers (the commit path) of the
parent and the layer; each must end as the corpus table says (refused with
its error class, or contained). Whatever happens, nothing outside the
snapshotter root changes (a listing of the sandbox without the root, with
contents, modes, times and xattrs, is the same after), nothing appears at a
few host paths the corpus aims at, a refused layer leaves the active
snapshot byte-identical and apply_layers leaves no snapshot of its own.
"""

import contextlib
import gzip
import hashlib
import os
import shutil
import stat
import subprocess
import tarfile
import tempfile
import zlib

import pytest

from snaplab import errors, labels, layers, open_snapshotter
from snaplab.layers import unpack
from snaplab.mount import mount_all, mounts_under, unmount_all
from snaplab.types import Kind
from tests.unit import hostile_tars
from tests.unit.hostile_tars import CASES, CONTAINED

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="needs root (loop ext4, mount, mknod, trusted.* xattrs)")

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# Small loop filesystems: the gzip bomb's file is bigger than what is free.
FILESYSTEM_MIB = {"ext4": 64, "btrfs": 128}
# (backend, filesystem, direct): direct=False makes apply_layer mount the
# snapshot and write through the kernel's overlay instead of into its upper.
BACKENDS = [("native", "ext4", True), ("overlay", "ext4", True), ("overlay", "ext4", False),
            ("btrfs", "btrfs", True)]
# Host paths the corpus's names would reach if a leading "/" or ".." were
# followed on the host instead of inside the snapshot.
# overlayfs' own xattrs, which a layer must never set (written out here, not
# taken from snaplab.layers, so that the test does not trust what it tests).
OVERLAY_XATTRS = ("trusted.overlay.", "user.overlay.")
HOST_PATHS = ["/escape", "/pwned", "/stolen", "/etc/x", "/etc/escape", "/outside", "/canary"]


# -- reading trees -----------------------------------------------------------------


def listing(top, skip=None):
    """{path relative to top: what a write could change}, symlinks not
    followed, `skip` (an absolute path below top) left out."""
    seen = {}

    def walk(directory):
        for entry in os.scandir(directory):
            if entry.path == skip:
                continue
            st = os.lstat(entry.path)
            if stat.S_ISREG(st.st_mode):
                with open(entry.path, "rb") as f:
                    content = hashlib.sha256(f.read()).hexdigest()
            elif stat.S_ISLNK(st.st_mode):
                content = os.readlink(entry.path)
            else:
                content = st.st_rdev
            xattrs = {name: os.getxattr(entry.path, name, follow_symlinks=False)
                      for name in os.listxattr(entry.path, follow_symlinks=False)}
            seen[os.path.relpath(entry.path, top)] = (
                st.st_mode, st.st_uid, st.st_gid, st.st_nlink, st.st_size, st.st_mtime_ns,
                content, xattrs)
            if stat.S_ISDIR(st.st_mode):
                walk(entry.path)
    walk(top)
    return seen


def host_paths():
    return {path: os.path.lexists(path) for path in HOST_PATHS}


@contextlib.contextmanager
def writable_directory(sn, key, scratch):
    """The directory the layer is written into (overlay upper or bind
    source) and the lower directories below it (overlay only); any other
    snapshot (btrfs) mounted on a directory of `scratch` meanwhile."""
    mounts = sn.mounts(key)
    overlay = unpack._overlay_upper(mounts)
    source = unpack._bind_source(mounts)
    if overlay is not None:
        yield overlay
    elif source is not None:
        yield source, []
    else:
        target = tempfile.mkdtemp(prefix="mounted-", dir=scratch)
        mount_all(mounts, target)
        try:
            yield target, []
        finally:
            unmount_all(target)
            os.rmdir(target)


# -- the sandbox ---------------------------------------------------------------------


class Sandbox:
    """The host directory and the snapshotter root side by side on a loop
    filesystem, the corpus built in `corpus_dir`; start() commits the
    parent layer with a snapshotter opened on the root."""

    def __init__(self, mountpoint, corpus_dir):
        self.scratch = corpus_dir
        self.top = os.path.join(mountpoint, "sandbox")
        self.host = os.path.join(self.top, "host")
        self.root = os.path.join(self.top, "root")
        os.makedirs(os.path.join(self.host, "sub"))
        for name, data in (("canary", b"precious"), ("sub/canary2", b"precious too")):
            with open(os.path.join(self.host, name), "wb") as f:
                f.write(data)
        os.symlink("/etc/passwd", os.path.join(self.host, "passwd-link"))
        self.parent_tar = os.path.join(corpus_dir, "parent.tar")
        with open(self.parent_tar, "wb") as f:
            f.write(hostile_tars.parent_layer(self.host))
        self.tars = hostile_tars.build_corpus(corpus_dir, self.host)
        self.sn = self.parent = self.direct = None

    def start(self, sn, direct):
        self.sn, self.direct = sn, direct
        self.parent = layers.apply_layers(sn, [self.parent_tar])[-1].chain_id

    def outside(self):
        """Everything of the sandbox but the snapshotter root."""
        return listing(self.top, skip=self.root)


@pytest.fixture(scope="module", params=BACKENDS, ids=[
    "%s-on-%s%s" % (backend, fs, "" if direct else "-mounted") for backend, fs, direct in BACKENDS])
def sandbox(request):
    from conformance.filesystems import FilesystemPool, FilesystemUnavailable
    backend, filesystem, direct = request.param
    base = tempfile.mkdtemp(prefix="snaplab-test-hostile-")
    pool = None
    try:
        pool = FilesystemPool(base, sizes_mib=FILESYSTEM_MIB)
        try:
            fs = pool.get(filesystem)
        except FilesystemUnavailable as unavailable:
            pytest.skip("%s is not available: %s" % (filesystem, unavailable))
        corpus_dir = os.path.join(base, "corpus")
        os.mkdir(corpus_dir)
        sandbox = Sandbox(fs.mountpoint, corpus_dir)
        with open_snapshotter(sandbox.root, backend) as sn:
            sandbox.start(sn, direct)
            yield sandbox
    finally:
        try:
            for where in mounts_under(base):  # a snapshot a failed test left mounted
                unmount_all(where)
        finally:
            if pool is not None:
                pool.destroy()  # unmounts and detaches the loop filesystem
            shutil.rmtree(base)


# -- the corpus, applied -------------------------------------------------------------


def expect(case, call, stage=None):
    """Run call(); the outcome must be the case's. Returns call()'s result.
    The case's message is the one of the stage that refuses it: `stage`
    None (the scan, the dry run, the free-space check), or the write's
    ("one pass", the class alone)."""
    if case.outcome == CONTAINED:
        return call()
    message = case.options.get("message") if stage is None else None
    with pytest.raises(errors.SnapshotError, match=message) as raised:
        call()
    assert type(raised.value).__name__ == case.outcome, raised.value
    return None


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_hostile_layer(sandbox, case):
    sn, tar = sandbox.sn, sandbox.tars[case.name]
    limit = case.options.get("max_expanded_size")
    outside, on_host = sandbox.outside(), host_paths()

    key = "active on parent for " + case.name
    sn.prepare(key, sandbox.parent)
    try:
        with writable_directory(sn, key, sandbox.scratch) as (writable, lowers):
            before, lowers_before = listing(writable), [listing(lower) for lower in lowers]
        expect(case, lambda: layers.apply_layer(sn, key, tar, direct=sandbox.direct,
                                                max_expanded_size=limit))
        with writable_directory(sn, key, sandbox.scratch) as (writable, lowers):
            after = listing(writable)
            lowers_after = [listing(lower) for lower in lowers]
        if case.outcome != CONTAINED:
            assert after == before, "a refused layer changed the active snapshot"
        if "lands" in case.options:
            landed = case.options["lands"].format(host=sandbox.host.lstrip("/"))
            assert landed in after and landed not in before
        if "forged_xattrs" in case.options:
            name, forged = case.options["forged_xattrs"]
            assert all(xattr.startswith(OVERLAY_XATTRS) for xattr in forged)
            assert not set(forged) & set(after[name][7])
        assert lowers_after == lowers_before
    finally:
        sn.remove(key)
    assert sandbox.outside() == outside
    assert host_paths() == on_host

    names = sorted(info.name for info in sn.list())
    # Scanned first, then (DiffIDs given, as containerd has them) in one pass.
    for diff_ids in (None, [diff_id_of(sandbox.parent_tar), diff_id_of(tar)]):
        applied = expect(case, lambda: layers.apply_layers(
            sn, [sandbox.parent_tar, tar], max_expanded_size=limit, diff_ids=diff_ids),
                         None if diff_ids is None else "one pass")
        try:
            if case.outcome == CONTAINED:
                assert [layer.chain_id for layer in applied][0] == sandbox.parent
                assert sn.stat(applied[-1].chain_id).kind == Kind.COMMITTED
            else:  # no chainID for it, no extract-* snapshot left
                assert sorted(info.name for info in sn.list()) == names
        finally:
            if applied and applied[-1].applied:
                sn.remove(applied[-1].chain_id)
        assert sandbox.outside() == outside
        assert host_paths() == on_host


_DIFF_IDS = {}


def diff_id_of(path):
    """sha256 of the uncompressed tar, as an image config lists it, computed
    here without snaplab; a layer that does not decompress gets a made-up one
    (it must be refused whatever it claims)."""
    if path not in _DIFF_IDS:
        digest = hashlib.sha256()
        with open(path, "rb") as raw:
            magic = raw.read(4)
        try:
            if magic.startswith(b"\x1f\x8b"):
                with gzip.open(path, "rb") as stream:
                    for chunk in iter(lambda: stream.read(1 << 20), b""):
                        digest.update(chunk)
            elif magic.startswith(b"\x28\xb5\x2f\xfd"):
                digest.update(subprocess.run(["zstd", "-d", "-c", "-q", path], check=True,
                                             stdout=subprocess.PIPE).stdout)
            else:
                with open(path, "rb") as stream:
                    digest.update(stream.read())
            _DIFF_IDS[path] = "sha256:" + digest.hexdigest()
        except (OSError, EOFError, zlib.error, subprocess.CalledProcessError):
            _DIFF_IDS[path] = "sha256:" + "0" * 64
    return _DIFF_IDS[path]


# -- what the corpus and the table promise ---------------------------------------------


def test_the_corpus_is_big_and_named_once():
    names = [case.name for case in CASES]
    assert len(names) >= 40 and len(set(names)) == len(names)
    assert {case.outcome for case in CASES} == {CONTAINED, "InvalidArgument",
                                               "FailedPrecondition"}


def test_the_committed_table_is_the_generated_one():
    with open(os.path.join(REPO, "docs", "hostile-layers.md"), encoding="utf-8") as f:
        committed = f.read()
    assert committed == hostile_tars.markdown(), (
        "docs/hostile-layers.md is stale: python -m tests.unit.hostile_tars --markdown "
        "> docs/hostile-layers.md")


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_each_refusal_comes_from_its_stage(tmp_path, case):
    """SCAN cases are refused by inspect_layer alone; the others pass it
    (their refusal needs the snapshot below or its filesystem)."""
    tar = tmp_path / "layer.tar"
    tar.write_bytes(case.build(str(tmp_path / "host")))
    limit = case.options.get("max_expanded_size")
    if case.stage == hostile_tars.SCAN:
        with pytest.raises(getattr(errors, case.outcome)):
            layers.inspect_layer(str(tar), limit)
    else:
        layers.inspect_layer(str(tar), limit)


def test_more_entries_than_free_inodes_is_refused_before_writing(tmp_path):
    """A 4 MiB ext4 has about a thousand inodes; a layer of 3,000 empty
    files would fill them half-way through."""
    from conformance.filesystems import FilesystemPool, FilesystemUnavailable
    tar = tmp_path / "many.tar.gz"
    tar.write_bytes(gzip.compress(hostile_tars.tar(
        *[hostile_tars.F("f%d" % i) for i in range(3000)], fmt=tarfile.USTAR_FORMAT)))
    base = tempfile.mkdtemp(prefix="snaplab-test-hostile-inodes-")
    pool = FilesystemPool(base, sizes_mib={"ext4": 4})
    try:
        try:
            fs = pool.get("ext4")
        except FilesystemUnavailable as unavailable:
            pytest.skip("ext4 is not available: %s" % unavailable)
        target = os.path.join(fs.mountpoint, "target")
        os.mkdir(target)
        free_inodes = os.statvfs(target).f_favail
        assert free_inodes < 3000
        with pytest.raises(errors.FailedPrecondition, match="3000 entries, more than the %d "
                           "inodes free" % free_inodes):
            layers.apply_layer_to_directory(str(tar), target)
        assert os.listdir(target) == []
    finally:
        pool.destroy()
        shutil.rmtree(base)


def test_max_expanded_size_stops_reading_early(tmp_path):
    bomb = tmp_path / "bomb.tar.gz"
    bomb.write_bytes(hostile_tars.gzip_bomb(hostile_tars.BOMB_FILE_SIZE))
    with pytest.raises(errors.InvalidArgument, match="expands to more than %d bytes"
                       % hostile_tars.BOMB_LIMIT):
        layers.inspect_layer(str(bomb), max_expanded_size=hostile_tars.BOMB_LIMIT)
    small = layers.inspect_layer(str(bomb), max_expanded_size=hostile_tars.BOMB_FILE_SIZE * 2)
    assert small.files_size == hostile_tars.BOMB_FILE_SIZE


@pytest.mark.parametrize("key", ["a\nb", "tab\there", "cr\r", "esc\x1b[2J", "del\x7f",
                                 "nul\x00"])
def test_keys_with_control_characters_are_refused(tmp_path, key):
    with pytest.raises(errors.InvalidArgument):
        labels.validate_key(key)
    with open_snapshotter(str(tmp_path / "root"), "native") as sn:
        with pytest.raises(errors.InvalidArgument):
            sn.prepare(key, "")
        assert sn.list() == []


@pytest.mark.parametrize("key", ["plain", "with space", "ünïcode/ключ",
                                 "extract-1-a sha256:x"])
def test_keys_without_control_characters_are_taken(key):
    assert labels.validate_key(key) == key


@pytest.mark.parametrize("name", ["component-256-bytes", "name-4096-bytes",
                                  "resolved-path-too-long", "symlink-loop"])
def test_the_cli_exits_invalid_argument_for_names_too_long_or_looping(tmp_path, capsys, name):
    from snaplab import cli
    each = {case.name: case for case in CASES}[name]
    tar = tmp_path / "layer.tar"
    tar.write_bytes(each.build(str(tmp_path / "host")))
    common = ["--root", str(tmp_path / "root"), "--backend", "native"]
    assert cli.main(common + ["prepare", "work"]) == 0
    refused = errors.InvalidArgument.exit_code
    assert cli.main(common + ["apply-layer", "work", str(tar)]) == refused
    assert cli.main(common + ["apply-layers", str(tar)]) == refused
    capsys.readouterr()


def test_the_cli_refuses_a_key_with_a_newline(tmp_path, capsys):
    from snaplab import cli
    common = ["--root", str(tmp_path / "root"), "--backend", "native"]
    assert cli.main(common + ["prepare", "two\nlines"]) == errors.InvalidArgument.exit_code
    assert "control character U+000A" in capsys.readouterr().err


def test_a_key_made_before_the_rule_can_still_be_looked_up():
    assert labels.validate_existing_key("old\nkey") == "old\nkey"
    with pytest.raises(errors.InvalidArgument):
        labels.validate_existing_key("")
