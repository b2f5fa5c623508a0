# Copyright (c) snaplab maintainers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""snaplab.snapshots.snapshot_info in-process, on a native root in a temp dir."""

from __future__ import annotations

import os

import pytest

from ansible_collections.snaplab.snapshots.plugins.module_utils._snaplab import open_snapshotter
from ansible_collections.snaplab.snapshots.plugins.modules import snapshot_info


@pytest.fixture
def root(tmp_path):
    path = str(tmp_path / "root")
    with open_snapshotter(path, "native") as sn:
        sn.prepare("base-tmp", "")
        sn.commit("base", "base-tmp", labels={"tier": "base"})
        sn.prepare("work", "base")
        sn.view("look", "base")
    return path


def info(run_module, root, **args):
    return run_module(snapshot_info.main, dict(args, root=root, backend="native"), check=True)


def test_everything_in_key_order(run_module, root):
    result = info(run_module, root)
    assert not result["changed"]
    assert [s["key"] for s in result["snapshots"]] == ["base", "look", "work"]
    base = result["snapshots"][0]
    assert base["kind"] == "committed" and base["labels"] == {"tier": "base"}
    assert base["created"].endswith("Z")
    assert "usage" not in base and "mounts" not in base


def test_filters_usage_and_mounts(run_module, root):
    result = info(run_module, root, filters=["kind==active", "kind==committed"],
                  usage=True, mounts=True)
    by_key = {s["key"]: s for s in result["snapshots"]}
    assert sorted(by_key) == ["base", "work"]
    assert by_key["base"]["mounts"] is None
    assert by_key["work"]["mounts"][0]["options"] == ["rbind", "rw"]
    assert set(by_key["work"]["usage"]) == {"size", "inodes"}


def test_keys_stat_and_list_the_missing(run_module, root):
    result = info(run_module, root, keys=["work", "nope"])
    assert [s["key"] for s in result["snapshots"]] == ["work"]
    assert result["missing"] == ["nope"]


def test_a_malformed_filter_is_an_invalid_argument(run_module, root):
    result = info(run_module, root, filters=["kind=="])
    assert result["failed"] and result["error_class"] == "InvalidArgument"


def test_a_missing_root_is_not_found_and_not_made(run_module, tmp_path):
    missing = str(tmp_path / "nothing")
    result = info(run_module, missing)
    assert result["failed"] and result["error_class"] == "NotFound"
    assert not os.path.exists(missing)


def test_keys_and_filters_are_mutually_exclusive(run_module, root):
    result = info(run_module, root, keys=["a"], filters=["kind==view"])
    assert result["failed"] and "mutually exclusive" in result["msg"]
