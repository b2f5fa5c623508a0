# Copyright (c) snaplab maintainers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""The conformance_run action plugin's controller side: packing the suite
for the module and keeping a run's results (controller code: ansible-test
runs it with ansible importable, unlike the module's tests)."""

from __future__ import annotations

import base64
import io
import os
import tarfile

import pytest

from ansible.errors import AnsibleActionFail

from ansible_collections.snaplab.snapshots.plugins.action import conformance_run as action


def test_the_suite_is_packed_without_its_caches(tmp_path):
    for name in ("snaplab", "conformance"):
        (tmp_path / name / "__pycache__").mkdir(parents=True)
        (tmp_path / name / "__init__.py").write_text("# %s\n" % name)
        (tmp_path / name / "__pycache__" / "x.cpython-311.pyc").write_bytes(b"\0")
    with tarfile.open(fileobj=io.BytesIO(base64.b64decode(action.pack(str(tmp_path)))), mode="r:gz") as tar:
        names = sorted(tar.getnames())
    assert names == ["conformance", "conformance/__init__.py", "snaplab", "snaplab/__init__.py"]


def test_a_role_without_the_suite_is_told_how_to_get_it(tmp_path):
    (tmp_path / "snaplab").mkdir()
    (tmp_path / "snaplab" / "__init__.py").write_text("")
    with pytest.raises(AnsibleActionFail, match=r"has no copy of conformance/\. .*collection/stage\.py"):
        action.pack(str(tmp_path))


def test_kept_results_are_this_runs_only(tmp_path):
    host_dir = str(tmp_path / "results" / "node-1")
    os.makedirs(host_dir)
    for name in ("results.json", "junit.xml", "notes.txt"):
        (tmp_path / "results" / "node-1" / name).write_text("from an earlier run\n")
    written = action.keep(host_dir, ["results.json", "junit.xml"],
                          {"junit.xml": base64.b64encode(b"<testsuites/>").decode()}, "out", "err")
    assert written == [os.path.join(host_dir, "junit.xml"), os.path.join(host_dir, "pytest-output.txt")]
    assert sorted(os.listdir(host_dir)) == ["junit.xml", "notes.txt", "pytest-output.txt"]
    assert (tmp_path / "results" / "node-1" / "junit.xml").read_text() == "<testsuites/>"
    assert (tmp_path / "results" / "node-1" / "pytest-output.txt").read_text() == "out\nerr\n"
