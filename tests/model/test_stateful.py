"""A stateful model test: every backend against the in-memory model of
containerd's semantics (semantics.py), side by side, step by step.

Hypothesis draws sequences of calls (prepare, view, commit, remove, stat,
update, usage, mounts, walk with filters, cleanup, reopening the root, and
writes and reads of files through the mounts) over keys and labels from
small alphabets, so that they collide, with valid and invalid inputs mixed.
Each call goes to the backend and to the model; their outcomes must agree:
the same result, or an error of the same class. After every step the Stat
of each key the model holds, and an unfiltered Walk, must match the model.

Each example gets a fresh root on a filesystem made once per session
(environment.py, conftest.py): native and overlay on a loop ext4, btrfs on a
loop btrfs, zfs on a pool (zfs-fuse where the kernel has no zfs), where each
root is a dataset of its own, destroyed at the end of the example.

How much to run comes from the environment:
  SNAPLAB_MODEL_EXAMPLES  examples (sequences) per backend; default 200
  SNAPLAB_MODEL_STEPS     steps per sequence; default 50, and 20 for zfs
                          (each zfs call spawns a zfs command)
  SNAPLAB_MODEL_BACKENDS  comma-separated subset of native, overlay,
                          overlay-async (async_remove), btrfs, zfs, blockfile, erofs
Failing sequences are kept in .hypothesis/model-<backend>/ and replayed first.
"""

import contextlib
import json
import os
import re
import shutil

import pytest

pytest.importorskip("hypothesis")

from hypothesis import HealthCheck, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.database import DirectoryBasedExampleDatabase  # noqa: E402
from hypothesis.stateful import (RuleBasedStateMachine, invariant, precondition,  # noqa: E402
                                 rule, run_state_machine_as_test)

from snaplab import errors  # noqa: E402
from snaplab import mount as mountlib  # noqa: E402
from snaplab.types import Info, Kind  # noqa: E402

from tests.model.environment import chosen_backends  # noqa: E402
from tests.model.semantics import DIRECTORY, Selector, SnapshotterModel  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

DEFAULT_STEPS = {"zfs": 20}  # each zfs call spawns zfs commands
DEFAULT_STEPS_OTHERS = 50

# -- the alphabets -------------------------------------------------------------
#
# Valid inputs only: the malformed ones (keys, labels) have rules of their
# own, so that most steps can build up state. sampled_from shrinks towards
# the first element: the plainest come first.

# Keys are opaque: a path, dots, a number (backends name their storage by
# numeric ids), a relative path out of wherever it might be joined.
VALID_KEYS = ["a", "b", "/abs/d", "e.f", "1", "../up"]
MALFORMED_KEYS = ["", "nul\x00"]
KEYS = st.sampled_from(VALID_KEYS)
# "missing" is never created: a parent that does not exist
# "" (no parent) is repeated: without it nothing gets made until a commit
PARENTS = st.sampled_from(["", "", "", *VALID_KEYS, "missing"])

LABEL_KEYS = ["a", "b", "x.y", "containerd.io/snapshot/t"]
FITS_SHORT_KEYS = "x" * 4093  # with a key of <= 3 bytes it is 4096 bytes: fits
TOO_BIG = "x" * 4096  # over the limit with any key
TWO_BYTE_CHARS = "\u00e9" * 2047  # 4094 bytes in UTF-8: the limit counts bytes, not characters
LABELS = st.dictionaries(st.sampled_from(LABEL_KEYS), st.sampled_from(["1", "2", ""]),
                         max_size=2)
# at least one label; any of them may be malformed, or at or over the size limit
ODD_LABELS = st.dictionaries(st.sampled_from(LABEL_KEYS + ["", "n\x00"]),
                             st.sampled_from(["1", FITS_SHORT_KEYS, TOO_BIG, TWO_BYTE_CHARS,
                                              "v\x00"]),
                             min_size=1, max_size=2)
# Inputs withheld from the draws while snaplab still differs from containerd
# on them: each has its regression test in test_regressions.py (a strict
# xfail). When that test passes, its input goes back into the draws.
WITHHELD = {}
FIELDPATHS = st.lists(st.sampled_from([path for path in (
    "labels", "labels.a", "labels.b", "labels.x.y", "labels.containerd.io/snapshot/t",
    "labels.", "parent", "kind", "name", "created", "updated", "labelsx")
    if path not in WITHHELD]), max_size=2)

# a file at the top, one in a directory (removing the directory of a lower
# layer is what overlay's whiteouts and opaque directories are for)
FILE_PATHS = st.sampled_from(["f1", "d/f2"])
REMOVED_PATHS = st.sampled_from(["f1", "d/f2", "d"])
FILE_CONTENTS = st.sampled_from([b"one", b"two"])

# Filters: (field tuple, how to write it). A label key with dots can be
# written quoted or as several fields (joined back with dots).
FILTER_FIELDS = [(("kind",), "kind"), (("name",), "name"), (("parent",), "parent"),
                 (("labels", "a"), "labels.a"), (("labels", "x.y"), 'labels."x.y"'),
                 (("labels", "x", "y"), "labels.x.y"),
                 (("labels", "containerd.io/snapshot/t"), 'labels."containerd.io/snapshot/t"'),
                 (("labels",), "labels"), (("other",), "other")]
FILTER_VALUES = ["active", "view", "committed", "Active", "a", "/abs/d", "e.f", "1", "../up",
                 "2", ""]
FILTER_REGEXES = ["^a", "d$", "a|1", ".", "^$", "/", "t.d"]
MALFORMED_FILTERS = ["name==", 'labels."unterminated', "kind=active", ",", "name==a ",
                     "labels.containerd.io/x==1", "==a", "name!==a"]
# Unquoted values: not starting with a separator, quote or operator character
# (the scanner would read one of those instead of a value).
PLAIN_VALUE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]*")


@st.composite
def selectors(draw):
    field, written = draw(st.sampled_from(FILTER_FIELDS))
    operator = draw(st.sampled_from([None, "==", "!=", "~="]))
    if operator is None:
        return Selector(field), written
    value = draw(st.sampled_from(FILTER_REGEXES if operator == "~=" else FILTER_VALUES))
    quote = draw(st.booleans()) or not PLAIN_VALUE.fullmatch(value)
    # json.dumps of these ASCII strings is a valid Go string literal
    return Selector(field, operator, value), written + operator + (
        json.dumps(value) if quote else value)


FILTER_STRINGS = st.lists(selectors(), min_size=0, max_size=2)
FILTERS = st.one_of(st.none(), st.lists(FILTER_STRINGS, min_size=1, max_size=2))


class Sentinel(Exception):
    """Raised by a Walk callback: Walk must let it through."""


# -- comparing outcomes --------------------------------------------------------

def outcome(call):
    """(result, None), or (None, the SnapshotError raised)."""
    try:
        return call(), None
    except errors.SnapshotError as err:
        return None, err


def error_class(err):
    for cls in errors.ALL:
        if isinstance(err, cls):
            return cls
    return type(err)


def read_only(mount):
    """Whether a mount is read-only: an "ro" option, or an overlay without an
    upper directory (only lower layers)."""
    if mount.type == "overlay" and not any(o.startswith("upperdir=") for o in mount.options):
        return True
    return "ro" in mount.options


class SnapshotterMachine(RuleBasedStateMachine):
    """One backend (`env`) and the model, driven by the same calls."""

    env = None  # set per backend by the test: a BackendEnv

    def __init__(self):
        super().__init__()
        self.model = SnapshotterModel()
        self.mounts_of = {}  # key -> the mounts Prepare/View returned
        self.last_info = {}  # key -> the Info last seen (created must not move)
        self.committed_usage = {}  # name -> the first Usage seen (must not move)
        self.sn = None
        self.resources = contextlib.ExitStack()
        try:
            self.root, self.mnt = self.resources.enter_context(self.env.fresh_root())
            self.sn = self.env.open(self.root)
        except BaseException:
            self.resources.close()
            raise

    def teardown(self):
        with self.resources:
            mountlib.unmount_all(self.mnt)
            if self.sn is not None:
                self.sn.close()
                assert self.sn.close() is None, "closing twice must return None"

    # -- the comparison --------------------------------------------------

    def agree(self, what, model_call, backend_call):
        """Run both; the backend must succeed when the model does, and raise
        the same error class when it does not. Returns both results."""
        expected, expected_err = outcome(model_call)
        actual, actual_err = outcome(backend_call)
        if expected_err is None and actual_err is not None:
            raise AssertionError("%s: the model succeeds, the backend raises %s: %s"
                                 % (what, type(actual_err).__name__, actual_err))
        if expected_err is not None:
            if actual_err is None:
                raise AssertionError("%s: the model raises %s (%s), the backend succeeds"
                                     % (what, error_class(expected_err).__name__, expected_err))
            if error_class(actual_err) is not error_class(expected_err):
                raise AssertionError("%s: the model raises %s (%s), the backend %s: %s"
                                     % (what, error_class(expected_err).__name__, expected_err,
                                        type(actual_err).__name__, actual_err))
        return expected, actual, actual_err

    def check_info(self, key, info):
        want = self.model.get(key)
        got = (info.kind, info.name, info.parent, dict(info.labels or {}))
        assert got == (want.kind, key, want.parent, want.labels), (
            "Info of %r: backend %r, model %r" % (key, got, (want.kind, key, want.parent,
                                                             want.labels)))
        seen = self.last_info.get(key)
        if seen is not None:
            assert info.created == seen.created, "created of %r moved" % key
            assert info.updated >= seen.updated, "updated of %r went back" % key
        assert info.updated >= info.created, "updated before created for %r" % key
        self.last_info[key] = info

    def forget(self, key):
        for table in (self.mounts_of, self.last_info, self.committed_usage):
            table.pop(key, None)

    def check_mount_shape(self, key, mounts, writable):
        assert isinstance(mounts, list) and mounts, "%r: no mounts" % key
        for m in mounts:
            assert isinstance(m.type, str) and m.type and isinstance(m.source, str) and m.source
            assert read_only(m) is not writable, (
                "%r is %s but its mount %r is %s" % (key, "active" if writable else "a view",
                                                     m, "read-only" if read_only(m) else "writable"))

    def draw_key(self, data, label, alphabet=KEYS, *kinds):
        """Half the draws name a snapshot of `kinds` (any kind if none given)
        that the model holds, when there is one; the others come from the
        alphabet, existing or not."""
        existing = [k for k in self.model.keys()
                    if not kinds or self.model.snapshots[k].kind in kinds]
        strategy = st.one_of(st.sampled_from(existing), alphabet) if existing else alphabet
        return data.draw(strategy, label=label)

    # -- the calls, each compared with the model -----------------------------

    def do_create(self, kind, key, parent, labels):
        make = self.model.prepare if kind == Kind.ACTIVE else self.model.view
        call = self.sn.prepare if kind == Kind.ACTIVE else self.sn.view
        created, mounts, _ = self.agree(
            "%s(%r, %r, %r)" % (kind.name.lower(), key, parent, labels),
            lambda: make(key, parent, dict(labels)), lambda: call(key, parent, dict(labels)))
        if created is not None:
            self.forget(key)
            self.check_mount_shape(key, mounts, kind == Kind.ACTIVE)
            self.mounts_of[key] = [m.to_dict() for m in mounts]
            info = self.sn.stat(key)
            assert info.created == info.updated, "a new snapshot has created != updated"
            if created.files:  # on a parent with content: it must show through
                self.verify_content(key)
        return created is not None

    def do_commit(self, name, key, labels, parent):
        committed, _, _ = self.agree(
            "commit(%r, %r, %r, parent=%r)" % (name, key, labels, parent),
            lambda: self.model.commit(name, key, dict(labels), parent),
            lambda: self.sn.commit(name, key, dict(labels), parent=parent))
        if committed is not None:
            self.forget(key)
            self.forget(name)
            info = self.sn.stat(name)
            assert info.created == info.updated, "commit must set created == updated"
        return committed is not None

    def do_remove(self, key):
        _, _, err = self.agree("remove(%r)" % key, lambda: self.model.remove(key),
                               lambda: self.sn.remove(key))
        if isinstance(err, errors.FailedPrecondition):
            assert "remove" in str(err), "the refusal must say \"remove\": %s" % err
        if err is None:
            self.forget(key)

    def do_stat(self, key):
        expected, info, _ = self.agree("stat(%r)" % key, lambda: self.model.stat(key),
                                       lambda: self.sn.stat(key))
        if expected is not None:
            self.check_info(key, info)

    def do_update(self, key, kind, parent, labels, fieldpaths):
        """The Info passed holds whatever kind and parent: only labels count."""
        expected, info, _ = self.agree(
            "update(Info(%s, %r, parent=%r, labels=%r), %s)" % (
                kind.name, key, parent, labels, ", ".join(map(repr, fieldpaths))),
            lambda: self.model.update(key, dict(labels), list(fieldpaths)),
            lambda: self.sn.update(Info(kind, key, parent=parent, labels=dict(labels)),
                                   *fieldpaths))
        if expected is not None:
            self.check_info(key, info)  # also: created kept, updated not going back
            assert self.sn.stat(key) == info, "update returned an Info Stat does not give"

    def do_usage(self, key):
        kind, usage, _ = self.agree("usage(%r)" % key, lambda: self.model.usage_kind(key),
                                    lambda: self.sn.usage(key))
        if kind is None:
            return
        # zfs and blockfile (inside its images) count no inodes
        inode_floor = -1 if self.env.backend in ("zfs", "blockfile") else 0
        assert usage.size >= 0 and usage.inodes >= inode_floor, "usage of %r: %r" % (key, usage)
        if kind == Kind.VIEW:
            assert (usage.size, usage.inodes) == (0, 0), "a view uses nothing: %r" % usage
        if kind == Kind.COMMITTED:
            first = self.committed_usage.setdefault(key, usage)
            assert usage == first, "usage of committed %r moved: %r, then %r" % (
                key, first, usage)

    def do_mounts(self, key):
        writable, mounts, _ = self.agree("mounts(%r)" % key,
                                         lambda: self.model.mounts_writable(key),
                                         lambda: self.sn.mounts(key))
        if writable is None:
            return
        self.check_mount_shape(key, mounts, writable)
        if key in self.mounts_of:
            assert [m.to_dict() for m in mounts] == self.mounts_of[key], (
                "mounts(%r) differ from what Prepare/View returned" % key)

    # -- the rules -------------------------------------------------------------

    @rule(data=st.data(), key=KEYS, labels=LABELS)
    def prepare(self, data, key, labels):
        self.do_create(Kind.ACTIVE, key, self.draw_key(data, "parent", PARENTS, Kind.COMMITTED),
                       labels)

    @rule(data=st.data(), key=KEYS, labels=LABELS)
    def view(self, data, key, labels):
        self.do_create(Kind.VIEW, key, self.draw_key(data, "parent", PARENTS, Kind.COMMITTED),
                       labels)

    @rule(data=st.data(), name=KEYS, labels=LABELS)
    def commit(self, data, name, labels):
        self.do_commit(name, self.draw_key(data, "key", KEYS, Kind.ACTIVE), labels, None)

    @rule(data=st.data(), key=KEYS, name=KEYS, paths=st.lists(FILE_PATHS, min_size=1,
                                                              max_size=2, unique=True),
          content=FILE_CONTENTS)
    def layer(self, data, key, name, paths, content):
        """What an unpack does: prepare on a committed parent (or none),
        write files, commit; each step compared with the model."""
        parent = self.draw_key(data, "parent", PARENTS, Kind.COMMITTED)
        if self.do_create(Kind.ACTIVE, key, parent, {}):
            for path in paths:
                self.write(key, path, content)
            self.do_commit(name, key, {}, None)

    @rule(data=st.data(), name=KEYS, labels=LABELS)
    def commit_rebase(self, data, name, labels):
        """Commit with a parent: it may fill an empty parent or repeat the same one."""
        key = self.draw_key(data, "key", KEYS, Kind.ACTIVE)
        parent = self.draw_key(data, "rebase parent", PARENTS, Kind.COMMITTED)
        self.do_commit(name, key, labels, parent)

    @rule(data=st.data())
    def remove(self, data):
        self.do_remove(self.draw_key(data, "key"))

    @rule(data=st.data())
    def stat(self, data):
        self.do_stat(self.draw_key(data, "key"))

    @rule(data=st.data(), kind=st.sampled_from(list(Kind)), parent=PARENTS, labels=LABELS,
          fieldpaths=FIELDPATHS)
    def update(self, data, kind, parent, labels, fieldpaths):
        self.do_update(self.draw_key(data, "key"), kind, parent, labels, fieldpaths)

    @rule(data=st.data())
    def usage(self, data):
        self.do_usage(self.draw_key(data, "key"))

    @rule(data=st.data())
    def mounts(self, data):
        self.do_mounts(self.draw_key(data, "key"))

    @rule(data=st.data(), where=st.sampled_from(
        ["prepare", "view", "prepare parent", "view parent", "commit name", "commit key",
         "remove", "update", "stat", "usage", "mounts"]), bad=st.sampled_from(MALFORMED_KEYS))
    def malformed_key(self, data, where, bad):
        """An empty key or one with NUL, in each place a key goes."""
        other = self.draw_key(data, "other key")
        if where in ("prepare", "view"):
            self.do_create(Kind.ACTIVE if where == "prepare" else Kind.VIEW, bad, "", {})
        elif where in ("prepare parent", "view parent"):
            self.do_create(Kind.ACTIVE if where == "prepare parent" else Kind.VIEW, other, bad, {})
        elif where == "commit name":
            self.do_commit(bad, other, {}, None)
        elif where == "commit key":
            self.do_commit(other, bad, {}, None)
        elif where == "update":
            self.do_update(bad, Kind.ACTIVE, "", {"a": "1"}, [])
        else:
            getattr(self, "do_" + where)(bad)

    @rule(data=st.data(), where=st.sampled_from(["prepare", "view", "commit", "update"]),
          labels=ODD_LABELS)
    def odd_labels(self, data, where, labels):
        """Labels with a malformed key or value, or at or over the size limit."""
        key = self.draw_key(data, "key", KEYS, *((Kind.ACTIVE,) if where == "commit" else ()))
        if where in ("prepare", "view"):
            self.do_create(Kind.ACTIVE if where == "prepare" else Kind.VIEW, key, "", labels)
        elif where == "commit":
            self.do_commit(data.draw(KEYS, label="name"), key, labels, None)
        else:
            self.do_update(key, Kind.ACTIVE, "", labels,
                           data.draw(FIELDPATHS, label="fieldpaths"))

    @rule(filters=FILTERS)
    def walk(self, filters):
        if filters is None:
            alternatives, strings = None, ()
        else:
            alternatives = [tuple(s for s, _ in selectors) for selectors in filters]
            strings = tuple(",".join(w for _, w in selectors) for selectors in filters)
        seen = []

        def visit(info):  # Stat from inside the callback must work
            seen.append((info, self.sn.stat(info.name)))

        expected = self.model.walk(alternatives)
        self.sn.walk(visit, *strings)
        assert [info.name for info, _ in seen] == expected, (
            "walk(%s): backend %r, model %r" % (", ".join(map(repr, strings)),
                                               [i.name for i, _ in seen], expected))
        for info, stat in seen:
            assert info == stat, "Walk and Stat differ for %r: %r, %r" % (info.name, info, stat)

    @rule(bad=st.sampled_from(MALFORMED_FILTERS))
    def walk_malformed(self, bad):
        with pytest.raises(errors.InvalidArgument):
            self.sn.walk(lambda info: None, "kind==active", bad)

    @precondition(lambda self: self.model.snapshots)
    @rule()
    def walk_callback_error(self):
        with pytest.raises(Sentinel):
            self.sn.walk(self._raise_sentinel)

    @staticmethod
    def _raise_sentinel(info):
        raise Sentinel(info.name)

    # -- the rest ----------------------------------------------------------

    @rule()
    def cleanup(self):
        try:
            self.sn.cleanup()
        except errors.NotImplemented:
            pass

    @rule()
    def reopen(self):
        """Close and open the root again: everything must still be there."""
        self.sn.close()
        self.sn = None
        self.sn = self.env.open(self.root)

    # -- content through the mounts ------------------------------------------

    @contextlib.contextmanager
    def mounted(self, key):
        mountlib.mount_all(self.sn.mounts(key), self.mnt)
        try:
            yield self.mnt
        finally:
            mountlib.unmount_all(self.mnt)

    def draw_active(self, data):
        return data.draw(st.sampled_from(self.model.keys_of_kind(Kind.ACTIVE)), label="key")

    @precondition(lambda self: self.model.keys_of_kind(Kind.ACTIVE))
    @rule(data=st.data(), path=FILE_PATHS, content=FILE_CONTENTS)
    def write_file(self, data, path, content):
        self.write(self.draw_active(data), path, content)

    def write(self, key, path, content):
        with self.mounted(key) as where:
            os.makedirs(os.path.dirname(os.path.join(where, path)), exist_ok=True)
            with open(os.path.join(where, path), "wb") as f:
                f.write(content)
        self.model.write_file(key, path, content)
        self.verify_content(key)

    @precondition(lambda self: self.model.keys_of_kind(Kind.ACTIVE))
    @rule(data=st.data(), path=REMOVED_PATHS)
    def remove_path(self, data, path):
        key = self.draw_active(data)
        with self.mounted(key) as where:
            target = os.path.join(where, path)
            if os.path.isdir(target):
                shutil.rmtree(target)
            elif os.path.lexists(target):
                os.unlink(target)
        self.model.remove_path(key, path)
        self.verify_content(key)

    @precondition(lambda self: self.model.keys_of_kind(Kind.ACTIVE)
                  or self.model.keys_of_kind(Kind.VIEW))
    @rule(data=st.data())
    def check_content(self, data):
        self.verify_content(data.draw(st.sampled_from(
            self.model.keys_of_kind(Kind.ACTIVE) + self.model.keys_of_kind(Kind.VIEW)),
            label="key"))

    def verify_content(self, key):
        """What the mounts of an active or view snapshot show is what the
        model says (when it says); a view refuses a new file."""
        want = self.model.get(key)
        with self.mounted(key) as where:  # mounted even when the content is not predicted
            found = {}
            for directory, dirs, files in os.walk(where):
                relative = os.path.relpath(directory, where)
                for name in dirs:
                    found[os.path.normpath(os.path.join(relative, name))] = DIRECTORY
                for name in files:
                    with open(os.path.join(directory, name), "rb") as f:
                        found[os.path.normpath(os.path.join(relative, name))] = f.read()
            if want.kind == Kind.VIEW:
                try:
                    with open(os.path.join(where, "written-in-a-view"), "wb"):
                        pass
                except OSError:
                    pass
                else:
                    raise AssertionError("a file could be created in the view %r" % key)
        assert want.files is None or found == want.files, (
            "content of %r: backend %r, model %r" % (key, found, want.files))

    # -- after every step ----------------------------------------------------

    @invariant()
    def backend_matches_model(self):
        """Stat of every key the model has, and an unfiltered Walk, match it."""
        if self.sn is None:
            return
        for key in self.model.keys():
            self.check_info(key, self.sn.stat(key))
        walked = [info.name for info in self.sn.list()]
        assert walked == self.model.keys(), "walk(): backend %r, model %r" % (
            walked, self.model.keys())


# -- the test ------------------------------------------------------------------

def machine_settings(backend):
    examples = int(os.environ.get("SNAPLAB_MODEL_EXAMPLES", "200"))
    steps = int(os.environ.get("SNAPLAB_MODEL_STEPS",
                               DEFAULT_STEPS.get(backend, DEFAULT_STEPS_OTHERS)))
    return settings(
        max_examples=examples,
        stateful_step_count=steps,
        deadline=None,
        database=DirectoryBasedExampleDatabase(
            os.path.join(REPO, ".hypothesis", "model-" + backend)),
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                               HealthCheck.filter_too_much],
    )


@pytest.mark.parametrize("backend", chosen_backends())
def test_backend_follows_the_model(backend, backend_env):
    machine = type("SnapshotterMachine_" + backend.replace("-", "_"), (SnapshotterMachine,),
                   {"env": backend_env(backend)})
    run_state_machine_as_test(machine, settings=machine_settings(backend))
