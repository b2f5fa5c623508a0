"""A private containerd for tests: its own config, root, state and sockets.

    with Containerd(plugin_roots={"overlayfs": "/mnt/xfs/cd/overlayfs"}) as cd:
        print(cd.plugin("overlayfs").status)          # ok / skip / error
        sn = cd.snapshotter("overlayfs", namespace="t1")   # a RemoteSnapshotter

Everything it makes is under one temp directory named snaplab-containerd-*
(config.toml, root/, state/, containerd.sock, containerd.sock.ttrpc,
debug.sock, containerd.log): nothing under /run/containerd,
/var/lib/containerd or /opt/containerd, and the host's containerd (if any) is
never touched. `make leaks` finds a left-over one by its config path.

The API, for whoever reuses it (the proxy-plugin target, benchmarks):

- `Containerd(base_dir=None, plugin_roots=None, plugin_config=None,
  extra_config=None, disabled_plugins=DISABLED_PLUGINS, umask=0o022)`:
  `plugin_roots` {snapshotter: directory} puts that snapshotter's root on the
  filesystem you want (its `root_path` option; containerd makes the
  directory); `plugin_config` {plugin id: {option: value}} adds options of
  other plugins (`"io.containerd.snapshotter.v1.devmapper": {...}`);
  `extra_config` is merged into the top of the TOML document, e.g.
  `{"proxy_plugins": {"snaplab": {"type": "snapshot", "address": SOCK}}}`.
  `umask` is containerd's own, whatever the caller's (022: a service's).
- `start()` (waits until the gRPC socket answers; ContainerdError with the
  log's tail if it does not), `stop()` (SIGTERM, then SIGKILL after
  STOP_TIMEOUT_S; unmounts what is mounted below its directories, deletes
  btrfs subvolumes, removes its files; returns the problems), `restart()`
  (same config and root: what it stored must still be there).
  A context manager: stop() runs also when the block fails.
- `plugins()` -> [PluginStatus] from `ctr plugins ls -d`;
  `plugin(id)`; `refusal(snapshotter)` -> containerd's own reason why that
  snapshotter plugin did not load (None when it did).
- `snapshotter(name, namespace, lease=None)` -> a RemoteSnapshotter;
  `ctr(*argv, namespace=None)` runs ctr against it; `create_lease(ns)`,
  `delete_lease(ns, id, sync=True)` (sync: a garbage collection runs before
  it returns, so removed snapshots leave the disk). These questions are
  ContainerdClient's, which asks them of any containerd's socket.
- RootNamespaces: a namespace under a lease per snapshotter root, the
  isolation of the suite's cases on any containerd (ContainerdTarget here,
  EndpointTarget in conformance/endpoint.py).
"""

import contextlib
import dataclasses
import functools
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from typing import Dict, Optional

import pytest

from snaplab import errors
from snaplab import mount as mountlib
from snaplab.kernel import FUSE_ZFS_FSTYPE

from .filesystems import CONTAINERD_PREFIX, delete_btrfs_subvolumes
from .target import Refusal, Target

CONTAINERD = "/usr/bin/containerd"
CTR = "/usr/bin/ctr"
SNAPSHOTTER_TYPE = "io.containerd.snapshotter.v1"
START_TIMEOUT_S = 30
STOP_TIMEOUT_S = 10

# What a snapshot service does not need. Most of these would also reach out
# of the private directories: `opt` makes /opt/containerd, aufs runs
# `modprobe aufs`, cri configures networking, the runtimes and the cgroups
# monitor deal with the host's processes and cgroups.
DISABLED_PLUGINS = (
    "io.containerd.grpc.v1.cri",
    "io.containerd.internal.v1.opt",
    "io.containerd.internal.v1.restart",
    "io.containerd.runtime.v1.linux",
    "io.containerd.runtime.v2.task",
    "io.containerd.monitor.v1.cgroups",
    "io.containerd.service.v1.tasks-service",
    "io.containerd.grpc.v1.tasks",
    "io.containerd.snapshotter.v1.aufs",
)


class ContainerdError(Exception):
    """containerd (or ctr) is missing, did not start, or a command failed."""


@dataclasses.dataclass
class PluginStatus:
    """One plugin as containerd reports it (`ctr plugins ls -d`)."""

    type: str
    id: str
    exports: Dict[str, str] = dataclasses.field(default_factory=dict)
    error_code: str = ""
    error: str = ""  # containerd's message; "" when it loaded

    @property
    def status(self):
        """ok, skip (the plugin said it cannot run here) or error, as `ctr plugins ls`."""
        if not self.error:
            return "ok"
        return "skip" if self.error.endswith("skip plugin") else "error"


def _split_at(line, separator):
    key, value = line.split(separator, 1) if separator in line else (line, "")
    return key.strip(), value.strip()


def parse_plugins(text):
    """[PluginStatus] from the output of `ctr plugins ls -d`: one block per
    plugin, each starting with a "Type:" line; Exports and Error entries are
    indented under their heading (the lines between blocks hold only spaces)."""
    blocks = []
    for line in text.splitlines():
        if line.startswith("Type:"):
            blocks.append([])
        if blocks and line.strip():
            blocks[-1].append(line)
    plugins = []
    for block in blocks:
        fields, section, exports, error = {}, None, {}, {}
        for line in block:
            if not line[0].isspace():
                key, value = _split_at(line, ":")
                section = key
                fields[section] = value
            elif section == "Exports":
                name, value = _split_at(line.strip(), " ")
                exports[name] = value
            elif section == "Error":
                key, value = _split_at(line.strip(), ":")
                error[key] = value
        if "ID" in fields:
            plugins.append(PluginStatus(fields["Type"], fields["ID"], exports,
                                        error.get("Code", ""), error.get("Message", "")))
    return plugins


def _toml_value(value):
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return '"%s"' % value.replace("\\", "\\\\").replace('"', '\\"')
    if isinstance(value, (list, tuple)):
        return "[%s]" % ", ".join(_toml_value(v) for v in value)
    raise TypeError("no TOML form for %r" % (value,))


def _toml_key(key):
    bare = key and all(c.isalnum() or c in "-_" for c in key)
    return key if bare else _toml_value(key)


def to_toml(document, _table=()):
    """A TOML text of nested dicts of str/int/bool/list values (all the
    config needs; the standard library reads TOML but does not write it)."""
    lines, tables = [], []
    for key, value in document.items():
        if isinstance(value, dict):
            tables.append((key, value))
        else:
            lines.append("%s = %s" % (_toml_key(key), _toml_value(value)))
    for key, value in tables:
        path = _table + (key,)
        lines += ["", "[%s]" % ".".join(_toml_key(k) for k in path)]
        lines.append(to_toml(value, path))
    return "\n".join(lines).strip("\n") + ("\n" if not _table else "")


def merge(into, extra):
    """Merge nested dict `extra` into `into` (tables merged, values replaced)."""
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            merge(into[key], value)
        else:
            into[key] = value
    return into


def unavailable_reason():
    """Why no private containerd can run here (None if it can)."""
    for binary in (CONTAINERD, CTR):
        if not os.access(binary, os.X_OK):
            return "%s is not installed (apt-get install containerd)" % binary
    if os.geteuid() != 0:
        return "containerd's snapshotters need root"
    return None


class ContainerdClient:
    """What the suite asks of a running containerd at `address` (a socket
    path, or unix:// and the path): ctr, plugins, snapshotters, leases and
    namespaces. A private Containerd is one; so is the client of any
    containerd's socket (conformance/endpoint.py)."""

    def __init__(self, address):
        self.address = address[len("unix://"):] if address.startswith("unix://") else address
        self._plugins = None  # cached plugins() of the running process

    def ctr(self, *argv, namespace=None):
        """stdout of `ctr --address <ours> [-n namespace] argv...`."""
        command = [CTR, "--address", self.address] + (["-n", namespace] if namespace else [])
        try:
            done = subprocess.run(command + list(argv), capture_output=True, text=True,
                                  check=False)
        except FileNotFoundError:
            raise ContainerdError("%s is not installed (apt-get install containerd)"
                                  % CTR) from None
        if done.returncode != 0:
            raise ContainerdError("%s failed: %s" % (" ".join(["ctr"] + list(argv)),
                                                     done.stderr.strip()))
        return done.stdout

    def plugins(self):
        """The plugins' status; asked once per start (plugins load only then)."""
        if self._plugins is None:
            self._plugins = parse_plugins(self.ctr("plugins", "ls", "-d"))
        return self._plugins

    def plugin(self, plugin_id, plugin_type=SNAPSHOTTER_TYPE):
        for found in self.plugins():
            if (found.type, found.id) == (plugin_type, plugin_id):
                return found
        return None

    def refusal(self, snapshotter):
        """containerd's reason why the snapshotter plugin did not load; None if it did."""
        found = self.plugin(snapshotter)
        if found is None:
            return "containerd has no snapshotter plugin %r" % snapshotter
        return found.error or None

    def snapshotter(self, name, namespace, lease=None):
        from snaplab_grpc.client import RemoteSnapshotter  # needs grpcio
        return RemoteSnapshotter(self.address, name, namespace=namespace, lease=lease)

    def create_lease(self, namespace):
        """A new lease in `namespace` (containerd makes the namespace); its id."""
        out = self.ctr("leases", "create", namespace=namespace).split()
        return out[-1] if out else ""

    def delete_lease(self, namespace, lease, sync=True):
        self.ctr("leases", "delete", *(["--sync"] if sync else []), lease, namespace=namespace)

    def remove_namespace(self, namespace):
        self.ctr("namespaces", "remove", namespace)

    def namespaces(self):
        """The names of containerd's namespaces."""
        return self.ctr("namespaces", "ls", "-q").split()

    def leases(self, namespace):
        """The ids of the leases in `namespace`."""
        return self.ctr("leases", "ls", "-q", namespace=namespace).split()


class Containerd(ContainerdClient):
    """One private containerd process; see the module docstring."""

    def __init__(self, base_dir=None, plugin_roots=None, plugin_config=None, extra_config=None,
                 disabled_plugins=DISABLED_PLUGINS, umask=0o022):
        self.umask = umask
        self.dir = tempfile.mkdtemp(prefix=CONTAINERD_PREFIX, dir=base_dir)
        super().__init__(os.path.join(self.dir, "containerd.sock"))
        self.config_path = os.path.join(self.dir, "config.toml")
        self.root = os.path.join(self.dir, "root")
        self.state = os.path.join(self.dir, "state")
        self.log_path = os.path.join(self.dir, "containerd.log")
        self.plugin_roots = dict(plugin_roots or {})
        self.process: Optional[subprocess.Popen] = None
        config = {
            "version": 2,
            "root": self.root,
            "state": self.state,
            "disabled_plugins": list(disabled_plugins),
            "grpc": {"address": self.address},
            "ttrpc": {"address": self.address + ".ttrpc"},
            "debug": {"address": os.path.join(self.dir, "debug.sock"), "level": "info"},
            "plugins": {},
        }
        for name, root in self.plugin_roots.items():
            config["plugins"]["%s.%s" % (SNAPSHOTTER_TYPE, name)] = {"root_path": root}
        merge(config["plugins"], dict(plugin_config or {}))
        merge(config, dict(extra_config or {}))
        with open(self.config_path, "w", encoding="utf-8") as out:
            out.write(to_toml(config))

    def __repr__(self):
        return "Containerd(%s)" % self.dir

    # ------------------------------------------------------------ life

    def start(self, timeout=START_TIMEOUT_S):
        reason = unavailable_reason()
        if reason:
            raise ContainerdError(reason)
        if self.running():
            return self
        self._plugins = None
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(  # pylint: disable=consider-using-with
                [CONTAINERD, "--config", self.config_path], stdin=subprocess.DEVNULL,
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True, umask=self.umask)
        deadline = time.monotonic() + timeout
        while not self._answers():
            if self.process.poll() is not None:
                code = self.process.returncode
                self.process = None
                raise ContainerdError("containerd exited (status %s) before serving: %s"
                                      % (code, self.log_tail()))
            if time.monotonic() > deadline:
                self._terminate()
                raise ContainerdError("containerd did not serve %s within %d s: %s"
                                      % (self.address, timeout, self.log_tail()))
            time.sleep(0.05)
        return self

    def running(self):
        return self.process is not None and self.process.poll() is None

    def _answers(self):
        if not os.path.exists(self.address):
            return False
        with socket.socket(socket.AF_UNIX) as probe:
            try:
                probe.connect(self.address)
            except OSError:
                return False
        return True

    def _terminate(self):
        """SIGTERM, SIGKILL if it lingers; returns the problems."""
        if self.process is None:
            return []
        problems = []
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                problems.append("containerd (pid %d) ignored SIGTERM for %d s: killed"
                                % (self.process.pid, STOP_TIMEOUT_S))
                self.process.kill()
                self.process.wait()
        self.process = None
        return problems

    def restart(self):
        """Stop and start it again on the same root: a persistence check."""
        problems = self._terminate()
        if problems:
            raise ContainerdError("; ".join(problems))
        return self.start()

    def stop(self):
        """Stop it and remove everything it made; returns the problems (also
        when it was never started or has died)."""
        problems = self._terminate()
        places = [self.dir] + list(self.plugin_roots.values())
        for place in places:
            for where in mountlib.mounts_under(place):
                try:
                    mountlib.unmount_all(where)
                except mountlib.MountError as err:
                    problems.append(str(err))
        if problems:
            return problems  # never delete through a mount
        for place in places:
            problems += delete_btrfs_subvolumes(place)
            shutil.rmtree(place, ignore_errors=True)
            if os.path.lexists(place):
                problems.append("%s could not be removed" % place)
        return problems

    def __enter__(self):
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc):
        problems = self.stop()
        if problems and exc[0] is None:
            raise ContainerdError("stopping containerd: " + "; ".join(problems))

    def log_tail(self, lines=15):
        with contextlib.suppress(OSError):
            with open(self.log_path, encoding="utf-8", errors="replace") as log:
                return " | ".join(log.read().splitlines()[-lines:])
        return "(no log)"


# ---------------------------------------------------------------- conformance targets

# The suite's backend names for containerd's snapshotter plugins (each
# declares its traits in conformance/traits/containerd-<plugin>.yml).
PLUGIN_OF_BACKEND = {
    "containerd-overlayfs": "overlayfs",
    "containerd-native": "native",
    "containerd-btrfs": "btrfs",
    "containerd-zfs": "zfs",
    "containerd-devmapper": "devmapper",
}
DEVMAPPER_CONFIG = {"base_image_size": "16Mb"}


def device_mapper_in_kernel():
    with contextlib.suppress(OSError):
        with open("/proc/misc", encoding="utf-8") as misc:
            return any(line.split()[1:] == ["device-mapper"] for line in misc if line.strip())
    return False


class ContainerdDaemons:
    """One private containerd per test filesystem, started on first use,
    all stopped by stop_all() (the session fixture `containerd_daemons`).

    Each has every snapshotter plugin's root on that filesystem: a
    directory <fs>/snaplab-containerd-*/<plugin> (root_path); for zfs a
    dataset of its own mounted there (containerd's zfs wants a dataset's
    mount point); devmapper is configured with a pool name, so that where
    the pool cannot be made containerd says itself why it does not load.
    They run under umask 0, as containerd's own suite runs its snapshotters
    (clearMask): modes must not depend on the umask.
    """

    def __init__(self):
        self._daemons = {}  # filesystem name -> (Containerd, plugin roots dir)
        self._failed = {}
        self._fs = {}

    def get(self, fs):
        """The running containerd for made filesystem `fs` (filesystems.Filesystem)."""
        name = fs.spec.name
        if name in self._failed:
            raise ContainerdError(self._failed[name])
        if name not in self._daemons:
            roots_dir = tempfile.mkdtemp(prefix=CONTAINERD_PREFIX, dir=fs.mountpoint)
            roots = {plugin: os.path.join(roots_dir, plugin)
                     for plugin in PLUGIN_OF_BACKEND.values()}
            daemon = None
            try:
                if hasattr(fs, "make_root_dataset"):  # filesystems.ZfsFilesystem
                    fs.make_root_dataset(roots["zfs"])
                devmapper = dict(DEVMAPPER_CONFIG, root_path=roots.pop("devmapper"),
                                 pool_name="snaplab-thinpool-" + os.urandom(4).hex())
                daemon = Containerd(plugin_roots=roots, umask=0, plugin_config={
                    SNAPSHOTTER_TYPE + ".devmapper": devmapper})
                daemon.start()
            except BaseException as failure:
                problems = self._stop(daemon, fs, roots_dir)
                self._failed[name] = "containerd on %s: %s%s" % (
                    name, failure, "; cleaning up: " + "; ".join(problems) if problems else "")
                raise ContainerdError(self._failed[name]) from failure
            self._daemons[name] = (daemon, roots_dir)
            self._fs[name] = fs
        return self._daemons[name][0]

    @staticmethod
    def _stop(daemon, fs, roots_dir):
        problems = daemon.stop() if daemon is not None else []
        if not problems:
            problems += fs.release_under(roots_dir)  # the zfs root dataset
            shutil.rmtree(roots_dir, ignore_errors=True)
        return problems

    def stop_all(self):
        """Stop every daemon and remove its roots; returns the problems."""
        problems = []
        for name, (daemon, roots_dir) in list(self._daemons.items()):
            problems += self._stop(daemon, self._fs[name], roots_dir)
            del self._daemons[name]
        return problems


def containerd_daemons_fixture():
    """Body of the session fixture `containerd_daemons` (conftest.py)."""
    daemons = ContainerdDaemons()
    try:
        yield daemons
    finally:
        problems = daemons.stop_all()
        if problems:
            raise ContainerdError("stopping the test containerds: " + "; ".join(problems))


def remove_every_snapshot(sn):
    """Remove every snapshot `sn` lists, children before parents (one Remove
    per leaf and round); FailedPrecondition naming them when a round removes
    nothing (a Remove that answered but did not take effect)."""
    listed = None
    while True:
        infos = sn.list()
        if not infos:
            return
        names = sorted(info.name for info in infos)
        if names == listed:
            raise errors.FailedPrecondition(
                "still listed after their Remove: %s" % ", ".join(names))
        listed = names
        parents = {info.parent for info in infos}
        for info in infos:
            if info.name not in parents:
                sn.remove(info.name)


def overlayfs_refusal(target):
    """The Refusal of containerd's overlayfs code (overlayutils.Supported:
    the plugin, and snapshotters built on it such as stargz) on `target`'s
    filesystem, or None where it must work."""
    fstype = target.fstype()
    if not target.spec.d_type or fstype == FUSE_ZFS_FSTYPE:
        return Refusal("d_type", explanation=(
            "zfs-fuse fills in no d_type" if fstype == FUSE_ZFS_FSTYPE else None))
    return None


def through_containerd(traits):
    """A snapshotter's traits as seen through containerd's (Debian's 1.6.20)
    API: Remove deletes containerd's own metadata only, and the plugin's
    data goes at containerd's next garbage collection (its Cleanup is not
    the plugin's); its CommitSnapshotRequest has no parent field, so no
    rebase reaches the plugin (containerd 2.x has one: --trait rebase=true)."""
    return traits.replace(source="%s through containerd" % traits.source,
                          removal="until-cleanup", rebase=False)


class RootIsolation:
    """Something of its own for each snapshotter root a case asks for (a
    namespace, a key prefix), named `prefix` and a number, made on first
    use; release_under() removes what the cases made with it.

    Subclasses give _make(name) -> handle, _opener(handle) -> a picklable
    callable that opens a client of the root, and _release(handle) ->
    problems."""

    def __init__(self, prefix):
        self.prefix = prefix
        self._of_root = {}  # real root path -> handle
        self._numbers = iter(range(1, 1 << 62))

    def __len__(self):
        return len(self._of_root)

    def of_root(self, root):
        key = os.path.realpath(root)
        if key not in self._of_root:
            self._of_root[key] = self._make("%s%d" % (self.prefix, next(self._numbers)))
        return self._of_root[key]

    def opener(self, root):
        return self._opener(self.of_root(root))

    def open(self, root):
        return self.opener(root)()

    def release_under(self, directory):
        """Release what was made for the roots at or below `directory`;
        returns the problems."""
        problems = []
        for root, handle in list(self._of_root.items()):
            if is_at_or_below(root, directory):
                problems += self._release(handle)
                del self._of_root[root]
        return problems

    def sweep(self, abandoned):
        """Release what an earlier run left (killed before it could): the
        handles of the service whose names start with a name of which
        `abandoned(name)` says so; returns the problems."""
        problems = []
        for handle in self._found():
            if abandoned(self._name(handle)):
                problems += self._release(handle)
        return problems

    def _make(self, name):
        raise NotImplementedError

    def _opener(self, handle):
        raise NotImplementedError

    def _release(self, handle):
        raise NotImplementedError

    def _found(self):
        """The handles of this kind the service holds now, whoever made them."""
        raise NotImplementedError

    @staticmethod
    def _name(handle):
        raise NotImplementedError


class RootNamespaces(RootIsolation):
    """A containerd namespace, under a lease, for each snapshotter root: the
    metadata, hence the key space, is per namespace, and the lease keeps
    containerd's garbage collector off the unlabelled snapshots a case makes.

    `client()` gives the ContainerdClient to use (it may start one).
    Releasing a root removes its snapshots (children first), deletes its
    lease with a synchronous garbage collection (which is when containerd
    removes a snapshot's data) and removes the namespace (which containerd
    refuses while it holds anything).
    """

    def __init__(self, client, plugin, prefix):
        super().__init__(prefix)
        self.client = client
        self.plugin = plugin

    def _make(self, name):
        return name, self.client().create_lease(name)

    def _opener(self, handle):
        from snaplab_grpc.client import RemoteSnapshotter  # pylint: disable=import-outside-toplevel
        namespace, lease = handle
        return functools.partial(RemoteSnapshotter, self.client().address, self.plugin,
                                 namespace=namespace, lease=lease)

    def _release(self, handle):
        namespace, lease = handle
        client = self.client()
        try:
            with client.snapshotter(self.plugin, namespace) as sn:
                remove_every_snapshot(sn)
            for held in [lease] if lease else client.leases(namespace):
                client.delete_lease(namespace, held, sync=True)
            client.remove_namespace(namespace)
        except (ContainerdError, errors.SnapshotError) as err:
            return ["releasing containerd namespace %s: %s" % (namespace, err)]
        return []

    def _found(self):
        # None: every lease of the namespace (an earlier run's, ids unknown)
        return [(namespace, None) for namespace in self.client().namespaces()]

    @staticmethod
    def _name(handle):
        return handle[0]


def is_at_or_below(path, directory):
    """Whether real path `path` is `directory` or below it."""
    directory = os.path.realpath(directory)
    return path == directory or path.startswith(directory.rstrip("/") + "/")


class ContainerdTarget(Target):
    """A containerd snapshotter plugin on one filesystem, e.g.
    containerd-overlayfs-on-xfs, driven through containerd's gRPC API.

    Isolation: one containerd per filesystem per run (ContainerdDaemons),
    and a containerd namespace under a lease per snapshotter root a case
    asks for (RootNamespaces). After the case, release_under removes what
    it made and, once no case's namespace is left, checks that no snapshot
    data of the plugin is left on disk.
    """

    service = "containerd"

    def __init__(self, backend, filesystem, plugin=None):
        super().__init__(backend, filesystem)
        self.plugin = plugin or PLUGIN_OF_BACKEND[backend]  # plugin: a proxy plugin's name
        self.daemons = None
        self.namespaces = RootNamespaces(self.daemon, self.plugin, "snaplab-case-")

    owns_root = False

    def traits_name(self):
        return "containerd-" + self.plugin

    @functools.cached_property
    def traits(self):
        return through_containerd(super().traits)

    def setup_session(self, request):
        reason = unavailable_reason()
        if reason:
            pytest.skip(reason)
        self.daemons = request.getfixturevalue("containerd_daemons")

    def daemon(self):
        return self.daemons.get(self.fs)

    def expected_refusal(self):
        fstype = self.fstype()
        if self.plugin == "btrfs" and fstype != "btrfs":
            return Refusal("must be a btrfs filesystem")
        if self.plugin == "zfs" and fstype != "zfs":
            return Refusal("must be a zfs filesystem", explanation=(
                "containerd's zfs wants a kernel zfs mount; zfs-fuse's is fuse.zfs"
                if fstype == FUSE_ZFS_FSTYPE else None))
        if self.plugin == "devmapper":
            if not device_mapper_in_kernel():
                return Refusal("no such device", explanation="the kernel has no "
                               "device-mapper (no /dev/mapper/control): no thin pool")
            return Refusal("not configured", explanation="no thin pool is made for it "
                           "(written where the kernel had no device-mapper)")
        if self.plugin == "overlayfs":
            return overlayfs_refusal(self)
        return None

    def data_dir(self, root):
        return self.daemon().plugin_roots.get(self.plugin) or os.path.join(
            self.daemon().root, SNAPSHOTTER_TYPE + "." + self.plugin)

    def open(self, root, **options):
        if options:
            raise errors.InvalidArgument("containerd's %s takes its options from "
                                         "containerd's config, not %s" % (self.plugin, options))
        refusal = self.daemon().refusal(self.plugin)
        if refusal:
            raise errors.FailedPrecondition("containerd's %s snapshotter plugin did not "
                                            "load: %s" % (self.plugin, refusal))
        return self.namespaces.open(root)

    def opener(self, root):
        return self.namespaces.opener(root)

    def restart_service(self):
        self.daemon().restart()

    def release_under(self, directory):
        held = len(self.namespaces)
        problems = self.namespaces.release_under(directory)
        if held > len(self.namespaces) == 0 and not problems:
            problems += self._left_on_disk()
        return problems

    def _left_on_disk(self):
        """Snapshot data of the plugin still on disk once every case's
        namespace is gone and collected: a leak (containerd's or ours)."""
        data = self.data_dir(None)
        left = []
        for sub in ("snapshots", "active", "view"):
            with contextlib.suppress(FileNotFoundError):
                left += [os.path.join(sub, n) for n in os.listdir(os.path.join(data, sub))]
        return ["containerd's %s left %s after the garbage collection" % (
            self.plugin, ", ".join(sorted(left)))] if left else []


__all__ = ["Containerd", "ContainerdClient", "ContainerdDaemons", "ContainerdError",
           "DISABLED_PLUGINS", "PLUGIN_OF_BACKEND", "PluginStatus", "ContainerdTarget",
           "RootIsolation", "RootNamespaces", "is_at_or_below", "overlayfs_refusal",
           "parse_plugins", "remove_every_snapshot", "through_containerd", "to_toml",
           "unavailable_reason"]
