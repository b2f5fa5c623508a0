"""The snapshot and snapshot_info modules for real: ansible-playbook against
localhost (connection local), on snapshotter roots on a loop-backed ext4.

The collection is staged (collection/stage.py) into a `snaplab-test-collection-*`
temp directory, which also holds the ext4 (made and removed by conformance's
FilesystemPool: truncate, mkfs.ext4, losetup, mount; finally unmount what is
under it, losetup -d, delete) and the source directories. Each test gets a
fresh root on the ext4, for the native, overlay, blockfile and erofs backends. What is on
disk is read with `python3 -m snaplab ls --json`, never through the modules.
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile

import pytest

from conformance.filesystems import FilesystemPool, FilesystemUnavailable
from snaplab import backends
from snaplab import mount as mountlib

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


pytestmark = pytest.mark.needs_root_and_ansible_playbook


class Lab:
    """The staged collection, an ext4 and source trees, in one temp directory."""

    def __init__(self, ansible_playbook):
        self.base = tempfile.mkdtemp(prefix="snaplab-test-collection-")
        self.pool = FilesystemPool(base_dir=self.base)
        self.collections = os.path.join(self.base, "collections")
        self.ansible_playbook = ansible_playbook
        self.sources = os.path.join(self.base, "sources")
        make_tree(os.path.join(self.sources, "base"),
                  {"etc/os-release": "base\n", "etc/motd": "from base\n", "bin/sh": "#!\n"})
        make_tree(os.path.join(self.sources, "app"),
                  {"etc/motd": "from app\n", "srv/app/run": "go\n"})
        self.roots = 0

    def fresh_root(self, backend):
        """An empty snapshotter root's path on the ext4 (not created)."""
        try:
            fs = self.pool.get("ext4")
        except FilesystemUnavailable as why:
            pytest.skip(str(why))
        self.roots += 1
        return Root(self, os.path.join(fs.mountpoint, "root-%d-%s" % (self.roots, backend)),
                    backend)

    def destroy(self):
        try:
            for where in mountlib.mounts_under(self.base):
                mountlib.unmount_all(where)
        finally:
            self.pool.destroy()  # unmounts what is left, detaches, removes
            shutil.rmtree(self.base, ignore_errors=True)


def make_tree(top, files):
    for name, text in files.items():
        path = os.path.join(top, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(text)


@pytest.fixture(scope="module")
def lab(stage_collection, ansible_playbook):
    made = Lab(ansible_playbook)
    try:
        stage_collection(made.collections)
        yield made
    finally:
        made.destroy()


@pytest.fixture(params=["native", "overlay", "blockfile", "erofs"])
def root(lab, request):
    return lab.fresh_root(request.param)


class Root:
    """One snapshotter root: runs plays against it and reads it with the CLI."""

    def __init__(self, lab, path, backend):
        self.lab = lab
        self.path = path
        self.backend = backend

    def play(self, *tasks, check=False, diff=False):
        """Run the tasks (module name -> args, root and backend filled in)
        in one play; returns each task's result. A failed task does not stop
        the play (ignore_errors): the test looks at its result."""
        play = [{"hosts": "localhost", "gather_facts": False, "tasks": [
            {name: dict({"root": self.path, "backend": self.backend}, **args),
             "ignore_errors": True}
            for task in tasks for name, args in task.items()]}]
        playbook = os.path.join(self.lab.base, "play.yml")
        with open(playbook, "w") as f:
            json.dump(play, f)  # JSON is YAML
        argv = [self.lab.ansible_playbook, "-i", "localhost,", "-c", "local",
                "-e", "ansible_python_interpreter=" + sys.executable, playbook]
        argv += ["--check"] if check else []
        argv += ["--diff"] if diff else []
        env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=self.lab.collections,
                   ANSIBLE_STDOUT_CALLBACK="ansible.posix.json",
                   ANSIBLE_NOCOLOR="1", ANSIBLE_HOST_KEY_CHECKING="0")
        proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)
        try:
            report = json.loads(proc.stdout)
        except ValueError:
            raise AssertionError("ansible-playbook did not print JSON:\n%s\n%s"
                                 % (proc.stdout, proc.stderr)) from None
        results = [t["hosts"]["localhost"] for t in report["plays"][0]["tasks"]]
        assert len(results) == len(tasks), proc.stdout
        return results

    def snapshot(self, check=False, diff=False, **args):
        return self.play({"snaplab.snapshots.snapshot": args}, check=check, diff=diff)[0]

    def snaplab(self, *argv):
        proc = subprocess.run([sys.executable, "-m", "snaplab", "--root", self.path,
                               "--backend", self.backend, *argv],
                              cwd=REPO, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    def listing(self):
        """`snaplab ls --json`: what is on disk, timestamps included."""
        if not os.path.exists(os.path.join(self.path, "metadata.db")):
            return None
        return json.loads(self.snaplab("--json", "ls"))

    def tree(self):
        """{key: (kind, parent)} of what is on disk."""
        return {i["Name"]: (i["Kind"], i.get("Parent", "")) for i in self.listing() or []}

    def read(self, key, relative):
        """A file as snapshot `key` (active or view) shows it, mounted by the CLI."""
        target = tempfile.mkdtemp(dir=self.lab.base)
        self.snaplab("mount", target, key)
        try:
            with open(os.path.join(target, relative)) as f:
                return f.read()
        finally:
            self.snaplab("umount", target)
            os.rmdir(target)


def chain(lab):
    return [
        {"key": "base", "source": {"directory": os.path.join(lab.sources, "base")}},
        {"key": "app", "parent": "base", "labels": {"tier": "app"},
         "source": {"directory": os.path.join(lab.sources, "app")}},
        {"key": "web-1", "parent": "app", "state": "active"},
        {"key": "web-1-look", "parent": "app", "state": "view"},
    ]


CHAIN_TREE = {"base": ("Committed", ""), "app": ("Committed", "base"),
              "web-1": ("Active", "app"), "web-1-look": ("View", "app")}


def steps(result):
    return [(a["action"], a["key"]) for a in result["actions"]]


def test_declare_redeclare_check_and_diff(root):
    declared = chain(root.lab)

    # check mode first: nothing at all on disk, not even the root
    checked = root.snapshot(snapshots=declared, check=True, diff=True)
    assert checked["changed"] and not checked.get("failed"), checked
    assert steps(checked) == [("commit", "base"), ("commit", "app"), ("prepare", "web-1"),
                              ("view", "web-1-look")]
    assert checked["diff"]["before"] == {}
    assert checked["diff"]["after"]["app"] == {"kind": "committed", "parent": "base",
                                               "labels": {"tier": "app"}}
    assert not os.path.exists(root.path)

    made = root.snapshot(snapshots=declared)
    assert made["changed"] and not made.get("failed"), made
    assert steps(made) == steps(checked)
    assert root.tree() == CHAIN_TREE
    # the content: base's files, app's on top of them
    assert root.read("web-1-look", "etc/motd") == "from app\n"
    assert root.read("web-1-look", "etc/os-release") == "base\n"
    assert root.read("web-1", "srv/app/run") == "go\n"
    by_key = {s["key"]: s for s in made["snapshots"]}
    assert by_key["web-1"]["mounts"] and by_key["web-1-look"]["mounts"]
    assert by_key["base"]["mounts"] is None

    listing = root.listing()
    again = root.snapshot(snapshots=declared, diff=True)
    assert not again["changed"] and again["actions"] == [], again
    assert again["diff"]["before"] == again["diff"]["after"]
    assert again["snapshots"] == made["snapshots"]
    assert root.listing() == listing  # timestamps included: nothing was touched

    # a new declaration in check mode: reported, not made
    more = declared + [{"key": "web-2", "parent": "app", "state": "active",
                        "labels": {"n": "2"}}]
    checked = root.snapshot(snapshots=more, check=True, diff=True)
    assert checked["changed"] and steps(checked) == [("prepare", "web-2")]
    assert "web-2" not in checked["diff"]["before"]
    assert checked["diff"]["after"]["web-2"]["labels"] == {"n": "2"}
    assert root.listing() == listing

    # labels change in diff mode
    relabel = root.snapshot(key="app", parent="base", labels={"tier": "web"}, diff=True)
    assert relabel["changed"] and steps(relabel) == [("update", "app")]
    assert relabel["diff"]["before"]["app"]["labels"] == {"tier": "app"}
    assert relabel["diff"]["after"]["app"]["labels"] == {"tier": "web"}


def test_conflicts_replace_and_absent(root):
    assert not root.snapshot(snapshots=chain(root.lab)).get("failed")
    listing = root.listing()

    other_parent, other_kind, without_recursive = root.play(
        {"snaplab.snapshots.snapshot": {"key": "app", "parent": ""}},
        {"snaplab.snapshots.snapshot": {"key": "web-1", "parent": "app"}},
        {"snaplab.snapshots.snapshot": {"key": "base", "state": "absent"}},
    )
    assert other_parent["failed"] and other_parent["error_class"] == "AlreadyExists"
    assert "its parent is 'base', declared ''" in other_parent["msg"]
    assert other_kind["failed"] and "it is active, declared committed" in other_kind["msg"]
    assert without_recursive["failed"]
    assert without_recursive["error_class"] == "FailedPrecondition"
    assert "set recursive" in without_recursive["msg"]
    assert root.listing() == listing  # failures change nothing

    replaced = root.snapshot(key="web-1-look", parent="base", state="view", replace=True)
    assert steps(replaced) == [("remove", "web-1-look"), ("view", "web-1-look")]
    assert root.tree()["web-1-look"] == ("View", "base")
    assert root.read("web-1-look", "etc/motd") == "from base\n"

    gone = root.snapshot(key="web-1", state="absent")
    assert gone["changed"] and steps(gone) == [("remove", "web-1")]
    assert "web-1" not in root.tree()
    assert not root.snapshot(key="web-1", state="absent")["changed"]

    subtree = root.snapshot(key="base", state="absent", recursive=True)
    assert steps(subtree) == [("remove", "app"), ("remove", "web-1-look"), ("remove", "base")]
    assert root.tree() == {}


def test_snapshot_info_reads_and_changes_nothing(root):
    assert not root.snapshot(snapshots=chain(root.lab)).get("failed")
    listing = root.listing()
    everything, stat, walk, missing_root = root.play(
        {"snaplab.snapshots.snapshot_info": {}},
        {"snaplab.snapshots.snapshot_info": {"keys": ["web-1", "nope"], "mounts": True,
                                             "usage": True}},
        {"snaplab.snapshots.snapshot_info": {"filters": ["kind==committed,parent==base",
                                                         "labels.tier==app"],
                                             "usage": True}},
        {"snaplab.snapshots.snapshot_info": {"root": root.path + "-missing"}},
    )
    for result in (everything, stat, walk):
        assert not result["changed"] and not result.get("failed"), result
    assert [s["key"] for s in everything["snapshots"]] == sorted(CHAIN_TREE)

    assert stat["missing"] == ["nope"]
    (web,) = stat["snapshots"]
    assert web["kind"] == "active" and web["parent"] == "app"
    # blockfile counts no inodes inside its images (-1), its size is the image's
    counted = web["usage"]["inodes"] if root.backend != "blockfile" else web["usage"]["size"]
    assert web["mounts"] and counted >= 1, web

    assert [s["key"] for s in walk["snapshots"]] == ["app"]
    assert walk["snapshots"][0]["usage"]["size"] > 0  # app's own files, measured at commit

    assert missing_root["failed"] and missing_root["error_class"] == "NotFound"
    assert not os.path.exists(root.path + "-missing")
    assert root.listing() == listing


@pytest.mark.parametrize("backend", ["native", "overlay"])
def test_a_full_filesystem_mid_batch_names_the_snapshot_and_a_rerun_converges(lab, backend):
    """A real ENOSPC: the root on an 8 MiB tmpfs, three 3 MiB layers declared.
    The failure names the snapshot it hit and the cause; `actions` lists only
    what was done; after the filesystem grows, the same task makes the rest."""
    place = tempfile.mkdtemp(dir=lab.base)
    mountlib.mount(mountlib.Mount("tmpfs", "tmpfs", options=["size=8m"]), place)
    try:
        root = Root(lab, os.path.join(place, "root"), backend)
        declared = []
        for number, key in enumerate(["one", "two", "three"]):
            source = os.path.join(lab.base, "big-%s-%s" % (backend, key))
            os.makedirs(source, exist_ok=True)
            with open(os.path.join(source, "data-%d" % number), "wb") as f:
                f.write(os.urandom(3 << 20))
            declared.append({"key": key, "parent": declared[-1]["key"] if declared else "",
                             "source": {"directory": source}})

        failed = root.snapshot(snapshots=declared)
        assert failed.get("failed"), failed
        assert "failed_action" in failed, failed
        failed_key = failed["failed_action"]["key"]
        assert failed["msg"].startswith("commit of snapshot %r failed (%d of 3 planned actions "
                                        "done)" % (failed_key, len(failed["actions"])))
        assert "No space left on device" in failed["msg"], failed["msg"]
        assert failed["error_class"] == "OSError"
        done = [a["key"] for a in failed["actions"]]
        assert done == ["one", "two", "three"][:len(done)] and failed_key not in done
        assert sorted(root.tree()) == sorted(done)  # nothing half-made is left

        subprocess.run(["mount", "-o", "remount,size=64m", place], check=True)
        rerun = root.snapshot(snapshots=declared)
        assert rerun["changed"] and not rerun.get("failed"), rerun
        assert steps(rerun) == [("commit", key) for key in ["one", "two", "three"]
                                if key not in done]
        assert not root.snapshot(snapshots=declared)["changed"]
    finally:
        mountlib.unmount_all(place)


def test_doctor_finds_what_a_killed_prepare_left_and_fixes_it(root):
    """A Prepare killed (SIGKILL at a named crash point) after its data was in
    place but before its metadata committed; then, through ansible-playbook:
    snapshot_info with doctor, the doctor module in check mode (predicts,
    changes nothing) and with fix (repairs; a second run changes nothing)."""
    assert not root.snapshot(snapshots=chain(root.lab)).get("failed")
    killed = subprocess.run([sys.executable, "-m", "snaplab", "--root", root.path, "--backend",
                             root.backend, "prepare", "killed", "app"],
                            env=dict(os.environ, SNAPLAB_CRASH_AT="create.stored"),
                            capture_output=True, text=True, timeout=300)
    assert killed.returncode == -9, killed.stderr
    entries = sorted(os.listdir(os.path.join(root.path, "snapshots")))

    (info,) = root.play({"snaplab.snapshots.snapshot_info": {"doctor": True}})
    (checked,) = root.play({"snaplab.snapshots.doctor": {"fix": True}}, check=True)
    assert sorted(os.listdir(os.path.join(root.path, "snapshots"))) == entries
    fixed, again = root.play(
        {"snaplab.snapshots.doctor": {"fix": True}},
        {"snaplab.snapshots.doctor": {"fix": True, "fail_on_findings": True}})
    assert not info["changed"] and not info["doctor"]["clean"], info
    assert [f["kind"] for f in info["doctor"]["findings"]] == ["orphan"]
    assert checked["changed"] and checked["repaired"] == info["doctor"]["findings"]
    assert fixed["changed"] and fixed["clean"], fixed
    assert not again["changed"] and again["clean"] and not again.get("failed"), again
    # the orphan (the killed Prepare's id) is gone, every snapshot's data is not
    assert len(os.listdir(os.path.join(root.path, "snapshots"))) == len(entries) - 1
    assert root.tree() == CHAIN_TREE
    assert root.read("web-1-look", "etc/motd") == "from app\n"


def test_check_mode_and_info_work_on_a_read_only_root(root):
    """The root seen through a read-only bind mount: check mode of the
    snapshot module, snapshot_info and doctor work and write nothing."""
    assert not root.snapshot(snapshots=chain(root.lab)).get("failed")
    listing = root.listing()
    view = tempfile.mkdtemp(dir=root.lab.base)
    mountlib.mount(mountlib.Mount("bind", root.path, options=["bind"]), view)
    try:
        subprocess.run(["mount", "-o", "remount,ro,bind", view], check=True)
        seen = Root(root.lab, view, root.backend)
        more = chain(root.lab) + [{"key": "web-2", "parent": "app", "state": "active"}]
        checked = seen.snapshot(snapshots=more, check=True, diff=True)
        assert checked["changed"] and not checked.get("failed"), checked
        assert steps(checked) == [("prepare", "web-2")]
        info, doctor = seen.play({"snaplab.snapshots.snapshot_info": {"doctor": True}},
                                 {"snaplab.snapshots.doctor": {}})
        assert not info.get("failed") and info["doctor"]["clean"], info
        assert not doctor.get("failed") and doctor["clean"], doctor
        applied = seen.snapshot(snapshots=more)
        assert applied["failed"] and applied["error_class"] == "FailedPrecondition", applied
        assert "read-only" in applied["msg"]
    finally:
        # erofs reports the Mounts of web (check mode too) with its parents'
        # images mounted under the view, as containerd 2.1 does: kept, not leaked.
        for where in backends.kept_mounts_under(root.backend, view):
            mountlib.unmount_all(where)
        mountlib.unmount_all(view)
    assert root.listing() == listing


def test_mapping_labels_give_a_snapshot_with_host_ids(root):
    """containerd's uid/gid mapping labels through the snapshot module: the
    snapshot shows its parents' files with host ids where the backend has
    the remap-ids capability (overlay idmaps them, native chowns a copy),
    container ids where it has not (blockfile only stores the labels), and
    declaring it again changes nothing."""
    mapping = {"containerd.io/snapshot/uidmapping": "0:100000:65536",
               "containerd.io/snapshot/gidmapping": "0:200000:65536"}
    declared = chain(root.lab) + [
        {"key": "web-mapped", "parent": "app", "state": "active", "labels": mapping}]
    first = root.snapshot(snapshots=declared)
    assert first["changed"] and not first.get("failed"), first
    target = tempfile.mkdtemp(dir=root.lab.base)
    root.snaplab("mount", target, "web-mapped")
    try:
        owner = os.stat(os.path.join(target, "etc", "motd"))
    finally:
        root.snaplab("umount", target)
        os.rmdir(target)
    remaps = "remap-ids" in root.snaplab("capabilities").split()
    assert (owner.st_uid, owner.st_gid) == ((100000, 200000) if remaps else (0, 0))
    assert root.read("web-1", "etc/motd") == "from app\n"
    again = root.snapshot(snapshots=declared)
    assert not again["changed"] and not again.get("failed"), again
