"""Verify the lab VM with testinfra: what converge declared (the VM's
declaration, lab-vars.json, written from labs/matrix.yml at create) is what
the VM has, the snapshotter roots work, and the suite left nothing behind."""

import json
import os

import pytest

EPHEMERAL = os.environ["MOLECULE_EPHEMERAL_DIRECTORY"]
PROJECT = os.environ["MOLECULE_PROJECT_DIRECTORY"]
# Where the conformance role copied the snaplab core and the suite.
SUITE_WORKDIR = "/var/tmp/snaplab-conformance"


def lab_vars():
    with open(os.path.join(EPHEMERAL, "lab-vars.json")) as f:
        return json.load(f)


LAB = lab_vars()
ROOTS = LAB["lab_roots"]


def by_name(kind):
    return [fs for fs in LAB["lab_filesystems"] if fs["fstype"] == kind]


def snaplab(host, root, *argv):
    """The snaplab CLI in the VM, from the copy the conformance role made."""
    command = host.run("cd %s && python3 -m snaplab --root %s --backend %s" + " %s" * len(argv),
                       SUITE_WORKDIR, root["path"], root["backend"], *argv)
    assert command.rc == 0, command.stderr
    return command.stdout


def test_the_vm_runs_the_release_kernel(host):
    release = host.check_output("uname -r")
    assert release.startswith(LAB["lab_kernel"] + "."), release
    assert host.system_info.codename == LAB["lab_release"]


def test_zfs_is_the_kernel_module_from_the_box(host):
    assert host.file("/sys/module/zfs/version").exists
    assert not host.process.filter(comm="zfs-fuse")


@pytest.mark.parametrize("fs", LAB["lab_filesystems"], ids=lambda fs: fs["name"])
def test_each_filesystem_is_mounted_on_its_own_disk(host, fs):
    mounted = host.mount_point(fs["mount_point"])
    assert mounted.exists, fs["mount_point"]
    if fs["fstype"] == "zfs":
        assert mounted.filesystem == "zfs"
        assert mounted.device == fs["zfs_pool"] + "/snaplab"
        pool_disk = host.check_output("zpool status -P %s", fs["zfs_pool"])
        assert host.check_output("readlink -f %s", fs["device"]) in pool_disk, pool_disk
    else:
        assert mounted.filesystem == fs["fstype"]
        assert set(fs["mount_options"]) <= set(mounted.options), mounted.options
        # The disk the matrix gave this filesystem (by its serial), nothing else.
        assert host.check_output("readlink -f %s", fs["device"]) == \
            host.check_output("readlink -f %s", mounted.device)


@pytest.mark.parametrize("fs", by_name("xfs"), ids=lambda fs: fs["name"])
def test_xfs_has_the_declared_ftype(host, fs):
    info = host.check_output("xfs_info %s", fs["mount_point"])
    assert "ftype=%d" % fs["xfs_ftype"] in info, info


def test_persistent_mounts_are_in_fstab(host):
    fstab = host.file("/etc/fstab").content_string
    for fs in LAB["lab_filesystems"]:
        if fs["fstype"] != "zfs":
            assert " %s %s " % (fs["mount_point"], fs["fstype"]) in fstab, fs


@pytest.mark.parametrize("root", ROOTS, ids=lambda r: "%s-on-%s" % (r["backend"], r["filesystem"]))
def test_each_root_holds_the_declared_chain(host, root):
    listed = {s["Name"]: s for s in json.loads(snaplab(host, root, "--json", "ls"))}
    assert set(listed) == {"base", "top", "web"}
    assert listed["web"]["Kind"] == "Active" and listed["web"]["Parent"] == "top"
    assert listed["top"]["Kind"] == "Committed" and listed["top"]["Parent"] == "base"


@pytest.mark.parametrize("root", ROOTS, ids=lambda r: "%s-on-%s" % (r["backend"], r["filesystem"]))
def test_each_root_is_usable(host, root):
    """A new active snapshot on the chain mounts and shows the base layer's
    file, takes a write, and goes again without a trace."""
    target = host.check_output("mktemp -d /tmp/snaplab-verify-XXXXXX")
    key = "verify-%s" % root["filesystem"]
    try:
        snaplab(host, root, "prepare", key, "top")
        snaplab(host, root, "mount", target, key)
        try:
            assert host.file(target + "/base.txt").content_string == "made by the base layer\n"
            host.check_output("sh -c 'echo written > %s/new.txt'", target)
        finally:
            host.run("umount %s", target)
        snaplab(host, root, "rm", key)
    finally:
        host.run("rmdir %s", target)
    listed = {s["Name"] for s in json.loads(snaplab(host, root, "--json", "ls"))}
    assert key not in listed


def test_the_suite_left_no_mounts_loops_or_pools(host):
    mountinfo = host.file("/proc/self/mountinfo").content_string
    assert "snaplab-conformance-" not in mountinfo
    assert "snaplab-verify-" not in mountinfo
    assert "snaplab-conformance-" not in host.check_output("losetup --list --noheadings || true")
    pools = host.check_output("zpool list -H -o name").split()
    assert pools == [fs["zfs_pool"] for fs in by_name("zfs")]
    for fs in LAB["lab_filesystems"]:
        left = host.check_output("ls -A %s", fs["mount_point"]).split()
        assert not [name for name in left if name.startswith("snaplab-conformance-")], left


def test_only_the_declared_filesystems_are_mounted_under_the_lab(host):
    base = "/srv/snaplab/"
    mounted = sorted(m.path for m in host.mount_point.get_mountpoints() if m.path.startswith(base))
    # zfs mounts the snapshotter root's child dataset under the pool's dataset.
    expected = [fs["mount_point"] for fs in LAB["lab_filesystems"]] + \
        [r["path"] for r in ROOTS if r["backend"] == "zfs"]
    assert mounted == sorted(expected)


def test_the_results_were_fetched_to_the_controller():
    results_dir = os.environ.get("LAB_RESULTS_DIR") or os.path.join(
        PROJECT, "reports", "lab-" + LAB["lab_release"])
    with open(os.path.join(results_dir, LAB["lab_release"], "results.json")) as f:
        results = json.load(f)
    assert results["results"], "no results"
