#!/usr/bin/python
# Copyright (c) snaplab maintainers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
module: mount
short_description: Mount or unmount an active or view snapshot at a path
version_added: "0.1.0"
description:
  - Mounts the mounts of an active or view snapshot (containerd's Mounts) at O(path), or unmounts
    them. A committed snapshot cannot be mounted. Make an active snapshot or a view on it first
    with M(snaplab.snapshots.snapshot).
  - Before it mounts or unmounts, the module reads the mount table (C(/proc/self/mountinfo)) of the
    managed node. The snapshot is mounted at O(path) when what is mounted there is the snapshot's own
    mount. For an overlay mount that means the same upper, work and lower directories. For a bind
    mount it means the same directory. Anything else mounted at O(path) is never unmounted or
    covered; the task fails and says what it found.
  - The mount lasts until it is unmounted or the node reboots. Nothing is written to C(/etc/fstab).
author:
  - snaplab maintainers (!UNKNOWN)
options:
  key:
    description: The key of the active or view snapshot.
    type: str
    required: true
  path:
    description:
      - The directory to mount the snapshot on.
      - With O(state=mounted), a missing directory is created with its missing parents, mode C(0755),
        as M(ansible.posix.mount) does. It is not removed on unmount.
    type: path
    required: true
  state:
    description:
      - V(mounted) makes the snapshot mounted at O(path). This does nothing when it already is, and fails
        when something else is mounted there.
      - V(unmounted) unmounts the snapshot from O(path). This does nothing when nothing is mounted there,
        and fails when what is mounted there is not the snapshot. When the snapshot no longer exists,
        the task only checks that nothing is mounted at O(path).
    type: str
    choices: [mounted, unmounted]
    default: mounted
extends_documentation_fragment:
  - snaplab.snapshots._snapshotter
  - snaplab.snapshots._attributes
attributes:
  check_mode:
    support: full
    details:
      - In check mode nothing is mounted, unmounted or created. RV(actions) says what would be done.
  diff_mode:
    support: full
    details:
      - The diff shows whether the snapshot is mounted at O(path), before and after.
  idempotent:
    support: full
  platform:
    platforms: posix
    details:
      - Linux, as root (mount(2) needs C(CAP_SYS_ADMIN)). The mount is made in the mount namespace the
        module runs in.
seealso:
  - module: snaplab.snapshots.snapshot
  - module: snaplab.snapshots.layer
  - module: ansible.posix.mount
"""

EXAMPLES = r"""
- name: A container's writable snapshot on an unpacked image
  snaplab.snapshots.snapshot:
    root: /var/lib/snaplab
    key: web-1
    parent: "{{ unpacked.chain_id }}"
    state: active

- name: Mount it as the container's root filesystem
  snaplab.snapshots.mount:
    root: /var/lib/snaplab
    key: web-1
    path: /run/containers/web-1/rootfs

- name: Unmount it again
  snaplab.snapshots.mount:
    root: /var/lib/snaplab
    key: web-1
    path: /run/containers/web-1/rootfs
    state: unmounted
"""

RETURN = r"""
mount_point:
  description: O(path) as an absolute path with symlinks resolved.
  returned: success
  type: str
  sample: /run/containers/web-1/rootfs
mounted:
  description: Whether the snapshot is mounted at RV(mount_point) after the task (in check mode, would be).
  returned: success
  type: bool
  sample: true
mounts:
  description:
    - The snapshot's mounts, in the order they are mounted (containerd's Mount).
    - V(null) when the snapshot does not exist (only possible with O(state=unmounted)).
  returned: success
  type: list
  elements: dict
  sample:
    - type: overlay
      source: overlay
      target: ""
      options: ["workdir=/var/lib/snaplab/snapshots/3/work", "upperdir=/var/lib/snaplab/snapshots/3/fs",
                "lowerdir=/var/lib/snaplab/snapshots/2/fs:/var/lib/snaplab/snapshots/1/fs", "index=off"]
actions:
  description: What was done (in check mode, what would be done), in order. Empty when nothing changes.
  returned: always
  type: list
  elements: dict
  contains:
    action:
      description: V(mkdir) creates the mount point, V(mount) mounts, V(unmount) unmounts.
      type: str
      sample: mount
    path:
      description: Where.
      type: str
      sample: /run/containers/web-1/rootfs
  sample:
    - action: mount
      path: /run/containers/web-1/rootfs
diff:
  description: Whether the snapshot is mounted at RV(mount_point), before and after.
  returned: when diff mode is on
  type: dict
  sample:
    before: {"mount_point": "/run/containers/web-1/rootfs", "key": "web-1", "mounted": false}
    after: {"mount_point": "/run/containers/web-1/rootfs", "key": "web-1", "mounted": true}
error_class:
  description:
    - On failure, the class of the error, as containerd's errdefs name it.
    - V(NotFound) for a missing root or snapshot, V(FailedPrecondition) for a committed snapshot or for
      something else mounted at O(path), V(InvalidArgument) for a O(path) that is not a directory,
      V(MountError) or V(OSError) for a system call that failed.
  returned: failure
  type: str
  sample: FailedPrecondition
"""

import os

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.snaplab.snapshots.plugins.module_utils._common import (
    SNAPSHOTTER_ARGUMENT_SPEC, mount_dicts, open_root, run_module)
from ansible_collections.snaplab.snapshots.plugins.module_utils._snaplab import errors
from ansible_collections.snaplab.snapshots.plugins.module_utils._snaplab import mount as mountlib

ARGUMENT_SPEC = dict(
    SNAPSHOTTER_ARGUMENT_SPEC,
    key=dict(type="str", required=True, no_log=False),
    path=dict(type="path", required=True),
    state=dict(type="str", choices=["mounted", "unmounted"], default="mounted"),
)


def snapshot_mounts(module):
    """The snapshot's mounts; None if it (or its root) does not exist and the
    task is to unmount, where that is not an error."""
    unmounting = module.params["state"] == "unmounted"
    try:
        snapshotter = open_root(module, create=False, read_only=module.check_mode)
    except errors.NotFound:
        if unmounting:
            return None
        raise
    with snapshotter:
        try:
            return snapshotter.mounts(module.params["key"])
        except errors.NotFound:
            if unmounting:
                return None
            raise


def plan(module, mounts, path):
    """(actions that make the state at `path` the declared one, whether the
    snapshot is mounted there now)."""
    state = module.params["state"]
    if os.path.lexists(path) and not os.path.isdir(path):
        raise errors.InvalidArgument("mount point %s exists and is not a directory" % path)
    table = mountlib.mount_table()
    on_top = mountlib.mount_on_top(path, table)
    mounted = mounts is not None and mountlib.mounted_at(path, mounts, table)
    if on_top is not None and not mounted:
        what = "%s (type %s) is mounted at %s" % (on_top.source, on_top.fstype, path)
        if mounts is None:
            raise errors.FailedPrecondition(
                "%s, and snapshot %r does not exist, so it cannot be its mount: not unmounting it"
                % (what, module.params["key"]))
        raise errors.FailedPrecondition("%s, not snapshot %r: unmount it first"
                                        % (what, module.params["key"]))
    actions = []
    if state == "mounted" and not mounted:
        if not os.path.isdir(path):
            actions.append(dict(action="mkdir", path=path))
        actions.append(dict(action="mount", path=path))
    if state == "unmounted" and mounted:
        actions.append(dict(action="unmount", path=path))
    return actions, mounted


def run(module):
    params = module.params
    path = os.path.realpath(params["path"])
    mounts = snapshot_mounts(module)
    actions, was_mounted = plan(module, mounts, path)
    now_mounted = params["state"] == "mounted"
    # Not returned as "path": AnsibleModule would add the directory's stat to the result.
    result = dict(changed=bool(actions), actions=actions, mount_point=path, mounted=now_mounted,
                  mounts=mount_dicts(mounts) if mounts is not None else None)
    if module._diff:
        result["diff"] = dict(
            before=dict(mount_point=path, key=params["key"], mounted=was_mounted),
            after=dict(mount_point=path, key=params["key"], mounted=now_mounted))
    if module.check_mode:
        return result
    for action in actions:
        if action["action"] == "mkdir":
            os.makedirs(path, mode=0o755)
        elif action["action"] == "mount":
            mountlib.mount_all(mounts, path)
        elif action["action"] == "unmount":
            # Later mounts sit inside earlier ones: unmount them first, each
            # once, so that whatever was mounted below ours stays.
            for point in reversed([m.point_under(path) for m in mounts]):
                mountlib.unmount(point)
    return result


def main():
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    run_module(module, run)


if __name__ == "__main__":
    main()
