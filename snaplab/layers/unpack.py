"""Unpacking layers into snapshots (containerd's unpacker and the glue of
core/diff/apply around the applier).

A chain of layers is named by ChainIDs (OCI image-spec identity): that is
how containerd names the committed snapshot of each layer, so unpacking
the same chain twice finds every layer already there. Each layer is
prepared on an `extract-<unique> <chainID>` key under a lease of this
process (a killed unpack leaves nothing Cleanup does not remove), applied,
and committed under its chainID with containerd's labels.

Where one layer is written, from the active snapshot's mounts:

- one overlay mount with an upperdir: straight into that upper directory,
  without mounting (not on a userxattr mount or in a user namespace,
  where overlayfs' whiteouts cannot be made, and not when a hardlink names
  a file of a lower layer: the kernel must copy it up);
- one read-write bind mount: straight into its source;
- anything else: mounted on a temporary directory under the root first,
  and the kernel does the copy-up and the whiteouts.

The crash points "apply.mounted" (here) and "apply.entry" (apply.py) let
the torture tests kill an apply half-way.
"""

import base64
import collections
import hashlib
import os
import time

from .. import errors
from .. import faults
from .. import labels as labelrules
from .. import leases
from ..kernel import in_user_namespace
from ..types import Kind
from .apply import NeedsMount, write_in_one_pass, write_scanned
from .archive import inspect_layer

# Labels containerd's unpacker puts on each layer's snapshot.
SNAPSHOT_REF_LABEL = labelrules.SNAPSHOT_REF
DIFF_ID_LABEL = "containerd.io/snapshot/diff-id"
PARENT_CHAIN_ID_LABEL = "containerd.io/snapshot/parent-chain-id"

_PREPARE_TRIES = 3  # containerd's unpacker tries three extract keys


def _sha256_text(text):
    return "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()


def chain_ids(diff_ids):
    """ChainIDs of a list of DiffIDs, bottom layer first (OCI identity).

    ChainID(L0) = DiffID(L0); ChainID(Ln) = sha256(ChainID(Ln-1) + " " + DiffID(Ln)),
    all as "sha256:<hex>" strings.
    """
    chain = []
    for diff_id in diff_ids:
        chain.append(diff_id if not chain else _sha256_text(chain[-1] + " " + diff_id))
    return chain


def _overlay_upper(mounts):
    """(upperdir, lowerdirs) if `mounts` can be written without mounting as
    an overlay upper directory, else None (containerd's fast path)."""
    if len(mounts) != 1 or mounts[0].type != "overlay" or mounts[0].target:
        return None
    options = mounts[0].options
    upper = [o[len("upperdir="):] for o in options if o.startswith("upperdir=")]
    if not upper or "userxattr" in options or in_user_namespace():
        return None  # rootless overlay: whiteouts need mknod 0/0 and trusted.* xattrs
    lowers = []
    for option in options:
        if option.startswith("lowerdir="):
            lowers = option[len("lowerdir="):].split(":")
    return upper[0], lowers


def _bind_source(mounts):
    """The directory of a single read-write bind mount, else None."""
    if len(mounts) != 1 or mounts[0].type != "bind" or mounts[0].target:
        return None
    return None if mounts[0].read_only else mounts[0].source


def _apply_scanned(snapshotter, key, scan, direct=True, staged=False):
    """Write the scanned layer into the active snapshot `key`. `staged`:
    the snapshot was prepared for this layer alone and is removed if this
    fails, so the layer is written in one pass with no dry run before it
    (a refusal then comes half-way, and the snapshot goes)."""
    info = snapshotter.stat(key)
    if info.kind != Kind.ACTIVE:
        raise errors.FailedPrecondition("a layer can only be applied to an active snapshot; "
                                        "%r is %s" % (key, info.kind))
    mounts = snapshotter.mounts(key)
    overlay = _overlay_upper(mounts) if direct else None
    if overlay is not None and not scan.links_outside_layer:
        upper, lowers = overlay
        return write_scanned(scan, upper, lowers, staged)
    source = _bind_source(mounts) if direct else None
    if source is not None:
        return write_scanned(scan, source, staged=staged)
    # Mounted: a hardlink to a file of a lower layer, or mounts we cannot
    # write directly. The kernel then does the copy-up and the whiteouts.
    # Under the root and a lease: if this process is killed meanwhile, the
    # next Cleanup takes the mount down (a mount in /tmp stayed for good).
    with snapshotter.temporary_mount(mounts) as target:
        faults.point("apply.mounted")
        return write_scanned(scan, target, staged=staged)


def _apply_in_one_pass(snapshotter, key, layer, max_expanded_size):
    """Write the never-scanned `layer` (its DiffID given) into the staged
    snapshot `key` in one read (apply.write_in_one_pass), where
    _apply_scanned would write it."""
    mounts = snapshotter.mounts(key)
    overlay = _overlay_upper(mounts)
    if overlay is not None:
        upper, lowers = overlay
        return write_in_one_pass(layer.path, layer.diff_id, upper, lowers, max_expanded_size)
    source = _bind_source(mounts)
    if source is not None:
        return write_in_one_pass(layer.path, layer.diff_id, source, None, max_expanded_size)
    with snapshotter.temporary_mount(mounts) as target:
        faults.point("apply.mounted")
        return write_in_one_pass(layer.path, layer.diff_id, target, None, max_expanded_size)


def apply_layer(snapshotter, key, tar_path, direct=True, max_expanded_size=None):
    """Apply the layer at `tar_path` to the active snapshot `key`; return its
    DiffID. NotFound if `key` or the file is missing, FailedPrecondition if
    `key` is not active, InvalidArgument (nothing written) for a layer that is
    not a tar or would write outside the snapshot. `direct=False` always
    mounts the snapshot instead of writing its directory. FailedPrecondition
    (nothing written) if its files do not fit in the free space (or inodes)
    there;
    `max_expanded_size` as in inspect_layer."""
    # The DiffID is hashed once, by the write; the scan only checks (the
    # write checks the file is the one scanned).
    scan = inspect_layer(tar_path, max_expanded_size, hashing=False)
    return _apply_scanned(snapshotter, key, scan, direct)


PlannedLayer = collections.namedtuple("PlannedLayer", "path diff_id chain_id present scan")
AppliedLayer = collections.namedtuple("AppliedLayer", "diff_id chain_id applied")


def _committed(snapshotter, name):
    """True if `name` is a committed snapshot; FailedPrecondition if the name
    is taken by an active snapshot or a view."""
    if snapshotter is None:
        return False
    try:
        info = snapshotter.stat(name)
    except errors.NotFound:
        return False
    if info.kind != Kind.COMMITTED:
        raise errors.FailedPrecondition("chainID %s is the key of a %s snapshot, not of a "
                                        "committed layer" % (name, info.kind))
    return True


def plan_layers(snapshotter, tar_paths, max_expanded_size=None):
    """Scan each layer (bottom first) and say whether its chainID is already
    committed. `snapshotter` may be None (no root yet: nothing is present).
    Writes nothing; InvalidArgument/NotFound (and `max_expanded_size`, for
    each layer) as inspect_layer."""
    if not tar_paths:
        raise errors.InvalidArgument("no layers given")
    scans = [inspect_layer(path, max_expanded_size) for path in tar_paths]
    chain = chain_ids([scan.diff_id for scan in scans])
    return [PlannedLayer(scan.path, scan.diff_id, chain_id, _committed(snapshotter, chain_id),
                         scan)
            for scan, chain_id in zip(scans, chain)]


def _extract_key(chain_id):
    """containerd's UnpackKeyFormat "extract-<unique> <chainID>"."""
    unique = "%d-%s" % (time.time_ns() % 10**9,
                        base64.urlsafe_b64encode(os.urandom(3)).decode("ascii"))
    return "extract-%s %s" % (unique, chain_id)


def _unpack(snapshotter, layer, parent, labels, max_expanded_size=None):
    """Prepare, apply and commit one layer as containerd's unpacker does.
    Returns False if its chainID turned out to be there already.

    The extract snapshot lives under a lease of this process (containerd's
    unpack runs under a lease too): if the process is killed half-way,
    Cleanup removes the half-applied snapshot.
    """
    try:
        with snapshotter.lease("extract") as name:
            extract_labels = dict(labels)
            extract_labels[leases.LEASE_LABEL] = name
            return _unpack_in_lease(snapshotter, layer, parent, labels, extract_labels,
                                    max_expanded_size)
    except NeedsMount:
        # Its extract snapshot is gone; scanned, it is written through a mount.
        scan = inspect_layer(layer.path, max_expanded_size)
        if scan.diff_id != layer.diff_id:
            raise errors.InvalidArgument("layer %s has DiffID %s, not the %s given"
                                         % (layer.path, scan.diff_id, layer.diff_id)) from None
        return _unpack(snapshotter, layer._replace(scan=scan), parent, labels)


def _unpack_in_lease(snapshotter, layer, parent, labels, extract_labels, max_expanded_size):
    for _attempt in range(_PREPARE_TRIES):
        key = _extract_key(layer.chain_id)
        try:
            snapshotter.prepare(key, parent, labels=extract_labels)
            break
        except errors.AlreadyExists:
            if _committed(snapshotter, layer.chain_id):
                return False
    else:
        raise errors.AlreadyExists("no free extract key for %s after %d tries"
                                   % (layer.chain_id, _PREPARE_TRIES))
    try:
        if layer.scan is None:
            _apply_in_one_pass(snapshotter, key, layer, max_expanded_size)
        else:
            _apply_scanned(snapshotter, key, layer.scan, staged=True)
        # The committed layer takes `labels`, not the lease's label: it
        # lives on after the unpack.
        snapshotter.commit(layer.chain_id, key, labels=labels)
        return True
    except errors.AlreadyExists:
        # Committed meanwhile by someone else: the layer is there, as wanted.
        snapshotter.remove(key)
        if _committed(snapshotter, layer.chain_id):
            return False
        raise
    except BaseException:
        try:
            snapshotter.remove(key)
        except errors.SnapshotError:
            pass  # committed after all, or already gone
        raise


def _given_plan(snapshotter, tar_paths, diff_ids):
    """The plan of layers whose DiffIDs are given (as containerd has them
    from the image config): nothing is read; scan is None."""
    if not tar_paths:
        raise errors.InvalidArgument("no layers given")
    if len(diff_ids) != len(tar_paths):
        raise errors.InvalidArgument("%d DiffIDs for %d layers" % (len(diff_ids), len(tar_paths)))
    for diff_id in diff_ids:
        algorithm, _colon, digest = diff_id.partition(":")
        if algorithm != "sha256" or len(digest) != 64 or digest.strip("0123456789abcdef"):
            raise errors.InvalidArgument("%r is not a DiffID (sha256:<64 hex digits>)" % diff_id)
    return [PlannedLayer(path, diff_id, chain_id, _committed(snapshotter, chain_id), None)
            for path, diff_id, chain_id in zip(tar_paths, diff_ids, chain_ids(diff_ids))]


def apply_layers(snapshotter, tar_paths, labels=None, plan=None, max_expanded_size=None,
                 diff_ids=None):
    """Unpack a chain of layer tars (bottom first) into committed snapshots
    named by chainID, each on the previous one. A layer whose chainID is
    already committed is skipped, so running it again changes nothing.

    Each new snapshot gets `labels` plus containerd's
    containerd.io/snapshot.ref=<chainID>, containerd.io/snapshot/diff-id and
    (above the first) containerd.io/snapshot/parent-chain-id; labels of
    existing layers are left alone. `plan` is a plan_layers() result to reuse.
    Returns [AppliedLayer(diff_id, chain_id, applied)]. A failing layer
    leaves the layers below it committed and nothing of its own.
    `max_expanded_size` bounds each layer as in inspect_layer.

    `diff_ids` (the DiffID of each layer, as an image config lists them):
    no layer is read to plan; each missing one is written in one read into
    its extract snapshot, each entry checked just before it is written,
    the digest hashed on the way, and nothing is committed unless it is the
    DiffID given (containerd's unpack). A layer refused half-way leaves no
    snapshot, as always.
    """
    labels = labelrules.validate(labels)
    if plan is None and diff_ids is not None:
        plan = _given_plan(snapshotter, tar_paths, diff_ids)
    plan = plan if plan is not None else plan_layers(snapshotter, tar_paths, max_expanded_size)
    results = []
    parent = ""
    for layer in plan:
        applied = False
        if not _committed(snapshotter, layer.chain_id):
            layer_labels = dict(labels)
            layer_labels[SNAPSHOT_REF_LABEL] = layer.chain_id
            layer_labels[DIFF_ID_LABEL] = layer.diff_id
            if parent:
                layer_labels[PARENT_CHAIN_ID_LABEL] = parent
            applied = _unpack(snapshotter, layer, parent, layer_labels, max_expanded_size)
        results.append(AppliedLayer(layer.diff_id, layer.chain_id, applied))
        parent = layer.chain_id
    return results
