"""Declaring snapshots: from what should exist to a plan of actions, then to disk.

The snapshotter interface says how to *do* things (Prepare, Commit, Remove);
this module lets a caller say how things should *be* and works out the rest,
so that the Ansible `snapshot` module (and anything else) never writes that
logic twice. plan() compares declarations with what exists -- read with ONE
Walk -- and returns the ordered actions; apply() carries them out. Planning
changes nothing, so a check mode is plan() alone. Nothing here knows Ansible.

A declaration is a dict (or a Declaration):

    key           the snapshot's key (required)
    state         committed (default), active, view or absent
    parent        the committed parent's key; "" (default) for none
    labels        the snapshot's labels; None (default) leaves the labels of an
                  existing snapshot alone (a new one gets none)
    purge_labels  True (default): `labels` is the complete set, others go.
                  False: only the given labels are set, an empty value
                  deletes one, others stay
    source        committed only, where the content of a NEW snapshot comes
                  from: {"directory": PATH}, whose entries are copied on top
                  of the parent's content as `cp -a PATH/. MOUNT/` would, or
                  {"layer": TAR}, an OCI layer tar applied with its whiteouts.
                  The content of an existing snapshot is never compared.
    replace       False (default): a snapshot that exists with another kind
                  or parent is an error saying what differs. True: it is
                  removed and made again as declared.
    recursive     False (default): removing a snapshot that has children
                  (absent, or replace) is an error. True: its whole subtree
                  goes first, children before parents.

Rules:

- Re-declaring what exists plans no action.
- Parents must be committed and must exist, or be declared (committed) in
  the same list, in any order: creations are ordered parents first, and a
  cycle of parents is an error. Removals come before creations, children
  before parents.
- A key may be declared once per list.
- The source of a snapshot to be made is checked when planning; a layer
  tar is read once then, so a hostile one is refused before anything is done.
- Labels a backend computes on the fly (overlay's upperdir label) are
  neither compared nor set.
- Errors use the core's classes: InvalidArgument for a malformed or
  self-contradicting list, AlreadyExists for a conflict with what exists,
  FailedPrecondition for removing a snapshot with children, NotFound for a
  missing parent or source. Nothing is changed when plan() raises.

A committed declaration is made as containerd's clients make layers: Prepare
a temporary active snapshot on the parent, fill it (a directory is copied in
through a mount; a layer is applied by snaplab.layers, as containerd's
applier does), Commit it under its key. If that fails, the temporary
snapshot is removed again.
"""

import dataclasses
import os
import time
from typing import Dict, List, Optional

from . import errors
from . import fsutil
from . import labels as labelrules
from . import layers
from . import leases
from .types import Info, Kind

COMMITTED = "committed"
ACTIVE = "active"
VIEW = "view"
ABSENT = "absent"
STATES = (COMMITTED, ACTIVE, VIEW, ABSENT)

SOURCE_KINDS = ("directory", "layer")

# Labels a backend computes on every Stat/Walk (overlay's upperdir_label
# option): they are not stored, so declarations neither compare nor set them.
COMPUTED_LABELS = frozenset({labelrules.UPPERDIR_LABEL})

# Committed snapshots are built under a temporary active key like this one.
TEMP_KEY_PREFIX = "snaplab-declare-tmp-"


@dataclasses.dataclass
class Declaration:
    """One snapshot as it should be (see the module docstring)."""

    key: str
    state: str = COMMITTED
    parent: str = ""
    labels: Optional[Dict[str, str]] = None
    purge_labels: bool = True
    source: Optional[Dict[str, str]] = None
    replace: bool = False
    recursive: bool = False

    @classmethod
    def from_dict(cls, data):
        """A validated Declaration; InvalidArgument names the faulty field."""
        if isinstance(data, cls):
            return data
        if not isinstance(data, dict):
            raise errors.InvalidArgument("a snapshot declaration must be a mapping, not %s"
                                         % type(data).__name__)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise errors.InvalidArgument("snapshot declaration %r has unknown field(s) %s "
                                         "(known: %s)" % (data.get("key"), ", ".join(unknown),
                                                          ", ".join(sorted(known))))
        # None means "not given": the field keeps its default.
        decl = cls(**{k: v for k, v in data.items() if v is not None and k != "key"},
                   key=data.get("key"))
        decl.validate()
        return decl

    def validate(self):
        labelrules.validate_key(self.key if self.key is not None else "", "snapshot key")
        what = "snapshot %r" % self.key
        if self.state not in STATES:
            raise errors.InvalidArgument("%s: state must be one of %s, not %r"
                                         % (what, ", ".join(STATES), self.state))
        if not isinstance(self.parent, str):
            raise errors.InvalidArgument("%s: parent must be a string" % what)
        if self.parent:
            labelrules.validate_key(self.parent, "parent")
        if self.parent == self.key:
            raise errors.InvalidArgument("%s cannot be its own parent" % what)
        if self.labels is not None:
            self.labels = labelrules.validate(self.labels)
        for flag in ("purge_labels", "replace", "recursive"):
            if not isinstance(getattr(self, flag), bool):
                raise errors.InvalidArgument("%s: %s must be true or false" % (what, flag))
        if self.source is not None:
            self._validate_source(what)

    def _validate_source(self, what):
        if self.state != COMMITTED:
            raise errors.InvalidArgument("%s: source is only for committed snapshots (state "
                                         "is %s)" % (what, self.state))
        given = ({k: v for k, v in self.source.items() if v is not None}
                 if isinstance(self.source, dict) else {})
        if len(given) != 1 or not set(given) <= set(SOURCE_KINDS):
            raise errors.InvalidArgument("%s: source must have exactly one of %s, not %r"
                                         % (what, " or ".join(SOURCE_KINDS), self.source))
        kind, path = next(iter(given.items()))
        if not isinstance(path, str) or not path:
            raise errors.InvalidArgument("%s: source %s must be a non-empty path" % (what, kind))
        self.source = {kind: path}


@dataclasses.dataclass
class Action:
    """One step of a plan. `action` is the snapshotter verb that does it:
    prepare (active), view, commit (a committed snapshot made from its
    source), update (labels) or remove."""

    action: str
    key: str
    kind: str
    parent: str = ""
    labels: Optional[Dict[str, str]] = None
    source: Optional[Dict[str, str]] = None
    reason: str = ""

    def to_dict(self):
        return dataclasses.asdict(self)


@dataclasses.dataclass
class Plan:
    """The declarations (validated), the actions in order, and before/after:
    {key: summary} of every snapshot the plan declares or removes, as it is
    now and as it will be (a key missing from `after` will not exist)."""

    declarations: List[Declaration]
    actions: List[Action]
    before: Dict[str, dict]
    after: Dict[str, dict]

    @property
    def changed(self):
        return bool(self.actions)


def summary(kind, parent, labels):
    """How a snapshot is shown in before/after: what a declaration sets."""
    return {"kind": kind, "parent": parent, "labels": dict(sorted(labels.items()))}


def comparable_labels(labels):
    return {k: v for k, v in labels.items() if k not in COMPUTED_LABELS}


# -- planning ----------------------------------------------------------------


class _Existing:
    """The snapshots as the plan goes: each action planned is applied here
    too, so that later declarations see its effect."""

    def __init__(self, infos):
        self.snapshots = {}  # key -> summary dict
        self.children = {}   # parent key -> set of child keys
        for info in infos:
            self.add(info.name, Kind(info.kind).filter_value, info.parent,
                     comparable_labels(info.labels))

    def get(self, key):
        return self.snapshots.get(key)

    def add(self, key, kind, parent, labels):
        self.snapshots[key] = summary(kind, parent, labels)
        if parent:
            self.children.setdefault(parent, set()).add(key)

    def set_labels(self, key, labels):
        # A new summary, not an edit: plan() keeps the old ones as `before`.
        current = self.snapshots[key]
        self.snapshots[key] = summary(current["kind"], current["parent"], labels)

    def remove(self, key):
        parent = self.snapshots.pop(key)["parent"]
        if parent:
            self.children[parent].discard(key)

    def subtree(self, key):
        """The descendants of `key`, each after its own children (the order to
        remove them in); `key` itself is not included."""
        order = []
        stack = [(key, False)]
        while stack:
            current, expanded = stack.pop()
            if expanded:
                if current != key:
                    order.append(current)
                continue
            stack.append((current, True))
            for child in sorted(self.children.get(current, ()), reverse=True):
                stack.append((child, False))
        return order

    def depth(self, key):
        depth = 0
        while key in self.snapshots and self.snapshots[key]["parent"]:
            key = self.snapshots[key]["parent"]
            depth += 1
        return depth


def wanted_labels(current, decl):
    """The labels `decl` gives a snapshot that now has `current`."""
    if decl.labels is None:
        return dict(current)
    wanted = {} if decl.purge_labels else dict(current)
    wanted.update(decl.labels)
    return comparable_labels(labelrules.without_empty(wanted))


def check_source(decl):
    """Refuse, before anything is done, the source of a snapshot to be made:
    NotFound if it is not on this machine; for a layer, InvalidArgument if it
    is not a layer tar or would write outside the snapshot (it is read once
    to know; only layers of snapshots to be made are)."""
    if not decl.source:
        return
    kind, path = next(iter(decl.source.items()))
    if kind == "directory" and not os.path.isdir(path):
        raise errors.NotFound("source directory %s of snapshot %r does not exist"
                              % (path, decl.key))
    if kind == "layer":
        if not os.path.isfile(path):
            raise errors.NotFound("source layer %s of snapshot %r does not exist (or is not "
                                  "a file)" % (path, decl.key))
        try:
            layers.inspect_layer(path)
        except errors.InvalidArgument as err:
            raise errors.InvalidArgument("source layer %s of snapshot %r is refused: %s"
                                         % (path, decl.key, err)) from None


class _Planner:
    def __init__(self, infos):
        self.existing = _Existing(infos)
        self.actions = []
        self.removed_why = {}  # key removed by this plan -> why
        self.touched = []      # keys for before/after, in order

    def touch(self, key):
        if key not in self.touched:
            self.touched.append(key)

    def add_action(self, action):
        self.actions.append(action)
        self.touch(action.key)

    # removing

    def remove(self, key, recursive, why):
        subtree = self.existing.subtree(key)
        if subtree and not recursive:
            raise errors.FailedPrecondition(
                "cannot remove snapshot %r (%s): it has children %s; set recursive to remove "
                "them first" % (key, why, ", ".join(repr(k) for k in subtree)))
        for victim in subtree + [key]:
            current = self.existing.get(victim)
            reason = why if victim == key else "under %r, which is removed (%s)" % (key, why)
            self.add_action(Action("remove", victim, current["kind"], current["parent"],
                                   reason=reason))
            self.existing.remove(victim)
            self.removed_why[victim] = reason

    def ensure_absent(self, decl):
        self.touch(decl.key)
        if self.existing.get(decl.key) is not None:
            self.remove(decl.key, decl.recursive, "declared absent")

    # making

    def ensure_present(self, decl):
        self.touch(decl.key)
        current = self.existing.get(decl.key)
        if current is not None:
            differences = []
            if current["kind"] != decl.state:
                differences.append("it is %s, declared %s" % (current["kind"], decl.state))
            if current["parent"] != decl.parent:
                differences.append("its parent is %r, declared %r"
                                   % (current["parent"], decl.parent))
            if not differences:
                self.relabel(decl, current)
                return
            if not decl.replace:
                raise errors.AlreadyExists(
                    "snapshot %r exists and differs from its declaration: %s; set replace to "
                    "remove it and make it again" % (decl.key, "; ".join(differences)))
            self.remove(decl.key, decl.recursive, "replaced: " + "; ".join(differences))
        self.create(decl)

    def relabel(self, decl, current):
        labels = wanted_labels(current["labels"], decl)
        if labels != current["labels"]:
            self.add_action(Action("update", decl.key, current["kind"], current["parent"],
                                   labels=labels, reason="labels differ"))
            self.existing.set_labels(decl.key, labels)

    def create(self, decl):
        if decl.parent:
            parent = self.existing.get(decl.parent)
            if parent is None:
                removed = self.removed_why.get(decl.parent)
                raise errors.NotFound(
                    "parent %r of snapshot %r does not exist%s" % (
                        decl.parent, decl.key,
                        " (this plan removes it: %s)" % removed if removed else
                        "; declare it or make it first"))
            if parent["kind"] != COMMITTED:
                raise errors.InvalidArgument("parent %r of snapshot %r is %s; a parent must be "
                                             "committed" % (decl.parent, decl.key, parent["kind"]))
        check_source(decl)
        labels = wanted_labels({}, decl)
        verb = {ACTIVE: "prepare", VIEW: "view", COMMITTED: "commit"}[decl.state]
        self.add_action(Action(verb, decl.key, decl.state, decl.parent, labels=labels,
                               source=decl.source, reason="does not exist"))
        self.existing.add(decl.key, decl.state, decl.parent, labels)


def _creation_order(present):
    """Declarations with every declared parent before its children (list
    order otherwise kept); InvalidArgument for a cycle."""
    declared = {d.key: d for d in present}
    ordered, placed = [], set()
    for decl in present:
        chain, on_chain = [], set()
        current = decl
        while current is not None and current.key not in placed:
            if current.key in on_chain:
                cycle = [d.key for d in chain[[d.key for d in chain].index(current.key):]]
                raise errors.InvalidArgument("the declared parents form a cycle: %s"
                                             % " -> ".join(repr(k) for k in cycle + [current.key]))
            chain.append(current)
            on_chain.add(current.key)
            current = declared.get(current.parent)
        for link in reversed(chain):
            ordered.append(link)
            placed.add(link.key)
    return ordered


def _check_list(declarations):
    seen = set()
    for decl in declarations:
        if decl.key in seen:
            raise errors.InvalidArgument("snapshot %r is declared more than once" % decl.key)
        seen.add(decl.key)
    by_key = {d.key: d for d in declarations}
    for decl in declarations:
        parent = by_key.get(decl.parent)
        if decl.state == ABSENT or parent is None:
            continue
        if parent.state == ABSENT:
            raise errors.InvalidArgument("snapshot %r is declared on parent %r, which is declared "
                                         "absent" % (decl.key, decl.parent))
        if parent.state != COMMITTED:
            raise errors.InvalidArgument("snapshot %r is declared on parent %r, which is declared "
                                         "%s; a parent must be committed"
                                         % (decl.key, decl.parent, parent.state))


def plan(existing, declarations):
    """Plan the actions that make `existing` (Infos of a Walk of everything,
    e.g. read_state(sn)) match `declarations` (dicts or Declarations).

    Returns a Plan; raises the core's errors (module docstring) and changes
    nothing itself.
    """
    decls = [Declaration.from_dict(d) for d in declarations]
    _check_list(decls)
    planner = _Planner(existing)
    before = dict(planner.existing.snapshots)  # summaries are replaced, never edited
    absent = [d for d in decls if d.state == ABSENT]
    # Deepest first, so that declaring a parent and its child absent works
    # without `recursive`.
    for decl in sorted(absent, key=lambda d: -planner.existing.depth(d.key)):
        planner.ensure_absent(decl)
    for decl in _creation_order([d for d in decls if d.state != ABSENT]):
        planner.ensure_present(decl)
    after = planner.existing.snapshots
    # The declared keys, then the ones removed under them.
    declared = [d.key for d in decls]
    declared_set = set(declared)
    touched = declared + [k for k in planner.touched if k not in declared_set]
    return Plan(declarations=decls, actions=planner.actions,
                before={k: before[k] for k in touched if k in before},
                after={k: after[k] for k in touched if k in after})


def read_state(snapshotter):
    """Everything the snapshotter has, in one Walk: what plan() compares with."""
    return snapshotter.list()


# -- applying ----------------------------------------------------------------


class ActionFailed(Exception):
    """An action of a batch failed. `done` lists the actions carried out
    before it (a re-run plans the rest), `action` is the one that failed and
    `error` what it raised: the failure's class is that error's class. The
    message names the snapshot, the action and the cause."""

    def __init__(self, action, error, done, planned=None):
        self.action = action
        self.error = error
        self.done = list(done)
        cause = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
        total = planned if planned is not None else len(done) + 1
        super().__init__("%s of snapshot %r failed (%d of %d planned actions done): %s" % (
            action.action, action.key, len(done), total, cause or type(error).__name__))


def apply(snapshotter, planned):
    """Carry out the actions of `planned` in order; returns them. An error
    stops at the failing action (ActionFailed, with the actions done before
    it); those before it are done, a re-run plans the rest."""
    done = []
    for action in planned.actions:
        try:
            _apply_action(snapshotter, action)
        except (errors.SnapshotError, OSError) as err:
            raise ActionFailed(action, err, done, len(planned.actions)) from err
        done.append(action)
    return done


def _apply_action(snapshotter, action):
    if action.action == "prepare":
        snapshotter.prepare(action.key, action.parent, labels=action.labels)
    elif action.action == "view":
        snapshotter.view(action.key, action.parent, labels=action.labels)
    elif action.action == "commit":
        make_committed(snapshotter, action.key, action.parent, action.labels, action.source)
    elif action.action == "update":
        snapshotter.update(Info(kind=Kind.parse(action.kind), name=action.key,
                                labels=action.labels), "labels")
    elif action.action == "remove":
        snapshotter.remove(action.key)
    else:
        raise errors.InvalidArgument("unknown action %r" % action.action)


def make_committed(snapshotter, key, parent, labels, source):
    """Prepare a temporary active snapshot on `parent`, fill it from
    `source` (None: nothing), commit it as `key`. On failure nothing stays;
    if the process is killed, the temporary snapshot is under a lease of
    this process, so the next Cleanup removes it."""
    temp_key = "%s%d-%s" % (TEMP_KEY_PREFIX, time.time_ns(), key)
    with snapshotter.lease("declare") as lease:
        snapshotter.prepare(temp_key, parent, labels={leases.LEASE_LABEL: lease})
        try:
            if source and "layer" in source:
                # as containerd's applier: overlay whiteouts written directly
                layers.apply_layer(snapshotter, temp_key, source["layer"])
            elif source:
                with snapshotter.temporary_mount(snapshotter.mounts(temp_key)) as target:
                    fsutil.merge_tree(source["directory"], target)
            snapshotter.commit(key, temp_key, labels=labels)
        except BaseException:
            try:
                snapshotter.remove(temp_key)
            except errors.SnapshotError:
                pass  # already committed or gone: nothing of ours to undo
            raise


# -- reporting ---------------------------------------------------------------


def outcome(snapshotter, planned, applied):
    """One entry per declaration: key, state, exists, and (if it exists, or
    will once applied) kind, parent, labels, and `mounts`: the Mounts of an
    active or view snapshot as dicts, or None while it is not made as
    declared (a plan not `applied`: check mode). `snapshotter` may be None
    when there is no root yet."""
    # Label updates leave the mounts as they are; anything else changes them.
    remade = {action.key for action in planned.actions if action.action != "update"}
    results = []
    for decl in planned.declarations:
        after = planned.after.get(decl.key)
        entry = {"key": decl.key, "state": decl.state, "exists": after is not None}
        if after is not None:
            entry.update(after)
            entry["mounts"] = None
            up_to_date = applied or decl.key not in remade
            if after["kind"] in (ACTIVE, VIEW) and snapshotter is not None and up_to_date:
                entry["mounts"] = [dataclasses.asdict(m) for m in snapshotter.mounts(decl.key)]
        results.append(entry)
    return results
