"""Traits files and options (conformance/traits.py): what they accept and refuse."""

import os

import pytest

from snaplab import errors

from conformance import traits as traitslib
from conformance.registry import all_targets, endpoint_targets, target_classes


def test_a_file_sets_what_it_names_and_leaves_the_rest_at_defaults(tmp_path):
    path = tmp_path / "mine.yml"
    path.write_text("---\n# full copies\nusage_includes_parent: true   # like native\n"
                    "removal: 'until-cleanup'\nstorage_layout: ~\n")
    traits = traitslib.load(str(path))
    assert traits.usage_includes_parent is True
    assert traits.removal == "until-cleanup"
    assert traits.storage_layout is None
    assert traits.inodes_reported is True and traits.root_mode == "0755"
    assert traits.declared() == {"usage_includes_parent": True, "removal": "until-cleanup"}
    assert traits.source == "mine.yml"


@pytest.mark.parametrize("content, message", [
    ("usage_includes_parents: true\n", "unknown trait 'usage_includes_parents'"),
    ("removal: later\n", "trait removal cannot be later (it is one of: immediate, until-cleanup)"),
    ("inodes_reported: 1\n", "trait inodes_reported cannot be 1"),
    ("removal:\n  - immediate\n", "one `name: value` per line"),
    ("removal: immediate\nremoval: immediate\n", "trait removal given twice"),
    ("just words\n", "one `name: value` per line"),
])
def test_a_bad_file_is_refused_naming_its_line(tmp_path, content, message):
    path = tmp_path / "bad.yml"
    path.write_text(content)
    with pytest.raises(errors.InvalidArgument, match="bad.yml:[12]: .*" + _escaped(message)):
        traitslib.load(str(path))


def _escaped(text):
    return "".join("\\" + c if c in "().*+?[]{}|^$\\" else c for c in text)


def test_a_missing_file_is_an_invalid_argument(tmp_path):
    with pytest.raises(errors.InvalidArgument, match="traits file .*nothing.yml"):
        traitslib.load(str(tmp_path / "nothing.yml"))


def test_options_parse_like_the_files():
    assert traitslib.of_options(["inodes_reported=false", "root_mode=0711"]) == {
        "inodes_reported": False, "root_mode": "0711"}
    with pytest.raises(errors.InvalidArgument, match="NAME=VALUE"):
        traitslib.of_options(["inodes_reported"])
    with pytest.raises(errors.InvalidArgument, match="unknown trait"):
        traitslib.of_options(["colour=blue"])


def test_every_file_of_the_suite_parses_and_every_target_has_one():
    names = sorted(name[:-len(".yml")] for name in os.listdir(traitslib.TRAITS_DIR))
    for name in names:
        assert isinstance(traitslib.known(name), traitslib.Traits), name
    for target in all_targets(sorted(target_classes()), ["ext4"]):
        assert target.traits.source.split()[0][:-len(".yml")] in names, target


def test_the_matrix_declares_what_the_cases_used_to_branch_on():
    """The choices the cases once read from backend names."""
    by_name = {t.backend: t.traits for t in all_targets(sorted(target_classes()), ["ext4"])}
    assert by_name["native"].usage_includes_parent and by_name["containerd-native"].usage_includes_parent
    assert not by_name["zfs"].inodes_reported and not by_name["containerd-zfs"].inodes_reported
    assert not by_name["overlay"].lower_directory_rename
    assert not by_name["containerd-overlayfs"].lower_directory_rename
    # through containerd, data goes at its garbage collection
    assert by_name["containerd-btrfs"].removal == "until-cleanup"
    assert by_name["btrfs"].removal == "immediate"
    # snaplab serve deletes the data in the background: Cleanup waits for it
    assert by_name["serve-btrfs"].removal == "until-cleanup"
    # containerd 1.6's Commit has no parent; snaplab's has, but not through containerd
    assert by_name["serve-overlay"].rebase and not by_name["containerd-overlayfs"].rebase
    assert not by_name["containerd-proxy-snaplab-overlay"].rebase


def test_an_endpoint_takes_the_users_traits_else_the_suites(tmp_path):
    path = tmp_path / "t.yml"
    path.write_text("inodes_reported: false\n")
    [mine] = endpoint_targets("/run/x.sock", "mine", traits_file=str(path),
                              trait_options=["removal=until-cleanup"])
    assert (mine.traits.inodes_reported, mine.traits.removal) == (False, "until-cleanup")
    assert mine.traits.source == "t.yml and --trait"
    [known] = endpoint_targets("/run/x.sock", "overlayfs")
    assert known.traits.source == "containerd-overlayfs.yml"
    assert not known.traits.lower_directory_rename
    [unknown] = endpoint_targets("/run/x.sock", "someone-elses")
    assert unknown.traits == traitslib.Traits()
