"""Unit tests of conformance/fstest.py on plain temporary directories."""

import errno
import os
import stat

import pytest

from conformance import fstest
from conformance.fstest import (apply, check_directory_equal, chmod, chown, chtimes,
                                create_device_file, create_dir, create_file,
                                create_random_file, create_socket, link, remove,
                                remove_all, rename, set_xattr, symlink)

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (chown, mknod)")


@pytest.fixture
def umask_0077():
    """A restrictive umask, to show that appliers set modes exactly."""
    old = os.umask(0o077)
    yield
    os.umask(old)


@pytest.fixture
def pair(tmp_path):
    """Two sibling directories to compare."""
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    return str(a), str(b)


def mode_of(path):
    return stat.S_IMODE(os.lstat(path).st_mode)


def differs(a, b):
    """The AssertionError text of comparing a with b (fails if they are equal)."""
    with pytest.raises(AssertionError) as excinfo:
        check_directory_equal(a, b)
    return str(excinfo.value)


# --- appliers -----------------------------------------------------------------


def test_create_file_writes_truncates_and_sets_mode(tmp_path, umask_0077):
    root = str(tmp_path)
    create_file("/f", b"hello world", 0o777)(root)
    create_file("/f", b"bye", 0o640)(root)
    path = os.path.join(root, "f")
    with open(path, "rb") as f:
        assert f.read() == b"bye"
    assert mode_of(path) == 0o640


def test_create_dir_makes_parents_and_sets_mode(tmp_path, umask_0077):
    root = str(tmp_path)
    create_dir("/a/b/c", 0o755)(root)
    assert mode_of(os.path.join(root, "a/b/c")) == 0o755
    create_dir("/a/b/c", 0o700)(root)  # an existing dir gets the new mode
    assert mode_of(os.path.join(root, "a/b/c")) == 0o700


def test_create_random_file_is_deterministic(tmp_path):
    root = str(tmp_path)
    create_random_file("/r1", 42, 4096, 0o600)(root)
    create_random_file("/r2", 42, 4096, 0o600)(root)
    create_random_file("/r3", 43, 4096, 0o600)(root)
    data = [open(os.path.join(root, n), "rb").read() for n in ("r1", "r2", "r3")]
    assert len(data[0]) == 4096
    assert data[0] == data[1] != data[2]


def test_remove_file_and_empty_dir(tmp_path):
    root = str(tmp_path)
    apply(create_file("/f", b"x", 0o644), create_dir("/d", 0o755))(root)
    remove("/f")(root)
    remove("/d")(root)
    assert os.listdir(root) == []
    with pytest.raises(FileNotFoundError):
        remove("/f")(root)


def test_remove_all_tree_symlink_and_missing(tmp_path):
    root = str(tmp_path)
    apply(create_dir("/d/e", 0o755), create_file("/d/e/f", b"x", 0o644),
          symlink("/d", "/lnk"))(root)
    remove_all("/lnk")(root)  # the link goes, the directory it points to stays
    assert os.path.isdir(os.path.join(root, "d/e"))
    remove_all("/d")(root)
    remove_all("/missing")(root)
    assert os.listdir(root) == []


def test_rename_replaces_target(tmp_path):
    root = str(tmp_path)
    apply(create_file("/a", b"new", 0o644), create_file("/b", b"old", 0o644),
          rename("/a", "/b"))(root)
    assert os.listdir(root) == ["b"]
    assert open(os.path.join(root, "b"), "rb").read() == b"new"


@needs_root
def test_chown_does_not_follow_symlinks(tmp_path):
    root = str(tmp_path)
    apply(create_file("/f", b"x", 0o644), symlink("f", "/l"), chown("/l", 1, 2))(root)
    assert (os.lstat(os.path.join(root, "l")).st_uid, os.lstat(os.path.join(root, "l")).st_gid) == (1, 2)
    assert os.lstat(os.path.join(root, "f")).st_uid == 0


def test_chmod_symlink_link_chtimes(tmp_path):
    root = str(tmp_path)
    apply(create_file("/f", b"x", 0o644), chmod("/f", 0o600), symlink("../f", "/s"),
          link("/f", "/h"), chtimes("/f", 1000000000, 1000000001))(root)
    f = os.lstat(os.path.join(root, "f"))
    assert stat.S_IMODE(f.st_mode) == 0o600
    assert os.readlink(os.path.join(root, "s")) == "../f"
    assert os.lstat(os.path.join(root, "h")).st_ino == f.st_ino
    assert (f.st_atime, f.st_mtime) == (1000000000, 1000000001)


def test_set_xattr(tmp_path):
    root = str(tmp_path)
    create_file("/f", b"x", 0o644)(root)
    try:
        set_xattr("/f", "user.snaplab", b"v")(root)
    except OSError as err:
        if err.errno in (errno.ENOTSUP, errno.EPERM):
            pytest.skip("user xattrs not supported here: %s" % err)
        raise
    assert os.getxattr(os.path.join(root, "f"), "user.snaplab") == b"v"


@needs_root
def test_create_device_file_and_fifo(tmp_path, umask_0077):
    root = str(tmp_path)
    apply(create_device_file("/null", stat.S_IFCHR | 0o666, 1, 3),
          create_device_file("/fifo", stat.S_IFIFO | 0o640, 0, 0))(root)
    st = os.lstat(os.path.join(root, "null"))
    assert stat.S_ISCHR(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o666
    assert (os.major(st.st_rdev), os.minor(st.st_rdev)) == (1, 3)
    st = os.lstat(os.path.join(root, "fifo"))
    assert stat.S_ISFIFO(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o640


def test_create_socket_in_a_deep_directory(tmp_path):
    root = str(tmp_path)
    deep = "/" + "/".join(["d" * 40] * 4)  # longer than sun_path allows
    apply(create_dir(deep, 0o755), create_socket(deep + "/sock", 0o600))(root)
    st = os.lstat(os.path.join(root, deep.lstrip("/"), "sock"))
    assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600


def test_apply_runs_in_order_and_stops_at_first_failure(tmp_path):
    root = str(tmp_path)
    with pytest.raises(FileNotFoundError):
        apply(create_file("/a", b"1", 0o644), remove("/missing"), create_file("/b", b"2", 0o644))(root)
    assert os.listdir(root) == ["a"]
    apply()(root)  # an empty composition is fine


def test_names_cannot_escape_the_root(tmp_path):
    with pytest.raises(ValueError):
        create_file("/../outside", b"x", 0o644)(str(tmp_path / "root"))
    assert not (tmp_path / "outside").exists()


# --- comparison ---------------------------------------------------------------


def test_equal_trees_pass_and_root_is_skipped(pair, tmp_path):
    a, b = pair
    tree = apply(create_dir("/d", 0o755), create_file("/d/f", b"x", 0o644),
                 symlink("d/f", "/s"), link("/d/f", "/h"))
    tree(a)
    tree(b)
    os.chmod(b, 0o700)  # the roots themselves are not compared
    check_directory_equal(a, b)


def test_added_and_deleted_entries(pair):
    a, b = pair
    create_file("/only-a", b"x", 0o644)(a)
    create_dir("/only-b", 0o755)(b)
    text = differs(a, b)
    assert "- /only-a: missing, expected file" in text
    assert "+ /only-b: unexpected dir" in text


def test_same_size_content_change(pair):
    a, b = pair
    create_file("/f", b"mydomain 10.0.0.1", 0o644)(a)
    create_file("/f", b"mydomain 10.0.0.2", 0o644)(b)
    text = differs(a, b)
    assert "~ /f: sha256" in text and "size " not in text


def test_size_change(pair):
    a, b = pair
    create_file("/f", b"short", 0o644)(a)
    create_file("/f", b"longer!", 0o644)(b)
    assert "size 5 != 7" in differs(a, b)


def test_mode_change(pair):
    a, b = pair
    create_file("/f", b"x", 0o644)(a)
    create_file("/f", b"x", 0o666)(b)
    assert "~ /f: mode -rw-r--r-- (0100644) != -rw-rw-rw- (0100666)" in differs(a, b)


def test_type_change(pair):
    a, b = pair
    create_file("/x", b"", 0o755)(a)
    create_dir("/x", 0o755)(b)
    assert "~ /x: mode -rwxr-xr-x (0100755) != drwxr-xr-x (040755)" in differs(a, b)


@needs_root
def test_owner_change(pair):
    a, b = pair
    create_dir("/d", 0o700)(a)
    apply(create_dir("/d", 0o700), chown("/d", 1, 2))(b)
    assert "~ /d: uid 0 != 1; gid 0 != 2" in differs(a, b)


def test_symlink_target_change(pair):
    a, b = pair
    symlink("one", "/l")(a)
    symlink("two", "/l")(b)
    assert "symlink target 'one' != 'two'" in differs(a, b)


@needs_root
def test_device_number_change(pair):
    a, b = pair
    create_device_file("/dev", stat.S_IFCHR | 0o600, 1, 3)(a)
    create_device_file("/dev", stat.S_IFCHR | 0o600, 1, 5)(b)
    assert "device 1:3 != 1:5" in differs(a, b)


def test_hardlink_groups_matter(pair):
    a, b = pair
    apply(create_file("/f", b"same", 0o644), link("/f", "/g"))(a)
    # Same names, same content and modes, but two separate files.
    apply(create_file("/f", b"same", 0o644), create_file("/g", b"same", 0o644))(b)
    text = differs(a, b)
    assert "~ /f: hard links ['/f', '/g'] != ['/f']" in text
    assert "+ /g: unexpected file" in text


def test_hardlink_group_is_one_entry_named_by_its_first_path(tmp_path):
    root = str(tmp_path)
    apply(create_file("/z", b"x", 0o644), link("/z", "/a"), link("/z", "/m"))(root)
    manifest = fstest.build_manifest(root)
    assert [(e.path, e.paths) for e in manifest] == [("/a", ("/a", "/m", "/z"))]


def test_times_and_xattrs_are_not_compared(pair):
    a, b = pair
    create_file("/f", b"x", 0o644)(a)
    apply(create_file("/f", b"x", 0o644), chtimes("/f", 1, 2))(b)
    try:
        set_xattr("/f", "user.only-in-b", b"1")(b)
    except OSError:
        pass  # times alone still prove the point
    check_directory_equal(a, b)


def test_fifos_and_sockets_compare_common_fields_only(pair):
    a, b = pair
    for root in (a, b):
        os.mkfifo(os.path.join(root, "p"), 0o600)
        os.chmod(os.path.join(root, "p"), 0o600)
        create_socket("/s", 0o600)(root)
    check_directory_equal(a, b)
    os.chmod(os.path.join(b, "s"), 0o644)
    assert "~ /s: mode" in differs(a, b)


def test_check_directory_equal_with_applier(tmp_path):
    root = str(tmp_path / "r")
    os.mkdir(root)
    tree = apply(create_dir("/a", 0o755), create_file("/a/f", b"x", 0o644))
    tree(root)
    fstest.check_directory_equal_with_applier(root, tree, tmpdir=str(tmp_path))
    with pytest.raises(AssertionError):
        fstest.check_directory_equal_with_applier(root, apply(tree, remove("/a/f")),
                                                  tmpdir=str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == ["r"]  # the temporary tree is gone
