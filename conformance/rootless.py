"""Rootless targets: snaplab's backends run by an unprivileged user in a user namespace.

containerd's snapshotter design has a "Rootless" consideration: a rootless
containerd runs as an ordinary user inside a user namespace, where it is
root only over the ids mapped into it, and overlayfs must keep its
whiteouts in user.overlay.* xattrs (the userxattr mount option; snaplab's
overlay backend adds it when snaplab.kernel.in_user_namespace() says so).
The rows rootless-native and rootless-overlay run the suite that way.

How: each case's test function (conftest.py's pytest_pyfunc_call asks
Target.run_case) runs in a forked child that drops to uid and gid 100000
outside, with no supplementary groups, and unshares a user namespace and
a mount namespace. The parent, still real root, writes the child's
uid_map and gid_map as newuidmap does from /etc/subuid: 0..65535 inside
are 100000..165535 outside, so the child may chown to ordinary ids but is
root only inside its namespace. The child calls the function with the
fixture values pytest made, then closes what it opened and checks it left
no mount behind; its mounts die with its mount namespace. What it returns
or raises comes back through a pipe: an exception is raised again in the
parent with the child's traceback as its cause, pytest's skip, xfail and
fail as themselves.

The fixtures run in the parent as real root. A snapshotter they open for a
case (open_for_case) is a DeferredSnapshotter: in the child it opens on
first use, and a call a fixture makes on it in the parent (test_errors'
population) runs in a short-lived unprivileged child of its own. The
parent never opens it, so closing it there does nothing. The parent's
test_dir teardown (real root) removes the files the child made.

The unprivileged user reaches the filesystems as a rootless containerd
reaches its root: the harness's own directories on the way are made
searchable by others (setup_session; the loop images stay 0600).

No case of the suite needs real root for native or overlay on ext4, xfs,
btrfs, ext4-nodtype or host-dir: all pass, or skip as the backends do
there. What the child cannot do (measured, kernel 6.18): mknod of a
character or block device other than overlay's 0/0 whiteout, and trusted.*
xattrs (EPERM). A case that needs either must skip in a user namespace
(snaplab.kernel.in_user_namespace()) with a reason that starts "needs real
root: ". The zfs column is not run: ZFS datasets are real root's.
"""

import ctypes
import inspect
import os
import pickle
import re
import signal
import sys
import traceback

import pytest

from snaplab import backends, kernel
from snaplab import mount as mountlib

from .inprocess import InProcessTarget
from .target import Refusal

ROOTLESS_PREFIX = "rootless-"
ROOTLESS_BACKENDS = ("native", "overlay")
# What /etc/subuid and /etc/subgid give a first ordinary user.
OUTSIDE_ID = 100000
MAPPED_IDS = 65536

_CLONE_NEWNS = 0x00020000
_CLONE_NEWUSER = 0x10000000
_PR_SET_DUMPABLE = 4
_libc = ctypes.CDLL(None, use_errno=True)

# In a child that runs unprivileged: the snapshotters opened there, which
# it closes before it reports (the parent's fixtures never see them).
_opened_in_child = None


class ChildTraceback(Exception):
    """The traceback of an exception raised in the unprivileged child (the
    cause of the same exception raised again in the parent)."""

    def __str__(self):
        return "\n" + self.args[0]


def in_unprivileged_child():
    """Whether this process is a child that call_unprivileged made."""
    return _opened_in_child is not None


def _check(result, what):
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, "%s: %s" % (what, os.strerror(err)))


def _become_unprivileged(ready, go):
    """In the child: drop to OUTSIDE_ID, unshare the namespaces, and wait
    until the parent has written the id maps."""
    os.setgroups([])
    os.setresgid(OUTSIDE_ID, OUTSIDE_ID, OUTSIDE_ID)
    os.setresuid(OUTSIDE_ID, OUTSIDE_ID, OUTSIDE_ID)
    # Changing the euid made the process undumpable, which would leave its
    # /proc files to real root; an ordinary user's process is dumpable.
    _check(_libc.prctl(_PR_SET_DUMPABLE, 1, 0, 0, 0), "prctl(PR_SET_DUMPABLE)")
    # A mount namespace made with the user namespace is owned by it: the
    # child may mount there, and the parent's shared mounts are only slaves
    # of it (nothing the child mounts propagates back).
    _check(_libc.unshare(_CLONE_NEWUSER | _CLONE_NEWNS), "unshare(CLONE_NEWUSER|CLONE_NEWNS)")
    os.write(ready, b"u")
    if os.read(go, 1) != b"g":
        raise OSError("the parent did not map the child's ids")


def _write_id_maps(pid):
    """As newuidmap and newgidmap would: 0..MAPPED_IDS-1 inside are OUTSIDE_ID.. outside."""
    line = "0 %d %d\n" % (OUTSIDE_ID, MAPPED_IDS)
    for name in ("uid_map", "gid_map"):
        with open("/proc/%d/%s" % (pid, name), "w", encoding="ascii") as id_map:
            id_map.write(line)


def _outcome_of(function, args, kwargs):
    """Call `function` and say what happened, in a form that pickles."""
    try:
        return ("returned", function(*args, **kwargs))
    except pytest.skip.Exception as skipped:
        return ("skip", skipped.msg)
    except pytest.xfail.Exception as xfailed:
        return ("xfail", xfailed.msg)
    except pytest.fail.Exception as failed:
        return ("fail", failed.msg)
    except BaseException as err:  # pylint: disable=broad-except
        text = "".join(traceback.format_exception(type(err), err, err.__traceback__))
        return ("raised", err, text)


def _close_opened():
    problems = []
    while _opened_in_child:
        sn = _opened_in_child.pop()
        try:
            sn.close()
        except Exception as err:  # pylint: disable=broad-except
            problems.append("%s: %s" % (type(err).__name__, err))
    return problems


def _closing_failed(problems):
    return "closing the snapshotters opened in the unprivileged child failed: %s" % (
        "; ".join(problems))


def _pickled(outcome):
    try:
        data = pickle.dumps(outcome)
        pickle.loads(data)  # an exception may pickle and not unpickle (its __init__'s arguments)
        return data
    except Exception as err:  # pylint: disable=broad-except
        text = outcome[2] if outcome[0] == "raised" else repr(outcome[1])
        return pickle.dumps(("fail", "the unprivileged child's outcome does not pickle (%s): %s"
                             % (err, text)))


def _run_child(pipes, function, args, kwargs):
    """The child's whole life: never returns."""
    global _opened_in_child  # pylint: disable=global-statement
    ready, go, result = pipes
    try:
        _opened_in_child = []
        try:
            _become_unprivileged(ready, go)
        except BaseException as err:  # pylint: disable=broad-except
            outcome = ("fail", "could not become unprivileged: %s" % err)
        else:
            outcome = _outcome_of(function, args, kwargs)
            problems = _close_opened()
            if problems and outcome[0] == "returned":
                outcome = ("fail", _closing_failed(problems))
        data = _pickled(outcome)
        with os.fdopen(result, "wb") as out:
            out.write(data)
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(0)  # pylint: disable=protected-access


def _read_all(fd):
    chunks = []
    with os.fdopen(fd, "rb") as source:
        while True:
            chunk = source.read(1 << 16)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)


def call_unprivileged(function, *args, **kwargs):
    """function(*args, **kwargs) in a forked child that is root only in a
    user namespace of its own (uid and gid OUTSIDE_ID outside), with a
    mount namespace of its own; returns what it returns.

    What it raises is raised here, with the child's traceback as its cause
    (ChildTraceback); pytest's skip, xfail and fail are raised as such.
    """
    __tracebackhide__ = True  # a failure shows the child's traceback, not this
    ready_r, ready_w = os.pipe()
    go_r, go_w = os.pipe()
    result_r, result_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        for fd in (ready_r, go_w, result_r):
            os.close(fd)
        _run_child((ready_w, go_r, result_w), function, args, kwargs)
    for fd in (ready_w, go_r, result_w):
        os.close(fd)
    reaped = False
    try:
        with os.fdopen(ready_r, "rb") as ready, os.fdopen(go_w, "wb") as go:
            if ready.read(1) == b"u":  # else it failed before unsharing
                _write_id_maps(pid)
                go.write(b"g")
        data = _read_all(result_r)
        status = os.waitpid(pid, 0)[1]
        reaped = True
    finally:
        if not reaped:  # the parent failed (or was interrupted): the child goes
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
    if not data:
        raise AssertionError("the unprivileged child died without an outcome (wait status %d)"
                             % status)
    return _raise_or_return(pickle.loads(data))


def _raise_or_return(outcome):
    __tracebackhide__ = True
    kind = outcome[0]
    if kind == "returned":
        return outcome[1]
    if kind == "skip":
        pytest.skip(outcome[1])
    if kind == "xfail":
        pytest.xfail(outcome[1])
    if kind == "fail":
        pytest.fail(outcome[1], pytrace=False)
    err, text = outcome[1:]
    raise err from ChildTraceback(text)


def _run_test_function(function, arguments, fs_mountpoint):
    """In the child: the test function, then what the parent's fixtures
    would do after it: close the snapshotters, fail on mounts left behind
    (they go with the child's mount namespace)."""
    before = set(mountlib.mounts_under(fs_mountpoint))
    try:
        function(**arguments)
    finally:
        problems = _close_opened()
    left = [where for where in mountlib.mounts_under(fs_mountpoint) if where not in before]
    if problems:
        pytest.fail(_closing_failed(problems), pytrace=False)
    if left:
        pytest.fail("the test left mounts behind: %s" % ", ".join(left), pytrace=False)


def let_unprivileged_reach(mountpoint, pool_dir):
    """Let the unprivileged user reach `mountpoint`, as a rootless
    containerd reaches its root: `pool_dir` (the harness's, 0700 from
    mkdtemp) and `mountpoint` itself may be searched by others (the loop
    images in `pool_dir` are 0600: filesystems.make_loop_image). Returns the
    first other directory on the way that others cannot search, else None."""
    ours = {os.path.realpath(pool_dir), os.path.realpath(mountpoint)}
    path = "/"
    for part in os.path.realpath(mountpoint).split(os.sep)[1:]:
        path = os.path.join(path, part)
        mode = os.stat(path).st_mode
        if not mode & 0o001:
            if path not in ours:
                return path
            os.chmod(path, (mode & 0o7777) | 0o001)
    return None


class DeferredSnapshotter:
    """A snapshotter a fixture opened for a case that runs unprivileged.

    In the unprivileged child it is opened on first use (`open_now`);
    in the parent each call runs in an unprivileged child of its own, which
    opens it, calls and closes it. The parent never opens it.
    """

    def __init__(self, open_now, backend):
        # `backend` names the class whose methods the parent may call.
        self._open_now = open_now
        self._backend = backend
        self._opened = None

    def _snapshotter(self):
        if self._opened is None:
            self._opened = self._open_now()
        return self._opened

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        if in_unprivileged_child():
            return getattr(self._snapshotter(), name)
        if callable(getattr(backends.backend_class(self._backend), name, None)):
            return lambda *args, **kwargs: call_unprivileged(self._call, name, args, kwargs)
        return call_unprivileged(lambda: getattr(self._snapshotter(), name))

    def _call(self, name, args, kwargs):
        return getattr(self._snapshotter(), name)(*args, **kwargs)

    def close(self):
        if self._opened is not None:
            self._opened.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def kernel_version():
    """(major, minor) of the running kernel."""
    numbers = re.match(r"(\d+)\.(\d+)", kernel.release())
    return (int(numbers.group(1)), int(numbers.group(2))) if numbers else (0, 0)


class RootlessTarget(InProcessTarget):
    """snaplab's `native` or `overlay` backend run by an unprivileged user in
    a user namespace, e.g. rootless-overlay-on-xfs."""

    def __init__(self, backend, filesystem, options=None):
        super().__init__(backend, filesystem, options)
        self.rootless_backend = backend[len(ROOTLESS_PREFIX):]

    @property
    def snaplab_backend(self):
        return self.rootless_backend

    def traits_name(self):
        # Running unprivileged changes none of the backend's traits...
        return "snaplab-" + self.rootless_backend

    @property
    def traits(self):
        # ...but one: an idmapped mount needs the initial user namespace,
        # so rootless overlay refuses the mapping labels (FailedPrecondition).
        traits = super().traits
        if traits.remap == "idmapped":
            return traits.replace(source="%s, rootless" % traits.source, remap="none")
        return traits

    def expected_refusal(self):
        if self.rootless_backend == "overlay" and kernel_version() < (5, 11):
            # The backend's probe mount in the child is refused.
            return Refusal("user namespace", "5.11", "--backend native",
                           explanation="overlayfs mounts in a user namespace from Linux 5.11")
        return super().expected_refusal()

    def setup_session(self, request):
        if self.filesystem == "zfs":
            # Not a refusal of the backend's: the harness does not run it.
            pytest.skip("rootless rows do not run on zfs: its datasets are real root's "
                        "(zfs create, and zfs-fuse's one daemon), and containerd's rootless "
                        "snapshotters do not cover ZFS")
        if os.geteuid() != 0:
            pytest.skip("rootless rows map uids %d.. into their user namespaces, as newuidmap "
                        "does: the suite must run as root" % OUTSIDE_ID)
        pool = request.getfixturevalue("filesystem_pool")
        blocked = let_unprivileged_reach(self.fs.mountpoint, pool.base)
        if blocked:
            pytest.skip("uid %d cannot reach %s: %s is not searchable by others"
                        % (OUTSIDE_ID, self.fs.mountpoint, blocked))

    def open(self, root, **options):
        sn = super().open(root, **options)
        if in_unprivileged_child():
            _opened_in_child.append(sn)
        return sn

    def open_for_case(self, open_now):
        if in_unprivileged_child():
            return open_now()
        return DeferredSnapshotter(open_now, self.snaplab_backend)

    def run_case(self, pyfuncitem):
        __tracebackhide__ = True
        parameters = inspect.signature(pyfuncitem.obj).parameters
        arguments = {name: pyfuncitem.funcargs[name] for name in parameters}
        call_unprivileged(_run_test_function, pyfuncitem.obj, arguments, self.fs.mountpoint)
        return True


ROOTLESS_TARGETS = tuple(ROOTLESS_PREFIX + backend for backend in ROOTLESS_BACKENDS)

__all__ = ["OUTSIDE_ID", "ROOTLESS_TARGETS", "ChildTraceback", "DeferredSnapshotter",
           "RootlessTarget", "call_unprivileged", "in_unprivileged_child",
           "let_unprivileged_reach"]
