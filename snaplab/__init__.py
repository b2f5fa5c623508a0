"""snaplab: containerd's snapshotter model in Python, standard library only."""

__version__ = "0.1.0"

from .backends import open_snapshotter  # noqa: E402
from .errors import (AlreadyExists, FailedPrecondition, InvalidArgument,  # noqa: E402
                     NotFound, NotImplemented, SnapshotError)
from .types import Info, Kind, Mount, Usage  # noqa: E402

__all__ = ["open_snapshotter", "Info", "Kind", "Mount", "Usage", "SnapshotError", "NotFound",
           "AlreadyExists", "FailedPrecondition", "InvalidArgument", "NotImplemented"]
