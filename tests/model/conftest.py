"""Fixtures of the model tests: the session's filesystems and fresh roots
(tests/model/environment.py says which backend goes where)."""

import os
import shutil
import tempfile

import pytest

from snaplab import mount as mountlib
from tests.model.environment import BACKENDS, BackendEnv, chosen_backends


@pytest.fixture(scope="session")
def model_filesystems():
    """The FilesystemPool of the session; its filesystems are made on first use."""
    if os.geteuid() != 0:
        pytest.skip("loop devices and mounts need root")
    from conformance.filesystems import FilesystemPool
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
    from conformance.filesystems import FilesystemUnavailable

    def env(name):
        filesystem = BACKENDS[name][2]
        try:
            return BackendEnv(name, model_filesystems.get(filesystem))
        except FilesystemUnavailable as unavailable:
            pytest.skip("%s is not available: %s" % (filesystem, unavailable))
    return env


@pytest.fixture(params=chosen_backends())
def snapshotter(request, backend_env):
    """A snapshotter of each backend on a fresh root."""
    with backend_env(request.param).snapshotter() as (sn, _scratch):
        yield sn
