"""The zfs backend through the CLI (`python -m snaplab --backend zfs`) on a
real pool: kernel OpenZFS where the kernel has it, else zfs-fuse (the
conformance harness makes the pool, a loop device over a sparse file, and
starts the daemon if none runs). Read-only views, usage without the parent,
nothing left after rm and cleanup, the refusal elsewhere, and a Commit whose
metadata COMMIT fails leaves a usable active snapshot. Everything lives in a
`snaplab-test-zfs-backend-*` scratch directory, undone also when a test fails.
"""

import errno
import os
import shutil
import subprocess
import tempfile

import pytest

from snaplab import errors
from snaplab import mount as mountlib
from tests.integration.cli_lab import Lab, write_file

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="loop devices and mounts need root")


def _zfs(*argv):
    return subprocess.run(["zfs", *argv], check=True, capture_output=True,
                          text=True).stdout.strip()


@pytest.fixture(scope="module")
def zfs_fs(loop_filesystem):
    """One pool for the module (making it and stopping zfs-fuse take seconds)."""
    with loop_filesystem("zfs", "snaplab-test-zfs-backend-") as fs:
        yield fs


@pytest.fixture
def lab(zfs_fs):
    """A Lab whose root is a fresh dataset of the pool."""
    base = tempfile.mkdtemp(prefix="lab-", dir=zfs_fs.mountpoint)
    lab = Lab("zfs", base)
    lab.dataset = zfs_fs.make_root_dataset(lab.root)
    yield lab
    for target in lab.targets:
        mountlib.unmount_all(target)
    assert zfs_fs.release_under(base) == []
    shutil.rmtree(base)


def datasets(lab):
    return _zfs("list", "-H", "-o", "name", "-r", "-t", "all", lab.dataset).splitlines()


def test_prepare_mount_commit_view_usage_rm(lab):
    target = lab.target()
    lab.run("prepare", "base-work")
    lab.run("mount", target, "base-work")
    try:
        write_file(os.path.join(target, "hello.bin"), 1 << 20)
    finally:
        lab.run("umount", target)
    lab.run("commit", "base", "base-work")
    assert lab.dataset + "/1@snapshot" in datasets(lab)

    lab.run("view", "look", "base")
    lab.run("mount", target, "look")
    try:
        assert os.path.getsize(os.path.join(target, "hello.bin")) == 1 << 20
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
    assert usage["base"]["size"] >= 1 << 20 and usage["base"]["inodes"] == -1
    assert usage["look"]["size"] == 0
    assert 5000 <= usage["work"]["size"] < 1 << 20, "the parent's file is not counted"

    assert len(datasets(lab)) == 1 + 3 + 1  # root, base, look, work, base@snapshot
    lab.run("rm", "work", "look")
    lab.run("rm", "base")
    lab.run("cleanup")
    assert datasets(lab) == [lab.dataset]


def test_refusal_where_the_root_is_not_a_dataset(lab):
    plain = Lab("zfs", lab.base)
    plain.root = os.path.join(lab.base, "plain")
    proc = plain.run("prepare", "a", code=errors.FailedPrecondition.exit_code)
    assert "not a ZFS dataset" in proc.stderr and "zfs create" in proc.stderr
    assert not os.path.exists(plain.root)


def test_commit_whose_metadata_fails_leaves_the_snapshot_active(lab, monkeypatch):
    """Commit makes the @snapshot (and, on zfs-fuse, unmounts the dataset)
    before the metadata COMMIT: if that COMMIT fails (injected here), the
    snapshot is still active and must be usable and committable again."""
    from snaplab import backends

    with backends.open_snapshotter(lab.root, "zfs") as sn:
        mounts = sn.prepare("work", "")
        real = sn.store._retry_locked

        def failing_commit(call):
            if getattr(call, "__code__", None) and "COMMIT" in call.__code__.co_consts:
                raise errors.SnapshotError("injected: the metadata COMMIT failed")
            return real(call)

        monkeypatch.setattr(sn.store, "_retry_locked", failing_commit)
        with pytest.raises(errors.SnapshotError, match="injected"):
            sn.commit("done", "work")
        monkeypatch.setattr(sn.store, "_retry_locked", real)
        assert sn.stat("work").kind.name == "ACTIVE"
        assert lab.dataset + "/1@snapshot" not in datasets(lab)
        target = lab.target()
        with_mounts = sn.mounts("work")
        assert with_mounts == mounts
        mountlib.mount_all(with_mounts, target)
        try:
            write_file(os.path.join(target, "after.bin"), 100)
        finally:
            mountlib.unmount_all(target)
        sn.commit("done", "work")  # and it commits now
        assert lab.dataset + "/1@snapshot" in datasets(lab)
        sn.remove("done")
