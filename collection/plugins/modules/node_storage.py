#!/usr/bin/python
# Copyright (c) snaplab maintainers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
module: node_storage
short_description: The node_storage role's engine (role-private); plans and makes a node's snapshot filesystems
version_added: "0.3.0"
description:
  - Private to the role C(snaplab.snapshots.node_storage), whose engine it is. Use the role; this
    module's options follow the role's variables and can change with it.
  - Reads the node's whole storage state in one call (C(findmnt), C(losetup), C(blkid), the fstab,
    C(zpool)/C(zfs)), compares it with the declared filesystems and returns a plan, per filesystem,
    of actions and refusals; then, outside check mode and when nothing is refused, applies it.
  - Loads the overlay module (C(modprobe overlay)) while the kernel has no overlayfs and an overlay
    snapshotter root is declared present.
  - Never formats a device or loop file that holds something (another filesystem, a partition table,
    another pool) unless O(allow_format_existing=true); never mounts over another mount.
  - A loop file it made is grown when its declared size grows (C(truncate), C(losetup --set-capacity),
    C(resize2fs)/C(xfs_growfs)/C(btrfs filesystem resize), C(zpool online -e)); it is never shrunk.
    What it made for a loop file (its directories) is recorded beside it (C(<loop_file>.node_storage))
    and removed again by C(state=absent), and only that.
  - A failed step fails the task with one line naming the command and its stderr, after undoing what
    that filesystem's earlier steps made (a failed mkfs leaves no loop file it created).
author:
  - snaplab maintainers (!UNKNOWN)
options:
  filesystems:
    description:
      - The declarations, as the role's C(node_storage_filesystems) (see the role's argument spec for the keys).
    type: list
    elements: dict
    required: true
  defaults:
    description:
      - Values for keys a declaration leaves out, merged over the built-in defaults (a partial
        dictionary keeps the built-ins it does not name).
    type: dict
    default: {}
  allow_format_existing:
    description: Allow mkfs (or C(zpool create -f)) on a source that holds something else.
    type: bool
    default: false
  wipe_absent:
    description: With C(state=absent) in a declaration, erase a block device's signatures (C(wipefs --all)).
    type: bool
    default: false
  fstab:
    description: The fstab file persistent mounts go to.
    type: path
    default: /etc/fstab
  zfs_fuse_pidfile:
    description: The pidfile of a zfs-fuse daemon the module starts (where no systemd runs).
    type: path
    default: /run/zfs-fuse.pid
  zfs_fuse_options:
    description: Extra arguments of a zfs-fuse daemon the module starts.
    type: list
    elements: str
    default: [--fuse-attr-timeout, "0"]
extends_documentation_fragment:
  - snaplab.snapshots._attributes
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
  idempotent:
    support: full
  platform:
    platforms: posix
seealso:
  - module: snaplab.snapshots.snapshot
"""

EXAMPLES = r"""
# The role calls it so; use the role.
- name: Make and mount the declared filesystems
  snaplab.snapshots.node_storage:
    filesystems:
      - name: xfs-data
        fstype: xfs
        loop_file: /var/lib/snaplab/images/xfs.img
        size: 2G
        mount_point: /var/lib/snaplab/xfs
        snapshotter_root: {path: /var/lib/snaplab/xfs/overlay, backend: overlay}
    defaults: {persistent: false}
"""

RETURN = r"""
plan:
  description: Per filesystem, in the order handled (absent first), what was (or in check mode would be) done.
  returned: always
  type: list
  elements: dict
  contains:
    name:
      description: The declaration's name.
      type: str
    state:
      description: V(present) or V(absent).
      type: str
    actions:
      description: The steps, in words (C(make xfs on /dev/vdb), C(write the fstab line ...)).
      type: list
      elements: str
    refusals:
      description: Why nothing is done for this filesystem; any refusal fails the task.
      type: list
      elements: str
    notes:
      description: What is left as it is, and why (a loop file not made by node_storage is not grown).
      type: list
      elements: str
  sample: [{name: xfs-data, state: present, actions: [mount /img/xfs.img at /mnt/xfs], refusals: [], notes: []}]
snapshotter_roots:
  description: The snapshotter roots of the filesystems declared present, as C({path, backend}).
  returned: always
  type: list
  elements: dict
  sample: [{path: /var/lib/snaplab/xfs/overlay, backend: overlay}]
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.snaplab.snapshots.plugins.module_utils import node_storage_plan as engine

ARGUMENT_SPEC = dict(
    filesystems=dict(type="list", elements="dict", required=True),
    defaults=dict(type="dict", default={}),
    allow_format_existing=dict(type="bool", default=False),
    wipe_absent=dict(type="bool", default=False),
    fstab=dict(type="path", default="/etc/fstab"),
    zfs_fuse_pidfile=dict(type="path", default="/run/zfs-fuse.pid"),
    zfs_fuse_options=dict(type="list", elements="str", default=["--fuse-attr-timeout", "0"]),
)


def main():
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    params = module.params

    def run(argv):
        # A missing program (no modprobe, no zpool yet) is an answer, as a shell's 127.
        try:
            return module.run_command(argv, handle_exceptions=False)
        except OSError as err:
            return 127, "", "%s: %s" % (argv[0], err.strerror or err)

    declared, problems = engine.declarations(params["filesystems"], params["defaults"])
    if problems:
        module.fail_json(msg="node_storage_filesystems is not a consistent declaration: " + "; ".join(problems),
                         problems=problems)
    try:
        state = engine.read_state(run, declared, params["fstab"], params["zfs_fuse_pidfile"],
                                  params["zfs_fuse_options"])
        planned = engine.plan(declared, state, params["allow_format_existing"], params["wipe_absent"])
    except (engine.StepFailed, OSError, ValueError) as err:
        module.fail_json(msg="reading the node's storage: %s" % err)
    plan = [dict(name=entry["name"], state=entry["state"], refusals=entry["refusals"],
                 notes=entry.get("notes", []), actions=[action["say"] for action in entry["actions"]])
            for entry in planned["filesystems"]]
    roots = [decl["snapshotter_root"] for decl in declared
             if decl["state"] == "present" and decl.get("snapshotter_root")]
    changed = any(entry["actions"] for entry in planned["filesystems"])
    result = dict(changed=changed, plan=plan, snapshotter_roots=roots)
    if module._diff:
        result["diff"] = [dict(before_header=entry["name"], after_header=entry["name"],
                               before=entry["before"], after=entry.get("after", entry["before"]))
                          for entry in planned["filesystems"] if entry["actions"]]
        if planned["fstab"] is not None:
            result["diff"].append(dict(before_header=params["fstab"], after_header=params["fstab"],
                                       before=state["fstab_text"], after=planned["fstab"]))
    refusals = [refusal for entry in planned["filesystems"] for refusal in entry["refusals"]]
    if refusals:
        result["changed"] = False  # a refused plan is not applied
        module.fail_json(msg=" ".join(refusals), **result)
    if changed and not module.check_mode:
        try:
            engine.apply(planned, run, params["fstab"])
        except (engine.StepFailed, OSError) as err:
            module.fail_json(msg=str(err), **result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
