"""The reserve: a file of space each root keeps back for the operations that
free space.

On a full filesystem, Remove and Cleanup cannot even write the metadata that
says what to delete (SQLite needs a few pages), nor can a root be opened
(SQLite's lock files). They give the reserve back and try again; the next
open for writing makes it again. It is random bytes: a compressing
filesystem (zfs, btrfs) would keep no space for zeros.
"""

import contextlib
import errno
import logging
import os

log = logging.getLogger("snaplab")

RESERVE_NAME = "reserve"
# The reserve being written, renamed to RESERVE_NAME once whole; a crash's
# leftover of it is a probe name Cleanup removes (StoreSnapshotter.probe_prefixes).
RESERVE_STAGING_PREFIX = RESERVE_NAME + ".new-"
RESERVE_BYTES = 1 << 20


def refill(root):
    """Make the reserve of `root` if it is missing and there is room for it."""
    path = os.path.join(root, RESERVE_NAME)
    if os.path.exists(path):
        return
    staging = os.path.join(root, "%s%d" % (RESERVE_STAGING_PREFIX, os.getpid()))
    try:
        with open(staging, "wb") as reserve:
            reserve.write(os.urandom(RESERVE_BYTES))
        os.rename(staging, path)
    except OSError:
        # No space for it now (the filesystem is full): the next open
        # tries again; nothing depends on it but the way out of a full disk.
        with contextlib.suppress(OSError):
            os.unlink(staging)


def give_back(root):
    """Free the reserve's space; False if there is none to give."""
    try:
        os.unlink(os.path.join(root, RESERVE_NAME))
    except FileNotFoundError:
        return False
    log.warning("the filesystem of %s is full: its reserve (%d KiB) was given back",
                root, RESERVE_BYTES >> 10)
    return True


def freeing_space(root, operation):
    """Run an operation that frees space; if the filesystem is too full for
    its metadata write, give back the reserve of `root` and run it again."""
    try:
        return operation()
    except OSError as err:
        if err.errno != errno.ENOSPC or not give_back(root):
            raise
        return operation()
