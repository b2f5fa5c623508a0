"""conformance.leaks: what `make leaks` counts as left behind, on sample lines."""

import io

from conformance import leaks

MOUNTINFO = """\
22 1 259:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw
45 27 7:0 / /tmp/snaplab-conformance-brjyqyj9/ext4 rw,relatime - ext4 /dev/loop0 rw
50 27 0:43 / /tmp/x/zfs rw,relatime - fuse.zfs snaplab-conformance-879e533308/fs rw,allow_other
51 50 0:44 / /srv/snaplab-containerd-b497hrdp/zfs rw,relatime - fuse.zfs pool/fs/r2 rw
59 27 7:10 / /tmp/snaplab-test-hostile-eg_m8ud9/mnt rw,relatime - ext4 /dev/loop10 rw
60 27 7:11 / /var/tmp/snaplab-demo/xfs rw,relatime - xfs /dev/loop11 rw
61 27 7:12 / /var/lib/snaplab/xfs rw,relatime - xfs /dev/loop12 rw
62 27 0:50 / /run/snaplab-serve-x rw - tmpfs tmpfs rw
63 27 0:51 / /tmp/snaplab-mount-k2j4/ rw - overlay overlay rw,lowerdir=/r/snapshots/1/fs
64 27 7:12 / /tmp/snaplab-idmap-x1/r/snapshots/1/fs rw,idmapped - xfs /dev/loop12 rw
65 27 0:52 / /run/c1/rootfs rw - overlay overlay rw,lowerdir=/tmp/snaplab-idmap-x2/r/1/fs
"""

LOSETUP = """\
/dev/loop1: [65024]:2180612 (/tmp/snaplab-conformance-brjyqyj9/xfs.img)
/dev/loop10: [65024]:2179777 (/tmp/snaplab-test-hostile-eg_m8ud9/snaplab-conformance-vyng5e7q/ext4.img)
/dev/loop11: [65024]:12 (/var/tmp/snaplab-demo/xfs.img)
/dev/loop12: [65024]:13 (/var/lib/snaplab/xfs.img)
/dev/loop13: [65024]:14 (/srv/snaplab-containerd-abc/disk.img)
"""

ZPOOLS = "snaplab-conformance-46415ffac5\nsnaplab-demo\nrpool\nmysnaplab-x\n"

ZFS_FUSE = """\
9552 zfs-fuse --pidfile /tmp/snaplab-conformance-brjyqyj9/zfs-fuse.pid --fuse-attr-timeout 0
9553 zfs-fuse --pidfile /tmp/snaplab-test-torture-1/snaplab-conformance-2/zfs-fuse.pid
9554 zfs-fuse --pidfile /run/zfs-fuse.pid
9555 zfs-fuse
"""

CONTAINERDS = """\
7649 /usr/bin/containerd --config /tmp/snaplab-containerd-hh_1304n/config.toml
7650 /usr/bin/containerd
7651 /usr/bin/containerd --config /etc/containerd/config.toml
7652 /usr/bin/containerd --config /tmp/snaplab-containerd-hh_1304n/other/config.toml
"""

SERVES = """\
10920 /work/.venv/bin/python -m snaplab --root /tmp/r --backend overlay serve --socket /tmp/snaplab-serve-zstkw8bq/serve.sock
10921 /usr/bin/python3 -m snaplab --root /srv/r serve --socket /run/snaplab.sock
"""


def test_mounts_with_a_harness_test_demo_containerd_or_temporary_mount_name_are_leaks():
    assert [line.split()[4] for line in leaks.leaked_mounts(MOUNTINFO)] == [
        "/tmp/snaplab-conformance-brjyqyj9/ext4", "/tmp/x/zfs",
        "/srv/snaplab-containerd-b497hrdp/zfs", "/tmp/snaplab-test-hostile-eg_m8ud9/mnt",
        "/var/tmp/snaplab-demo/xfs", "/tmp/snaplab-mount-k2j4/",
        "/tmp/snaplab-idmap-x1/r/snapshots/1/fs"]


def test_loop_devices_over_harness_test_or_demo_files_are_leaks():
    assert [line.split(":")[0] for line in leaks.leaked_loop_devices(LOSETUP)] == [
        "/dev/loop1", "/dev/loop10", "/dev/loop11"]


def test_zpools_named_snaplab_are_leaks():
    assert leaks.leaked_zpools(ZPOOLS) == ["zpool snaplab-conformance-46415ffac5",
                                           "zpool snaplab-demo"]


def test_only_zfs_fuse_daemons_started_by_a_harness_are_leaks():
    assert leaks.leaked_zfs_fuse(ZFS_FUSE) == [
        "zfs-fuse daemon " + line for line in ZFS_FUSE.splitlines()[:2]]


def test_only_containerds_with_a_test_config_are_leaks():
    assert leaks.leaked_containerds(CONTAINERDS) == [
        "containerd " + CONTAINERDS.splitlines()[0]]


def test_only_serve_processes_with_a_test_socket_are_leaks():
    assert leaks.leaked_serves(SERVES) == ["snaplab serve " + SERVES.splitlines()[0]]


def test_the_report_lists_what_is_left_and_fails():
    out = io.StringIO()
    assert leaks.report(["zpool snaplab-demo", "containerd 1 x"], out) == 1
    assert out.getvalue() == "LEFT BEHIND:\nzpool snaplab-demo\ncontainerd 1 x\n"


def test_the_report_of_nothing_left_passes():
    out = io.StringIO()
    assert leaks.report([], out) == 0
    assert out.getvalue() == ("no snaplab mounts, loop devices, zpools, zfs-fuse daemons, "
                              "containerds or snaplab serve processes left behind\n")
