#!/usr/bin/python
# Copyright (c) snaplab maintainers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
module: layer
short_description: Unpack OCI image layer tars into committed snapshots named by chainID
version_added: "0.1.0"
description:
  - Unpacks a chain of OCI image layers as containerd's unpacker does. Each layer becomes a committed
    snapshot named by its chainID, on top of the snapshot of the layer below it.
  - A layer's DiffID is the sha256 of its uncompressed tar. The chainID of the bottom layer is its
    DiffID; every other chainID is the sha256 of the chainID below it, a space, and the layer's DiffID
    (OCI image-spec identity). The same layers in the same order always give the same chainIDs.
  - A layer whose chainID is already a committed snapshot is skipped. The task reports a change only
    when it commits at least one layer.
  - Whiteouts are honoured. C(.wh.NAME) deletes NAME, and C(.wh..wh..opq) hides what the layers below
    had in its directory.
  - A layer never writes outside its snapshot. Names are taken relative to the snapshot root, as
    containerd takes them (C(/etc/x) is C(etc/x) of the snapshot), and symlinks on the way to an entry
    resolve inside the snapshot.
  - A layer with a name or hardlink target whose C(..) climbs above the root is refused, and so is a
    malformed whiteout or an entry type a layer cannot hold. The task then fails with
    RV(error_class=InvalidArgument) and nothing is written, because every layer is checked before any
    is applied.
author:
  - snaplab maintainers (!UNKNOWN)
options:
  layers:
    description:
      - Paths of the layer tars on the managed node, B(bottom layer first).
      - Each may be a plain tar or gzip-compressed. zstd needs Python 3.14 or the C(zstd) program
        on the managed node. The compression is read from the file's first bytes, not its name.
    type: list
    elements: path
    required: true
  labels:
    description:
      - Labels (strings to strings) for the snapshots this task commits, next to the labels containerd
        puts on an unpacked layer. Those are C(containerd.io/snapshot.ref) (the chainID),
        C(containerd.io/snapshot/diff-id) and, above the bottom layer,
        C(containerd.io/snapshot/parent-chain-id).
      - Layers that already exist keep their labels. Use M(snaplab.snapshots.snapshot) to change them.
    type: dict
    default: {}
extends_documentation_fragment:
  - snaplab.snapshots._snapshotter
  - snaplab.snapshots._attributes
attributes:
  check_mode:
    support: full
    details:
      - Check mode reads every layer to compute its DiffID and chainID, refuses hostile layers as a
        real run would, and reports in RV(layers[].applied) which layers would be applied. It writes
        nothing, not even the root.
  diff_mode:
    support: full
    details:
      - The diff lists the chainIDs of the chain that are committed snapshots, before and after.
  idempotent:
    support: full
    details:
      - Layers are identified by chainID. A second run with the same layers commits nothing and
        reports no change. The content of an existing snapshot is not compared with its layer.
  platform:
    platforms: posix
    details:
      - Linux. Applying layers needs root on the managed node, for owners, device nodes and mounts.
        The overlay backend needs overlayfs.
notes:
  - With the overlay backend a layer is written straight into the upper directory of its snapshot,
    without mounting, and its whiteouts become overlayfs whiteouts. A layer with a hardlink to a
    file of a lower layer is applied through a mount instead.
  - Every run reads each layer in full to compute its DiffID, even when nothing is left to apply.
seealso:
  - module: snaplab.snapshots.snapshot
  - module: snaplab.snapshots.mount
  - name: OCI image layer specification
    description: Layer tars, whiteouts and opaque directories.
    link: https://github.com/opencontainers/image-spec/blob/main/layer.md
  - name: OCI image-spec identity (ChainID)
    description: How DiffIDs combine into chainIDs.
    link: https://github.com/opencontainers/image-spec/blob/main/config.md#layer-chainid
"""

EXAMPLES = r"""
- name: Unpack an image's layers (bottom first)
  snaplab.snapshots.layer:
    root: /var/lib/snaplab
    backend: overlay
    layers:
      - /srv/images/app/layer0.tar.gz
      - /srv/images/app/layer1.tar.gz
      - /srv/images/app/layer2.tar.zst
    labels:
      org.example/image: app:1.2
  register: unpacked

- name: A container's writable snapshot on the top layer
  snaplab.snapshots.snapshot:
    root: /var/lib/snaplab
    key: app-1
    parent: "{{ unpacked.chain_id }}"
    state: active

- name: What would be unpacked, without writing anything
  snaplab.snapshots.layer:
    root: /var/lib/snaplab
    layers: "{{ app_layers }}"
  check_mode: true
  register: planned
"""

RETURN = r"""
chain_id:
  description: The chainID of the top layer, the name of the snapshot that shows the whole chain.
  returned: success
  type: str
  sample: sha256:5a5448ca01fd7bc9b4f8f1b8cbc75b9edcf91097669f5680cc98debf446d3a12
layers:
  description: One entry per layer, in the order given.
  returned: success
  type: list
  elements: dict
  contains:
    path:
      description: The layer tar, as given.
      type: str
      sample: /srv/images/app/layer1.tar.gz
    diff_id:
      description: The sha256 of the uncompressed tar.
      type: str
      sample: sha256:0cb9ebdbc88d943f678d3aa1b8211ef7d41cedd40a4e7754774b711021656eef
    chain_id:
      description: The layer's chainID, the key of its committed snapshot.
      type: str
      sample: sha256:5a5448ca01fd7bc9b4f8f1b8cbc75b9edcf91097669f5680cc98debf446d3a12
    applied:
      description:
        - V(true) if this task committed the layer (in check mode, if it would). V(false) if its
          chainID was already there.
      type: bool
      sample: true
  sample:
    - path: /srv/images/app/layer0.tar.gz
      diff_id: sha256:4408b6521d5b12dfbc5cf6b9826a4c3f715445aceade8fe97bb4035df7916842
      chain_id: sha256:4408b6521d5b12dfbc5cf6b9826a4c3f715445aceade8fe97bb4035df7916842
      applied: false
    - path: /srv/images/app/layer1.tar.gz
      diff_id: sha256:0cb9ebdbc88d943f678d3aa1b8211ef7d41cedd40a4e7754774b711021656eef
      chain_id: sha256:5a5448ca01fd7bc9b4f8f1b8cbc75b9edcf91097669f5680cc98debf446d3a12
      applied: true
diff:
  description: The chainIDs of the chain that are committed, before and after.
  returned: when diff mode is on
  type: dict
  sample:
    before: {"committed": ["sha256:4408b6521d5b12dfbc5cf6b9826a4c3f715445aceade8fe97bb4035df7916842"]}
    after: {"committed": ["sha256:4408b6521d5b12dfbc5cf6b9826a4c3f715445aceade8fe97bb4035df7916842",
                          "sha256:5a5448ca01fd7bc9b4f8f1b8cbc75b9edcf91097669f5680cc98debf446d3a12"]}
error_class:
  description:
    - On failure, the class of the error, as containerd's errdefs name it.
    - V(InvalidArgument) for a layer that is not a readable tar or would write outside its snapshot,
      V(NotFound) for a missing layer file, V(NotImplemented) for zstd without support,
      V(FailedPrecondition) for a chainID taken by an active snapshot or a root of another backend.
      V(OSError) or V(MountError) for a system call that failed.
  returned: failure
  type: str
  sample: InvalidArgument
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.snaplab.snapshots.plugins.module_utils._common import (
    EXPECTED_ERRORS, SNAPSHOTTER_ARGUMENT_SPEC, fail, open_root, open_root_if_any, run_module)
from ansible_collections.snaplab.snapshots.plugins.module_utils._snaplab import layers

ARGUMENT_SPEC = dict(
    SNAPSHOTTER_ARGUMENT_SPEC,
    layers=dict(type="list", elements="path", required=True),
    labels=dict(type="dict", default={}),
)


def layer_dicts(plan, applied):
    return [dict(path=layer.path, diff_id=layer.diff_id, chain_id=layer.chain_id, applied=done)
            for layer, done in zip(plan, applied)]


def run(module):
    """Plan (scan every layer), apply unless in check mode, report."""
    params = module.params
    snapshotter = open_root_if_any(module, read_only=module.check_mode)
    try:
        plan = layers.plan_layers(snapshotter, params["layers"])
        before = [layer.chain_id for layer in plan if layer.present]
        would_apply = [not layer.present for layer in plan]
        result = dict(changed=any(would_apply), chain_id=plan[-1].chain_id,
                      layers=layer_dicts(plan, would_apply))
        if result["changed"] and not module.check_mode:
            if snapshotter is None:  # the first layer makes the root
                snapshotter = open_root(module, create=True)
            try:
                done = layers.apply_layers(snapshotter, params["layers"],
                                           labels=params["labels"], plan=plan)
            except EXPECTED_ERRORS as err:
                fail(module, err, **result)
            result["layers"] = layer_dicts(plan, [layer.applied for layer in done])
            result["changed"] = any(layer.applied for layer in done)
        if module._diff:
            after = [layer.chain_id for layer in plan]
            result["diff"] = dict(before=dict(committed=before), after=dict(committed=after))
        return result
    finally:
        if snapshotter is not None:
            snapshotter.close()


def main():
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    run_module(module, run)


if __name__ == "__main__":
    main()
