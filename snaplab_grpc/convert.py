"""snaplab's types and errors <-> containerd's snapshots messages and gRPC codes.

The one place both directions live: the client (snaplab talking to
containerd) and the server (`snaplab serve`, containerd talking to snaplab)
use these and nothing else to translate.
"""

import grpc
from google.protobuf import timestamp_pb2

from snaplab import errors, types

from . import stubs

snapshots_pb2, snapshots_pb2_grpc, mount_pb2 = stubs.load()

# containerd's errdefs <-> gRPC codes (errdefs.ToGRPC / FromGRPC); snaplab's
# error classes carry the gRPC code name already.
CODE_OF_ERROR = {cls: getattr(grpc.StatusCode, cls.code) for cls in errors.ALL}
ERROR_OF_CODE = {code: cls for cls, code in CODE_OF_ERROR.items()}


class RemoteError(errors.SnapshotError):
    """A gRPC failure that is none of the snapshotter error classes
    (UNAVAILABLE, INTERNAL, DEADLINE_EXCEEDED, ...): the service is unreachable
    or broke, which is not a snapshotter answer."""

    def __init__(self, code, message):
        super().__init__("%s: %s" % (code.name, message))
        self.grpc_code = code


def error_from_rpc(rpc_error):
    """The snaplab error for a grpc.RpcError raised by a call."""
    code, message = rpc_error.code(), rpc_error.details() or ""
    cls = ERROR_OF_CODE.get(code)
    return cls(message) if cls else RemoteError(code, message)


def code_of(error):
    """The gRPC status code to answer a snaplab error with."""
    for cls in type(error).__mro__:
        if cls in CODE_OF_ERROR:
            return CODE_OF_ERROR[cls]
    return grpc.StatusCode.UNKNOWN


def timestamp(ns):
    seconds, nanos = divmod(int(ns), 1_000_000_000)
    return timestamp_pb2.Timestamp(seconds=seconds, nanos=nanos)


def ns_of(stamp):
    return stamp.seconds * 1_000_000_000 + stamp.nanos


def info_to_pb(info):
    return snapshots_pb2.Info(name=info.name, parent=info.parent, kind=int(info.kind),
                              created_at=timestamp(info.created),
                              updated_at=timestamp(info.updated), labels=info.labels)


def info_from_pb(message):
    return types.Info(kind=types.Kind(message.kind), name=message.name, parent=message.parent,
                      labels=dict(message.labels), created=ns_of(message.created_at),
                      updated=ns_of(message.updated_at))


def mounts_to_pb(mounts):
    return [mount_pb2.Mount(type=m.type, source=m.source, target=m.target,
                            options=list(m.options)) for m in mounts]


def mounts_from_pb(messages):
    return [types.Mount(type=m.type, source=m.source, target=m.target,
                        options=list(m.options)) for m in messages]
