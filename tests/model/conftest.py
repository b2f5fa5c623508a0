"""Fixtures of the model tests: the session's filesystems and fresh roots
(tests/model/environment.py says which backend goes where)."""

import os
import shutil
import tempfile

import pytest

from snaplab import mount as mountlib
from tests.model.environment import FILESYSTEM_OF, BackendEnv, chosen_backends


@pytest.fixture(scope="session")
def model_filesystems():
    """The FilesystemPool of the session; its filesystems are made on first use."""
    if os.geteuid() != 0:
        pytest.skip("loop devices and mounts need root")
    from conformance.targets import FilesystemPool
    scratch = tempfile.mkdtemp(prefix="snaplab-test-model-")
    pool = FilesystemPool(scratch)
    try:
        yield pool
    finally:
        try:
            pool.destroy()
        finally:
            left = mountlib.mounts_under(scratch)
            assert not left, "left mounted: %s" % left
            shutil.rmtree(scratch)


@pytest.fixture(scope="session")
def backend_env(model_filesystems):
    """backend_env(name): the BackendEnv of a backend; skips where its
    filesystem cannot be made here."""
    from conformance.targets import FilesystemUnavailable

    def env(backend):
        try:
            return BackendEnv(backend, model_filesystems.get(FILESYSTEM_OF[backend]))
        except FilesystemUnavailable as unavailable:
            pytest.skip("%s is not available: %s" % (FILESYSTEM_OF[backend], unavailable))
    return env


@pytest.fixture(params=chosen_backends())
def snapshotter(request, backend_env):
    """A snapshotter of each backend on a fresh root."""
    with backend_env(request.param).snapshotter() as (sn, _scratch):
        yield sn
