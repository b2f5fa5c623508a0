"""A filesystem that is 100% full: the verbs that read still work, and so do
the ones that free space (rm, cleanup), which give back the root's reserve
to write their metadata; a verb that needs space fails with ENOSPC named as
such (not "disk I/O error"), and once space is freed everything works again.

native and overlay on an 8 MiB tmpfs, btrfs on a loop btrfs; the filesystem
is filled by a file of our own beside the root, written until ENOSPC.
"""

import os
import subprocess
import sys

import pytest

from snaplab import mount as mountlib

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounts need root")


def snaplab(root, backend, *argv):
    done = subprocess.run([sys.executable, "-m", "snaplab", "--root", root, "--backend",
                           backend, *argv], capture_output=True, text=True)
    return done.returncode, done.stdout, done.stderr


def fill(directory):
    """Write a file in `directory` until the filesystem says ENOSPC; its path."""
    path = os.path.join(directory, "filler")
    chunk = os.urandom(1 << 16)
    with open(path, "wb", buffering=0) as filler:
        try:
            while True:
                filler.write(chunk)
        except OSError as err:
            assert err.errno == 28, err
    # What is left in partial blocks and metadata reserves: a byte at a time.
    with open(path, "ab", buffering=0) as filler:
        try:
            while True:
                filler.write(b"x" * 512)
        except OSError:
            pass
    return path


def check_full_filesystem(place, backend):
    root = os.path.join(place, "root")
    for argv in (["prepare", "a-work"], ["commit", "a", "a-work"], ["prepare", "b", "a"],
                 ["prepare", "c", "a"]):
        code, _out, err = snaplab(root, backend, *argv)
        assert code == 0, (argv, err)
    filler = fill(place)
    try:
        for argv in (["ls"], ["info", "a"], ["usage"], ["doctor"]):
            code, _out, err = snaplab(root, backend, *argv)
            assert code == 0, ("full filesystem", argv, err)
        code, _out, err = snaplab(root, backend, "prepare", "d", "a")
        if code != 0:  # some backends need no new block for a snapshot
            assert "No space left on device" in err and err.count("\n") == 1, err
        code, _out, err = snaplab(root, backend, "rm", "b")
        assert code == 0, ("rm on a full filesystem", err)
        code, _out, err = snaplab(root, backend, "cleanup")
        assert code == 0, ("cleanup on a full filesystem", err)
    finally:
        os.unlink(filler)
    code, out, err = snaplab(root, backend, "prepare", "e", "a")
    assert code == 0, err
    code, out, err = snaplab(root, backend, "doctor")
    assert code == 0, out + err
    assert os.path.exists(os.path.join(root, "reserve"))  # made again


@pytest.mark.parametrize("backend", ["native", "overlay"])
def test_a_full_tmpfs(backend, scratch_dir):
    # in a snaplab-test-* directory: unmounted by scratch_dir whatever
    # happens, and `make leaks` would see it otherwise
    with scratch_dir("snaplab-test-full-") as base:
        place = os.path.join(base, "fs")
        os.mkdir(place)
        mountlib.mount(mountlib.Mount("tmpfs", "tmpfs", options=["size=8m"]), place)
        check_full_filesystem(place, backend)


def test_a_full_btrfs(loop_filesystem):
    with loop_filesystem("btrfs", "snaplab-test-full-") as fs:
        check_full_filesystem(fs.mountpoint, "btrfs")
