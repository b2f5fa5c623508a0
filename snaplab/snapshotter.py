"""The Snapshotter interface. The docstrings are the contract.

This mirrors containerd's core/snapshots/snapshotter.go. Vocabulary:
`key` names an active or view snapshot, `name` a committed one, `parent` is
always a committed snapshot. All three share ONE key space. Keys are opaque
strings (the conformance suite uses absolute paths); backends never use them
as file names.

Every method raises only the classes in snaplab.errors, in the cases listed
on it; nothing is changed when one is raised.
"""

import abc

from . import errors


class Snapshotter(abc.ABC):
    """Copy-on-write filesystem snapshots, containerd style."""

    @abc.abstractmethod
    def stat(self, key):
        """Return the Info of the active, view or committed snapshot `key`.

        NotFound if there is no such snapshot. Stat and Walk return identical
        Info (timestamps to the nanosecond, labels) for the same snapshot.
        """

    @abc.abstractmethod
    def update(self, info, *fieldpaths):
        """Update the mutable properties (labels only) of `info.name`.

        No fieldpaths: the labels are replaced by `info.labels`.
        "labels": same, replaced wholesale.
        "labels.<k>": stored label k is set to info.labels.get(k, "");
        an empty value deletes the label; labels not named are untouched.
        Any other field path: InvalidArgument, nothing changes.
        Updated becomes now; kind, name, parent and created never change,
        whatever `info` holds. Returns the stored Info. NotFound if missing.
        InvalidArgument if a label's key+value is over 4096 bytes.
        """

    @abc.abstractmethod
    def usage(self, key):
        """Return the Usage of `key` itself, excluding its parents.

        Active: measured now (may be slow, proportional to its size).
        Committed: the value measured at commit time. View: zero.
        NotFound if missing.
        """

    @abc.abstractmethod
    def mounts(self, key):
        """Return the mounts of an active or view snapshot, as Prepare/View did.

        NotFound if missing; FailedPrecondition if `key` is committed.
        """

    @abc.abstractmethod
    def prepare(self, key, parent="", labels=None):
        """Create the active snapshot `key` on the committed `parent`.

        `parent` "" means an empty snapshot. Returns the list of Mounts that,
        once mounted, show the parent's content and capture changes.
        AlreadyExists if `key` exists (any kind); NotFound if `parent` is
        missing; InvalidArgument if `parent` is not committed or if the key
        or labels are malformed.
        """

    @abc.abstractmethod
    def view(self, key, parent="", labels=None):
        """Like prepare, but the snapshot is a read-only View.

        A view can never be committed, only removed. Same errors as prepare.
        """

    @abc.abstractmethod
    def commit(self, name, key, labels=None, parent=None):
        """Capture the changes of the active `key` as committed snapshot `name`.

        The committed snapshot keeps the active one's parent and on-disk data;
        `key` ceases to exist. Its labels are exactly `labels` (not inherited);
        created == updated == now. `parent` (rebase) may only fill in an empty
        parent or repeat the same one.
        NotFound if `key` is missing (checked first); AlreadyExists if `name`
        is taken; FailedPrecondition if `key` is a view or committed;
        InvalidArgument if `parent` differs from the stored parent;
        NotFound / FailedPrecondition if the rebase parent is missing / not
        committed.
        """

    @abc.abstractmethod
    def remove(self, key):
        """Remove the snapshot `key`, of any kind.

        NotFound if missing; FailedPrecondition (message containing "remove")
        if any snapshot has it as parent: children go first. The key or name
        is reusable as soon as this returns.
        """

    @abc.abstractmethod
    def walk(self, fn, *filters):
        """Call fn(info) for each snapshot matching the filters, in key order.

        Each filter string is containerd's filter syntax; commas AND within
        one string, several strings OR. No filters match everything.
        InvalidArgument for a malformed filter. An exception raised by fn ends
        the walk and propagates. fn may call Stat and other read methods.
        """

    def list(self, *filters):
        """Walk into a list of Info."""
        found = []
        self.walk(found.append, *filters)
        return found

    @abc.abstractmethod
    def cleanup(self):
        """Remove on-disk data no longer referenced (orphans, async removals).

        NotImplemented if the backend has nothing to clean up that way.

        snaplab's backends also repair here what a killed operation left
        (every Finding of doctor() that has a fix): temporary names and
        mounts, the extract snapshots of a killed unpack, a subvolume frozen
        by a killed Commit. Safe to run at any time, beside other processes.
        """

    def remove_data_in_background(self):
        """Let Remove return once the snapshot is gone from the metadata and
        delete its data afterwards, in a thread of this object; cleanup()
        and close() wait for those deletions. For a long-lived process
        (snaplab serve), as containerd's Remove leaves the data to its
        garbage collector. By default nothing changes: Remove frees the
        data before it returns."""

    def capabilities(self):
        """containerd's plugin capabilities this snapshotter has here, e.g.
        "remap-ids": it honours the uid/gid mapping labels itself (snaplab.idmap)."""
        return []

    def doctor(self):
        """Every inconsistency between metadata, storage, mounts and
        temporary names, as [snaplab.types.Finding]; writes nothing.
        (snaplab's own; NotImplemented for a snapshotter without it.)"""
        raise errors.NotImplemented("this snapshotter has no doctor")

    @abc.abstractmethod
    def close(self):
        """Release resources. Closing twice is fine and returns None."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
