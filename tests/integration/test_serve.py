"""`snaplab serve` for real: a `python -m snaplab serve` subprocess on a root on
a loop ext4 (conformance's FilesystemPool), spoken to over its unix socket
with snaplab_grpc's RemoteSnapshotter and the raw stubs.

The same scenario runs in-process and through serve and the transcripts must
be equal (every method, every error class); the rest checks what only the
server has: List in blocks, the snapshotter name, failures that are not
snapshotter errors, the socket (mode, stale, taken, refused paths), signals,
bad input, and running without grpcio. Every serve process is stopped (and
must exit 0) and every mount undone, also when a test fails.
"""

import concurrent.futures
import contextlib
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time

import pytest

from conformance.containerd import Containerd, ContainerdError, unavailable_reason
from conformance.process import service_environ
from conformance.serve import REPO, ServeFailed, ServeProcess
from snaplab import backends, errors
from snaplab.backends.removal import PENDING_REMOVALS_LIMIT
from snaplab.faults import CRASH_ENV
from snaplab import mount as mountlib
from snaplab.types import Info, Kind

grpc = pytest.importorskip("grpc")
from snaplab_grpc import convert  # noqa: E402 - needs grpc
from snaplab_grpc.client import RemoteSnapshotter  # noqa: E402
from snaplab_grpc.server import LIST_BATCH  # noqa: E402

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="loop devices and mounts need root")

snapshots_pb2, snapshots_pb2_grpc = convert.snapshots_pb2, convert.snapshots_pb2_grpc
MIB = 1024 * 1024


@pytest.fixture(scope="module")
def ext4(loop_filesystem):
    with loop_filesystem("ext4", "snaplab-test-serve-") as fs:
        yield fs


@pytest.fixture
def place(ext4):
    """A fresh directory on the ext4; what a test leaves mounted there fails it."""
    base = tempfile.mkdtemp(prefix="serve-", dir=ext4.mountpoint)
    yield base
    leaked = mountlib.mounts_under(base)
    for where in leaked:
        mountlib.unmount_all(where)
    shutil.rmtree(base)
    assert not leaked, "mounts left behind: %s" % leaked


@pytest.fixture
def start_serve(place):
    """start_serve(backend, root=None, **kw) -> a started ServeProcess. After
    the test each is stopped with SIGTERM and must have exited 0 and removed
    its socket."""
    started = []

    def start(backend="overlay", root=None, **kwargs):
        process = ServeProcess(root or os.path.join(place, "root-" + backend), backend, **kwargs)
        process.start()
        started.append(process)
        return process

    yield start
    problems = []
    for process in started:
        try:
            code = process.stop()
            if code != 0:
                problems.append("serve exited %s: %s" % (code, process.log()))
            elif os.path.lexists(process.socket):
                problems.append("socket left behind: %s" % process.socket)
        except ServeFailed as failed:
            problems.append(str(failed))
        finally:
            process.discard()
    assert not problems, problems


def client(process):
    return RemoteSnapshotter(process.socket, "snaplab")


def raw_stub(process):
    channel = grpc.insecure_channel("unix://" + process.socket)
    return channel, snapshots_pb2_grpc.SnapshotsStub(channel)


def write_file(path, size):
    with open(path, "wb") as out:
        out.write(os.urandom(size))
        out.flush()
        os.fsync(out.fileno())


# -- the same scenario in-process and through serve -------------------------


def scenario(sn, root, work):
    """Every method and error of the interface; returns a transcript with
    the root's path replaced, so two roots give equal transcripts."""
    log = []

    def norm(value):
        if isinstance(value, Info):
            return ("Info", str(value.kind), value.name, value.parent, value.labels,
                    value.created == value.updated)
        if isinstance(value, list):
            return [norm(item) for item in value]
        if hasattr(value, "options"):  # Mount
            return (value.type, value.source.replace(root, "<root>"), value.target,
                    [o.replace(root, "<root>") for o in value.options])
        if hasattr(value, "inodes"):  # Usage
            return ("Usage", value.size, value.inodes)
        return value

    def step(what, call, *args, **kwargs):
        try:
            result = call(*args, **kwargs)
        except errors.SnapshotError as err:
            # The class of errdefs it is (subclasses such as the filter
            # parser's travel as their gRPC code).
            cls = next(cls for cls in errors.ALL if isinstance(err, cls))
            log.append((what, cls.__name__, "remove" in str(err)))
            return None
        log.append((what, norm(result)))
        return result

    mounts = step("prepare base-active", sn.prepare, "base-active",
                  labels={"containerd.io/gc.root": "now", "empty": ""})
    mountlib.mount_all(mounts, work)
    try:
        write_file(os.path.join(work, "hello"), MIB)
        os.mkdir(os.path.join(work, "dir"))
    finally:
        mountlib.unmount_all(work)
    step("usage base-active", sn.usage, "base-active")
    step("mounts base-active", sn.mounts, "base-active")
    step("commit base", sn.commit, "base", "base-active", labels={"l": "1"})
    step("stat base", sn.stat, "base")
    step("stat base-active", sn.stat, "base-active")
    step("usage base", sn.usage, "base")
    step("prepare c1", sn.prepare, "c1", "base")
    step("view v1", sn.view, "v1", "base", labels={"v": "yes"})
    step("mounts c1", sn.mounts, "c1")
    step("mounts v1", sn.mounts, "v1")
    mountlib.mount_all(sn.mounts("v1"), work)
    try:
        with open(os.path.join(work, "hello"), "rb") as seen:
            log.append(("view shows the parent", len(seen.read())))
    finally:
        mountlib.unmount_all(work)
    step("usage v1", sn.usage, "v1")
    step("mounts base (committed)", sn.mounts, "base")
    step("mounts missing", sn.mounts, "missing")
    step("prepare c1 again", sn.prepare, "c1", "base")
    step("view base again", sn.view, "base")
    step("prepare on missing parent", sn.prepare, "x", "missing")
    step("prepare on an active parent", sn.prepare, "x", "c1")
    step("prepare empty key", sn.prepare, "")
    step("prepare label too big", sn.prepare, "x", labels={"k": "v" * 5000})
    step("commit a view", sn.commit, "n", "v1")
    step("commit onto a taken name", sn.commit, "base", "c1")
    step("commit a missing key", sn.commit, "n", "missing")
    step("update one label", sn.update, Info(Kind.UNKNOWN, "base", labels={"a": "b"}), "labels.a")
    step("update all labels", sn.update, Info(Kind.ACTIVE, "c1", "ignored", {"x": "1"}))
    step("update delete a label", sn.update, Info(Kind.UNKNOWN, "base"), "labels.l")
    step("update an immutable field", sn.update, Info(Kind.UNKNOWN, "base"), "parent")
    step("update missing", sn.update, Info(Kind.UNKNOWN, "missing"), "labels")
    step("list", sn.list)
    step("list committed", sn.list, "kind==committed")
    step("list children of base or views", sn.list, "parent==base,kind==active", "kind==view")
    step("list by label", sn.list, 'labels.a==b')
    step("list bad filter", sn.list, "name==")
    step("remove a parent", sn.remove, "base")
    step("remove missing", sn.remove, "missing")
    step("stat equals list", lambda: [sn.stat(i.name) == i for i in sn.list()])
    for key in ("v1", "c1", "base"):
        step("remove " + key, sn.remove, key)
    step("list after removing all", sn.list)
    step("cleanup", sn.cleanup)
    step("key reusable after remove", sn.prepare, "base")
    step("remove it", sn.remove, "base")
    return log


@pytest.mark.parametrize("backend", ["native", "overlay"])
def test_every_method_in_process_and_through_serve_alike(backend, place, start_serve):
    work = os.path.join(place, "work")
    os.mkdir(work)
    direct_root = os.path.join(place, "direct")
    with backends.open_snapshotter(direct_root, backend) as sn:
        direct = scenario(sn, direct_root, work)
    process = start_serve(backend)
    with client(process) as sn:
        served = scenario(sn, process.root, work)
    assert served == direct
    # The scenario reaches every error class a backend raises here.
    classes = {entry[1] for entry in direct if len(entry) == 3}
    assert classes == {"NotFound", "AlreadyExists", "FailedPrecondition", "InvalidArgument"}
    assert ("remove a parent", "FailedPrecondition", True) in served
    usage = dict((entry[0], entry[1]) for entry in served if len(entry) == 2)
    assert usage["usage base-active"][1] >= MIB
    assert usage["usage base"] == usage["usage base-active"]
    assert usage["usage v1"] == ("Usage", 0, 0)


# -- what only the server has ------------------------------------------------


def test_list_is_sent_in_blocks_and_any_snapshotter_name_is_served(start_serve):
    process = start_serve("native")
    count = 2 * LIST_BATCH + 50
    channel, stub = raw_stub(process)
    try:
        for number in range(count):
            stub.View(snapshots_pb2.ViewSnapshotRequest(
                snapshotter="name-%d" % (number % 3), key="v%03d" % number))
        for name in ("", "snaplab", "whatever containerd calls it"):
            blocks = list(stub.List(snapshots_pb2.ListSnapshotsRequest(snapshotter=name)))
            assert [len(block.info) for block in blocks] == [LIST_BATCH, LIST_BATCH, 50]
            names = [info.name for block in blocks for info in block.info]
            assert names == ["v%03d" % number for number in range(count)]
        assert list(stub.List(snapshots_pb2.ListSnapshotsRequest(filters=["name==none"]))) == []
        with pytest.raises(grpc.RpcError) as bad:
            list(stub.List(snapshots_pb2.ListSnapshotsRequest(filters=["name=="])))
        assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT and bad.value.details()
    finally:
        channel.close()


def test_a_failure_that_is_no_snapshotter_error_is_unknown_with_its_message(start_serve):
    process = start_serve("native")
    with client(process) as sn:
        mounts = sn.prepare("doomed")
        # Take the snapshot's directory away behind the backend's back: its
        # Usage walk meets an OSError, which is not a snapshotter answer.
        shutil.rmtree(mounts[0].source)
        with pytest.raises(convert.RemoteError) as failed:
            sn.usage("doomed")
        assert failed.value.grpc_code == grpc.StatusCode.UNKNOWN
        assert mounts[0].source in str(failed.value)
        # Logged with its traceback, and the server goes on serving.
        assert "Usage failed" in process.log() and "Traceback" in process.log()
        assert sn.stat("doomed").kind == Kind.ACTIVE
        sn.remove("doomed")
        assert sn.list() == []


def test_concurrent_calls(start_serve):
    process = start_serve("overlay")
    with client(process) as sn:
        sn.prepare("base-active")
        sn.commit("base", "base-active")

        def worker(number):
            for round_ in range(10):
                key = "w%d-%d" % (number, round_)
                sn.prepare(key + "-active", "base")
                sn.commit(key, key + "-active")
                assert sn.usage(key).inodes >= 0
                sn.remove(key)
            return number

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            assert sorted(pool.map(worker, range(8))) == list(range(8))
        assert [info.name for info in sn.list()] == ["base"]
        sn.remove("base")


# -- Remove's data deleted in the background ---------------------------------


def _native_snapshot_with_data(sn, key):
    """Prepare native snapshot `key` with a file in it; returns its data
    directory (the source of its bind mount, written directly)."""
    source = sn.prepare(key)[0].source
    write_file(os.path.join(source, "data"), 4096)
    return source


def test_remove_deletes_the_data_in_the_background_and_cleanup_waits_for_it(start_serve):
    process = start_serve("native")
    # More removals than may wait at once: the last ones wait for room.
    keys = ["s%d" % i for i in range(PENDING_REMOVALS_LIMIT + 4)]
    with client(process) as sn:
        directories = [_native_snapshot_with_data(sn, key) for key in keys]
        for key in keys:
            sn.remove(key)
        sn.cleanup()
        assert [path for path in directories if os.path.lexists(path)] == []
        assert sn.list() == []
    with backends.open_snapshotter(process.root, "native", create=False,
                                   read_only=True) as seen:
        assert seen.doctor() == []


def test_serve_killed_before_its_background_deletion_leaves_what_cleanup_deletes(place):
    process = ServeProcess(os.path.join(place, "root-killed"), "native")
    process.env = dict(service_environ(), **{CRASH_ENV: "remove.background"})
    process.start()
    try:
        with client(process) as sn:
            directory = _native_snapshot_with_data(sn, "doomed")
            # The kill may come before the answer is sent: UNAVAILABLE then.
            with contextlib.suppress(convert.RemoteError):
                sn.remove("doomed")
        process.process.wait(30)
        assert process.process.returncode == -signal.SIGKILL, process.log()
    finally:
        process.kill()
        process.discard()
    with backends.open_snapshotter(process.root, "native", create=False) as sn:
        with pytest.raises(errors.NotFound):
            sn.stat("doomed")  # the Remove was committed before the kill
        found = {f.kind: f.subject for f in sn.doctor()}
        # The data, and the lock file of the lease the killed thread held on it.
        assert found == {"orphan": directory,
                         "lease-file": os.path.join(process.root, "leases", "remove-1")}
        sn.cleanup()
        assert not os.path.lexists(directory)
        assert sn.doctor() == []


def test_socket_is_private_and_removed_on_sigterm_and_sigint(place, start_serve):
    root = os.path.join(place, "root")
    for signum in (signal.SIGTERM, signal.SIGINT):
        process = start_serve("overlay", root=root)
        found = os.lstat(process.socket)
        assert stat.S_ISSOCK(found.st_mode)
        assert stat.S_IMODE(found.st_mode) == 0o600
        assert found.st_uid == os.geteuid()
        with client(process) as sn:
            if signum == signal.SIGTERM:
                sn.prepare("kept")
            else:  # the second process serves what the first made
                assert [info.name for info in sn.list()] == ["kept"]
                sn.remove("kept")
        assert process.stop(signum) == 0
        assert not os.path.lexists(process.socket)
        log = process.log()
        assert "%s received" % signal.Signals(signum).name in log
        assert log.count(" ready: ") == 1 and "stopped" in log and "Traceback" not in log


def test_sigterm_lets_a_call_in_flight_finish(start_serve):
    process = start_serve("native")
    with client(process) as sn:
        top = sn.prepare("big")[0].source
        for number in range(400):  # 40k files: their Usage walk outlasts the two signals
            directory = os.path.join(top, "d%d" % number)
            os.mkdir(directory)
            for inner in range(100):
                open(os.path.join(directory, "f%d" % inner), "w").close()
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            started = time.monotonic()
            usage = pool.submit(lambda: (sn.usage("big"), time.monotonic()))
            time.sleep(0.05)  # the call is in the server now
            signalled = time.monotonic()
            process.process.send_signal(signal.SIGTERM)
            # Impatient (while the call holds the server up): must not kill
            # it. Sent once the first was handled: two sent at once merge
            # into one pending signal, and a fixed sleep let a fast Usage
            # finish and the server stop before the second arrived.
            deadline = time.monotonic() + 10
            while "SIGTERM received: stopping" not in process.log() \
                    and time.monotonic() < deadline:
                time.sleep(0.01)
            process.process.send_signal(signal.SIGTERM)
            measured, finished = usage.result(timeout=60)
    assert measured.inodes == 400 * 101 + 1
    assert signalled < finished, "the Usage call ended before SIGTERM (%.2f s): no test" % (
        finished - started)
    assert process.stop() == 0  # -15 had the second SIGTERM killed it
    log = process.log()
    assert log.index("SIGTERM received: stopping") < log.index("SIGTERM received: already")
    assert "stopped" in log and "Traceback" not in log
    assert not os.path.lexists(process.socket)


def test_a_stale_socket_is_replaced(start_serve):
    directory = tempfile.mkdtemp(prefix="snaplab-serve-stale-")
    path = os.path.join(directory, "serve.sock")
    try:
        stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        stale.bind(path)  # bound, never listening: what a killed server leaves
        stale.close()
        process = start_serve("native", socket_path=path)
        assert "removed the stale socket" in process.log()
        with client(process) as sn:
            assert sn.list() == []
        assert process.stop() == 0
        assert not os.path.lexists(path)
    finally:
        shutil.rmtree(directory)


def _refused(process, cls, *words):
    with pytest.raises(cls) as refused:
        process.start()
    for word in words:
        assert word in str(refused.value)
    return refused.value


@pytest.mark.parametrize("what", ["file", "directory"])
def test_a_path_that_is_no_socket_is_refused_and_kept(what, place):
    root = os.path.join(place, "root")
    directory = tempfile.mkdtemp(prefix="snaplab-serve-taken-")
    path = os.path.join(directory, "serve.sock")
    process = ServeProcess(root, "native", socket_path=path)
    try:
        if what == "file":
            with open(path, "w") as out:
                out.write("precious\n")
        else:
            os.mkdir(path)
        _refused(process, errors.FailedPrecondition, path, "not a socket")
        assert process.returncode == errors.FailedPrecondition.exit_code
        if what == "file":
            with open(path) as kept:
                assert kept.read() == "precious\n"
        else:
            assert os.path.isdir(path)
        assert not os.path.exists(root)
    finally:
        shutil.rmtree(directory)
        process.discard()


def test_a_socket_someone_serves_on_is_refused(place, start_serve):
    first = start_serve("native")
    second = ServeProcess(os.path.join(place, "other-root"), "native", socket_path=first.socket)
    try:
        _refused(second, errors.FailedPrecondition, "another process is serving")
    finally:
        second.discard()
    with client(first) as sn:
        assert sn.list() == []
    assert not os.path.exists(os.path.join(place, "other-root"))


def _refused_like_in_process(place, backend, root):
    """serve refuses with the class and message the backend raises in-process,
    and creates neither the socket nor the root."""
    existed = os.path.lexists(root)
    with pytest.raises(errors.SnapshotError) as in_process:
        backends.open_snapshotter(root, backend)
    if not existed and os.path.isdir(root):
        shutil.rmtree(root)
    process = ServeProcess(root, backend)
    try:
        served = _refused(process, type(in_process.value))
        assert str(served) == str(in_process.value)
        assert process.returncode == type(in_process.value).exit_code
        assert not os.path.lexists(process.socket)
        assert os.path.lexists(root) == existed
    finally:
        shutil.rmtree(process.workdir, ignore_errors=True)
    return served


def test_bad_backend_or_root_is_the_backends_own_error(place):
    refused = _refused_like_in_process(place, "no-such-backend", os.path.join(place, "r1"))
    assert isinstance(refused, errors.InvalidArgument) and "unknown backend" in str(refused)
    a_file = os.path.join(place, "a-file")
    with open(a_file, "w"):
        pass
    refused = _refused_like_in_process(place, "native", a_file)
    assert isinstance(refused, errors.InvalidArgument)
    # btrfs on ext4: the backend's refusal of the filesystem.
    refused = _refused_like_in_process(place, "btrfs", os.path.join(place, "r2"))
    assert isinstance(refused, errors.FailedPrecondition) and "btrfs" in str(refused)


def test_a_socket_path_too_long_is_refused(place):
    long_dir = tempfile.mkdtemp(prefix="x" * 100, dir="/tmp")
    process = ServeProcess(os.path.join(place, "root"), "native",
                           socket_path=os.path.join(long_dir, "serve.sock"))
    try:
        _refused(process, errors.InvalidArgument, "at most 107")
        assert not os.path.exists(os.path.join(place, "root"))
    finally:
        shutil.rmtree(long_dir)
        process.discard()


def test_without_grpcio_serve_names_what_to_install(place):
    python = "/usr/bin/python3"
    probe = subprocess.run([python, "-c", "import grpc"], capture_output=True)
    if probe.returncode == 0:
        pytest.skip("%s has grpcio; the test needs a Python without it" % python)
    root = os.path.join(place, "root")
    process = ServeProcess(root, "native", python=python)
    try:
        _refused(process, errors.NotImplemented, "grpcio", "requirements.txt")
        assert process.returncode == errors.NotImplemented.exit_code
        assert "Traceback" not in process.log()
        assert not os.path.lexists(process.socket) and not os.path.exists(root)
    finally:
        process.discard()
    # The core and the other verbs work there all the same.
    env = process.environ()
    done = subprocess.run([python, "-m", "snaplab", "--root", root, "--backend", "native",
                           "prepare", "k"], cwd=REPO, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


# -- through containerd: snaplab serve as its proxy snapshotter plugin --------

PROXY = "snaplab"


@pytest.fixture
def proxied(start_serve):
    """(serve process, private containerd with it in proxy_plugins as "snaplab")."""
    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    process = start_serve("overlay")
    with Containerd(extra_config={"proxy_plugins": {
            PROXY: {"type": "snapshot", "address": process.socket}}}) as containerd:
        yield process, containerd


def test_ctr_snapshots_work_through_containerd_against_serve(proxied):
    process, containerd = proxied

    def ctr(*argv):
        return containerd.ctr("snapshots", "--snapshotter", PROXY, *argv, namespace="lab")

    lease = containerd.create_lease("lab")  # deleted with a synchronous GC below
    assert containerd.plugin(PROXY).status == "ok"
    mounts = json.loads(ctr("prepare", "--mounts", "base-active"))
    assert [m["Type"] for m in mounts] == ["bind"]  # a parentless overlay snapshot is a bind
    assert mounts[0]["Source"].startswith(process.root + "/")
    ctr("commit", "base", "base-active")
    ctr("prepare", "work", "base")
    # The view is made under the lease: ctr's view carries no gc.root label
    # (ctr 1.6 cannot set one), so containerd's garbage collector, which also
    # runs on its own schedule, may take it at any moment (seen twice in make
    # test on a loaded machine: "look" gone before `ls`, then before `rm`).
    with containerd.snapshotter(PROXY, "lab", lease=lease) as leased:
        leased.view("look", "base")
    listing = ctr("ls").splitlines()
    assert listing[0].split() == ["KEY", "PARENT", "KIND"]
    assert sorted(tuple(line.split()) for line in listing[1:]) == [
        ("base", "Committed"), ("look", "base", "View"), ("work", "base", "Active")]
    info = json.loads(ctr("info", "work"))
    assert (info["Kind"], info["Name"], info["Parent"]) == ("Active", "work", "base")
    assert "containerd.io/gc.root" in info["Labels"]  # ctr's label, kept by containerd
    assert ctr("label", "base", "containerd.io/snapshot/team=storage").strip() != ""
    assert "KEY" in ctr("usage")

    # What snaplab itself holds: containerd's metadata layer in front, keys
    # "<namespace>/<n>/<key>", parents by their backend keys, and only the
    # containerd.io/snapshot/ labels passed on.
    with client(process) as sn:
        behind = {info.name.rsplit("/", 1)[1]: info for info in sn.list()}
        assert sorted(behind) == ["base", "look", "work"]
        for name, info in behind.items():
            namespace, number, key = info.name.split("/")
            assert (namespace, key) == ("lab", name) and number.isdigit()
        assert behind["work"].parent == behind["base"].name
        assert behind["base"].labels == {"containerd.io/snapshot/team": "storage"}
        assert "containerd.io/gc.root" not in behind["work"].labels

        ctr("rm", "work", "look")
        with pytest.raises(ContainerdError, match="remove"):
            ctr("rm", "base-missing")
        ctr("rm", "base")
        assert ctr("ls").splitlines()[1:] == []
        containerd.delete_lease("lab", lease, sync=True)  # GC: removes them in snaplab too
        assert sn.list() == []


def test_containerd_errors_from_serve_reach_the_client_as_their_class(proxied):
    process, containerd = proxied
    lease = containerd.create_lease("errs")
    with containerd.snapshotter(PROXY, "errs", lease=lease) as sn:
        sn.prepare("a", "")
        with pytest.raises(errors.AlreadyExists):
            sn.prepare("a", "")
        with pytest.raises(errors.NotFound):
            sn.stat("missing")
        sn.commit("c", "a")
        with pytest.raises(errors.FailedPrecondition):
            sn.mounts("c")
        with pytest.raises(errors.InvalidArgument):
            sn.update(Info(Kind.UNKNOWN, "c"), "parent")
        sn.prepare("child", "c")
        with pytest.raises(errors.FailedPrecondition):
            sn.remove("c")
        # An error snaplab raises behind containerd: the snaplab record of
        # "child" gone under containerd's feet -> NotFound from serve, which
        # containerd passes on with its class.
        with client(process) as behind:
            backend_key = next(i.name for i in behind.list() if i.name.endswith("/child"))
            behind.remove(backend_key)
        with pytest.raises(errors.NotFound):
            sn.mounts("child")
        sn.remove("child")
        sn.remove("c")
    containerd.delete_lease("errs", lease, sync=True)
    with client(process) as behind:
        assert behind.list() == []


def test_serve_stopped_under_containerd_is_unavailable_then_back(proxied):
    process, containerd = proxied
    lease = containerd.create_lease("gone")
    with containerd.snapshotter(PROXY, "gone", lease=lease) as sn:
        sn.prepare("a", "")
        assert process.stop() == 0
        # containerd's metadata has "a"; its Stat asks the plugin, which is gone.
        with pytest.raises(convert.RemoteError) as unavailable:
            sn.stat("a")
        assert unavailable.value.grpc_code == grpc.StatusCode.UNAVAILABLE
        process.start()  # same root, same socket
        deadline = time.monotonic() + 30
        while True:  # containerd's proxy redials with a backoff of up to a few seconds
            try:
                assert sn.stat("a").kind == Kind.ACTIVE
                break
            except convert.RemoteError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        sn.remove("a")
    containerd.delete_lease("gone", lease, sync=True)
