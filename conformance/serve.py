"""`snaplab serve` as a real process, for the tests and the suite's serve targets.

ServeProcess starts `python -m snaplab ... serve --socket PATH` on a root,
waits for its "ready" log line, and stops it with SIGTERM (SIGKILL only if
it does not stop in time, reported as a failure). ServedSnapshotter is a
RemoteSnapshotter that owns such a process: closing it stops the process.
A process that exits before it is ready raises the snaplab error class of
its exit code with its own last stderr line, so a refusal reads the same
through serve as in-process.
"""

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from snaplab import errors

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
READY_MARK = " ready: "
START_TIMEOUT_S = 60
STOP_TIMEOUT_S = 30
ERROR_OF_EXIT_CODE = {cls.exit_code: cls for cls in errors.ALL}


class ServeFailed(Exception):
    """The serve process did not start, or did not stop as it should."""


def option_args(options):
    """Backend keyword options -> --option K=V arguments (as the CLI reads them)."""
    argv = []
    for name, value in sorted(options.items()):
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, (list, tuple)):
            text = ",".join(value)
        else:
            text = str(value)
        argv += ["--option", "%s=%s" % (name, text)]
    return argv


class ServeProcess:
    """One `snaplab serve` process; its socket and log in a private temp dir
    (short: a unix socket path has at most 107 bytes)."""

    def __init__(self, root, backend, options=None, socket_path=None, python=None):
        self.root = root
        self.backend = backend
        self.options = dict(options or {})
        self.workdir = tempfile.mkdtemp(prefix="snaplab-serve-")
        self.socket = socket_path or os.path.join(self.workdir, "serve.sock")
        self.log_path = os.path.join(self.workdir, "serve.log")
        self.python = python or sys.executable
        self.process = None
        self.returncode = None
        self._final_log = None  # the log as it was when the temp dir went

    def argv(self):
        return [self.python, "-m", "snaplab", "--root", self.root, "--backend", self.backend,
                *option_args(self.options), "serve", "--socket", self.socket]

    def environ(self):
        env = {k: v for k, v in os.environ.items() if not k.startswith("SNAPLAB_")}
        env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
        return env

    def log(self):
        if self._final_log is not None:
            return self._final_log
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as text:
                return text.read()
        except FileNotFoundError:
            return ""

    def start(self, timeout=START_TIMEOUT_S):
        """Start and wait until it is ready; returns self. On an early exit
        raises the error class of its exit code (ServeFailed for others)."""
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(self.argv(), cwd=REPO, env=self.environ(),
                                            stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        deadline = time.monotonic() + timeout
        while READY_MARK not in self.log():
            code = self.process.poll()
            if code is not None:
                self.returncode = code
                self.discard()
                raise self.failure(code)
            if time.monotonic() > deadline:
                try:
                    self.stop()
                finally:
                    self.discard()
                raise ServeFailed("snaplab serve was not ready within %d s: %s"
                                  % (timeout, self.log()))
            time.sleep(0.02)
        return self

    def failure(self, code):
        lines = [line for line in self.log().splitlines() if line.strip()]
        last = lines[-1] if lines else "(no output)"
        message = last[len("snaplab: "):] if last.startswith("snaplab: ") else last
        cls = ERROR_OF_EXIT_CODE.get(code)
        if cls is not None and "Traceback" not in self.log():
            return cls(message)
        return ServeFailed("snaplab serve exited with %s: %s" % (code, self.log()))

    def stop(self, signum=signal.SIGTERM, timeout=STOP_TIMEOUT_S):
        """Send `signum` and wait; SIGKILL after `timeout` (then ServeFailed).
        Returns the exit code. Stopping a stopped process returns its code."""
        if self.process is None:
            return self.returncode
        if self.process.poll() is None:
            self.process.send_signal(signum)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
                self.returncode = self.process.returncode
                raise ServeFailed("snaplab serve did not stop within %d s of %s; killed. Log:\n%s"
                                  % (timeout, signal.Signals(signum).name, self.log()))
        self.returncode = self.process.returncode
        return self.returncode

    def discard(self):
        """Remove the temp dir (socket and log; log() still answers); the
        process must be gone."""
        if self._final_log is None:
            self._final_log = self.log()
        shutil.rmtree(self.workdir, ignore_errors=True)


def served_snapshotter(root, backend, **options):
    """A RemoteSnapshotter to a new serve process of `backend` on `root`;
    closing it stops the process (imports grpc: only where it is installed)."""
    from snaplab_grpc.client import RemoteSnapshotter

    class ServedSnapshotter(RemoteSnapshotter):
        def __init__(self):
            self.serve = ServeProcess(root, backend, options).start()
            super().__init__(self.serve.socket, "snaplab-" + backend)

        def close(self):
            super().close()
            if self.serve is None:
                return
            serve, self.serve = self.serve, None
            try:
                code = serve.stop()
                if code != 0:
                    raise ServeFailed("snaplab serve exited with %s:\n%s" % (code, serve.log()))
                if os.path.lexists(serve.socket):
                    raise ServeFailed("snaplab serve left its socket %s behind" % serve.socket)
            finally:
                serve.discard()

    return ServedSnapshotter()
