#!/usr/bin/python
# Copyright (c) snaplab maintainers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
module: snapshot
short_description: Declare containerd-style snapshots on a snaplab snapshotter root
version_added: "0.1.0"
description:
  - Makes the snapshots on a snapshotter root be as declared (active, view or committed snapshots
    on a committed parent, with labels, or absent). One snapshot per task (O(key) and its options),
    or many (O(snapshots)).
  - The module compares the declaration with what exists, plans the actions that make them match
    (returned as RV(actions)), and carries them out unless in check mode. Re-running the same
    declaration plans nothing and reports no change.
  - A committed snapshot is made as containerd's clients make layers, from its O(source)
    (a directory copied in, or an OCI layer tar applied); a snapshot that exists is never compared
    by content.
  - A declaration that conflicts with what exists (another kind, another parent) fails with a
    message saying what differs, unless O(replace=true). Removing a snapshot that has children
    (O(state=absent), or a replacement) fails unless O(recursive=true).
  - Parents must be committed, and exist or be declared in the same task, in any order; the module
    makes parents before children and removes children before parents.
author:
  - snaplab maintainers (!UNKNOWN)
options:
  snapshots:
    description:
      - Several snapshots in one task, each declared with the same fields as a single one.
      - Mutually exclusive with O(key), O(parent), O(labels) and O(source). O(state), O(purge_labels),
        O(replace) and O(recursive) given at the top are the defaults of every item.
    type: list
    elements: dict
    suboptions:
      key:
        description: The key of the snapshot.
        type: str
        required: true
      parent:
        description: The key of its committed parent; empty for none.
        type: str
      state:
        description: Like the top-level O(state), which is the default.
        type: str
        choices: [committed, active, view, absent]
      labels:
        description: Like the top-level O(labels).
        type: dict
      purge_labels:
        description: Like the top-level O(purge_labels), which is the default.
        type: bool
      source:
        description: Like the top-level O(source).
        type: dict
        suboptions:
          directory:
            description: A directory on the managed node whose entries are copied in.
            type: path
          layer:
            description: An OCI layer tar on the managed node, applied with its whiteouts.
            type: path
      replace:
        description: Like the top-level O(replace), which is the default.
        type: bool
      recursive:
        description: Like the top-level O(recursive), which is the default.
        type: bool
  key:
    description:
      - The key of the one snapshot to declare. Keys are opaque strings.
      - One of O(key) and O(snapshots) is required.
    type: str
  parent:
    description:
      - The key of the committed snapshot this one is based on. Empty (the default) for a snapshot
        without parent.
      - The parent of an existing snapshot never changes; declaring another is a conflict.
    type: str
  state:
    description:
      - V(committed) a committed (read-only) snapshot, the kind that can be a parent.
      - V(active) a writable snapshot; RV(snapshots[].mounts) says how to mount it.
      - V(view) a read-only view of its parent; RV(snapshots[].mounts) says how to mount it.
      - V(absent) no snapshot with this key.
    type: str
    choices: [committed, active, view, absent]
    default: committed
  labels:
    description:
      - The labels of the snapshot (strings to strings).
      - When omitted, the labels of an existing snapshot are left alone and a new one gets none.
      - See O(purge_labels) for how given labels combine with existing ones.
    type: dict
  purge_labels:
    description:
      - If V(true), O(labels) is the complete set of labels; others are removed.
      - If V(false), only the given labels are set, a label given with an empty value is removed,
        and the others stay.
    type: bool
    default: true
  source:
    description:
      - Where the content of a new committed snapshot comes from; only for O(state=committed).
        Without it, the snapshot is empty (over its parent's content).
      - The content is used only when the snapshot is made. A snapshot that exists is not compared
        with its source; use O(state=absent) first, or a new key, to change it.
    type: dict
    suboptions:
      directory:
        description:
          - A directory on the managed node. Its entries are copied on top of the parent's content
            as C(cp -a DIRECTORY/. MOUNT/) would; directories are merged, anything else replaces
            what is at its path. Owners, modes, times, xattrs, hard links, devices and sparse
            files are kept.
          - Mutually exclusive with O(source.layer).
        type: path
      layer:
        description:
          - An OCI layer tar (plain, gzip, or zstd where available) on the managed node, applied on
            top of the parent's content with its whiteouts.
          - Mutually exclusive with O(source.directory).
        type: path
  replace:
    description:
      - If V(false), a snapshot that exists with another kind or parent than declared makes the
        task fail, saying what differs.
      - If V(true), it is removed and made again as declared (with its subtree if
        O(recursive=true)).
    type: bool
    default: false
  recursive:
    description:
      - If V(false), removing a snapshot that has children (O(state=absent), or O(replace=true))
        fails and names them.
      - If V(true), its whole subtree is removed first, children before parents.
    type: bool
    default: false
extends_documentation_fragment:
  - snaplab.snapshots._snapshotter
  - snaplab.snapshots._attributes
attributes:
  check_mode:
    support: full
    details:
      - In check mode nothing is created on the managed node, not even the root.
      - RV(snapshots[].mounts) is V(null) for snapshots that are not made yet.
      - With O(backend=erofs), reporting the mounts of a snapshot that exists mounts its parents'
        images read-only on their C(fs/) directories, as containerd 2.1 does for any Mounts call
        (also in check mode), so that the reported mounts are usable as they are. Nothing in the
        root changes.
  diff_mode:
    support: full
    details:
      - The diff shows kind, parent and labels of every snapshot declared or removed, before and after.
  idempotent:
    support: partial
    details:
      - Re-running a declaration reports no change, also with O(replace=true) (a snapshot that
        matches its declaration is never replaced).
      - The content of an existing committed snapshot is not compared with its O(source).
  platform:
    platforms: posix
    details:
      - Linux. The overlay backend needs overlayfs in the kernel and a filesystem with d_type.
seealso:
  - module: snaplab.snapshots.snapshot_info
  - module: snaplab.snapshots.layer
  - module: snaplab.snapshots.mount
"""

EXAMPLES = r"""
- name: A two-layer chain, a container's active snapshot and a read-only view
  snaplab.snapshots.snapshot:
    root: /var/lib/snaplab
    backend: overlay
    snapshots:
      - key: base
        source:
          directory: /srv/images/base
      - key: app
        parent: base
        labels:
          org.example/version: "1.2"
        source:
          directory: /srv/images/app
      - key: web-1
        parent: app
        state: active
      - key: web-1-inspect
        parent: app
        state: view
  register: declared

- name: Show how to mount the active snapshot
  ansible.builtin.debug:
    msg: "{{ (declared.snapshots | selectattr('key', 'equalto', 'web-1') | first).mounts }}"

- name: A committed snapshot from an OCI layer tar
  snaplab.snapshots.snapshot:
    root: /var/lib/snaplab
    key: tools
    parent: base
    source:
      layer: /srv/layers/tools.tar.gz

- name: Add one label and leave the others alone
  snaplab.snapshots.snapshot:
    root: /var/lib/snaplab
    key: app
    parent: base
    labels:
      org.example/reviewed: "yes"
    purge_labels: false

- name: Move web-1 onto another parent (it is removed and made again)
  snaplab.snapshots.snapshot:
    root: /var/lib/snaplab
    key: web-1
    parent: base
    state: active
    replace: true

- name: Remove the base layer and everything on it
  snaplab.snapshots.snapshot:
    root: /var/lib/snaplab
    key: base
    state: absent
    recursive: true
"""

RETURN = r"""
actions:
  description:
    - The actions taken (or, in check mode, that would be taken), in order. Empty when nothing
      changes.
    - When an action fails, only the actions carried out before it (RV(failed_action) is the
      one that failed); running the task again plans the rest.
  returned: always
  type: list
  elements: dict
  contains:
    action:
      description:
        - The snapshotter operation. V(prepare) makes an active snapshot, V(view) a view,
          V(commit) a committed snapshot from its source, V(update) sets labels, V(remove) removes.
      type: str
      sample: commit
    key:
      description: The key of the snapshot acted on.
      type: str
      sample: app
    kind:
      description: The kind of that snapshot (V(committed), V(active) or V(view)).
      type: str
      sample: committed
    parent:
      description: Its parent; empty for none.
      type: str
      sample: base
    labels:
      description: The labels it gets (V(null) for V(remove)).
      type: dict
      sample: {"org.example/version": "1.2"}
    source:
      description: For V(commit), where the content comes from.
      type: dict
      sample: {"directory": "/srv/images/app"}
    reason:
      description: Why the action is needed.
      type: str
      sample: does not exist
  sample:
    - action: commit
      key: app
      kind: committed
      parent: base
      labels: {}
      source: {"directory": "/srv/images/app"}
      reason: does not exist
snapshots:
  description: One entry per declared snapshot, in the order declared, as it is after the task.
  returned: success
  type: list
  elements: dict
  contains:
    key:
      description: The key.
      type: str
      sample: web-1
    state:
      description: The declared state.
      type: str
      sample: active
    exists:
      description: Whether the snapshot exists after the task (V(false) for O(state=absent)).
      type: bool
      sample: true
    kind:
      description: Its kind, when it exists.
      type: str
      sample: active
    parent:
      description: Its parent, when it exists; empty for none.
      type: str
      sample: app
    labels:
      description: Its labels, when it exists.
      type: dict
      sample: {}
    mounts:
      description:
        - For an active or view snapshot, the mounts that show its content when mounted in order
          at a target directory (containerd's Mount). V(null) for a committed snapshot, and in
          check mode for a snapshot not made yet.
      type: list
      elements: dict
      sample:
        - type: overlay
          source: overlay
          target: ""
          options: ["workdir=/var/lib/snaplab/snapshots/3/work", "upperdir=/var/lib/snaplab/snapshots/3/fs",
                    "lowerdir=/var/lib/snaplab/snapshots/2/fs:/var/lib/snaplab/snapshots/1/fs", "index=off"]
diff:
  description: Before and after of every snapshot declared or removed, keyed by snapshot key.
  returned: when diff mode is on
  type: dict
  sample:
    before: {}
    after: {"base": {"kind": "committed", "parent": "", "labels": {}}}
failed_action:
  description:
    - The action that failed, in the shape of an entry of RV(actions). The failure message names
      its snapshot and the cause (for example V(No space left on device)).
  returned: when an action failed
  type: dict
  sample: {"action": "commit", "key": "app", "kind": "committed", "parent": "base", "labels": {},
           "source": {"directory": "/srv/images/app"}, "reason": "does not exist"}
error_class:
  description:
    - On failure, the class of the error, as containerd's errdefs name it.
    - V(InvalidArgument) for a malformed or self-contradicting declaration, V(AlreadyExists) for
      a conflict with what exists, V(FailedPrecondition) for removing a snapshot with children or
      a root of another backend, V(NotFound) for a missing parent or source, V(NotImplemented)
      for what the backend or system cannot do; V(OSError) or V(MountError) for a system call
      that failed.
  returned: failure
  type: str
  sample: AlreadyExists
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.snaplab.snapshots.plugins.module_utils._common import (
    SNAPSHOTTER_ARGUMENT_SPEC, fail, open_root, open_root_if_any, run_module)
from ansible_collections.snaplab.snapshots.plugins.module_utils._snaplab import declare

STATES = ["committed", "active", "view", "absent"]


def source_spec():
    return dict(
        type="dict",
        options=dict(directory=dict(type="path"), layer=dict(type="path")),
        mutually_exclusive=[("directory", "layer")],
        required_one_of=[("directory", "layer")],
    )


# Fields of one declaration; in `snapshots` items the flags have no default,
# so that an item without one takes the top-level value.
ITEM_SPEC = dict(
    key=dict(type="str", required=True, no_log=False),
    parent=dict(type="str"),
    state=dict(type="str", choices=STATES),
    labels=dict(type="dict"),
    purge_labels=dict(type="bool"),
    source=source_spec(),
    replace=dict(type="bool"),
    recursive=dict(type="bool"),
)

# Top-level values that are also the defaults of every item.
ITEM_DEFAULTS = ("state", "purge_labels", "replace", "recursive")

ARGUMENT_SPEC = dict(
    SNAPSHOTTER_ARGUMENT_SPEC,
    snapshots=dict(type="list", elements="dict", options=ITEM_SPEC),
    key=dict(type="str", no_log=False),
    parent=dict(type="str"),
    state=dict(type="str", choices=STATES, default="committed"),
    labels=dict(type="dict"),
    purge_labels=dict(type="bool", default=True),
    source=source_spec(),
    replace=dict(type="bool", default=False),
    recursive=dict(type="bool", default=False),
)


def declarations(params):
    """The declarations the parameters make, as dicts for the core."""
    if params["snapshots"] is None:
        return [{field: params[field] for field in ITEM_SPEC}]
    items = []
    for item in params["snapshots"]:
        declared = dict(item)
        for field in ITEM_DEFAULTS:
            if declared.get(field) is None:
                declared[field] = params[field]
        items.append(declared)
    return items


def run(module):
    """Plan, apply unless in check mode, and return the result."""
    snapshotter = open_root_if_any(module, read_only=module.check_mode)
    try:
        existing = declare.read_state(snapshotter) if snapshotter else []
        planned = declare.plan(existing, declarations(module.params))
        result = dict(changed=planned.changed, actions=[a.to_dict() for a in planned.actions])
        if module._diff:
            result["diff"] = dict(before=planned.before, after=planned.after,
                                  before_header=module.params["root"],
                                  after_header=module.params["root"])
        if planned.changed and not module.check_mode:
            if snapshotter is None:  # the first snapshot makes the root
                snapshotter = open_root(module, create=True)
            try:
                declare.apply(snapshotter, planned)
            except declare.ActionFailed as failure:
                # Only what was done: a re-run plans the rest.
                result["actions"] = [a.to_dict() for a in failure.done]
                result["failed_action"] = failure.action.to_dict()
                fail(module, failure.error, msg=str(failure), **result)
        result["snapshots"] = declare.outcome(snapshotter, planned,
                                              applied=not module.check_mode)
        return result
    finally:
        if snapshotter is not None:
            snapshotter.close()


def main():
    module = AnsibleModule(
        argument_spec=ARGUMENT_SPEC,
        mutually_exclusive=[("snapshots", "key"), ("snapshots", "parent"),
                            ("snapshots", "labels"), ("snapshots", "source")],
        required_one_of=[("snapshots", "key")],
        supports_check_mode=True,
    )
    run_module(module, run)


if __name__ == "__main__":
    main()
