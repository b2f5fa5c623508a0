"""Backends by name, and opening a snapshotter on a root."""

from .. import errors


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
}


def backend_class(name):
    try:
        return BACKENDS[name]()
    except KeyError:
        raise errors.InvalidArgument(
            "unknown backend %r; known backends: %s" % (name, ", ".join(sorted(BACKENDS)))
        ) from None


def open_snapshotter(root, backend, **options):
    """The Snapshotter of `backend` on `root` (created if missing)."""
    return backend_class(backend)(root, **options)
