# Copyright (c) snaplab maintainers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""snaplab.snapshots.conformance_run in-process, on temp dirs: a stand-in
suite and a stand-in run (the integration tests run the real suite through
the role; tests/unit/plugins/action/ has its action plugin's packing and
keeping, which run on the controller)."""

from __future__ import annotations

import base64
import io
import json
import os
import sys
import tarfile

import pytest

from ansible_collections.snaplab.snapshots.plugins.modules import conformance_run

# Writes results/results.json in the working directory, says which suite it
# sees, and exits with the code it is given.
RUN = ("import json, os, sys; os.makedirs('results', exist_ok=True); "
       "json.dump({'suite': open('conformance/__init__.py').read()}, open('results/results.json', 'w')); "
       "print('ran'); sys.stderr.write('said\\n'); sys.exit(int(sys.argv[1]))")


@pytest.fixture
def suite_dir(tmp_path):
    """A stand-in of the role's files/: the two packages, with a cache that must not travel."""
    files = tmp_path / "files"
    for name in ("snaplab", "conformance"):
        (files / name / "__pycache__").mkdir(parents=True)
        (files / name / "__init__.py").write_text("# this suite's %s\n" % name)
        (files / name / "__pycache__" / "x.cpython-311.pyc").write_bytes(b"\0")
    return str(files)


def archive_of(suite_dir):
    """The module's archive of the stand-in suite, as the action plugin makes
    it (a base64 gzip tar of snaplab/ and conformance/, without caches)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name in ("snaplab", "conformance"):
            tar.add(os.path.join(suite_dir, name), arcname=name,
                    filter=lambda info: None if "__pycache__" in info.name else info)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def run(run_module, suite_dir, workdir, rc=0):
    return run_module(conformance_run.main, {
        "workdir": workdir, "fs_dir": os.path.join(workdir, "fs"), "archive": archive_of(suite_dir),
        "argv": [sys.executable, "-c", RUN, str(rc)], "results": ["results.json", "junit.xml"]})


def test_the_old_copy_and_results_are_replaced_and_the_run_is_returned(run_module, suite_dir, tmp_path):
    workdir = str(tmp_path / "node")
    for stale in ("conformance/test_left_by_an_older_suite.py", "results/junit.xml"):
        os.makedirs(os.path.dirname(os.path.join(workdir, stale)), exist_ok=True)
        with open(os.path.join(workdir, stale), "w") as f:
            f.write("old\n")
    result = run(run_module, suite_dir, workdir)
    assert result["changed"] is True and result["failed"] is False and result["rc"] == 0, result
    assert (result["stdout"], result["stderr"]) == ("ran", "said")
    assert not os.path.exists(os.path.join(workdir, "conformance", "test_left_by_an_older_suite.py"))
    assert not os.path.exists(os.path.join(workdir, "conformance", "__pycache__"))
    assert os.path.isdir(os.path.join(workdir, "fs"))
    with open(os.path.join(workdir, "pytest.ini")) as f:
        assert "[pytest]" in f.read()
    # the stale junit.xml went with the old results: only what this run wrote comes back
    assert sorted(result["result_files"]) == ["results.json"]
    said = json.loads(base64.b64decode(result["result_files"]["results.json"]))
    assert said == {"suite": "# this suite's conformance\n"}


def test_a_failing_run_is_a_result_not_a_module_failure(run_module, suite_dir, tmp_path):
    result = run(run_module, suite_dir, str(tmp_path / "node"), rc=3)
    assert result["failed"] is False and result["rc"] == 3, result


def test_an_archive_that_is_none_fails_before_anything_runs(run_module, tmp_path):
    workdir = str(tmp_path / "node")
    result = run_module(conformance_run.main, {
        "workdir": workdir, "fs_dir": workdir + "/fs", "archive": base64.b64encode(b"not a tar").decode(),
        "argv": ["touch", str(tmp_path / "ran")], "results": []})
    assert result["failed"] is True and "copying the suite to %s" % workdir in result["msg"], result
    assert not os.path.exists(str(tmp_path / "ran"))
