"""What a conformance target is: a snapshotter on one real filesystem.

The cases know nothing of backends (as containerd's testsuite gets only a
factory): a Target opens a snapshotter on a root, says what the backend must
refuse there (a Refusal), and has hooks that targets behind a service
override. The kinds of target build on this module:

    conformance/inprocess.py   snaplab's backends, in the test process
    conformance/rootless.py    snaplab's backends run unprivileged, in a user namespace
    conformance/containerd.py  containerd's own snapshotter plugins
    conformance/serve.py       snaplab behind `snaplab serve` and containerd
    conformance/started.py     a service started from a command (snaplab serve's too)
    conformance/registry.py    every target by name, for conftest.py

A new kind of target joins by subclassing Target there and naming it in the
registry, not by editing cases. What the cases may expect of a target's
snapshotter where containerd's contract leaves a choice is its traits
(conformance/traits.py), never its name.

What snaplab's backends must refuse, and the dataset a zfs root needs, are
here too: the serve targets run the same backends in another process.
"""

import functools
import os

from snaplab import backends
from snaplab import mount as mountlib
from snaplab.kernel import FUSE_ZFS_FSTYPE, ZFS_FSTYPES

from . import resultlog
from . import traits as traitslib
from .filesystems import FILESYSTEMS, ZfsFilesystem, openzfs_version


class Refusal:
    """What a backend's refusal of a filesystem must say: `reason` (why),
    and each of `fixes` (how to fix it, or what to use instead)."""

    def __init__(self, reason, *fixes, explanation=None):
        self.reason = reason
        self.fixes = fixes
        self.explanation = explanation  # shown in the report; no temp paths in it

    def __str__(self):
        return self.reason

    def skip_reason(self, target):
        """Why the target's cases are skipped (the report marks the cell refused)."""
        return resultlog.refusal_skip_reason(target.backend, self.reason, self.explanation)


class Target:
    """A backend on one filesystem, e.g. overlay-on-xfs.

    `fs` (a filesystems.Filesystem) is set by the `target` fixture once the
    filesystem is made. Subclasses give open() and expected_refusal();
    targets behind a service also override the hooks.
    """

    service = None  # the service the cases talk to, None: in-process
    # Whether each root a case opens is the snapshotter's own, its storage
    # visible under it (False behind containerd or an endpoint: one plugin
    # root for all cases, or none the suite can see).
    owns_root = True
    # The command the suite starts the service with, {root} and {socket} in
    # it (conformance/started.py); None: the suite cannot stop or restart it.
    start_command = None

    def __init__(self, backend, filesystem, options=None):
        self.backend = backend
        self.filesystem = filesystem
        self.options = dict(options or {})
        self.name = "%s-on-%s" % (backend, filesystem)

    def __repr__(self):
        return self.name

    @property
    def spec(self):
        return FILESYSTEMS[self.filesystem]

    def traits_name(self):
        """The file of conformance/traits/ (without .yml) that declares the
        traits of this target's snapshotter: snaplab's backend's own here."""
        return "snaplab-" + self.backend

    @functools.cached_property
    def traits(self):
        """What the cases may expect where the contract leaves a choice
        (traits.Traits); the defaults when the suite knows no file."""
        return traitslib.known(self.traits_name()) or traitslib.Traits()

    def setup_session(self, request):
        """Once per run, after the filesystem is made (pytest's `request`)."""

    def data_dir(self, root):
        """Where the snapshotter opened on `root` keeps its data."""
        return root

    def opener(self, root):
        """A picklable callable that opens the snapshotter of `root` (already
        opened once) in another process; None where the target has none."""
        return None

    def open_for_case(self, open_now):
        """The snapshotter a fixture opens for a case: `open_now()`, at once
        here; a target whose cases run in another process (rootless) gives
        a handle that opens there."""
        return open_now()

    def run_case(self, pyfuncitem):
        """Run the case (pytest's item, its fixtures set up) the target's own
        way and return True; None: pytest calls its function here, as usual."""
        return None

    def restart_service(self):
        """Restart what serves the snapshotter (nothing in-process: closing
        and reopening is the restart)."""

    def release_under(self, directory):
        """Release what the target made for the roots below `directory`;
        returns the problems."""
        return []

    def kept_mounts_under(self, directory):
        """What the snapshotter keeps mounted below `directory` by design
        (erofs's images on its snapshots' fs/), latest first: not a case's
        leak; the fixture unmounts it after the case, as a reboot would."""
        return []

    def diagnostics(self):
        """What to show beside a failed case: [(title, text)] (the logs of
        the services the target runs for it)."""
        return []

    def fstype(self):
        """The type of the filesystem roots go on, as mounted (host-dir is
        whatever the host has; zfs is "zfs" or zfs-fuse's "fuse.zfs")."""
        made = getattr(self, "fs", None)
        if made is not None:
            return mountlib.lookup(made.mountpoint).fstype
        return self.spec.fstype

    def expected_refusal(self):
        """The Refusal the backend must give on this filesystem, or None
        where it must work."""
        raise NotImplementedError

    def open(self, root, **options):
        """A snapshotter on `root`; raises what the backend raises."""
        raise NotImplementedError


def snaplab_refusal(backend, target):
    """The Refusal snaplab's `backend` must give on `target`'s filesystem
    (in-process or behind serve), or None where it must work."""
    fstype = target.fstype()
    if backend == "aufs":
        return Refusal("not runnable", "overlay backend", explanation=backends.backend_class("aufs").why_not_runnable())
    if backend == "btrfs" and fstype != "btrfs":
        return Refusal("not btrfs", "mkfs.btrfs")
    if backend == "zfs" and fstype not in ZFS_FSTYPES:
        return Refusal("not a ZFS dataset", "zfs create")
    if backend in ("overlay", "erofs"):  # erofs's actives and views are overlays
        if fstype == FUSE_ZFS_FSTYPE:
            # zfs-fuse's readdir gives DT_UNKNOWN: the d_type check
            # refuses it before the probe of the upper would.
            return Refusal("d_type", explanation="zfs-fuse fills in no d_type")
        if not target.spec.d_type:
            return Refusal("d_type", "ftype=1", "filetype")
        if fstype == "zfs" and openzfs_version() < (2, 2):
            # overlayfs needs RENAME_WHITEOUT and tmpfile from its upper
            # filesystem: FUSE has neither, OpenZFS has both since 2.2.
            return Refusal("overlay upper", "ext4, xfs or btrfs")
    return None


def make_snaplab_root(backend, fs, root):
    """What the harness makes for a root of snaplab's `backend` before the
    backend opens it (in-process or behind serve): a dataset of its own for a
    zfs root on the zfs filesystem `fs`, when nothing is at `root` yet (or
    only an empty directory)."""
    if backend == "zfs" and isinstance(fs, ZfsFilesystem) and _fresh(root):
        fs.make_root_dataset(root)


def _fresh(root):
    """Whether nothing is at `root` yet but, at most, an empty directory."""
    if not os.path.lexists(root):
        return True
    return (os.path.isdir(root) and not os.path.islink(root) and not os.listdir(root)
            and not mountlib.is_mountpoint(root))


__all__ = ["Refusal", "Target", "make_snaplab_root", "snaplab_refusal"]
