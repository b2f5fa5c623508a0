"""What the integration tests share: finding ansible-playbook, staging the
collection, and scratch directories that are cleaned up whatever happens.

Test modules that run ansible-playbook on loop devices and mounts mark
themselves with

    pytestmark = pytest.mark.needs_root_and_ansible_playbook

and are skipped (with the reason) unless run as root with ansible-playbook
installed. The helpers are fixtures (each returns a function or the path), so
that no test module imports this file.
"""

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile

import pytest

from conformance.filesystems import TEST_PREFIX, FilesystemPool, FilesystemUnavailable
from snaplab import mount as mountlib

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MNT_DETACH = 2


def find_ansible_playbook():
    """ansible-playbook beside the running Python (the venv's), else on PATH, else None."""
    beside_python = os.path.join(os.path.dirname(sys.executable), "ansible-playbook")
    return beside_python if os.path.exists(beside_python) else shutil.which("ansible-playbook")


ANSIBLE_PLAYBOOK = find_ansible_playbook()


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "needs_root_and_ansible_playbook: skipped unless run as root (loop devices "
        "and mounts) with ansible-playbook installed")


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    """Skip marked tests before any of their fixtures is set up."""
    if item.get_closest_marker("needs_root_and_ansible_playbook") is None:
        return
    if os.geteuid() != 0:
        pytest.skip("loop devices and mounts need root")
    if ANSIBLE_PLAYBOOK is None:
        pytest.skip("ansible-playbook is not installed (requirements.txt)")


@pytest.fixture(scope="session")
def ansible_playbook():
    """The path of the ansible-playbook to run."""
    return ANSIBLE_PLAYBOOK


def _stage_collection(dest):
    """Stage the collection with collection/stage.py, as ansible-playbook finds it
    (DEST/ansible_collections/snaplab/snapshots); returns DEST."""
    subprocess.run([sys.executable, os.path.join(REPO, "collection", "stage.py"), dest],
                   check=True, cwd=REPO, capture_output=True, text=True)
    return dest


@pytest.fixture(scope="session")
def stage_collection():
    """stage_collection(dest): stage the collection into dest, return dest."""
    return _stage_collection


def _loop_devices_under(directory):
    """The loop devices whose backing file is below directory (symlinks resolved)."""
    listing = subprocess.run(["losetup", "--list", "--json", "--output", "NAME,BACK-FILE"],
                             capture_output=True, text=True, check=True).stdout
    devices = json.loads(listing)["loopdevices"] if listing.strip() else []
    prefix = os.path.realpath(directory).rstrip("/") + "/"
    return [d["name"] for d in devices if (d.get("back-file") or "").startswith(prefix)]


@pytest.fixture(scope="session")
def loop_devices_under():
    """loop_devices_under(directory): the loop devices backed by files below directory."""
    return _loop_devices_under


def remove_scratch_dir(base):
    """Unmount whatever is mounted under base (only there; lazily if it is busy),
    detach the loop devices backed by files under it, then delete it. If
    anything could not be unmounted or detached, base is left in place and
    this fails with what went wrong."""
    problems = []
    for where in mountlib.mounts_under(base):
        try:
            mountlib.unmount_all(where)
        except OSError:
            try:
                mountlib.unmount_all(where, MNT_DETACH)
            except OSError as err:
                problems.append(str(err))
    for device in _loop_devices_under(base):
        done = subprocess.run(["losetup", "--detach", device], capture_output=True, text=True)
        if done.returncode != 0:
            problems.append(done.stderr.strip())
    if not problems:
        shutil.rmtree(base, ignore_errors=True)
    assert not problems, problems


@contextlib.contextmanager
def _scratch_dir(prefix):
    if not prefix.startswith(TEST_PREFIX):
        # What a killed run leaves is found by this name (python -m conformance.leaks).
        raise ValueError("a scratch directory's prefix starts with %r, not %r"
                         % (TEST_PREFIX, prefix))
    base = tempfile.mkdtemp(prefix=prefix)
    try:
        yield base
    finally:
        remove_scratch_dir(base)


@pytest.fixture(scope="session")
def scratch_dir():
    """`with scratch_dir(prefix) as base:` a new temp directory, removed on leaving
    (also on failure) by remove_scratch_dir: its mounts and loop devices first."""
    return _scratch_dir


@pytest.fixture(scope="session")
def loop_filesystem(scratch_dir):
    """`with loop_filesystem(name, prefix) as fs:` one of the conformance
    harness's filesystems (FILESYSTEMS: ext4, zfs, ...) made in a new scratch
    directory and destroyed on leaving, also on failure; the test is skipped,
    with the reason, where that filesystem cannot be made here."""
    @contextlib.contextmanager
    def made(name, prefix):
        with scratch_dir(prefix) as base:
            pool = FilesystemPool(base)
            try:
                try:
                    fs = pool.get(name)
                except FilesystemUnavailable as unavailable:
                    pytest.skip("%s is not available: %s" % (name, unavailable))
                yield fs
            finally:
                pool.destroy()  # before scratch_dir unmounts what is left under base
    return made
