"""An in-memory model of containerd's snapshotter semantics.

A plain class that knows nothing about disks, mounts or any snaplab backend:
it holds the snapshots as a dictionary and answers each call the way a
containerd snapshotter must, either with a result or by raising one of the
error classes of snaplab.errors. The stateful test (test_stateful.py) drives
a real backend and this model side by side and compares them after each step.

The rules, in our own words:

Keys. Active, view and committed snapshots share one key space. A key is an
opaque string; it may look like a path, it may contain dots. A key that is
empty or holds a NUL byte can never name a snapshot: a call that would write
under such a key (prepare, view, commit, remove, update) is refused as
malformed (InvalidArgument) before anything else is looked at; a call that
only reads (stat, usage, mounts) simply finds nothing (NotFound).

Labels. A label's key must be a non-empty string without NUL, its value a
string without NUL, and key plus value at most 4096 bytes of UTF-8; else the
call is refused (InvalidArgument) before any lookup, and nothing changes. An
empty value means "no such label": it is never stored.

Prepare / View (key, parent, labels). The checks, in order: the key, the
parent's spelling and the labels are well formed (InvalidArgument); a
non-empty parent exists (NotFound) and is committed (InvalidArgument); the
key is free (AlreadyExists). The new snapshot is active (prepare) or a view,
has the given parent and labels, and created == updated.

Commit (name, key, labels, parent). Well-formed name, key and labels
(InvalidArgument); the key exists (NotFound, even when the name is taken);
the name is free (AlreadyExists); the key is active (FailedPrecondition for
a view or a committed one). A rebase parent may only fill an empty parent or
repeat the same one (InvalidArgument otherwise); it must exist (NotFound) and
be committed (FailedPrecondition). The key then vanishes and `name` appears,
committed, with the active one's parent (or the rebase parent), with exactly
the labels given (nothing inherited) and created == updated. Its content is
what the active snapshot held.

Remove (key). Well-formed key (InvalidArgument); it exists (NotFound); no
snapshot of any kind has it as parent (FailedPrecondition, with a message
that says "remove"). The key is free again at once.

Stat (key). The kind, name, parent and labels; NotFound if missing.

Update (info, fieldpaths). Well-formed name and labels in `info`
(InvalidArgument); the snapshot exists (NotFound). No field path, or the
path "labels", replaces every label by info.labels; "labels.<k>" sets label
k to info.labels[k] (deleting it when absent or empty) and leaves the other
labels alone. Any other path (parent, kind, name, created, ...) is refused
(InvalidArgument) and nothing changes. Kind, name, parent and created never
change, whatever info says; updated moves on. Returns the stored Info.

Usage (key). NotFound if missing. Never negative: size >= 0, inodes >= 0,
except that a backend that cannot count inodes says -1. A view uses nothing
(0, 0). A committed snapshot's usage was measured at commit and never
changes afterwards.

Mounts (key). NotFound if missing; FailedPrecondition for a committed
snapshot. An active snapshot's mounts are writable, a view's read-only; they
are the same mounts Prepare or View returned.

Walk (filters). Every snapshot matching the filters, in byte order of the
UTF-8 key. Several filter strings: a snapshot matches if any one does; a
filter string of comma-separated selectors: if all of them do; the empty
string and no filter at all match everything. A selector names a field and
may compare it: no operator tests that the field is present, `==` that it is
present and equal, `!=` that its value differs (an absent field counts as
""), `~=` that a regular expression finds a match in it (absent: ""). The
fields: kind ("active", "view", "committed"), name, parent (always present,
"" for none) and labels.<key> (present when that label is). Any other field
is absent. A malformed filter is refused (InvalidArgument).

Cleanup. Removes only what no snapshot refers to: nothing any call can see
changes. A backend with nothing to clean that way may say NotImplemented.

Content. A new active snapshot shows its parent's files and directories
(none without a parent) and takes writes and removals; committing freezes what it shows; a view shows its
parent's files and refuses writes. A rebase (Commit with a parent the active
snapshot did not have) changes the parent on record; what the committed
snapshot then shows is the backend's business (a layered backend shows the
changes over the new parent, a full-copy one only what the active held), so
the model does not predict the content of a rebased snapshot or of anything
made on it.
"""

import dataclasses
import re
from typing import Dict, Optional, Tuple, Union

from snaplab import errors
from snaplab.types import Kind

MAX_LABEL_BYTES = 4096
DIRECTORY = "<directory>"  # a directory in ModelSnapshot.files


@dataclasses.dataclass
class ModelSnapshot:
    kind: Kind
    parent: str
    labels: Dict[str, str]
    # what the mounts show: relative path -> the bytes of a file, or
    # DIRECTORY; None when it is not predicted (see "Content")
    files: Optional[Dict[str, Union[bytes, str]]]


@dataclasses.dataclass(frozen=True)
class Selector:
    """One `field [op value]` of a filter; `field` is a tuple like ("labels", "a.b")."""

    field: Tuple[str, ...]
    operator: Optional[str] = None  # None: presence; "==", "!=", "~="
    value: str = ""


def _malformed_key(key):
    return not isinstance(key, str) or key == "" or "\x00" in key


def _check_key(key, what="key"):
    if _malformed_key(key):
        raise errors.InvalidArgument("%s %r is malformed" % (what, key))


def check_labels(labels):
    """InvalidArgument if any label breaks the rules; returns them without empty values."""
    for name, value in (labels or {}).items():
        if not isinstance(name, str) or name == "" or "\x00" in name:
            raise errors.InvalidArgument("label key %r is malformed" % (name,))
        if not isinstance(value, str) or "\x00" in value:
            raise errors.InvalidArgument("label value %r is malformed" % (value,))
        if len(name.encode()) + len(value.encode()) > MAX_LABEL_BYTES:
            raise errors.InvalidArgument("label %r is over %d bytes" % (name, MAX_LABEL_BYTES))
    return {k: v for k, v in (labels or {}).items() if v != ""}


def _copy(files):
    return None if files is None else dict(files)


class SnapshotterModel:
    """containerd's snapshotter semantics over a dictionary (see the module doc)."""

    def __init__(self):
        self.snapshots: Dict[str, ModelSnapshot] = {}

    # -- reading -----------------------------------------------------------

    def get(self, key):
        """The ModelSnapshot of `key`; NotFound if there is none."""
        if _malformed_key(key) or key not in self.snapshots:
            raise errors.NotFound("snapshot %r does not exist" % (key,))
        return self.snapshots[key]

    def keys(self):
        """Every key, in the order Walk returns them (bytes of the UTF-8 key)."""
        return sorted(self.snapshots, key=lambda k: k.encode())

    def keys_of_kind(self, kind):
        return [k for k in self.keys() if self.snapshots[k].kind == kind]

    def children_of(self, key):
        return [k for k in self.keys() if self.snapshots[k].parent == key]

    def stat(self, key):
        return self.get(key)

    def usage_kind(self, key):
        """Usage cannot be predicted, only its kind of rule: the snapshot's Kind."""
        return self.get(key).kind

    def mounts_writable(self, key):
        """True for an active snapshot's mounts, False for a view's."""
        snapshot = self.get(key)
        if snapshot.kind == Kind.COMMITTED:
            raise errors.FailedPrecondition("snapshot %r is committed: it has no mounts" % key)
        return snapshot.kind == Kind.ACTIVE

    def walk(self, alternatives):
        """Keys matching a filter given as a list of selector tuples (one per
        filter string; an empty tuple matches everything); None: no filter."""
        if alternatives is None:
            return self.keys()
        return [k for k in self.keys()
                if any(all(self._selects(k, s) for s in selectors)
                       for selectors in alternatives)]

    def _field(self, key, field):
        snapshot = self.snapshots[key]
        if field == ("kind",):
            return snapshot.kind.name.lower()
        if field == ("name",):
            return key
        if field == ("parent",):
            return snapshot.parent
        if len(field) >= 2 and field[0] == "labels":
            return snapshot.labels.get(".".join(field[1:]))
        return None

    def _selects(self, key, selector):
        value = self._field(key, selector.field)
        if selector.operator is None:
            return value is not None
        if selector.operator == "==":
            return value is not None and value == selector.value
        value = "" if value is None else value
        if selector.operator == "!=":
            return value != selector.value
        return re.search(selector.value, value) is not None

    # -- writing -----------------------------------------------------------

    def prepare(self, key, parent, labels):
        return self._create(Kind.ACTIVE, key, parent, labels)

    def view(self, key, parent, labels):
        return self._create(Kind.VIEW, key, parent, labels)

    def _create(self, kind, key, parent, labels):
        _check_key(key)
        if parent:
            _check_key(parent, "parent")
        stored = check_labels(labels)
        files = {}
        if parent:
            if parent not in self.snapshots:
                raise errors.NotFound("parent %r does not exist" % parent)
            if self.snapshots[parent].kind != Kind.COMMITTED:
                raise errors.InvalidArgument("parent %r is not committed" % parent)
            files = _copy(self.snapshots[parent].files)
        if key in self.snapshots:
            raise errors.AlreadyExists("snapshot %r already exists" % key)
        self.snapshots[key] = ModelSnapshot(kind, parent or "", stored, files)
        return self.snapshots[key]

    def commit(self, name, key, labels, parent=None):
        _check_key(name, "name")
        _check_key(key)
        stored = check_labels(labels)
        if key not in self.snapshots:
            raise errors.NotFound("active snapshot %r does not exist" % key)
        if name in self.snapshots:
            raise errors.AlreadyExists("snapshot %r already exists" % name)
        active = self.snapshots[key]
        if active.kind != Kind.ACTIVE:
            raise errors.FailedPrecondition("snapshot %r is not active" % key)
        new_parent, files = active.parent, _copy(active.files)
        if parent:
            if active.parent and parent != active.parent:
                raise errors.InvalidArgument("cannot change the parent of %r" % key)
            if parent not in self.snapshots:
                raise errors.NotFound("parent %r does not exist" % parent)
            if self.snapshots[parent].kind != Kind.COMMITTED:
                raise errors.FailedPrecondition("parent %r is not committed" % parent)
            if parent != active.parent:
                files = None  # a rebase: see "Content" above
            new_parent = parent
        del self.snapshots[key]
        self.snapshots[name] = ModelSnapshot(Kind.COMMITTED, new_parent, stored, files)
        return self.snapshots[name]

    def remove(self, key):
        _check_key(key)
        self.get(key)
        children = self.children_of(key)
        if children:
            raise errors.FailedPrecondition("cannot remove snapshot %r: child %r"
                                            % (key, children[0]))
        del self.snapshots[key]

    def update(self, name, labels, fieldpaths):
        _check_key(name)
        check_labels(labels)
        snapshot = self.get(name)
        wanted = dict(labels or {})
        new = dict(snapshot.labels)
        if not fieldpaths:
            new = wanted
        for path in fieldpaths:
            if path == "labels":
                new = dict(wanted)
            elif path.startswith("labels."):
                label = path[len("labels."):]
                new[label] = wanted.get(label, "")
            else:
                raise errors.InvalidArgument("cannot update %r of %r" % (path, name))
        snapshot.labels = {k: v for k, v in new.items() if v != ""}
        return snapshot

    # -- content -----------------------------------------------------------

    def write_file(self, key, path, content):
        """A file written through the active snapshot's mounts (its
        directories made as needed)."""
        files = self._changed_files(key)
        if files is None:
            return
        parts = path.split("/")
        for depth in range(1, len(parts)):
            files["/".join(parts[:depth])] = DIRECTORY
        files[path] = content

    def remove_path(self, key, path):
        """A file, or a directory with all in it, removed through the mounts
        (nothing happens if it is not there)."""
        files = self._changed_files(key)
        if files is None:
            return
        for name in list(files):
            if name == path or name.startswith(path + "/"):
                del files[name]

    def _changed_files(self, key):
        snapshot = self.get(key)
        assert snapshot.kind == Kind.ACTIVE, "only active snapshots take changes"
        return snapshot.files
