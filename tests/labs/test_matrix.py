"""Tests of the lab matrix (labs/matrix.yml, labs/matrix.py) and of the
Vagrantfile that reads it.

The matrix is read the way the Vagrantfile reads it (Ruby's YAML), so the
tests that load it need ruby (it comes with vagrant); the validation tests
work on plain data.
"""

import copy
import os
import re
import shutil
import subprocess

import pytest

from conformance.filesystems import FILESYSTEMS as SUITE_FILESYSTEMS
from labs import boxes, matrix

HAVE_RUBY = shutil.which("ruby") is not None
needs_ruby = pytest.mark.skipif(not HAVE_RUBY, reason="ruby is not installed (make lab-deps)")
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def data():
    if not HAVE_RUBY:
        pytest.skip("ruby is not installed (make lab-deps)")
    return matrix.load()


@needs_ruby
def test_the_matrix_is_valid(data):
    assert matrix.problems(data) == []


def test_its_releases_are_the_box_builders(data):
    assert list(data["releases"]) == list(boxes.RELEASES)
    for name in data["releases"]:
        rel = matrix.release(data, name)
        assert rel["box"] == "snaplab/" + name
        assert rel["kernel"] == boxes.RELEASES[name]["kernel"]


def test_every_filesystem_is_one_the_suite_knows(data):
    for name in data["filesystems"]:
        assert name in SUITE_FILESYSTEMS


def test_cells_are_where_the_backends_apply(data):
    cells = set(matrix.cells(data, ["bookworm"]))
    assert ("bookworm", "zfs", "zfs") in cells
    assert ("bookworm", "btrfs", "btrfs") in cells
    assert ("bookworm", "ext4", "btrfs") not in cells
    assert ("bookworm", "xfs-noftype", "overlay") not in cells  # no d_type
    assert all(fs in matrix.release(data, rel)["filesystems"] for rel, fs, _ in cells)


def test_each_filesystem_gets_its_own_disk_with_a_serial(data):
    for name in data["releases"]:
        rel = matrix.release(data, name)
        assert [d["name"] for d in rel["disks"]] == rel["filesystems"]
        for disk in rel["disks"]:
            assert len(disk["serial"]) <= matrix.SERIAL_MAX
            assert disk["device"] == "/dev/disk/by-id/virtio-" + disk["serial"]


def test_the_scenario_declaration_matches_node_storage(data):
    declared = matrix.scenario_vars(data, "bookworm")
    by_fs = {e["name"][len("lab-"):]: e for e in declared["lab_filesystems"]}
    assert set(by_fs) == set(declared["lab_filesystem_at"]) == set(declared["lab_suite_filesystems"])
    assert by_fs["zfs"]["zfs_pool"] and "mount_options" not in by_fs["zfs"]
    assert by_fs["zfs"]["snapshotter_root"] == {"path": "/srv/snaplab/zfs/zfs", "backend": "zfs"}
    # The pool sits on the disk's one partition (matrix.yml: on_partition).
    assert by_fs["zfs"]["device"] == "/dev/disk/by-id/virtio-snaplab-zfs-part1"
    assert declared["lab_partitioned_disks"] == ["/dev/disk/by-id/virtio-snaplab-zfs"]
    assert by_fs["xfs-noftype"]["xfs_ftype"] == 0 and by_fs["xfs-noftype"]["xfs_reflink"] is False
    assert by_fs["xfs"]["xfs_ftype"] == 1
    for name, entry in by_fs.items():
        assert declared["lab_filesystem_at"][name] == entry["mount_point"]
        assert entry["snapshotter_root"]["path"].startswith(entry["mount_point"] + "/")
    assert declared["lab_backends"] == ["native", "overlay", "btrfs", "zfs", "aufs", "blockfile", "erofs"]


def test_xfs_noftype_is_declared_where_the_box_kernel_mounts_v4(data):
    """Only checkable for boxes that are built (the manifest records the
    kernel's CONFIG_XFS_SUPPORT_V4)."""
    checked = 0
    for name in data["releases"]:
        box = boxes.current_box(name)
        if not box.is_built():
            continue
        v4 = box.read_manifest().get("kernel_config", {}).get("CONFIG_XFS_SUPPORT_V4", "n")
        assert ("xfs-noftype" in matrix.release(data, name)["filesystems"]) == (v4 == "y"), (name, v4)
        checked += 1
    if not checked:
        pytest.skip("no box is built")


def test_the_vagrantfile_derives_the_same_names():
    """The Vagrantfile spells the disk serials, the domain prefix and the
    loopback-only settings the way labs/ expects."""
    with open(os.path.join(REPO, "Vagrantfile")) as f:
        text = f.read()
    assert 'serial: "%s#{fs}"' % matrix.DISK_SERIAL_PREFIX in text
    assert "lv.default_prefix = 'snaplab-lab-'" in text
    assert "lv.mgmt_attach = false" in text
    assert "hostfwd=tcp:127.0.0.1:#{port}-:22" in text
    assert "restrict=on" in text
    assert re.search(r"synced_folder '\.', '/vagrant', disabled: true", text)
    # Loops over releases with .each: a `for` loop would give every machine the last one.
    assert not re.search(r"^\s*for\s", text, re.M)


@pytest.mark.skipif(shutil.which("vagrant") is None, reason="vagrant is not installed")
def test_vagrant_reads_the_matrix(tmp_path):
    env = dict(os.environ, VAGRANT_DOTFILE_PATH=str(tmp_path / "vagrant"),
               VAGRANT_CHECKPOINT_DISABLE="1")
    done = subprocess.run(["vagrant", "status", "--machine-readable"], cwd=REPO, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True)
    assert done.returncode == 0, done.stdout
    machines = re.findall(r"^\d+,([a-z-]+),state,not_created$", done.stdout, re.M)
    assert machines == list(boxes.RELEASES)


@pytest.mark.skipif(shutil.which("vagrant") is None, reason="vagrant is not installed")
def test_the_vagrantfile_refuses_an_unknown_accelerator(tmp_path):
    env = dict(os.environ, VAGRANT_DOTFILE_PATH=str(tmp_path / "vagrant"), LAB_ACCEL="xen",
               VAGRANT_CHECKPOINT_DISABLE="1")
    done = subprocess.run(["vagrant", "status"], cwd=REPO, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, universal_newlines=True)
    assert done.returncode != 0 and "LAB_ACCEL must be kvm or tcg" in done.stdout


# -- validation on plain data -------------------------------------------------

@pytest.fixture
def good(data):
    return copy.deepcopy(data)


@pytest.mark.parametrize("change, expected", [
    (lambda d: d["releases"]["trixie"].update(ssh_port=d["releases"]["bookworm"]["ssh_port"]),
     "clashes"),
    (lambda d: d["releases"]["trixie"].update(mac=d["releases"]["bookworm"]["mac"]), "used twice"),
    (lambda d: d["releases"]["trixie"].update(mac="aa:bb:cc:dd:ee:ff"), "must be 52:54:00"),
    (lambda d: d["releases"]["trixie"].update(ssh_port=60000), "ssh_port"),
    (lambda d: d["releases"]["trixie"].update(filesystems=["ext4", "ntfs"]), "ntfs is not declared"),
    (lambda d: d["releases"]["trixie"].update(disk_size={"ext4": "lots"}), "size"),
    (lambda d: d["releases"]["trixie"].update(colour="blue"), "unknown keys colour"),
    (lambda d: d["releases"]["trixie"].pop("box"), "box is missing"),
    (lambda d: d["filesystems"]["ext4"].update(root_backend="btrfs"), "does not apply"),
    (lambda d: d["filesystems"]["zfs"].pop("zfs_pool"), "zfs needs zfs_pool"),
    (lambda d: d["filesystems"]["zfs"].update(raid="z2"), "unknown keys raid"),
    (lambda d: d["filesystems"].update({"ext4-with-a-long-name": {"fstype": "ext4", "root_backend": "native"}}),
     "longer than 20"),
    (lambda d: d["backends"].update(devmapper=["ext4"]), "not a snaplab backend"),
])
def test_a_bad_matrix_is_refused_with_the_reason(good, change, expected):
    change(good)
    found = matrix.problems(good)
    assert any(expected in problem for problem in found), found
    with pytest.raises(matrix.MatrixError, match="not valid"):
        matrix.validate(good)


def test_an_unknown_release_is_refused(data):
    with pytest.raises(matrix.MatrixError, match="unknown release 'sid'"):
        matrix.release(data, "sid")


@needs_ruby
def test_a_broken_file_is_refused_with_the_parsers_message(tmp_path):
    path = tmp_path / "matrix.yml"
    path.write_text("releases: [unclosed\n")
    with pytest.raises(matrix.MatrixError, match=str(path)):
        matrix.load(str(path))


@needs_ruby
def test_the_cli_lists_cells_and_checks():
    done = subprocess.run(["python3", "-m", "labs.matrix", "cells", "bookworm"], cwd=REPO,
                          stdout=subprocess.PIPE, universal_newlines=True, check=True)
    assert "bookworm zfs zfs" in done.stdout.splitlines()
    done = subprocess.run(["python3", "-m", "labs.matrix", "check"], cwd=REPO,
                          stdout=subprocess.PIPE, universal_newlines=True, check=True)
    assert "%d releases" % len(boxes.RELEASES) in done.stdout
