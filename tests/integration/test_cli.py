"""The snaplab CLI for real: `python -m snaplab` as a subprocess on a temp root
on the host filesystem, with the native and overlay backends.

Every test works inside its own `snaplab-test-cli-*` temp directory; the
fixture unmounts what the test mounted there (only there) and removes the
directory, also when the test fails.
"""

import errno
import json
import os
import subprocess
import sys
import tempfile

import pytest

from snaplab import errors
from snaplab import mount as mountlib
from tests.integration.cli_lab import Lab, write_file

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounting needs root")

NOT_FOUND = errors.NotFound.exit_code
ALREADY_EXISTS = errors.AlreadyExists.exit_code
FAILED_PRECONDITION = errors.FailedPrecondition.exit_code
INVALID_ARGUMENT = errors.InvalidArgument.exit_code


def _overlay_usable(directory):
    from snaplab.kernel import filesystem_in_kernel
    return filesystem_in_kernel("overlay") and mountlib.lookup(directory).fstype != "overlay"


@pytest.fixture(params=["native", "overlay"])
def lab(request, scratch_dir):
    if request.param == "overlay" and not _overlay_usable(tempfile.gettempdir()):
        pytest.skip("overlay cannot run on %s here" % tempfile.gettempdir())
    with scratch_dir("snaplab-test-cli-") as base:
        yield Lab(request.param, base)


def test_the_demo(lab):
    target = lab.target()
    # prepare, with ctr's mount command lines
    lines = lab.out("prepare", "--target", target, "base-work").splitlines()
    assert lines and all(line.startswith("mount -t ") and (" %s " % target) in line + " "
                         for line in lines)
    # mount it for real, write a file, unmount
    assert lab.out("mount", target, "base-work") == ""
    assert mountlib.is_mountpoint(target)
    write_file(os.path.join(target, "hello.bin"), 100_000)
    os.mkdir(os.path.join(target, "etc"))
    with open(os.path.join(target, "etc", "motd"), "w") as f:
        f.write("hi there\n")
    assert lab.out("umount", target) == ""
    assert not mountlib.is_mountpoint(target)
    assert os.listdir(target) == []

    assert lab.out("commit", "base", "base-work") == ""
    assert lab.out("ls") == ("KEY  PARENT KIND      \n"
                             "base        Committed \n")

    lab.run("prepare", "work", "base")
    lab.run("view", "look", "base")
    assert lab.out("tree") == " base\n  \\_ look\n  \\_ work\n"
    assert lab.out("ls") == ("KEY  PARENT KIND      \n"
                             "base        Committed \n"
                             "look base   View      \n"
                             "work base   Active    \n")

    # the view shows the file and refuses writes
    lab.run("mount", target, "look")
    with open(os.path.join(target, "etc", "motd")) as f:
        assert f.read() == "hi there\n"
    assert os.path.getsize(os.path.join(target, "hello.bin")) == 100_000
    with pytest.raises(OSError) as caught:
        open(os.path.join(target, "new-file"), "w").close()
    assert caught.value.errno == errno.EROFS
    lab.run("umount", target)

    # the active child shows it too and takes writes
    lab.run("mount", target, "work")
    assert os.path.exists(os.path.join(target, "hello.bin"))
    write_file(os.path.join(target, "child.bin"), 5000)
    lab.run("umount", target)

    # usage of the committed layer holds the file
    rows = lab.out("usage", "-b", "base").splitlines()
    assert rows[0].split() == ["KEY", "SIZE", "INODES"]
    key, size, inodes = rows[1].split()
    assert key == "base" and int(size) >= 100_000 and int(inodes) >= 3
    human = lab.out("usage").splitlines()
    assert [r.split()[0] for r in human] == ["KEY", "base", "look", "work"]
    assert human[1].split()[2] == "KiB"
    assert human[2].split()[1:3] == ["0.0", "B"]  # a view uses nothing itself

    # info: ctr's JSON
    info = json.loads(lab.out("info", "base"))
    assert list(info)[:2] == ["Kind", "Name"]
    assert info["Kind"] == "Committed" and info["Name"] == "base"
    assert "Parent" not in info
    assert "containerd.io/gc.root" in info["Labels"]
    assert info["Created"] == info["Updated"] and info["Created"].endswith("Z")
    assert lab.out("info", "base").startswith('{\n    "Kind": "Committed",\n')
    assert json.loads(lab.out("info", "work"))["Parent"] == "base"
    assert "containerd.io/gc.root" in json.loads(lab.out("info", "work"))["Labels"]
    assert "Labels" not in json.loads(lab.out("info", "look"))  # view: no gc.root

    # labels: set, show, delete
    out = lab.out("label", "base", "color=blue", "size=big")
    assert set(out.strip().split(",")) >= {"color=blue", "size=big"}
    assert "color=blue" in lab.out("label", "base")
    out = lab.out("label", "base", "color=")
    assert "color=" not in out and "size=big" in out
    assert "color" not in json.loads(lab.out("info", "base"))["Labels"]

    # rm: a parent with children is refused; children first, then the parent
    proc = lab.run("rm", "base", code=FAILED_PRECONDITION)
    assert "remove" in proc.stderr and "base" in proc.stderr
    assert "base" in lab.out("ls")
    lab.run("rm", "work", "look")
    lab.run("del", "base")
    assert lab.out("ls") == "KEY PARENT KIND \n"
    assert lab.out("tree") == ""


def test_every_verb_has_json_output(lab):
    target = lab.target()
    mounts = lab.json("prepare", "-t", target, "a")
    assert mounts and set(mounts[0]) == {"Type", "Source", "Target", "Options"}
    assert lab.json("mounts", target, "a") == mounts
    mounted = lab.json("mount", target, "a")
    assert mounted == {"target": target, "key": "a", "mounts": mounts}
    write_file(os.path.join(target, "f"), 10_000)
    assert lab.json("umount", target) == {"target": target, "unmounted": True}
    committed = lab.json("commit", "--label", "team=x", "c", "a")
    assert committed["Name"] == "c" and committed["Kind"] == "Committed"
    assert committed["Labels"]["team"] == "x"
    assert "containerd.io/gc.root" in committed["Labels"]
    view_mounts = lab.json("view", "v", "c")
    assert view_mounts and all(isinstance(m["Options"], list) for m in view_mounts)
    lab.json("prepare", "p", "c")
    listing = lab.json("ls")
    assert [(i["Name"], i["Kind"], i.get("Parent", "")) for i in listing] == [
        ("c", "Committed", ""), ("p", "Active", "c"), ("v", "View", "c")]
    tree = lab.json("tree")
    assert [n["Name"] for n in tree] == ["c"]
    assert [n["Name"] for n in tree[0]["Children"]] == ["p", "v"]
    info = lab.json("info", "c")
    assert info["Name"] == "c" and info["Labels"]["team"] == "x"
    usage = lab.json("usage")
    assert [u["key"] for u in usage] == ["c", "p", "v"]
    assert usage[0]["size"] >= 10_000 and usage[0]["inodes"] >= 2
    assert lab.json("usage", "c") == usage[:1]
    labelled = lab.json("label", "c", "team=", "new=1")
    assert labelled["Labels"].get("new") == "1" and "team" not in labelled["Labels"]
    assert lab.json("cleanup") == {"cleanup": "done"}
    assert lab.json("rm", "p", "v") == {"removed": ["p", "v"]}
    # a failing rm still reports what it removed before stopping
    proc = lab.run("--json", "rm", "c", "c", code=NOT_FOUND)
    assert json.loads(proc.stdout) == {"removed": ["c"]}
    assert lab.json("ls") == []


def test_global_options_after_the_verb_and_from_the_environment(lab):
    proc = subprocess.run(
        [sys.executable, "-m", "snaplab", "prepare", "k", "--root", lab.root,
         "--backend", lab.backend], cwd=REPO, env=lab.env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    env = dict(lab.env, SNAPLAB_ROOT=lab.root, SNAPLAB_BACKEND=lab.backend)
    proc = subprocess.run([sys.executable, "-m", "snaplab", "ls", "--json"], cwd=REPO,
                          env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert [i["Name"] for i in json.loads(proc.stdout)] == ["k"]


def test_errors_are_one_line_with_the_class_exit_code(lab):
    target = lab.target()
    plain_file = os.path.join(lab.base, "plain")
    open(plain_file, "w").close()
    lab.run("prepare", "a")
    lab.run("commit", "c", "a")
    lab.run("prepare", "act", "c")
    lab.run("view", "v", "c")
    before = lab.out("ls")
    labels_before = lab.out("label", "c")

    cases = [
        (("info", "missing"), NOT_FOUND),
        (("usage", "missing"), NOT_FOUND),
        (("mounts", target, "missing"), NOT_FOUND),
        (("label", "missing", "a=b"), NOT_FOUND),
        (("prepare", "x", "missing-parent"), NOT_FOUND),
        (("commit", "n", "missing"), NOT_FOUND),
        (("rm", "missing"), NOT_FOUND),
        (("prepare", "c"), ALREADY_EXISTS),
        (("view", "act"), ALREADY_EXISTS),
        (("commit", "c", "act"), ALREADY_EXISTS),
        (("commit", "n", "v"), FAILED_PRECONDITION),
        (("mounts", target, "c"), FAILED_PRECONDITION),
        (("mount", target, "c"), FAILED_PRECONDITION),
        (("rm", "c"), FAILED_PRECONDITION),
        (("prepare", "x", "act"), INVALID_ARGUMENT),
        (("prepare", ""), INVALID_ARGUMENT),
        (("prepare", "x", ""), INVALID_ARGUMENT),
        (("prepare", "--label", "novalue", "x"), INVALID_ARGUMENT),
        (("prepare", "--label", "=v", "x"), INVALID_ARGUMENT),
        (("label", "c", "bad"), INVALID_ARGUMENT),
        (("label", "c", "k=" + "v" * 5000), INVALID_ARGUMENT),
        (("ls", "--filter", "|oops"), INVALID_ARGUMENT),
        (("rm", "act", ""), INVALID_ARGUMENT),
        (("mount", plain_file, "act"), INVALID_ARGUMENT),
        (("mount", os.path.join(lab.base, "nowhere"), "act"), NOT_FOUND),
        (("umount", target), NOT_FOUND),
        (("bogus-verb",), INVALID_ARGUMENT),
        (("prepare",), INVALID_ARGUMENT),
        (("--option", "async_remove=maybe", "ls"), INVALID_ARGUMENT),
        (("--option", "no_such_option=1", "ls"), INVALID_ARGUMENT),
    ]
    for argv, code in cases:
        proc = lab.run(*argv, code=code)
        assert proc.stdout == "", (argv, proc.stdout)
    proc = lab.run("--root", lab.root, "--backend", "nope", "ls", root=False,
                   code=INVALID_ARGUMENT)
    assert "unknown backend" in proc.stderr
    other = "overlay" if lab.backend == "native" else "native"
    proc = lab.run("--root", lab.root, "--backend", other, "ls", root=False,
                   code=FAILED_PRECONDITION)
    assert lab.backend in proc.stderr

    # already mounted
    lab.run("mount", target, "act")
    proc = lab.run("mount", target, "v", code=FAILED_PRECONDITION)
    assert "already" in proc.stderr
    lab.run("umount", target)

    # nothing changed
    assert lab.out("ls") == before
    assert lab.out("label", "c") == labels_before
    assert os.listdir(target) == []


def test_rm_stops_at_the_first_error(lab):
    for key in ("a", "b"):
        lab.run("prepare", key)
    proc = lab.run("rm", "a", "missing", "b", code=NOT_FOUND)
    assert proc.stderr == "snaplab: failed to remove \"missing\": snapshot 'missing' does not exist\n"
    assert [i["Name"] for i in lab.json("ls")] == ["b"]


def test_reading_a_missing_root_creates_nothing(lab):
    lab.root = os.path.join(lab.base, "not-yet")
    proc = lab.run("ls", code=NOT_FOUND)
    assert proc.stderr.startswith("snaplab: no snapshotter root at ")
    lab.run("info", "x", code=NOT_FOUND)
    lab.run("rm", "x", code=NOT_FOUND)
    assert not os.path.exists(lab.root)
    lab.run("prepare", "x")
    assert os.path.exists(os.path.join(lab.root, "metadata.db"))


@pytest.mark.parametrize("lab", ["overlay"], indirect=True)
def test_overlay_backend_options(lab):
    opts = ["--option", "upperdir_label=true", "--option", "mount_options=nodev"]
    lab.run(*opts, "prepare", "a")
    lab.run(*opts, "commit", "c", "a")
    lab.run(*opts, "prepare", "b", "c")
    info = json.loads(lab.out(*opts, "info", "b"))
    upper = info["Labels"]["containerd.io/snapshot/overlay.upperdir"]
    assert upper.startswith(lab.root) and os.path.isdir(upper)
    line = lab.out(*opts, "mounts", "/mnt", "b")
    assert line.startswith("mount -t overlay overlay /mnt -o ") and "nodev" in line
    target = lab.target()
    lab.run(*opts, "mount", target, "b")
    assert mountlib.lookup(target).fstype == "overlay"
    lab.run("umount", target)


def test_max_expanded_size_refuses_a_decompression_bomb_before_writing(lab):
    """A gzip layer of 8 MiB of zeros (a few KiB compressed) with a 1 MiB
    limit: refused with InvalidArgument, nothing committed or left active;
    without the limit it applies."""
    import gzip
    import io
    import tarfile
    layer = os.path.join(lab.base, "bomb.tar.gz")
    with gzip.open(layer, "wb") as packed, tarfile.open(fileobj=packed, mode="w") as tar:
        member = tarfile.TarInfo("zeros")
        member.size = 8 << 20
        tar.addfile(member, io.BytesIO(bytes(member.size)))
    assert os.path.getsize(layer) < 64 << 10
    lab.run("prepare", "work")
    proc = lab.run("apply-layers", "--max-expanded-size", "1M", layer, code=INVALID_ARGUMENT)
    assert "1048576" in proc.stderr or "1 MiB" in proc.stderr, proc.stderr
    lab.run("apply-layer", "--max-expanded-size", "1M", "work", layer, code=INVALID_ARGUMENT)
    assert [i["Name"] for i in lab.json("ls")] == ["work"]
    assert lab.json("usage", "work")[0]["size"] < 1 << 20
    lab.run("apply-layer", "--max-expanded-size", "banana", "work", layer, code=INVALID_ARGUMENT)
    lab.run("apply-layers", layer)
    assert len(lab.json("ls")) == 2


def test_capabilities_and_a_mapped_prepare(lab):
    """remap-ids advertised (overlay: its probe passed on this kernel), and
    the mapping labels honoured: `snaplab mount` shows host ids."""
    target = lab.target()
    lab.json("prepare", "a")
    lab.json("mount", target, "a")
    assert lab.json("capabilities") == {"capabilities": ["remap-ids"]}
    assert lab.run("capabilities").stdout == "remap-ids\n"
    write_file(os.path.join(target, "f"), 10)
    lab.json("umount", target)
    lab.json("commit", "c", "a")
    mapping = ["--label", "containerd.io/snapshot/uidmapping=0:100000:65536",
               "--label", "containerd.io/snapshot/gidmapping=0:200000:65536"]
    lab.json("prepare", *mapping, "mapped", "c")
    lab.json("mount", target, "mapped")
    try:
        owner = os.stat(os.path.join(target, "f"))
        assert (owner.st_uid, owner.st_gid) == (100000, 200000)
    finally:
        lab.json("umount", target)
    refused = lab.run("prepare", "--label", "containerd.io/snapshot/uidmapping=1:5:5",
                      "--label", "containerd.io/snapshot/gidmapping=0:5:5", "bad", "c", code=5)
    assert "does not map container id 0" in refused.stderr
