#!/usr/bin/env python3
"""Assemble the collection snaplab.snapshots from the repository.

    python3 collection/stage.py DEST

makes DEST/ansible_collections/snaplab/snapshots/ (DEST is created if
missing; a previous staging there is replaced) from:

    galaxy.yml            the repository's top level
    CHANGELOG.rst,        the repository's top level too (antsibull-changelog
      changelogs/         keeps them beside galaxy.yml)
    collection/*          plugins/, meta/, tests/, README.md (not this
                          script, nor ansible_test.sh and ansible_lint.sh:
                          they are tooling)
    roles/                node_storage, conformance, ...
    snaplab/              copied to plugins/module_utils/_snaplab/, the core
                          the modules import (without the CLI: modules do
                          not use it), and with conformance/ to
                          roles/conformance/files/ for the conformance role
                          to push to a node

ansible-galaxy and ansible-test need galaxy.yml, plugins/ and roles/ side by
side, and refuse symlinks that leave the tree, hence real copies. It prints
the staged collection's path.

Every caller (make molecule, demo and collection, the lab runner, the
integration tests, ansible_test.sh, ansible_lint.sh) stages through here, so
what a fresh collection is lives in this file only:

- DEST is restaged only when what it is made from changed: DEST/.staged-from
  holds a fingerprint of every file and directory copied (path, size, mtime,
  mode) and of this script. A fingerprint rather than make's mtime rule: a
  deleted or renamed source changes it too.
- The new tree is built beside the old one (DEST/.staging-*) and swapped in
  whole, so a playbook reading DEST meanwhile sees the old collection or the
  new one, never half of one.
- One staging at a time per DEST (a lock, DEST/.stage-lock): `make test`
  can stage from two lanes at once.
"""

import contextlib
import ctypes
import errno
import fcntl
import glob
import hashlib
import os
import shutil
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAMESPACE, NAME = "snaplab", "snapshots"

# Never staged, anywhere: caches and what tools write next to the sources.
JUNK = shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache", ".molecule")
# collection/ holds these tools beside the content; they are not content.
TOOLING = {"stage.py", "ansible_test.sh", "ansible_lint.sh"}
# Kept at the repository's top beside galaxy.yml, where antsibull-changelog
# looks for them; a collection without them yet stages without them.
CHANGELOG = ("CHANGELOG.rst", "changelogs")
# The core as module_utils: the CLI is for people, not for modules.
NOT_MODULE_UTILS = shutil.ignore_patterns("__pycache__", "*.pyc", "__main__.py",
                                          "cli.py", "verbs.py", "ctr_output.py")

# Beside ansible_collections/ in DEST, where Ansible does not look.
FINGERPRINT_FILE = ".staged-from"
LOCK_FILE = ".stage-lock"
STAGING_PREFIX = ".staging-"


def sources(repo=REPO):
    """What the collection is made of: (source path, path inside the
    collection, ignore) in copying order."""
    plan = [(os.path.join(repo, "galaxy.yml"), "galaxy.yml", None)]
    plan += [(os.path.join(repo, entry), entry, JUNK) for entry in CHANGELOG
             if os.path.exists(os.path.join(repo, entry))]
    collection = os.path.join(repo, "collection")
    for entry in sorted(os.listdir(collection)):
        if entry in TOOLING or entry == "__pycache__":
            continue
        plan.append((os.path.join(collection, entry), entry, JUNK))
    plan.append((os.path.join(repo, "roles"), "roles", JUNK))
    plan.append((os.path.join(repo, "snaplab"),
                 os.path.join("plugins", "module_utils", "_snaplab"), NOT_MODULE_UTILS))
    if os.path.isdir(os.path.join(repo, "roles", "conformance")):
        for package in ("snaplab", "conformance"):
            plan.append((os.path.join(repo, package),
                         os.path.join("roles", "conformance", "files", package), JUNK))
    return plan


def fingerprint(plan):
    """A digest of every path the plan copies (and of this script) with its
    size, mtime and mode: it changes when a source is added, changed,
    removed or renamed."""
    digest = hashlib.sha256()
    here = os.path.abspath(__file__)
    for source, target, ignore in [(here, "<stage.py>", None)] + plan:
        for path in _walk(source, ignore):
            info = os.stat(path)
            # A directory's mtime moves when a cache appears in it: only its name counts.
            stamp = "dir" if os.path.isdir(path) else "%d %d %o" % (
                info.st_size, info.st_mtime_ns, info.st_mode)
            digest.update(("%s/%s %s\n" % (target, os.path.relpath(path, source), stamp))
                          .encode("utf-8", "surrogateescape"))
    return digest.hexdigest()


def _walk(source, ignore):
    """The paths copying `source` with `ignore` reads, as copytree (which
    follows symlinks, symlinks=False) would."""
    if not os.path.isdir(source):
        yield source
        return
    for root, dirs, files in os.walk(source, followlinks=True):
        ignored = ignore(root, dirs + files) if ignore else set()
        dirs[:] = sorted(d for d in dirs if d not in ignored)
        yield root
        for name in sorted(files):
            if name not in ignored:
                yield os.path.join(root, name)


def stage(dest, repo=REPO):
    """Make the collection under `dest` current (from the repository at
    `repo`); return its path."""
    return stage_if_changed(dest, repo)[0]


def stage_if_changed(dest, repo=REPO):
    """(the collection's path, whether it was restaged)."""
    dest = os.path.abspath(dest)
    top = os.path.join(dest, "ansible_collections", NAMESPACE, NAME)
    os.makedirs(dest, exist_ok=True)
    with _lock(os.path.join(dest, LOCK_FILE)):
        plan = sources(repo)
        # Taken before copying: a source changed while copying makes the
        # next staging see a difference, never the other way round.
        current = fingerprint(plan)
        recorded = os.path.join(dest, FINGERPRINT_FILE)
        if os.path.isdir(top) and _read(recorded) == current:
            return top, False
        # Under the lock no other staging runs: these are a killed one's.
        for leftover in glob.glob(os.path.join(dest, STAGING_PREFIX + "*")):
            shutil.rmtree(leftover, ignore_errors=True)
        staging = tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=dest)
        try:
            new = os.path.join(staging, NAME)
            os.makedirs(new)
            for source, target, ignore in plan:
                _copy(source, os.path.join(new, target), ignore)
            _swap_in(new, top)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        _write(recorded, current)
    return top, True


def _copy(source, target, ignore):
    if os.path.isdir(source):
        # symlinks=False: a symlink in the sources becomes a real copy.
        shutil.copytree(source, target, symlinks=False, ignore=ignore, dirs_exist_ok=True)
    else:
        shutil.copy2(source, target)


def _swap_in(new, top):
    """Put the tree `new` at `top` in one step (what was at `top` ends up
    at `new`, or beside it, for the caller to remove)."""
    if not os.path.lexists(top):
        os.makedirs(os.path.dirname(top), exist_ok=True)
        os.rename(new, top)
    elif not _exchange(new, top):
        # No renameat2 here: the old tree goes aside first, for an instant
        # `top` is missing (still never half-staged).
        os.rename(top, new + ".old")
        os.rename(new, top)


AT_FDCWD = -100
RENAME_EXCHANGE = 2  # linux/fs.h


def _exchange(a, b):
    """Swap the paths a and b atomically (renameat2 RENAME_EXCHANGE);
    False where the C library, kernel or filesystem lacks it."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                          ctypes.c_uint]
    if renameat2(AT_FDCWD, os.fsencode(a), AT_FDCWD, os.fsencode(b), RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL):
        return False
    raise OSError(err, os.strerror(err), b)


@contextlib.contextmanager
def _lock(path):
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def _read(path):
    try:
        with open(path) as f:
            return f.read().strip()
    except FileNotFoundError:
        return None


def _write(path, text):
    with open(path + ".tmp", "w") as f:
        f.write(text + "\n")
    os.replace(path + ".tmp", path)


def main(argv):
    if len(argv) != 1 or argv[0].startswith("-"):
        sys.stderr.write("usage: python3 collection/stage.py DEST\n")
        return 2
    top, restaged = stage_if_changed(argv[0])
    if not restaged:
        sys.stderr.write("collection/stage.py: %s is current (nothing it is made from changed)\n"
                         % argv[0])
    print(top)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
