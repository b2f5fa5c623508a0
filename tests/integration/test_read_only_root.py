"""Read-only means read-only: the verbs that only read write nothing to the
root, and work on a root whose filesystem is mounted read-only.

Each backend gets a root with a chain (committed, active, view) on a real
loop filesystem; the filesystem is then remounted `ro` and every reading
verb runs through the CLI (exit 0, the same output as before the remount).
On the writable mount, the same verbs leave every entry of the root as it
was (names, sizes, mtimes); only the root directory's own mtime may move,
because SQLite makes its -wal/-shm lock files while a reader has the store
open and removes them on close, unless another process has them open. A writing verb on
the read-only root fails with FailedPrecondition (exit 4) in one line.
"""

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="loop devices and mounts need root")

CASES = [("native", "ext4"), ("overlay", "ext4"), ("btrfs", "btrfs"), ("zfs", "zfs")]


def snaplab(root, backend, *argv):
    done = subprocess.run([sys.executable, "-m", "snaplab", "--root", root, "--backend",
                           backend, *argv], capture_output=True, text=True)
    return done.returncode, done.stdout, done.stderr


def ok(root, backend, *argv):
    code, out, err = snaplab(root, backend, *argv)
    assert code == 0, (argv, code, err)
    return out


def reading_verbs(mount_target):
    """Every verb that only reads, as argv lists (JSON where it has one)."""
    return [["ls", "--json"], ["tree", "--json"], ["info", "--json", "base"],
            ["info", "--json", "work"], ["usage", "--json"], ["usage", "--json", "work"],
            ["mounts", "--json", "/mnt", "work"], ["mounts", "--json", "/mnt", "look"],
            ["label", "--json", "base"], ["doctor", "--json"],
            ["mount", mount_target, "look"], ["umount", mount_target]]


def listing(root):
    """{relative path: (mode, size, mtime_ns)} of everything under root."""
    found = {}
    for directory, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(directory, name)
            st = os.lstat(path)
            found[os.path.relpath(path, root)] = (st.st_mode, st.st_size, st.st_mtime_ns)
    return found


def make_read_only(fs, root, read_only):
    """Remount the loop filesystem (for zfs: set readonly on the root's own
    dataset, which is mounted apart from the pool's filesystem)."""
    if fs.spec.name == "zfs":
        subprocess.run(["zfs", "set", "readonly=" + ("on" if read_only else "off"),
                        fs.root_datasets[os.path.realpath(root)]], check=True,
                       capture_output=True)
    else:
        subprocess.run(["mount", "-o", "remount," + ("ro" if read_only else "rw"),
                        fs.mountpoint], check=True, capture_output=True)


@pytest.mark.parametrize("backend,filesystem", CASES, ids=["-on-".join(c) for c in CASES])
def test_reading_verbs_write_nothing_and_work_on_a_read_only_mount(
        backend, filesystem, loop_filesystem):
    with loop_filesystem(filesystem, "snaplab-test-ro-") as fs:
        root = os.path.join(fs.mountpoint, "root")
        if filesystem == "zfs":
            fs.make_root_dataset(root)
        ok(root, backend, "prepare", "base-work")
        ok(root, backend, "commit", "base", "base-work")
        ok(root, backend, "prepare", "work", "base")
        ok(root, backend, "view", "look", "base")
        # beside the filesystem, in the scratch directory that is unmounted
        # whatever happens
        target = os.path.join(os.path.dirname(fs.mountpoint), "mnt")
        os.mkdir(target)
        verbs = reading_verbs(target)

        before = listing(root)
        outputs = [snaplab(root, backend, *argv) for argv in verbs]
        for argv, (code, _out, err) in zip(verbs, outputs):
            assert code == 0, (argv, err)
        assert listing(root) == before, "a reading verb changed the writable root"

        make_read_only(fs, root, True)
        try:
            for argv, expected in zip(verbs, outputs):
                code, out, err = snaplab(root, backend, *argv)
                assert code == 0, ("read-only mount", argv, err)
                if argv[0] not in ("mounts", "mount", "umount"):
                    assert _stable(out) == _stable(expected[1]), argv
            code, _out, err = snaplab(root, backend, "prepare", "new", "base")
            assert code == 4, err
            assert err.count("\n") == 1 and "read-only" in err, err
            assert listing(root) == before
        finally:
            make_read_only(fs, root, False)


def _stable(text):
    """JSON output without what moves between runs (doctor's is stable)."""
    return json.loads(text) if text.strip() else text
