"""Leases: what a live process is using, known by a lock only it can hold.

containerd keeps half-made things (an unpack's extract snapshots, a
temporary mount) alive with leases that its garbage collector honours.
snaplab has no daemon to run a collector, so a lease here is a file under
<root>/leases/ that its process holds an exclusive flock(2) on. The kernel
drops the lock when the process dies, however it dies (SIGKILL included),
so Cleanup can tell "in use right now" from "left by a crash" without
timeouts and without trusting process ids, which are reused.
"""

import contextlib
import errno
import fcntl
import os

LEASES_DIRECTORY = "leases"
# The label that ties a snapshot's life to a lease: Cleanup removes an
# active snapshot carrying it once no live process holds that lease.
# apply_layers puts it on its extract snapshots, so a killed unpack leaves
# nothing that lives on (containerd: leases and garbage collection).
LEASE_LABEL = "snaplab.io/lease"


def lease_path(root, name):
    return os.path.join(root, LEASES_DIRECTORY, name)


@contextlib.contextmanager
def hold(root, name):
    """Hold the lease `name` of `root` for the duration of the block."""
    directory = os.path.join(root, LEASES_DIRECTORY)
    os.makedirs(directory, mode=0o700, exist_ok=True)
    path = lease_path(root, name)
    fd = _open_locked(path)
    try:
        yield name
        # Unlinked while still locked: a checker that opens it afterwards
        # finds nothing, which means "not held", as it should.
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
    finally:
        os.close(fd)


def _open_locked(path):
    """Open (creating) and lock `path`, making sure the file locked is the
    one at `path`: a Cleanup may unlink a free lease file between our open
    and our lock, and a lock on an unlinked file protects nothing."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            st = os.fstat(fd)
            try:
                current = os.stat(path, follow_symlinks=False)
            except FileNotFoundError:
                current = None
            if current is not None and (current.st_dev, current.st_ino) == (st.st_dev, st.st_ino):
                return fd
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)


def is_held(root, name):
    """Whether a live process holds the lease `name` of `root` now.

    Reads only (a shared, non-blocking lock attempt), so it works on a root
    mounted read-only.
    """
    try:
        fd = os.open(lease_path(root, name), os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError as err:
        if err.errno in (errno.ENOENT, errno.ELOOP, errno.ENOTDIR):
            return False
        raise
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def lease_names(root):
    """The names of every lease file of `root` (held or left by a crash)."""
    try:
        return sorted(os.listdir(os.path.join(root, LEASES_DIRECTORY)))
    except FileNotFoundError:
        return []


def remove_if_free(root, name):
    """Remove the lease file `name` unless a live process holds it.

    The exclusive lock is taken before the unlink, so a process that is
    just starting to hold it either got it first (and this leaves it) or
    will create a new file after the unlink.
    """
    try:
        fd = os.open(lease_path(root, name), os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except FileNotFoundError:
        return True
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        with contextlib.suppress(FileNotFoundError):
            os.unlink(lease_path(root, name))
        return True
    finally:
        os.close(fd)
