"""The roles for real: ansible-playbook against localhost (connection local).

node_storage declares ext4, xfs (ftype=1, reflink) and btrfs on loop files in a
`snaplab-test-roles-*` temp directory, with a scratch fstab there (the host's
/etc/fstab is never touched). The cases follow one declaration through its life
and run in file order: declare (changed), declare again (changed=0), what is
mounted and recorded, check mode, the safe default, bad declarations, and last
state: absent. conformance runs a small selection of the suite against
localhost and must leave the results and the report on the controller.

Whatever happens, each module's fixture runs the absent play and then unmounts
and detaches anything still left under its own temp directory, and only there.
"""

import json
import os
import re
import shutil
import stat
import subprocess
import xml.etree.ElementTree as ET

import pytest

from snaplab import backends
from snaplab import mount as mountlib
from tests.integration.playbooks import LocalAnsible, declare_snapshots

pytestmark = pytest.mark.needs_root_and_ansible_playbook


class Workspace:
    """A temp directory holding the staged collection, playbooks, and what the
    roles make; runs the roles against localhost."""

    def __init__(self, base, collections, ansible_playbook):
        self.base = base
        self.fstab = self.path("fstab")
        with open(self.fstab, "w"):
            pass
        self.ansible = LocalAnsible(base, collections, ansible_playbook)

    def path(self, *parts):
        return os.path.join(self.base, *parts)

    def play(self, role, variables, check=False):
        return self.ansible.role(role, variables, check)


def findmnt(path):
    """{source, fstype, options} of what is mounted at path, or None."""
    done = subprocess.run(["findmnt", "--json", "--nofsroot", "--output", "SOURCE,FSTYPE,OPTIONS",
                           "--mountpoint", path], capture_output=True, text=True)
    if done.returncode != 0:
        return None
    entry = json.loads(done.stdout)["filesystems"][-1]
    return dict(entry, options=entry["options"].split(","))


def blkid_type(path):
    done = subprocess.run(["blkid", "--probe", "--output", "value", "--match-tag", "TYPE", path],
                          capture_output=True, text=True)
    return done.stdout.strip()


def fstab_lines(ws):
    with open(ws.fstab) as f:
        return [line.split() for line in f if line.strip() and not line.startswith("#")]


# ---------------------------------------------------------------- node_storage

def declaration(ws, state="present"):
    """ext4 and xfs in fstab, btrfs mounted without; a snapshotter root on each."""
    return {
        "node_storage_fstab": ws.fstab,
        "node_storage_filesystems": [
            {"name": "ext4-data", "fstype": "ext4", "state": state,
             "loop_file": ws.path("images", "ext4.img"), "size": "256M",
             "mount_point": ws.path("mnt", "ext4"), "mount_options": ["noatime"],
             "snapshotter_root": {"path": ws.path("mnt", "ext4", "native"), "backend": "native"}},
            {"name": "xfs-data", "fstype": "xfs", "state": state, "xfs_ftype": 1,
             "xfs_reflink": True, "loop_file": ws.path("images", "xfs.img"), "size": "320M",
             "mount_point": ws.path("mnt", "xfs"), "mount_options": ["noatime", "nodiratime"],
             "snapshotter_root": {"path": ws.path("mnt", "xfs", "overlay")}},
            {"name": "btrfs-data", "fstype": "btrfs", "state": state, "persistent": False,
             "loop_file": ws.path("images", "btrfs.img"), "size": "256M",
             "mount_point": ws.path("mnt", "btrfs"), "mount_options": ["compress=zstd"],
             "snapshotter_root": {"path": ws.path("mnt", "btrfs", "btrfs"), "backend": "btrfs"}},
        ],
    }


@pytest.fixture(scope="module")
def ws(scratch_dir, stage_collection, ansible_playbook):
    with scratch_dir("snaplab-test-roles-storage-") as base:
        made = Workspace(base, stage_collection(os.path.join(base, "collections")),
                         ansible_playbook)
        try:
            yield made
        finally:
            made.play("node_storage", declaration(made, "absent"))


@pytest.fixture(scope="module")
def declared(ws):
    """The first run of the declaration."""
    return ws.play("node_storage", declaration(ws))


def test_declaring_filesystems_makes_and_mounts_them(ws, declared):
    assert declared.rc == 0 and declared.changed > 0, declared
    for name, fstype in [("ext4", "ext4"), ("xfs", "xfs"), ("btrfs", "btrfs")]:
        mounted = findmnt(ws.path("mnt", name))
        assert mounted is not None and mounted["fstype"] == fstype, (name, mounted)
        assert blkid_type(ws.path("images", name + ".img")) == fstype
    # loop files are sparse and private
    image = os.stat(ws.path("images", "xfs.img"))
    assert image.st_size == 320 * 1024 * 1024 and image.st_blocks * 512 < image.st_size
    assert stat.S_IMODE(image.st_mode) == 0o600


def test_declaring_again_changes_nothing(ws, declared):
    again = ws.play("node_storage", declaration(ws))
    assert again.rc == 0 and again.changed == 0, again


def test_filesystems_are_mounted_as_declared(ws, declared):
    assert "noatime" in findmnt(ws.path("mnt", "ext4"))["options"]
    xfs_options = findmnt(ws.path("mnt", "xfs"))["options"]
    assert "noatime" in xfs_options and "nodiratime" in xfs_options
    assert any(o.startswith("compress=zstd") for o in findmnt(ws.path("mnt", "btrfs"))["options"])

    info = subprocess.run(["xfs_info", ws.path("mnt", "xfs")], capture_output=True, text=True,
                          check=True).stdout
    assert re.search(r"ftype=1", info) and re.search(r"reflink=1", info), info

    # persistent ones in the (scratch) fstab, through mount's loop option, and
    # (loop files) nofail and after the mount holding the file; btrfs not
    boot = "nofail,x-systemd.requires-mounts-for=" + ws.path("images")
    assert sorted(line[:4] for line in fstab_lines(ws)) == [
        [ws.path("images", "ext4.img"), ws.path("mnt", "ext4"), "ext4", "loop,noatime," + boot],
        [ws.path("images", "xfs.img"), ws.path("mnt", "xfs"), "xfs", "loop,noatime,nodiratime," + boot],
    ]
    for root in (ws.path("mnt", "ext4", "native"), ws.path("mnt", "xfs", "overlay")):
        assert stat.S_IMODE(os.stat(root).st_mode) == 0o700
        assert mountlib.lookup(root).mountpoint == os.path.dirname(root)


def test_snapshot_module_declares_snapshots_on_each_root(ws, declared):
    """The roots node_storage made take the backends they were made for."""
    content = ws.path("content")
    os.makedirs(os.path.join(content, "etc"), exist_ok=True)
    with open(os.path.join(content, "etc", "hostname"), "w") as f:
        f.write("node-1\n")
    snapshots = [{"key": "base", "source": {"directory": content}},
                 {"key": "app", "parent": "base", "state": "active"}]
    for root, backend in [(ws.path("mnt", "ext4", "native"), "native"),
                          (ws.path("mnt", "xfs", "overlay"), "overlay"),
                          (ws.path("mnt", "btrfs", "btrfs"), "btrfs")]:
        play, result = declare_snapshots(ws.ansible, root, backend, snapshots)
        assert play.rc == 0 and play.changed == 1, play
        mounts = {s["key"]: s["mounts"] for s in result["snapshots"]}["app"]
        if backend == "btrfs":  # a subvolume of the root's device, by id
            assert mounts[0]["type"] == "btrfs"
            assert mounts[0]["source"] == findmnt(ws.path("mnt", "btrfs"))["source"]
            assert mounts[0]["options"][0].startswith("subvolid="), mounts
        again, _ = declare_snapshots(ws.ansible, root, backend, snapshots)
        assert again.rc == 0 and again.changed == 0, again
        with backends.open_snapshotter(root, backend) as sn:
            assert {(i.name, i.kind.name) for i in sn.list()} == {
                ("base", "COMMITTED"), ("app", "ACTIVE")}
            # tidy for the absent play: snapshots live inside the filesystem anyway
            sn.remove("app")
            sn.remove("base")


def test_check_mode_reports_a_new_filesystem_but_makes_nothing(ws, declared):
    variables = declaration(ws)
    variables["node_storage_filesystems"].append(
        {"name": "more", "fstype": "ext4", "loop_file": ws.path("images", "more.img"),
         "size": "64M", "mount_point": ws.path("mnt", "more")})
    checked = ws.play("node_storage", variables, check=True)
    assert checked.rc == 0 and checked.changed > 0, checked
    assert not os.path.exists(ws.path("images", "more.img"))
    assert not os.path.exists(ws.path("mnt", "more"))
    assert len(fstab_lines(ws)) == 2


def test_a_loop_file_holding_another_filesystem_is_not_formatted(ws, declared):
    image = ws.path("images", "taken.img")
    with open(image, "wb") as f:
        f.truncate(320 * 1024 * 1024)
    subprocess.run(["mkfs.ext4", "-q", image], check=True)
    taken = {"name": "taken", "fstype": "xfs", "loop_file": image, "size": "320M",
             "mount_point": ws.path("mnt", "taken")}
    variables = {"node_storage_fstab": ws.fstab, "node_storage_install_packages": False,
                 "node_storage_filesystems": [taken]}

    refused = ws.play("node_storage", variables)
    assert refused.rc != 0 and refused.failed == 1, refused
    assert "already holds ext4 (declared: xfs)" in refused.output, refused
    assert "node_storage_allow_format_existing" in refused.output
    assert blkid_type(image) == "ext4" and findmnt(ws.path("mnt", "taken")) is None

    variables["node_storage_allow_format_existing"] = True
    formatted = ws.play("node_storage", variables)
    assert formatted.rc == 0, formatted
    assert blkid_type(image) == "xfs" and findmnt(ws.path("mnt", "taken"))["fstype"] == "xfs"

    taken["state"] = "absent"
    assert ws.play("node_storage", variables).rc == 0
    assert not os.path.exists(image) and findmnt(ws.path("mnt", "taken")) is None


def test_a_mount_point_holding_another_mount_is_not_mounted_over(ws, declared):
    variables = {"node_storage_fstab": ws.fstab, "node_storage_install_packages": False,
                 "node_storage_filesystems": [
                     {"name": "intruder", "fstype": "ext4", "size": "64M",
                      "loop_file": ws.path("images", "intruder.img"),
                      "mount_point": ws.path("mnt", "ext4")}]}
    refused = ws.play("node_storage", variables)
    assert refused.rc != 0, refused
    assert "refusing to mount over it" in refused.output, refused
    assert findmnt(ws.path("mnt", "ext4"))["source"] != ws.path("images", "intruder.img")
    variables["node_storage_filesystems"][0]["state"] = "absent"
    assert ws.play("node_storage", variables).rc == 0  # deletes only its own file
    assert findmnt(ws.path("mnt", "ext4"))["fstype"] == "ext4"
    assert ws.path("mnt", "ext4") in [line[1] for line in fstab_lines(ws)]  # not its line
    assert not os.path.exists(ws.path("images", "intruder.img"))


def test_an_fstab_line_of_another_source_is_neither_replaced_nor_removed(ws, declared):
    foreign = "/dev/disk/by-id/someone-elses %s ext4 defaults 0 0\n" % ws.path("mnt", "theirs")
    with open(ws.fstab) as f:
        before = f.read()
    with open(ws.fstab, "a") as f:
        f.write(foreign)
    try:
        ours = {"name": "ours", "fstype": "ext4", "size": "64M",
                "loop_file": ws.path("images", "ours.img"), "mount_point": ws.path("mnt", "theirs")}
        variables = {"node_storage_fstab": ws.fstab, "node_storage_install_packages": False,
                     "node_storage_filesystems": [ours]}
        refused = ws.play("node_storage", variables)
        assert refused.rc != 0 and "refusing to replace that line" in refused.output, refused
        assert findmnt(ws.path("mnt", "theirs")) is None

        ours["state"] = "absent"
        assert ws.play("node_storage", variables).rc == 0
        with open(ws.fstab) as f:
            assert foreign in f.read()
    finally:
        with open(ws.fstab, "w") as f:
            f.write(before)


@pytest.mark.parametrize("by_symlink", [False, True], ids=["by-kernel-name", "by-symlink"])
def test_a_block_device_is_formatted_mounted_and_kept_on_absent(ws, declared, by_symlink):
    """Also by a symlink, as /dev/disk/by-id/ names are (the lab's disks)."""
    image = ws.path("images", "disk.img")
    with open(image, "wb") as f:
        f.truncate(64 * 1024 * 1024)
    device = subprocess.run(["losetup", "--find", "--show", image], capture_output=True,
                            text=True, check=True).stdout.strip()
    declared_name = device
    if by_symlink:
        declared_name = ws.path("by-id", "virtio-disk")
        os.makedirs(os.path.dirname(declared_name), exist_ok=True)
        os.symlink(device, declared_name)
    try:
        disk = {"name": "disk", "fstype": "ext4", "device": declared_name,
                "mount_point": ws.path("mnt", "disk")}
        variables = {"node_storage_fstab": ws.fstab, "node_storage_install_packages": False,
                     "node_storage_filesystems": [disk]}
        made = ws.play("node_storage", variables)
        assert made.rc == 0 and made.changed > 0, made
        assert findmnt(ws.path("mnt", "disk"))["source"] == device
        assert [declared_name, ws.path("mnt", "disk"), "ext4", "defaults"] in [
            line[:4] for line in fstab_lines(ws)]
        again = ws.play("node_storage", variables)
        assert again.rc == 0 and again.changed == 0, again

        disk["state"] = "absent"
        removed = ws.play("node_storage", variables)
        assert removed.rc == 0, removed
        assert findmnt(ws.path("mnt", "disk")) is None
        assert declared_name not in [line[0] for line in fstab_lines(ws)]
        assert blkid_type(device) == "ext4"  # a device's data stays

        variables["node_storage_wipe_absent"] = True
        wiped = ws.play("node_storage", variables)
        assert wiped.rc == 0 and wiped.changed == 1, wiped
        assert blkid_type(device) == ""
    finally:
        subprocess.run(["losetup", "--detach", device])
        if by_symlink:
            os.unlink(declared_name)


@pytest.mark.parametrize("entry, message", [
    ({"name": "both", "fstype": "ext4", "device": "/dev/null", "loop_file": "/x.img",
      "size": "1G", "mount_point": "/x"}, "mutually exclusive"),
    ({"name": "neither", "fstype": "ext4", "mount_point": "/x"}, "one of the following is required"),
    ({"name": "zfs-later", "fstype": "reiserfs", "loop_file": "/x.img", "size": "1G",
      "mount_point": "/x"}, "value of fstype must be one of"),
    ({"name": "sizeless", "fstype": "ext4", "loop_file": "/x.img", "mount_point": "/x"},
     "sizeless: a loop file declared present needs a size"),
    ({"name": "wrong-root", "fstype": "ext4", "loop_file": "/x.img", "size": "1G",
      "mount_point": "/x", "snapshotter_root": {"path": "/x/r", "backend": "btrfs"}},
     "wrong-root: a btrfs snapshotter_root needs a btrfs filesystem, not ext4"),
    ({"name": "banana", "fstype": "ext4", "loop_file": "/x/images/x.img", "size": "banana",
      "mount_point": "/x"}, "banana: size 'banana' is not a size"),
    ({"name": "tiny", "fstype": "ext4", "loop_file": "/x/images/x.img", "size": "4K",
      "mount_point": "/x"}, "tiny: size 4K is too small: mkfs.ext4 needs at least 128K"),
])
def test_bad_declarations_are_refused_before_anything_changes(ws, entry, message):
    refused = ws.play("node_storage", {"node_storage_fstab": ws.fstab,
                                       "node_storage_filesystems": [entry]})
    assert refused.rc != 0 and refused.changed == 0, refused
    assert message in refused.output, refused
    assert not os.path.exists("/x.img") and not os.path.exists("/x")


def test_partial_defaults_growth_and_absent_of_what_the_role_made(ws, declared):
    """{persistent: false} as the defaults keeps state=present; a bigger size grows
    the loop file and its btrfs; absent removes the directories the role made."""
    grown = {"name": "grown", "fstype": "btrfs", "size": "128M",
             "loop_file": ws.path("made", "by", "role", "grown.img"), "mount_point": ws.path("mnt", "grown")}
    variables = {"node_storage_fstab": ws.fstab, "node_storage_install_packages": False,
                 "node_storage_filesystem_defaults": {"persistent": False},
                 "node_storage_filesystems": [grown]}
    made = ws.play("node_storage", variables)
    assert made.rc == 0 and made.changed == 1, made
    assert ws.path("mnt", "grown") not in [line[1] for line in fstab_lines(ws)]
    small = os.statvfs(ws.path("mnt", "grown"))
    grown["size"] = "256M"
    bigger = ws.play("node_storage", variables)
    assert bigger.rc == 0 and bigger.changed == 1, bigger
    assert os.stat(grown["loop_file"]).st_size == 256 << 20
    large = os.statvfs(ws.path("mnt", "grown"))
    assert large.f_blocks * large.f_frsize > 1.5 * small.f_blocks * small.f_frsize
    assert ws.play("node_storage", variables).changed == 0
    grown["state"] = "absent"
    assert ws.play("node_storage", variables).rc == 0
    assert not os.path.exists(ws.path("made")) and not os.path.exists(ws.path("mnt", "grown"))


def test_absent_removes_mounts_loop_devices_files_and_fstab_lines(ws, declared,
                                                                 loop_devices_under):
    removed = ws.play("node_storage", declaration(ws, "absent"))
    assert removed.rc == 0 and removed.changed > 0, removed
    assert mountlib.mounts_under(ws.base) == []
    assert loop_devices_under(ws.base) == []
    assert fstab_lines(ws) == []
    for name in ("ext4", "xfs", "btrfs"):
        assert not os.path.exists(ws.path("images", name + ".img"))
        assert not os.path.exists(ws.path("mnt", name))

    again = ws.play("node_storage", declaration(ws, "absent"))
    assert again.rc == 0 and again.changed == 0, again


# ----------------------------------------------------------------- conformance

@pytest.fixture
def conformance_ws(scratch_dir, stage_collection, ansible_playbook):
    with scratch_dir("snaplab-test-roles-conformance-") as base:
        yield Workspace(base, stage_collection(os.path.join(base, "collections")),
                        ansible_playbook)


def conformance_vars(ws, **more):
    return dict({
        # both backends: a backend's own cases then have a target to run on
        "conformance_backends": ["native", "overlay"],
        "conformance_filesystems": ["host-dir"],
        "conformance_pytest_args": ["-k", "basic"],
        "conformance_workdir": ws.path("node"),
        "conformance_results_dir": ws.path("results"),
    }, **more)


def test_conformance_results_and_report_land_on_the_controller(conformance_ws):
    ws = conformance_ws
    # What an older copy of the suite left: a case module this suite no longer
    # has would still be collected (and fail) if the copy were not replaced.
    stale = ws.path("node", "conformance", "test_left_by_an_older_suite.py")
    os.makedirs(os.path.dirname(stale))
    with open(stale, "w") as f:
        f.write("def test_left_behind():\n    assert False\n")
    run = ws.play("conformance", conformance_vars(ws, conformance_label="role-test"))
    assert run.rc == 0, run
    assert not os.path.exists(stale)
    # the work directory is pytest's rootdir (no ini file above it is read)
    with open(ws.path("node", "pytest.ini")) as f:
        assert "[pytest]" in f.read()

    with open(ws.path("results", "localhost", "results.json")) as f:
        results = json.load(f)
    assert results["format"] == "snaplab-conformance/1"
    assert results["run"]["label"] == "role-test"
    targets = {r["target"] for r in results["results"]}
    assert targets == {"native-on-host-dir", "overlay-on-host-dir"}, results
    assert all(r["outcome"] == "passed" for r in results["results"]), results

    suite = ET.parse(ws.path("results", "localhost", "junit.xml")).getroot().iter("testsuite")
    suite = next(suite)
    assert suite.get("name") == "snaplab-conformance-role-test"
    assert int(suite.get("tests")) == len(results["results"]) and int(suite.get("failures")) == 0

    with open(ws.path("results", "report.md")) as f:
        report = f.read()
    assert "| native |" in report and "| overlay |" in report and "host-dir" in report
    assert os.path.getsize(ws.path("results", "report.html")) > 0
    assert os.path.exists(ws.path("results", "localhost", "pytest-output.txt"))
    # the suite removed its filesystems
    assert os.listdir(ws.path("node", "fs")) == []


def test_conformance_harness_error_fails_the_host_with_pytest_output(conformance_ws):
    ws = conformance_ws
    run = ws.play("conformance", conformance_vars(
        ws, conformance_filesystems=["no-such-fs"], conformance_install_packages=False))
    assert run.rc != 0 and run.failed == 1, run
    assert "could not run on localhost" in run.output and "no-such-fs" in run.output, run
    with open(ws.path("results", "localhost", "pytest-output.txt")) as f:
        assert "no-such-fs" in f.read()
    assert not os.path.exists(ws.path("results", "report.md"))


def test_conformance_leaves_only_this_runs_results(conformance_ws):
    """pytest stops on a bad option before it writes results: an earlier run's
    are not left beside this run's output as if they were its."""
    ws = conformance_ws
    os.makedirs(ws.path("results", "localhost"))
    for name in ("results.json", "junit.xml"):
        with open(ws.path("results", "localhost", name), "w") as f:
            f.write("from an earlier run\n")
    run = ws.play("conformance", conformance_vars(
        ws, conformance_pytest_args=["--no-such-option"], conformance_install_packages=False))
    assert run.rc != 0 and run.failed == 1 and "could not run on localhost" in run.output, run
    assert sorted(os.listdir(ws.path("results", "localhost"))) == ["pytest-output.txt"]
    with open(ws.path("results", "localhost", "pytest-output.txt")) as f:
        assert "--no-such-option" in f.read()


def test_conformance_says_when_the_suite_is_not_in_the_role(conformance_ws):
    ws = conformance_ws
    collections = ws.ansible.env["ANSIBLE_COLLECTIONS_PATH"]
    files = os.path.join(collections, "ansible_collections", "snaplab", "snapshots", "roles",
                         "conformance", "files")
    shutil.rmtree(os.path.join(files, "conformance"))
    run = ws.play("conformance", conformance_vars(ws, conformance_install_packages=False))
    assert run.rc != 0 and run.failed == 1, run
    assert "has no copy of conformance/" in run.output and "collection/stage.py" in run.output, run
    assert not os.path.exists(ws.path("node"))


def test_conformance_runs_nothing_in_check_mode(conformance_ws):
    ws = conformance_ws
    checked = ws.play("conformance", conformance_vars(ws), check=True)
    assert checked.rc == 0 and checked.changed == 0, checked
    assert not os.path.exists(ws.path("node")) and not os.path.exists(ws.path("results"))
