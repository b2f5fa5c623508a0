"""The conformance harness on filesystems someone else made (--filesystem-at).

This is how the conformance role runs the suite on node_storage's mounts: the
suite must use them, check they are what they claim, and remove only its own
directory inside them.
"""

import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run_suite(tmp_path, *args):
    results = tmp_path / "results.json"
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "conformance", "-q", "-p", "no:cacheprovider",
         "-k", "test_basic or backend_accepts", "--backends", "native",
         "--results-json", str(results)] + list(args),
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True,
        timeout=600, check=False)
    return proc, json.loads(results.read_text())["results"] if results.exists() else []


def test_suite_runs_on_a_provided_directory_and_leaves_it_as_found(tmp_path):
    provided = tmp_path / "provided"
    provided.mkdir()
    (provided / "keep-me").write_text("not the suite's")
    proc, results = run_suite(tmp_path, "--filesystems", "host-dir",
                              "--filesystem-at", "host-dir=%s" % provided)
    assert proc.returncode == 0, proc.stdout
    assert {(r["target"], r["outcome"]) for r in results} == {("native-on-host-dir", "passed")}
    assert sorted(os.listdir(provided)) == ["keep-me"]


def test_a_provided_filesystem_of_the_wrong_type_is_reported_not_used(tmp_path):
    provided = tmp_path / "not-xfs"
    provided.mkdir()
    proc, results = run_suite(tmp_path, "--filesystems", "xfs",
                              "--filesystem-at", "xfs=%s" % provided)
    assert proc.returncode == 0, proc.stdout
    assert results and all(r["outcome"] == "skipped" for r in results)
    assert "not xfs" in results[0]["reason"]
    assert os.listdir(provided) == []


def test_malformed_filesystem_at_is_a_usage_error(tmp_path):
    proc, _ = run_suite(tmp_path, "--filesystems", "host-dir", "--filesystem-at", "host-dir")
    assert proc.returncode != 0
    assert "NAME=PATH" in proc.stdout


def test_on_a_provided_btrfs_the_backends_read_only_snapshots_go_too(tmp_path, loop_filesystem):
    # The btrfs backend commits read-only subvolumes, which rm -r cannot
    # remove; a filesystem that outlives the run (a lab VM's disk) must
    # still be left as found. It was not: the bullseye VM's verify found a
    # snaplab-conformance-* directory left on its btrfs.
    with loop_filesystem("btrfs", "snaplab-test-provided-btrfs-") as fs:
        (tmp_path / "keep").mkdir()
        # (the later -k and --backends win over run_suite's)
        proc, results = run_suite(tmp_path / "keep", "-k", "usage", "--backends", "btrfs",
                                  "--filesystems", "btrfs", "--filesystem-at", "btrfs=%s" % fs.mountpoint)
        assert proc.returncode == 0, proc.stdout
        assert results and {(r["target"], r["outcome"]) for r in results} == {("btrfs-on-btrfs", "passed")}
        assert os.listdir(fs.mountpoint) == []
