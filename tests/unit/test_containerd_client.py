"""RemoteSnapshotter against an in-process gRPC server with a recording
servicer (real gRPC on a real unix socket; only the service is a stand-in),
and the launcher's pure helpers (TOML writer, plugin status parser).

What containerd itself does with the calls is tested against a real
containerd in tests/integration/test_containerd.py.
"""

import concurrent.futures
import contextlib
import os
import tempfile
import tomllib

import grpc
import pytest
from google.protobuf import empty_pb2

from conformance.containerd import PluginStatus, merge, parse_plugins, to_toml
from snaplab import errors
from snaplab.types import Info, Kind, Mount
from snaplab_grpc import convert
from snaplab_grpc.client import RemoteSnapshotter, channel_target

pb2, pb2_grpc = convert.snapshots_pb2, convert.snapshots_pb2_grpc


class Recorder(pb2_grpc.SnapshotsServicer):
    """Answers like a snapshotter would, and remembers what it was sent."""

    def __init__(self):
        self.calls = []  # (method, request, metadata dict)
        self.fail_with = None  # (grpc.StatusCode, details)

    def _record(self, method, request, context):
        self.calls.append((method, request, dict(context.invocation_metadata())))
        if self.fail_with:
            context.abort(*self.fail_with)

    def Prepare(self, request, context):
        self._record("Prepare", request, context)
        return pb2.PrepareSnapshotResponse(mounts=convert.mounts_to_pb(
            [Mount("bind", "/data/1", options=["rw", "rbind"])]))

    def Commit(self, request, context):
        self._record("Commit", request, context)
        return empty_pb2.Empty()

    def Update(self, request, context):
        self._record("Update", request, context)
        return pb2.UpdateSnapshotResponse(info=request.info)

    def Stat(self, request, context):
        self._record("Stat", request, context)
        return pb2.StatSnapshotResponse(info=convert.info_to_pb(
            Info(Kind.COMMITTED, request.key, "p", {"a": "b"}, 1_000_000_001, 2_000_000_002)))

    def List(self, request, context):
        self._record("List", request, context)
        for block in (["a", "b"], ["c"]):
            yield pb2.ListSnapshotsResponse(info=[
                convert.info_to_pb(Info(Kind.ACTIVE, name)) for name in block])

    def Usage(self, request, context):
        self._record("Usage", request, context)
        return pb2.UsageResponse(size=4096, inodes=-1)


@pytest.fixture
def served():
    recorder = Recorder()
    server = grpc.server(concurrent.futures.ThreadPoolExecutor(max_workers=4))
    pb2_grpc.add_SnapshotsServicer_to_server(recorder, server)
    directory = tempfile.mkdtemp(prefix="snaplab-test-grpc-")
    socket_path = os.path.join(directory, "s.sock")
    server.add_insecure_port("unix://" + socket_path)
    server.start()
    client = RemoteSnapshotter(socket_path, "overlayfs", namespace="ns1", lease="lease-1")
    try:
        yield recorder, client
    finally:
        client.close()
        server.stop(None).wait()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(socket_path)
        os.rmdir(directory)


def test_channel_target_is_a_unix_uri():
    assert channel_target("/run/x.sock") == "unix:///run/x.sock"
    assert channel_target("unix:///run/x.sock") == "unix:///run/x.sock"


def test_every_call_names_the_plugin_and_sends_namespace_and_lease(served):
    recorder, sn = served
    assert sn.prepare("k", "p", {"l": "v"}) == [Mount("bind", "/data/1", "", ["rw", "rbind"])]
    method, request, metadata = recorder.calls[-1]
    assert (method, request.snapshotter, request.key, request.parent, dict(request.labels)) == (
        "Prepare", "overlayfs", "k", "p", {"l": "v"})
    assert metadata["containerd-namespace"] == "ns1"
    assert metadata["containerd-lease"] == "lease-1"


def test_commit_sends_the_rebase_parent_as_field_5(served):
    recorder, sn = served
    sn.commit("name", "key", {"x": "y"}, parent="base")
    _method, request, _metadata = recorder.calls[-1]
    assert (request.name, request.key, request.parent) == ("name", "key", "base")
    assert pb2.CommitSnapshotRequest.DESCRIPTOR.fields_by_name["parent"].number == 5


def test_update_sends_the_field_paths_as_the_mask(served):
    recorder, sn = served
    sn.update(Info(Kind.ACTIVE, "k", labels={"a": "1"}), "labels.a", "labels.b")
    _method, request, _metadata = recorder.calls[-1]
    assert list(request.update_mask.paths) == ["labels.a", "labels.b"]
    assert request.info.name == "k"
    sn.update(Info(Kind.ACTIVE, "k"))
    assert list(recorder.calls[-1][1].update_mask.paths) == []


def test_stat_keeps_nanoseconds_and_usage_keeps_minus_one(served):
    _recorder, sn = served
    info = sn.stat("c")
    assert (info.kind, info.parent, info.labels, info.created, info.updated) == (
        Kind.COMMITTED, "p", {"a": "b"}, 1_000_000_001, 2_000_000_002)
    usage = sn.usage("c")
    assert (usage.size, usage.inodes) == (4096, -1)


def test_walk_reads_every_block_and_sends_the_filters(served):
    recorder, sn = served
    assert [i.name for i in sn.list("kind==active", "name==c")] == ["a", "b", "c"]
    assert list(recorder.calls[-1][1].filters) == ["kind==active", "name==c"]


def test_an_error_raised_by_the_walk_function_ends_the_walk(served):
    _recorder, sn = served
    seen = []

    def stop_at_b(info):
        seen.append(info.name)
        if info.name == "b":
            raise KeyError("stop")

    with pytest.raises(KeyError):
        sn.walk(stop_at_b)
    assert seen == ["a", "b"]


@pytest.mark.parametrize("code, cls", [
    (grpc.StatusCode.NOT_FOUND, errors.NotFound),
    (grpc.StatusCode.ALREADY_EXISTS, errors.AlreadyExists),
    (grpc.StatusCode.FAILED_PRECONDITION, errors.FailedPrecondition),
    (grpc.StatusCode.INVALID_ARGUMENT, errors.InvalidArgument),
    (grpc.StatusCode.UNIMPLEMENTED, errors.NotImplemented),
    (grpc.StatusCode.UNKNOWN, convert.RemoteError),
])
def test_status_codes_become_snaplab_errors(served, code, cls):
    recorder, sn = served
    recorder.fail_with = (code, "the details")
    for call in (lambda: sn.stat("k"), lambda: sn.list()):
        with pytest.raises(cls, match="the details") as raised:
            call()
        assert type(raised.value) is cls  # pylint: disable=unidiomatic-typecheck


def test_no_service_is_a_remote_error_and_close_is_idempotent():
    directory = tempfile.mkdtemp(prefix="snaplab-test-grpc-")
    try:
        sn = RemoteSnapshotter(os.path.join(directory, "none.sock"), "native", namespace="n")
        sn.timeout = 5
        with pytest.raises(convert.RemoteError) as raised:
            sn.stat("k")
        assert raised.value.grpc_code == grpc.StatusCode.UNAVAILABLE
        assert sn.close() is None
        assert sn.close() is None
    finally:
        os.rmdir(directory)


# ---------------------------------------------------------------- launcher helpers

CTR_PLUGINS_D = """\
Type:          io.containerd.content.v1
ID:            content
Exports:      
               root      /tmp/x/root/io.containerd.content.v1.content
                            
Type:          io.containerd.snapshotter.v1
ID:            btrfs
Platforms:     linux/amd64
Exports:      
               root      /tmp/x/root/io.containerd.snapshotter.v1.btrfs
Error:        
               Code:        Unknown
               Message:     path /tmp/x (ext4) must be a btrfs filesystem to be used with the btrfs snapshotter: skip plugin
                               
Type:          io.containerd.snapshotter.v1
ID:            devmapper
Platforms:     linux/amd64
Error:        
               Code:        Unknown
               Message:     devmapper not configured
                               
Type:          io.containerd.snapshotter.v1
ID:            native
Platforms:     linux/amd64
                      
"""


def test_plugin_status_is_parsed_from_ctr_plugins_ls_d():
    plugins = parse_plugins(CTR_PLUGINS_D)
    assert [(p.id, p.status) for p in plugins] == [
        ("content", "ok"), ("btrfs", "skip"), ("devmapper", "error"), ("native", "ok")]
    btrfs = plugins[1]
    assert btrfs.type == "io.containerd.snapshotter.v1"
    assert btrfs.exports == {"root": "/tmp/x/root/io.containerd.snapshotter.v1.btrfs"}
    assert btrfs.error_code == "Unknown"
    assert btrfs.error.startswith("path /tmp/x (ext4) must be a btrfs filesystem")
    assert PluginStatus("t", "i").status == "ok"


def test_config_toml_reads_back_as_written():
    document = {"version": 2, "root": 'C:\\odd "path"', "disabled_plugins": ["a.b", "c"],
                "grpc": {"address": "/x.sock"},
                "plugins": {"io.containerd.snapshotter.v1.native": {"root_path": "/r"}},
                "proxy_plugins": {"snaplab": {"type": "snapshot", "address": "/p.sock"}},
                "flag": True}
    assert tomllib.loads(to_toml(document)) == document


def test_merge_merges_tables_and_replaces_values():
    into = {"plugins": {"a": {"x": 1}}, "v": 1}
    merge(into, {"plugins": {"a": {"y": 2}, "b": {}}, "v": 2})
    assert into == {"plugins": {"a": {"x": 1, "y": 2}, "b": {}}, "v": 2}
