"""snaplab.snapshots.layer and snaplab.snapshots.mount for real: ansible-playbook
against localhost (connection local), for the native and overlay backends,
on an ext4 made on a loop device for this test module.

The layers are OCI layer tars built here: a three-layer chain with whiteouts
and an opaque directory, one more layer for check mode, and hostile layers.
Each module's story runs in one playbook (task results come back through the
ansible.posix.json callback) and is checked here afterwards, against what
is on disk and in the mount table.

The fixture makes everything inside one `snaplab-test-layer-mount-*` temp
directory and, whatever happens, unmounts and detaches what is left there
(and only there) and deletes it.
"""

import gzip
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile

import pytest

from snaplab import layers, open_snapshotter
from snaplab import mount as mountlib

BACKENDS = ["native", "overlay"]

pytestmark = pytest.mark.needs_root_and_ansible_playbook


def run(*argv):
    return subprocess.run(argv, check=True, capture_output=True, text=True).stdout.strip()


# -- layers built here ------------------------------------------------------------


def tar_bytes(entries):
    """entries: (name, content) with content bytes for a file, None for a
    directory, ("symlink", target) for a symlink."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, content in entries:
            info = tarfile.TarInfo(name)
            info.mtime = 1_600_000_000
            if content is None:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            elif isinstance(content, tuple):
                info.type, info.linkname = tarfile.SYMTYPE, content[1]
                tar.addfile(info)
            else:
                info.size, info.mode = len(content), 0o644
                tar.addfile(info, io.BytesIO(content))
    return buffer.getvalue()


CHAIN = [
    ("base.tar", None, [("etc", None), ("etc/os-release", b"ID=lab\n"), ("etc/motd", b"hi\n"),
                        ("var", None), ("var/cache", None), ("var/cache/a", b"a"),
                        ("var/cache/b", b"b"), ("bin", None), ("bin/sh", b"#!sh\n")]),
    ("app.tar.gz", "gzip", [("etc/.wh.motd", b""), ("var/cache/.wh..wh..opq", b""),
                            ("var/cache/c", b"c"), ("app", None), ("app/run", b"run v1\n")]),
    ("config.tar", None, [("app/run", b"run v2\n"), ("app/.wh.gone", b""),
                          ("etc/app.conf", b"x=1\n"), ("lib", ("symlink", "/bin"))]),
]
EXTRA = ("extra.tar", None, [("extra", b"more")])


def write_layer(directory, name, compression, entries):
    data = tar_bytes(entries)
    path = os.path.join(directory, name)
    with open(path, "wb") as f:
        f.write(gzip.compress(data, mtime=0) if compression == "gzip" else data)
    return path, "sha256:" + hashlib.sha256(data).hexdigest()


# -- the workspace: staged collection, loop ext4, playbooks --------------------------


class Workspace:
    def __init__(self, base, collections, ansible_playbook):
        self.base = base
        self.ansible_playbook = ansible_playbook
        self.loop_device = None
        inventory = self.path("inventory")
        with open(inventory, "w") as f:
            f.write("localhost ansible_connection=local ansible_python_interpreter=%s\n"
                    % sys.executable)
        self.env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=collections,
                        ANSIBLE_INVENTORY=inventory, ANSIBLE_NOCOLOR="1",
                        ANSIBLE_STDOUT_CALLBACK="ansible.posix.json",
                        ANSIBLE_LOCAL_TEMP=self.path("ansible-tmp"),
                        ANSIBLE_RETRY_FILES_ENABLED="0")
        self.env.pop("ANSIBLE_CONFIG", None)

    def path(self, *parts):
        return os.path.join(self.base, *parts)

    def make_ext4(self):
        """An ext4 on a loop device, mounted at fs/: the roots live there."""
        image = self.path("ext4.img")
        with open(image, "wb") as f:
            f.truncate(256 << 20)
        run("mkfs.ext4", "-q", "-F", image)
        self.loop_device = run("losetup", "--find", "--show", image)
        os.mkdir(self.path("fs"))
        mountlib.mount(mountlib.Mount("ext4", self.loop_device), self.path("fs"))

    def play(self, name, tasks, variables, check=False, diff=False):
        """Run a playbook of `tasks` (YAML text, indented as a task list);
        return (rc, {task name: result}, raw output)."""
        playbook = self.path(name + ".yml")
        with open(playbook, "w") as f:
            f.write("- hosts: localhost\n  gather_facts: false\n  tasks:\n" + tasks)
        extra = self.path(name + "-vars.json")
        with open(extra, "w") as f:
            json.dump(variables, f)
        argv = [self.ansible_playbook, playbook, "-e", "@" + extra]
        argv += (["--check"] if check else []) + (["--diff"] if diff else [])
        proc = subprocess.run(argv, cwd=self.base, env=self.env, capture_output=True,
                              text=True, timeout=600)
        try:
            report = json.loads(proc.stdout)
        except ValueError:
            raise AssertionError("no JSON from ansible-playbook:\n%s\n%s"
                                 % (proc.stdout, proc.stderr)) from None
        results = {task["task"]["name"]: task["hosts"]["localhost"]
                   for play in report["plays"] for task in play["tasks"]}
        return proc.returncode, results, proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def ws(scratch_dir, stage_collection, ansible_playbook):
    with scratch_dir("snaplab-test-layer-mount-") as base:
        made = Workspace(base, stage_collection(os.path.join(base, "collections")),
                         ansible_playbook)
        made.make_ext4()
        made.chain = [write_layer(made.base, name, compression, entries)
                      for name, compression, entries in CHAIN]
        made.extra = write_layer(made.base, *EXTRA)
        yield made


def chain_paths(ws):
    return [path for path, _ in ws.chain]


def expected_chain_ids(ws):
    return layers.chain_ids([diff_id for _, diff_id in ws.chain])


def view_files(root, backend, name):
    """{relative path: content or "dir" or ("symlink", target)} of committed
    `name`, read through a real mount of a view of it."""
    found = {}
    with open_snapshotter(root, backend) as sn:
        mounts = sn.view("test-view", name)
        try:
            with mountlib.temporary_mount(mounts, prefix="snaplab-test-view-") as target:
                for directory, dirnames, filenames in os.walk(target):
                    for entry in dirnames + filenames:
                        path = os.path.join(directory, entry)
                        relative = os.path.relpath(path, target)
                        if os.path.islink(path):
                            found[relative] = ("symlink", os.readlink(path))
                        elif os.path.isdir(path):
                            found[relative] = "dir"
                        else:
                            with open(path, "rb") as f:
                                found[relative] = f.read()
        finally:
            sn.remove("test-view")
    return found


# -- snaplab.snapshots.layer ---------------------------------------------------------

LAYER_TASKS = """\
    - name: check mode on a root that does not exist yet
      snaplab.snapshots.layer: {root: "{{ root }}", backend: "{{ backend }}", layers: "{{ chain }}"}
      check_mode: true
    - name: root after check mode
      ansible.builtin.stat: {path: "{{ root }}"}
    - name: apply
      snaplab.snapshots.layer:
        root: "{{ root }}"
        backend: "{{ backend }}"
        layers: "{{ chain }}"
        labels: {org.example/image: "lab:1"}
    - name: apply again
      snaplab.snapshots.layer: {root: "{{ root }}", backend: "{{ backend }}", layers: "{{ chain }}"}
    - name: check mode with one more layer
      snaplab.snapshots.layer:
        root: "{{ root }}"
        backend: "{{ backend }}"
        layers: "{{ chain + [extra] }}"
      check_mode: true
"""


@pytest.mark.parametrize("backend", BACKENDS)
def test_layer_chain_is_applied_once_and_check_mode_writes_nothing(ws, backend):
    root = ws.path("fs", "layers-" + backend)
    rc, results, output = ws.play("layer-" + backend, LAYER_TASKS, {
        "root": root, "backend": backend, "chain": chain_paths(ws), "extra": ws.extra[0]},
        diff=True)
    assert rc == 0, output
    chain_ids = expected_chain_ids(ws)

    checked = results["check mode on a root that does not exist yet"]
    assert checked["changed"] is True
    assert [layer["applied"] for layer in checked["layers"]] == [True, True, True]
    assert [layer["chain_id"] for layer in checked["layers"]] == chain_ids
    assert results["root after check mode"]["stat"]["exists"] is False

    applied = results["apply"]
    assert applied["changed"] is True and applied["chain_id"] == chain_ids[-1]
    assert [(layer["path"], layer["diff_id"]) for layer in applied["layers"]] == ws.chain
    assert [layer["applied"] for layer in applied["layers"]] == [True, True, True]
    assert applied["diff"] == {"before": {"committed": []}, "after": {"committed": chain_ids}}

    again = results["apply again"]
    assert again["changed"] is False
    assert [layer["applied"] for layer in again["layers"]] == [False, False, False]

    more = results["check mode with one more layer"]
    assert more["changed"] is True
    assert [layer["applied"] for layer in more["layers"]] == [False, False, False, True]

    with open_snapshotter(root, backend) as sn:
        infos = {info.name: info for info in sn.list()}
    assert sorted(infos) == sorted(chain_ids)  # the extra layer was not applied
    top = infos[chain_ids[-1]]
    assert top.parent == chain_ids[1]
    assert top.labels["org.example/image"] == "lab:1"
    assert top.labels["containerd.io/snapshot/diff-id"] == ws.chain[-1][1]

    assert view_files(root, backend, chain_ids[-1]) == {
        "etc": "dir", "etc/os-release": b"ID=lab\n", "etc/app.conf": b"x=1\n",
        "var": "dir", "var/cache": "dir", "var/cache/c": b"c",
        "bin": "dir", "bin/sh": b"#!sh\n", "lib": ("symlink", "/bin"),
        "app": "dir", "app/run": b"run v2\n"}


HOSTILE = {
    "dotdot.tar": [("ok", b"fine"), ("../../escaped", b"x")],
    "hardlink.tar": None,  # built below: a hardlink to ../outside
    "whiteout.tar": [("d", None), ("d/.wh..", b"")],
}


def hostile_layers(ws):
    paths = {}
    for name, entries in HOSTILE.items():
        if entries is None:
            buffer = io.BytesIO()
            with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
                link = tarfile.TarInfo("stolen")
                link.type, link.linkname = tarfile.LNKTYPE, "../../sentinel/precious"
                tar.addfile(link)
            path = ws.path(name)
            with open(path, "wb") as f:
                f.write(buffer.getvalue())
        else:
            path = write_layer(ws.base, name, None, entries)[0]
        paths[name] = path
    return paths


HOSTILE_TASKS = """\
    - name: "{{ item }}"
      snaplab.snapshots.layer:
        root: "{{ root }}"
        backend: "{{ backend }}"
        layers: "{{ chain + [hostile[item]] }}"
      loop: "{{ hostile.keys() | list }}"
      ignore_errors: true
      register: refused
    - name: refused
      ansible.builtin.debug: {var: refused}
"""


@pytest.mark.parametrize("backend", BACKENDS)
def test_hostile_layers_are_refused_and_nothing_is_written(ws, backend):
    root = ws.path("fs", "hostile-" + backend)
    sentinel = ws.path("fs", "sentinel")
    os.makedirs(sentinel, exist_ok=True)
    with open(os.path.join(sentinel, "precious"), "wb") as f:
        f.write(b"precious")
    before = sorted(os.listdir(ws.path("fs"))), os.stat(os.path.join(sentinel, "precious"))

    rc, results, output = ws.play("hostile-" + backend, HOSTILE_TASKS, {
        "root": root, "backend": backend, "chain": chain_paths(ws),
        "hostile": hostile_layers(ws)})
    assert rc == 0, output  # the failures are ignored, and inspected here
    for result in results["refused"]["refused"]["results"]:
        assert result["failed"] is True, result
        assert result["error_class"] == "InvalidArgument", result
    assert sorted(os.listdir(ws.path("fs"))) == before[0]  # not even the root was made
    assert os.stat(os.path.join(sentinel, "precious")) == before[1]
    assert not os.path.exists(ws.path("escaped"))


# -- snaplab.snapshots.mount -----------------------------------------------------------

MOUNT_TASKS = """\
    - name: mount in check mode
      snaplab.snapshots.mount: {root: "{{ root }}", backend: "{{ backend }}", key: work, path: "{{ path }}"}
      check_mode: true
    - name: path after check mode
      ansible.builtin.stat: {path: "{{ path }}"}
    - name: mount
      snaplab.snapshots.mount: {root: "{{ root }}", backend: "{{ backend }}", key: work, path: "{{ path }}"}
    - name: mount again
      snaplab.snapshots.mount: {root: "{{ root }}", backend: "{{ backend }}", key: work, path: "{{ path }}"}
    - name: content seen through the mount
      ansible.builtin.slurp: {src: "{{ path }}/app/run"}
    - name: unmount in check mode
      snaplab.snapshots.mount:
        root: "{{ root }}"
        backend: "{{ backend }}"
        key: work
        path: "{{ path }}"
        state: unmounted
      check_mode: true
    - name: still mounted after check mode
      snaplab.snapshots.mount: {root: "{{ root }}", backend: "{{ backend }}", key: work, path: "{{ path }}"}
    - name: the view mounted elsewhere
      snaplab.snapshots.mount: {root: "{{ root }}", backend: "{{ backend }}", key: look, path: "{{ view_path }}"}
    - name: the view where the active one is mounted
      snaplab.snapshots.mount: {root: "{{ root }}", backend: "{{ backend }}", key: look, path: "{{ path }}"}
      ignore_errors: true
    - name: unmount
      snaplab.snapshots.mount:
        root: "{{ root }}"
        backend: "{{ backend }}"
        key: work
        path: "{{ path }}"
        state: unmounted
    - name: unmount again
      snaplab.snapshots.mount:
        root: "{{ root }}"
        backend: "{{ backend }}"
        key: work
        path: "{{ path }}"
        state: unmounted
    - name: unmount the view
      snaplab.snapshots.mount:
        root: "{{ root }}"
        backend: "{{ backend }}"
        key: look
        path: "{{ view_path }}"
        state: unmounted
    - name: mount over a foreign mount
      snaplab.snapshots.mount: {root: "{{ root }}", backend: "{{ backend }}", key: work, path: "{{ foreign }}"}
      ignore_errors: true
    - name: unmount a foreign mount
      snaplab.snapshots.mount:
        root: "{{ root }}"
        backend: "{{ backend }}"
        key: work
        path: "{{ foreign }}"
        state: unmounted
      ignore_errors: true
    - name: unmount for a snapshot that does not exist
      snaplab.snapshots.mount:
        root: "{{ root }}"
        backend: "{{ backend }}"
        key: never-made
        path: "{{ path }}"
        state: unmounted
    - name: mount a committed snapshot
      snaplab.snapshots.mount: {root: "{{ root }}", backend: "{{ backend }}", key: "{{ top }}", path: "{{ path }}"}
      ignore_errors: true
"""


@pytest.mark.parametrize("backend", BACKENDS)
def test_mount_and_unmount_are_idempotent_and_never_touch_other_mounts(ws, backend):
    root = ws.path("fs", "mounts-" + backend)
    path = ws.path("mnt", backend, "rootfs")
    view_path = ws.path("mnt", backend, "view")
    foreign = ws.path("foreign-" + backend)
    top = expected_chain_ids(ws)[-1]
    with open_snapshotter(root, backend) as sn:
        layers.apply_layers(sn, chain_paths(ws))
        sn.prepare("work", top)
        sn.view("look", top)
    os.makedirs(foreign)
    mountlib.mount(mountlib.Mount("tmpfs", "snaplab-test-foreign"), foreign)
    try:
        rc, results, output = ws.play("mount-" + backend, MOUNT_TASKS, {
            "root": root, "backend": backend, "path": path, "view_path": view_path,
            "foreign": foreign, "top": top}, diff=True)
        foreign_still_mounted = mountlib.is_mountpoint(foreign)
        left_mounted = [p for p in (path, view_path) if mountlib.is_mountpoint(p)]
    finally:
        mountlib.unmount_all(foreign)
    assert rc == 0, output

    checked = results["mount in check mode"]
    assert checked["changed"] is True
    assert [a["action"] for a in checked["actions"]] == ["mkdir", "mount"]
    assert results["path after check mode"]["stat"]["exists"] is False

    mounted = results["mount"]
    assert mounted["changed"] is True and mounted["mounted"] is True
    assert mounted["mount_point"] == path
    assert mounted["diff"]["before"]["mounted"] is False and mounted["diff"]["after"]["mounted"]
    assert results["mount again"]["changed"] is False
    assert results["content seen through the mount"]["content"] == "cnVuIHYyCg=="  # run v2

    assert results["unmount in check mode"]["changed"] is True
    assert results["still mounted after check mode"]["changed"] is False

    assert results["the view mounted elsewhere"]["changed"] is True
    wrong = results["the view where the active one is mounted"]
    assert wrong["failed"] is True and wrong["error_class"] == "FailedPrecondition", wrong
    assert "not snapshot 'look'" in wrong["msg"]

    assert results["unmount"]["changed"] is True
    assert results["unmount again"]["changed"] is False
    assert results["unmount the view"]["changed"] is True

    for name in ("mount over a foreign mount", "unmount a foreign mount"):
        refused = results[name]
        assert refused["failed"] is True and refused["error_class"] == "FailedPrecondition"
        assert "tmpfs" in refused["msg"], refused
    assert foreign_still_mounted

    assert results["unmount for a snapshot that does not exist"]["changed"] is False
    committed = results["mount a committed snapshot"]
    assert committed["failed"] is True and committed["error_class"] == "FailedPrecondition"
    assert left_mounted == []
    assert os.path.isdir(path)  # the mount point made for the mount stays
