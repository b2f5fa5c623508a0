"""`python -m conformance --start-command ...` for real, as a user runs it (a
subprocess, from a directory outside the repository): the suite starts
`snaplab serve` of the native backend itself, one per root, from the
command, and its lifecycle cases (conformance/test_lifecycle.py) stop,
kill and restart it. Checked: the exit code, and that results.json has the
row endpoint-<plugin> on ext4 with every lifecycle case passed; and that a
command without {socket} is refused before any case runs. Then the parts,
on small shell services: the template, a service that ignores SIGTERM
(killed, reported), one that leaves a child behind (killed with its
process group, reported), one that exits before it is ready (its log in
the error).
"""

import collections
import contextlib
import json
import os
import re
import signal
import subprocess
import sys

import pytest

from snaplab import errors

from conformance.filesystems import TEST_PREFIX
from conformance.process import ServiceFailed, ServiceProcess
from conformance.serve import grpc_missing
from conformance.started import check_command, command_argv

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
    # a case's own parameters are in its name: everything_survives_stop_and_restart[SIGINT]
    assert collections.Counter(r["case"].split("[")[0] for r in results) == LIFECYCLE_CASES


def test_a_failed_case_shows_the_log_of_the_service_it_ran_on(scratch_dir):
    with scratch_dir(TEST_PREFIX + "start-command-") as where:
        # serve's roots are 0755: a declared 0700 fails root_permission
        done, report = run_suite(SERVE_NATIVE, where, "-k", "test_root_permission",
                                 "--trait", "root_mode=0700")
        with open(os.path.join(report, "junit.xml"), encoding="utf-8") as text:
            junit = text.read()
    assert done.returncode == 1, done.stdout + done.stderr
    assert "expected 0700 (root_mode), got 0755" in done.stdout
    assert "log of the service on" in done.stdout
    assert " ready: native snapshotter at" in done.stdout  # serve's own log line
    assert "failures" in junit


def test_a_command_without_its_socket_is_refused(scratch_dir):
    with scratch_dir(TEST_PREFIX + "start-command-") as where:
        done, _report = run_suite(sys.executable + " -m snaplab --root {root} serve", where,
                                  "-k", "test_lifecycle")
    assert done.returncode == pytest.ExitCode.USAGE_ERROR, done.stdout + done.stderr
    assert "has no {socket}" in done.stderr


# ---------------------------------------------------------------- the parts, on small real processes

def test_the_template_fills_each_argument_as_split_by_a_shell():
    argv = command_argv("svc --root={root} --listen '{socket}' 'a b' {root}/sub", "/r", "/s.sock")
    assert argv == ["svc", "--root=/r", "--listen", "/s.sock", "a b", "/r/sub"]
    for command, missing in (("svc --root {root}", "{socket}"), ("svc {socket}", "{root}"),
                             ("", "{root} or {socket}")):
        with pytest.raises(errors.InvalidArgument, match=re.escape("has no " + missing)):
            check_command(command)


@contextlib.contextmanager
def shell_service(script, scratch_dir):
    """A ServiceProcess of `sh -c script`, ready once it printed "up"."""
    with scratch_dir(TEST_PREFIX + "service-") as where:
        process = ServiceProcess(["sh", "-c", script], os.path.join(where, "none.sock"), where,
                                 ready=lambda process: "up" in process.log())
        try:
            yield process
        finally:
            process.kill()


def test_a_service_that_ignores_sigterm_is_killed_and_reported(scratch_dir):
    with shell_service("trap '' TERM; echo up; while :; do sleep 1; done", scratch_dir) as service:
        service.start()
        with pytest.raises(ServiceFailed, match="did not stop within 1 s of SIGTERM; killed"):
            service.stop(timeout=1)
        assert not service.running
        assert service.returncode == -signal.SIGKILL


def test_what_a_service_started_is_killed_with_it_and_reported(scratch_dir):
    # The child ignores SIGTERM: only the group's SIGKILL ends it.
    script = "(trap '' TERM; sleep 1000) & echo up; wait"
    with shell_service(script, scratch_dir) as service:
        service.start()
        child = next(pid for pid in pids_in_group(service.process.pid)
                     if pid != service.process.pid)
        with pytest.raises(ServiceFailed, match="processes it started were still running"):
            service.stop()
        assert pids_in_group(service.process.pid) == []
        assert not os.path.exists("/proc/%d" % child) or zombie(child)


def test_an_exit_before_ready_says_why_with_the_log(scratch_dir):
    with shell_service("echo 'no such plugin: frobnicate' >&2; exit 3", scratch_dir) as service:
        with pytest.raises(ServiceFailed, match="exited with 3 before it was ready(.|\n)*"
                                                "no such plugin: frobnicate"):
            service.start()


def pids_in_group(pgid):
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            with contextlib.suppress(OSError):
                if os.getpgid(int(name)) == pgid and not zombie(int(name)):
                    found.append(int(name))
    return found


def zombie(pid):
    with contextlib.suppress(OSError):
        with open("/proc/%d/stat" % pid, encoding="utf-8") as text:
            return text.read().rsplit(")", 1)[1].split()[0] == "Z"
    return False
