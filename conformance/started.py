"""Targets whose service the suite starts itself, from a command template.

    StartedTarget("/usr/local/bin/my-snapshotter --root {root} --address {socket}",
                  "mine", "ext4")                   # endpoint-mine-on-ext4
    ServeTarget("serve-overlay", "xfs")             # snaplab serve's own command

For each snapshotter root a case opens, the command is split as a shell
would (shlex) and {root} and {socket} are put into each argument: {root}
is the case's root on the target's filesystem, {socket} a unix socket in a
private temp dir. The process (conformance/process.py: its own process
group, its log in that dir) is ready once its socket answers containerd's
API; it runs until the case's roots are released, then gets SIGTERM and
must stop (SIGKILL after a timeout, reported); a failure's message ends
with its log's tail. So the suite sees the storage: data_dir(root) is the
root.

What answers there decides the isolation: a bare snapshotter service has
the root to itself (no key prefix needed); a containerd (it answers
containerd's Version service, endpoint.speaks_containerd) gets a namespace
under a lease per root, as containerd targets do (RootNamespaces).

`start_command` (None on every other kind of target) is what the lifecycle
cases (test_lifecycle.py) need: service_of(root) gives them the RootService
of a root, to stop it with SIGTERM or SIGINT, kill it mid-call, start it
again on the same root and socket.

ServeTarget is the serve-<backend> rows: the same target with
`snaplab serve`'s command (conformance/serve.py's ServeProcess, whose exit
before it is ready raises snaplab's error class of its exit code: a
backend's refusal reads the same as in-process).
"""

import functools
import os
import shlex
import signal
import tempfile

import pytest

from snaplab import backends, errors

from . import traits as traitslib
from .containerd import ContainerdClient, RootNamespaces, is_at_or_below
from .endpoint import ENDPOINT_PREFIX, EndpointUnreachable, speaks_containerd
from .filesystems import SERVE_TEMP_PREFIX
from .process import ServiceFailed, ServiceProcess
from .serve import SERVE_PREFIX, ServeProcess, grpc_missing, serve_command
from .target import Target, make_snaplab_root, snaplab_refusal

PLACEHOLDERS = ("{root}", "{socket}")
NAMESPACE_PREFIX = "snaplab-case-"


def command_argv(command, root, socket):
    """The start command template `command` as argv for `root` and `socket`."""
    return [arg.replace("{root}", root).replace("{socket}", socket)
            for arg in shlex.split(command)]


def check_command(command):
    """InvalidArgument unless `command` is a start command template."""
    try:
        argv = shlex.split(command or "")
    except ValueError as bad:
        raise errors.InvalidArgument("start command %r: %s" % (command, bad)) from None
    missing = [p for p in PLACEHOLDERS if not any(p in arg for arg in argv)]
    if missing:  # an empty command misses both
        raise errors.InvalidArgument(
            "a start command names where its service keeps its data and listens, with "
            "{root} and {socket} (e.g. \"my-snapshotter --root {root} --address {socket}\"); "
            "%r has no %s" % (command, " or ".join(missing)))


class RootService:
    """The service a StartedTarget started on one root: its process, and
    how the cases' clients reach it (`isolation`: None for a bare
    snapshotter service, RootNamespaces for a containerd)."""

    def __init__(self, target, root, options):
        self.target = target
        self.root = root
        self.options = options
        self.process = None  # the target's new_process()
        self.isolation = None
        self.containerd = None  # whether containerd answers; asked while starting
        self.ended_by_suite = False  # stopped or killed by a case: not a failure

    @property
    def address(self):
        return "unix://" + self.process.socket

    def answers(self, _process):
        """Whether the socket answers containerd's API (the readiness probe)."""
        if not os.path.exists(self.process.socket):
            return False
        try:
            self.containerd = speaks_containerd(self.address)
        except EndpointUnreachable:
            return False
        return True

    def start(self):
        """Start (or start again, on the same root and socket); returns self."""
        self.process.start()
        self.ended_by_suite = False
        if self.isolation is None:
            self.isolation = self.target.isolation(self)
        return self

    def opener(self):
        """A picklable callable that opens a new client of the service."""
        if self.isolation is not None:
            return self.isolation.opener(self.root)
        from snaplab_grpc.client import RemoteSnapshotter  # pylint: disable=import-outside-toplevel
        return functools.partial(RemoteSnapshotter, self.address, self.target.plugin)

    def open(self):
        if not self.process.running:
            raise ServiceFailed("%s on %s is not running (exit %s); its log ends:\n%s"
                                % (self.process.name, self.root, self.process.returncode,
                                   self.process.log_tail()))
        return self.opener()()

    def stop(self, signum=signal.SIGTERM):
        """Stop with `signum`; the problems (not stopping in time, an
        unclean exit: each with the log's tail)."""
        self.ended_by_suite = True
        try:
            code = self.process.stop(signum)
        except ServiceFailed as failed:
            return [str(failed)]
        if not self.process.stopped_cleanly(code, signum):
            return ["%s exited %s on %s%s; its log ends:\n%s" % (
                self.process.name, code, signal.Signals(signum).name,
                " (its socket is still there)" if os.path.lexists(self.process.socket) else "",
                self.process.log_tail())]
        return []

    def restart(self, signum=signal.SIGTERM):
        problems = self.stop(signum)
        if problems:
            raise ServiceFailed("; ".join(problems))
        self.start()

    def kill(self):
        """SIGKILL the service's process group at once (a crash)."""
        self.ended_by_suite = True
        return self.process.kill()

    def collect(self):
        """Have the service free the data of what the cases removed: on a
        containerd, the root's namespace goes, its lease deleted with a
        synchronous garbage collection (until then containerd keeps the
        data of removed snapshots); a bare service frees it itself."""
        if self.isolation is None:
            return
        problems = self.isolation.release_under(self.root)
        if problems:
            raise ServiceFailed("; ".join(problems))

    def release(self):
        """What the cases made with it removed (containerd: their namespaces),
        then the service stopped; the problems."""
        problems = []
        if self.process.running:
            if self.isolation is not None:
                problems += self.isolation.release_under(self.root)
            problems += self.stop()
        elif not self.ended_by_suite:
            problems.append("%s on %s exited %s by itself; its log ends:\n%s" % (
                self.process.name, self.root, self.process.returncode, self.process.log_tail()))
        self.process.discard()
        return problems


class StartedTarget(Target):
    """Snapshotter `plugin` of a service started from `command` per root,
    e.g. endpoint-mine-on-ext4 (see the module docstring)."""

    service = "the started service"

    def __init__(self, command, plugin, filesystem, backend=None, declared=None,
                 trait_values=None):
        check_command(command)
        super().__init__(backend or ENDPOINT_PREFIX + plugin, filesystem)
        self.start_command = command
        self.plugin = plugin
        self._services = {}  # real root path -> RootService
        self.declared = declared  # the Traits of the user's file (--traits)
        self.trait_values = dict(trait_values or {})  # and on top, --trait NAME=VALUE

    @functools.cached_property
    def traits(self):
        return traitslib.of_plugin(self.plugin, self.declared, self.trait_values)

    def setup_session(self, request):
        reason = grpc_missing()
        if reason:
            pytest.skip(reason)

    def expected_refusal(self):
        return None  # whatever the service refuses, it says itself

    def new_process(self, root, options, ready):
        """The (not yet started) process of the service on `root`; `ready`
        is the probe of its readiness."""
        if options:
            raise errors.InvalidArgument("a started service takes its options from its "
                                         "command, not %s" % (options,))
        workdir = tempfile.mkdtemp(prefix=SERVE_TEMP_PREFIX)
        socket = os.path.join(workdir, "service.sock")
        return ServiceProcess(command_argv(self.start_command, root, socket), socket, workdir,
                              ready=ready)

    def isolation(self, service):
        """How clients of `service` (just started) are isolated: None for a
        bare snapshotter service, a namespace per root on a containerd."""
        if not service.containerd:
            return None
        client = ContainerdClient(service.address)
        return RootNamespaces(lambda: client, self.plugin, NAMESPACE_PREFIX)

    def service_of(self, root):
        """The RootService on `root` (opened before)."""
        return self._services[os.path.realpath(root)]

    def open(self, root, **options):
        key = os.path.realpath(root)
        service = self._services.get(key)
        if service is not None and service.options != options:
            # Other options: the service on this root restarts with them.
            problems = self._services.pop(key).release()
            if problems:
                raise ServiceFailed("; ".join(problems))
            service = None
        if service is None:
            service = RootService(self, root, options)
            service.process = self.new_process(root, options, service.answers)
            try:
                service.start()
            except BaseException:
                service.process.discard()
                raise
            self._services[key] = service
        return service.open()

    def opener(self, root):
        return self.service_of(root).opener()

    def data_dir(self, root):
        return root

    def restart_service(self):
        for service in self._services.values():
            if service.process.running:
                service.restart()

    def diagnostics(self):
        return [("log of the service on %s" % service.root, service.process.log_tail())
                for service in self._services.values() if service.process is not None]

    def release_under(self, directory):
        problems = []
        for key in list(self._services):
            if is_at_or_below(key, directory):
                problems += self._services.pop(key).release()
        return problems


class ServeTarget(StartedTarget):
    """A snaplab backend behind `snaplab serve`, e.g. serve-overlay-on-xfs:
    a StartedTarget with serve's command for the backend (options go on
    its command line), a bare service to talk to with RemoteSnapshotter.
    A serve process must stop on SIGTERM and SIGINT with exit 0, its
    socket removed."""

    service = "snaplab serve"

    def __init__(self, backend, filesystem):
        self.served = backend[len(SERVE_PREFIX):]
        super().__init__(serve_command(self.served), "snaplab-" + self.served, filesystem,
                         backend=backend)

    def expected_refusal(self):
        return snaplab_refusal(self.served, self)

    def kept_mounts_under(self, directory):
        return backends.kept_mounts_under(self.served, directory)

    def new_process(self, root, options, ready):
        del ready  # serve says itself when it is ready: its "ready" log line
        make_snaplab_root(self.served, getattr(self, "fs", None), root)
        return ServeProcess(root, self.served, dict(self.options, **options))

    def isolation(self, service):
        return None  # serve is a bare snapshotter service


__all__ = ["NAMESPACE_PREFIX", "RootService", "ServeTarget", "StartedTarget", "check_command",
           "command_argv"]
