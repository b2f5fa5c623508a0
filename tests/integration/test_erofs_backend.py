"""The erofs backend beyond the conformance cases: its refusals, and a
Commit whose mkfs.erofs fails.

Real roots on the host's filesystem. The kernel without erofs is the one
stand-in (this kernel has it); a node without erofs-utils is a PATH
without mkfs.erofs, and a failing mkfs.erofs a script that exits 1.
"""

import os

import pytest

from snaplab import errors, kernel, mount as mountlib, open_snapshotter

pytestmark = pytest.mark.skipif(not kernel.filesystem_in_kernel("erofs"),
                                reason="this kernel has no erofs")


@pytest.fixture
def root(tmp_path):
    return str(tmp_path / "root")


def _path_with(tmp_path, monkeypatch, mkfs_script=None):
    """PATH = a directory holding only `mkfs_script` as mkfs.erofs (or nothing)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    if mkfs_script is not None:
        tool = bin_dir / "mkfs.erofs"
        tool.write_text(mkfs_script)
        tool.chmod(0o755)
    monkeypatch.setenv("PATH", str(bin_dir))


def test_without_mkfs_erofs_the_root_is_refused_and_not_made(root, tmp_path, monkeypatch):
    _path_with(tmp_path, monkeypatch)
    with pytest.raises(errors.FailedPrecondition, match="no mkfs.erofs on PATH.*erofs-utils"):
        open_snapshotter(root, "erofs")
    assert not os.path.exists(root)


def test_a_kernel_without_erofs_is_refused_with_its_release(root, monkeypatch):
    in_kernel = kernel.filesystem_in_kernel
    monkeypatch.setattr(kernel, "filesystem_in_kernel",
                        lambda name: name != "erofs" and in_kernel(name))
    with pytest.raises(errors.FailedPrecondition,
                       match="kernel %s has no erofs.*modprobe erofs" % kernel.release()):
        open_snapshotter(root, "erofs")
    assert not os.path.exists(root)


def test_a_failed_mkfs_leaves_the_snapshot_active_and_whole(root, tmp_path, monkeypatch):
    with open_snapshotter(root, "erofs") as sn:
        mounts = sn.prepare("layer", "")
    upper = mounts[0].source
    with open(os.path.join(upper, "file"), "wb") as data:
        data.write(b"x" * 8192)
    _path_with(tmp_path, monkeypatch, "#!/bin/sh\necho 'disk on fire' >&2\nexit 1\n")
    with open_snapshotter(root, "erofs") as sn:
        with pytest.raises(errors.FailedPrecondition, match="exit 1.*disk on fire"):
            sn.commit("committed", "layer")
        assert sn.stat("layer").kind.name == "ACTIVE"
        with pytest.raises(errors.NotFound):
            sn.stat("committed")
        assert sorted(os.listdir(os.path.dirname(upper))) == ["fs", "work"]
        assert os.listdir(upper) == ["file"]
        assert sn.doctor() == []
    monkeypatch.undo()
    with open_snapshotter(root, "erofs") as sn:
        sn.commit("committed", "layer")
        sn.view("view", "committed")
        try:
            with open(os.path.join(upper, "file"), "rb") as data:  # through the image
                assert data.read() == b"x" * 8192
        finally:
            sn.remove("view")
            sn.remove("committed")
    assert mountlib.mounts_under(root) == []
