"""snaplab.idmap's rules without the kernel: the labels parsed as
containerd's IDMap does, ids mapped range by range, the Mount options, and
a file capability shifted as an idmapped mount shows it."""

import pytest

from snaplab import errors, idmap

UID = idmap.UID_MAPPING_LABEL
GID = idmap.GID_MAPPING_LABEL


def test_no_labels_no_mapping():
    assert idmap.from_labels({}) is None
    assert idmap.from_labels(None) is None
    assert idmap.from_labels({"other": "x"}) is None


def test_ranges_map_ids_and_the_root_pair():
    mapping = idmap.from_labels({UID: "0:666:1000,1000:6666:64536", GID: "0:888:65536"})
    assert mapping.root_pair == (666, 888)
    assert mapping.uids.to_host(999) == 1665
    assert mapping.uids.to_host(1000) == 6666
    assert mapping.uids.to_host(65535) == 6666 + 64535
    assert mapping.uids.to_host(65536) is None
    assert mapping.uids.kernel_map() == "0 666 1000\n1000 6666 64536\n"
    assert mapping.mount_options() == ["uidmap=0:666:1000,1000:6666:64536",
                                       "gidmap=0:888:65536"]


@pytest.mark.parametrize("uids,message", [
    ("-1:666:1", "negative"),
    ("0:-666:1", "negative"),
    ("0:666:0", "size not 0"),
    ("0:666:4294967295", "4294967295"),
    ("0:4294967290:10", "4294967295"),
    ("1:666:10", "does not map container id 0"),
    ("0:666", "containerID:hostID:size"),
    ("0:666:1:2", "containerID:hostID:size"),
    ("0:0x10:1", "decimal"),
    ("", "containerID:hostID:size"),
    ("0:100:10,5:200:10", "overlap on the container side"),
    ("0:100:10,10:105:10", "overlap on the host side"),
])
def test_malformed_mappings_are_invalid_arguments(uids, message):
    with pytest.raises(errors.InvalidArgument, match=message):
        idmap.Mapping(uids, "0:1:1")


def test_one_label_alone_is_refused():
    with pytest.raises(errors.InvalidArgument, match="needs both labels"):
        idmap.from_labels({UID: "0:666:1"})
    with pytest.raises(errors.InvalidArgument, match="needs both"):
        idmap.from_options(["gidmap=0:666:1", "rbind"])


def test_options_split_the_mapping_from_the_rest():
    mapping, rest = idmap.from_options(["uidmap=0:5:10", "ro", "gidmap=0:7:10", "rbind"])
    assert mapping.root_pair == (5, 7)
    assert rest == ["ro", "rbind"]
    assert idmap.from_options(["ro"]) == (None, ["ro"])


def _capability(revision, root=None):
    value = bytes([1, 0, 0, revision]) + bytes(range(16))
    return value + (root.to_bytes(4, "little") if root is not None else b"")


def test_a_capability_becomes_version_3_for_the_mapped_root():
    mapping = idmap.Mapping("0:1000:100", "0:1000:100")
    assert idmap._remapped_capability(_capability(2), mapping, "f") == _capability(3, 1000)
    assert idmap._remapped_capability(_capability(3, 5), mapping, "f") == _capability(3, 1005)
    with pytest.raises(errors.FailedPrecondition, match="root id 500"):
        idmap._remapped_capability(_capability(3, 500), mapping, "f")
