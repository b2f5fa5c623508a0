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
  extra_config=None, disabled_plugins=DISABLED_PLUGINS)`:
  `plugin_roots` {snapshotter: directory} puts that snapshotter's root on the
  filesystem you want (its `root_path` option; containerd makes the
  directory); `plugin_config` {plugin id: {option: value}} adds options of
  other plugins (`"io.containerd.snapshotter.v1.devmapper": {...}`);
  `extra_config` is merged into the top of the TOML document, e.g.
  `{"proxy_plugins": {"snaplab": {"type": "snapshot", "address": SOCK}}}`.
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
  it returns, so removed snapshots leave the disk).
"""

import contextlib
import dataclasses
import os
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
from typing import Dict, Optional

from snaplab import mount as mountlib

CONTAINERD = "/usr/bin/containerd"
CTR = "/usr/bin/ctr"
TEMP_PREFIX = "snaplab-containerd-"
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
                key, _, value = line.partition(":")
                section = key.strip()
                fields[section] = value.strip()
            elif section == "Exports":
                name, _, value = line.strip().partition(" ")
                exports[name] = value.strip()
            elif section == "Error":
                key, _, value = line.strip().partition(":")
                error[key.strip()] = value.strip()
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


class Containerd:
    """One private containerd process; see the module docstring."""

    def __init__(self, base_dir=None, plugin_roots=None, plugin_config=None, extra_config=None,
                 disabled_plugins=DISABLED_PLUGINS):
        self.dir = tempfile.mkdtemp(prefix=TEMP_PREFIX, dir=base_dir)
        self.config_path = os.path.join(self.dir, "config.toml")
        self.root = os.path.join(self.dir, "root")
        self.state = os.path.join(self.dir, "state")
        self.address = os.path.join(self.dir, "containerd.sock")
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
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(  # pylint: disable=consider-using-with
                [CONTAINERD, "--config", self.config_path], stdin=subprocess.DEVNULL,
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
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
            problems += _delete_btrfs_subvolumes(place)
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

    # ------------------------------------------------------------ asking it

    def ctr(self, *argv, namespace=None):
        """stdout of `ctr --address <ours> [-n namespace] argv...`."""
        command = [CTR, "--address", self.address] + (["-n", namespace] if namespace else [])
        done = subprocess.run(command + list(argv), capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise ContainerdError("%s failed: %s" % (" ".join(["ctr"] + list(argv)),
                                                      done.stderr.strip()))
        return done.stdout

    def plugins(self):
        return parse_plugins(self.ctr("plugins", "ls", "-d"))

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


def _delete_btrfs_subvolumes(place):
    """Delete the btrfs subvolumes below `place`, deepest first (rm cannot
    remove read-only ones); returns the problems."""
    problems, found = [], []
    for directory, subdirs, _files in os.walk(place, topdown=True):
        for sub in list(subdirs):
            path = os.path.join(directory, sub)
            try:
                info = os.lstat(path)
            except OSError:
                continue
            # A subvolume's root directory is inode 256 on btrfs.
            if stat.S_ISDIR(info.st_mode) and info.st_ino == 256 and \
                    mountlib.lookup(path).fstype == "btrfs":
                found.append(path)
    for path in sorted(found, key=len, reverse=True):
        done = subprocess.run(["btrfs", "subvolume", "delete", path], capture_output=True,
                              text=True, check=False)
        if done.returncode != 0:
            problems.append("btrfs subvolume delete %s: %s" % (path, done.stderr.strip()))
    return problems


__all__ = ["Containerd", "ContainerdError", "DISABLED_PLUGINS", "PluginStatus",
           "parse_plugins", "to_toml", "unavailable_reason"]
