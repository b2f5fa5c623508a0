"""Tests of the lab's box builder (labs/boxes.py).

The fast tests check the recipe hash and the cache logic on temporary
copies of the recipe and temporary caches; the cleanup test makes a real
mount inside a build's work directory. The slow test builds (or reuses) the
bookworm box and boots it twice; it runs only with SNAPLAB_LAB=1.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

import pytest

from labs import boxes

IS_ROOT = os.geteuid() == 0
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture
def tmp():
    path = tempfile.mkdtemp(prefix="snaplab-test-boxes-")
    try:
        yield path
    finally:
        subprocess.run(["umount", "--recursive", path], stderr=subprocess.DEVNULL, check=False)
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def recipe(tmp):
    """A copy of the real recipe that a test may change."""
    path = os.path.join(tmp, "recipe")
    shutil.copytree(boxes.RECIPE, path)
    return path


@pytest.fixture
def cache(tmp, monkeypatch):
    path = os.path.join(tmp, "cache")
    os.makedirs(path)
    monkeypatch.setenv("SNAPLAB_BOX_CACHE", path)
    return path


@pytest.fixture
def no_preflight(monkeypatch):
    """The build's host checks pass (the tests that use this replace the
    build itself, so they run without the lab's packages installed)."""
    monkeypatch.setattr(boxes, "missing_tools", lambda tools: [])
    monkeypatch.setattr(boxes, "find_vagrant_key", lambda patterns: "/dev/null")


def fake_built(box, box_bytes=100, image_bytes=200, **facts):
    """Files in the cache as a finished build leaves them (small stand-ins)."""
    with open(box.box, "wb") as f:
        f.write(b"b" * box_bytes)
    with open(box.image, "wb") as f:
        f.write(b"i" * image_bytes)
    manifest = dict(release=box.release, recipe=box.digest, box=os.path.basename(box.box),
                    image=os.path.basename(box.image), box_bytes=box_bytes,
                    image_bytes=image_bytes, kernel="6.1.0-0-cloud-amd64", zfs_module="2.1.11-1",
                    built="2026-01-01T00:00:00+00:00", total_seconds=1.0, **facts)
    with open(box.manifest, "w") as f:
        json.dump(manifest, f)
    return manifest


# -- recipe hash -------------------------------------------------------------


def test_recipe_hash_is_stable_for_an_unchanged_recipe(recipe):
    assert boxes.recipe_hash("bookworm", recipe) == boxes.recipe_hash("bookworm", recipe)
    assert boxes.recipe_hash("bookworm", recipe) == boxes.recipe_hash("bookworm")


def test_recipe_hash_differs_per_release():
    hashes = {boxes.recipe_hash(release) for release in boxes.RELEASES}
    assert len(hashes) == len(boxes.RELEASES)


@pytest.mark.parametrize("name", ["packages.txt", "zfs-packages.txt", "configure.sh", "zfs.sh",
                                  "seal.sh", "image.json", "kernel-config.txt",
                                  "rootfs/etc/systemd/system/snaplab-firstboot.service"])
def test_recipe_hash_changes_when_a_recipe_file_changes(recipe, name):
    before = boxes.recipe_hash("bookworm", recipe)
    with open(os.path.join(recipe, name), "a") as f:
        f.write("\n")
    assert boxes.recipe_hash("bookworm", recipe) != before


def test_recipe_hash_changes_when_a_file_is_added_or_renamed(recipe):
    before = boxes.recipe_hash("bookworm", recipe)
    extra = os.path.join(recipe, "rootfs", "etc", "motd")
    with open(extra, "w") as f:
        f.write("hello\n")
    added = boxes.recipe_hash("bookworm", recipe)
    assert added != before
    os.rename(extra, extra + ".d")
    assert boxes.recipe_hash("bookworm", recipe) not in (before, added)


def test_recipe_hash_changes_with_the_executable_bit(recipe):
    before = boxes.recipe_hash("bookworm", recipe)
    os.chmod(os.path.join(recipe, "packages.txt"), 0o755)
    assert boxes.recipe_hash("bookworm", recipe) != before


def test_recipe_hash_ignores_editor_and_python_junk(recipe):
    before = boxes.recipe_hash("bookworm", recipe)
    for junk in ("configure.sh~", ".configure.sh.swp", "__pycache__/x.pyc"):
        path = os.path.join(recipe, junk)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write("junk")
    assert boxes.recipe_hash("bookworm", recipe) == before


def test_recipe_hash_covers_the_build_steps_source():
    steps = {f.__name__ for f in boxes._RECIPE_STEPS}
    assert steps == {"step_debootstrap", "step_configure", "step_zfs", "step_seal",
                     "step_image", "step_box"}

    def step_box_changed(self):  # stands in for an edited step
        return "other"
    changed = [step_box_changed if f.__name__ == "step_box" else f for f in boxes._RECIPE_STEPS]
    assert boxes.recipe_hash("bookworm", steps=changed) != boxes.recipe_hash("bookworm")


def test_recipe_hash_ignores_code_outside_the_build_steps():
    # The CLI and check code can change without rebuilding every box.
    assert boxes.main not in boxes._RECIPE_STEPS
    assert boxes.check not in boxes._RECIPE_STEPS


# -- cache -------------------------------------------------------------------


def test_a_built_box_is_reused_without_building(cache, monkeypatch):
    box = boxes.current_box("bookworm")
    manifest = fake_built(box)

    def no_build(*args, **kwargs):
        raise AssertionError("rebuilt a box the cache has")
    monkeypatch.setattr(boxes, "Build", no_build)
    reused, read = boxes.build("bookworm")
    assert reused.box == box.box and read == manifest
    assert boxes.main(["path", "bookworm"]) == 0


def test_cache_files_are_named_by_release_and_recipe_hash(cache):
    box = boxes.current_box("trixie")
    assert box.box == os.path.join(cache, f"snaplab-trixie-{box.digest}.box")
    assert box.image == os.path.join(cache, f"snaplab-trixie-{box.digest}.qcow2")
    assert box.manifest == os.path.join(cache, f"snaplab-trixie-{box.digest}.json")


def test_a_box_of_another_recipe_is_not_current(cache):
    old = boxes.Box("bookworm", "000000000000")
    fake_built(old)
    assert old.is_built()
    assert not boxes.current_box("bookworm").is_built()


def test_files_without_a_manifest_do_not_count_as_built(cache):
    # An interrupted build publishes the manifest last: without it, no box.
    box = boxes.current_box("bookworm")
    fake_built(box)
    os.unlink(box.manifest)
    assert not box.is_built()


def test_a_truncated_or_missing_file_does_not_count_as_built(cache):
    box = boxes.current_box("bookworm")
    fake_built(box)
    with open(box.image, "r+b") as f:
        f.truncate(10)
    assert not box.is_built()
    fake_built(box)
    os.unlink(box.box)
    assert not box.is_built()


def test_a_corrupt_manifest_does_not_count_as_built(cache):
    box = boxes.current_box("bookworm")
    fake_built(box)
    with open(box.manifest, "w") as f:
        f.write("{not json")
    assert not box.is_built()


def test_prune_removes_only_the_same_release_s_other_recipes(cache):
    current = boxes.current_box("bookworm")
    fake_built(current)
    old = boxes.Box("bookworm", "000000000000")
    fake_built(old)
    with open(os.path.join(cache, "snaplab-bookworm-failed.log"), "w") as f:
        f.write("log")
    other = boxes.Box("trixie", "111111111111")
    fake_built(other)
    removed = boxes.prune(current)
    assert sorted(removed) == sorted([os.path.basename(old.box), os.path.basename(old.image),
                                      os.path.basename(old.manifest), "snaplab-bookworm-failed.log"])
    assert current.is_built() and other.is_built()


def test_path_fails_with_the_build_command_when_not_built(cache, capsys):
    assert boxes.main(["path", "bullseye"]) == 1
    assert "python3 labs/boxes.py build bullseye" in capsys.readouterr().err


def test_unknown_release_is_refused(cache, capsys):
    assert boxes.main(["build", "buster"]) == 1
    assert "unknown release 'buster'" in capsys.readouterr().err
    assert os.listdir(cache) == []


def test_list_names_each_release_and_its_recipe(cache, capsys):
    fake_built(boxes.current_box("bookworm"))
    assert boxes.main(["list"]) == 0
    out = capsys.readouterr().out
    for release in boxes.RELEASES:
        assert f"{release:16} recipe {boxes.recipe_hash(release)}" in out
    assert "bookworm         recipe" in out and "built" in out


@pytest.mark.skipif(not IS_ROOT, reason="the build refuses non-root users first")
def test_a_build_without_the_host_commands_names_them_before_starting(cache, monkeypatch):
    monkeypatch.setattr(boxes, "missing_tools", lambda tools: ["sfdisk"])
    with pytest.raises(boxes.BoxError, match="missing host commands sfdisk: make lab-deps"):
        boxes.build("bookworm")
    assert os.listdir(cache) == []


@pytest.mark.skipif(not IS_ROOT, reason="needs root (mount)")
def test_an_interrupted_build_leaves_no_mount_work_directory_or_box(cache, tmp, monkeypatch,
                                                                    no_preflight):
    # A build interrupted with its chroot's /dev bind-mounted: the mount is
    # undone, the host side untouched, and nothing in the cache looks built.
    outside = os.path.join(tmp, "outside")
    os.makedirs(outside)
    with open(os.path.join(outside, "keep"), "w") as f:
        f.write("host file")

    def interrupted(self):
        os.makedirs(os.path.join(self.root, "dev"))
        subprocess.run(["mount", "--bind", outside, os.path.join(self.root, "dev")], check=True)
        self.log("pretend debootstrap output")
        raise KeyboardInterrupt
    monkeypatch.setattr(boxes.Build, "run_all", interrupted)
    with pytest.raises(KeyboardInterrupt):
        boxes.build("bookworm")
    assert boxes.mounts_under(cache) == []
    assert os.path.exists(os.path.join(outside, "keep"))
    assert sorted(os.listdir(cache)) == [".lock-bookworm", "snaplab-bookworm-failed.log"]
    assert not boxes.current_box("bookworm").is_built()


@pytest.mark.skipif(not IS_ROOT, reason="needs root (mount)")
def test_a_dead_build_s_work_directory_is_cleaned_by_the_next_build(cache, tmp, monkeypatch,
                                                                    no_preflight):
    outside = os.path.join(tmp, "outside")
    os.makedirs(outside)
    stale_dev = os.path.join(cache, ".work-bookworm-dead", "root", "dev")
    os.makedirs(stale_dev)
    subprocess.run(["mount", "--bind", outside, stale_dev], check=True)

    def stop(self):
        raise KeyboardInterrupt
    monkeypatch.setattr(boxes.Build, "run_all", stop)
    with pytest.raises(KeyboardInterrupt):
        boxes.build("bookworm")
    assert boxes.mounts_under(cache) == []
    assert not os.path.exists(os.path.dirname(os.path.dirname(stale_dev)))
    assert os.path.isdir(outside)


@pytest.mark.skipif(not IS_ROOT, reason="needs root (unshare, mount)")
def test_a_build_s_mounts_stay_in_its_own_mount_namespace(tmp):
    # What `boxes.py build` does first, in a child: a tmpfs it mounts is
    # seen there and not here while it lives, and is gone with it.
    point = os.path.join(tmp, "point")
    os.makedirs(point)
    child = subprocess.Popen(
        [sys.executable, "-c", "import sys, subprocess; sys.path.insert(0, %r); "
         "from labs import boxes; boxes.private_mount_namespace(); "
         "subprocess.run(['mount', '-t', 'tmpfs', 'none', %r], check=True); "
         "print(boxes.mounts_under(%r), flush=True); sys.stdin.read()" % (REPO, point, point)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, universal_newlines=True)
    try:
        assert child.stdout.readline().strip() == repr([point])
        assert boxes.mounts_under(point) == []
    finally:
        child.communicate("", timeout=60)
    assert child.returncode == 0
    assert boxes.mounts_under(point) == []
    assert os.listdir(point) == []


# -- parsing -----------------------------------------------------------------


def test_package_lists_drop_comments_and_blank_lines(tmp):
    path = os.path.join(tmp, "list.txt")
    with open(path, "w") as f:
        f.write("# a comment\n\npython3\nzstd  # inline\n")
    assert boxes.read_list(path) == ["python3", "zstd"]


def test_kernel_config_is_read_as_y_m_or_n():
    text = "CONFIG_XFS_FS=m\n# CONFIG_XFS_SUPPORT_V4 is not set\nCONFIG_BTRFS_FS=y\nCONFIG_X=\"s\"\n"
    assert boxes.parse_kernel_config(text) == {
        "CONFIG_XFS_FS": "m", "CONFIG_XFS_SUPPORT_V4": "n", "CONFIG_BTRFS_FS": "y", "CONFIG_X": "s"}


def test_the_recipe_requires_the_suites_kernel_options():
    required, reported = boxes.read_kernel_config_rules(os.path.join(boxes.RECIPE, "kernel-config.txt"))
    for option in ("CONFIG_EXT4_FS", "CONFIG_XFS_FS", "CONFIG_BTRFS_FS", "CONFIG_OVERLAY_FS",
                   "CONFIG_BLK_DEV_LOOP", "CONFIG_FUSE_FS", "CONFIG_VIRTIO_BLK"):
        assert option in required
    assert "CONFIG_XFS_SUPPORT_V4" in reported


def test_guest_report_lines_are_key_value():
    assert boxes.parse_guest_report("kernel=6.1\nnoise\nfailed_units=\ndone=1\n") == {
        "kernel": "6.1", "failed_units": "", "done": "1"}


# -- slow: a real box, booted ------------------------------------------------


@pytest.mark.skipif(os.environ.get("SNAPLAB_LAB") != "1",
                    reason="builds and boots a VM (minutes): set SNAPLAB_LAB=1")
def test_bookworm_box_boots_and_each_clone_has_its_own_identity():
    box, manifest = boxes.build("bookworm")
    first = boxes.check("bookworm", reboot=True)
    second = boxes.check("bookworm")
    assert first["kernel"] == second["kernel"] == manifest["kernel"]
    assert first["machine_id_after_reboot"] == first["machine_id"]
    assert first["machine_id"] != second["machine_id"]
    assert manifest["build_machine_id"] not in (first["machine_id"], second["machine_id"])


# -- the Debian mirror, from the host's apt sources -------------------------


def write(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)
    return path


def test_the_mirror_is_the_hosts_first_debian_entry_in_either_format(tmp):
    one_line = write(os.path.join(tmp, "sources.list"),
                     "# a comment\n"
                     "deb-src http://src.example/debian bookworm main\n"
                     "deb [arch=amd64 signed-by=/k.gpg] http://security.example/debian-security "
                     "bookworm-security main\n")
    d = os.path.join(tmp, "sources.list.d")
    write(os.path.join(d, "a-thirdparty.list"), "deb https://packages.example/apt cloud-sdk main\n")
    write(os.path.join(d, "b-disabled.sources"),
          "Types: deb\nURIs: http://off.example/debian\nSuites: bookworm\nComponents: main\n"
          "Enabled: no\n")
    write(os.path.join(d, "c-debian.sources"),
          "Types: deb\n# http://snapshot.example/archive/debian/20250520T000000Z\n"
          "URIs: http://mirror.example/debian/\nSuites: bookworm bookworm-updates\n"
          "Components: main contrib\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\n"
          "Types: deb\nURIs: http://mirror.example/debian-security\nSuites: bookworm-security\n"
          "Components: main\n")
    assert boxes.debian_mirror((one_line, d), environ={}) == "http://mirror.example/debian"
    # The one-line file's own Debian entry comes first when it has one.
    write(one_line, "deb http://proxy.example:3142/debian trixie main\n")
    assert boxes.debian_mirror((one_line, d), environ={}) == "http://proxy.example:3142/debian"


def test_the_mirror_given_wins_and_none_found_is_one_clear_error(tmp):
    d = os.path.join(tmp, "sources.list.d")
    write(os.path.join(d, "x.list"), "deb https://packages.example/apt nodistro main\n")
    assert boxes.debian_mirror((d,), environ={"SNAPLAB_DEBIAN_MIRROR": "http://m.example/d/"}) \
        == "http://m.example/d"
    with pytest.raises(boxes.BoxError, match="no Debian mirror in the host's apt sources.*"
                                             "SNAPLAB_DEBIAN_MIRROR or pass --mirror URL"):
        boxes.debian_mirror((d,), environ={})


def test_the_mirror_is_not_part_of_a_box_recipe(monkeypatch):
    before = {r: boxes.recipe_hash(r) for r in boxes.RELEASES}
    monkeypatch.setenv("SNAPLAB_DEBIAN_MIRROR", "http://elsewhere.example/debian")
    assert {r: boxes.recipe_hash(r) for r in boxes.RELEASES} == before


def test_a_backports_kernel_release_names_its_kernel_suite():
    spec = boxes.RELEASES["trixie-backports"]
    assert spec["suite"] == "trixie" and spec["kernel_suite"] == "trixie-backports"
    assert boxes.recipe_hash("trixie-backports") != boxes.recipe_hash("trixie")


def test_a_long_step_says_where_it_is_while_it_runs(tmp, cache, monkeypatch, capsys):
    monkeypatch.setattr(boxes, "PROGRESS_EVERY_S", 0.2)
    monkeypatch.setenv("SNAPLAB_DEBIAN_MIRROR", "http://mirror.example/debian")
    work = os.path.join(tmp, "work")
    os.makedirs(work)
    builder = boxes.Build(boxes.Box("bookworm", "0" * 12, cache), work)
    with builder.step("zfs dkms"):
        assert builder.run(["sh", "-c", "sleep 1.5; exit 3"], allowed=(0, 3)) == 3
        assert builder.run(["echo", "captured"], capture=True) == "captured\n"
        with pytest.raises(boxes.BoxError, match="exited with status 3"):
            builder.run(["sh", "-c", "exit 3"])
    out = capsys.readouterr().out
    assert "[bookworm] zfs dkms: " in out and " s so far (build " in out
    with open(builder.log_path) as f:
        assert "$ sh -c sleep 1.5; exit 3" in f.read()


def test_an_interrupted_command_is_stopped_with_its_children(tmp, cache, monkeypatch):
    """Ctrl-C or SIGTERM during a step (debootstrap's dpkg, a DKMS compile)
    stops the whole command, children included, before the build unwinds."""
    monkeypatch.setenv("SNAPLAB_DEBIAN_MIRROR", "http://mirror.example/debian")
    work = os.path.join(tmp, "work")
    os.makedirs(work)
    builder = boxes.Build(boxes.Box("bookworm", "0" * 12, cache), work)
    pids = os.path.join(tmp, "pids")
    script = f"sleep 60 & echo $$ $! > {pids}.tmp && mv {pids}.tmp {pids}; wait"
    timer = threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGTERM))
    with boxes.signals_raise(), pytest.raises(KeyboardInterrupt):
        timer.start()
        try:
            builder.run(["sh", "-c", script])
        finally:
            timer.cancel()
    with open(pids) as f:
        for pid in map(int, f.read().split()):
            assert not running(pid)


def running(pid):
    """Whether `pid` runs (a zombie waiting for its reaper does not)."""
    deadline = time.monotonic() + 10  # SIGKILL is delivered at once; reaping may lag
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except OSError:
            return False
        if state == "Z":
            return False
        time.sleep(0.05)
    return True
