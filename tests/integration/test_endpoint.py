"""`python -m conformance --endpoint ... --plugin ...` for real, as a user runs
it (a subprocess, from a directory outside the repository), against
containerd's own overlayfs through a private containerd's socket and against
`snaplab serve` (a bare snapshotter service) on a native root.

Each run is a modest subset of the suite (SUBSET). Checked: the exit code,
the report directory (results.json with the endpoint row and its passes,
junit.xml, report.md, report.html), that nothing the cases made is left in
the service, and that what someone else had there before is still there,
untouched (the isolation: a namespace per case on containerd, a key prefix
per case on a bare service), and that what a killed earlier run left (its
process gone) is removed, while what a live run holds is not. Every
containerd and serve process is stopped, also on failure.
"""

import collections
import json
import os
import subprocess
import sys

import pytest

from conformance.containerd import Containerd, unavailable_reason
from conformance.endpoint import STORAGE_NOT_VISIBLE
from conformance.filesystems import TEST_PREFIX
from conformance.serve import ServeProcess, grpc_missing

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="the cases mount snapshots: root"),
    pytest.mark.skipif(grpc_missing() is not None, reason=str(grpc_missing())),
]

# Every generic, usage and environment case and a few error cases, none of
# which is a known difference of containerd's overlayfs (see
# known-differences.yml). Those that depend on which snapshotter it is (the
# rename of a lower directory, a child's usage on full copies) read the
# traits the suite knows for the plugin.
SUBSET = " or ".join([
    "test_generic", "test_usage", "test_environment", "test_remove_fails_while_children_exist",
    "test_update_of_immutable_field", "test_prepare_or_view_on_existing",
])
RUN_TIMEOUT_S = 300
NAMESPACE_PREFIX = "snaplab-test-endpoint-"


def a_dead_pid():
    """The process id of a process that has exited (and been reaped)."""
    gone = subprocess.Popen(["true"])
    gone.wait()
    return gone.pid


def run_suite(endpoint, plugin, where, *extra):
    """Run the suite on `endpoint` from `where`; (CompletedProcess, report dir)."""
    report = os.path.join(where, "report")
    done = subprocess.run(
        [sys.executable, "-m", "conformance", "--endpoint", endpoint, "--plugin", plugin,
         "--report", report, "--namespace-prefix", NAMESPACE_PREFIX,
         "--fs-dir", where, "-k", SUBSET, *extra],
        cwd=where, capture_output=True, text=True, timeout=RUN_TIMEOUT_S, check=False)
    return done, report


def check_report(done, report, row, traits_skip=None):
    """The run passed and its report lists `row` with passes; the outcomes.
    `traits_skip`: (case, reason) of the one case the plugin's traits rule out."""
    assert done.returncode == 0, "exit %d:\n%s\n%s" % (done.returncode, done.stdout[-4000:],
                                                       done.stderr[-2000:])
    for name in ("results.json", "junit.xml", "report.md", "report.html"):
        assert os.path.getsize(os.path.join(report, name)) > 0, name
    with open(os.path.join(report, "results.json"), encoding="utf-8") as text:
        results = json.load(text)["results"]
    assert results and {(r["backend"], r["filesystem"]) for r in results} == {(row, "endpoint")}
    outcomes = collections.Counter(r["outcome"] for r in results)
    assert set(outcomes) <= {"passed", "skipped"}, outcomes
    assert outcomes["passed"] >= 30, outcomes
    skipped = {r["case"].split("[")[0]: r["reason"] for r in results if r["outcome"] == "skipped"}
    expected = ["backend_accepts_or_refuses_the_filesystem", "root_is_on_the_target_filesystem",
                "root_of_another_backend_is_refused"]
    if traits_skip:
        expected.append(traits_skip[0])
        assert skipped[traits_skip[0]] == traits_skip[1]
    assert sorted(skipped) == sorted(expected)
    assert skipped["root_is_on_the_target_filesystem"] == STORAGE_NOT_VISIBLE
    assert skipped["backend_accepts_or_refuses_the_filesystem"] == STORAGE_NOT_VISIBLE
    with open(os.path.join(report, "report.md"), encoding="utf-8") as text:
        markdown = text.read()
    assert "| backend \\ filesystem | endpoint |" in markdown
    assert "| %s | ✅ %d pass · %d skip |" % (row, outcomes["passed"], outcomes["skipped"]) \
        in markdown
    return outcomes


@pytest.mark.skipif(unavailable_reason() is not None, reason=str(unavailable_reason()))
def test_the_suite_runs_against_containerds_overlayfs(scratch_dir):
    with scratch_dir(TEST_PREFIX + "endpoint-") as where:
        overlayfs = os.path.join(where, "overlayfs")
        # umask 0, as the suite's own containerd-* targets run (root_permission).
        with Containerd(plugin_roots={"overlayfs": overlayfs}, umask=0) as containerd:
            lease = containerd.create_lease("someone-else")
            # What a killed run left: its namespace, a lease, a snapshot.
            abandoned = "%s%d-0badc0de-1" % (NAMESPACE_PREFIX, a_dead_pid())
            with containerd.snapshotter("overlayfs", abandoned,
                                        containerd.create_lease(abandoned)) as killed:
                killed.prepare("left", "")
            with containerd.snapshotter("overlayfs", "someone-else", lease) as theirs:
                theirs.prepare("theirs", "")
                done, report = run_suite(containerd.address, "overlayfs", where)
                check_report(done, report, "endpoint-containerd-overlayfs")
                assert [info.name for info in theirs.list()] == ["theirs"]
                theirs.remove("theirs")
            containerd.delete_lease("someone-else", lease, sync=True)
            # The cases' namespaces are gone (containerd removes only empty
            # ones), so is every snapshot: none in any namespace, no data left.
            namespaces = containerd.namespaces()
            assert not [ns for ns in namespaces if ns.startswith(NAMESPACE_PREFIX)]
            for namespace in namespaces:
                with containerd.snapshotter("overlayfs", namespace) as sn:
                    assert sn.list() == [], namespace
            assert os.listdir(os.path.join(overlayfs, "snapshots")) == []


def test_the_suite_runs_against_snaplab_serve(scratch_dir):
    from snaplab_grpc.client import RemoteSnapshotter  # pylint: disable=import-outside-toplevel

    with scratch_dir(TEST_PREFIX + "endpoint-") as where:
        root = os.path.join(where, "root")
        serve = ServeProcess(root, "native").start()
        try:
            with RemoteSnapshotter(serve.socket, "snaplab-native") as theirs:
                theirs.prepare("theirs", "")
                # What a killed run left under its prefix (a chain, to be
                # removed children first), and a prefix of a run still alive.
                left = "%s%d-0badc0de-1/" % (NAMESPACE_PREFIX, a_dead_pid())
                running = "%s%d-0badc0de-1/" % (NAMESPACE_PREFIX, os.getpid())
                for prefix in (left, running):
                    theirs.prepare(prefix + "active", "")
                    theirs.commit(prefix + "committed", prefix + "active")
                    theirs.prepare(prefix + "child", prefix + "committed")
                # serve's plugin name: the suite knows its traits
                done, report = run_suite("unix://" + serve.socket, "snaplab-native", where)
                check_report(done, report, "endpoint-snaplab-native", (
                    "usage_of_child_excludes_its_parent", "snaplab-native.yml declares "
                    "usage_includes_parent: true (the case needs false)"))
                # A bare service has one key space: the cases' prefixes kept
                # them off "theirs", and they removed their own keys and the
                # dead run's, not the live one's.
                assert sorted(info.name for info in theirs.list()) == [
                    running + "child", running + "committed", "theirs"]
                for key in ("theirs", running + "child", running + "committed"):
                    theirs.remove(key)
                # serve deletes a Remove's data in the background (its
                # traits: removal until-cleanup); Cleanup finishes it.
                theirs.cleanup()
            assert os.listdir(os.path.join(root, "snapshots")) == []
        finally:
            code = serve.stop()
            serve.discard()
        assert code == 0, serve.log()


def test_nothing_at_the_address_fails_every_case_saying_so(scratch_dir):
    with scratch_dir(TEST_PREFIX + "endpoint-") as where:
        done, report = run_suite(os.path.join(where, "nothing.sock"), "overlayfs", where,
                                 "-k", "test_basic")
        assert done.returncode == 1, done.stdout
        assert "nothing serves containerd's snapshots API at" in done.stdout
        with open(os.path.join(report, "results.json"), encoding="utf-8") as text:
            results = json.load(text)["results"]
        assert [r["outcome"] for r in results] == ["error"]
