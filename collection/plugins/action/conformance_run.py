# Copyright (c) snaplab maintainers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

# Note that this action plugin is PRIVATE to the collection: it is the
# conformance role's, with its module, and can change at any time.

"""The controller's half of conformance_run: the suite packed into the
module's arguments (no archive file, no copy task, no remote temporary
file: the node is reached once), and the results the module returns written
to <results_dir>/<inventory_hostname>/ (no fetch)."""

from __future__ import annotations

import base64
import io
import os
import tarfile

from ansible.errors import AnsibleActionFail, AnsibleActionSkip
from ansible.plugins.action import ActionBase

# What the role's files/ must hold (collection/stage.py copies them there).
SUITE = ("snaplab", "conformance")
OUTPUT = "pytest-output.txt"


def _not_cached(member):
    """tarfile's filter: no bytecode caches in the archive."""
    if "__pycache__" in member.name.split("/") or member.name.endswith(".pyc"):
        return None
    return member


def pack(suite_dir):
    """The gzip tar of SUITE in suite_dir, base64-encoded (the module's archive)."""
    missing = [name for name in SUITE if not os.path.isfile(os.path.join(suite_dir, name, "__init__.py"))]
    if missing:
        raise AnsibleActionFail(
            "%s/ has no copy of %s. Use this role from the staged collection (python3 "
            "collection/stage.py DEST, then ANSIBLE_COLLECTIONS_PATH=DEST), which puts them there."
            % (suite_dir, " and ".join(name + "/" for name in missing)))
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name in SUITE:
            tar.add(os.path.join(suite_dir, name), arcname=name, filter=_not_cached)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def keep(host_dir, names, result_files, stdout, stderr):
    """Write this run's result files and output to host_dir; a result file the
    run did not write goes, so that what is there is this run's. Returns the
    paths written."""
    os.makedirs(host_dir, exist_ok=True)
    written = []
    for name in names:
        path = os.path.join(host_dir, name)
        if name in result_files:
            with open(path, "wb") as stream:
                stream.write(base64.b64decode(result_files[name]))
            written.append(path)
        elif os.path.exists(path):
            os.unlink(path)
    path = os.path.join(host_dir, OUTPUT)
    with open(path, "w", encoding="utf-8") as stream:
        stream.write("%s\n%s\n" % (stdout, stderr))
    written.append(path)
    return written


class ActionModule(ActionBase):
    """Pack, run the module once, keep the results on the controller."""

    TRANSFERS_FILES = False

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        del tmp  # unused since ansible-core 2.7
        task_vars = task_vars or {}
        if self._task.check_mode:
            raise AnsibleActionSkip("check mode: the conformance suite is not run")
        args = dict(self._task.args)
        for required in ("suite_dir", "results_dir", "results"):
            if not args.get(required):
                raise AnsibleActionFail("%s is required" % required)
        args["archive"] = pack(args["suite_dir"])
        try:
            done = self._execute_module(module_args=args, task_vars=task_vars)
        finally:
            self._remove_tmp_path(self._connection._shell.tmpdir)
        result.update(done)
        if done.get("failed") or "rc" not in done:
            return result
        result["written"] = keep(os.path.join(args["results_dir"], task_vars["inventory_hostname"]),
                                 args["results"],
                                 result.pop("result_files", None) or {}, done["stdout"], done["stderr"])
        return result
