"""Every conformance target by name: the backends × filesystems matrix conftest.py runs.

A backend name says which kind of target it is: one of snaplab's backends
(in-process), containerd-<plugin> (containerd's own snapshotter plugins),
serve-<backend> (snaplab behind `snaplab serve`, conformance/started.py),
containerd-proxy-snaplab-<backend> (behind serve and containerd's proxy
plugin), rootless-<backend> (snaplab's native or overlay run by an
unprivileged user in a user namespace, conformance/rootless.py) or
endpoint-stargz (stargz-snapshotter's daemon started per root as a start
command would, conformance/stargz.py). endpoint_targets()
gives the one target of a run against a service someone else runs
(endpoint-<plugin>, or endpoint-containerd-<plugin> where containerd
answers: conformance/endpoint.py); started_targets() the endpoint-<plugin>
row of a service the suite starts itself from a command, one per
filesystem (conformance/started.py).
"""

import os

from snaplab import backends, errors

from . import traits as traitslib
from .containerd import PLUGIN_OF_BACKEND, ContainerdTarget
from .endpoint import (DEFAULT_NAMESPACE_PREFIX, EndpointTarget, EndpointUnreachable,
                       speaks_containerd)
from .filesystems import FILESYSTEMS
from .inprocess import InProcessTarget
from .rootless import ROOTLESS_TARGETS, RootlessTarget
from .serve import (PROXY_PREFIX, SERVE_PREFIX, SERVED_BACKENDS, ContainerdProxyTarget,
                    grpc_missing)
from .stargz import STARGZ_ROW, StargzTarget
from .started import ServeTarget, StartedTarget

# What is known to fail where (report.py's format); the suite's default.
KNOWN_DIFFERENCES = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                 "known-differences.yml")

DEFAULT_BACKENDS = ["native", "overlay", "btrfs", "zfs", "aufs",
                    "blockfile", "erofs",
                    # containerd's own plugins, through a private containerd
                    # (conformance/containerd.py)
                    "containerd-overlayfs", "containerd-native", "containerd-btrfs",
                    "containerd-zfs", "containerd-devmapper",
                    # snaplab behind containerd: `snaplab serve` as its proxy
                    # plugin (conformance/serve.py; serve-* and the other
                    # containerd-proxy-snaplab-* backends on request)
                    "containerd-proxy-snaplab-overlay",
                    # snaplab's backends run rootless, in a user namespace
                    # (conformance/rootless.py)
                    *ROOTLESS_TARGETS,
                    # a snapshotter this project did not write, built from
                    # Debian's sources (conformance/stargz.py)
                    STARGZ_ROW]


def target_classes():
    """{backend name: its Target class}, for every backend name the suite knows."""
    classes = {name: InProcessTarget for name in sorted(backends.BACKENDS)}
    classes.update((name, ContainerdTarget) for name in sorted(PLUGIN_OF_BACKEND))
    classes.update((name, RootlessTarget) for name in ROOTLESS_TARGETS)
    for prefix, cls in ((SERVE_PREFIX, ServeTarget), (PROXY_PREFIX, ContainerdProxyTarget)):
        classes.update((prefix + served, cls) for served in SERVED_BACKENDS)
    classes[STARGZ_ROW] = StargzTarget
    return classes


def all_targets(backend_names, filesystem_names):
    """A Target for each backend on each filesystem (InvalidArgument for a
    name the suite does not know)."""
    classes = target_classes()
    unknown = [b for b in backend_names if b not in classes]
    unknown += [f for f in filesystem_names if f not in FILESYSTEMS]
    if unknown:
        raise errors.InvalidArgument(
            "unknown backend or filesystem: %s (backends: %s; filesystems: %s)" % (
                ", ".join(unknown), ", ".join(classes), ", ".join(FILESYSTEMS)))
    return [classes[b](b, f) for b in backend_names for f in filesystem_names]


def endpoint_targets(address, plugin, namespace_prefix=None, traits_file=None, trait_options=()):
    """The target of a run against the service at `address`: its
    snapshotter `plugin` (InvalidArgument without one), with the traits of
    `traits_file` when given (else the suite's own traits of the plugin,
    when it knows it), `trait_options` (NAME=VALUE) on top."""
    if not plugin:
        raise errors.InvalidArgument("an endpoint needs the name of its snapshotter plugin "
                                     "(--plugin: containerd's plugin name, or any name for a "
                                     "service of one snapshotter)")
    declared = traitslib.load(traits_file) if traits_file else None
    return [EndpointTarget(address, plugin, namespace_prefix or DEFAULT_NAMESPACE_PREFIX,
                           declared, traitslib.of_options(trait_options),
                           containerd=_speaks_containerd(address))]


def _speaks_containerd(address):
    """Whether containerd answers at `address` (its row is named for it);
    None when that cannot be asked now: the cases say why."""
    if grpc_missing():
        return None
    try:
        return speaks_containerd(address)
    except EndpointUnreachable:
        return None


def started_targets(command, plugin, filesystem_names, traits_file=None, trait_options=()):
    """The endpoint-<plugin> row of the service started from `command` (a
    template with {root} and {socket}) on each filesystem (InvalidArgument
    for a bad command, a missing plugin or an unknown filesystem); traits
    as endpoint_targets'."""
    if not plugin:
        raise errors.InvalidArgument("a start command needs the name of its snapshotter "
                                     "plugin (--plugin: containerd's plugin name if it starts "
                                     "a containerd, any name for a service of one snapshotter)")
    unknown = [f for f in filesystem_names if f not in FILESYSTEMS]
    if unknown:
        raise errors.InvalidArgument("unknown filesystem: %s (filesystems: %s)"
                                     % (", ".join(unknown), ", ".join(FILESYSTEMS)))
    declared = traitslib.load(traits_file) if traits_file else None
    values = traitslib.of_options(trait_options)
    return [StartedTarget(command, plugin, f, declared=declared, trait_values=values)
            for f in filesystem_names]


__all__ = ["DEFAULT_BACKENDS", "KNOWN_DIFFERENCES", "all_targets", "endpoint_targets",
           "started_targets", "target_classes"]
