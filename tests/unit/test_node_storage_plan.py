"""The node_storage role's engine (collection/plugins/module_utils/node_storage_plan.py),
without Ansible: the parsers on outputs captured from real tools, the
declarations' defaults and checks, the plan from (declared, state), and apply()
on real files (truncate and mkfs on a regular file: no loop device, no mount).

The engine imports only the standard library, so it is loaded from its file.
"""

import copy
import importlib.util
import json
import os
import subprocess

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_SPEC = importlib.util.spec_from_file_location(
    "node_storage_plan", os.path.join(REPO, "collection/plugins/module_utils/node_storage_plan.py"))
engine = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(engine)

# Captured on the build machine (util-linux 2.38, e2fsprogs 1.47, xfsprogs 6.1).
BLKID_EXT4 = """DEVNAME=e.img
UUID=04e93062-cc67-4d61-9d59-7fb9fbb1f2b5
VERSION=1.0
BLOCK_SIZE=1024
TYPE=ext4
USAGE=filesystem
"""
BLKID_ZFS = """DEVNAME=/img/zfs.img
LABEL=tank
UUID=13011155406011436263
UUID_SUB=6338223384839102155
BLOCK_SIZE=4096
TYPE=zfs_member
USAGE=filesystem
"""
BLKID_GPT = """DEVNAME=/dev/vdb
PTUUID=8c2a7e0f-93b5-4a5c-9d35-5b1c4f2e2a11
PTTYPE=gpt
"""
FINDMNT = """{
   "filesystems": [
      {
         "target": "/proc",
         "source": "proc",
         "fstype": "proc",
         "options": "rw,relatime"
      },{
         "target": "/",
         "source": "/dev/vda",
         "fstype": "ext4",
         "options": "rw,relatime,discard"
      },{
         "target": "/srv/ext",
         "source": "/dev/loop4",
         "fstype": "ext4",
         "options": "rw,relatime"
      }
   ]
}
"""
LOSETUP = """{
   "loopdevices": [
      {
         "name": "/dev/loop1",
         "back-file": "/tmp/snaplab-conformance-kq_xpook/ext4.img"
      },{
         "name": "/dev/loop4",
         "back-file": "/img/ext.img"
      }
   ]
}
"""
XFS_INFO_V5 = """meta-data=/dev/loop2             isize=512    agcount=4, agsize=19200 blks
         =                       sectsz=512   attr=2, projid32bit=1
         =                       crc=1        finobt=1, sparse=1, rmapbt=0
         =                       reflink=1    bigtime=1 inobtcount=1 nrext64=0
data     =                       bsize=4096   blocks=76800, imaxpct=25
naming   =version 2              bsize=4096   ascii-ci=0, ftype=1
"""
ZPOOL_STATUS = """  pool: tank
 state: ONLINE
config:

\tNAME            STATE     READ WRITE CKSUM
\ttank            ONLINE       0     0     0
\t  /img/zfs.img  ONLINE       0     0     0

errors: No known data errors
"""


def test_parsers_read_what_the_tools_print():
    assert engine.parse_blkid(BLKID_EXT4)["TYPE"] == "ext4"
    assert engine.holds(engine.parse_blkid(BLKID_GPT)) == "a gpt partition table"
    assert engine.holds(engine.parse_blkid("")) == ""
    assert [m["target"] for m in engine.parse_findmnt(FINDMNT)] == ["/proc", "/", "/srv/ext"]
    assert engine.parse_losetup(LOSETUP)["/img/ext.img"] == ["/dev/loop4"]
    assert engine.parse_losetup("") == {}  # no loop device at all: losetup prints nothing
    assert engine.parse_xfs_info(XFS_INFO_V5) == {"ftype": 1, "reflink": 1}
    assert engine.parse_zpool_status(ZPOOL_STATUS) == ["/img/zfs.img"]
    assert engine.parse_zfs_get("tank/snaplab\tmounted\tyes\ntank/snaplab\tmountpoint\t/srv/zfs\n") == {
        "tank/snaplab": {"mounted": "yes", "mountpoint": "/srv/zfs"}}
    assert engine.parse_fstab("# c\n/img/a.img  /srv/a/ ext4 loop 0 0\n\n")[0]["target"] == "/srv/a"


@pytest.mark.parametrize("text, size", [("4K", 4096), ("256M", 256 << 20), ("1G", 1 << 30),
                                        ("1GB", 10 ** 9), ("2g", 2 << 30), ("512", 512),
                                        ("banana", None), ("1.5G", None), ("", None)])
def test_sizes_are_read_as_truncate_reads_them(text, size):
    assert engine.parse_size(text) == size


def declare(**entry):
    base = {"name": "fs", "fstype": "ext4", "loop_file": "/img/fs.img", "size": "256M",
            "mount_point": "/srv/fs"}
    base.update(entry)
    return base


def test_partial_user_defaults_keep_the_builtins():
    # The role combined the user's dict in place of the built-ins: {persistent: false} lost state.
    declared, problems = engine.declarations([declare()], {"persistent": False})
    assert problems == []
    assert declared[0]["state"] == "present" and declared[0]["persistent"] is False
    assert declared[0]["mkfs_options"] == []


def test_a_size_that_is_no_size_is_refused_before_anything_is_made():
    _, problems = engine.declarations([declare(size="banana")])
    assert len(problems) == 1 and "'banana' is not a size" in problems[0]


@pytest.mark.parametrize("fstype, size, minimum", [("ext4", "4K", "128K"), ("xfs", "256M", "300M"),
                                                   ("btrfs", "100M", "109M"), ("zfs", "32M", "64M")])
def test_a_size_below_the_mkfs_minimum_is_refused(fstype, size, minimum):
    _, problems = engine.declarations([declare(fstype=fstype, size=size, zfs_pool="tank")])
    assert problems == ["fs: size %s is too small: %s needs at least %s" % (
        size, "a zfs pool" if fstype == "zfs" else "mkfs." + fstype, minimum)]


def test_the_declaration_as_a_whole_is_checked():
    _, problems = engine.declarations([
        declare(name="a"), declare(name="a", mount_point="/srv/fs/"),
        declare(name="b", mount_point="/srv/b", snapshotter_root={"path": "/elsewhere"}),
        declare(name="c", mount_point="/srv/c", fstype="zfs"),
        declare(name="d", mount_point="/srv/d", snapshotter_root={"path": "/srv/d/r", "backend": "btrfs"}),
        declare(name="e", mount_point="/srv/e", size=None)])
    said = "\n".join(problems)
    for expected in ("name must be unique; declared more than once: a",
                     "mount_point must be unique; declared more than once: /srv/fs",
                     "b: snapshotter_root.path /elsewhere is not below",
                     "c: a zfs declaration needs zfs_pool",
                     "d: a btrfs snapshotter_root needs a btrfs filesystem",
                     "e: a loop file declared present needs a size"):
        assert expected in said


def empty_state(**paths):
    state = {"mounts": [], "loops": {}, "fstab_text": "", "paths": {}, "probe": {}, "markers": {},
             "xfs": {}, "zfs": None, "missing_directories": {},
             "kernel_filesystems": ["ext4", "xfs", "btrfs", "overlay"]}
    state["paths"].update(paths)
    return state


def planned(entries, state, **options):
    declared, problems = engine.declarations(entries)
    assert problems == []
    return engine.plan(declared, state, **options)


def kinds(result, index=0):
    return [action["kind"] for action in result["filesystems"][index]["actions"]]


def test_a_new_loop_file_gets_made_formatted_mounted_and_a_boot_safe_fstab_line():
    state = empty_state()
    state["missing_directories"]["/img/new/fs.img"] = ["/img/new"]
    result = planned([declare(loop_file="/img/new/fs.img", snapshotter_root={"path": "/srv/fs/o"})], state)
    assert kinds(result) == ["mkdir", "loop_file", "mkfs", "mkdir", "fstab", "mount", "mkdir"]
    loop_file = result["filesystems"][0]["actions"][1]
    assert loop_file["marker"]["made_directories"] == ["/img/new"]
    # Loop-file lines had no nofail: a missing loop file could stop the boot.
    assert result["fstab"] == ("/img/new/fs.img /srv/fs ext4 loop,nofail,"
                               "x-systemd.requires-mounts-for=/img/new 0 0\n")
    mount = result["filesystems"][0]["actions"][5]["argv"]
    assert mount == ["mount", "--types", "ext4", "--options", "loop", "/img/new/fs.img", "/srv/fs"]


# /proc/filesystems of a Debian 12 kernel before `modprobe overlay` (abridged)
PROC_FILESYSTEMS = """nodev\tsysfs
nodev\ttmpfs
nodev\tproc
\text4
nodev\tautofs
\txfs
\tbtrfs
"""


def test_an_overlay_root_loads_the_overlay_module_first_and_once():
    """A node prerequisite of overlay roots (as containerd's unit runs modprobe
    overlay): only while the kernel has no overlayfs, before anything else (a
    kernel without it then leaves nothing half made), once for all roots."""
    state = empty_state()
    state["kernel_filesystems"] = engine.parse_proc_filesystems(PROC_FILESYSTEMS)
    assert state["kernel_filesystems"] == ["sysfs", "tmpfs", "proc", "ext4", "autofs", "xfs", "btrfs"]
    result = planned([
        declare(name="native", loop_file="/img/n.img", mount_point="/srv/n",
                snapshotter_root={"path": "/srv/n/r", "backend": "native"}),
        declare(name="o1", loop_file="/img/o1.img", mount_point="/srv/o1", snapshotter_root={"path": "/srv/o1/r"}),
        declare(name="o2", loop_file="/img/o2.img", mount_point="/srv/o2", snapshotter_root={"path": "/srv/o2/r"}),
    ], state)
    assert kinds(result, 0) == ["loop_file", "mkfs", "mkdir", "fstab", "mount", "mkdir"]
    assert kinds(result, 1) == ["modprobe", "loop_file", "mkfs", "mkdir", "fstab", "mount", "mkdir"]
    assert result["filesystems"][1]["actions"][0]["argv"] == ["modprobe", "overlay"]
    assert "modprobe" not in kinds(result, 2)
    loaded = empty_state()  # overlayfs in the kernel already (built in, or loaded)
    assert "modprobe" not in kinds(planned([declare(snapshotter_root={"path": "/srv/fs/r"})], loaded))


def test_a_kernel_without_overlay_fails_the_plan_before_its_filesystem_is_made(tmp_path):
    state = empty_state()
    state["kernel_filesystems"] = ["ext4"]
    loop_file = str(tmp_path / "fs.img")
    result = planned([declare(loop_file=loop_file, mount_point=str(tmp_path / "mnt"),
                              snapshotter_root={"path": str(tmp_path / "mnt" / "r")})], state)
    ran = []

    def run(argv):
        ran.append(argv)
        return (1, "", "modprobe: FATAL: Module overlay not found") if argv[0] == "modprobe" else (0, "", "")
    with pytest.raises(engine.StepFailed) as failed:
        engine.apply(result, run, str(tmp_path / "fstab"))
    assert "load the overlay module" in str(failed.value) and "Module overlay not found" in str(failed.value)
    assert ran == [["modprobe", "overlay"]]
    assert os.listdir(str(tmp_path)) == []


def test_the_kernel_filesystems_are_read_from_proc(tmp_path):
    state = engine.read_state(run_for_real, [], str(tmp_path / "fstab"), str(tmp_path / "zfs-fuse.pid"))
    with open("/proc/filesystems") as f:
        assert state["kernel_filesystems"] == engine.parse_proc_filesystems(f.read())
    assert state["kernel_filesystems"]


def test_the_user_can_keep_a_plain_loop_fstab_line():
    result = planned([declare(loop_boot_options=False, mount_options=["noatime"])], empty_state())
    assert result["fstab"] == "/img/fs.img /srv/fs ext4 loop,noatime 0 0\n"


def made_state(fstype="ext4", size=256 << 20, marker=True, line=None):
    """What a run of planned([declare(...)]) left: file, filesystem, mount, fstab line."""
    state = empty_state(**{"/img/fs.img": {"exists": True, "isblk": False, "size": size,
                                           "realpath": "/img/fs.img"},
                           "/srv/fs": {"exists": True, "isdir": True, "empty": False}})
    state["probe"]["/img/fs.img"] = {"TYPE": fstype}
    state["loops"]["/img/fs.img"] = ["/dev/loop7"]
    state["mounts"].append({"target": "/srv/fs", "source": "/dev/loop7", "fstype": fstype, "options": "rw"})
    state["fstab_text"] = (line or engine.fstab_line(engine.declarations([declare(fstype=fstype)])[0][0])) + "\n"
    if marker:
        state["markers"]["/img/fs.img"] = {"made_directories": [], "size": size}
    return state


def test_what_exists_as_declared_plans_nothing():
    assert kinds(planned([declare()], made_state())) == []
    assert planned([declare()], made_state())["fstab"] is None


def test_a_line_without_the_boot_options_is_rewritten_and_remounted():
    result = planned([declare()], made_state(line="/img/fs.img /srv/fs ext4 loop 0 0"))
    assert kinds(result) == ["fstab", "remount"]


def test_a_loop_file_node_storage_made_grows_with_its_size():
    result = planned([declare(size="512M")], made_state())
    # the marker's new size last: a kill before it leaves the growth to finish
    assert kinds(result) == ["grow_loop_file", "grow_filesystem", "marker"]
    grow = result["filesystems"][0]["actions"][0]
    assert grow["argv"] == ["truncate", "--size", str(512 << 20), "/img/fs.img"]
    assert grow["loop_devices"] == ["/dev/loop7"]
    assert result["filesystems"][0]["actions"][-1]["marker"]["size"] == 512 << 20


def test_a_growth_a_kill_interrupted_is_finished():
    """The file was grown to 512M, then the run was killed before the
    filesystem grew and the marker said so: the next run grows the filesystem."""
    state = made_state(size=512 << 20)
    state["markers"]["/img/fs.img"]["size"] = 256 << 20
    assert kinds(planned([declare(size="512M")], state)) == [
        "grow_loop_file", "grow_filesystem", "marker"]


def test_the_marker_is_written_before_the_loop_file_and_atomically(tmp_path):
    """Killed between the two, the file is either absent (the next run
    makes it) or already the role's; a marker is never half-written."""
    source = str(tmp_path / "fs.img")
    seen = []

    def run(argv):
        seen.append((argv[0], os.path.exists(source + engine.MARKER_SUFFIX)))
        open(source, "w").close()
        return 0, "", ""

    action = engine._action("loop_file", "make it", ["truncate", "--size", "1", source],
                            path=source, marker={"made_directories": [], "size": 1})
    engine._do(action, run, [])
    assert seen == [("truncate", True)]
    assert json.loads(open(source + engine.MARKER_SUFFIX).read())["size"] == 1
    assert sorted(os.listdir(tmp_path)) == ["fs.img", "fs.img.node_storage"]  # no temporary left


def test_a_loop_file_made_elsewhere_is_not_grown_and_a_smaller_size_never_shrinks():
    result = planned([declare(size="512M")], made_state(marker=False))
    assert kinds(result) == [] and "did not make it; not grown" in result["filesystems"][0]["notes"][0]
    assert kinds(planned([declare(size="128M")], made_state())) == []


def test_an_empty_loop_file_too_small_for_mkfs_is_grown_then_formatted():
    # The old role kept a 4K file forever: every run failed in mkfs.
    state = empty_state(**{"/img/fs.img": {"exists": True, "isblk": False, "size": 4096}})
    assert kinds(planned([declare()], state)) == ["grow_loop_file", "mkfs", "mkdir", "fstab", "mount",
                                                  "marker"]


def test_never_format_a_source_that_holds_something_unless_told():
    state = empty_state(**{"/img/fs.img": {"exists": True, "isblk": False, "size": 256 << 20}})
    state["probe"]["/img/fs.img"] = {"TYPE": "xfs"}
    refused = planned([declare()], state)
    assert kinds(refused) == [] and refused["fstab"] is None
    assert "never formats a source that holds something unless told" in refused["filesystems"][0]["refusals"][0]
    allowed = planned([declare()], state, allow_format_existing=True)
    assert allowed["filesystems"][0]["actions"][0]["argv"] == ["mkfs.ext4", "-q", "-F", "/img/fs.img"]


def test_another_mount_or_fstab_line_at_the_mount_point_is_refused():
    state = made_state()
    state["mounts"][-1]["source"] = "/dev/vdc"
    assert "refusing to mount over it" in planned([declare()], state)["filesystems"][0]["refusals"][0]
    state = empty_state()
    state["fstab_text"] = "/dev/vdc /srv/fs ext4 defaults 0 0\n"
    assert "refusing to replace that line" in planned([declare()], state)["filesystems"][0]["refusals"][0]


def test_an_xfs_with_other_settings_is_reported_not_reformatted():
    state = made_state(fstype="xfs", size=400 << 20)
    state["xfs"]["/srv/fs"] = {"ftype": 1, "reflink": 0}
    result = planned([declare(fstype="xfs", size="400M")], state)
    assert "has ftype=1 reflink=0, but the declaration says ftype=1 reflink=1" in \
        result["filesystems"][0]["refusals"][0]


def test_absent_removes_what_present_made_and_only_that():
    state = made_state()
    state["markers"]["/img/fs.img"] = {"made_directories": ["/img"], "size": 256 << 20}
    result = planned([declare(state="absent")], state)
    assert kinds(result) == ["fstab", "umount", "rmdir_if_empty", "detach", "delete", "delete_marker"]
    assert result["filesystems"][0]["actions"][-1]["directories"] == ["/img"]
    assert result["fstab"] == ""
    # made elsewhere: the file goes, its directory stays
    assert "delete_marker" not in kinds(planned([declare(state="absent")], made_state(marker=False)))


def test_absent_is_refused_while_the_loop_file_is_mounted_elsewhere():
    state = made_state()
    state["mounts"].append({"target": "/mnt/x", "source": "/dev/loop7", "fstype": "ext4", "options": "rw"})
    assert "also mounted at /mnt/x" in planned([declare(state="absent")], state)["filesystems"][0]["refusals"][0]


def zfs_state(pools=(), answers=True):
    state = empty_state()
    state["zfs"] = {"kernel": False, "answers": answers, "pools": list(pools), "vdevs": {}, "datasets": {},
                    "systemd": False, "fuse_marker": False, "pidfile": "/run/zfs-fuse.pid",
                    "fuse_options": ["--fuse-attr-timeout", "0"]}
    return state


def zfs_declare(**entry):
    return declare(fstype="zfs", zfs_pool="tank", loop_file="/img/zfs.img",
                   snapshotter_root={"path": "/srv/fs/zfs", "backend": "zfs"}, **entry)


def test_a_zfs_pool_from_nothing_through_zfs_fuse():
    result = planned([zfs_declare(zfs_properties={"atime": "off"})], zfs_state(answers=False))
    assert kinds(result) == ["zfs_daemon", "loop_file", "zpool_create", "zfs_create", "zfs_create", "mkdir"]
    argvs = [action["argv"] for action in result["filesystems"][0]["actions"]]
    assert argvs[2] == ["zpool", "create", "-m", "none", "tank", "/img/zfs.img"]
    assert argvs[3] == ["zfs", "create", "-omountpoint=/srv/fs", "-oatime=off", "tank/snaplab"]
    assert argvs[4] == ["zfs", "create", "-o", "mountpoint=/srv/fs/zfs", "tank/snaplab/zfs"]
    assert result["fstab"] is None


def test_a_zfs_pool_of_another_source_or_another_pool_is_refused():
    state = zfs_state(pools=["tank"])
    state["zfs"]["vdevs"]["tank"] = ["/dev/vdz"]
    assert "is already imported, and not from /img/zfs.img" in \
        planned([zfs_declare()], state)["filesystems"][0]["refusals"][0]
    state = zfs_state()
    state["paths"]["/img/zfs.img"] = {"exists": True, "size": 256 << 20}
    state["probe"]["/img/zfs.img"] = engine.parse_blkid(BLKID_ZFS.replace("LABEL=tank", "LABEL=other"))
    assert "(pool other), not the pool tank" in planned([zfs_declare()], state)["filesystems"][0]["refusals"][0]
    state["probe"]["/img/zfs.img"] = engine.parse_blkid(BLKID_ZFS)
    assert kinds(planned([zfs_declare()], state)) == ["zpool_import", "zfs_datasets", "mkdir"]


def test_a_zfs_dataset_that_differs_is_set_and_mounted():
    state = zfs_state(pools=["tank"])
    state["zfs"]["vdevs"]["tank"] = ["/img/zfs.img"]
    state["paths"]["/img/zfs.img"] = {"exists": True, "size": 256 << 20}
    state["paths"]["/srv/fs/zfs"] = {"exists": True}
    state["probe"]["/img/zfs.img"] = engine.parse_blkid(BLKID_ZFS)
    state["zfs"]["datasets"] = {"tank/snaplab": {"mounted": "no", "mountpoint": "/srv/fs", "atime": "on"},
                                "tank/snaplab/zfs": {"mounted": "yes", "mountpoint": "/srv/fs/zfs"}}
    result = planned([zfs_declare(zfs_properties={"atime": "off"})], state)
    assert [a["argv"] for a in result["filesystems"][0]["actions"]] == [
        ["zfs", "set", "atime=off", "tank/snaplab"], ["zfs", "mount", "tank/snaplab"]]


def test_a_failed_step_is_one_line_with_its_stderr():
    said = engine._one_line(["mkfs.ext4", "-q", "/img/a b.img"], 1,
                            "mke2fs 1.47.0\n/img/a b.img: Cannot create filesystem\n  with that size\n")
    assert said == ("mkfs.ext4 -q '/img/a b.img' failed (rc 1): mke2fs 1.47.0 /img/a b.img: "
                    "Cannot create filesystem with that size")


def run_for_real(argv):
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    return done.returncode, done.stdout, done.stderr


def test_a_failed_mkfs_leaves_nothing_it_made(tmp_path):
    # Past the size check (as the old role was), a 4K file makes mkfs.ext4 fail for real.
    loop_file = tmp_path / "images" / "deeper" / "fs.img"
    decl = engine.declarations([declare(loop_file=str(loop_file), mount_point=str(tmp_path / "mnt"))])[0][0]
    decl["size"] = "4K"
    state = engine.read_state(run_for_real, [decl], str(tmp_path / "fstab"), "/nonexistent/zfs-fuse.pid")
    assert state["missing_directories"][str(loop_file)] == [str(tmp_path / "images"),
                                                            str(loop_file.parent)]
    result = engine.plan([decl], state)
    assert kinds(result)[:3] == ["mkdir", "loop_file", "mkfs"]
    with pytest.raises(engine.StepFailed) as failed:
        engine.apply(copy.deepcopy(result), run_for_real, str(tmp_path / "fstab"))
    message = str(failed.value)
    assert message.startswith("fs: make ext4 on %s: mkfs.ext4 -q %s failed (rc 1): " % (loop_file, loop_file))
    assert "\n" not in message
    assert sorted(os.listdir(tmp_path)) == []


def test_a_loop_file_is_made_private_with_its_marker(tmp_path):
    loop_file = tmp_path / "images" / "fs.img"
    decl = engine.declarations([declare(loop_file=str(loop_file))])[0][0]
    state = engine.read_state(run_for_real, [decl], str(tmp_path / "fstab"), "/nonexistent/zfs-fuse.pid")
    loop_actions = [a for a in engine.plan([decl], state)["filesystems"][0]["actions"]
                    if a["kind"] in ("mkdir", "loop_file")][:2]
    engine.apply({"filesystems": [{"name": "fs", "actions": loop_actions}], "fstab": None}, run_for_real,
                 str(tmp_path / "fstab"))
    assert os.stat(loop_file).st_size == 256 << 20 and os.stat(loop_file).st_mode & 0o777 == 0o600
    with open(str(loop_file) + ".node_storage", encoding="utf-8") as marker:
        assert json.load(marker)["made_directories"] == [str(tmp_path / "images")]
    state = engine.read_state(run_for_real, [dict(decl, state="absent")], str(tmp_path / "fstab"),
                              "/nonexistent/zfs-fuse.pid")
    engine.apply(engine.plan([dict(decl, state="absent")], state), run_for_real, str(tmp_path / "fstab"))
    assert sorted(os.listdir(tmp_path)) == []


def test_a_directory_two_loop_files_share_is_made_once_and_recorded_for_both():
    state = empty_state()
    for name in ("a", "b"):
        state["missing_directories"]["/img/new/%s.img" % name] = ["/img/new"]
    result = planned([declare(name="a", loop_file="/img/new/a.img", mount_point="/srv/a"),
                      declare(name="b", loop_file="/img/new/b.img", mount_point="/srv/b")], state)
    assert kinds(result, 0)[:2] == ["mkdir", "loop_file"] and kinds(result, 1)[0] == "loop_file"
    # absent of either removes the directory only once it is empty
    assert result["filesystems"][1]["actions"][0]["marker"]["made_directories"] == ["/img/new"]


@pytest.mark.parametrize("capable", [True, False])
def test_an_online_ext4_growth_refused_for_want_of_cap_sys_resource_says_so(monkeypatch, capable):
    """Online resize2fs needs CAP_SYS_RESOURCE (a container's root may lack
    it): the one line says so and how to grow it instead."""
    def run(argv):
        if argv[0] == "findmnt":
            return 0, "/dev/loop7\n", ""
        return 1, "", "resize2fs: Permission denied to resize filesystem\n"

    monkeypatch.setattr(engine, "_has_capability", lambda number: capable)
    with pytest.raises(engine.StepFailed) as failed:
        engine._grow_filesystem({"mount_point": "/srv/ext4", "fstype": "ext4"}, run)
    assert "Permission denied to resize filesystem" in str(failed.value)
    assert ("CAP_SYS_RESOURCE" in str(failed.value)) is not capable
    assert "\n" not in str(failed.value)


def test_a_btrfs_mounted_by_its_symlink_name_is_ours():
    """btrfs keeps the device path it was mounted by as the mount's source
    (/dev/disk/by-id/...), where ext4 and xfs show the kernel's name
    (/dev/vdd): a device declared by a symlink is ours either way (the lab's
    second converge refused its own btrfs mount)."""
    link = "/dev/disk/by-id/virtio-snaplab-btrfs"
    for source in (link, "/dev/vdd"):
        state = empty_state(**{link: {"exists": True, "isblk": True, "size": 1 << 30, "realpath": "/dev/vdd"},
                               "/srv/b": {"exists": True, "isdir": True, "empty": False}})
        state["probe"][link] = {"TYPE": "btrfs"}
        entry = declare(name="b", fstype="btrfs", loop_file=None, device=link, mount_point="/srv/b")
        del entry["loop_file"], entry["size"]
        state["mounts"].append({"target": "/srv/b", "source": source, "fstype": "btrfs", "options": "rw"})
        state["fstab_text"] = engine.fstab_line(engine.declarations([entry])[0][0]) + "\n"
        result = planned([entry], state)
        assert result["filesystems"][0]["refusals"] == [], source
        assert kinds(result) == [], source
