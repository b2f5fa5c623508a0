# Copyright (c) snaplab maintainers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

# Note that this doc fragment is PRIVATE to the collection: it can change at
# any time. Do not use it from other collections.

from __future__ import annotations


class ModuleDocFragment:
    """The options that name a snapshotter root (module_utils/_common.py
    SNAPSHOTTER_ARGUMENT_SPEC is their argument spec). backend_options lists
    what each backend's declared_options say (snaplab/backends, Option):
    tests/unit/test_doc_fragment.py fails when the two disagree."""

    DOCUMENTATION = r"""
options:
  root:
    description:
      - The snapshotter root directory on the managed node. It holds C(metadata.db) and the
        snapshots' data.
    type: path
    required: true
  backend:
    description:
      - The snapshotter backend. V(overlay) and V(native) take a root on any suitable
        filesystem, V(btrfs) a root on btrfs, V(zfs) a root that is the mount point of a ZFS
        dataset (the node_storage role makes one for a C(snapshotter_root) with backend
        V(zfs)). V(blockfile) keeps each snapshot as an ext4 or xfs image file on any
        filesystem that loop devices can read (it needs C(/dev/loop-control)). V(erofs) takes a
        root where V(overlay) does, on a kernel with erofs and a node with mkfs.erofs
        (erofs-utils); it keeps each committed snapshot as an EROFS image. V(aufs) is not
        runnable on current kernels and says why.
      - A root belongs to the backend that created it; naming another one fails with
        RV(error_class=FailedPrecondition) and the right name.
    type: str
    default: overlay
  backend_options:
    description:
      - Options of the backend, as keyword arguments, typed as the backend declares them. A bool
        option also takes the strings V(true)/V(false), V(yes)/V(no), V(on)/V(off) and V(1)/V(0);
        a list of strings option also takes one string of comma-separated items.
      - V(overlay) takes C(async_remove) (bool, default V(false)). Remove only drops the
        metadata; the data is deleted by the next Cleanup.
      - V(overlay) takes C(mount_options) (list of strings, default V([])). Options appended to
        every overlay mount (userxattr, index=on...).
      - V(overlay) takes C(upperdir_label) (bool, default V(false)). Stat and Walk report each
        snapshot's upper directory in the label containerd.io/snapshot/overlay.upperdir.
      - V(blockfile) takes C(scratch_file) (str, default V()). A pre-formatted empty image of
        fs_type, copied to <root>/scratch as the base of parentless snapshots; without it snaplab
        makes one with mkfs.
      - V(blockfile) takes C(scratch_size) (str, default V()). Size of the scratch snaplab makes
        (64M, 1G...); default 64 MiB for ext4, 300 MiB for xfs (the smallest xfs mkfs.xfs makes).
      - V(blockfile) takes C(fs_type) (str, default V(ext4)). The filesystem of the images, ext4
        or xfs.
      - V(blockfile) takes C(mount_options) (list of strings, default V([])). Options of every
        image mount (loop is always there), e.g. direct-io,sync.
      - V(blockfile) takes C(recreate_scratch) (bool, default V(false)). Replace <root>/scratch
        at open, from scratch_file or with mkfs (existing snapshots keep their images).
      - V(erofs) takes C(async_remove) (bool, default V(false)). Remove only drops the
        metadata; the data is deleted by the next Cleanup.
      - V(erofs) takes C(mount_options) (list of strings, default V([])). Options appended to
        every overlay mount (userxattr, index=on...).
      - V(erofs) takes C(upperdir_label) (bool, default V(false)). Stat and Walk report each
        snapshot's upper directory in the label containerd.io/snapshot/overlay.upperdir.
      - V(native), V(btrfs), V(zfs) and V(aufs) take no options.
      - An option the backend does not know, or a value of the wrong type, fails with
        RV(error_class=InvalidArgument).
    type: dict
    default: {}
requirements:
  - Python 3.9 or later on the managed node; nothing else (the snaplab core travels with the module).
notes:
  - Creating snapshots with content, and mounting, needs root (or C(CAP_SYS_ADMIN)) on the managed node.
"""
