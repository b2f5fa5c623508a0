"""containerd-stargz-grpc, a snapshotter this project did not write, as a conformance target.

    reason = stargz_missing()          # None, or why it cannot run here
    template = stargz_command()        # argv with {root} and {socket} left to fill
    with StargzProcess(root) as stargz:    # started; stopped (SIGINT) on leaving
        python -m conformance --endpoint stargz.socket --plugin stargz ...

stargz-snapshotter (Debian bookworm: 0.12.0) is a proxy snapshotter: layers
it can mount lazily (eStargz, with the labels containerd's unpacker gives
them) come from a FUSE filesystem fetched from a registry; everything else
(every snapshot the suite makes) is containerd's overlayfs snapshotter's
code (its snapshot/ package is a copy of it) on the root's
snapshotter/ directory. Nothing reaches the network or FUSE unless a
snapshot is prepared with containerd.io/snapshot.ref and the remote
labels, which the suite never sets.

Debian's stargz-snapshotter package ships only ctr-remote, not the daemon.
The daemon is built here, offline, from Debian's packages:
golang-github-containerd-stargz-snapshotter-dev (the sources) and golang-go,
with containerd-stargz-grpc.go beside this file as its main package (what
it leaves out of upstream's main, and why, is in its header). The build
lands in a cache directory keyed by those inputs and is reused.
"""

import hashlib
import os
import shutil
import signal
import subprocess
import tempfile

from snaplab import errors

from .serve import STOP_TIMEOUT_S, ServeProcess

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
CONFIG = "config.toml"
# Only remote (lazily pulled) layers would prefetch, fetch in the
# background or export metrics; said anyway, so that a snapshot that did
# get the remote labels fails at once instead of fetching.
STARGZ_CONFIG = """\
noprefetch = true
no_background_fetch = true
no_prometheus = true
"""
# The daemon's command line; {root} and {socket} are the target's to fill.
STARGZ_COMMAND = ("{binary}", "--root", "{root}", "--address", "{socket}",
                  "--config", "{config}", "--log-level", "info")


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
    digest.update(STARGZ_CONFIG.encode())
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
    with open(os.path.join(into, CONFIG), "w", encoding="utf-8") as config:
        config.write(STARGZ_CONFIG)


def stargz_directory(cache_dir=CACHE_DIR):
    """The directory of the built daemon and its config, built first if
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
    """STARGZ_COMMAND with the built daemon and its config filled in,
    {root} and {socket} left for the caller."""
    directory = stargz_directory(cache_dir)
    filled = {"binary": os.path.join(directory, BINARY),
              "config": os.path.join(directory, CONFIG),
              "root": "{root}", "socket": "{socket}"}
    return [arg.format(**filled) for arg in STARGZ_COMMAND]


class StargzProcess(ServeProcess):
    """containerd-stargz-grpc on `root`, its socket and log in a private
    temp dir as a `snaplab serve` process's (ServeProcess: started, waited
    for "ready: ", stopped). Stopped with SIGINT: that is the signal on
    which the daemon closes its snapshotter (SIGTERM leaves it for a
    restart). A context manager: started on entry, stopped and its temp
    dir removed on leaving."""

    def __init__(self, root, command=None):
        super().__init__(root, "stargz")
        self.command = list(command or stargz_command())

    def argv(self):
        return [arg.format(root=self.root, socket=self.socket) for arg in self.command]

    def stop(self, signum=signal.SIGINT, timeout=STOP_TIMEOUT_S):
        return super().stop(signum, timeout)

    def __enter__(self):
        try:
            return self.start()
        except BaseException:
            self.discard()
            raise

    def __exit__(self, *exc):
        try:
            code = self.stop()
            if code != 0:
                raise errors.FailedPrecondition("containerd-stargz-grpc exited %s: %s"
                                                % (code, self.log()))
        finally:
            self.discard()


__all__ = ["STARGZ_COMMAND", "STARGZ_CONFIG", "StargzProcess", "stargz_command",
           "stargz_directory", "stargz_missing"]
