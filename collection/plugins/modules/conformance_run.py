#!/usr/bin/python
# Copyright (c) snaplab maintainers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
module: conformance_run
short_description: The conformance role's engine (role-private); copies the suite to a node, runs it, returns the results
version_added: "0.3.0"
description:
  - Private to the role C(snaplab.snapshots.conformance), whose engine it is. Use the role; this
    module's options follow the role's variables and can change with it.
  - One call on the node does what took a task each (a task costs seconds on a slow node, whatever
    it does) - makes O(workdir) and O(fs_dir), replaces the previous copy of the suite and the
    snaplab core in O(workdir) by the one in O(archive) (a case module left from an older suite
    would still be collected), makes O(workdir) pytest's rootdir, removes the previous results,
    runs O(argv) in O(workdir) and returns its exit code and output, and the result files
    O(results) that the run left in O(workdir)/results/.
  - Its action plugin packs the suite on the controller (from O(suite_dir)) into O(archive) and
    writes the result files and pytest's output to O(results_dir)/<inventory_hostname>/ on the
    controller. Files the run did not write are removed there, so that the directory holds only
    this run's results.
  - The run's exit code is a result, not a failure; the role decides what fails the host.
author:
  - snaplab maintainers (!UNKNOWN)
options:
  workdir:
    description: Where the suite and the core are copied on the node; the run's working directory.
    type: path
    required: true
  fs_dir:
    description: A directory the run needs (the suite's loop images and mounts); made if missing.
    type: path
    required: true
  archive:
    description:
      - The suite and the core, a gzip tar of C(snaplab/) and C(conformance/), base64-encoded.
      - The action plugin sets it from O(suite_dir); not logged.
    type: str
    required: true
  argv:
    description: The command the run is, in O(workdir) (the role's pytest command line).
    type: list
    elements: str
    required: true
  results:
    description:
      - The names of the files in O(workdir)/results/ to return (those that exist). The action
        plugin writes them to the controller, and removes there those the run did not write.
    type: list
    elements: str
    required: true
  suite_dir:
    description:
      - Controller directory holding C(snaplab/) and C(conformance/) (the role's C(files/)); read by
        the action plugin only.
    type: path
  results_dir:
    description:
      - Controller directory; the action plugin writes the result files and C(pytest-output.txt) to
        its subdirectory <inventory_hostname>/. Read by the action plugin only.
    type: path
extends_documentation_fragment:
  - snaplab.snapshots._attributes
attributes:
  action:
    description: Indicates this has a corresponding action plugin so some parts of the options can be executed on the controller.
    support: full
  check_mode:
    support: none
    details:
      - The role runs nothing in check mode and does not call the module then.
  diff_mode:
    support: none
  idempotent:
    support: none
    details:
      - Every call runs the suite again (it makes and removes filesystems and writes new results).
  platform:
    platforms: posix
seealso:
  - module: snaplab.snapshots.node_storage
"""

EXAMPLES = r"""
# The role calls it so; use the role.
- name: Run the suite
  snaplab.snapshots.conformance_run:
    suite_dir: "{{ role_path }}/files"
    workdir: /var/tmp/snaplab-conformance
    fs_dir: /var/tmp/snaplab-conformance/fs
    argv: [/usr/bin/python3, -m, pytest, conformance, --backends, native, --filesystems, host-dir,
           --results-json, /var/tmp/snaplab-conformance/results/results.json]
    results: [results.json]
    results_dir: "{{ playbook_dir }}/conformance-results"
  register: conformance_run
"""

RETURN = r"""
rc:
  description: The run's exit code (pytest's; 1 is failed cases, 2 or more a harness error).
  returned: always
  type: int
  sample: 0
stdout:
  description: What the run printed.
  returned: always
  type: str
stderr:
  description: What the run printed on its standard error.
  returned: always
  type: str
written:
  description: The controller files the action plugin wrote (the result files that exist, and C(pytest-output.txt)).
  returned: always
  type: list
  elements: str
  sample: [/srv/results/node-1/results.json, /srv/results/node-1/junit.xml, /srv/results/node-1/pytest-output.txt]
"""

import base64
import io
import os
import shutil
import tarfile

from ansible.module_utils.basic import AnsibleModule

# The copy the archive replaces: what the suite imports from the working directory.
COPIED = ("snaplab", "conformance")
RESULTS = "results"
# Makes the work directory pytest's rootdir, so no ini file above it is picked up.
PYTEST_INI = ("# Written by snaplab.snapshots.conformance: makes this directory pytest's rootdir,\n"
              "# so no ini file above it is picked up.\n[pytest]\naddopts = -ra\n")

ARGUMENT_SPEC = dict(
    workdir=dict(type="path", required=True),
    fs_dir=dict(type="path", required=True),
    archive=dict(type="str", required=True, no_log=True),
    argv=dict(type="list", elements="str", required=True),
    results=dict(type="list", elements="str", required=True),
    suite_dir=dict(type="path"),
    results_dir=dict(type="path"),
)


def prepare(workdir, fs_dir, archive):
    """The work directories, this archive's copy instead of the previous one,
    the rootdir's pytest.ini, and no previous results."""
    for directory in (workdir, fs_dir):
        os.makedirs(directory, mode=0o755, exist_ok=True)
    for name in COPIED + (RESULTS,):
        shutil.rmtree(os.path.join(workdir, name), ignore_errors=True)
    with tarfile.open(fileobj=io.BytesIO(base64.b64decode(archive)), mode="r:gz") as tar:
        members = [member for member in tar.getmembers() if member.name.split("/")[0] in COPIED]
        if hasattr(tarfile, "data_filter"):  # Python >= 3.12 and the backports
            tar.extractall(workdir, members=members, filter="data")
        else:
            tar.extractall(workdir, members=members)  # noqa: S202 - the controller's own archive
    with open(os.path.join(workdir, "pytest.ini"), "w", encoding="utf-8") as ini:
        ini.write(PYTEST_INI)


def collect(workdir, names):
    """{name: base64 of the file} for the result files that exist."""
    found = {}
    for name in names:
        path = os.path.join(workdir, RESULTS, name)
        if os.path.isfile(path):
            with open(path, "rb") as stream:
                found[name] = base64.b64encode(stream.read()).decode("ascii")
    return found


def main():
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC)
    params = module.params
    try:
        prepare(params["workdir"], params["fs_dir"], params["archive"])
    except (OSError, tarfile.TarError, ValueError) as err:
        module.fail_json(msg="copying the suite to %s: %s" % (params["workdir"], err))
    rc, stdout, stderr = module.run_command(params["argv"], cwd=params["workdir"])
    # rc is the run's result, for the role to judge: an explicit failed=False
    # keeps Ansible from taking a non-zero rc for the module's failure.
    # Without the trailing newline, as the command module says it.
    module.exit_json(changed=True, failed=False, rc=rc, stdout=stdout.rstrip("\n"), stderr=stderr.rstrip("\n"),
                     result_files=collect(params["workdir"], params["results"]))


if __name__ == "__main__":
    main()
