"""`python -m conformance --start-command ...` for real, as a user runs it (a
subprocess, from a directory outside the repository): the suite starts
`snaplab serve` of the native backend itself, one per root, from the
command, and its lifecycle cases (conformance/test_lifecycle.py) stop,
kill and restart it. Checked: the exit code, and that results.json has the
row endpoint-<plugin> on ext4 with every lifecycle case passed; and that a
command without {socket} is refused before any case runs.
"""

import collections
import json
import os
import subprocess
import sys

import pytest

from conformance.filesystems import TEST_PREFIX
from conformance.serve import grpc_missing

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="the cases mount snapshots: root"),
    pytest.mark.skipif(grpc_missing() is not None, reason=str(grpc_missing())),
]

RUN_TIMEOUT_S = 600
PLUGIN = "snaplab-native"
SERVE_NATIVE = sys.executable + " -m snaplab --root {root} serve --socket {socket} --backend native"
# conformance/test_lifecycle.py's cases, with how many parameters each has.
LIFECYCLE_CASES = {"everything_survives_stop_and_restart": 2,
                   "sigkill_mid_call_is_all_or_nothing": 3,
                   "nothing_is_left_after_removing_everything": 1,
                   "several_clients_at_once": 1}


def run_suite(command, where, *extra):
    """The suite with `command` from `where`; (CompletedProcess, report dir)."""
    report = os.path.join(where, "report")
    done = subprocess.run(
        [sys.executable, "-m", "conformance", "--start-command", command, "--plugin", PLUGIN,
         "--report", report, "--fs-dir", where, *extra],
        cwd=where, capture_output=True, text=True, timeout=RUN_TIMEOUT_S, check=False)
    return done, report


def test_the_lifecycle_cases_pass_on_snaplab_serve_started_by_the_suite(scratch_dir):
    with scratch_dir(TEST_PREFIX + "start-command-") as where:
        done, report = run_suite(SERVE_NATIVE, where, "-k", "test_lifecycle")
        assert done.returncode == 0, "exit %d:\n%s\n%s" % (done.returncode, done.stdout[-4000:],
                                                           done.stderr[-2000:])
        with open(os.path.join(report, "results.json"), encoding="utf-8") as text:
            results = json.load(text)["results"]
    assert {(r["backend"], r["filesystem"]) for r in results} == {("endpoint-" + PLUGIN, "ext4")}
    assert {r["outcome"] for r in results} == {"passed"}, [
        (r["case"], r["outcome"], r["reason"]) for r in results if r["outcome"] != "passed"]
    assert collections.Counter(r["case"] for r in results) == LIFECYCLE_CASES


def test_a_command_without_its_socket_is_refused(scratch_dir):
    with scratch_dir(TEST_PREFIX + "start-command-") as where:
        done, _report = run_suite(sys.executable + " -m snaplab --root {root} serve", where,
                                  "-k", "test_lifecycle")
    assert done.returncode == pytest.ExitCode.USAGE_ERROR, done.stdout + done.stderr
    assert "has no {socket}" in done.stderr
