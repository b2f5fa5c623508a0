"""The environment: does the backend take this filesystem, and keep its word?

A backend must refuse a filesystem it cannot use with a reason that says how
to fix it, and change nothing; where it accepts, its root must survive a
reopen and be safe for several processes at once.
"""

import multiprocessing
import os

import pytest

from snaplab import backends, errors
from snaplab import mount as mountlib

from .inprocess import InProcessTarget


def test_backend_accepts_or_refuses_the_filesystem(target, test_dir):
    root = os.path.join(test_dir, "root")
    refusal = target.expected_refusal()
    if refusal is None:
        with target.open(root) as sn:
            # containerd's metastore makes its file on the first write
            sn.prepare("accepted", "")
        assert os.path.isfile(os.path.join(target.data_dir(root), "metadata.db"))
        return
    with pytest.raises(errors.FailedPrecondition) as refused:
        target.open(root)
    message = str(refused.value)
    assert refusal.reason in message
    for fix in refusal.fixes:
        assert fix in message, "the message must say how to fix it (%r)" % fix
    assert not os.path.exists(root), "a refused root must not be created"


def test_root_is_on_the_target_filesystem(target, root, snapshotter):
    where = mountlib.lookup(target.data_dir(root))
    if target.spec.fstype is not None:
        assert where.fstype == target.spec.fstype


def test_data_survives_close_and_reopen(open_snapshotter, root, target):
    sn = open_snapshotter(root)
    sn.prepare("a", "", {"l": "1"})
    sn.commit("c", "a", {"l": "2"})
    sn.prepare("b", "c")
    before = sn.list()
    sn.close()
    target.restart_service()  # containerd: stopped and started on the same root
    again = open_snapshotter(root)
    assert again.list() == before


def test_root_of_another_backend_is_refused(open_snapshotter, root, target):
    if target.service:
        pytest.skip("%s keeps each plugin's root apart itself (one root_path per plugin): "
                    "no root can be opened by another plugin" % target.service)
    open_snapshotter(root).close()
    other = InProcessTarget(next(name for name in sorted(backends.BACKENDS)
                                 if name != target.backend), target.filesystem)
    with pytest.raises(errors.FailedPrecondition) as refused:
        other.open(root)
    if other.expected_refusal() is None:  # else it refuses the filesystem first
        assert target.backend in str(refused.value)


def test_unknown_backend_is_invalid_argument(test_dir):
    root = os.path.join(test_dir, "root")
    with pytest.raises(errors.InvalidArgument, match="unknown backend"):
        backends.open_snapshotter(root, "aufs-or-whatever")
    assert not os.path.exists(root)


def _worker(opener, worker, rounds, queue):
    """One process's share: each round makes a chain link and removes a scratch."""
    try:
        with opener() as sn:
            for i in range(rounds):
                key = "w%d-%d" % (worker, i)
                sn.prepare(key + "-active", "base")
                sn.commit(key, key + "-active")
                sn.view(key + "-view", key)
                sn.remove(key + "-view")
                sn.prepare(key + "-scratch", "")
                sn.remove(key + "-scratch")
        queue.put(None)
    except BaseException as err:  # reported to the parent, which fails the test
        queue.put("%s: %s" % (type(err).__name__, err))


def test_several_processes_share_one_root_safely(open_snapshotter, root, target):
    """No lost or duplicated snapshot, no 'database is locked' seen by a caller.

    Behind a service (containerd) the processes are its clients, at once, in
    one namespace.
    """
    sn = open_snapshotter(root)
    opener = target.opener(root)
    if opener is None:
        pytest.skip("%s gives no way for other processes to reach the same snapshotter"
                    % target.service)
    sn.prepare("base-active", "")
    sn.commit("base", "base-active")
    workers, rounds = 3, 8
    # A gRPC channel does not survive fork(): clients of a service start afresh.
    context = multiprocessing.get_context("spawn" if target.service else "fork")
    queue = context.Queue()
    processes = [context.Process(target=_worker, args=(opener, w, rounds, queue))
                 for w in range(workers)]
    for process in processes:
        process.start()
    outcomes = [queue.get(timeout=600) for _process in processes]
    for process in processes:
        process.join()
    assert outcomes == [None] * workers
    names = sorted(info.name for info in sn.list())
    expected = sorted(["base"] + ["w%d-%d" % (w, i) for w in range(workers)
                                  for i in range(rounds)])
    assert names == expected
    for info in sn.list("parent==base"):
        sn.remove(info.name)
    sn.remove("base")
    assert sn.list() == []
