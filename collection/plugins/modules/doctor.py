#!/usr/bin/python
# Copyright (c) snaplab maintainers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
module: doctor
short_description: Check a snaplab snapshotter root for what crashes leave, and repair it
version_added: "0.1.0"
description:
  - Finds every inconsistency between a snapshotter root's metadata, its storage (directories,
    btrfs subvolumes, ZFS datasets), its mounts and its temporary names, as C(snaplab doctor)
    does. This is what an operation killed half-way leaves, for example data of no snapshot, a
    temporary mount whose process is gone, the extract snapshot of a killed layer unpack, or a
    subvolume left read-only by a killed Commit.
  - With O(fix=true), makes every repair that has one (the snapshotter's Cleanup) and reports
    what is left. Nothing that a snapshot still uses is ever removed; missing data is only
    reported.
  - Without O(fix), or in check mode, writes nothing to the root (works on a read-only one).
author:
  - snaplab maintainers (!UNKNOWN)
options:
  fix:
    description:
      - Repair what can be repaired. The task reports a change when there was something to
        repair.
    type: bool
    default: false
  fail_on_findings:
    description:
      - Fail when findings remain (after the repairs, with O(fix=true)).
    type: bool
    default: false
extends_documentation_fragment:
  - snaplab.snapshots._snapshotter
  - snaplab.snapshots._attributes
attributes:
  check_mode:
    support: full
  diff_mode:
    support: none
  idempotent:
    support: full
  platform:
    platforms: posix
seealso:
  - module: snaplab.snapshots.snapshot_info
"""

EXAMPLES = r"""
- name: Is anything left over on the node's snapshotter root?
  snaplab.snapshots.doctor:
    root: /var/lib/snaplab
    fail_on_findings: true

- name: Repair what a crash left
  snaplab.snapshots.doctor:
    root: /var/lib/snaplab
    fix: true
  register: repaired
"""

RETURN = r"""
clean:
  description: Whether nothing is left to report (after the repairs, with O(fix=true)).
  returned: success
  type: bool
  sample: true
findings:
  description:
    - What is wrong now (after the repairs, with O(fix=true); in check mode, before them).
  returned: success
  type: list
  elements: dict
  contains:
    kind:
      description: What sort of inconsistency (V(orphan), V(stale-mount), V(expired-lease),
        V(readonly-flag), V(missing-data)...).
      type: str
      sample: orphan
    subject:
      description: The path, dataset or snapshot key it is about.
      type: str
      sample: /var/lib/snaplab/snapshots/new-k2j4x9
    detail:
      description: What is wrong.
      type: str
      sample: storage of no snapshot (a snapshot being made when its process was killed)
    fix:
      description: What the repair does; empty when there is no automatic one.
      type: str
      sample: delete it
error_class:
  description: On failure, the class of the error, as containerd's errdefs name it.
  returned: failure
  type: str
  sample: NotFound
repaired:
  description:
    - With O(fix=true), the findings that had a repair (in check mode, that would be repaired).
  returned: success
  type: list
  elements: dict
  sample: []
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.snaplab.snapshots.plugins.module_utils._common import (
    SNAPSHOTTER_ARGUMENT_SPEC, open_root, run_module)

ARGUMENT_SPEC = dict(
    SNAPSHOTTER_ARGUMENT_SPEC,
    fix=dict(type="bool", default=False),
    fail_on_findings=dict(type="bool", default=False),
)


def run(module):
    params = module.params
    fixing = params["fix"] and not module.check_mode
    with open_root(module, create=False, read_only=not fixing) as snapshotter:
        found = snapshotter.doctor()
        repairable = [f.to_dict() for f in found if f.fix] if params["fix"] else []
        if fixing and repairable:
            snapshotter.cleanup()
            found = snapshotter.doctor()
    findings = [f.to_dict() for f in found]
    result = dict(changed=bool(repairable), clean=not findings, findings=findings,
                  repaired=repairable)
    if params["fail_on_findings"] and findings:
        module.fail_json(msg="%d finding(s) on %s: %s" % (
            len(findings), params["root"], "; ".join(
                "%s %s" % (f["kind"], f["subject"]) for f in findings)), **result)
    return result


def main():
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    run_module(module, run)


if __name__ == "__main__":
    main()
