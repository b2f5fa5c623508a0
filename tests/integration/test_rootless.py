"""The rootless rows' machinery (conformance/rootless.py): what runs there
runs unprivileged, in user and mount namespaces of its own, and what it
does comes back to the parent as pytest would have seen it.
"""

import functools
import json
import os
import subprocess
import sys

import pytest

from conformance import fstest
from conformance.filesystems import TEST_PREFIX
from conformance.helpers import apply_to_mounts
from conformance.rootless import (OUTSIDE_ID, ChildTraceback, DeferredSnapshotter,
                                  RootlessTarget, call_unprivileged, in_unprivileged_child,
                                  let_unprivileged_reach)
from snaplab import backends, kernel
from snaplab import mount as mountlib

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mapping another uid range needs root")


@pytest.fixture
def shared_dir(scratch_dir):
    """A directory both the test and the unprivileged child may write."""
    with scratch_dir(TEST_PREFIX + "rootless-") as base:
        os.chmod(base, 0o711)
        shared = os.path.join(base, "shared")
        os.mkdir(shared)
        os.chmod(shared, 0o777)
        yield shared


@pytest.fixture
def ext4(loop_filesystem):
    """A loop ext4 the unprivileged child can reach (as the rootless rows' are)."""
    with loop_filesystem("ext4", TEST_PREFIX + "rootless-ext4-") as fs:
        pool_dir = os.path.dirname(fs.mountpoint)
        scratch = os.path.dirname(pool_dir)
        assert let_unprivileged_reach(fs.mountpoint, pool_dir) == scratch
        os.chmod(scratch, 0o711)
        assert let_unprivileged_reach(fs.mountpoint, pool_dir) is None
        assert os.stat(os.path.join(pool_dir, "ext4.img")).st_mode & 0o007 == 0
        os.chmod(fs.mountpoint, 0o777)
        yield fs


def _identity():
    with open("/proc/self/uid_map", encoding="ascii") as uid_map:
        mapped = uid_map.read().split()
    return {"uid": os.getuid(), "gid": os.getgid(), "groups": os.getgroups(),
            "uid_map": mapped, "in_user_namespace": kernel.in_user_namespace(),
            "child": in_unprivileged_child()}


def test_the_child_is_root_only_in_a_user_namespace_of_its_own():
    seen = call_unprivileged(_identity)
    assert seen == {"uid": 0, "gid": 0, "groups": [], "uid_map": ["0", str(OUTSIDE_ID), "65536"],
                    "in_user_namespace": True, "child": True}
    assert not in_unprivileged_child()


def _make_files(directory):
    plain = os.path.join(directory, "plain")
    open(plain, "w").close()
    chowned = os.path.join(directory, "chowned")
    open(chowned, "w").close()
    os.lchown(chowned, 1, 2)


def test_what_the_child_makes_belongs_to_the_mapped_ids_outside(shared_dir):
    call_unprivileged(_make_files, shared_dir)
    plain = os.stat(os.path.join(shared_dir, "plain"))
    chowned = os.stat(os.path.join(shared_dir, "chowned"))
    assert (plain.st_uid, plain.st_gid) == (OUTSIDE_ID, OUTSIDE_ID)
    assert (chowned.st_uid, chowned.st_gid) == (OUTSIDE_ID + 1, OUTSIDE_ID + 2)


def _write_into(directory):
    open(os.path.join(directory, "not-mine"), "w").close()


def test_the_child_has_no_privilege_outside(shared_dir):
    os.chmod(shared_dir, 0o755)  # root's own directory, as any other
    with pytest.raises(PermissionError) as refused:
        call_unprivileged(_write_into, shared_dir)
    assert isinstance(refused.value.__cause__, ChildTraceback)
    assert not os.path.exists(os.path.join(shared_dir, "not-mine"))


def _fails():
    observed = 41
    assert observed == 42, "the child saw %d" % observed


def test_a_failing_assertion_fails_in_the_parent_with_its_text_and_traceback():
    with pytest.raises(AssertionError, match="the child saw 41") as failed:
        call_unprivileged(_fails)
    cause = failed.value.__cause__
    assert isinstance(cause, ChildTraceback)
    assert "in _fails" in str(cause) and "observed == 42" in str(cause)


def test_skip_xfail_and_fail_come_back_as_themselves():
    with pytest.raises(pytest.skip.Exception, match="^not here$"):
        call_unprivileged(pytest.skip, "not here")
    with pytest.raises(pytest.xfail.Exception, match="^known$"):
        call_unprivileged(pytest.xfail, "known")
    with pytest.raises(pytest.fail.Exception, match="^failed so$"):
        call_unprivileged(pytest.fail, "failed so")


def _overlay_child_mounted(root, work):
    """In the child: an overlay snapshot on a layer, mounted and left mounted."""
    sn = backends.open_snapshotter(root, "overlay")
    apply_to_mounts(sn.prepare("base-tmp", ""), work, fstest.apply(
        fstest.create_dir("/d", 0o755), fstest.create_file("/d/f", b"f", 0o644)))
    sn.commit("base", "base-tmp")
    mounts = sn.prepare("child", "base")
    merged = os.path.join(work, "merged")
    os.mkdir(merged)
    mountlib.mount_all(mounts, merged)
    fstest.apply(fstest.remove_all("/d"), fstest.create_dir("/d", 0o755))(merged)
    sn.close()
    upper = os.path.join(root, "snapshots", "2", "fs")
    return {"options": mounts[0].options,
            "mounted_with": mountlib.lookup(merged).super_options,
            "opaque": os.getxattr(os.path.join(upper, "d"), "user.overlay.opaque"),
            "mounted_in_child": mountlib.mounts_under(work)}


def test_overlay_in_the_child_uses_userxattr_and_its_mounts_stay_there(ext4):
    root, work = os.path.join(ext4.mountpoint, "root"), os.path.join(ext4.mountpoint, "work")
    os.mkdir(work, 0o777)
    os.chmod(work, 0o777)
    seen = call_unprivileged(_overlay_child_mounted, root, work)
    assert "userxattr" in seen["options"] and "userxattr" in seen["mounted_with"]
    assert seen["opaque"] == b"y"  # user.overlay.*, which the unprivileged may write
    assert seen["mounted_in_child"] == [os.path.join(work, "merged")]
    assert mountlib.mounts_under(work) == []  # gone with the child's namespace


def test_a_deferred_snapshotter_opens_only_where_it_is_used(shared_dir):
    root = os.path.join(shared_dir, "root")
    handle = DeferredSnapshotter(functools.partial(backends.open_snapshotter, root, "native"),
                                 "native")
    handle.prepare("active", "")  # a call in the parent runs in a child of its own
    assert [info.name for info in handle.list()] == ["active"]
    assert os.stat(os.path.join(root, "metadata.db")).st_uid == OUTSIDE_ID
    handle.close()  # never opened here: nothing to close
    assert call_unprivileged(lambda: handle.stat("active").name) == "active"


def test_the_rootless_rows_run_the_suite(tmp_path):
    results = tmp_path / "results.json"
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "conformance", "-q", "-p", "no:cacheprovider",
         "-k", "test_basic or test_chown or remove_directory_in_lower or unknown_key "
               "or child_excludes",
         "--backends", "rootless-native,rootless-overlay", "--filesystems", "ext4",
         "--results-json", str(results)],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True,
        timeout=600, check=False)
    assert proc.returncode == 0, proc.stdout
    outcomes = {(r["target"], r["case"]): r["outcome"]
                for r in json.loads(results.read_text())["results"]}
    assert outcomes[("rootless-overlay-on-ext4", "remove_directory_in_lower_layer")] == "passed"
    assert outcomes[("rootless-native-on-ext4", "usage_of_child_excludes_its_parent")] == "skipped"
    assert set(outcomes.values()) == {"passed", "skipped"}
    assert len(outcomes) == 2 * 7, outcomes  # (three cases are about unknown keys)



# Cases of a rootless row, run by the suite's own conftest (as a plugin).
PROBE_CASES = """
import os

import pytest

from snaplab import kernel, mount


def test_runs_unprivileged(target, snapshotter, work):
    snapshotter.prepare("active", "")
    with open("/proc/self/uid_map") as uid_map:
        assert uid_map.read().split() == ["0", "%d", "65536"]
    assert kernel.in_user_namespace()


def test_fails(target):
    assert 41 == 42, "the child says no"


def test_skips(target):
    pytest.skip("the child skipped")


def test_leaves_a_mount(target, work):
    mount.mount(mount.Mount("bind", work, options=["rbind"]), work)
"""


def test_a_rootless_row_reports_each_case_as_it_ran_unprivileged(tmp_path, shared_dir):
    (tmp_path / "test_probe.py").write_text(PROBE_CASES % OUTSIDE_ID)
    results = tmp_path / "results.json"
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "conformance.conftest", "-p", "no:cacheprovider",
         "-c", os.devnull, "--rootdir", str(tmp_path), str(tmp_path / "test_probe.py"),
         "--backends", "rootless-native", "--filesystems", "host-dir", "--fs-dir", shared_dir,
         "--results-json", str(results)],
        cwd=str(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        universal_newlines=True, timeout=600, check=False,
        env=dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", "")))
    outcomes = {r["case"]: (r["outcome"], r["reason"])
                for r in json.loads(results.read_text())["results"]}
    assert outcomes["runs_unprivileged"][0] == "passed", proc.stdout
    assert outcomes["fails"][0] == "failed"
    assert "the child says no" in proc.stdout and "assert 41 == 42" in proc.stdout
    assert outcomes["skips"] == ("skipped", "the child skipped")
    assert outcomes["leaves_a_mount"][0] == "failed"
    assert "the test left mounts behind" in proc.stdout
    assert mountlib.mounts_under(shared_dir) == []  # the child's mount went with it
    assert os.listdir(shared_dir) == []


def test_the_zfs_column_is_skipped_before_anything_is_made():
    target = RootlessTarget("rootless-native", "zfs")
    with pytest.raises(pytest.skip.Exception, match="datasets are real root's"):
        target.setup_session(request=None)  # the pool is not even asked
    assert target.traits.usage_includes_parent  # snaplab-native.yml's
