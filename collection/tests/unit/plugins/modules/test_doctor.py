# Copyright (c) snaplab maintainers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""snaplab.snapshots.doctor in-process, on a native root in a temp dir with
the leftovers of a killed Prepare (made by hand here; the integration tests
kill a real one)."""

from __future__ import annotations

import os

import pytest

from ansible_collections.snaplab.snapshots.plugins.module_utils._snaplab import open_snapshotter
from ansible_collections.snaplab.snapshots.plugins.modules import doctor


@pytest.fixture
def root(tmp_path):
    path = str(tmp_path / "root")
    with open_snapshotter(path, "native") as sn:
        sn.prepare("base-tmp", "")
        sn.commit("base", "base-tmp")
    os.makedirs(os.path.join(path, "snapshots", "new-left-by-a-crash", "etc"))
    return path


def run(run_module, root, check=False, **args):
    return run_module(doctor.main, dict(args, root=root, backend="native"), check=check)


def test_reports_without_changing_anything(run_module, root):
    result = run(run_module, root)
    assert not result["changed"] and not result["clean"]
    assert [f["kind"] for f in result["findings"]] == ["orphan"]
    assert result["findings"][0]["fix"] == "delete it"
    assert os.path.isdir(os.path.join(root, "snapshots", "new-left-by-a-crash"))


def test_fix_in_check_mode_predicts_and_changes_nothing(run_module, root):
    result = run(run_module, root, check=True, fix=True)
    assert result["changed"] and len(result["repaired"]) == 1
    assert os.path.isdir(os.path.join(root, "snapshots", "new-left-by-a-crash"))


def test_fix_repairs_and_a_second_run_changes_nothing(run_module, root):
    result = run(run_module, root, fix=True)
    assert result["changed"] and result["clean"] and result["findings"] == []
    assert not os.path.exists(os.path.join(root, "snapshots", "new-left-by-a-crash"))
    again = run(run_module, root, fix=True)
    assert not again["changed"] and again["clean"]


def test_fail_on_findings(run_module, root):
    result = run(run_module, root, fail_on_findings=True)
    assert result["failed"] and "orphan" in result["msg"]
