"""containerd-stargz-grpc, a snapshotter this project did not write, as a conformance target.

    reason = stargz_missing()          # None, or why it cannot run here
    command = stargz_command()         # a start command template: {root}, {socket}
    stargz = stargz_process(root).start()   # a ServiceProcess; .socket, .stop()
    StargzTarget("endpoint-stargz", "ext4")  # the endpoint-stargz-on-<fs> rows of the matrix

stargz-snapshotter (Debian bookworm: 0.12.0) is a proxy snapshotter: layers
it can mount lazily (eStargz, with the labels containerd's unpacker gives
them) come from a FUSE filesystem fetched from a registry; everything else
(every snapshot the suite makes) is containerd's overlayfs snapshotter's
code (its snapshot/ package is a copy of it) on the root's
snapshotter/ directory. Nothing reaches the network or FUSE unless a
snapshot is prepared with containerd.io/snapshot.ref and the remote
labels, which the suite never sets.

Debian's stargz-snapshotter package ships only ctr-remote, not the daemon.
The stargz rows (StargzTarget) are conformance/started.py's StartedTarget
with this command: one daemon per snapshotter root, stopped with SIGTERM.

The daemon is built here, offline, from Debian's packages:
golang-github-containerd-stargz-snapshotter-dev (the sources) and golang-go,
with containerd-stargz-grpc.go beside this file as its main package (what
it serves and leaves out, and why, is in its header). The build
lands in a cache directory keyed by those inputs and is reused.
"""

import hashlib
import os
import shlex
import shutil
import subprocess
import tempfile

import pytest

from snaplab import errors

from .containerd import overlayfs_refusal
from .endpoint import EndpointUnreachable, speaks_containerd
from .filesystems import SERVE_TEMP_PREFIX
from .process import ServiceProcess
from .started import StartedTarget, command_argv

GO = "/usr/bin/go"
GOPATH_DEBIAN = "/usr/share/gocode"
STARGZ_PACKAGE = "github.com/containerd/stargz-snapshotter"
STARGZ_DEV_PACKAGE = "golang-github-containerd-stargz-snapshotter-dev"
MAIN_GO = os.path.join(os.path.dirname(os.path.abspath(__file__)), "containerd-stargz-grpc.go")
# service/resolver/cri.go reads CRI's registry configuration for
# stargz's containerd built-in plugin (service/plugin); it imports
# k8s.io/cri-api, which Debian does not package, and the daemon never calls it.
LEFT_OUT = ("service/resolver/cri.go",)
BUILD_TIMEOUT_S = 600
CACHE_DIR = os.path.join(os.path.expanduser("~"), ".cache", "snaplab")
BINARY = "containerd-stargz-grpc"
# The daemon's command line; {root} and {socket} are the target's to fill.
STARGZ_COMMAND = ("{binary}", "--root", "{root}", "--address", "{socket}")
STARGZ_BACKEND = "stargz"  # the plugin's name on its own socket
# The matrix's row: as `--start-command <stargz's> --plugin stargz` names it,
# which is what it is.
STARGZ_ROW = "endpoint-" + STARGZ_BACKEND
# Its snapshotter keeps containerd overlayfs's layout (metadata.db,
# snapshots/<id>/fs) here below its --root.
DATA_SUBDIR = "snapshotter"


def stargz_missing():
    """Why containerd-stargz-grpc cannot be built here (None if it can)."""
    missing = [path for path in (GO, os.path.join(GOPATH_DEBIAN, "src", STARGZ_PACKAGE))
               if not os.path.exists(path)]
    if missing:
        return ("containerd-stargz-grpc is built from Debian's golang-go and %s "
                "(make apt): %s missing" % (STARGZ_DEV_PACKAGE, ", ".join(missing)))
    return None


def _build_key():
    """What the build depends on: the main package, Debian's sources (the
    -dev package's version) and Go's version."""
    digest = hashlib.sha256()
    with open(MAIN_GO, "rb") as source:
        digest.update(source.read())
    for argv in (["dpkg-query", "-W", "-f=${Version}", STARGZ_DEV_PACKAGE], [GO, "version"]):
        digest.update(subprocess.run(argv, check=False, capture_output=True).stdout)
    return digest.hexdigest()[:16]


def _build(into):
    """Build the daemon into directory `into` (GOPATH mode: Debian's
    sources are a GOPATH; a private copy of stargz's tree, less LEFT_OUT,
    comes first)."""
    gopath = os.path.join(into, "gopath")
    stargz_copy = os.path.join(gopath, "src", STARGZ_PACKAGE)
    shutil.copytree(os.path.join(GOPATH_DEBIAN, "src", STARGZ_PACKAGE), stargz_copy,
                    symlinks=True)
    for path in LEFT_OUT:
        os.remove(os.path.join(stargz_copy, path))
    main_dir = os.path.join(gopath, "src", "snaplab", BINARY)
    os.makedirs(main_dir)
    shutil.copy(MAIN_GO, os.path.join(main_dir, "main.go"))
    env = dict(os.environ, GO111MODULE="off", GOPROXY="off", GOFLAGS="",
               GOPATH=gopath + os.pathsep + GOPATH_DEBIAN,
               GOCACHE=os.path.join(into, "gocache"))
    built = subprocess.run([GO, "build", "-o", os.path.join(into, BINARY), "snaplab/" + BINARY],
                           cwd=main_dir, env=env, check=False, capture_output=True, text=True,
                           timeout=BUILD_TIMEOUT_S)
    if built.returncode != 0:
        raise errors.FailedPrecondition("building containerd-stargz-grpc from Debian's "
                                        "sources failed: %s" % built.stderr.strip())
    shutil.rmtree(gopath)
    shutil.rmtree(env["GOCACHE"])


def stargz_directory(cache_dir=CACHE_DIR):
    """The directory of the built daemon, built first if
    needed (FailedPrecondition with stargz_missing()'s reason or go's output
    when it cannot be). Two builds at once both build; the first to
    finish is kept."""
    reason = stargz_missing()
    if reason:
        raise errors.FailedPrecondition(reason)
    final = os.path.join(cache_dir, "stargz-" + _build_key())
    if os.path.exists(os.path.join(final, BINARY)):
        return final
    os.makedirs(cache_dir, exist_ok=True)
    scratch = tempfile.mkdtemp(prefix=".stargz-build-", dir=cache_dir)
    try:
        _build(scratch)
        try:
            os.rename(scratch, final)
        except OSError:
            if not os.path.exists(os.path.join(final, BINARY)):
                raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return final


def stargz_command(cache_dir=CACHE_DIR):
    """The start command template (conformance/started.py's: one string,
    {root} and {socket} left for the caller) of the built daemon."""
    directory = stargz_directory(cache_dir)
    filled = {"binary": os.path.join(directory, BINARY), "root": "{root}", "socket": "{socket}"}
    return " ".join(shlex.quote(arg.format(**filled)) for arg in STARGZ_COMMAND)


class StargzProcess(ServiceProcess):
    """containerd-stargz-grpc: an exit before it is ready is a refusal
    (FailedPrecondition with its last log line, e.g. overlayutils.Supported's
    "does not support d_type" for a root it cannot use)."""

    name = "containerd-stargz-grpc"

    def failure(self, code):
        lines = [line for line in self.log().splitlines() if line.strip()]
        return errors.FailedPrecondition("containerd-stargz-grpc exited %s before it was "
                                         "ready: %s" % (code, lines[-1] if lines else "(no output)"))


def answers(process):
    """Whether something answers containerd's API at the process's socket."""
    if not os.path.exists(process.socket):
        return False
    try:
        speaks_containerd(process.socket)
    except EndpointUnreachable:
        return False
    return True


def stargz_process(root, command=None):
    """A (not yet started) containerd-stargz-grpc on `root`, its socket and
    log in a private temp dir named as serve's (so conformance.leaks finds a
    left-over one)."""
    workdir = tempfile.mkdtemp(prefix=SERVE_TEMP_PREFIX)
    socket = os.path.join(workdir, "stargz.sock")
    return StargzProcess(command_argv(command or stargz_command(), root, socket), socket,
                         workdir, ready=answers)


class StargzTarget(StartedTarget):
    """stargz-snapshotter on one filesystem, e.g. endpoint-stargz-on-xfs: a
    StartedTarget with stargz_command(), built when the session starts
    (the cases skip with stargz_missing()'s reason where it cannot be)."""

    service = "containerd-stargz-grpc"

    def __init__(self, backend, filesystem):
        # The daemon's path is known once it is built (setup_session).
        super().__init__(" ".join(STARGZ_COMMAND), STARGZ_BACKEND, filesystem, backend=backend)

    def setup_session(self, request):
        super().setup_session(request)
        reason = stargz_missing()
        if reason:
            pytest.skip(reason)
        self.start_command = _built_command()

    def new_process(self, root, options, ready):
        if options:
            raise errors.InvalidArgument("containerd-stargz-grpc takes its options from its "
                                         "own command line, not %s" % (options,))
        return stargz_process(root, self.start_command)

    def expected_refusal(self):
        return overlayfs_refusal(self)  # stargz's snapshotter is containerd's overlayfs code

    def data_dir(self, root):
        return os.path.join(root, DATA_SUBDIR)


_BUILT = []  # the command once built in this process


def _built_command():
    if not _BUILT:
        _BUILT.append(stargz_command())
    return _BUILT[0]


__all__ = ["STARGZ_BACKEND", "STARGZ_COMMAND", "STARGZ_ROW", "StargzProcess", "StargzTarget",
           "stargz_command", "stargz_directory", "stargz_missing", "stargz_process"]
