"""collection/stage.py: what it copies, that it restages only when a source
changed (added, changed, removed), and that a reader never sees a
half-staged collection. On a small repository of its own under tmp_path,
not on the checkout's sources."""

import os
import subprocess
import sys
import threading

from collection import stage as stagelib

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def write(path, text="x\n"):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


def make_repo(base):
    """The layout stage.py reads, a few files in each part."""
    for rel in ("galaxy.yml", "collection/README.md", "collection/plugins/modules/snapshot.py",
                "collection/stage.py", "collection/ansible_test.sh", "collection/ansible_lint.sh",
                "CHANGELOG.rst", "changelogs/changelog.yaml", "changelogs/fragments/.keep",
                "collection/plugins/modules/__pycache__/snapshot.cpython-311.pyc",
                "roles/conformance/tasks/main.yml", "roles/node_storage/tasks/main.yml",
                "snaplab/__init__.py", "snaplab/cli.py", "snaplab/__main__.py",
                "snaplab/backends/base.py", "conformance/__init__.py"):
        write(os.path.join(base, rel), rel + "\n")
    return base


def files_under(top):
    return sorted(os.path.relpath(os.path.join(root, name), top)
                  for root, _dirs, names in os.walk(top) for name in names)


def bump(path, seconds):
    """A later mtime than the staging saw, whatever the clock's resolution."""
    info = os.stat(path)
    os.utime(path, ns=(info.st_atime_ns, info.st_mtime_ns + seconds * 10**9))


EXPECTED = [
    "CHANGELOG.rst", "README.md", "changelogs/changelog.yaml", "changelogs/fragments/.keep",
    "galaxy.yml", "plugins/module_utils/_snaplab/__init__.py",
    "plugins/module_utils/_snaplab/backends/base.py", "plugins/modules/snapshot.py",
    "roles/conformance/files/conformance/__init__.py",
    "roles/conformance/files/snaplab/__init__.py",
    "roles/conformance/files/snaplab/__main__.py",
    "roles/conformance/files/snaplab/backends/base.py",
    "roles/conformance/files/snaplab/cli.py",
    "roles/conformance/tasks/main.yml", "roles/node_storage/tasks/main.yml"]


def test_the_collection_holds_what_the_docstring_says(tmp_path):
    repo = make_repo(str(tmp_path / "repo"))
    top = stagelib.stage(str(tmp_path / "dest"), repo)
    assert top == str(tmp_path / "dest" / "ansible_collections" / "snaplab" / "snapshots")
    assert files_under(top) == EXPECTED
    # Nothing but the collection, its fingerprint and the lock beside it.
    assert sorted(os.listdir(tmp_path / "dest")) == [".stage-lock", ".staged-from",
                                                     "ansible_collections"]


def test_an_unchanged_repository_is_not_restaged(tmp_path):
    repo = make_repo(str(tmp_path / "repo"))
    dest = str(tmp_path / "dest")
    top, restaged = stagelib.stage_if_changed(dest, repo)
    assert restaged
    inode = os.stat(top).st_ino
    top, restaged = stagelib.stage_if_changed(dest, repo)
    assert not restaged and os.stat(top).st_ino == inode


def test_a_changed_added_removed_or_renamed_source_restages(tmp_path):
    repo = make_repo(str(tmp_path / "repo"))
    dest = str(tmp_path / "dest")
    top = stagelib.stage(dest, repo)

    write(os.path.join(repo, "roles/node_storage/tasks/main.yml"), "changed\n")
    bump(os.path.join(repo, "roles/node_storage/tasks/main.yml"), 5)
    assert stagelib.stage_if_changed(dest, repo)[1]
    with open(os.path.join(top, "roles/node_storage/tasks/main.yml")) as f:
        assert f.read() == "changed\n"

    write(os.path.join(repo, "snaplab/new.py"))
    assert stagelib.stage_if_changed(dest, repo)[1]
    assert os.path.exists(os.path.join(top, "plugins/module_utils/_snaplab/new.py"))

    # make's "a prerequisite is newer" misses these two: nothing got newer.
    os.unlink(os.path.join(repo, "snaplab/new.py"))
    assert stagelib.stage_if_changed(dest, repo)[1]
    assert not os.path.exists(os.path.join(top, "plugins/module_utils/_snaplab/new.py"))
    os.rename(os.path.join(repo, "collection/README.md"), os.path.join(repo, "collection/NOTES.md"))
    assert stagelib.stage_if_changed(dest, repo)[1]
    assert "NOTES.md" in os.listdir(top) and "README.md" not in os.listdir(top)


def test_caches_in_the_sources_do_not_restage(tmp_path):
    repo = make_repo(str(tmp_path / "repo"))
    dest = str(tmp_path / "dest")
    stagelib.stage(dest, repo)
    write(os.path.join(repo, "snaplab/__pycache__/cli.cpython-311.pyc"))
    write(os.path.join(repo, "roles/conformance/.molecule/state.yml"))
    assert not stagelib.stage_if_changed(dest, repo)[1]


def test_a_killed_stagings_leftovers_are_removed(tmp_path):
    repo = make_repo(str(tmp_path / "repo"))
    dest = str(tmp_path / "dest")
    write(os.path.join(dest, ".staging-killed", "snapshots", "galaxy.yml"))
    stagelib.stage(dest, repo)
    assert not [n for n in os.listdir(dest) if n.startswith(".staging-")]


def test_a_reader_never_sees_a_half_staged_collection(tmp_path):
    repo = make_repo(str(tmp_path / "repo"))
    for n in range(200):  # enough files that copying them takes a while
        write(os.path.join(repo, "roles/node_storage/files/f%03d" % n))
    dest = str(tmp_path / "dest")
    top = stagelib.stage(dest, repo)
    expected = files_under(top)
    seen = []
    done = threading.Event()

    def read():
        # Path lookups, as Ansible reads a collection: each resolves in one
        # whole tree. (A walk holding a directory of the old tree open would
        # watch that tree being deleted after the swap: not what is at `top`.)
        while not done.is_set():
            seen.append([rel for rel in expected
                         if not os.path.exists(os.path.join(top, rel))])

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for n in range(20):
            bump(os.path.join(repo, "galaxy.yml"), n + 1)
            assert stagelib.stage_if_changed(dest, repo)[1]
    finally:
        done.set()
        reader.join()
    assert len(seen) > 20
    assert all(missing == [] for missing in seen)


def test_the_script_prints_the_path_and_says_when_nothing_changed(tmp_path):
    dest = str(tmp_path / "dest")
    script = os.path.join(REPO, "collection", "stage.py")
    first = subprocess.run([sys.executable, script, dest], capture_output=True, text=True,
                           check=True)
    again = subprocess.run([sys.executable, script, dest], capture_output=True, text=True,
                           check=True)
    top = os.path.join(dest, "ansible_collections", "snaplab", "snapshots")
    assert first.stdout == again.stdout == top + "\n"
    assert first.stderr == "" and "is current" in again.stderr
    assert os.path.exists(os.path.join(top, "galaxy.yml"))
    usage = subprocess.run([sys.executable, script], capture_output=True, text=True)
    assert usage.returncode == 2 and usage.stderr.startswith("usage:")
