"""Error classes of the snapshotter model.

They are the classes of containerd's errdefs that snapshotters use, raised in
the same cases (docs/semantics.md §4). Each also derives from the closest Python
built-in so that callers who do not know snaplab can still catch sensibly.
`code` is the gRPC status name and `exit_code` is what the CLI exits with.
"""


class SnapshotError(Exception):
    """Base class of every error the snapshotter core raises on purpose."""

    code = "UNKNOWN"
    exit_code = 1


class NotFound(SnapshotError, LookupError):
    """The key, name or parent does not exist."""

    code = "NOT_FOUND"
    exit_code = 2


class AlreadyExists(SnapshotError):
    """The key or name is taken (one key space for active, view and committed)."""

    code = "ALREADY_EXISTS"
    exit_code = 3


class FailedPrecondition(SnapshotError):
    """The request is valid but the snapshot is in the wrong state for it."""

    code = "FAILED_PRECONDITION"
    exit_code = 4


class InvalidArgument(SnapshotError, ValueError):
    """The request itself is malformed (bad key, label, filter, field path...)."""

    code = "INVALID_ARGUMENT"
    exit_code = 5


class NotImplemented(SnapshotError, NotImplementedError):  # noqa: A001 - errdefs name
    """The backend does not support the operation on this system."""

    code = "UNIMPLEMENTED"
    exit_code = 6


ALL = (NotFound, AlreadyExists, FailedPrecondition, InvalidArgument, NotImplemented)

BY_CODE = {cls.code: cls for cls in ALL}
