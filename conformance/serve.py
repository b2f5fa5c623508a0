"""`snaplab serve` as a real process, for the tests and the suite's serve targets.

ServeProcess starts `python -m snaplab ... serve --socket PATH` on a root
(conformance/process.py's ServiceProcess: its own process group, its log in
a private temp dir), waits for its "ready" log line, and stops it with
SIGTERM (SIGKILL only if it does not stop in time, reported as a failure).
ServedSnapshotter is a RemoteSnapshotter that owns such a process: closing
it stops the process. A process that exits before it is ready raises the
snaplab error class of its exit code with its own last stderr line, so a
refusal reads the same through serve as in-process. serve_command() is the
same command line as a start command template ({root}, {socket}): the
serve-* targets (conformance/started.py) are started from it.
"""

import os
import shlex
import shutil
import sys
import tempfile

import pytest

from snaplab import backends
from snaplab import errors
from snaplab import mount as mountlib
from snaplab import options as optionlib

from .containerd import Containerd, ContainerdTarget, unavailable_reason
from .filesystems import SERVE_TEMP_PREFIX
from .process import START_TIMEOUT_S, STOP_TIMEOUT_S, ServiceFailed, ServiceProcess
from .target import make_snaplab_root, snaplab_refusal

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
READY_MARK = " ready: "
ERROR_OF_EXIT_CODE = {cls.exit_code: cls for cls in errors.ALL}
# The name the tests know for ServiceFailed of a serve process.
ServeFailed = ServiceFailed


def option_args(backend, options):
    """Backend keyword options -> the --option K=V arguments the CLI reads back."""
    if not options:
        # Nothing to write: the backend is not looked up here, so that serve
        # itself refuses an unknown one (its own exit code and message).
        return []
    texts = optionlib.to_texts(backends.declared_options(backend), options, backend)
    return [arg for text in texts for arg in ("--option", text)]


def serve_argv(python, root, backend, options, socket):
    """snaplab serve's command line."""
    return [python, "-m", "snaplab", "--root", root, "--backend", backend,
            *option_args(backend, options), "serve", "--socket", socket]


def serve_command(backend, options=None, python=None):
    """snaplab serve of `backend` as a start command template."""
    return shlex.join(serve_argv(python or sys.executable, "{root}", backend, options,
                                 "{socket}"))


class ServeProcess(ServiceProcess):
    """One `snaplab serve` process; its socket and log in a private temp dir
    (short: a unix socket path has at most 107 bytes)."""

    name = "snaplab serve"

    def __init__(self, root, backend, options=None, socket_path=None, python=None):
        workdir = tempfile.mkdtemp(prefix=SERVE_TEMP_PREFIX)
        super().__init__([], socket_path or os.path.join(workdir, "serve.sock"), workdir,
                         cwd=REPO)
        self.log_path = os.path.join(workdir, "serve.log")
        self.root = root
        self.backend = backend
        self.options = dict(options or {})
        self.python = python or sys.executable
        self._ready_before = 0

    def argv(self):
        return serve_argv(self.python, self.root, self.backend, self.options, self.socket)

    def environ(self):
        env = dict(super().environ())  # `env` when given (a crash point), else the suite's
        env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
        return env

    def is_ready(self):
        return self.log().count(READY_MARK) > self._ready_before

    def start(self, timeout=START_TIMEOUT_S):
        """Start and wait until it logs "ready"; returns self. On an early
        exit raises the error class of its exit code (ServeFailed for
        others). start() again restarts it."""
        self._ready_before = self.log().count(READY_MARK)
        try:
            return super().start(timeout)
        except BaseException:
            self.discard()
            raise

    def failure(self, code):
        lines = [line for line in self.log().splitlines() if line.strip()]
        last = lines[-1] if lines else "(no output)"
        message = last[len("snaplab: "):] if last.startswith("snaplab: ") else last
        cls = ERROR_OF_EXIT_CODE.get(code)
        if cls is not None and "Traceback" not in self.log():
            return cls(message)
        return ServeFailed("snaplab serve exited with %s: %s" % (code, self.log()))

    def stopped_cleanly(self, code, signum):
        """serve's word: it exits 0 on SIGTERM and SIGINT, its socket removed."""
        return code == 0 and not os.path.lexists(self.socket)


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


# ---------------------------------------------------------------- conformance targets

SERVE_PREFIX = "serve-"
PROXY_PREFIX = "containerd-proxy-snaplab-"
SERVED_BACKENDS = ("native", "overlay", "btrfs", "zfs", "blockfile", "erofs")


def grpc_missing():
    """Why the gRPC targets cannot run here (None if they can)."""
    try:
        from snaplab_grpc import convert  # noqa: F401 - generates the stubs if needed
    except ImportError as missing:
        return "snaplab_grpc needs grpcio (pip install -r requirements.txt): %s" % missing
    return None


class ProxyPair:
    """A snaplab serve process (its root on a test filesystem) and a private
    containerd that has it in proxy_plugins as `plugin`; `plugin_roots` as
    Containerd's (containerd's own snapshotters beside it, e.g. on `fs`:
    benchmarks/bench_ctr.py)."""

    def __init__(self, served, fs, plugin, plugin_roots=None):
        self.served = served
        self.plugin = plugin
        self.fs = fs
        self.roots_dir = tempfile.mkdtemp(prefix="snaplab-proxy-", dir=fs.mountpoint)
        self.root = os.path.join(self.roots_dir, "root")
        self.serve = None
        self.containerd = None
        try:
            make_snaplab_root(served, fs, self.root)
            self.serve = ServeProcess(self.root, served)
            self.serve.start()
            self.containerd = Containerd(plugin_roots=plugin_roots, extra_config={
                "proxy_plugins": {plugin: {"type": "snapshot", "address": self.serve.socket}}})
            self.containerd.start()
        except BaseException:
            problems = self.stop()
            if problems:
                raise ServeFailed("starting %s, then cleaning up: %s"
                                  % (plugin, "; ".join(problems))) from None
            raise

    def restart(self):
        """Both, on the same root and socket: what snaplab stored must survive
        its own restart, and containerd's metadata its."""
        code = self.serve.stop()
        if code != 0:
            raise ServeFailed("snaplab serve exited %s on SIGTERM: %s" % (code, self.serve.log()))
        self.serve.start()
        self.containerd.restart()

    def stop(self):
        """containerd, then serve (it must exit 0 and remove its socket),
        then the root; returns the problems."""
        problems = []
        if self.containerd is not None:
            problems += self.containerd.stop()
            self.containerd = None
        if self.serve is not None and self.serve.process is not None \
                and self.serve.returncode is None:  # it got to "ready"
            try:
                code = self.serve.stop()
                if code != 0:
                    problems.append("snaplab serve exited %s: %s" % (code, self.serve.log()))
                elif os.path.lexists(self.serve.socket):
                    problems.append("snaplab serve left %s" % self.serve.socket)
            except ServeFailed as failed:
                problems.append(str(failed))
            finally:
                self.serve.discard()
        elif self.serve is not None:
            self.serve.discard()  # it exited before it was ready (a refusal)
        self.serve = None
        if not problems:
            problems += self.fs.release_under(self.roots_dir)
            for where in backends.kept_mounts_under(self.served, self.roots_dir):
                mountlib.unmount_all(where)
            shutil.rmtree(self.roots_dir, ignore_errors=True)
        return problems


class ProxyPairs:
    """One ProxyPair per (served backend, filesystem), made on first use and
    kept for the run (each case gets a new Target object); stop_all() at the
    end (the session fixture `snaplab_proxies`). A backend that refuses the
    filesystem is remembered with its error, raised again on each get."""

    def __init__(self):
        self._pairs = {}
        self._refused = {}

    def get(self, served, fs, plugin):
        key = (served, fs.spec.name)
        if key in self._refused:
            raise self._refused[key]
        if key not in self._pairs:
            try:
                self._pairs[key] = ProxyPair(served, fs, plugin)
            except errors.FailedPrecondition as refused:
                self._refused[key] = refused
                raise
        return self._pairs[key]

    def stop_all(self):
        problems = []
        for key in list(self._pairs):
            problems += self._pairs.pop(key).stop()
        return problems


def proxies_fixture():
    """Body of the session fixture `snaplab_proxies` (conftest.py)."""
    pairs = ProxyPairs()
    try:
        yield pairs
    finally:
        problems = pairs.stop_all()
        if problems:
            raise ServeFailed("stopping the snaplab serve/containerd pairs: "
                              + "; ".join(problems))


class ContainerdProxyTarget(ContainerdTarget):
    """containerd's metadata layer in front of `snaplab serve` as a proxy
    snapshotter plugin, e.g. containerd-proxy-snaplab-overlay-on-xfs.

    Per backend and filesystem, one ProxyPair: a serve process with its root
    on the filesystem, and a private containerd with it in proxy_plugins as
    "snaplab-<backend>". The cases go through containerd's API (keys reach
    snaplab as "<ns>/<n>/<key>"), with ContainerdTarget's namespace and
    lease per root and its check that nothing is left on disk afterwards.
    """

    def __init__(self, backend, filesystem):
        self.served = backend[len(PROXY_PREFIX):]
        super().__init__(backend, filesystem, plugin="snaplab-" + self.served)
        self.pairs = None

    def traits_name(self):
        return "snaplab-" + self.served

    def setup_session(self, request):
        reason = unavailable_reason() or grpc_missing()
        if reason:
            pytest.skip(reason)
        self.pairs = request.getfixturevalue("snaplab_proxies")

    def pair(self):
        """The running pair; the backend's own FailedPrecondition where it
        refuses the filesystem (serve does not start there)."""
        return self.pairs.get(self.served, self.fs, self.plugin)

    def daemon(self):
        return self.pair().containerd

    def expected_refusal(self):
        return snaplab_refusal(self.served, self)

    def data_dir(self, root):
        return self.pair().root  # the one serve root, whatever `root`

    def restart_service(self):
        self.pair().restart()


__all__ = ["ContainerdProxyTarget", "ERROR_OF_EXIT_CODE", "PROXY_PREFIX", "ProxyPair",
           "ProxyPairs", "READY_MARK", "REPO", "SERVED_BACKENDS", "SERVE_PREFIX",
           "START_TIMEOUT_S", "STOP_TIMEOUT_S", "ServeFailed", "ServeProcess", "grpc_missing",
           "option_args", "proxies_fixture", "serve_argv", "serve_command", "served_snapshotter"]
