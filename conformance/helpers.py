"""Helpers of the generic cases, after containerd's core/snapshots/testsuite.

They build layers the way a container runtime does (prepare, mount, change,
unmount, commit) and check each layer through a read-only view against a
flat directory that received the same changes. They know nothing about any
backend: only the Snapshotter interface and mounts.

Failures raise AssertionError (explicitly, so that they are real failures
outside pytest's assertion rewriting too); snapshotter errors propagate.
"""

import contextlib
import os
import random
import shutil
import tempfile
import time

from snaplab.mount import mount_all, unmount_all

from conformance import fstest

GC_ROOT = "containerd.io/gc.root"

# containerd computes this once, when the suite is loaded.
_GC_ROOT_TIME = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def gc_root_labels():
    """The labels containerd's suite passes to almost every Prepare/View/Commit.

    A fresh dict each time, so no snapshotter can alter what the next call gets.
    """
    return {GC_ROOT: _GC_ROOT_TIME}


@contextlib.contextmanager
def mounted(mounts, directory):
    """Mount `mounts` on `directory` for the block; always unmount after."""
    mount_all(mounts, directory)
    try:
        yield directory
    finally:
        unmount_all(directory)


def _rmdir_after_unmount(directory):
    # Only rmdir: if the unmount failed, a recursive delete would go through
    # the mount into the snapshot. A leftover directory is the harness's job.
    with contextlib.suppress(OSError):
        os.rmdir(directory)


def apply_to_mounts(mounts, work, applier):
    """Mount `mounts` on a fresh directory under `work`, apply, unmount."""
    directory = tempfile.mkdtemp(prefix="prepare", dir=work)
    try:
        with mounted(mounts, directory):
            applier(directory)
    finally:
        _rmdir_after_unmount(directory)


def create_snapshot(sn, parent, work, applier):
    """Commit a new snapshot on `parent` holding `applier`'s changes; return its name.

    The name is unique per call like containerd's "%p-%d"; the active key is
    "<name>-prepare".
    """
    name = "%x-%d" % (id(applier), random.randrange(1 << 31))
    key = name + "-prepare"
    mounts = sn.prepare(key, parent, labels=gc_root_labels())
    apply_to_mounts(mounts, work, applier)
    sn.commit(name, key, labels=gc_root_labels())
    return name


def check_snapshot(sn, work, name, check_dir):
    """View `name` ("<name>-view"), mount it and compare with `check_dir`.

    The view is removed afterwards, and failing to remove it is an error too.
    """
    directory = tempfile.mkdtemp(prefix="check", dir=work)
    view = name + "-view"
    try:
        mounts = sn.view(view, name, labels=gc_root_labels())
        try:
            with mounted(mounts, directory):
                fstest.check_directory_equal(check_dir, directory)
        finally:
            sn.remove(view)
    finally:
        _rmdir_after_unmount(directory)


def check_snapshots(sn, work, *appliers):
    """Build a chain of snapshots, one per applier, checking each against a flat dir.

    The flat directory receives the same appliers in the same order, so layer
    i's view must equal it after applier i.
    """
    flat = tempfile.mkdtemp(prefix="flat", dir=work)
    try:
        parent = ""
        for number, applier in enumerate(appliers, 1):
            name = create_snapshot(sn, parent, work, applier)
            applier(flat)
            try:
                check_snapshot(sn, work, name, flat)
            except AssertionError as err:
                raise AssertionError("snapshot %d (%r) does not match: %s"
                                     % (number, applier, err)) from err
            parent = name
    finally:
        shutil.rmtree(flat)  # never mounted: a plain directory


def check_info(expected, actual):
    """Kind, name, parent, labels, created and updated must be exactly equal."""
    differences = []
    for field in ("kind", "name", "parent", "labels", "created", "updated"):
        want, have = getattr(expected, field), getattr(actual, field)
        if field == "labels":
            # No labels and an empty map are the same thing (containerd compares sizes).
            want, have = dict(want or {}), dict(have or {})
        if want != have:
            differences.append("%s: expected %r, got %r" % (field, want, have))
    if differences:
        raise AssertionError("info of %r differs: %s" % (expected.name, "; ".join(differences)))
