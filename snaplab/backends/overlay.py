"""overlay: snapshots as overlayfs layers (docs/semantics.md §5).

Layout: <root>/snapshots/<id>/fs is the snapshot's upper directory (the whole
content of a parentless one) and <root>/snapshots/<id>/work the overlay
workdir (active snapshots only). Lowerdirs are derived from the parent chain
at mount time, so Commit moves nothing and a rebase needs no disk work.
"""

import contextlib
import functools
import os
import tempfile

from .. import errors
from .. import fsutil
from .. import idmap
from .. import kernel
from .. import mount as mountlib
from ..labels import UPPERDIR_LABEL
from ..options import Option
from ..types import Kind, Mount
from .base import StorageEntry, StoreSnapshotter, directory_entries, missing_storage

_INDEX_PARAMETER = "/sys/module/overlay/parameters/index"
_UPPER_PROBE_PREFIX = "overlay-probe-"
_IDMAP_PROBE_PREFIX = "idmap-probe-"
# The mapping the idmap probe mounts with: container root is host 666.
_PROBE_MAPPING = "0:666:1"


# Upper filesystems overlayfs is known to take: no probe mount for them.
_KNOWN_UPPER_FILESYSTEMS = ("ext4", "xfs", "btrfs", "tmpfs", "f2fs")


class OverlaySnapshotter(StoreSnapshotter):
    name = "overlay"
    probe_prefixes = StoreSnapshotter.probe_prefixes + (_UPPER_PROBE_PREFIX, _IDMAP_PROBE_PREFIX)
    declared_options = (
        Option("async_remove", "bool", False,
               "Remove only drops the metadata; the data is deleted by the next Cleanup."),
        Option("mount_options", "list", [],
               "Options appended to every overlay mount (userxattr, index=on...)."),
        Option("upperdir_label", "bool", False,
               "Stat and Walk report each snapshot's upper directory in the label "
               "containerd.io/snapshot/overlay.upperdir."),
    )

    @property
    def async_remove(self):
        return self.options["async_remove"]

    def check_filesystem(self, path):
        if not kernel.filesystem_in_kernel("overlay"):
            raise errors.FailedPrecondition(
                "%s backend: this kernel has no overlay filesystem (not listed in "
                "/proc/filesystems); load the overlay module or use --backend native" % self.name)
        backing = mountlib.lookup(path)
        if backing.fstype == "overlay":
            raise errors.FailedPrecondition(
                "%s backend: %s is itself on overlayfs, which cannot hold overlay upper "
                "directories; put the root on ext4, xfs or btrfs" % (self.name, path))
        if not fsutil.has_d_type(path):
            raise errors.FailedPrecondition(
                "%s backend: %s (%s on %s) does not support d_type. If the backing "
                "filesystem is xfs, please reformat with ftype=1 to enable d_type support; "
                "if it is ext4, enable the filetype feature (tune2fs -O filetype, then "
                "e2fsck -f) or reformat without -O ^filetype"
                % (self.name, path, backing.fstype, backing.source))
        # In a user namespace the kernel decides more (overlayfs mounts
        # there from Linux 5.11, with userxattr): always ask it.
        rootless = kernel.in_user_namespace()
        if rootless or backing.fstype not in _KNOWN_UPPER_FILESYSTEMS:
            self._probe_upper(path, backing, rootless, self.name)

    @staticmethod
    def _probe_upper(path, backing, rootless=False, backend="overlay"):
        """Mount a tiny overlay with its upper in `path` and remove lower
        entries through it the way a layer's diff does: the kernel decides.

        overlayfs needs xattrs, whiteouts, RENAME_EXCHANGE and O_TMPFILE from
        the upper filesystem. Some filesystems fail the mount ("upper fs
        missing required features"). OpenZFS before 2.2 (no RENAME_EXCHANGE
        or RENAME_WHITEOUT) mounts, and even removes a lower file or an
        untouched lower directory (overlayfs falls back to a plain rename of
        a whiteout), but removing a lower directory that was copied up (a
        file in it removed first, as `rm -r` does) needs RENAME_EXCHANGE and
        fails with EINVAL: seen in the lab's bookworm VM, OpenZFS 2.1.11. So
        the probe does exactly that. Only filesystems not known to work pay
        for the probe, and every root opened in a user namespace (`rootless`:
        mounted with userxattr, as the snapshots will be), where kernels
        before 5.11 mount no overlayfs at all.
        """
        probe = tempfile.mkdtemp(prefix=_UPPER_PROBE_PREFIX, dir=path)
        if rootless:
            refusal = ("%s backend: the kernel does not mount overlayfs over %s (%s at %s) "
                       "in this user namespace (%%s); rootless overlay needs Linux 5.11 or later "
                       "and an upper filesystem that takes user.* xattrs, or use --backend "
                       "native" % (backend, path, backing.fstype, backing.mountpoint))
        else:
            refusal = ("%s backend: the kernel refuses %s (%s at %s) as an overlay upper "
                       "layer (%%s); put the root on ext4, xfs or btrfs, or use --backend native"
                       % (backend, path, backing.fstype, backing.mountpoint))
        try:
            for name in ("lower", "lower/dir", "upper", "work", "merged"):
                os.mkdir(os.path.join(probe, name))
            for name in ("file", "dir/file"):
                with open(os.path.join(probe, "lower", name), "w", encoding="ascii"):
                    pass
            options = ["lowerdir=" + os.path.join(probe, "lower"),
                       "upperdir=" + os.path.join(probe, "upper"),
                       "workdir=" + os.path.join(probe, "work")]
            if rootless:
                options.append("userxattr")  # as the snapshots' own mounts
            merged = os.path.join(probe, "merged")
            try:
                mountlib.mount(Mount("overlay", "overlay", options=options), merged)
            except mountlib.MountError as err:
                raise errors.FailedPrecondition(refusal % err) from None
            try:
                # A whiteout for a lower file; then dir/file's whiteout
                # copies dir up, and removing that merged dir swaps it for a
                # whiteout with RENAME_EXCHANGE.
                os.unlink(os.path.join(merged, "file"))
                os.unlink(os.path.join(merged, "dir", "file"))
                os.rmdir(os.path.join(merged, "dir"))
            except OSError as err:
                raise errors.FailedPrecondition(
                    refusal % ("removing a lower entry through the overlay fails: %s"
                               % os.strerror(err.errno))) from None
            finally:
                mountlib.unmount(merged)
        finally:
            fsutil.remove_tree(probe)

    @functools.cached_property
    def idmap_refusal(self):
        """None if the kernel mounts an overlay over idmapped lowerdirs of
        this root's filesystem, else why not. Asked of the kernel with a
        real probe mount (containerd trusts Linux >= 5.19 and probes older
        ones; a version says nothing of the filesystem: ext4 and xfs idmap
        from 5.12, btrfs from 5.15, others not at all), once per root."""
        if kernel.in_user_namespace():
            return "an idmapped mount needs the initial user namespace (rootless has none)"
        if self.read_only:
            return "the root is opened read-only, and the probe mounts in it"
        try:
            # Its pid in the name: Cleanup removes a killed prober's mounts at once.
            probe = tempfile.mkdtemp(prefix="%s%d-" % (_IDMAP_PROBE_PREFIX, os.getpid()),
                                     dir=self.root)
        except OSError as err:  # a read-only root, say
            return "no probe can be made in %s: %s" % (self.root, os.strerror(err.errno))
        try:
            for name in ("content", "upper", "work", "merged"):
                os.mkdir(os.path.join(probe, name))
            with open(os.path.join(probe, "content", "file"), "w", encoding="ascii"):
                pass
            os.lchown(os.path.join(probe, "content", "file"), 0, 0)
            try:
                with self.probe_lower(os.path.join(probe, "content")) as lower:
                    return self._probe_idmapped_lower(probe, lower)
            except (OSError, errors.SnapshotError) as err:  # the lower could not be made
                return str(err)
        finally:
            fsutil.remove_tree(probe)

    @contextlib.contextmanager
    def probe_lower(self, content):
        """The idmap probe's lowerdir, holding the directory `content` as a
        parent layer holds it (overlay: that very directory)."""
        yield content

    def _probe_idmapped_lower(self, probe, lower):
        """Mount an overlay over `lower` idmapped: None if it shows the
        probe file's root as host 666, else why not."""
        options = idmap.Mapping(_PROBE_MAPPING, _PROBE_MAPPING).mount_options() + [
            "lowerdir=" + lower,
            "upperdir=" + os.path.join(probe, "upper"),
            "workdir=" + os.path.join(probe, "work")] + self.extra_options
        merged = os.path.join(probe, "merged")
        try:
            mountlib.mount(Mount("overlay", "overlay", options=options), merged)
        except (OSError, errors.SnapshotError) as err:
            return str(err)
        try:
            if os.stat(os.path.join(merged, "file")).st_uid != 666:
                return "the kernel mounted the idmapped lowerdir without shifting its ids"
        finally:
            mountlib.unmount(merged)
        return None

    def capabilities(self):
        return [] if self.idmap_refusal else [idmap.REMAP_CAPABILITY]

    def setup_layout(self):
        self.ensure_directory(self.snapshots_dir)
        self.extra_options = self._auto_options()

    def _auto_options(self):
        configured = list(self.options["mount_options"])
        if kernel.in_user_namespace() and "userxattr" not in configured:
            configured.append("userxattr")  # rootless overlay, containerd #5060
        configures_index = any(o == "index" or o.startswith("index=") for o in configured)
        if not configures_index and os.path.exists(_INDEX_PARAMETER):
            # A layer may be mounted twice (EBUSY with index=on, #4311), but a
            # user's own index setting wins (#13805).
            configured.append("index=off")
        return configured

    @property
    def snapshots_dir(self):
        return os.path.join(self.root, "snapshots")

    def upper_of(self, snapshot_id):
        return os.path.join(self.snapshots_dir, str(snapshot_id), "fs")

    def work_of(self, snapshot_id):
        return os.path.join(self.snapshots_dir, str(snapshot_id), "work")

    def create_storage(self, snap, info):
        mapping = idmap.from_labels(info.labels)
        if mapping is not None and self.idmap_refusal:
            raise errors.FailedPrecondition(
                "%s backend: the labels ask for a uid/gid mapping, but this kernel cannot "
                "mount an overlay over idmapped lowerdirs on %s (%s); use Linux 5.19 or later "
                "on ext4, xfs or btrfs, or --backend native (chown remap)"
                % (self.name, self.root, self.idmap_refusal))
        with self.staged_directory(os.path.join(self.snapshots_dir, str(snap.id)),
                                   mode=0o700) as staging:
            upper = os.path.join(staging, "fs")
            os.mkdir(upper)
            os.chmod(upper, 0o755)
            if snap.kind == Kind.ACTIVE:
                os.mkdir(os.path.join(staging, "work"))
                os.chmod(os.path.join(staging, "work"), 0o711)
            if mapping is not None:
                # The upper is not idmapped: it belongs to the container's
                # root on the host (containerd's WithRemapIDs).
                os.lchown(upper, *mapping.root_pair)
            elif snap.parent_ids:
                # The merged root takes its owner from the upper dir: keep
                # the parent's so the root does not change owner per layer.
                parent = os.stat(self.upper_of(snap.parent_ids[0]))
                os.lchown(upper, parent.st_uid, parent.st_gid)

    def snapshot_mounts(self, snap, info):
        active = snap.kind == Kind.ACTIVE
        mapping = idmap.from_labels(info.labels)
        # Mapped: the parents' layers are idmapped by the mount code
        # (snaplab.mount), the snapshot's own upper never is.
        mapped = mapping.mount_options() if mapping is not None else []
        if not snap.parent_ids:
            # Only its own directory, owned by the mapped root already:
            # nothing to shift (containerd idmaps this bind too, which
            # shows the root as the mapped id of the mapped root).
            return [Mount("bind", self.upper_of(snap.id),
                          options=["rw" if active else "ro", "rbind"])]
        if not active and len(snap.parent_ids) == 1:
            # overlay refuses a single lowerdir without upper: bind it read-only
            return [Mount("bind", self.upper_of(snap.parent_ids[0]),
                          options=mapped + ["ro", "rbind"])]
        options = list(mapped)
        if active:
            options += ["workdir=" + self.work_of(snap.id), "upperdir=" + self.upper_of(snap.id)]
        options.append("lowerdir=" + ":".join(self.upper_of(p) for p in snap.parent_ids))
        options += self.extra_options
        return [Mount("overlay", "overlay", options=options)]

    def active_usage(self, snap):
        # The upper dir holds exactly this snapshot's delta (whiteouts included).
        upper = self.upper_of(snap.id)
        self.sync_before_measuring()
        return fsutil.disk_usage(upper)

    def storage_entries(self):
        return directory_entries(self.snapshots_dir)

    def storage_entries_of(self, snapshot_id):
        path = os.path.join(self.snapshots_dir, str(snapshot_id))
        return [StorageEntry(str(snapshot_id), path)] if os.path.lexists(path) else []

    def decorate_info(self, info, tx):
        if self.options["upperdir_label"]:
            info.labels[UPPERDIR_LABEL] = self.upper_of(tx.get_info(info.name)[0])
        return info

    def absent_storage(self, snapshot_id, kind):
        """The paths a snapshot of `kind` needs that are not there."""
        needed = [self.upper_of(snapshot_id)]
        if kind == Kind.ACTIVE:
            needed.append(self.work_of(snapshot_id))
        return [path for path in needed if not os.path.isdir(path)]

    def storage_findings(self, rows):
        return missing_storage(rows, lambda snapshot_id, kind, _parent_id: ", ".join(
            self.absent_storage(snapshot_id, kind)) or None)
