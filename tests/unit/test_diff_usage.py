"""fsutil.diff_usage on real directories.

A btrfs snapshot shares the inodes of its parent until they change; here
the "snapshot" is built by hardlinking every file of `lower` into `upper`
(same inode, same stat on both sides), and then changed as a container
would change it. The btrfs conformance cases check the same on real
snapshots.
"""

import os
import shutil
import tempfile

import pytest

from snaplab import fsutil
from snaplab.types import Usage

MIB = 1 << 20


@pytest.fixture
def trees():
    base = tempfile.mkdtemp(prefix="snaplab-diff-usage-")
    lower, upper = os.path.join(base, "lower"), os.path.join(base, "upper")
    os.mkdir(lower)
    try:
        yield lower, upper
    finally:
        shutil.rmtree(base)


def write(path, size):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(os.urandom(size))
        f.flush()
        os.fsync(f.fileno())  # st_blocks is final once the data is on disk


def blocks(path):
    return os.lstat(path).st_blocks * 512


def share(lower, upper):
    """upper = a tree of the same directories with every file hardlinked from lower."""
    for directory, _, files in os.walk(lower):
        target = os.path.join(upper, os.path.relpath(directory, lower))
        os.makedirs(target, exist_ok=True)
        st = os.stat(directory)
        for name in files:
            os.link(os.path.join(directory, name), os.path.join(target, name))
        os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_shared_files_cost_nothing_and_new_ones_count(trees):
    lower, upper = trees
    write(os.path.join(lower, "kept"), MIB)
    write(os.path.join(lower, "dir", "kept-too"), MIB)
    share(lower, upper)
    shared = fsutil.diff_usage(lower, upper)
    # The directories were made anew (other inodes): each counts, with its blocks.
    assert shared == Usage(size=blocks(os.path.join(upper, "dir")), inodes=1)
    write(os.path.join(upper, "dir", "new"), 2 * MIB)
    usage = fsutil.diff_usage(lower, upper)
    assert usage.inodes == 2  # dir and dir/new
    assert usage.size == blocks(os.path.join(upper, "dir")) + blocks(
        os.path.join(upper, "dir", "new"))
    assert usage.size >= 2 * MIB


def test_modified_file_counts(trees):
    lower, upper = trees
    write(os.path.join(lower, "file"), MIB)
    share(lower, upper)
    os.unlink(os.path.join(upper, "file"))
    write(os.path.join(upper, "file"), MIB)  # same size, same name, new data
    assert fsutil.diff_usage(lower, upper) == Usage(size=blocks(os.path.join(upper, "file")),
                                                    inodes=1)


def test_deleted_entries_cost_nothing(trees):
    lower, upper = trees
    write(os.path.join(lower, "big"), 4 * MIB)
    write(os.path.join(lower, "small"), 10)
    share(lower, upper)
    os.unlink(os.path.join(upper, "big"))
    assert fsutil.diff_usage(lower, upper) == Usage(0, 0)


def test_hardlinks_count_once(trees):
    lower, upper = trees
    share(lower, upper)
    write(os.path.join(upper, "a"), MIB)
    os.link(os.path.join(upper, "a"), os.path.join(upper, "b"))
    os.link(os.path.join(upper, "a"), os.path.join(upper, "c"))
    assert fsutil.diff_usage(lower, upper) == Usage(size=blocks(os.path.join(upper, "a")),
                                                    inodes=1)


def test_everything_below_a_new_directory_counts(trees):
    lower, upper = trees
    write(os.path.join(lower, "same-name"), 10)  # a file in lower, a directory in upper
    os.mkdir(upper)
    os.makedirs(os.path.join(upper, "same-name", "deeper"))
    write(os.path.join(upper, "same-name", "deeper", "f"), MIB)
    os.symlink("same-name", os.path.join(upper, "link"))
    usage = fsutil.diff_usage(lower, upper)
    assert usage.inodes == 4  # same-name, deeper, f, link (not followed)
    assert usage.size >= MIB


def test_root_itself_is_not_an_entry(trees):
    lower, upper = trees
    os.mkdir(upper, 0o700)
    os.chmod(lower, 0o755)
    assert fsutil.diff_usage(lower, upper) == Usage(0, 0)
