"""tests/lanes.py, make test's two-lane runner, with dummy lanes (sh and
sleep): the exit-status rule, the messages and the followed log, where
each lane runs (niced session; own mount namespace), and Ctrl-C or SIGTERM
taking the lab lane down."""

import os
import signal
import subprocess
import sys
import time

import pytest

from tests import lanes

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="the host lane's unshare --mount needs root")


@pytest.mark.parametrize("host, lab, status", [(0, 0, 0), (1, 0, 1), (0, 2, 1), (2, 143, 1)])
def test_make_test_passes_only_when_both_lanes_pass(host, lab, status):
    assert lanes.exit_status(host, lab) == status


def test_a_lane_killed_by_a_signal_shows_as_the_shell_shows_it():
    assert lanes.shell_status(-15) == 143 and lanes.shell_status(3) == 3


def runner(log, host, lab):
    return [sys.executable, "-m", "tests.lanes", "--log", log,
            "--host", "host lane", host, "--lab", "lab lane", lab]


@needs_root
def test_messages_the_followed_log_and_the_exit_status(tmp_path):
    log = str(tmp_path / "reports" / "lab.log")  # its directory is made
    done = subprocess.run(
        runner(log, "sh -c 'echo host says; exit 0'",
               "sh -c 'echo lab starts; sleep 1; echo lab ends >&2; exit 3'"),
        cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert done.stdout.splitlines() == [
        "lab lane runs alongside the host tests; its output: %s" % log,
        "host says",
        "== lab lane (started alongside; following %s until it ends)" % log,
        "lab starts", "lab ends",
        "host lane: exit 0; lab lane: exit 3"]
    with open(log) as f:
        assert f.read() == "lab starts\nlab ends\n"


@needs_root
def test_both_lanes_passing_pass(tmp_path):
    done = subprocess.run(runner(str(tmp_path / "lab.log"), "true", "true"), cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.splitlines()[-1] == "host lane: exit 0; lab lane: exit 0"


@needs_root
def test_the_lab_lane_is_a_niced_session_and_the_host_lane_has_its_own_mounts(tmp_path):
    log = str(tmp_path / "lab.log")
    host = "sh -c 'readlink /proc/self/ns/mnt'"
    lab = "sh -c 'echo $$; ps -o ni=,sid= -p $$'"
    done = subprocess.run(runner(log, host, lab), cwd=REPO, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.splitlines()[1] != os.readlink("/proc/self/ns/mnt")
    with open(log) as f:
        pid, niceness_and_session = f.read().splitlines()
    niceness, session = niceness_and_session.split()
    assert int(niceness) == min(os.nice(0) + 10, 19)
    assert session == pid  # the lab lane leads a session (and group) of its own


LAB_LANE_THAT_REPORTS_TERM = (
    "sh -c 'trap \"echo lab got TERM; exit 143\" TERM; sleep 60 & echo $! > %s; wait'")


@pytest.fixture
def start(tmp_path):
    """start(host): the runner with a lab lane that says when it gets SIGTERM;
    (runner, log, pid of the lab lane's sleep). Whatever is left of both
    lanes is killed afterwards, also when a test fails."""
    groups = []

    def start_runner(host):
        log = str(tmp_path / "lab.log")
        sleeper = str(tmp_path / "lab-sleep.pid")
        process = subprocess.Popen(runner(log, host, LAB_LANE_THAT_REPORTS_TERM % sleeper),
                                   cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   text=True, start_new_session=True)
        groups.append(process.pid)
        deadline = time.monotonic() + 30
        while not os.path.exists(sleeper) or not open(sleeper).read().strip():
            assert time.monotonic() < deadline, "the lab lane did not start"
            time.sleep(0.1)
        with open(sleeper) as f:
            lab_sleep = int(f.read())
        groups.append(os.getpgid(lab_sleep))
        return process, log, lab_sleep

    yield start_runner
    for group in groups:
        try:
            os.killpg(group, signal.SIGKILL)
        except ProcessLookupError:
            pass


def gone(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    with open("/proc/%d/stat" % pid) as f:
        return f.read().split(") ", 1)[1].startswith("Z")


@needs_root
def test_ctrl_c_takes_the_lab_lane_down(start):
    process, log, lab_sleep = start("sleep 60")
    started = time.monotonic()
    os.killpg(process.pid, signal.SIGINT)  # as the terminal does: the foreground group
    out, _ = process.communicate(timeout=30)
    assert process.returncode == 130, out
    assert time.monotonic() - started < 10  # the host lane's sleep 60 ended too
    with open(log) as f:
        assert f.read() == "lab got TERM\n"
    assert gone(lab_sleep)  # the lab lane's whole group, not only its leader
    assert "exit" not in out  # no exit-status line when interrupted


@needs_root
def test_sigterm_takes_the_lab_lane_down_and_lets_the_host_lane_finish(start):
    process, log, lab_sleep = start("sh -c 'sleep 2; echo host finished'")
    process.send_signal(signal.SIGTERM)  # the runner only, as make passes it on
    out, _ = process.communicate(timeout=30)
    assert process.returncode == 130, out
    assert "host finished" in out
    with open(log) as f:
        assert f.read() == "lab got TERM\n"
    assert gone(lab_sleep)
