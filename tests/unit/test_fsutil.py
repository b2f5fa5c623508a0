"""Tests of snaplab.fsutil on real files and real loop-mounted filesystems.

Everything a test creates lives in a temporary directory, and every loop
device and mount is undone in a finally block, also when the test fails.
"""

import contextlib
import errno
import hashlib
import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import time

import pytest

from snaplab import fsutil
from snaplab.types import Usage

IS_ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not IS_ROOT, reason="needs root (chown, mknod, trusted.*, mount)")

MiB = 1 << 20
# Fixed nanosecond timestamps: mtime in the past with odd nanoseconds; atime
# an hour in the future, because relatime updates an atime that is older than
# mtime or ctime (and ctime is "now" after utime) whenever a test reads the
# entry, which would move the source under the comparison.
MTIME_NS = 1_600_000_000_123_456_789
ATIME_NS = (time.time_ns() // 1_000_000_000 + 3600) * 1_000_000_000 + 987_654_321


@pytest.fixture
def tmp():
    path = tempfile.mkdtemp(prefix="snaplab-fsutil-")
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _run(*cmd):
    return subprocess.run(cmd, check=True, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, universal_newlines=True).stdout


@contextlib.contextmanager
def loop_fs(mkfs_cmd, size=64 * MiB):
    """A fresh filesystem on a loop device, mounted on a temp dir.

    `mkfs_cmd` is the mkfs command line without the device. Everything is
    undone on exit: unmount, detach the loop device, delete the image.
    """
    if shutil.which(mkfs_cmd[0]) is None:
        pytest.skip("%s not installed" % mkfs_cmd[0])
    work = tempfile.mkdtemp(prefix="snaplab-fsutil-loop-")
    image = os.path.join(work, "image")
    mnt = os.path.join(work, "mnt")
    os.mkdir(mnt)
    device = None
    mounted = False
    try:
        with open(image, "wb") as f:
            f.truncate(size)
        device = _run("losetup", "--find", "--show", image).strip()
        _run(*mkfs_cmd, device)
        _run("mount", device, mnt)
        mounted = True
        yield mnt
    finally:
        if mounted:
            subprocess.run(["umount", mnt], check=False)
        if device:
            subprocess.run(["losetup", "-d", device], check=False)
        shutil.rmtree(work, ignore_errors=True)


# --------------------------------------------------------------------------
# The tree of every file type


def _set_xattrs(path, pairs, follow_symlinks=True):
    for name, value in pairs:
        os.setxattr(path, name, value, follow_symlinks=follow_symlinks)


def build_tree(root):
    """Fill `root` with every kind of entry copy_tree must handle."""
    j = os.path.join

    def write(name, data, mode=0o644):
        with open(j(root, name), "wb") as f:
            f.write(data)
        os.chmod(j(root, name), mode)

    os.chmod(root, 0o751)
    os.chown(root, 0, 0)
    _set_xattrs(root, [("user.root", b"r")])

    write("regular", os.urandom(100_000))
    write("empty", b"", 0o600)
    write("setuid", b"#!/bin/sh\n", 0o4755)
    write("setgid", b"#!/bin/sh\n", 0o2711)

    # All hole, no data at all.
    with open(j(root, "sparse-empty"), "wb") as f:
        f.truncate(8 * MiB)
    # A hole, 8 KiB of data at 1 MiB, then a trailing hole.
    with open(j(root, "sparse"), "wb") as f:
        f.seek(MiB)
        f.write(os.urandom(8192))
        f.truncate(4 * MiB)

    # A hardlink group of three paths, one of them in a sub-directory.
    os.makedirs(j(root, "dir/sub"))
    write("link-a", b"shared content", 0o640)
    os.link(j(root, "link-a"), j(root, "link-b"))
    os.link(j(root, "link-a"), j(root, "dir/sub/link-c"))

    os.symlink("/etc/passwd", j(root, "sym-abs"))
    os.symlink("../regular", j(root, "dir/sym-rel"))
    os.symlink("does/not/exist", j(root, "sym-dangling"))
    os.mkfifo(j(root, "fifo"), 0o620)
    os.mknod(j(root, "chardev"), stat.S_IFCHR | 0o666, os.makedev(1, 3))
    os.mknod(j(root, "blockdev"), stat.S_IFBLK | 0o660, os.makedev(7, 200))
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.bind(j(root, "socket"))

    os.mkdir(j(root, "private"), 0o700)
    os.mkdir(j(root, "sticky"))
    os.chmod(j(root, "sticky"), 0o1777)
    os.mkdir(j(root, "setgid-dir"))
    os.chmod(j(root, "setgid-dir"), 0o2775)
    write("setgid-dir/in-setgid", b"x")
    os.mkdir(j(root, "readonly-dir"))
    write("readonly-dir/inside", b"y")
    os.chmod(j(root, "readonly-dir"), 0o555)

    # Owners (after chmod: chown would clear setuid bits otherwise, and the
    # copy must get the order right the same way).
    os.chown(j(root, "regular"), 1, 1)
    os.chown(j(root, "private"), 1000, 1000)
    os.chown(j(root, "setuid"), 1000, 1000)
    os.chmod(j(root, "setuid"), 0o4755)
    os.chown(j(root, "sym-abs"), 1000, 1000, follow_symlinks=False)
    os.chown(j(root, "fifo"), 1, 1)
    os.chown(j(root, "link-a"), 1000, 1000)

    _set_xattrs(j(root, "regular"), [("user.one", b"1"), ("trusted.two", b"\x00\x02")])
    _set_xattrs(j(root, "dir"), [("user.dir", b"d"), ("trusted.overlay.opaque", b"y")])
    _set_xattrs(j(root, "link-b"), [("user.link", b"shared")])
    _set_xattrs(j(root, "sym-abs"), [("trusted.sym", b"s")], follow_symlinks=False)
    _set_xattrs(j(root, "chardev"), [("trusted.dev", b"c")], follow_symlinks=False)

    # Timestamps last, bottom up, distinct per entry.
    for i, (dirpath, dirnames, filenames) in enumerate(os.walk(root, topdown=False)):
        for k, name in enumerate(sorted(filenames + dirnames)):
            p = j(dirpath, name)
            os.utime(p, ns=(ATIME_NS + i * 1000 + k, MTIME_NS + i * 1000 + k),
                     follow_symlinks=False)
    os.utime(root, ns=(ATIME_NS + 777, MTIME_NS + 777))


def manifest(root):
    """{relative path: lstat} of everything under root, root as "."."""
    out = {".": os.lstat(root)}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            out[os.path.relpath(p, root)] = os.lstat(p)
    return out


def xattrs(path):
    return {n: os.getxattr(path, n, follow_symlinks=False)
            for n in os.listxattr(path, follow_symlinks=False)}


def link_groups(entries):
    groups = {}
    for rel, st in entries.items():
        if not stat.S_ISDIR(st.st_mode) and st.st_nlink > 1:
            groups.setdefault(st.st_ino, set()).add(rel)
    return sorted(sorted(g) for g in groups.values())


def digest(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def assert_same_tree(src, dst, before):
    """Compare the copy `dst` with `before`, the manifest of `src` taken
    before the copy (reading the source may move its atimes)."""
    after = manifest(dst)  # lstat only: nothing read yet, atimes untouched
    assert sorted(after) == sorted(before)
    for rel, s in before.items():
        d = after[rel]
        where = "%s: " % rel
        assert stat.S_IFMT(d.st_mode) == stat.S_IFMT(s.st_mode), where + "type"
        assert d.st_mode == s.st_mode, where + "mode %o != %o" % (d.st_mode, s.st_mode)
        assert (d.st_uid, d.st_gid) == (s.st_uid, s.st_gid), where + "owner"
        assert d.st_mtime_ns == s.st_mtime_ns, where + "mtime"
        assert d.st_atime_ns == s.st_atime_ns, where + "atime"
        assert d.st_nlink == s.st_nlink or stat.S_ISDIR(s.st_mode), where + "nlink"
        assert xattrs(os.path.join(dst, rel)) == xattrs(os.path.join(src, rel)), where + "xattrs"
        if stat.S_ISDIR(s.st_mode):
            continue
        assert d.st_size == s.st_size, where + "size"
        if stat.S_ISLNK(s.st_mode):
            assert os.readlink(os.path.join(dst, rel)) == os.readlink(os.path.join(src, rel))
        if stat.S_ISCHR(s.st_mode) or stat.S_ISBLK(s.st_mode):
            assert d.st_rdev == s.st_rdev, where + "rdev"
        if stat.S_ISREG(s.st_mode):
            assert digest(os.path.join(dst, rel)) == digest(os.path.join(src, rel)), where + "data"
            # Holes kept: no more blocks than the source, give or take a
            # few filesystem blocks of allocation differences.
            assert d.st_blocks <= s.st_blocks + 128, where + "sparse"
    assert link_groups(after) == link_groups(before)


# --------------------------------------------------------------------------
# copy_tree


@needs_root
def test_copy_tree_keeps_every_file_type_and_attribute(tmp):
    src = os.path.join(tmp, "src")
    dst = os.path.join(tmp, "dst")
    os.mkdir(src)
    os.mkdir(dst, 0o700)
    build_tree(src)
    before = manifest(src)

    fsutil.copy_tree(src, dst)

    assert_same_tree(src, dst, before)
    # Spot checks that the generic comparison could hide by being symmetric.
    assert stat.S_IMODE(os.lstat(dst).st_mode) == 0o751
    assert stat.S_IMODE(os.lstat(os.path.join(dst, "setuid")).st_mode) == 0o4755
    assert stat.S_IMODE(os.lstat(os.path.join(dst, "sticky")).st_mode) == 0o1777
    assert stat.S_ISSOCK(os.lstat(os.path.join(dst, "socket")).st_mode)
    assert os.lstat(os.path.join(dst, "chardev")).st_rdev == os.makedev(1, 3)
    assert os.readlink(os.path.join(dst, "sym-dangling")) == "does/not/exist"
    a = os.lstat(os.path.join(dst, "link-a"))
    c = os.lstat(os.path.join(dst, "dir/sub/link-c"))
    assert a.st_ino == c.st_ino and a.st_nlink == 3
    assert os.getxattr(os.path.join(dst, "regular"), "trusted.two") == b"\x00\x02"
    sparse = os.lstat(os.path.join(dst, "sparse"))
    assert sparse.st_size == 4 * MiB and sparse.st_blocks * 512 < MiB
    assert os.lstat(os.path.join(dst, "sparse-empty")).st_blocks == 0


@needs_root
def test_copy_tree_to_another_filesystem(tmp):
    # ext4 (/tmp) to xfs: copy_file_range may refuse (EXDEV) and the
    # read/write fallback must give the same result.
    src = os.path.join(tmp, "src")
    os.mkdir(src)
    build_tree(src)
    before = manifest(src)
    with loop_fs(["mkfs.xfs", "-q", "-f"], size=320 * MiB) as mnt:
        dst = os.path.join(mnt, "copy")
        os.mkdir(dst)
        fsutil.copy_tree(src, dst)
        assert_same_tree(src, dst, before)


@needs_root
def test_copy_tree_without_copy_file_range(tmp, monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError(errno.ENOSYS, "not here")

    monkeypatch.setattr(os, "copy_file_range", refuse, raising=False)
    src = os.path.join(tmp, "src")
    dst = os.path.join(tmp, "dst")
    os.mkdir(src)
    os.mkdir(dst)
    build_tree(src)
    before = manifest(src)
    fsutil.copy_tree(src, dst)
    assert_same_tree(src, dst, before)


def test_copy_tree_large_file_and_creates_missing_dst(tmp):
    src = os.path.join(tmp, "src")
    os.mkdir(src)
    data = os.urandom(3 * MiB + 17)
    with open(os.path.join(src, "big"), "wb") as f:
        f.write(data)
    dst = os.path.join(tmp, "new")
    fsutil.copy_tree(src, dst)
    with open(os.path.join(dst, "big"), "rb") as f:
        assert f.read() == data


def test_copy_tree_refuses_non_directories(tmp):
    f = os.path.join(tmp, "file")
    open(f, "w").close()
    with pytest.raises(NotADirectoryError):
        fsutil.copy_tree(f, os.path.join(tmp, "dst"))
    with pytest.raises(NotADirectoryError):
        fsutil.copy_tree(tmp, f)


def _failing_setxattr(bad_name, err):
    real = os.setxattr

    def setxattr(target, name, value, *args, **kwargs):
        if name == bad_name:
            raise OSError(err, os.strerror(err))
        return real(target, name, value, *args, **kwargs)
    return setxattr


@pytest.mark.parametrize("name,err", [
    ("security.test", errno.EPERM),    # an LSM refusing a label
    ("user.test", errno.EOPNOTSUPP),   # a destination without xattrs
])
def test_copy_tree_ignores_security_and_unsupported_xattr_errors(tmp, monkeypatch, name, err):
    src = os.path.join(tmp, "src")
    dst = os.path.join(tmp, "dst")
    os.mkdir(src)
    os.mkdir(dst)
    f = os.path.join(src, "f")
    with open(f, "w") as fh:
        fh.write("x")
    if name.startswith("security.") and not IS_ROOT:
        pytest.skip("setting security.* needs root")
    os.setxattr(f, name, b"v")
    os.setxattr(f, "user.kept", b"k")
    monkeypatch.setattr(os, "setxattr", _failing_setxattr(name, err))
    fsutil.copy_tree(src, dst)
    assert os.getxattr(os.path.join(dst, "f"), "user.kept") == b"k"
    assert name not in os.listxattr(os.path.join(dst, "f"))


def test_copy_tree_raises_other_xattr_errors(tmp, monkeypatch):
    src = os.path.join(tmp, "src")
    dst = os.path.join(tmp, "dst")
    os.mkdir(src)
    os.mkdir(dst)
    f = os.path.join(src, "f")
    open(f, "w").close()
    os.setxattr(f, "user.test", b"v")
    monkeypatch.setattr(os, "setxattr", _failing_setxattr("user.test", errno.EPERM))
    with pytest.raises(PermissionError):
        fsutil.copy_tree(src, dst)


# --------------------------------------------------------------------------
# disk_usage


def du_bytes(path):
    return int(_run("du", "-s", "--block-size=1", "-x", path).split()[0])


def du_inodes(path):
    return int(_run("du", "-s", "--inodes", "-x", path).split()[0])


def test_disk_usage_of_a_1mib_file(tmp):
    with open(os.path.join(tmp, "f"), "wb") as f:
        f.write(os.urandom(MiB))
        os.fsync(f.fileno())
    usage = fsutil.disk_usage(tmp)
    assert isinstance(usage, Usage)
    assert usage.size >= MiB
    assert usage.inodes == 2  # the root and the file
    assert usage.size == du_bytes(tmp)


def test_disk_usage_counts_hardlinks_once(tmp):
    with open(os.path.join(tmp, "a"), "wb") as f:
        f.write(os.urandom(MiB))
    single = fsutil.disk_usage(tmp)
    os.mkdir(os.path.join(tmp, "d"))
    os.link(os.path.join(tmp, "a"), os.path.join(tmp, "b"))
    os.link(os.path.join(tmp, "a"), os.path.join(tmp, "d", "c"))
    linked = fsutil.disk_usage(tmp)
    dir_blocks = os.lstat(os.path.join(tmp, "d")).st_blocks * 512
    assert linked.inodes == single.inodes + 1  # only the new directory
    assert linked.size == single.size + dir_blocks
    assert linked.size == du_bytes(tmp)


def test_disk_usage_does_not_follow_symlinks(tmp):
    outside = os.path.join(tmp, "outside")
    os.mkdir(outside)
    with open(os.path.join(outside, "big"), "wb") as f:
        f.write(os.urandom(MiB))
    tree = os.path.join(tmp, "tree")
    os.mkdir(tree)
    os.symlink(outside, os.path.join(tree, "to-dir"))
    os.symlink(os.path.join(outside, "big"), os.path.join(tree, "to-file"))
    usage = fsutil.disk_usage(tree)
    assert usage.inodes == 3
    assert usage.size < MiB
    assert usage.size == du_bytes(tree)


@needs_root
def test_disk_usage_matches_du_on_the_full_tree(tmp):
    build_tree(tmp)
    usage = fsutil.disk_usage(tmp)
    assert usage.size == du_bytes(tmp)
    assert usage.inodes == du_inodes(tmp)


@needs_root
def test_disk_usage_counts_the_inodes_of_filesystems_mounted_below_apart(tmp):
    """Two fresh tmpfs below the root number their inodes alike: each is
    counted, as continuity's (st_dev, st_ino) set counts them."""
    mounted = []
    try:
        for name in ("m1", "m2"):
            point = os.path.join(tmp, name)
            os.mkdir(point)
            _run("mount", "-t", "tmpfs", "-o", "size=1m", "snaplab-test", point)
            mounted.append(point)
            with open(os.path.join(point, "f"), "wb") as f:
                f.write(os.urandom(4096))
        numbers = {os.lstat(os.path.join(point, "f")).st_ino for point in mounted}
        usage = fsutil.disk_usage(tmp)
        # The root, each tmpfs's root and its file.
        assert usage.inodes == 5, numbers
        assert usage.size == sum(os.lstat(p).st_blocks * 512 for p in [tmp] + mounted + [
            os.path.join(point, "f") for point in mounted])
    finally:
        for point in reversed(mounted):
            _run("umount", point)


def test_disk_usage_of_missing_path_raises(tmp):
    with pytest.raises(FileNotFoundError):
        fsutil.disk_usage(os.path.join(tmp, "nope"))


# --------------------------------------------------------------------------
# has_d_type


def test_has_d_type_on_host_filesystem(tmp):
    assert fsutil.has_d_type(tmp) is True
    assert os.listdir(tmp) == []  # the probe is gone


@needs_root
def test_has_d_type_false_on_ext4_without_filetype():
    with loop_fs(["mkfs.ext4", "-q", "-F", "-O", "^filetype"]) as mnt:
        assert fsutil.has_d_type(mnt) is False
        assert sorted(os.listdir(mnt)) == ["lost+found"]


@needs_root
def test_has_d_type_true_on_ext4_and_xfs():
    with loop_fs(["mkfs.ext4", "-q", "-F"]) as mnt:
        assert fsutil.has_d_type(mnt) is True
    # xfsprogs >= 5.19 refuses filesystems under 300 MiB; the image is sparse.
    with loop_fs(["mkfs.xfs", "-q", "-f"], size=320 * MiB) as mnt:
        assert fsutil.has_d_type(mnt) is True


# --------------------------------------------------------------------------
# remove_tree


def test_remove_tree_tolerates_missing_path(tmp):
    fsutil.remove_tree(os.path.join(tmp, "nope"))


def test_remove_tree_does_not_follow_symlinks(tmp):
    keep = os.path.join(tmp, "keep")
    os.mkdir(keep)
    with open(os.path.join(keep, "precious"), "w") as f:
        f.write("x")
    tree = os.path.join(tmp, "tree")
    os.makedirs(os.path.join(tree, "a", "b"))
    os.symlink(keep, os.path.join(tree, "a", "to-keep"))
    os.symlink(os.path.join(keep, "precious"), os.path.join(tree, "to-file"))
    link_root = os.path.join(tmp, "link-root")
    os.symlink(keep, link_root)

    fsutil.remove_tree(tree)
    fsutil.remove_tree(link_root)

    assert not os.path.lexists(tree)
    assert not os.path.lexists(link_root)
    assert os.listdir(keep) == ["precious"]


def test_remove_tree_removes_a_single_file(tmp):
    f = os.path.join(tmp, "f")
    open(f, "w").close()
    fsutil.remove_tree(f)
    assert not os.path.lexists(f)


@needs_root
def test_remove_tree_removes_special_files(tmp):
    tree = os.path.join(tmp, "tree")
    os.mkdir(tree)
    build_tree(tree)
    fsutil.remove_tree(tree)
    assert not os.path.lexists(tree)


def _make_locked_tree(tree):
    """Directories that their owner cannot list or write into."""
    os.makedirs(os.path.join(tree, "noperm", "deeper"))
    os.makedirs(os.path.join(tree, "readonly"))
    for d in ("noperm/deeper", "readonly"):
        with open(os.path.join(tree, d, "f"), "w") as f:
            f.write("x")
    os.chmod(os.path.join(tree, "noperm", "deeper"), 0o500)
    os.chmod(os.path.join(tree, "noperm"), 0o000)
    os.chmod(os.path.join(tree, "readonly"), 0o555)
    os.chmod(tree, 0o500)


def test_remove_tree_opens_up_locked_directories(tmp):
    """As a non-root owner (root would not notice the modes at all)."""
    tree = os.path.join(tmp, "tree")
    if IS_ROOT:
        # Run the removal as an unprivileged user owning the tree.
        uid = 65534
        os.chmod(tmp, 0o777)
        os.mkdir(tree)
        _make_locked_tree(tree)
        for dirpath, dirnames, filenames in os.walk(tree):
            for name in dirnames + filenames:
                os.chown(os.path.join(dirpath, name), uid, uid)
        os.chown(tree, uid, uid)
        repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        code = "import sys; from snaplab import fsutil; fsutil.remove_tree(sys.argv[1])"

        def drop():
            os.setgroups([])
            os.setresgid(uid, uid, uid)
            os.setresuid(uid, uid, uid)
        proc = subprocess.run([sys.executable, "-c", code, tree], cwd=repo,
                              preexec_fn=drop, stderr=subprocess.PIPE,
                              universal_newlines=True)
        assert proc.returncode == 0, proc.stderr
    else:
        os.mkdir(tree)
        _make_locked_tree(tree)
        fsutil.remove_tree(tree)
    assert not os.path.lexists(tree)


@needs_root
def test_remove_tree_refuses_a_tree_holding_a_mount(tmp):
    elsewhere = os.path.join(tmp, "elsewhere")
    os.mkdir(elsewhere)
    with open(os.path.join(elsewhere, "precious"), "w") as f:
        f.write("x")
    tree = os.path.join(tmp, "tree with space")
    point = os.path.join(tree, "sub", "mnt")
    os.makedirs(point)
    open(os.path.join(tree, "file"), "w").close()
    _run("mount", "--bind", elsewhere, point)
    try:
        with pytest.raises(OSError) as info:
            fsutil.remove_tree(tree)
        assert info.value.errno == errno.EBUSY
        assert point in str(info.value)
        assert os.path.exists(os.path.join(tree, "file"))  # nothing removed
        with pytest.raises(OSError):
            fsutil.remove_tree(point)  # the mount point itself neither
    finally:
        subprocess.run(["umount", point], check=False)
    assert os.listdir(elsewhere) == ["precious"]
    fsutil.remove_tree(tree)
    assert not os.path.lexists(tree)
