#!/usr/bin/python
# Copyright (c) snaplab maintainers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
module: snapshot_info
short_description: Read the snapshots of a snaplab snapshotter root
version_added: "0.1.0"
description:
  - Returns snapshots of a snapshotter root as containerd's Stat (O(keys)) or Walk (O(filters), or
    everything) returns them, optionally with their usage and mounts.
  - Never changes anything, not even by creating the root; a root that does not exist fails with
    RV(error_class=NotFound).
author:
  - snaplab maintainers (!UNKNOWN)
options:
  keys:
    description:
      - Stat these snapshots. Keys that do not exist are listed in RV(missing); they are not an
        error.
      - Mutually exclusive with O(filters).
    type: list
    elements: str
  filters:
    description:
      - Walk the snapshots matching these filters, in containerd's filter syntax (for example
        C(kind==committed), C(parent==base), C(labels."containerd.io/gc.root")).
      - Commas AND selectors within one filter; several filters OR. Without O(keys) and
        O(filters), every snapshot is returned.
      - A malformed filter fails with RV(error_class=InvalidArgument) and says where.
      - Mutually exclusive with O(keys).
    type: list
    elements: str
  usage:
    description:
      - Add RV(snapshots[].usage) to each snapshot. An active snapshot's usage is measured now,
        which may take time proportional to its size.
    type: bool
    default: false
  mounts:
    description:
      - Add RV(snapshots[].mounts) to each active and view snapshot.
    type: bool
    default: false
  doctor:
    description:
      - Also check the root for inconsistencies between its metadata, its storage (directories,
        subvolumes, datasets), its mounts and its temporary names, as C(snaplab doctor) does,
        and return them in RV(doctor). What a killed operation leaves shows up here; the
        M(snaplab.snapshots.doctor) module with O(snaplab.snapshots.doctor#module:fix=true), or
        C(snaplab doctor --fix), repairs what has a fix.
    type: bool
    default: false
extends_documentation_fragment:
  - snaplab.snapshots._snapshotter
  - snaplab.snapshots._attributes
  - snaplab.snapshots._attributes.INFO_MODULE
attributes:
  platform:
    platforms: posix
seealso:
  - module: snaplab.snapshots.snapshot
  - module: snaplab.snapshots.doctor
"""

EXAMPLES = r"""
- name: Every snapshot of the root
  snaplab.snapshots.snapshot_info:
    root: /var/lib/snaplab
  register: all_snapshots

- name: Two snapshots by key, with their mounts
  snaplab.snapshots.snapshot_info:
    root: /var/lib/snaplab
    keys: [web-1, web-1-inspect]
    mounts: true
  register: web

- name: The committed children of base, with their usage
  snaplab.snapshots.snapshot_info:
    root: /var/lib/snaplab
    filters:
      - kind==committed,parent==base
    usage: true
  register: layers

- name: Snapshots labelled as garbage collection roots
  snaplab.snapshots.snapshot_info:
    root: /var/lib/snaplab
    filters:
      - labels."containerd.io/gc.root"
"""

RETURN = r"""
doctor:
  description: With O(doctor=true), what the check found.
  returned: when O(doctor=true)
  type: dict
  contains:
    clean:
      description: Whether nothing was found.
      type: bool
      sample: false
    findings:
      description: One entry per inconsistency.
      type: list
      elements: dict
      sample:
        - kind: orphan
          subject: /var/lib/snaplab/snapshots/new-k2j4x9
          detail: storage of no snapshot (a snapshot being made when its process was killed)
          fix: delete it
snapshots:
  description: The snapshots found, in key order for a walk, in the order of O(keys) for a Stat.
  returned: success
  type: list
  elements: dict
  contains:
    key:
      description: The key (containerd's name).
      type: str
      sample: app
    kind:
      description: V(committed), V(active) or V(view).
      type: str
      sample: committed
    parent:
      description: The key of its parent; empty for none.
      type: str
      sample: base
    labels:
      description: Its labels.
      type: dict
      sample: {"org.example/version": "1.2"}
    created:
      description: When it was created (RFC 3339, UTC, nanoseconds).
      type: str
      sample: "2025-11-29T05:41:07.123456789Z"
    updated:
      description: When it was last changed (RFC 3339, UTC, nanoseconds).
      type: str
      sample: "2025-11-29T05:41:07.123456789Z"
    usage:
      description:
        - With O(usage=true), what the snapshot itself uses, its parents excluded.
        - Measured now for an active snapshot, at commit time for a committed one; zero for a view.
      type: dict
      returned: when O(usage=true)
      contains:
        size:
          description: Bytes.
          type: int
          sample: 8192
        inodes:
          description: Inodes.
          type: int
          sample: 2
    mounts:
      description:
        - With O(mounts=true), the mounts of an active or view snapshot (V(null) for a committed one).
      type: list
      elements: dict
      returned: when O(mounts=true)
      sample:
        - type: bind
          source: /var/lib/snaplab/snapshots/3
          target: ""
          options: [rbind, rw]
missing:
  description: The O(keys) that do not exist.
  returned: when O(keys) is given
  type: list
  elements: str
  sample: [web-2]
error_class:
  description:
    - On failure, the class of the error, as containerd's errdefs name it (V(NotFound) when there
      is no root, V(InvalidArgument) for a malformed filter, V(FailedPrecondition) for a root of
      another backend).
  returned: failure
  type: str
  sample: NotFound
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.snaplab.snapshots.plugins.module_utils._common import (
    SNAPSHOTTER_ARGUMENT_SPEC, info_dict, mount_dicts, open_root, run_module)
from ansible_collections.snaplab.snapshots.plugins.module_utils._snaplab import errors
from ansible_collections.snaplab.snapshots.plugins.module_utils._snaplab.types import Kind

ARGUMENT_SPEC = dict(
    SNAPSHOTTER_ARGUMENT_SPEC,
    keys=dict(type="list", elements="str", no_log=False),
    filters=dict(type="list", elements="str"),
    usage=dict(type="bool", default=False),
    mounts=dict(type="bool", default=False),
    doctor=dict(type="bool", default=False),
)


def describe(snapshotter, info, params):
    entry = info_dict(info)
    if params["usage"]:
        usage = snapshotter.usage(info.name)
        entry["usage"] = dict(size=usage.size, inodes=usage.inodes)
    if params["mounts"]:
        entry["mounts"] = (None if info.kind == Kind.COMMITTED
                           else mount_dicts(snapshotter.mounts(info.name)))
    return entry


def run(module):
    params = module.params
    with open_root(module, create=False, read_only=True) as snapshotter:
        result = dict(changed=False)
        if params["doctor"]:
            findings = [finding.to_dict() for finding in snapshotter.doctor()]
            result["doctor"] = dict(clean=not findings, findings=findings)
        if params["keys"] is not None:
            infos, missing = [], []
            for key in params["keys"]:
                try:
                    infos.append(snapshotter.stat(key))
                except errors.NotFound:
                    missing.append(key)
            result["missing"] = missing
        else:
            infos = snapshotter.list(*(params["filters"] or []))
        result["snapshots"] = [describe(snapshotter, info, params) for info in infos]
    return result


def main():
    module = AnsibleModule(
        argument_spec=ARGUMENT_SPEC,
        mutually_exclusive=[("keys", "filters")],
        supports_check_mode=True,
    )
    run_module(module, run)


if __name__ == "__main__":
    main()
