#!/usr/bin/env python3
"""Assemble the collection snaplab.snapshots from the repository.

    python3 collection/stage.py DEST

makes DEST/ansible_collections/snaplab/snapshots/ (DEST is created if
missing; a previous staging there is replaced) from:

    galaxy.yml            the repository's top level
    collection/*          plugins/, meta/, tests/, README.md (not this
                          script, nor ansible_test.sh: they are tooling)
    roles/                node_storage, conformance, ...
    snaplab/              copied to plugins/module_utils/_snaplab/, the core
                          the modules import (without the CLI: modules do
                          not use it), and with conformance/ to
                          roles/conformance/files/ for the conformance role
                          to push to a node

ansible-galaxy and ansible-test need galaxy.yml, plugins/ and roles/ side by
side, and refuse symlinks that leave the tree, hence real copies. It prints
the staged collection's path.
"""

import os
import shutil
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAMESPACE, NAME = "snaplab", "snapshots"

# Never staged, anywhere: caches and what tools write next to the sources.
JUNK = shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache", ".molecule")
# collection/ holds these tools beside the content; they are not content.
TOOLING = {"stage.py", "ansible_test.sh"}
# The core as module_utils: the CLI is for people, not for modules.
NOT_MODULE_UTILS = shutil.ignore_patterns("__pycache__", "*.pyc", "cli.py", "__main__.py")


def stage(dest):
    """Build the collection under `dest`; return its path."""
    top = os.path.join(os.path.abspath(dest), "ansible_collections", NAMESPACE, NAME)
    if os.path.lexists(top):
        shutil.rmtree(top)
    os.makedirs(top)
    shutil.copy2(os.path.join(REPO, "galaxy.yml"), top)
    collection = os.path.join(REPO, "collection")
    for entry in sorted(os.listdir(collection)):
        if entry in TOOLING or entry == "__pycache__":
            continue
        _copy(os.path.join(collection, entry), os.path.join(top, entry), JUNK)
    _copy(os.path.join(REPO, "roles"), os.path.join(top, "roles"), JUNK)
    _copy(os.path.join(REPO, "snaplab"),
          os.path.join(top, "plugins", "module_utils", "_snaplab"), NOT_MODULE_UTILS)
    role_files = os.path.join(top, "roles", "conformance", "files")
    if os.path.isdir(os.path.dirname(role_files)):
        for package in ("snaplab", "conformance"):
            _copy(os.path.join(REPO, package), os.path.join(role_files, package), JUNK)
    return top


def _copy(source, target, ignore):
    if os.path.isdir(source):
        # symlinks=False: a symlink in the sources becomes a real copy.
        shutil.copytree(source, target, symlinks=False, ignore=ignore, dirs_exist_ok=True)
    else:
        shutil.copy2(source, target)


def main(argv):
    if len(argv) != 1 or argv[0].startswith("-"):
        sys.stderr.write("usage: python3 collection/stage.py DEST\n")
        return 2
    print(stage(argv[0]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
