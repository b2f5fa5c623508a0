"""Backends by name, and opening a snapshotter on a root."""

import os

from .. import errors
from ..metastore import METADATA_FILE


def _native():
    from .native import NativeSnapshotter
    return NativeSnapshotter


def _overlay():
    from .overlay import OverlaySnapshotter
    return OverlaySnapshotter


def _btrfs():
    from .btrfs import BtrfsSnapshotter
    return BtrfsSnapshotter


def _zfs():
    from .zfs import ZfsSnapshotter
    return ZfsSnapshotter


def _blockfile():
    from .blockfile import BlockfileSnapshotter
    return BlockfileSnapshotter


def _erofs():
    from .erofs import ErofsSnapshotter
    return ErofsSnapshotter


def _aufs():
    from .aufs import AufsSnapshotter
    return AufsSnapshotter


# name -> loader; imported lazily so one backend's needs never break another.
BACKENDS = {
    "native": _native,
    "overlay": _overlay,
    "btrfs": _btrfs,
    "zfs": _zfs,
    "aufs": _aufs,
    "blockfile": _blockfile,
    "erofs": _erofs,
}


def backend_class(name):
    try:
        return BACKENDS[name]()
    except KeyError:
        raise errors.InvalidArgument(
            "unknown backend %r; known backends: %s" % (name, ", ".join(sorted(BACKENDS)))
        ) from None


def kept_mounts_under(name, directory):
    """What the roots of backend `name` below `directory` keep mounted by
    design (erofs's images), latest first: no leak, but gone after a reboot."""
    kept = getattr(backend_class(name), "kept_mounts_under", None)
    return kept(directory) if kept is not None else []


def declared_options(name):
    """The Option declarations of backend `name` (InvalidArgument if unknown)."""
    return backend_class(name).declared_options


def open_snapshotter(root, backend, create=True, read_only=False, **options):
    """The Snapshotter of `backend` on `root`.

    With `create` a missing root is made. Without it, a root that does not
    exist yet is NotFound: a mistyped path must not claim a directory, and
    reading must not make one. `read_only` (only without `create`): nothing
    at all is written to the root, so it works on a read-only filesystem.
    `options` are the backend's keyword options, typed or as text.
    """
    cls = backend_class(backend)  # InvalidArgument for an unknown backend
    if not create and not os.path.exists(os.path.join(root, METADATA_FILE)):
        raise errors.NotFound("no snapshotter root at %s (no %s there)" % (root, METADATA_FILE))
    return cls(root, read_only=read_only and not create, **options)
