"""Verify the converged scenario with testinfra: what converge.yml declared
(inventory/group_vars/all.yml) is what the machine has."""

import json
import os

import pytest

REPO = os.environ.get("MOLECULE_PROJECT_DIRECTORY",
                      os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(
                          os.path.abspath(__file__))))))


@pytest.fixture(scope="module")
def declared(host):
    """The inventory's variables for this host (plain values, nothing templated)."""
    return host.ansible.get_variables()


def snaplab(host, declared, *argv):
    """Run the snaplab CLI from the repository on the scenario's xfs root."""
    command = host.run("cd %s && python3 -m snaplab --root %s --backend %s" + " %s" * len(argv),
                       REPO, declared["molecule_root"], declared["molecule_backend"], *argv)
    assert command.rc == 0, command.stderr
    return command.stdout


def test_filesystems_are_mounted_with_the_declared_options(host, declared):
    for fs in declared["molecule_filesystems"]:
        mounted = host.mount_point(fs["mount_point"])
        assert mounted.exists, fs["mount_point"]
        assert mounted.filesystem == fs["fstype"]
        assert set(fs["mount_options"]) <= set(mounted.options), (fs, mounted.options)


def test_xfs_has_ftype_and_reflink(host, declared):
    xfs = next(fs for fs in declared["molecule_filesystems"] if fs["fstype"] == "xfs")
    info = host.check_output("xfs_info %s", xfs["mount_point"])
    assert "ftype=1" in info and "reflink=1" in info, info


def test_persistent_mounts_are_in_the_scratch_fstab_only(host, declared):
    fstab = host.file(declared["node_storage_fstab"]).content_string
    for fs in declared["molecule_filesystems"]:
        assert "%s %s %s" % (fs["loop_file"], fs["mount_point"], fs["fstype"]) in fstab
        assert fs["mount_point"] not in host.file("/etc/fstab").content_string


def test_snapshotter_roots_exist_on_their_filesystems(host, declared):
    for fs in declared["molecule_filesystems"]:
        root = host.file(fs["snapshotter_root"]["path"])
        assert root.is_directory and root.mode == 0o700


def test_the_root_holds_the_declared_chain(host, declared):
    listed = {s["Name"]: s for s in json.loads(snaplab(host, declared, "--json", "ls"))}
    assert set(listed) == {s["key"] for s in declared["molecule_snapshots"]}
    for snapshot in declared["molecule_snapshots"]:
        found = listed[snapshot["key"]]
        assert found["Kind"] == snapshot.get("state", "committed").capitalize()
        assert found.get("Parent", "") == snapshot.get("parent", "")


def test_the_active_snapshot_shows_every_layer(host, declared):
    """Mounting the active snapshot shows the file of each of the three layers."""
    active = next(s for s in declared["molecule_snapshots"] if s.get("state") == "active")
    target = os.path.join(declared["molecule_workspace"], "verify-mount")
    host.check_output("mkdir -p %s", target)
    try:
        snaplab(host, declared, "mount", target, active["key"])
        layers = [s["key"] for s in declared["molecule_snapshots"] if "source" in s]
        for key in layers:
            shown = host.file(os.path.join(target, key + ".txt"))
            assert shown.content_string == "made by the %s layer\n" % key
    finally:
        host.run("umount %s", target)
        host.run("rmdir %s", target)


def test_nothing_else_is_mounted_in_the_workspace(host, declared):
    workspace = declared["molecule_workspace"].rstrip("/") + "/"
    mounted = sorted(m.path for m in host.mount_point.get_mountpoints()
                     if m.path.startswith(workspace))
    assert mounted == sorted(fs["mount_point"] for fs in declared["molecule_filesystems"])
