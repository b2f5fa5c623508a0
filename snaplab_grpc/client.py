"""RemoteSnapshotter: a Snapshotter that is a snapshotter plugin behind
containerd's snapshots gRPC API (containerd.services.snapshots.v1).

    with RemoteSnapshotter("unix:///run/x/containerd.sock", "overlayfs",
                           namespace="snaplab") as sn:
        sn.prepare("k", "")

It speaks to containerd (which routes each call to its plugin named
`snapshotter`, inside the containerd namespace sent as the
`containerd-namespace` metadata header) or to anything serving the same API
(`snaplab serve`, a proxy plugin). Types and errors go through
snaplab_grpc.convert and nowhere else: a gRPC status code becomes the snaplab
error class of the same errdefs name (NOT_FOUND -> errors.NotFound, ...);
codes with no snapshotter meaning (UNAVAILABLE, INTERNAL, ...) become
convert.RemoteError.
"""

import grpc
from google.protobuf import field_mask_pb2

from snaplab.snapshotter import Snapshotter
from snaplab.types import Usage

from . import convert

snapshots_pb2 = convert.snapshots_pb2
NAMESPACE_HEADER = "containerd-namespace"
# Snapshots made under a lease are kept by containerd's garbage collector
# until the lease goes, even without a containerd.io/gc.root label.
LEASE_HEADER = "containerd-lease"
DEFAULT_NAMESPACE = "default"
# Every call but List and Usage is a metadata operation; an Active Usage
# walks the snapshot's files and may take long on a big one.
DEFAULT_TIMEOUT_S = 300


def channel_target(address):
    """gRPC's name for a unix socket: `unix:///abs/path` (a bare path is taken as one)."""
    if address.startswith("unix:"):
        return address
    return "unix://" + address


class RemoteSnapshotter(Snapshotter):
    """The snapshotter plugin `snapshotter` of the service at `address`.

    `namespace` is containerd's namespace (its metadata, hence the key space,
    is per namespace); it is sent with every call. `timeout` (seconds) bounds
    each call. `lease` (a lease id of that namespace) is sent with every
    call, so that what is made is the lease's. Not thread-safe in close():
    close it once the calls are done.
    """

    def __init__(self, address, snapshotter, namespace=DEFAULT_NAMESPACE, lease=None,
                 timeout=DEFAULT_TIMEOUT_S):
        self.address = channel_target(address)
        self.snapshotter = snapshotter
        self.namespace = namespace
        self.lease = lease
        self.timeout = timeout
        self._metadata = ((NAMESPACE_HEADER, namespace),) + (
            ((LEASE_HEADER, lease),) if lease else ())
        self._channel = grpc.insecure_channel(self.address)
        self._stub = convert.snapshots_pb2_grpc.SnapshotsStub(self._channel)

    def __repr__(self):
        return "RemoteSnapshotter(%r, %r, namespace=%r)" % (
            self.address, self.snapshotter, self.namespace)

    def _call(self, method, request):
        try:
            return getattr(self._stub, method)(request, metadata=self._metadata,
                                               timeout=self.timeout)
        except grpc.RpcError as failure:
            raise convert.error_from_rpc(failure) from None

    def stat(self, key):
        reply = self._call("Stat", snapshots_pb2.StatSnapshotRequest(
            snapshotter=self.snapshotter, key=key))
        return convert.info_from_pb(reply.info)

    def update(self, info, *fieldpaths):
        reply = self._call("Update", snapshots_pb2.UpdateSnapshotRequest(
            snapshotter=self.snapshotter, info=convert.info_to_pb(info),
            update_mask=field_mask_pb2.FieldMask(paths=list(fieldpaths))))
        return convert.info_from_pb(reply.info)

    def usage(self, key):
        reply = self._call("Usage", snapshots_pb2.UsageRequest(
            snapshotter=self.snapshotter, key=key))
        return Usage(size=reply.size, inodes=reply.inodes)

    def mounts(self, key):
        reply = self._call("Mounts", snapshots_pb2.MountsRequest(
            snapshotter=self.snapshotter, key=key))
        return convert.mounts_from_pb(reply.mounts)

    def prepare(self, key, parent="", labels=None):
        reply = self._call("Prepare", snapshots_pb2.PrepareSnapshotRequest(
            snapshotter=self.snapshotter, key=key, parent=parent or "",
            labels=dict(labels or {})))
        return convert.mounts_from_pb(reply.mounts)

    def view(self, key, parent="", labels=None):
        reply = self._call("View", snapshots_pb2.ViewSnapshotRequest(
            snapshotter=self.snapshotter, key=key, parent=parent or "",
            labels=dict(labels or {})))
        return convert.mounts_from_pb(reply.mounts)

    def commit(self, name, key, labels=None, parent=None):
        # The rebase parent is field 5, as in containerd 2.x. containerd 1.6's
        # API has no such field: it drops it unread and commits with the
        # active snapshot's own parent (no rebase, no error).
        self._call("Commit", snapshots_pb2.CommitSnapshotRequest(
            snapshotter=self.snapshotter, name=name, key=key,
            labels=dict(labels or {}), parent=parent or ""))

    def remove(self, key):
        self._call("Remove", snapshots_pb2.RemoveSnapshotRequest(
            snapshotter=self.snapshotter, key=key))

    def walk(self, fn, *filters):
        request = snapshots_pb2.ListSnapshotsRequest(snapshotter=self.snapshotter,
                                                     filters=list(filters))
        stream = self._call("List", request)
        try:
            for reply in stream:
                for info in reply.info:
                    fn(convert.info_from_pb(info))
        except grpc.RpcError as failure:
            raise convert.error_from_rpc(failure) from None
        finally:
            # fn raised, or the stream ended: either way nothing more is read.
            stream.cancel()

    def cleanup(self):
        self._call("Cleanup", snapshots_pb2.CleanupRequest(snapshotter=self.snapshotter))

    def close(self):
        if self._channel is not None:
            self._channel.close()
            self._channel = None
