# Copyright (c) snaplab maintainers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""snaplab.snapshots.mount in-process and in check mode (nothing is mounted),
on a native root in a temp dir; the integration tests mount for real."""

from __future__ import annotations

import os

import pytest

from ansible_collections.snaplab.snapshots.plugins.module_utils._snaplab import open_snapshotter
from ansible_collections.snaplab.snapshots.plugins.modules import mount


@pytest.fixture
def root(tmp_path):
    path = str(tmp_path / "root")
    with open_snapshotter(path, "native") as sn:
        sn.prepare("work", "")
    return path


def run(run_module, root, path, **args):
    return run_module(mount.main, dict(args, root=root, backend="native", path=path),
                      check=True, diff=True)


def test_mounting_plans_the_directory_and_the_mount(run_module, root, tmp_path):
    path = str(tmp_path / "rootfs")
    result = run(run_module, root, path, key="work")
    assert not result.get("failed"), result
    assert result["changed"] and result["mounted"] and result["mount_point"] == path
    assert result["actions"] == [dict(action="mkdir", path=path), dict(action="mount", path=path)]
    with open_snapshotter(root, "native") as sn:
        assert [m["source"] for m in result["mounts"]] == [m.source for m in sn.mounts("work")]
    assert result["diff"]["before"]["mounted"] is False
    assert not os.path.exists(path)


def test_a_missing_root_is_not_found_unless_unmounting(run_module, tmp_path):
    missing, path = str(tmp_path / "missing"), str(tmp_path / "rootfs")
    result = run(run_module, missing, path, key="work")
    assert result["failed"] and result["error_class"] == "NotFound", result
    assert result["msg"] == "no snapshotter root at %s (no metadata.db there)" % missing
    result = run(run_module, missing, path, key="work", state="unmounted")
    assert not result.get("failed") and not result["changed"], result
    assert result["mounts"] is None and result["mounted"] is False
    assert not os.path.exists(missing)


def test_a_missing_snapshot_is_not_found_unless_unmounting(run_module, root, tmp_path):
    path = str(tmp_path / "rootfs")
    result = run(run_module, root, path, key="gone")
    assert result["failed"] and result["error_class"] == "NotFound", result
    result = run(run_module, root, path, key="gone", state="unmounted")
    assert not result.get("failed") and result["actions"] == [], result


def test_a_path_that_is_a_file_is_an_invalid_argument(run_module, root, tmp_path):
    path = tmp_path / "file"
    path.write_text("not a directory")
    result = run(run_module, root, str(path), key="work")
    assert result["failed"] and result["error_class"] == "InvalidArgument", result
    assert "exists and is not a directory" in result["msg"]
