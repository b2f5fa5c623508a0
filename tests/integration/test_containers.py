"""Containers on snaplab, as a user runs them: `ctr` against a private
containerd that has `snaplab serve` as its proxy snapshotter plugin
`snaplab`, beside containerd's own overlayfs, both on one loop ext4.

An OCI image built offline (tests/integration/oci_image.py: two layers,
whiteouts, an opaque directory) is imported and run with runc on each
snapshotter; the output and the image's root tree must be what the OCI
layer rules give, on both. Then: what ctr says while serve is down (and
that containerd carries on), the container running again once serve is
back, where snapshots removed while serve was down go, which position of
`--snapshotter` `ctr snapshots unpack` obeys, and that removing the
images and containers leaves the snaplab root as it was when fresh.

The ctr commands are the README's ("Containers on snaplab"), plus the
flags that keep a private containerd's runs off the host's
/run/containerd (RUN_ISOLATION). Everything started is stopped and every
mount, cgroup and directory made is removed, also on failure.
"""

import contextlib
import glob
import hashlib
import os
import stat
import subprocess
import tempfile
import time

import pytest

from conformance.containerd import (DISABLED_PLUGINS, Containerd, ContainerdError,
                                    unavailable_reason)
from conformance.serve import ServeProcess, grpc_missing
from snaplab import mount as mountlib
from snaplab.leases import LEASES_DIRECTORY
from tests.integration.cli_lab import Lab
from tests.integration.oci_image import WHITEOUT, whiteout_image

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or unavailable_reason() is not None or grpc_missing() is not None,
    reason=str(unavailable_reason() or grpc_missing() or "loop devices and mounts need root"))

PROXY = "snaplab"
OVERLAYFS = "overlayfs"
BACKEND = "overlay"
# The plugins conformance/containerd.py disables that running a container
# needs: the runtimes (runc through the v2 shim; the tasks service also
# wants v1 registered), the tasks service and the cgroups monitor.
RUNTIME_PLUGINS = ("io.containerd.runtime.v1.linux", "io.containerd.runtime.v2.task",
                   "io.containerd.service.v1.tasks-service", "io.containerd.grpc.v1.tasks",
                   "io.containerd.monitor.v1.cgroups")
CGROUP_ROOT = "/sys/fs/cgroup"
# containerd 1.6's shims put their sockets here whatever the config says.
SHIM_SOCKETS = "/run/containerd/s"
REDIAL_TIMEOUT_S = 30  # containerd's proxy redials a restarted serve with a backoff


class ContainerLab:
    """A snaplab root served by `snaplab serve`, a private containerd with it
    as proxy plugin `snaplab` and its overlayfs root beside it on the same
    filesystem, a namespace of its own, and the image archive."""

    def __init__(self, base):
        self.cli = Lab(BACKEND, base)  # `snaplab --root <root>`
        self.root = self.cli.root
        self.namespace = "snaplab-test-ctr-" + os.urandom(3).hex()
        self.image = whiteout_image()
        self.archive = self.image.write_archive(os.path.join(base, "image.tar"))
        self.serve = ServeProcess(self.root, BACKEND)
        self.containerd = None
        self.fresh_root = None
        self.host_had_run_containerd = os.path.lexists(os.path.dirname(SHIM_SOCKETS))

    def start(self):
        self.serve.start()
        self.fresh_root = layout_of(self.root)
        self.containerd = Containerd(
            plugin_roots={OVERLAYFS: os.path.join(self.cli.base, OVERLAYFS)},
            disabled_plugins=[p for p in DISABLED_PLUGINS if p not in RUNTIME_PLUGINS],
            extra_config={"proxy_plugins": {PROXY: {"type": "snapshot",
                                                    "address": self.serve.socket}}})
        self.containerd.start()
        return self

    def ctr(self, *argv):
        return self.containerd.ctr(*argv, namespace=self.namespace)

    def ctr_failure(self, *argv):
        """ctr's error message for a command that must fail."""
        with pytest.raises(ContainerdError) as failed:
            self.ctr(*argv)
        return str(failed.value)

    def run_isolation(self):
        """ctr run's fifo and runc state in the private containerd's directory
        (their defaults are under the host's /run/containerd)."""
        return ["--fifo-dir", os.path.join(self.containerd.dir, "fifo"),
                "--runc-root", os.path.join(self.containerd.dir, "runc")]

    def run(self, snapshotter, container):
        """`ctr run --snapshotter S --rm IMAGE ID`: the container's output."""
        return self.ctr("run", "--snapshotter", snapshotter, *self.run_isolation(), "--rm",
                        self.image.name, container)

    def import_image(self, snapshotter):
        self.ctr("images", "import", "--snapshotter", snapshotter, self.archive)

    def snaplab_keys(self):
        """What snaplab itself holds (`snaplab ls` on the root), whatever containerd knows."""
        return sorted(info["Name"] for info in self.cli.json("ls"))

    def ctr_keys(self, snapshotter):
        """What containerd lists for the snapshotter in the namespace."""
        lines = self.ctr("snapshots", "--snapshotter", snapshotter, "ls").splitlines()
        return sorted(line.split()[0] for line in lines[1:])

    @contextlib.contextmanager
    def image_mounted(self, snapshotter):
        """The image's root, mounted read-only by `ctr images mount`."""
        target = tempfile.mkdtemp(prefix="mnt-", dir=self.containerd.dir)
        self.ctr("images", "mount", "--snapshotter", snapshotter, self.image.name, target)
        try:
            yield target
        finally:
            self.ctr("images", "unmount", "--rm", target)
            os.rmdir(target)

    def wait_until_served(self):
        """Until containerd's proxy has redialled serve (bounded)."""
        deadline = time.monotonic() + REDIAL_TIMEOUT_S
        while True:
            try:
                return self.ctr("snapshots", "--snapshotter", PROXY, "ls")
            except ContainerdError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def remove_everything(self):
        """The containers and tasks, then the images with a synchronous
        garbage collection (which is when containerd removes snapshots from
        the snapshotters)."""
        for task in self.ctr("tasks", "ls", "-q").split():
            self.ctr("tasks", "delete", "--force", task)
        for container in self.ctr("containers", "ls", "-q").split():
            self.ctr("containers", "rm", container)
        images = self.ctr("images", "ls", "-q").split()
        if images:
            self.ctr("images", "rm", "--sync", *images)

    def stop(self):
        """Everything the lab started or made, in reverse; returns the problems."""
        problems = []
        if self.containerd is not None:
            if self.containerd.running():
                try:
                    self.remove_everything()  # no shim may outlive containerd
                except ContainerdError as err:
                    problems.append(str(err))
            problems += self.containerd.stop()
        if self.serve.process is not None and self.serve.returncode is None:
            code = self.serve.stop()
            if code != 0:
                problems.append("snaplab serve exited %s: %s" % (code, self.serve.log()))
        self.serve.discard()
        for cgroup in (glob.glob(os.path.join(CGROUP_ROOT, "*", self.namespace))
                       + glob.glob(os.path.join(CGROUP_ROOT, self.namespace))):
            try:
                os.rmdir(cgroup)  # runc removes the container's; the namespace's stays
            except OSError as err:
                problems.append("cgroup %s: %s" % (cgroup, err))
        if not self.host_had_run_containerd:
            for made in (SHIM_SOCKETS, os.path.dirname(SHIM_SOCKETS)):
                with contextlib.suppress(FileNotFoundError):
                    os.rmdir(made)  # only if empty: whatever else is there is not ours
        return problems


def layout_of(root):
    """{relative path: kind} of everything below `root`: what is on disk,
    whatever the modes (SQLite gives a re-created -wal the database's)."""
    return {path: kind for path, (kind, _, _) in tree_of(root, contents=False).items()}


def tree_of(top, contents=True):
    """{relative path: (kind, mode, content digest or link target)} of
    everything below `top`, not following symlinks."""
    tree = {}
    for directory, names, files in os.walk(top):
        for name in names + files:
            path = os.path.join(directory, name)
            info = os.lstat(path)
            kind, detail = "other", "%d:%d" % (os.major(info.st_rdev), os.minor(info.st_rdev))
            if stat.S_ISDIR(info.st_mode):
                kind, detail = "dir", ""
            elif stat.S_ISLNK(info.st_mode):
                kind, detail = "symlink", os.readlink(path)
            elif stat.S_ISREG(info.st_mode):
                kind, detail = "file", ""
                if contents:
                    with open(path, "rb") as data:
                        detail = hashlib.sha256(data.read()).hexdigest()
            tree["/" + os.path.relpath(path, top)] = (kind, stat.S_IMODE(info.st_mode), detail)
    return tree


def expected_tree(image):
    return {path: (entry.kind, entry.mode,
                   entry.target if entry.kind == "symlink" else
                   "" if entry.kind == "dir" else hashlib.sha256(entry.content).hexdigest())
            for path, entry in image.expected_tree().items()}


@pytest.fixture(scope="module")
def ext4(loop_filesystem):
    with loop_filesystem("ext4", "snaplab-test-containers-") as fs:
        yield fs


@pytest.fixture
def lab(ext4):
    """A started ContainerLab; stopped after the test, and it must have
    left nothing (process, mount, cgroup) behind."""
    base = tempfile.mkdtemp(prefix="containers-", dir=ext4.mountpoint)
    made = ContainerLab(base)
    try:
        yield made.start()
    finally:
        problems = made.stop()
        leaked = mountlib.mounts_under(base)
        for where in leaked:
            mountlib.unmount_all(where)
        subprocess.run(["rm", "-rf", base], check=True)
    assert not problems and not leaked, (problems, leaked)


def assert_only_a_fresh_root_is_left(lab):
    """After the images and containers are removed: no snapshot in snaplab,
    and after `snaplab cleanup` nothing on disk that a fresh root lacks."""
    assert lab.ctr_keys(PROXY) == []
    assert lab.snaplab_keys() == []
    # serve deletes what Remove left in the background; its own Cleanup
    # waits for that (`snaplab cleanup`, another process, leaves it alone).
    from snaplab_grpc.client import RemoteSnapshotter  # grpc: checked by pytestmark
    with RemoteSnapshotter(lab.serve.socket, PROXY) as served:
        served.cleanup()
    lab.cli.run("cleanup")
    left = layout_of(lab.root)
    # snaplab makes leases/ at its first Remove (a lock file per removal in
    # flight) and keeps the directory; empty, it holds nothing.
    if "/" + LEASES_DIRECTORY not in lab.fresh_root:
        assert left.pop("/" + LEASES_DIRECTORY, "dir") == "dir"
    assert left == lab.fresh_root


def test_a_container_runs_the_same_on_snaplab_and_overlayfs(lab):
    expected_output = lab.image.expected_output()
    for snapshotter in (PROXY, OVERLAYFS):
        lab.import_image(snapshotter)
        assert lab.ctr_keys(snapshotter) == sorted(lab.image.chain_ids())
        assert lab.run(snapshotter, "run-on-" + snapshotter) == expected_output

    # The image's root as each snapshotter mounts it: names, kinds, modes,
    # contents and link targets as the layers give them, whiteouts and the
    # opaque directory's hidden content gone.
    expected = expected_tree(lab.image)
    for snapshotter in (PROXY, OVERLAYFS):
        with lab.image_mounted(snapshotter) as root:
            found = tree_of(root)
        assert found == expected, snapshotter
        assert not [path for path in found if os.path.basename(path).startswith(WHITEOUT)]

    # The snaplab side: keys "<namespace>/<n>/<chain ID>", nothing left of
    # the containers (run --rm) nor of the mounts' views.
    assert sorted(key.split("/", 2)[2] for key in lab.snaplab_keys()) == sorted(
        lab.image.chain_ids())
    assert all(key.startswith(lab.namespace + "/") for key in lab.snaplab_keys())

    lab.remove_everything()
    assert lab.ctr_keys(OVERLAYFS) == []
    assert_only_a_fresh_root_is_left(lab)


def test_while_serve_is_down_ctr_fails_clearly_and_containerd_carries_on(lab):
    lab.import_image(PROXY)
    lab.import_image(OVERLAYFS)
    assert lab.serve.stop() == 0

    # gRPC's UNAVAILABLE, as "connection closed" on the connection serve
    # closed, then as a failed dial naming the socket
    for argv in (("run", "--snapshotter", PROXY, *lab.run_isolation(), "--rm", lab.image.name,
                  "while-down"),
                 ("snapshots", "--snapshotter", PROXY, "ls")):
        failure = lab.ctr_failure(*argv)
        assert failure.endswith(": unavailable") or ": unavailable: " in failure, failure
    # containerd itself, its other snapshotters and its metadata are fine
    assert lab.containerd.running()
    assert lab.run(OVERLAYFS, "overlayfs-meanwhile") == lab.image.expected_output()
    assert lab.ctr("containers", "ls", "-q").split() == []  # the failed run left none

    lab.serve.start()  # same root, same socket
    lab.wait_until_served()
    assert lab.run(PROXY, "after-serve-is-back") == lab.image.expected_output()

    lab.remove_everything()
    assert_only_a_fresh_root_is_left(lab)


def test_snapshots_removed_while_serve_is_down_go_at_the_next_snaplab_collection(lab):
    lab.import_image(PROXY)
    held = lab.snaplab_keys()
    assert len(held) == 2
    assert lab.serve.stop() == 0
    lab.ctr("images", "rm", "--sync", lab.image.name)  # containerd forgets them at once...
    assert lab.ctr("images", "ls", "-q").split() == []
    lab.serve.start()
    lab.wait_until_served()
    assert lab.ctr_keys(PROXY) == []
    assert lab.snaplab_keys() == held  # ...but its collection could not reach snaplab

    # containerd 1.6 does not retry that collection: neither a synchronous
    # collection nor a restart of containerd sweeps snaplab again...
    lab.containerd.delete_lease(lab.namespace, lab.containerd.create_lease(lab.namespace))
    lab.containerd.restart()
    assert lab.snaplab_keys() == held
    # ...the next one that removes a snaplab snapshot does, and takes everything
    # containerd no longer knows.
    lab.ctr("snapshots", "--snapshotter", PROXY, "prepare", "collect-me")
    lab.ctr("snapshots", "--snapshotter", PROXY, "rm", "collect-me")
    lab.containerd.delete_lease(lab.namespace, lab.containerd.create_lease(lab.namespace))
    assert_only_a_fresh_root_is_left(lab)


def test_ctr_snapshots_unpack_takes_the_snapshotter_after_the_verb(lab):
    lab.ctr("images", "import", "--no-unpack", lab.archive)
    digest = lab.image.manifest_digest
    # ctr 1.6's `unpack` has a --snapshotter of its own, so the one given to
    # `snapshots` before the verb is ignored: the layers go to the default.
    lab.ctr("snapshots", "--snapshotter", PROXY, "unpack", digest)
    assert lab.ctr_keys(PROXY) == []
    assert lab.ctr_keys(OVERLAYFS) == sorted(lab.image.chain_ids())
    lab.ctr("snapshots", "unpack", "--snapshotter", PROXY, digest)
    assert lab.ctr_keys(PROXY) == sorted(lab.image.chain_ids())
    assert lab.run(PROXY, "after-unpack") == lab.image.expected_output()

    lab.remove_everything()
    assert_only_a_fresh_root_is_left(lab)
