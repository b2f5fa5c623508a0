"""snaplab.declare: planning from Infos (pure), and applying on a real native root."""

import os
import re

import pytest

from snaplab import declare, errors, open_snapshotter
from snaplab.labels import UPPERDIR_LABEL
from snaplab.types import Info, Kind


def committed(key, parent="", labels=None):
    return Info(Kind.COMMITTED, key, parent, dict(labels or {}))


def active(key, parent="", labels=None):
    return Info(Kind.ACTIVE, key, parent, dict(labels or {}))


def view(key, parent="", labels=None):
    return Info(Kind.VIEW, key, parent, dict(labels or {}))


def steps(planned):
    return [(a.action, a.key) for a in planned.actions]


CHAIN = [committed("base"), committed("app", "base"), active("work", "app"),
         view("look", "app")]
CHAIN_DECLARED = [
    {"key": "base"},
    {"key": "app", "parent": "base"},
    {"key": "work", "parent": "app", "state": "active"},
    {"key": "look", "parent": "app", "state": "view"},
]


# -- declarations ---------------------------------------------------------------


@pytest.mark.parametrize("bad, message", [
    ({}, "must not be empty"),
    ({"key": ""}, "must not be empty"),
    ({"key": "a", "state": "present"}, "state must be one of"),
    ({"key": "a", "colour": "red"}, "unknown field(s) colour"),
    ({"key": "a", "parent": "a"}, "its own parent"),
    ({"key": "a", "labels": {"k": 1}}, "label value"),
    ({"key": "a", "replace": "yes"}, "replace must be true or false"),
    ({"key": "a", "state": "active", "source": {"directory": "/x"}}, "only for committed"),
    ({"key": "a", "source": {"directory": "/x", "layer": "/y"}}, "exactly one of"),
    ({"key": "a", "source": {"tarball": "/y"}}, "exactly one of"),
    ({"key": "a", "source": {"directory": ""}}, "non-empty path"),
    ("a", "must be a mapping"),
])
def test_malformed_declarations_are_invalid_arguments(bad, message):
    with pytest.raises(errors.InvalidArgument, match=re.escape(message)):
        declare.plan([], [bad])


def test_none_fields_take_their_defaults():
    decl = declare.Declaration.from_dict({"key": "a", "state": None, "parent": None,
                                          "replace": None})
    assert (decl.state, decl.parent, decl.replace) == ("committed", "", False)


# -- planning -------------------------------------------------------------------


def test_a_new_chain_is_planned_parents_first_in_any_order():
    planned = declare.plan([], list(reversed(CHAIN_DECLARED)))
    # otherwise the list order stays: look was declared before work
    assert steps(planned) == [("commit", "base"), ("commit", "app"), ("view", "look"),
                              ("prepare", "work")]
    assert planned.changed
    assert planned.before == {}
    assert planned.after["work"] == {"kind": "active", "parent": "app", "labels": {}}


def test_redeclaring_what_exists_plans_nothing():
    planned = declare.plan(CHAIN, CHAIN_DECLARED)
    assert planned.actions == [] and not planned.changed
    assert planned.before == planned.after
    assert list(planned.before) == ["base", "app", "work", "look"]


def test_a_cycle_of_parents_is_refused():
    with pytest.raises(errors.InvalidArgument, match="cycle: 'a' -> 'b' -> 'a'"):
        declare.plan([], [{"key": "a", "parent": "b"}, {"key": "b", "parent": "a"}])


def test_a_key_declared_twice_is_refused():
    with pytest.raises(errors.InvalidArgument, match="more than once"):
        declare.plan([], [{"key": "a"}, {"key": "a", "state": "absent"}])


def test_a_missing_parent_is_not_found():
    with pytest.raises(errors.NotFound, match="parent 'nope' of snapshot 'a' does not exist"):
        declare.plan([], [{"key": "a", "parent": "nope"}])


def test_a_parent_must_be_committed_existing_or_declared():
    with pytest.raises(errors.InvalidArgument, match="'work' of snapshot 'x' is active"):
        declare.plan(CHAIN, [{"key": "x", "parent": "work"}])
    with pytest.raises(errors.InvalidArgument, match="declared view; a parent must be committed"):
        declare.plan([], [{"key": "v", "state": "view"}, {"key": "x", "parent": "v"}])
    with pytest.raises(errors.InvalidArgument, match="which is declared absent"):
        declare.plan(CHAIN, [{"key": "base", "state": "absent"},
                             {"key": "x", "parent": "base"}])


@pytest.mark.parametrize("declared, differs", [
    ({"key": "app", "parent": ""}, "its parent is 'base', declared ''"),
    ({"key": "work", "parent": "app"}, "it is active, declared committed"),
    ({"key": "look", "parent": "base", "state": "view"}, "its parent is 'app', declared 'base'"),
])
def test_a_conflict_says_what_differs(declared, differs):
    with pytest.raises(errors.AlreadyExists, match=differs + ".*set replace"):
        declare.plan(CHAIN, [declared])


def test_replace_removes_and_makes_again():
    planned = declare.plan(CHAIN, [{"key": "look", "parent": "base", "state": "view",
                                    "replace": True}])
    assert steps(planned) == [("remove", "look"), ("view", "look")]
    assert planned.actions[0].reason.startswith("replaced: its parent is 'app'")
    assert planned.before["look"]["parent"] == "app"
    assert planned.after["look"]["parent"] == "base"


def test_replace_of_a_snapshot_with_children_needs_recursive():
    with pytest.raises(errors.FailedPrecondition, match="children 'look', 'work'"):
        declare.plan(CHAIN, [{"key": "app", "state": "active", "replace": True}])
    planned = declare.plan(CHAIN, [{"key": "app", "state": "active", "replace": True,
                                    "recursive": True}])
    assert steps(planned) == [("remove", "look"), ("remove", "work"), ("remove", "app"),
                              ("prepare", "app")]
    assert set(planned.before) == {"app", "look", "work"}
    assert set(planned.after) == {"app"}


def test_children_declared_with_a_replaced_parent_are_made_again():
    declared = [dict(d) for d in CHAIN_DECLARED]
    declared[0]["labels"] = {"x": "y"}  # a label change alone replaces nothing
    declared[1] = {"key": "app", "parent": "", "replace": True, "recursive": True}
    declared[2]["parent"] = declared[3]["parent"] = "app"
    planned = declare.plan(CHAIN, declared)
    assert steps(planned) == [("update", "base"), ("remove", "look"), ("remove", "work"),
                              ("remove", "app"), ("commit", "app"), ("prepare", "work"),
                              ("view", "look")]
    again = declare.plan(list_after(planned), declared)
    assert again.actions == []


def list_after(planned):
    return [Info(Kind.parse(s["kind"]), key, s["parent"], s["labels"])
            for key, s in planned.after.items()]


def test_absent_with_children_needs_recursive_and_goes_children_first():
    with pytest.raises(errors.FailedPrecondition, match="set recursive"):
        declare.plan(CHAIN, [{"key": "base", "state": "absent"}])
    planned = declare.plan(CHAIN, [{"key": "base", "state": "absent", "recursive": True}])
    assert steps(planned) == [("remove", "look"), ("remove", "work"), ("remove", "app"),
                              ("remove", "base")]
    assert planned.after == {}
    assert "under 'base'" in planned.actions[0].reason


def test_absent_parent_and_children_declared_together_need_no_recursive():
    planned = declare.plan(CHAIN, [{"key": k, "state": "absent"}
                                   for k in ("base", "app", "work", "look")])
    assert steps(planned) == [("remove", "work"), ("remove", "look"), ("remove", "app"),
                              ("remove", "base")]


def test_absent_of_what_does_not_exist_plans_nothing():
    assert declare.plan(CHAIN, [{"key": "gone", "state": "absent"}]).actions == []


def test_a_parent_removed_by_the_plan_is_named_in_the_error():
    with pytest.raises(errors.NotFound, match="this plan removes it"):
        declare.plan(CHAIN, [{"key": "base", "state": "absent", "recursive": True},
                             {"key": "new", "parent": "app", "state": "active"}])


def test_labels_omitted_are_left_alone_given_are_the_whole_set():
    existing = [committed("a", labels={"keep": "1", "old": "2"})]
    assert declare.plan(existing, [{"key": "a"}]).actions == []
    planned = declare.plan(existing, [{"key": "a", "labels": {"keep": "1", "new": "3"}}])
    assert steps(planned) == [("update", "a")]
    assert planned.actions[0].labels == {"keep": "1", "new": "3"}
    assert planned.before["a"]["labels"] == {"keep": "1", "old": "2"}
    assert planned.after["a"]["labels"] == {"keep": "1", "new": "3"}


def test_labels_without_purge_set_some_and_an_empty_value_deletes():
    existing = [committed("a", labels={"keep": "1", "old": "2"})]
    planned = declare.plan(existing, [{"key": "a", "purge_labels": False,
                                       "labels": {"old": "", "new": "3"}}])
    assert planned.actions[0].labels == {"keep": "1", "new": "3"}
    assert declare.plan(existing, [{"key": "a", "purge_labels": False,
                                    "labels": {"keep": "1"}}]).actions == []


def test_computed_labels_are_neither_compared_nor_set():
    existing = [committed("a", labels={UPPERDIR_LABEL: "/x/1/fs", "k": "v"})]
    assert declare.plan(existing, [{"key": "a", "labels": {"k": "v"}}]).actions == []


def test_a_missing_source_is_not_found_only_when_something_is_made(tmp_path):
    declared = [{"key": "a", "source": {"directory": str(tmp_path / "missing")}}]
    with pytest.raises(errors.NotFound, match="source directory .*missing of snapshot 'a'"):
        declare.plan([], declared)
    assert declare.plan([committed("a")], declared).actions == []


def test_re_declaring_200_existing_snapshots_plans_nothing():
    # How long planning takes is measured in benchmarks/bench_declare.py
    # (core_plan_seconds), not timed here.
    existing, declared = [], []
    for i in range(200):
        parent = "layer-%03d" % (i - 1) if i else ""
        existing.append(committed("layer-%03d" % i, parent, {"n": str(i)}))
        declared.append({"key": "layer-%03d" % i, "parent": parent, "labels": {"n": str(i)}})
    planned = declare.plan(existing, declared)
    assert planned.actions == []


def test_a_long_chain_plans_without_recursion_limits():
    declared = [{"key": "l%d" % i, "parent": "l%d" % (i - 1) if i else ""}
                for i in range(3000)]
    assert len(declare.plan([], reversed(declared)).actions) == 3000


# -- applying on a real root (native backend, no mounts needed) -------------------


@pytest.fixture
def snapshotter(tmp_path):
    with open_snapshotter(str(tmp_path / "root"), "native") as sn:
        yield sn


def state_of(sn):
    return {i.name: (str(i.kind), i.parent, i.labels) for i in sn.list()}


def test_apply_makes_updates_and_removes(snapshotter):
    declared = [{"key": "base", "labels": {"a": "1"}},
                {"key": "work", "parent": "base", "state": "active"},
                {"key": "look", "parent": "base", "state": "view"}]
    planned = declare.plan(declare.read_state(snapshotter), declared)
    declare.apply(snapshotter, planned)
    assert state_of(snapshotter) == {"base": ("Committed", "", {"a": "1"}),
                                     "work": ("Active", "base", {}),
                                     "look": ("View", "base", {})}
    assert declare.plan(declare.read_state(snapshotter), declared).actions == []

    out = declare.outcome(snapshotter, planned, applied=True)
    assert [e["key"] for e in out] == ["base", "work", "look"]
    assert out[0]["mounts"] is None
    assert out[1]["mounts"][0]["type"] == "bind" and "rw" in out[1]["mounts"][0]["options"]

    declared[0]["labels"] = {"b": "2"}
    declared[1] = {"key": "work", "state": "absent"}
    planned = declare.plan(declare.read_state(snapshotter), declared)
    assert steps(planned) == [("remove", "work"), ("update", "base")]
    declare.apply(snapshotter, planned)
    assert state_of(snapshotter) == {"base": ("Committed", "", {"b": "2"}),
                                     "look": ("View", "base", {})}


def test_outcome_of_a_plan_not_applied_has_no_mounts_for_what_is_not_made(snapshotter):
    planned = declare.plan([], [{"key": "w", "state": "active"}])
    out = declare.outcome(snapshotter, planned, applied=False)
    assert out == [{"key": "w", "state": "active", "exists": True, "kind": "active",
                    "parent": "", "labels": {}, "mounts": None}]
    assert declare.outcome(None, planned, applied=False)[0]["mounts"] is None


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="mounting needs root")


@needs_root
def test_a_committed_snapshot_gets_its_directory_on_top_of_its_parent(snapshotter, tmp_path):
    base_src = tmp_path / "base"
    (base_src / "etc").mkdir(parents=True)
    (base_src / "etc" / "passwd").write_text("root\n")
    (base_src / "etc" / "gone").write_text("x")
    app_src = tmp_path / "app"
    (app_src / "etc" / "gone").mkdir(parents=True)  # a directory replaces a file
    (app_src / "etc" / "app.conf").write_text("on\n")
    os.symlink("app.conf", str(app_src / "etc" / "link"))
    os.chmod(str(app_src / "etc"), 0o750)
    declared = [{"key": "base", "source": {"directory": str(base_src)}},
                {"key": "app", "parent": "base", "source": {"directory": str(app_src)}},
                {"key": "look", "parent": "app", "state": "view"}]
    declare.apply(snapshotter, declare.plan([], declared))
    # native views of a parent bind the parent's directory: read it there
    source = snapshotter.mounts("look")[0].source
    etc = os.path.join(source, "etc")
    assert sorted(os.listdir(etc)) == ["app.conf", "gone", "link", "passwd"]
    assert os.path.isdir(os.path.join(etc, "gone"))
    assert os.readlink(os.path.join(etc, "link")) == "app.conf"
    assert os.stat(etc).st_mode & 0o777 == 0o750
    assert [i.name for i in snapshotter.list()] == ["app", "base", "look"]  # no temp key left


@needs_root
def test_a_failed_fill_leaves_no_temporary_snapshot(snapshotter, tmp_path, monkeypatch):
    def broken(source, target):
        raise OSError("disk on fire")
    monkeypatch.setattr(declare.fsutil, "merge_tree", broken)
    src = tmp_path / "src"
    src.mkdir()
    with pytest.raises(declare.ActionFailed, match=r"commit of snapshot 'a' failed \(0 of 1 "
                       r"planned actions done\): disk on fire") as failed:
        declare.apply(snapshotter, declare.plan([], [{"key": "a",
                                                      "source": {"directory": str(src)}}]))
    assert isinstance(failed.value.error, OSError) and failed.value.done == []
    assert snapshotter.list() == []


@needs_root
def test_a_batch_failing_in_the_middle_names_the_snapshot_and_lists_what_was_done(
        snapshotter, tmp_path, monkeypatch):
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_text("x")
    real_merge = declare.fsutil.merge_tree
    calls = []

    def full_on_second(source, target):
        calls.append(source)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        real_merge(source, target)
    monkeypatch.setattr(declare.fsutil, "merge_tree", full_on_second)
    declared = [{"key": "one", "source": {"directory": str(src)}},
                {"key": "two", "parent": "one", "source": {"directory": str(src)}},
                {"key": "three", "parent": "two", "source": {"directory": str(src)}}]
    with pytest.raises(declare.ActionFailed) as failed:
        declare.apply(snapshotter, declare.plan(snapshotter.list(), declared))
    assert str(failed.value) == ("commit of snapshot 'two' failed (1 of 3 planned actions "
                                 "done): No space left on device")
    assert [a.key for a in failed.value.done] == ["one"]
    assert failed.value.action.key == "two"
    assert [i.name for i in snapshotter.list()] == ["one"]  # no temporary snapshot left
    monkeypatch.setattr(declare.fsutil, "merge_tree", real_merge)
    rerun = declare.plan(snapshotter.list(), declared)
    assert [a.key for a in declare.apply(snapshotter, rerun)] == ["two", "three"]
    assert not declare.plan(snapshotter.list(), declared).changed


def write_layer(path, files=(), whiteouts=(), hostile=False):
    """A plain layer tar: files {name: text}, whiteouts (names deleted)."""
    import io
    import tarfile
    with tarfile.open(str(path), "w") as tar:
        for name, text in dict(files).items():
            data = text.encode()
            member = tarfile.TarInfo(name)
            member.size = len(data)
            tar.addfile(member, io.BytesIO(data))
        for name in whiteouts:
            head, tail = os.path.split(name)
            tar.addfile(tarfile.TarInfo(os.path.join(head, ".wh." + tail)), io.BytesIO())
        if hostile:
            tar.addfile(tarfile.TarInfo("../../escape"), io.BytesIO())
    return str(path)


def test_a_committed_snapshot_from_a_layer_tar_applies_its_whiteouts(snapshotter, tmp_path):
    base = write_layer(tmp_path / "base.tar", {"a": "1", "b": "2"})
    top = write_layer(tmp_path / "top.tar", {"c": "3"}, whiteouts=["a"])
    declared = [{"key": "base", "source": {"layer": base}},
                {"key": "top", "parent": "base", "source": {"layer": top}},
                {"key": "look", "parent": "top", "state": "view"}]
    declare.apply(snapshotter, declare.plan([], declared))
    source = snapshotter.mounts("look")[0].source
    assert sorted(os.listdir(source)) == ["b", "c"]
    assert declare.plan(declare.read_state(snapshotter), declared).actions == []


def test_a_hostile_layer_is_refused_when_planning(tmp_path):
    layer = write_layer(tmp_path / "bad.tar", {"ok": "1"}, hostile=True)
    with pytest.raises(errors.InvalidArgument, match="bad.tar of snapshot 'a' is refused"):
        declare.plan([], [{"key": "a", "source": {"layer": layer}}])
