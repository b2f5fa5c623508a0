"""What runs of the suite, the tests and the demo left behind (`make leaks`).

    python -m conformance.leaks

Looks for a mount, loop device, zpool (named snaplab-*), zfs-fuse daemon
(started by a harness: its pidfile is in a snaplab-conformance-* or
snaplab-test-* directory), containerd (started by a test: its config is in
a snaplab-containerd-* directory; never the host's) or `snaplab serve`
(its socket in a snaplab-serve-* directory) left behind. Prints each under
"LEFT BEHIND:" and exits 1; else says there is none and exits 0.

The names come from the code that makes these things (conformance/filesystems.py's
temp prefixes); run it in the mount namespace of the runs it checks.
"""

import re
import subprocess
import sys

from snaplab.mount import IDMAP_LOWERS_PREFIX, TEMPORARY_MOUNT_PREFIX

from .filesystems import CONTAINERD_PREFIX, POOL_PREFIX, SERVE_TEMP_PREFIX, TEST_PREFIX

# The demo's workspace (the Makefile's DEMO_WORKSPACE, /var/tmp/snaplab-demo)
# and its zpool (collection/playbooks/demo.yml).
DEMO_PREFIX = "snaplab-demo"
ZPOOL_PREFIX = "snaplab-"  # the harness's pools (POOL_PREFIX) and the demo's
NONE_LEFT = ("no snaplab mounts, loop devices, zpools, zfs-fuse daemons, containerds or "
             "snaplab serve processes left behind")


def _literal(prefix):
    """`prefix` as a pattern: the same text in Python's and in POSIX's extended
    regular expressions (pgrep's) only while it has no special character."""
    if not re.fullmatch(r"[A-Za-z0-9_-]+", prefix):
        raise ValueError("a temp prefix must be letters, digits, - and _: %r" % prefix)
    return prefix


def _any_of(*prefixes):
    return "(%s)" % "|".join(_literal(prefix) for prefix in prefixes)


MOUNT_MARK = re.compile(_any_of(POOL_PREFIX, TEST_PREFIX, DEMO_PREFIX, CONTAINERD_PREFIX,
                                TEMPORARY_MOUNT_PREFIX))
# An idmapped lowerdir's bind that a killed mount left (snaplab/mount.py): by
# its mount point only, since a live idmapped overlay names the prefix in its
# lowerdir option.
IDMAP_MARK = re.compile(_literal(IDMAP_LOWERS_PREFIX))
LOOP_MARK = re.compile(_any_of(POOL_PREFIX, TEST_PREFIX, DEMO_PREFIX))
ZFS_FUSE_MARK = re.compile("--pidfile [^ ]*" + _any_of(POOL_PREFIX, TEST_PREFIX))
CONTAINERD_MARK = re.compile("--config [^ ]*/%s[^/ ]*/config.toml" % _literal(CONTAINERD_PREFIX))
# Also pgrep's pattern (an extended regular expression).
SERVE_MARK = "-m snaplab .* serve --socket [^ ]*/" + _literal(SERVE_TEMP_PREFIX)
SERVE_MARK_RE = re.compile(SERVE_MARK)


def leaked_mounts(mountinfo):
    """The lines of /proc/self/mountinfo that are ours."""
    return [line for line in mountinfo.splitlines() if MOUNT_MARK.search(line)
            or IDMAP_MARK.search(line.split(" ")[4])]


def leaked_loop_devices(losetup_listing):
    """The lines of `losetup -a` whose backing file is ours."""
    return [line for line in losetup_listing.splitlines() if LOOP_MARK.search(line)]


def leaked_zpools(zpool_names):
    """`zpool list -H -o name` output -> "zpool NAME" for each pool named snaplab-*."""
    return ["zpool " + name for name in zpool_names.splitlines() if name.startswith(ZPOOL_PREFIX)]


def leaked_zfs_fuse(pgrep_listing):
    """`pgrep -a -x zfs-fuse` lines -> the daemons a harness started."""
    return ["zfs-fuse daemon " + line for line in pgrep_listing.splitlines()
            if ZFS_FUSE_MARK.search(line)]


def leaked_containerds(pgrep_listing):
    """`pgrep -a -x containerd` lines -> the private containerds of tests."""
    return ["containerd " + line for line in pgrep_listing.splitlines()
            if CONTAINERD_MARK.search(line)]


def leaked_serves(pgrep_listing):
    """`pgrep -a -f` lines -> the `snaplab serve` processes of tests."""
    return ["snaplab serve " + line for line in pgrep_listing.splitlines()
            if SERVE_MARK_RE.search(line)]


def _output(argv, quiet=False):
    """stdout of `argv` ("" where it is not installed or finds nothing)."""
    try:
        return subprocess.run(argv, stdout=subprocess.PIPE, text=True, check=False,
                              stderr=subprocess.DEVNULL if quiet else None).stdout
    except FileNotFoundError:
        return ""


def left_behind():
    """Every leftover, one line each, as the Makefile printed them."""
    with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as mountinfo:
        found = leaked_mounts(mountinfo.read())
    found += leaked_loop_devices(_output(["losetup", "-a"]))
    found += leaked_zpools(_output(["zpool", "list", "-H", "-o", "name"], quiet=True))
    found += leaked_zfs_fuse(_output(["pgrep", "-a", "-x", "zfs-fuse"]))
    found += leaked_containerds(_output(["pgrep", "-a", "-x", "containerd"]))
    found += leaked_serves(_output(["pgrep", "-a", "-f", "--", SERVE_MARK]))
    return found


def report(found, out=sys.stdout):
    """Print what was found (or that nothing was); the exit status."""
    if found:
        print("LEFT BEHIND:", *found, sep="\n", file=out)
        return 1
    print(NONE_LEFT, file=out)
    return 0


def main():
    return report(left_behind())


if __name__ == "__main__":
    sys.exit(main())
