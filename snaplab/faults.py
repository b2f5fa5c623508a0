"""Named crash points, for proving crash safety by fault injection.

The torture harness (tests/torture) runs an operation in a child process
with SNAPLAB_CRASH_AT=NAME[:N] in its environment; the child kills itself
with SIGKILL the Nth time (default: the first) it reaches the point NAME.
So a kill lands exactly between two steps that matter (the data renamed into
place but the metadata not yet committed, say), not only where a random
timer happens to fall. Without the variable a point costs one dictionary
lookup. The points, in the order an operation meets them:

    create.staged       Prepare/View: the data built under a temporary name
    create.stored       Prepare/View: the data in place, metadata not committed
    commit.stored       Commit: the data frozen, metadata not committed
    remove.stored       Remove: inside the transaction, metadata not committed
    remove.committed    Remove: metadata committed, data not yet removed
    remove.background   Remove's data deletion in the background thread
                        (snaplab serve): before it starts
    erofs.image_built   erofs Commit: the image staged, not yet renamed into place
    erofs.image_stored  erofs Commit: layer.erofs in place, metadata not committed
    erofs.committed     erofs Commit: metadata committed, the upper's files not freed
    erofs.unmounted     erofs Remove/Cleanup: the image unmounted, its files not deleted
    cleanup.entry       Cleanup: before each leftover is removed
    copy.file           a full tree copy (native Prepare): before each file
    blockfile.scratch   blockfile's open: a new scratch image made, not yet renamed
    remap.entry         a chown remap (native, btrfs Prepare/View with the
                        uid/gid mapping labels): before each entry
    apply.mounted       apply-layer: the temporary mount made
    apply.entry         apply-layer: before each entry of the layer is written
"""

import os
import signal

CRASH_ENV = "SNAPLAB_CRASH_AT"

_reached = {}


def point(name):
    """Die here (SIGKILL, no cleanup of any kind) if the environment asks."""
    wanted = os.environ.get(CRASH_ENV)
    if not wanted:
        return
    target, _colon, count = wanted.partition(":")
    if target != name:
        return
    _reached[name] = _reached.get(name, 0) + 1
    if _reached[name] >= int(count or 1):
        os.kill(os.getpid(), signal.SIGKILL)
