"""The error matrix (docs/semantics.md §4) and containerd's metastore cases.

Each case checks the error *class* containerd's in-tree backends raise, and
that a refused call changed nothing. They run on every target, because the
order of checks lives in shared code that a backend could still get wrong
(native's view-with-parent, for one, has no directory of its own).
"""

import pytest

from snaplab import errors
from snaplab.types import Info, Kind

from .helpers import gc_root_labels


@pytest.fixture
def population(snapshotter):
    """containerd's metastore population: two committed, three active, two views."""
    sn = snapshotter
    sn.prepare("committed-1-tmp", "", gc_root_labels())
    sn.commit("committed-1", "committed-1-tmp", gc_root_labels())
    sn.prepare("committed-2-tmp", "committed-1", gc_root_labels())
    sn.commit("committed-2", "committed-2-tmp", gc_root_labels())
    sn.prepare("active-1", "")
    sn.prepare("active-2", "committed-1")
    sn.prepare("active-3", "committed-2")
    sn.view("view-1", "")
    sn.view("view-2", "committed-2")
    return sn


def _keys(sn):
    return sorted(info.name for info in sn.list())


def test_stat_usage_update_of_unknown_key_are_not_found(population):
    with pytest.raises(errors.NotFound):
        population.stat("missing")
    with pytest.raises(errors.NotFound):
        population.usage("missing")
    with pytest.raises(errors.NotFound):
        population.update(Info(Kind.ACTIVE, "missing", labels={"a": "b"}))


def test_mounts_of_unknown_key_is_not_found(population):
    with pytest.raises(errors.NotFound):
        population.mounts("missing")


def test_mounts_of_committed_snapshot_is_failed_precondition(population):
    with pytest.raises(errors.FailedPrecondition):
        population.mounts("committed-1")


def test_prepare_or_view_on_existing_key_of_any_kind_is_already_exists(population):
    before = _keys(population)
    for key in ("committed-1", "active-1", "view-1"):
        with pytest.raises(errors.AlreadyExists):
            population.prepare(key, "")
        with pytest.raises(errors.AlreadyExists):
            population.view(key, "committed-1")
    assert _keys(population) == before


def test_prepare_or_view_with_missing_parent_is_not_found(population):
    before = _keys(population)
    with pytest.raises(errors.NotFound):
        population.prepare("new", "missing-parent")
    with pytest.raises(errors.NotFound):
        population.view("new", "missing-parent")
    assert _keys(population) == before


def test_prepare_or_view_on_active_or_view_parent_is_invalid_argument(population):
    for parent in ("active-1", "view-1"):
        with pytest.raises(errors.InvalidArgument):
            population.prepare("new", parent)
        with pytest.raises(errors.InvalidArgument):
            population.view("new", parent)
    with pytest.raises(errors.NotFound):
        population.stat("new")


def test_commit_of_missing_key_is_not_found_even_if_name_is_taken(population):
    with pytest.raises(errors.NotFound):
        population.commit("committed-1", "missing")


def test_commit_to_existing_name_is_already_exists(population):
    with pytest.raises(errors.AlreadyExists):
        population.commit("committed-2", "active-1")
    assert population.stat("active-1").kind == Kind.ACTIVE


def test_commit_of_view_or_committed_is_failed_precondition(population):
    with pytest.raises(errors.FailedPrecondition):
        population.commit("new", "view-1")
    with pytest.raises(errors.FailedPrecondition):
        population.commit("new", "view-2")
    with pytest.raises(errors.FailedPrecondition):
        population.commit("new", "committed-1")
    with pytest.raises(errors.NotFound):
        population.stat("new")


def test_commit_keeps_parent_and_replaces_labels(population):
    population.update(Info(Kind.ACTIVE, "active-2", labels={"from": "active"}))
    population.commit("committed-3", "active-2", {"from": "commit"})
    info = population.stat("committed-3")
    assert (info.kind, info.parent, info.labels) == (Kind.COMMITTED, "committed-1",
                                                     {"from": "commit"})
    assert info.created == info.updated
    with pytest.raises(errors.NotFound):
        population.stat("active-2")


def _needs_rebase(target):
    if not target.traits.rebase:
        pytest.skip(target.traits.skip_reason("rebase", [True]))


def test_commit_rebase_fills_empty_parent_or_repeats_it(population, target):
    _needs_rebase(target)
    population.commit("rebased", "active-1", parent="committed-1")
    assert population.stat("rebased").parent == "committed-1"
    population.commit("same", "active-2", parent="committed-1")
    assert population.stat("same").parent == "committed-1"
    # the rebased snapshot now holds its new parent: it cannot be removed first
    with pytest.raises(errors.FailedPrecondition):
        population.remove("committed-1")


def test_commit_rebase_to_other_parent_is_invalid_argument(population, target):
    _needs_rebase(target)
    with pytest.raises(errors.InvalidArgument):
        population.commit("new", "active-3", parent="committed-1")
    assert population.stat("active-3").kind == Kind.ACTIVE


def test_commit_rebase_to_missing_or_uncommitted_parent_fails(population, target):
    _needs_rebase(target)
    with pytest.raises(errors.NotFound):
        population.commit("new", "active-1", parent="missing")
    with pytest.raises(errors.FailedPrecondition):
        population.commit("new", "active-1", parent="view-1")
    assert population.stat("active-1").parent == ""


def test_remove_of_unknown_key_is_not_found(population):
    with pytest.raises(errors.NotFound):
        population.remove("missing")


def test_remove_fails_while_children_exist(population):
    for parent in ("committed-1", "committed-2"):
        with pytest.raises(errors.FailedPrecondition, match="remove"):
            population.remove(parent)
        population.stat(parent)


def test_removed_key_and_name_are_reusable_at_once(population):
    population.remove("active-3")
    population.prepare("active-3", "")
    population.remove("view-2")
    population.remove("active-3")
    population.prepare("tmp", "committed-1")
    population.remove("committed-2")
    population.commit("committed-2", "tmp")
    assert population.stat("committed-2").parent == "committed-1"


def test_update_of_immutable_field_is_invalid_argument(population):
    before = population.stat("committed-1")
    for path in ("parent", "kind", "name", "created", "updated", "labelsx"):
        with pytest.raises(errors.InvalidArgument):
            population.update(Info(Kind.ACTIVE, "committed-1", parent="x",
                                   labels={"new": "label"}), path)
    assert population.stat("committed-1") == before


def test_walk_of_a_new_snapshotter_finds_nothing(snapshotter):
    """Walk (containerd's List) before any snapshot is made is empty, not
    an error: a client lists a fresh snapshotter first thing."""
    assert snapshotter.list() == []
    assert snapshotter.list("kind==committed") == []


def test_walk_with_malformed_filter_is_invalid_argument(population):
    for bad in ('name==', 'labels."unterminated', "kind=active", ",", "name~=("):
        with pytest.raises(errors.InvalidArgument):
            population.list(bad)


def test_oversized_label_is_invalid_argument_and_changes_nothing(population):
    big = {"big": "x" * 4094}  # key + value = 4097 bytes
    with pytest.raises(errors.InvalidArgument):
        population.prepare("new", "", big)
    with pytest.raises(errors.InvalidArgument):
        population.commit("new", "active-1", big)
    with pytest.raises(errors.InvalidArgument):
        population.update(Info(Kind.ACTIVE, "active-1", labels=big))
    with pytest.raises(errors.NotFound):
        population.stat("new")
    assert population.stat("active-1").labels == {}
    population.prepare("just-fits", "", {"big": "x" * 4093})


def test_empty_or_nul_keys_are_invalid_argument(population):
    before = _keys(population)
    for bad in ("", "nul\x00byte"):
        with pytest.raises(errors.InvalidArgument):
            population.prepare(bad, "")
        with pytest.raises(errors.InvalidArgument):
            population.view(bad, "")
        with pytest.raises(errors.InvalidArgument):
            population.commit(bad, "active-1")
    assert _keys(population) == before


def test_ids_increase_and_are_never_reused(snapshotter, target):
    """On disk a snapshot is named by its id; ids grow and Commit keeps them."""
    sn = snapshotter
    first = sn.prepare("a", "")
    sn.remove("a")
    second = sn.prepare("a", "")
    if target.owns_root and target.traits.storage_layout in ("snaplab-native",
                                                             "snaplab-overlay",
                                                             "snaplab-erofs"):
        # the id is the directory name under <root>/snapshots/
        def snapshot_id(mounts):
            source = mounts[0].source.rstrip("/")
            parts = source.split("/")
            return int(parts[-2] if parts[-1] == "fs" else parts[-1])
        assert snapshot_id(second) > snapshot_id(first)
        sn.commit("c", "a")
        # a view of one parent binds the parent's own data: same id as before
        assert snapshot_id(sn.view("v", "c")) == snapshot_id(second)
