"""`snaplab serve`: one snaplab Snapshotter behind containerd's snapshots gRPC API.

containerd uses it as a proxy snapshotter plugin (`proxy_plugins`, type
"snapshot", address = the socket): its metadata layer stays in front (keys
arrive as "<namespace>/<n>/<key>", only containerd.io/snapshot/* labels come
through) and calls the ten methods here as it would call a built-in plugin.

Types and errors cross only through convert.py. A snaplab error is answered
with its gRPC code and message (what containerd's errdefs.FromGRPC turns back
into the same class); anything else (OSError, sqlite3, a bug) with UNKNOWN --
errdefs.ToGRPC's code for an error of no known class -- and its message, and
is logged with its traceback. No handler lets an exception escape to grpcio,
whose generic answer would hide the message.

The request's `snapshotter` field is not checked: containerd sends the name
the proxy plugin has in *its* config (`[proxy_plugins.<name>]`), which this
process cannot know, and one serve process serves exactly one snapshotter,
so there is nothing to choose between. Refusing names would only make
operators repeat the name in two configs.

The backend is called from grpcio's worker threads at once, as containerd
calls its own plugins; snaplab's backends are made for that (the metadata
store serialises transactions; Usage measures outside them).
"""

import concurrent.futures
import contextlib
import fcntl
import logging
import os
import signal
import socket
import stat
import threading

import grpc
from google.protobuf import empty_pb2

from snaplab import errors
from snaplab.types import Kind

from . import convert
from .convert import snapshots_pb2, snapshots_pb2_grpc

log = logging.getLogger("snaplab.serve")

# containerd's own snapshots service sends List in blocks of 100 Info.
LIST_BATCH = 100
# Worker threads: enough for containerd's concurrent unpacks and GC without
# letting a burst of slow Usage calls take every core.
MAX_WORKERS = 16
# After SIGTERM/SIGINT, calls in flight get this long to finish.
GRACE_SECONDS = 5
# sun_path is 108 bytes with its NUL: longer paths cannot be bound at all.
MAX_SOCKET_PATH = 107
# containerd makes its own socket's directory 0711 (sys.GetLocalListener).
SOCKET_DIR_MODE = 0o711


def configure_logging(level=logging.INFO):
    """One line per event on stderr, timestamped (a daemon's log)."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s snaplab serve %(levelname)s: %(message)s"))
    logging.getLogger("snaplab").addHandler(handler)
    logging.getLogger("snaplab").setLevel(level)


def _answer(context, method, err):
    """Abort the call with the status `err` maps to (grpc raises to end it)."""
    message = str(err) or type(err).__name__
    if isinstance(err, errors.SnapshotError):
        log.debug("%s: %s: %s", method, type(err).__name__, message)
        code = convert.code_of(err)
    else:
        # Not a snapshotter answer: the caller gets the message, the log the
        # traceback, so that a broken backend is noticed.
        log.error("%s failed: %s: %s", method, type(err).__name__, message, exc_info=err)
        code = grpc.StatusCode.UNKNOWN
    context.abort(code, message)


def _handled(method):
    """Wrap a unary handler: every exception becomes a status, none escapes."""
    def handler(self, request, context):
        try:
            return method(self, request, context)
        except Exception as err:  # noqa: BLE001 - every failure becomes a status
            _answer(context, method.__name__, err)
    handler.__name__ = method.__name__
    handler.__doc__ = method.__doc__
    return handler


def _info_of_request(message):
    """The Info of an Update request. Its kind is ignored by Update, so an
    enum value snaplab does not know (proto3 enums are open) is no error."""
    try:
        return convert.info_from_pb(message)
    except ValueError:
        info = convert.info_from_pb(snapshots_pb2.Info(
            name=message.name, parent=message.parent, labels=message.labels,
            created_at=message.created_at, updated_at=message.updated_at))
        info.kind = Kind.UNKNOWN
        return info


class SnapshotsServicer(snapshots_pb2_grpc.SnapshotsServicer):
    """containerd.services.snapshots.v1.Snapshots over one snaplab Snapshotter."""

    def __init__(self, snapshotter):
        self.snapshotter = snapshotter

    @_handled
    def Prepare(self, request, context):
        mounts = self.snapshotter.prepare(request.key, request.parent, labels=dict(request.labels))
        return snapshots_pb2.PrepareSnapshotResponse(mounts=convert.mounts_to_pb(mounts))

    @_handled
    def View(self, request, context):
        mounts = self.snapshotter.view(request.key, request.parent, labels=dict(request.labels))
        return snapshots_pb2.ViewSnapshotResponse(mounts=convert.mounts_to_pb(mounts))

    @_handled
    def Mounts(self, request, context):
        mounts = self.snapshotter.mounts(request.key)
        return snapshots_pb2.MountsResponse(mounts=convert.mounts_to_pb(mounts))

    @_handled
    def Commit(self, request, context):
        # containerd 1.6 never sets `parent` (the rebase of 2.x): "" = none.
        self.snapshotter.commit(request.name, request.key, labels=dict(request.labels),
                                parent=request.parent or None)
        return empty_pb2.Empty()

    @_handled
    def Remove(self, request, context):
        self.snapshotter.remove(request.key)
        return empty_pb2.Empty()

    @_handled
    def Stat(self, request, context):
        info = self.snapshotter.stat(request.key)
        return snapshots_pb2.StatSnapshotResponse(info=convert.info_to_pb(info))

    @_handled
    def Update(self, request, context):
        info = _info_of_request(request.info)
        updated = self.snapshotter.update(info, *request.update_mask.paths)
        return snapshots_pb2.UpdateSnapshotResponse(info=convert.info_to_pb(updated))

    def List(self, request, context):
        # The walk is collected first and sent afterwards: a slow reader must
        # not hold the store's read transaction (containerd's metadata layer
        # likewise Stats outside its transaction).
        try:
            infos = self.snapshotter.list(*request.filters)
        except Exception as err:  # noqa: BLE001 - every failure becomes a status
            _answer(context, "List", err)
        for start in range(0, len(infos), LIST_BATCH):
            yield snapshots_pb2.ListSnapshotsResponse(
                info=[convert.info_to_pb(info) for info in infos[start:start + LIST_BATCH]])

    @_handled
    def Usage(self, request, context):
        usage = self.snapshotter.usage(request.key)
        return snapshots_pb2.UsageResponse(size=usage.size, inodes=usage.inodes)

    @_handled
    def Cleanup(self, request, context):
        # NotImplemented goes back as UNIMPLEMENTED, which containerd's GC
        # ignores, as it does for its own plugins.
        self.snapshotter.cleanup()
        return empty_pb2.Empty()


class Server:
    """A grpc server of one snapshotter on a unix socket it binds itself.

    start() binds and serves; stop() lets running calls finish (up to
    `grace` seconds), then stops. The socket file and the snapshotter are
    the caller's (snaplab.cli's serve verb removes and closes them).
    """

    def __init__(self, snapshotter, socket_path, max_workers=MAX_WORKERS):
        self.socket_path = socket_path
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=max_workers, thread_name_prefix="snaplab-serve")
        self._server = grpc.server(self._pool)
        snapshots_pb2_grpc.add_SnapshotsServicer_to_server(SnapshotsServicer(snapshotter),
                                                           self._server)
        # The socket is made by grpc's bind: under a umask that leaves it
        # 0600 from the start, so no other user can connect in between. The
        # umask is the process's: restored at once (backends make their
        # files with the modes containerd uses, under the caller's umask).
        previous = os.umask(0o177)
        try:
            bound = self._server.add_insecure_port("unix:" + socket_path)
        except RuntimeError as err:  # grpcio raises where older ones returned 0
            raise OSError("cannot listen on unix socket %s: %s" % (socket_path, err)) from None
        finally:
            os.umask(previous)
        if not bound:
            raise OSError("cannot listen on unix socket %s" % socket_path)
        os.chmod(socket_path, 0o600)

    def start(self):
        self._server.start()

    def wait(self, timeout=None):
        """Block until stopped (True) or timeout (False)."""
        return self._server.wait_for_termination(timeout)

    def stop(self, grace):
        self._server.stop(grace).wait()
        self._pool.shutdown(wait=True)


class SocketPath:
    """Where to listen, checked before anything is opened or created.

    InvalidArgument for a path that cannot be a unix socket (empty, too
    long for sun_path); FailedPrecondition for a path taken by something
    that is not a socket (a file, a directory: never replaced) or by a
    socket someone answers on. A socket nobody answers on is stale (a
    server that was killed): bind() removes it.
    """

    def __init__(self, path):
        if not path:
            raise errors.InvalidArgument("--socket must not be empty")
        self.path = os.path.abspath(path)
        size = len(os.fsencode(self.path))
        if size > MAX_SOCKET_PATH:
            raise errors.InvalidArgument(
                "socket path %s is %d bytes; a unix socket path has at most %d"
                % (self.path, size, MAX_SOCKET_PATH))
        self.identity = None  # (st_dev, st_ino) of the socket we bound
        self.stale()

    def stale(self):
        """Whether a stale socket is at the path (False: nothing there)."""
        try:
            found = os.lstat(self.path)
        except FileNotFoundError:
            return False
        if not stat.S_ISSOCK(found.st_mode):
            raise errors.FailedPrecondition(
                "%s exists and is not a socket; refusing to replace it" % self.path)
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        probe.settimeout(2)
        try:
            probe.connect(self.path)
        except (ConnectionRefusedError, FileNotFoundError):
            return True
        except socket.timeout:
            pass  # a listener too busy to accept is still a listener
        finally:
            probe.close()
        raise errors.FailedPrecondition(
            "another process is serving on %s; stop it or choose another --socket" % self.path)

    @contextlib.contextmanager
    def claimed(self):
        """Make the directory, remove a stale socket, and hold the directory's
        flock while the caller binds: two servers started at once cannot
        both find the socket stale and remove each other's."""
        directory = os.path.dirname(self.path)
        os.makedirs(directory, mode=SOCKET_DIR_MODE, exist_ok=True)
        handle = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX)
            if self.stale():
                os.unlink(self.path)
                log.info("removed the stale socket %s (nobody answered on it)", self.path)
            yield self.path
            found = os.lstat(self.path)
            self.identity = (found.st_dev, found.st_ino)
        finally:
            os.close(handle)

    def remove(self):
        """Remove the socket if it is still the one we bound."""
        try:
            found = os.lstat(self.path)
        except FileNotFoundError:
            return
        if (found.st_dev, found.st_ino) == self.identity:
            os.unlink(self.path)


def serve(snapshotter, socket_path, description, grace=GRACE_SECONDS):
    """Serve `snapshotter` on `socket_path` (a SocketPath) until SIGTERM or
    SIGINT, then stop gracefully and remove the socket. The caller opened
    the snapshotter and closes it, then exits: the signal handlers installed
    here stay. Returns the exit code (0)."""
    stopping = threading.Event()

    def on_signal(signum, _frame):
        if stopping.is_set():
            log.info("%s received: already stopping", signal.Signals(signum).name)
            return
        log.info("%s received: stopping (calls in flight get %d s)",
                 signal.Signals(signum).name, grace)
        stopping.set()

    # Kept until the process exits: a second SIGTERM while it closes the
    # root must not kill it half-way (the default action would).
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, on_signal)
    # A Remove answers once the metadata is committed, as containerd's
    # does; the data goes in the snapshotter's thread (Cleanup waits for it).
    snapshotter.remove_data_in_background()
    server = None
    # The snapshots API has no call for a plugin's capabilities: a proxy
    # plugin's are its containerd config's (2.x; 1.6 has none). Asked before
    # "ready": a backend may probe the kernel with mounts in the root
    # (overlay's and erofs's idmap probes), which must be over by then.
    capabilities = snapshotter.capabilities()
    try:
        with socket_path.claimed() as path:
            server = Server(snapshotter, path)
        server.start()
        log.info("ready: %s on unix://%s (pid %d)", description, socket_path.path, os.getpid())
        if capabilities:
            log.info("capabilities: %s (containerd 2.x: capabilities = [%s] in the proxy "
                     "plugin's config)", ", ".join(capabilities),
                     ", ".join('"%s"' % name for name in capabilities))
        while not stopping.wait(1.0):
            pass
    finally:
        try:
            if server is not None:
                server.stop(grace)
        finally:
            socket_path.remove()
    log.info("stopped; socket %s removed", socket_path.path)
    # From here on a late SIGTERM or SIGINT (a supervisor's second one) is
    # ignored: Python's finalization puts the default action back for
    # signals with a Python handler, so one arriving then would kill the
    # process (-15) after a clean stop. Ignored handlers stay ignored.
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, signal.SIG_IGN)
    return 0


__all__ = ["LIST_BATCH", "Server", "SnapshotsServicer", "SocketPath", "serve"]
