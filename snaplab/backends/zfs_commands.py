"""Talking to the zfs command: running it, syncing, listing and destroying
datasets. The zfs backend (zfs.py) is built on these; so is the sync every
backend does before it measures a tree that may be on ZFS (base.py), and
the suite's making and removing of zfs-fuse datasets.

Nothing here knows about snapshots: only datasets and the mount table.
"""

import contextlib
import os
import subprocess
import time

from .. import errors
from .. import mount as mountlib
from ..kernel import FUSE_ZFS_FSTYPE, ZFS_FSTYPES

# Inheriting a user property that is not set changes nothing, but it is a
# "sync task": zfs waits for a transaction group sync to run it. After it
# `used` counts everything written before (it lags up to seconds otherwise).
SYNC_PROPERTY = "snaplab:sync"
# zfs-fuse unmounts asynchronously: a destroy right after an unmount may
# still find the dataset busy for a moment — seconds on a loaded machine (a
# CI run beside two TCG VMs needed more than 3 s). Seconds between tries,
# about 15 s in all; a dataset that is really in use fails after that.
BUSY_RETRY_DELAYS = (0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 4.0, 4.0)


class ZfsError(errors.SnapshotError, OSError):
    """A zfs command failed; the message has the command and zfs's own words."""

    def __init__(self, argv, stderr):
        self.argv = list(argv)
        self.stderr = stderr
        super().__init__("%s failed: %s" % (" ".join(self.argv), stderr or "no message"))

    @property
    def missing(self):
        return "does not exist" in self.stderr

    @property
    def exists(self):
        return "already exists" in self.stderr

    @property
    def busy(self):
        # "dataset is busy"; "has dependent clones" while another process is
        # destroying a clone of it (two Removes of a child and its parent)
        return "busy" in self.stderr or "dependent clones" in self.stderr

    @property
    def not_mounted(self):
        return "not currently mounted" in self.stderr or "not mounted" in self.stderr


def run_zfs(*argv):
    """Run `zfs argv...`; its stdout, or ZfsError with its stderr."""
    command = ("zfs",) + argv
    try:
        done = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              universal_newlines=True, check=False)
    except FileNotFoundError:
        raise ZfsError(command, "zfs is not installed (zfsutils-linux, or zfs-fuse)") from None
    if done.returncode != 0:
        raise ZfsError(command, done.stderr.strip())
    return done.stdout


def sync_dataset(dataset):
    """Wait for a transaction group sync of the dataset's pool: until then
    `used` (and st_blocks) do not count what was written since the last one."""
    run_zfs("inherit", SYNC_PROPERTY, dataset)


def dataset_of(path):
    """The ZFS dataset `path` is on, or None. Block-device filesystems (a
    real major number) are known without reading the mount table."""
    if os.major(os.stat(path).st_dev) != 0:
        return None
    where = mountlib.lookup(path)
    return where.source if where.fstype in ZFS_FSTYPES else None


def used_bytes(dataset):
    """The dataset's `used` property in bytes (sync first for a current one)."""
    return int(run_zfs("get", "-Hp", "-o", "value", "used", dataset))


def child_filesystems(dataset):
    """Names of the filesystems directly below `dataset` (`zfs list -d 1`)."""
    listing = run_zfs("list", "-H", "-o", "name", "-d", "1", "-t", "filesystem", dataset)
    prefix = dataset + "/"
    return [name for name in listing.splitlines() if name.startswith(prefix)]


def mountpoints_under(dataset):
    """{name: mountpoint property} of `dataset` and every filesystem and ZFS
    snapshot below it (a snapshot's mountpoint is "-")."""
    listing = run_zfs("list", "-H", "-o", "name,mountpoint", "-t", "filesystem,snapshot",
                      "-r", dataset)
    return dict(line.split("\t", 1) for line in listing.splitlines() if line)


def _fuse_mounted_under(dataset):
    """The dataset and its children that zfs-fuse has mounted, deepest first."""
    return sorted({entry.source for entry in mountlib.mount_table()
                   if entry.fstype == FUSE_ZFS_FSTYPE and (
                       entry.source == dataset or entry.source.startswith(dataset + "/"))},
                  key=lambda name: name.count("/"), reverse=True)


def destroy_dataset(dataset, dependents=False):
    """`zfs destroy -r` the dataset with its snapshots and children (`-R`:
    and their clones too); a missing dataset is fine.

    What zfs-fuse has mounted of it is unmounted first, deepest first: its
    destroy of a mounted dataset unmounts it and then finds it busy. Its
    unmount also completes asynchronously, so "busy" is retried a little.
    If the destroy fails for good, those mounts are put back.
    """
    unmounted = []
    try:
        for name in _fuse_mounted_under(dataset):
            try:
                run_zfs("unmount", name)
            except ZfsError as err:
                if not (err.not_mounted or err.missing):  # another process was first
                    raise
            unmounted.append(name)
        # Busy is also what another process destroying the same dataset,
        # or a clone of it, makes zfs say for a moment: wait a little.
        delays = iter(BUSY_RETRY_DELAYS)
        while True:
            try:
                run_zfs("destroy", "-R" if dependents else "-r", dataset)
                return
            except ZfsError as err:
                if err.missing:
                    return
                delay = next(delays, None) if err.busy else None
                if delay is None:
                    raise
                time.sleep(delay)
    except BaseException:
        for name in reversed(unmounted):  # where Mounts() says they are
            with contextlib.suppress(ZfsError):
                run_zfs("mount", name)
        raise


__all__ = ["ZfsError", "run_zfs", "sync_dataset", "dataset_of", "used_bytes",
           "child_filesystems", "mountpoints_under", "destroy_dataset",
           "BUSY_RETRY_DELAYS"]
