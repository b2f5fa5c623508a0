"""Every module and every role of the collection documents itself: ansible-doc,
run on the staged collection (collection/stage.py), shows each module's
description, options, examples and return values and each role's entry
points with a description of every variable its defaults set.

What must be documented is read from the repository (collection/plugins/modules/*.py,
roles/*/), not from ansible-doc's own listing: a module whose DOCUMENTATION is
missing or broken is left out of that listing, and a missing document is what
this test is for. ansible-doc answers {} (exit status 0) for a name it cannot
document, hence the lookups by name.
"""

import json
import os
import shutil
import subprocess
import sys

import pytest
import yaml

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
COLLECTION = "snaplab.snapshots"
MODULES_DIR = os.path.join(REPO, "collection", "plugins", "modules")
ROLES_DIR = os.path.join(REPO, "roles")


def find_ansible_doc():
    """ansible-doc beside the running Python (the venv's), else on PATH, else None."""
    beside_python = os.path.join(os.path.dirname(sys.executable), "ansible-doc")
    return beside_python if os.path.exists(beside_python) else shutil.which("ansible-doc")


ANSIBLE_DOC = find_ansible_doc()

pytestmark = pytest.mark.skipif(ANSIBLE_DOC is None,
                                reason="ansible-doc is not installed (requirements.txt)")

MODULES = sorted(name[:-len(".py")] for name in os.listdir(MODULES_DIR)
                 if name.endswith(".py") and not name.startswith("_"))
ROLES = sorted(name for name in os.listdir(ROLES_DIR)
               if os.path.isdir(os.path.join(ROLES_DIR, name, "tasks")))


@pytest.fixture(scope="module")
def ansible_doc(tmp_path_factory, stage_collection):
    """ansible_doc(plugin_type, names): ansible-doc --json's answer for the
    collection's `names` of that type, from a staging of the collection."""
    base = tmp_path_factory.mktemp("collection-docs")
    collections = stage_collection(str(base / "collections"))
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=collections, ANSIBLE_NOCOLOR="1",
               ANSIBLE_LOCAL_TEMP=str(base / "ansible-tmp"))
    env.pop("ANSIBLE_CONFIG", None)

    def run(plugin_type, names):
        done = subprocess.run([ANSIBLE_DOC, "-t", plugin_type, "--json"]
                              + ["%s.%s" % (COLLECTION, name) for name in names],
                              cwd=str(base), env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stdout + done.stderr
        return json.loads(done.stdout), done.stderr
    return run


def test_the_collection_has_modules_and_roles():
    """The listings below are not empty by accident (a moved directory)."""
    assert "snapshot" in MODULES and "conformance" in ROLES


def test_every_module_has_its_description_options_examples_and_return_values(ansible_doc):
    docs, warnings = ansible_doc("module", MODULES)
    undocumented = [name for name in MODULES if "%s.%s" % (COLLECTION, name) not in docs]
    assert not undocumented, "ansible-doc cannot document %s:\n%s" % (undocumented, warnings)
    for name in MODULES:
        found = docs["%s.%s" % (COLLECTION, name)]
        doc = found["doc"]
        assert doc.get("short_description") and doc.get("description"), name
        assert doc.get("version_added"), name
        for option, spec in (doc.get("options") or {}).items():
            assert spec.get("description"), "%s: option %s has no description" % (name, option)
        assert (found.get("examples") or "").strip(), "%s has no EXAMPLES" % name
        returned = found.get("return") or {}
        assert returned, "%s has no RETURN" % name
        for value, spec in returned.items():
            assert spec.get("description"), "%s: return value %s has no description" % (
                name, value)


def test_every_role_documents_every_variable_its_defaults_set(ansible_doc):
    docs, warnings = ansible_doc("role", ROLES)
    undocumented = [name for name in ROLES if "%s.%s" % (COLLECTION, name) not in docs]
    assert not undocumented, "ansible-doc cannot document the roles %s:\n%s" % (
        undocumented, warnings)
    for name in ROLES:
        entry_points = docs["%s.%s" % (COLLECTION, name)]["entry_points"]
        assert "main" in entry_points, name
        documented = set()
        for entry, spec in entry_points.items():
            assert spec.get("short_description") and spec.get("description"), (name, entry)
            for option, option_spec in (spec.get("options") or {}).items():
                assert option_spec.get("description"), "%s: %s has no description" % (name, option)
                documented.add(option)
        defaults_file = os.path.join(ROLES_DIR, name, "defaults", "main.yml")
        defaults = {}
        if os.path.exists(defaults_file):
            with open(defaults_file) as f:
                defaults = yaml.safe_load(f) or {}
        assert not set(defaults) - documented, "%s: defaults without documentation: %s" % (
            name, sorted(set(defaults) - documented))
