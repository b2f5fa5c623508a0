"""Any service of containerd's snapshots gRPC API as a conformance target.

    EndpointTarget("unix:///run/containerd/containerd.sock", "overlayfs")
    EndpointTarget("/run/my-snapshotter.sock", "mine")   # a proxy plugin's own socket

The suite controls no root there: each case is isolated by what the
service keys its metadata on, and what the case made is removed after it.

- containerd's own socket (it answers containerd's Version service): a
  containerd namespace under a lease per root a case opens (RootNamespaces,
  as the containerd-* targets), released with a synchronous garbage
  collection. Needs ctr, for the leases and namespaces.
- a bare snapshotter service (`snaplab serve`, a proxy plugin's socket):
  these keep one key space and ignore the namespace header, so each root
  gets a key prefix of its own (RootPrefixes): PrefixedSnapshotter adds it
  to every key, parent and name on the way in, strips it on the way out
  (Info, error messages) and shows Walk only the snapshots under it. A
  prefix, not "remove everything afterwards": the service may hold someone
  else's snapshots (a proxy plugin's socket holds containerd's), which the
  suite must neither see nor touch.

The row is `endpoint-<plugin>`, its column "endpoint": the scratch
directories where cases mount what the service returns are on the host's
temp filesystem, and the service's own storage is not visible to the suite
(cases that look at it skip, saying so). The service runs on this machine:
its mounts name paths here.
"""

import dataclasses
import functools
import os

import pytest

from snaplab import errors
from snaplab import filters as filterlib
from snaplab.snapshotter import Snapshotter

from . import traits as traitslib
from .containerd import (ContainerdClient, ContainerdError, RootIsolation, RootNamespaces,
                         remove_every_snapshot, through_containerd)
from .serve import grpc_missing
from .target import Target

ENDPOINT_PREFIX = "endpoint-"
DEFAULT_NAMESPACE_PREFIX = "snaplab-conformance-"
STORAGE_NOT_VISIBLE = "an endpoint's storage is not visible to the suite"
PROBE_TIMEOUT_S = 10
# containerd's Version service: any containerd has it, a bare snapshotter
# service does not (UNIMPLEMENTED).
CONTAINERD_VERSION_METHOD = "/containerd.services.version.v1.Version/Version"

# The column of endpoint rows (its spec: conformance/filesystems.py).
ENDPOINT_FILESYSTEM = "endpoint"


class EndpointUnreachable(Exception):
    """Nothing answers containerd's API at the address."""


def speaks_containerd(address):
    """Whether containerd itself answers at `address` (else a bare
    snapshotter service); EndpointUnreachable when nothing does."""
    # Imported here: grpcio is optional for the rest of the suite.
    import grpc  # pylint: disable=import-outside-toplevel
    from snaplab_grpc.client import channel_target  # pylint: disable=import-outside-toplevel

    channel = grpc.insecure_channel(channel_target(address))
    try:
        # An empty message is google.protobuf.Empty, Version's request.
        channel.unary_unary(CONTAINERD_VERSION_METHOD)(b"", timeout=PROBE_TIMEOUT_S)
        return True
    except grpc.RpcError as failure:
        if failure.code() == grpc.StatusCode.UNIMPLEMENTED:
            return False
        raise EndpointUnreachable("%s: %s: %s" % (address, failure.code().name,
                                                  failure.details())) from None
    finally:
        channel.close()


# ---------------------------------------------------------------- a key prefix per root

_NAMED_FIELDS = {("name",), ("parent",)}
_COMPARED = (filterlib.EQUAL, filterlib.NOT_EQUAL)
_BARE_FIELD = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_")


def _quoted(text):
    """`text` as a double-quoted literal of containerd's filter language."""
    escaped = []
    for ch in text:
        if ch in '\\"':
            escaped.append("\\" + ch)
        elif ord(ch) < 0x20 or ord(ch) == 0x7f:
            escaped.append("\\x%02x" % ord(ch))
        else:
            escaped.append(ch)
    return '"%s"' % "".join(escaped)


def prefix_filter(text, prefix):
    """Filter string `text` with `prefix` before each name or parent it
    compares (== and !=; an empty value, which means "no parent", stays
    empty). A string that does not parse here goes as it is, so that the
    service itself says what is wrong with it; ~= values go as they are
    (a regular expression cannot be prefixed in general; unanchored ones
    still find the same names)."""
    try:
        parsed = filterlib.parse(text)
    except errors.InvalidArgument:
        return text
    selectors = parsed.alternatives[0]
    if not any(s.fieldpath in _NAMED_FIELDS and s.operator in _COMPARED and s.value
               for s in selectors):
        return text
    written = []
    for selector in selectors:
        field = ".".join(part if part and set(part) <= _BARE_FIELD else _quoted(part)
                         for part in selector.fieldpath)
        if selector.operator == filterlib.PRESENT:
            written.append(field)
            continue
        value = selector.value
        if selector.fieldpath in _NAMED_FIELDS and selector.operator in _COMPARED and value:
            value = prefix + value
        written.append(field + selector.operator + _quoted(value))
    return ",".join(written)


class PrefixedSnapshotter(Snapshotter):
    """A client of a bare snapshotter service that sees only the keys
    under `prefix`, as if the service held nothing else (see the module
    docstring). Picklable as functools.partial(PrefixedSnapshotter, ...)
    for the cases' other processes."""

    def __init__(self, address, plugin, prefix):
        from snaplab_grpc.client import RemoteSnapshotter  # pylint: disable=import-outside-toplevel
        self.prefix = prefix
        self.remote = RemoteSnapshotter(address, plugin)

    def __repr__(self):
        return "PrefixedSnapshotter(%r, prefix=%r)" % (self.remote, self.prefix)

    def _in(self, key):
        # "" stays "": no parent, or a key the service must refuse.
        return self.prefix + key if key else key

    def _strip(self, key):
        return key[len(self.prefix):] if key.startswith(self.prefix) else key

    def _out(self, info):
        return dataclasses.replace(info, name=self._strip(info.name),
                                   parent=self._strip(info.parent))

    def _call(self, method, *args, **kwargs):
        try:
            return method(*args, **kwargs)
        except errors.SnapshotError as err:
            # The messages name the keys the case gave.
            err.args = tuple(a.replace(self.prefix, "") if isinstance(a, str) else a
                             for a in err.args)
            raise

    def stat(self, key):
        return self._out(self._call(self.remote.stat, self._in(key)))

    def update(self, info, *fieldpaths):
        sent = dataclasses.replace(info, name=self._in(info.name), parent=self._in(info.parent))
        return self._out(self._call(self.remote.update, sent, *fieldpaths))

    def usage(self, key):
        return self._call(self.remote.usage, self._in(key))

    def mounts(self, key):
        return self._call(self.remote.mounts, self._in(key))

    def prepare(self, key, parent="", labels=None):
        return self._call(self.remote.prepare, self._in(key), self._in(parent), labels)

    def view(self, key, parent="", labels=None):
        return self._call(self.remote.view, self._in(key), self._in(parent), labels)

    def commit(self, name, key, labels=None, parent=None):
        return self._call(self.remote.commit, self._in(name), self._in(key), labels,
                          self._in(parent))

    def remove(self, key):
        return self._call(self.remote.remove, self._in(key))

    def walk(self, fn, *filters):
        def ours(info):
            if info.name.startswith(self.prefix):
                fn(self._out(info))
        self._call(self.remote.walk, ours, *(prefix_filter(f, self.prefix) for f in filters))

    def cleanup(self):
        return self._call(self.remote.cleanup)

    def close(self):
        self.remote.close()


class RootPrefixes(RootIsolation):
    """A key prefix per snapshotter root on a bare snapshotter service.
    Releasing a root removes its snapshots (children first), runs Cleanup
    (where removal leaves garbage until then) and checks that nothing under
    the prefix is left."""

    def __init__(self, address, plugin, prefix):
        super().__init__(prefix)
        self.address = address
        self.plugin = plugin

    def _make(self, name):
        return name + "/"

    def _opener(self, handle):
        return functools.partial(PrefixedSnapshotter, self.address, self.plugin, handle)

    def _release(self, handle):
        try:
            with self._opener(handle)() as sn:
                remove_every_snapshot(sn)
                try:
                    sn.cleanup()
                except errors.NotImplemented:
                    pass
                left = sorted(info.name for info in sn.list())
        except errors.SnapshotError as err:
            return ["releasing the keys under %r: %s" % (handle, err)]
        if left:
            return ["keys under %r left after removing them all: %s" % (handle, ", ".join(left))]
        return []

    def _found(self):
        from snaplab_grpc.client import RemoteSnapshotter  # pylint: disable=import-outside-toplevel
        try:
            with RemoteSnapshotter(self.address, self.plugin) as sn:
                names = [info.name for info in sn.list()]
        except errors.SnapshotError:
            # Nothing to sweep where nothing can be listed (stargz's Walk on
            # an empty store fails: "bucket does not exist"); the cases'
            # own Walks say what is wrong.
            return []
        return sorted({name.split("/", 1)[0] + "/" for name in names if "/" in name})

    @staticmethod
    def _name(handle):
        return handle


def owner_pid(name, prefix):
    """The process id a name of `prefix` (made by names_of) carries, or None."""
    if not name.startswith(prefix):
        return None
    pid, sep, _rest = name[len(prefix):].partition("-")
    return int(pid) if sep and pid.isdigit() else None


def abandoned_by_dead_run(prefix):
    """A test of names: made by a run of `prefix` whose process is gone."""
    def abandoned(name):
        pid = owner_pid(name, prefix)
        if pid is None or pid == os.getpid():
            return False
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            pass  # alive, another user's
        return False
    return abandoned


def names_of(prefix):
    """The names of this run's namespaces or key prefixes: `prefix`, this
    process's id (the service runs on this machine: a later run can tell
    when their owner is gone) and a random token."""
    return "%s%d-%s-" % (prefix, os.getpid(), os.urandom(4).hex())


# ---------------------------------------------------------------- the target

class EndpointTarget(Target):
    """The snapshotter `plugin` of the service at `address`, e.g.
    endpoint-overlayfs-on-endpoint. Namespaces (or key prefixes) are named
    `namespace_prefix`, a token of this target and a number."""

    service = "the endpoint"

    owns_root = False

    def __init__(self, address, plugin, namespace_prefix=DEFAULT_NAMESPACE_PREFIX,
                 declared=None, trait_values=None, containerd=None):
        # containerd in front gets a row of its own (endpoint-containerd-
        # overlayfs): its own metadata layer answers first, and the known
        # differences of containerd's targets are its.
        super().__init__(ENDPOINT_PREFIX + ("containerd-" if containerd else "") + plugin,
                         ENDPOINT_FILESYSTEM)
        self.containerd = containerd  # None: not known yet (asked in setup_session)
        self.address = address
        self.plugin = plugin
        self.namespace_prefix = namespace_prefix
        self.names = names_of(namespace_prefix)
        self.isolation = None  # RootNamespaces or RootPrefixes, once the endpoint answered
        self.declared = declared  # the Traits of the user's file (--traits)
        self.trait_values = dict(trait_values or {})  # and on top, --trait NAME=VALUE

    @property
    def traits(self):
        """traits.of_plugin's, as seen through containerd where it answers,
        the user's --trait values last."""
        traits = traitslib.of_plugin(self.plugin, self.declared)
        if isinstance(self.isolation, RootNamespaces) or self.containerd:
            traits = through_containerd(traits)
        if self.trait_values:
            traits = traits.replace(source="%s and --trait" % traits.source, **self.trait_values)
        return traits

    def setup_session(self, request):
        reason = grpc_missing()
        if reason:
            pytest.skip(reason)
        if self.isolation is None:
            self.isolation = self._isolation()
            # What runs of this prefix left when they were killed.
            problems = self.isolation.sweep(abandoned_by_dead_run(self.namespace_prefix))
            if problems:
                pytest.fail("what an earlier, killed run left at %s could not be removed: %s"
                            % (self.address, "; ".join(problems)))

    def _isolation(self):
        containerd = self.containerd
        if containerd is None:
            try:
                containerd = speaks_containerd(self.address)
            except EndpointUnreachable as unreachable:
                pytest.fail("nothing serves containerd's snapshots API at %s" % unreachable)
        if not containerd:
            return RootPrefixes(self.address, self.plugin, self.names)
        client = ContainerdClient(self.address)
        try:
            refusal = client.refusal(self.plugin)
        except ContainerdError as err:
            pytest.fail("containerd answers at %s, but its plugins cannot be listed (ctr "
                        "makes the cases' leases and namespaces): %s" % (self.address, err))
        if refusal:
            pytest.fail("containerd at %s cannot serve snapshotter %s: %s"
                        % (self.address, self.plugin, refusal))
        return RootNamespaces(lambda: client, self.plugin, self.names)

    def expected_refusal(self):
        return None  # whatever the service refuses, it says itself

    def data_dir(self, root):
        pytest.skip(STORAGE_NOT_VISIBLE)

    def open(self, root, **options):
        if options:
            raise errors.InvalidArgument("an endpoint takes its options from its own "
                                         "configuration, not %s" % (options,))
        return self.isolation.open(root)

    def opener(self, root):
        return self.isolation.opener(root)

    def release_under(self, directory):
        return self.isolation.release_under(directory) if self.isolation is not None else []


__all__ = ["DEFAULT_NAMESPACE_PREFIX", "ENDPOINT_FILESYSTEM", "ENDPOINT_PREFIX",
           "EndpointTarget", "EndpointUnreachable", "PrefixedSnapshotter", "RootPrefixes",
           "abandoned_by_dead_run", "names_of", "owner_pid",
           "STORAGE_NOT_VISIBLE", "prefix_filter", "speaks_containerd"]
