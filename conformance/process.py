"""A service the suite starts as a process of its own: started, stopped, killed.

    ServiceProcess(argv, socket, workdir, ready=answers).start()

runs `argv` in a session of its own (so that a signal reaches the service
and whatever it started: the process group), its stdout and stderr in
`workdir`/service.log, and waits until `ready(process)` says it answers.
stop() sends SIGTERM (or SIGINT...) to the group and waits; a service that
does not stop in time, or leaves processes of its group behind, is killed
with SIGKILL and reported (ServiceFailed, with the log's tail). kill() is
SIGKILL at once, for the cases that crash a service on purpose. start()
again restarts it with the same argv, socket and log.

Subclasses say what a clean stop is (stopped_cleanly) and what an exit
before ready means (failure): conformance/serve.py's ServeProcess turns
snaplab serve's exit codes back into snaplab's error classes.
"""

import os
import shutil
import signal
import subprocess
import time

START_TIMEOUT_S = 60
STOP_TIMEOUT_S = 30
POLL_INTERVAL_S = 0.02
LOG_TAIL_LINES = 40
GROUP_GONE_S = 5


class ServiceFailed(Exception):
    """A started service did not start, or did not stop as it should."""


def service_environ():
    """The suite's environment without snaplab's own settings (SNAPLAB_ROOT,
    the suite's SNAPLAB_* options): a service reads its root from its
    command line, never from the suite's environment."""
    return {k: v for k, v in os.environ.items() if not k.startswith("SNAPLAB_")}


class ServiceProcess:
    """One service process (see the module docstring). `ready(self)` -> bool
    is asked until it says yes; `name` is what messages call it."""

    name = "the service"

    def __init__(self, argv, socket, workdir, ready=None, cwd=None, env=None):
        self._argv = list(argv)
        self.socket = socket
        self.workdir = workdir
        self.log_path = os.path.join(workdir, "service.log")
        self.ready = ready
        self.cwd = cwd
        self.env = env
        self.process = None
        self.returncode = None
        self._final_log = None  # the log as it was when the work dir went

    def argv(self):
        return self._argv

    def environ(self):
        return self.env if self.env is not None else service_environ()

    @property
    def running(self):
        return self.process is not None and self.process.poll() is None

    def log(self):
        if self._final_log is not None:
            return self._final_log
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as text:
                return text.read()
        except FileNotFoundError:
            return ""

    def log_tail(self, lines=LOG_TAIL_LINES):
        """The last `lines` lines of the log, for failure messages."""
        return "\n".join(self.log().splitlines()[-lines:]) or "(empty log)"

    def is_ready(self):
        return self.ready is None or bool(self.ready(self))

    def start(self, timeout=START_TIMEOUT_S):
        """Start and wait until it is ready; returns self. An exit before
        that raises failure(code); no readiness within `timeout` stops it
        and raises ServiceFailed."""
        self.returncode = None
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(  # pylint: disable=consider-using-with
                self.argv(), cwd=self.cwd, env=self.environ(), stdin=subprocess.DEVNULL,
                stdout=log, stderr=log, start_new_session=True)
        deadline = time.monotonic() + timeout
        while not self.is_ready():
            code = self.process.poll()
            if code is not None:
                self.returncode = code
                self._reap_group()
                raise self.failure(code)
            if time.monotonic() > deadline:
                try:
                    self.stop()
                except ServiceFailed:
                    pass  # not ready is the failure to report
                raise ServiceFailed("%s was not ready within %d s; its log ends:\n%s"
                                    % (self.name, timeout, self.log_tail()))
            time.sleep(POLL_INTERVAL_S)
        return self

    def failure(self, code):
        """The exception for an exit with `code` before it was ready."""
        return ServiceFailed("%s exited with %s before it was ready; its log ends:\n%s"
                             % (self.name, code, self.log_tail()))

    def stopped_cleanly(self, code, signum):
        """Whether exit `code` after `signum` is a clean stop: exit 0, or
        death by that signal (a service that leaves it at its default)."""
        return code in (0, -signum)

    def stop(self, signum=signal.SIGTERM, timeout=STOP_TIMEOUT_S):
        """Send `signum` to the process group and wait; SIGKILL after
        `timeout`, or for what is left of the group once the service
        exited, raises ServiceFailed. Returns the exit code (a stopped
        process: its code)."""
        if self.process is None:
            return self.returncode
        if self.process.poll() is None:
            self._signal_group(signum)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
                raise ServiceFailed("%s did not stop within %d s of %s; killed. Its log ends:\n%s"
                                    % (self.name, timeout, signal.Signals(signum).name,
                                       self.log_tail())) from None
        self.returncode = self.process.returncode
        if self._reap_group():
            raise ServiceFailed("%s exited (%s), but processes it started were still "
                                "running; killed" % (self.name, self.returncode))
        return self.returncode

    def kill(self):
        """SIGKILL the process group at once and wait; returns the exit code."""
        if self.process is None:
            return self.returncode
        if self.process.poll() is None:
            self._signal_group(signal.SIGKILL)
        self.process.wait()
        self.returncode = self.process.returncode
        self._reap_group()
        return self.returncode

    def _signal_group(self, signum):
        try:
            os.killpg(self.process.pid, signum)
        except ProcessLookupError:
            pass  # exited meanwhile

    def _reap_group(self):
        """SIGKILL what is left of the process group (the service's own
        children) and wait a little for it to go; whether anything was."""
        if not self._group_alive():
            return False
        self._signal_group(signal.SIGKILL)
        # Their parent (init, or whoever adopted them) reaps them: bounded,
        # so that a parent that never reaps cannot hang the suite.
        deadline = time.monotonic() + GROUP_GONE_S
        while self._group_alive() and time.monotonic() < deadline:
            time.sleep(POLL_INTERVAL_S)
        return True

    def _group_alive(self):
        try:
            os.killpg(self.process.pid, 0)
        except ProcessLookupError:
            return False
        return True

    def discard(self):
        """Remove the work dir (socket and log; log() still answers); the
        process must be gone."""
        if self._final_log is None:
            self._final_log = self.log()
        shutil.rmtree(self.workdir, ignore_errors=True)


__all__ = ["START_TIMEOUT_S", "STOP_TIMEOUT_S", "ServiceFailed", "ServiceProcess",
           "service_environ"]
