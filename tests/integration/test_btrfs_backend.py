"""The btrfs backend through the CLI (`python -m snaplab --backend btrfs`) on a
real loop-mounted btrfs: ctr-style mount lines that mount(8) takes, views
that refuse writes, usage that leaves the parent out, OCI layers with
whiteouts, and no subvolume left after rm and cleanup. Everything lives in a
`snaplab-test-btrfs-*` scratch directory, undone also when a test fails.
"""

import errno
import io
import json
import os
import shlex
import shutil
import subprocess
import tarfile
import tempfile

import pytest

from snaplab import errors
from snaplab import mount as mountlib
from tests.integration.cli_lab import Lab, write_file

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="loop devices and mounts need root"),
    pytest.mark.skipif(shutil.which("mkfs.btrfs") is None, reason="mkfs.btrfs is not installed"),
]

MIB = 1 << 20


def _run(*argv):
    return subprocess.run(argv, check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture
def lab(scratch_dir):
    """A Lab whose root is on a fresh loop btrfs at <scratch>/fs."""
    with scratch_dir("snaplab-test-btrfs-") as base:
        image, fs = os.path.join(base, "btrfs.img"), os.path.join(base, "fs")
        os.mkdir(fs)
        with open(image, "wb") as f:
            f.truncate(256 * MIB)
        _run("mkfs.btrfs", "-q", "-f", image)
        device = _run("losetup", "--find", "--show", image)
        try:
            mountlib.mount(mountlib.Mount("btrfs", device), fs)
        except BaseException:
            _run("losetup", "-d", device)
            raise
        lab = Lab("btrfs", fs)
        lab.device = device
        yield lab  # scratch_dir unmounts and detaches whatever is under base


def subvolumes(lab):
    """Paths (from the top of the btrfs) of every subvolume, as btrfs-progs lists them."""
    listing = _run("btrfs", "subvolume", "list", lab.base)
    return [line.split(" path ", 1)[1] for line in listing.splitlines()]


def test_prepare_mount_commit_view_usage_rm(lab):
    target = lab.target()
    lines = lab.out("prepare", "--target", target, "base-work").splitlines()
    assert len(lines) == 1
    argv = shlex.split(lines[0])
    assert argv[:4] == ["mount", "-t", "btrfs", lab.device] and argv[4] == target
    assert argv[5] == "-o" and argv[6].startswith("subvolid=")
    # ctr prints it for mount(8): run it as printed.
    subprocess.run(argv, check=True)
    try:
        write_file(os.path.join(target, "hello.bin"), 100_000)
    finally:
        lab.run("umount", target)
    lab.run("commit", "base", "base-work")

    lab.run("view", "look", "base")
    lab.run("mount", target, "look")
    try:
        assert os.path.getsize(os.path.join(target, "hello.bin")) == 100_000
        with pytest.raises(OSError) as caught:
            open(os.path.join(target, "new-file"), "w").close()
        assert caught.value.errno == errno.EROFS
    finally:
        lab.run("umount", target)

    lab.run("prepare", "work", "base")
    lab.run("mount", target, "work")
    try:
        write_file(os.path.join(target, "child.bin"), 5000)
    finally:
        lab.run("umount", target)
    usage = {u["key"]: u for u in lab.json("usage")}
    assert usage["base"]["size"] >= 100_000
    assert usage["look"]["size"] == 0 and usage["look"]["inodes"] == 0
    assert usage["work"]["inodes"] == 1, "only child.bin: the parent's file is not counted"
    assert 5000 <= usage["work"]["size"] < 100_000

    assert len(subvolumes(lab)) == 3
    lab.run("rm", "work", "look")
    lab.run("rm", "base")
    lab.run("cleanup")
    assert subvolumes(lab) == []
    assert os.listdir(os.path.join(lab.root, "snapshots")) == []


def _layer(path, entries):
    """A layer tar: name -> bytes (a file), None (a directory)."""
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for name, content in entries.items():
            info = tarfile.TarInfo(name)
            if content is None:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            else:
                info.size, info.mode = len(content), 0o644
                tar.addfile(info, io.BytesIO(content))
    return path


def test_layers_with_whiteouts_on_btrfs(lab):
    bottom = _layer(os.path.join(lab.base, "bottom.tar"), {
        "etc/": None, "etc/keep": b"keep\n", "etc/gone": b"gone\n",
        "opaque/": None, "opaque/hidden": b"hidden\n"})
    top = _layer(os.path.join(lab.base, "top.tar"), {
        "etc/.wh.gone": b"", "opaque/": None, "opaque/.wh..wh..opq": b"",
        "opaque/new": b"new\n"})
    applied = lab.json("apply-layers", bottom, top)["layers"]
    chain_top = applied[-1]["chain_id"]
    lab.run("view", "top-view", chain_top)
    target = lab.target()
    lab.run("mount", target, "top-view")
    try:
        found = sorted(os.path.relpath(os.path.join(d, n), target)
                       for d, dirs, files in os.walk(target) for n in dirs + files)
    finally:
        lab.run("umount", target)
    assert found == ["etc", "etc/keep", "opaque", "opaque/new"]
    # The layers' snapshots are read-only subvolumes, and the bottom one is untouched.
    assert len(subvolumes(lab)) == 3


def test_refusal_on_a_filesystem_that_is_not_btrfs(scratch_dir):
    with scratch_dir("snaplab-test-btrfs-refusal-") as base:
        if mountlib.lookup(base).fstype == "btrfs":
            pytest.skip("the temp directory is itself on btrfs")
        lab = Lab("btrfs", base)
        proc = lab.run("prepare", "a", code=errors.FailedPrecondition.exit_code)
        assert "not btrfs" in proc.stderr and "mkfs.btrfs" in proc.stderr
        assert not os.path.exists(lab.root)


def test_commit_whose_metadata_fails_leaves_the_snapshot_writable(lab, monkeypatch):
    """Commit makes the subvolume read-only before the metadata COMMIT: if that
    COMMIT fails (a full disk, say; injected here), the snapshot is still
    active in the metadata, and its subvolume must be writable again."""
    from snaplab import backends
    from snaplab.backends import btrfs

    with backends.open_snapshotter(lab.root, "btrfs") as sn:
        sn.prepare("work", "")
        real = sn.store._retry_locked

        def failing_commit(call):
            if getattr(call, "__code__", None) and "COMMIT" in call.__code__.co_consts:
                raise errors.SnapshotError("injected: the metadata COMMIT failed")
            return real(call)

        monkeypatch.setattr(sn.store, "_retry_locked", failing_commit)
        with pytest.raises(errors.SnapshotError, match="injected"):
            sn.commit("done", "work")
        monkeypatch.setattr(sn.store, "_retry_locked", real)
        path = os.path.join(lab.root, "snapshots", "1")
        assert not btrfs.is_readonly(path)
        assert sn.stat("work").kind.name == "ACTIVE"
        sn.commit("done", "work")  # and the store is usable again
        assert btrfs.is_readonly(path)
