"""uid/gid mapping: the labels containerd.io/snapshot/uidmapping and
gidmapping on Prepare and View (containerd's remapped-overlay cases, in
the suite's words; docs in the README's "uid/gid mapping").

A mapping `ctrID:hostID:size[,...]` says which host ids the container's
ids are. A target that honours it (trait remap: idmapped or chown) shows a
parent's files, through the mounted child, with host ids, its root owned
by the host id of container root; the parent itself is left as it was.
The cases only look through real mounts, so both ways (idmapped layers,
a chowned copy) must give the same answers. Targets whose trait is none
(containerd 1.6's plugins: its client chowns instead) skip.
"""

import os
import stat

import pytest

from snaplab import errors

from .helpers import apply_to_mounts, mounted
from .rootless import kernel_version

UID_LABEL = "containerd.io/snapshot/uidmapping"
GID_LABEL = "containerd.io/snapshot/gidmapping"
# Different bases for uids and gids, so that a swap shows; within the
# 65536 ids a rootless namespace has.
UIDS = "0:1000:2000"
GIDS = "0:3000:2000"
HOST_UID, HOST_GID = 1000, 3000
# A version 2 file capability (cap_net_bind_service, permitted and
# effective): chown clears it, a mapping must keep it. Mapped, it is a
# version 3 one for the container's root: the kernel shows it so through an
# idmapped mount, and a chown remap writes it so.
CAPABILITY = bytes.fromhex("01000002 00040000 00000000 00000000 00000000")
MAPPED_CAPABILITY = (bytes.fromhex("01000003") + CAPABILITY[4:]
                     + HOST_UID.to_bytes(4, "little"))


@pytest.fixture
def remap(target):
    if target.traits.remap == "none":
        pytest.skip(target.traits.skip_reason("remap", ("idmapped", "chown")))
    return target.traits.remap


def _labels(uids=UIDS, gids=GIDS):
    return {UID_LABEL: uids, GID_LABEL: gids}


def _owner(path):
    st = os.lstat(path)
    return st.st_uid, st.st_gid


def _write_base(directory):
    """A layer as an image has it: container ids (root, a user, setuid)."""
    os.chown(directory, 0, 0)
    with open(os.path.join(directory, "owned"), "w", encoding="ascii") as f:
        f.write("owned")
    os.chown(os.path.join(directory, "owned"), 5, 6)
    with open(os.path.join(directory, "setuid"), "w", encoding="ascii") as f:
        f.write("#!/bin/sh\n")
    os.chmod(os.path.join(directory, "setuid"), 0o4755)
    with open(os.path.join(directory, "setgid"), "w", encoding="ascii") as f:
        f.write("#!/bin/sh\n")
    os.chown(os.path.join(directory, "setgid"), 0, 7)
    os.chmod(os.path.join(directory, "setgid"), 0o2755)
    os.mkdir(os.path.join(directory, "dir"))
    os.symlink("../owned", os.path.join(directory, "dir", "link"))
    os.chown(os.path.join(directory, "dir", "link"), 8, 9, follow_symlinks=False)


def _base(sn, work):
    apply_to_mounts(sn.prepare("base-tmp", ""), work, _write_base)
    sn.commit("base", "base-tmp")
    return "base"


def _create(sn, how, key, parent, labels):
    """Prepare or View; a kernel older than idmapped overlays (5.19) may
    refuse, and then the case says so instead of failing."""
    try:
        return getattr(sn, how)(key, parent, labels=labels)
    except errors.FailedPrecondition as refusal:
        if kernel_version() < (5, 19):
            pytest.skip("the target refuses the mapping on Linux %d.%d: %s"
                        % (kernel_version() + (refusal,)))
        raise


def _check_mapped(directory):
    assert _owner(directory) == (HOST_UID, HOST_GID)
    assert _owner(os.path.join(directory, "owned")) == (HOST_UID + 5, HOST_GID + 6)
    assert _owner(os.path.join(directory, "dir")) == (HOST_UID, HOST_GID)
    assert _owner(os.path.join(directory, "dir", "link")) == (HOST_UID + 8, HOST_GID + 9)
    setuid = os.lstat(os.path.join(directory, "setuid"))
    assert (setuid.st_uid, stat.S_IMODE(setuid.st_mode)) == (HOST_UID, 0o4755)
    setgid = os.lstat(os.path.join(directory, "setgid"))
    assert (setgid.st_gid, stat.S_IMODE(setgid.st_mode)) == (HOST_GID + 7, 0o2755)
    with open(os.path.join(directory, "owned"), encoding="ascii") as f:
        assert f.read() == "owned"


def _check_unmapped(directory):
    assert _owner(directory) == (0, 0)
    assert _owner(os.path.join(directory, "owned")) == (5, 6)
    assert _owner(os.path.join(directory, "dir", "link")) == (8, 9)
    assert stat.S_IMODE(os.lstat(os.path.join(directory, "setuid")).st_mode) == 0o4755


@pytest.mark.parametrize("uids,gids,why", [
    ("-1:1000:2000", GIDS, "a negative container id"),
    (UIDS, "0:-1:2000", "a negative host id"),
    ("0:1000:-5", GIDS, "a negative size"),
    ("0:1000:4294967295", GIDS, "a size of 2^32-1 (no id)"),
    ("0:1000:100,100:-5:10", GIDS, "a negative id in a second range"),
    ("1:1000:2000", GIDS, "container uid 0 not mapped"),
    (UIDS, "1:3000:2000", "container gid 0 not mapped"),
    ("0:1000", GIDS, "a range without its size"),
    ("zero:1000:1", GIDS, "a word for an id"),
    ("0:1000:2000,10:5000:10", GIDS, "two ranges for the same container ids"),
    (UIDS, None, "the gid mapping missing"),
])
def test_malformed_mappings_are_refused(snapshotter, work, remap, uids, gids, why):
    base = _base(snapshotter, work)
    labels = {UID_LABEL: uids}
    if gids is not None:
        labels[GID_LABEL] = gids
    for how, key, parent in (("prepare", "child", base), ("view", "view", base),
                             ("prepare", "parentless", "")):
        with pytest.raises(errors.InvalidArgument):
            getattr(snapshotter, how)(key, parent, labels=labels)
            raise AssertionError("%s with %s was not refused" % (how, why))
        with pytest.raises(errors.NotFound):
            snapshotter.stat(key)  # nothing made


def test_mapped_child_shows_parent_files_with_host_ids(snapshotter, work, remap):
    base = _base(snapshotter, work)
    mounts = _create(snapshotter, "prepare", "child", base, _labels())
    directory = os.path.join(work, "child")
    os.mkdir(directory)
    with mounted(mounts, directory):
        _check_mapped(directory)
        # Writes land with the ids they are given: host ids, as the
        # container's processes have them.
        with open(os.path.join(directory, "new"), "w", encoding="ascii") as f:
            f.write("new")
        os.chown(os.path.join(directory, "new"), HOST_UID + 10, HOST_GID + 11)
        os.chown(os.path.join(directory, "owned"), HOST_UID + 12, HOST_GID + 13)
    with mounted(snapshotter.mounts("child"), directory):  # again, from Mounts
        assert _owner(os.path.join(directory, "new")) == (HOST_UID + 10, HOST_GID + 11)
        assert _owner(os.path.join(directory, "owned")) == (HOST_UID + 12, HOST_GID + 13)
        assert _owner(os.path.join(directory, "dir")) == (HOST_UID, HOST_GID)
    assert snapshotter.stat("child").labels == _labels()


def test_the_parent_keeps_its_container_ids(snapshotter, work, remap):
    base = _base(snapshotter, work)
    _create(snapshotter, "prepare", "child", base, _labels())
    plain = snapshotter.prepare("plain", base)
    for mounts, name in ((plain, "plain"), (snapshotter.view("base-view", base), "view")):
        directory = os.path.join(work, name)
        os.mkdir(directory)
        with mounted(mounts, directory):
            _check_unmapped(directory)


def test_mapped_view_shows_host_ids_and_is_read_only(snapshotter, work, remap, target):
    base = _base(snapshotter, work)
    mounts = _create(snapshotter, "view", "view", base, _labels())
    directory = os.path.join(work, "view")
    os.mkdir(directory)
    with mounted(mounts, directory):
        _check_mapped(directory)
        if target.traits.view_mounts == "read-only":
            with pytest.raises(OSError):
                open(os.path.join(directory, "write-must-fail"), "w").close()


def test_mapped_parentless_snapshot_is_owned_by_the_mapped_root(snapshotter, work, remap):
    mounts = _create(snapshotter, "prepare", "empty", "", _labels())
    directory = os.path.join(work, "empty")
    os.mkdir(directory)
    with mounted(mounts, directory):
        assert _owner(directory) == (HOST_UID, HOST_GID)
        os.mkdir(os.path.join(directory, "made"))
        os.chown(os.path.join(directory, "made"), HOST_UID + 1, HOST_GID + 1)
        assert _owner(os.path.join(directory, "made")) == (HOST_UID + 1, HOST_GID + 1)


def test_several_ranges_map_each_id_by_its_range(snapshotter, work, remap):
    base = _base(snapshotter, work)
    # container 0 -> 1000, 1..9 -> 5001..5009 (uids); gids in one range.
    mounts = _create(snapshotter, "prepare", "child", base,
                     _labels(uids="0:1000:1,1:5001:9,10:1010:1990"))
    directory = os.path.join(work, "child")
    os.mkdir(directory)
    with mounted(mounts, directory):
        assert _owner(directory) == (1000, HOST_GID)
        assert _owner(os.path.join(directory, "owned")) == (5005, HOST_GID + 6)
        assert _owner(os.path.join(directory, "dir", "link")) == (5008, HOST_GID + 9)


def test_file_capabilities_survive_the_mapping(snapshotter, work, remap):
    def write(directory):
        path = os.path.join(directory, "capable")
        with open(path, "w", encoding="ascii") as f:
            f.write("#!/bin/sh\n")
        try:
            os.setxattr(path, "security.capability", CAPABILITY)
        except OSError as err:
            pytest.skip("this filesystem takes no file capability: %s" % err)
    apply_to_mounts(snapshotter.prepare("base-tmp", ""), work, write)
    snapshotter.commit("base", "base-tmp")
    mounts = _create(snapshotter, "prepare", "child", "base", _labels())
    directory = os.path.join(work, "child")
    os.mkdir(directory)
    with mounted(mounts, directory):
        value = os.getxattr(os.path.join(directory, "capable"), "security.capability")
    assert value == MAPPED_CAPABILITY


def test_without_remap_the_labels_are_refused_or_only_stored(snapshotter, work, target):
    """A target that cannot remap says so (FailedPrecondition naming the
    mapping: rootless overlay) or only stores the labels (containerd 1.6's
    plugins): it never shows a half-shifted tree."""
    if target.traits.remap != "none":
        pytest.skip("%s declares remap: %s (the case is for none)"
                    % (target.traits.source, target.traits.remap))
    base = _base(snapshotter, work)
    try:
        mounts = snapshotter.prepare("child", base, labels=_labels())
    except errors.FailedPrecondition as refusal:
        assert "mapping" in str(refusal), refusal
        with pytest.raises(errors.NotFound):
            snapshotter.stat("child")
        return
    assert snapshotter.stat("child").labels == _labels()
    directory = os.path.join(work, "child")
    os.mkdir(directory)
    with mounted(mounts, directory):
        _check_unmapped(directory)
