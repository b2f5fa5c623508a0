"""Verify the lab VM with testinfra: what converge declared (the VM's
declaration, lab-vars.json, written from labs/matrix.yml at create) is what
the VM has, the snapshotter roots work, and the suite left nothing behind.

The VM is asked once (node_report.py, one SSH command); the tests judge its
report."""

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


@pytest.fixture(scope="module")
def node(host):
    """node_report.py's report: everything checked below, read in the VM by
    one command (a round trip costs seconds under TCG)."""
    with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "node_report.py")) as f:
        source = f.read()
    return json.loads(host.check_output("python3 -c %s %s %s", source, json.dumps(LAB), SUITE_WORKDIR))


def mounted_at(mounts, path):
    """The last mount at path (the one that shows), or None."""
    at = [m for m in mounts if m["path"] == path]
    return at[-1] if at else None


def listed(done):
    """The snapshots `snaplab --json ls` listed, by name."""
    assert done["rc"] == 0, done
    return {s["Name"]: s for s in json.loads(done["stdout"])}


def test_the_vm_runs_the_release_kernel(node):
    assert node["kernel"].startswith(LAB["lab_kernel"] + "."), node["kernel"]
    # trixie-backports is trixie with a newer kernel: its suite is trixie.
    assert node["codename"] == LAB.get("lab_suite", LAB["lab_release"])


def test_zfs_is_the_kernel_module_from_the_box(node):
    assert "zfs-fuse" not in node["processes"]
    if LAB.get("lab_zfs_unavailable"):
        # The box was made without zfs (its kernel is newer than OpenZFS
        # supports): none must be there either.
        assert not node["zfs_module"]
        return
    assert node["zfs_module"]


@pytest.mark.parametrize("fs", LAB["lab_filesystems"], ids=lambda fs: fs["name"])
def test_each_filesystem_is_mounted_on_its_own_disk(node, fs):
    mounted = mounted_at(node["mounts"], fs["mount_point"])
    assert mounted, fs["mount_point"]
    disk = node["realpath"][fs["device"]]
    if fs["fstype"] == "zfs":
        assert mounted["fstype"] == "zfs"
        assert mounted["device"] == fs["zfs_pool"] + "/snaplab"
        pool = node["zpool_vdevs"][fs["zfs_pool"]]
        assert pool["rc"] == 0, pool
        assert disk in pool["resolved"], pool["stdout"]
    else:
        assert mounted["fstype"] == fs["fstype"]
        assert set(fs["mount_options"]) <= set(mounted["options"]), mounted["options"]
        # The disk the matrix gave this filesystem (by its serial), nothing else.
        assert disk == node["realpath"][mounted["device"]]


@pytest.mark.parametrize("fs", by_name("xfs"), ids=lambda fs: fs["name"])
def test_xfs_has_the_declared_ftype(node, fs):
    info = node["xfs_info"][fs["mount_point"]]
    assert info["rc"] == 0, info
    assert "ftype=%d" % fs["xfs_ftype"] in info["stdout"], info["stdout"]


def test_persistent_mounts_are_in_fstab(node):
    for fs in LAB["lab_filesystems"]:
        if fs["fstype"] != "zfs":
            assert " %s %s " % (fs["mount_point"], fs["fstype"]) in node["fstab"], fs


@pytest.mark.parametrize("root", ROOTS, ids=lambda r: "%s-on-%s" % (r["backend"], r["filesystem"]))
def test_each_root_holds_the_declared_chain(node, root):
    snapshots = listed(node["ls"][root["path"]])
    assert set(snapshots) == {"base", "top", "web"}
    assert snapshots["web"]["Kind"] == "Active" and snapshots["web"]["Parent"] == "top"
    assert snapshots["top"]["Kind"] == "Committed" and snapshots["top"]["Parent"] == "base"


@pytest.mark.parametrize("root", ROOTS, ids=lambda r: "%s-on-%s" % (r["backend"], r["filesystem"]))
def test_each_root_is_usable(node, root):
    """A new active snapshot on the chain mounts and shows the base layer's
    file, takes a write, and goes again without a trace."""
    used = node["used"][root["path"]]
    for step in used["steps"]:
        assert step["rc"] == 0, step
    assert [step["step"] for step in used["steps"]] == ["prepare", "mount", "umount", "rm"], used
    assert used["base_txt"] == "made by the base layer\n"
    assert used["key"] not in listed(used["ls_after"])


def test_the_suite_left_no_mounts_loops_or_pools(node):
    assert "snaplab-conformance-" not in node["mountinfo_after"]
    assert "snaplab-verify-" not in node["mountinfo_after"]
    assert node["losetup_after"]["rc"] == 0, node["losetup_after"]
    assert "snaplab-conformance-" not in node["losetup_after"]["stdout"]
    if LAB.get("lab_zfs_unavailable"):
        assert node["zpools_after"]["rc"] == 127, node["zpools_after"]  # no zpool in the box
    else:
        assert node["zpools_after"]["rc"] == 0, node["zpools_after"]
        assert node["zpools_after"]["stdout"].split() == [fs["zfs_pool"] for fs in by_name("zfs")]
    for mount_point, left in node["left_in_mount_points"].items():
        assert not [name for name in left if name.startswith("snaplab-conformance-")], (mount_point, left)


def test_only_the_declared_filesystems_are_mounted_under_the_lab(node):
    base = "/srv/snaplab/"
    mounted = sorted(m["path"] for m in node["mounts_after"] if m["path"].startswith(base))
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
