# Copyright (c) snaplab maintainers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""snaplab.snapshots.snapshot in-process, on a native root in a temp dir
(no mounts: snapshots without a source need none)."""

from __future__ import annotations

import os

import pytest

from ansible_collections.snaplab.snapshots.plugins.module_utils._snaplab import mount as mountlib
from ansible_collections.snaplab.snapshots.plugins.module_utils._snaplab import open_snapshotter
from ansible_collections.snaplab.snapshots.plugins.modules import snapshot

CHAIN = [
    {"key": "base"},
    {"key": "app", "parent": "base", "labels": {"tier": "app"}},
    {"key": "work", "parent": "app", "state": "active"},
]


@pytest.fixture
def root(tmp_path):
    return str(tmp_path / "root")


def keys_on_disk(root):
    with open_snapshotter(root, "native") as sn:
        return {i.name: (i.kind.filter_value, i.parent, i.labels) for i in sn.list()}


def declare(run_module, root, check=False, diff=False, **args):
    return run_module(snapshot.main, dict(args, root=root, backend="native"), check, diff)


@pytest.mark.parametrize("args, message", [
    ({}, "one of the following is required: snapshots, key"),
    ({"key": "a", "snapshots": [{"key": "b"}]}, "mutually exclusive: snapshots|key"),
    ({"parent": "p", "snapshots": [{"key": "b"}]}, "mutually exclusive: snapshots|parent"),
    ({"key": "a", "state": "present"}, "value of state must be one of"),
    ({"snapshots": [{"parent": "x"}]}, "missing required arguments: key"),
    ({"key": "a", "source": {"directory": "/x", "layer": "/y"}}, "mutually exclusive: directory|layer"),
    ({"key": "a", "source": {}}, "one of the following is required: directory, layer"),
])
def test_bad_arguments_fail_with_a_clear_message(run_module, root, args, message):
    result = declare(run_module, root, **args)
    assert result["failed"]
    assert message in result["msg"]
    assert not os.path.exists(root)


def test_declare_then_redeclare_is_not_changed(run_module, root):
    first = declare(run_module, root, snapshots=CHAIN)
    assert first["changed"]
    assert [(a["action"], a["key"]) for a in first["actions"]] == [
        ("commit", "base"), ("commit", "app"), ("prepare", "work")]
    assert keys_on_disk(root) == {"base": ("committed", "", {}),
                                  "app": ("committed", "base", {"tier": "app"}),
                                  "work": ("active", "app", {})}
    work = first["snapshots"][2]
    assert work["key"] == "work" and work["mounts"][0]["type"] == "bind"

    second = declare(run_module, root, snapshots=CHAIN)
    assert not second["changed"] and second["actions"] == []
    assert second["snapshots"] == first["snapshots"]


def test_top_level_flags_are_the_defaults_of_items(run_module, root):
    declare(run_module, root, snapshots=CHAIN)
    result = declare(run_module, root, state="absent", recursive=True,
                     snapshots=[{"key": "base"}, {"key": "other", "state": "view"}])
    assert [(a["action"], a["key"]) for a in result["actions"]] == [
        ("remove", "work"), ("remove", "app"), ("remove", "base"), ("view", "other")]
    assert keys_on_disk(root) == {"other": ("view", "", {})}


def test_check_mode_on_a_missing_root_makes_nothing_and_reports(run_module, root):
    result = declare(run_module, root, check=True, diff=True, snapshots=CHAIN)
    assert result["changed"] and len(result["actions"]) == 3
    assert result["diff"]["before"] == {}
    assert set(result["diff"]["after"]) == {"base", "app", "work"}
    assert result["snapshots"][2]["mounts"] is None
    assert not os.path.exists(root)


def test_check_mode_on_a_root_changes_nothing(run_module, root):
    declare(run_module, root, snapshots=CHAIN)
    before = keys_on_disk(root)
    result = declare(run_module, root, check=True, key="app", parent="base",
                     labels={"tier": "web"})
    assert result["changed"] and result["actions"][0]["action"] == "update"
    assert "diff" not in result  # only in diff mode
    assert keys_on_disk(root) == before


def test_absent_on_a_missing_root_makes_no_root(run_module, root):
    result = declare(run_module, root, key="gone", state="absent")
    assert not result["changed"]
    assert not os.path.exists(root)


def test_a_conflict_fails_with_what_differs_and_its_class(run_module, root):
    declare(run_module, root, snapshots=CHAIN)
    result = declare(run_module, root, key="work", parent="base", state="active")
    assert result["failed"] and result["error_class"] == "AlreadyExists"
    assert "its parent is 'app', declared 'base'" in result["msg"]
    assert "replace" in result["msg"]


def test_a_failure_while_applying_reports_the_actions_done_and_the_failed_one(
        run_module, root, monkeypatch):
    def broken(snapshotter, planned):
        error = mountlib.MountError(1, "mount x on y: Operation not permitted")
        raise snapshot.declare.ActionFailed(planned.actions[1], error, planned.actions[:1],
                                            len(planned.actions))
    monkeypatch.setattr(snapshot.declare, "apply", broken)
    result = declare(run_module, root, snapshots=CHAIN)
    assert result["failed"] and result["error_class"] == "MountError"
    assert "Operation not permitted" in result["msg"]
    assert result["msg"].startswith("%s of snapshot %r failed (1 of 3 planned actions done)"
                                    % (result["failed_action"]["action"],
                                       result["failed_action"]["key"]))
    assert len(result["actions"]) == 1


def test_an_unknown_backend_option_is_an_invalid_argument(run_module, root):
    declare(run_module, root, key="a")
    result = run_module(snapshot.main, dict(root=root, backend="native", key="a",
                                            backend_options={"colour": "red"}))
    assert result["failed"] and result["error_class"] == "InvalidArgument"
    assert "colour" in result["msg"]
