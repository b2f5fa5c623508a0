"""Each failure the stateful model test found, shrunk, as a plain test.

A test here replays the shrunk sequence call by call and asserts what
containerd's semantics say (tests/model/semantics.py). Where snaplab still
differs, the test is a strict xfail naming the difference: it fails the run
as soon as snaplab is fixed, and then the mark goes, and the input that
test_stateful.py withholds from its draws (WITHHELD) goes back in.
"""

import pytest

from snaplab.types import Info, Kind


def snaplab_differs(why):
    return pytest.mark.xfail(strict=True, reason="snaplab differs from containerd: " + why)


def test_update_of_the_empty_label_path_is_accepted(snapshotter):
    """Update with the field path 'labels.': containerd sets the label named
    '' to info.labels[''], absent, so empty, so nothing is stored: the update
    succeeds and changes no label (snaplab refused it, InvalidArgument)."""
    # shrunk: prepare('a', '', {}); update(Info(UNKNOWN, 'a'), 'labels.')
    snapshotter.prepare("a", "", {"b": "1"})
    info = snapshotter.update(Info(Kind.UNKNOWN, "a", labels={}), "labels.")
    assert info.labels == {"b": "1"}
    assert snapshotter.stat("a").labels == {"b": "1"}
