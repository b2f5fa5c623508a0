"""Running real ansible-playbook against localhost from the integration tests.

LocalAnsible owns a temp directory's inventory (localhost, connection local,
this interpreter) and environment (the staged collection, no user config);
each run returns a Play with the recap's counts and the whole output.
"""

import json
import os
import re
import subprocess
import sys

RECAP = re.compile(r"^localhost\s*:\s*ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)",
                   re.MULTILINE)

ROLE_PLAYBOOK = """\
- hosts: localhost
  gather_facts: false
  roles:
    - snaplab.snapshots.{role}
"""


class Play:
    """One ansible-playbook run: rc, output, and the recap's counts."""

    def __init__(self, proc):
        self.rc = proc.returncode
        self.output = proc.stdout + proc.stderr
        found = RECAP.search(self.output)
        assert found, "no PLAY RECAP in:\n" + self.output
        self.ok, self.changed, self.unreachable, self.failed = map(int, found.groups())

    def failed_at(self, task, role="node_storage"):
        """Whether the play stopped on a task of `role` whose name starts with `task`."""
        headers = re.findall(r"^TASK \[snaplab\.snapshots\.%s : ([^\]]*)\]" % role, self.output,
                             re.MULTILINE)
        return self.rc != 0 and bool(headers) and headers[-1].startswith(task)

    def changed_tasks(self, role="node_storage"):
        """The names (before " | entry") of the role's tasks that reported a change."""
        blocks = re.split(r"^TASK \[snaplab\.snapshots\.%s : " % role, self.output,
                          flags=re.MULTILINE)[1:]
        return [block.split(" | ")[0] for block in blocks
                if re.search(r"^changed:", block, re.MULTILINE)]

    def __repr__(self):
        return self.output  # what pytest shows when an assertion on a run fails


class LocalAnsible:
    """ansible-playbook on localhost, with its files in `base`."""

    def __init__(self, base, collections, ansible_playbook):
        self.base = base
        self.ansible_playbook = ansible_playbook
        inventory = os.path.join(base, "inventory")
        with open(inventory, "w") as f:
            f.write("localhost ansible_connection=local ansible_python_interpreter=%s\n"
                    % sys.executable)
        self.env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=collections,
                        ANSIBLE_INVENTORY=inventory, ANSIBLE_NOCOLOR="1",
                        ANSIBLE_LOCAL_TEMP=os.path.join(base, "ansible-tmp"),
                        ANSIBLE_RETRY_FILES_ENABLED="0")
        self.env.pop("ANSIBLE_CONFIG", None)

    def run(self, playbook_text, variables, check=False, name="play"):
        playbook = os.path.join(self.base, name + ".yml")
        with open(playbook, "w") as f:
            f.write(playbook_text)
        extra = os.path.join(self.base, name + "-vars.json")
        with open(extra, "w") as f:
            json.dump(variables, f)
        argv = [self.ansible_playbook, playbook, "-e", "@" + extra] + (["--check"] if check else [])
        return Play(subprocess.run(argv, cwd=self.base, env=self.env, capture_output=True,
                                   text=True, timeout=900))

    def role(self, role, variables, check=False):
        return self.run(ROLE_PLAYBOOK.format(role=role), variables, check, name=role)


# Declares snapshots with the snapshot module and writes what it returned to `result_file`.
SNAPSHOT_PLAYBOOK = """\
- hosts: localhost
  gather_facts: false
  tasks:
    - name: Declare the snapshots
      snaplab.snapshots.snapshot:
        root: "{{ root }}"
        backend: "{{ backend }}"
        snapshots: "{{ snapshots }}"
      register: declared
    - name: Keep what the module returned
      ansible.builtin.copy:
        content: "{{ declared | to_json }}"
        dest: "{{ result_file }}"
        mode: "0600"
      changed_when: false
"""


def declare_snapshots(ansible, root, backend, snapshots):
    """(Play, the snapshot module's result) for one declaration on `root`."""
    result_file = os.path.join(ansible.base, "snapshot-result.json")
    if os.path.exists(result_file):
        os.unlink(result_file)
    play = ansible.run(SNAPSHOT_PLAYBOOK, {"root": root, "backend": backend,
                                           "snapshots": snapshots, "result_file": result_file},
                       name="snapshot")
    result = None
    if os.path.exists(result_file):
        with open(result_file) as f:
            result = json.load(f)
    return play, result
