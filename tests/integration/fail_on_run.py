"""A pytest plugin for the tests of the suite's --repeat (test_repeat.py):
the real suite's cases named in SNAPLAB_TEST_FAIL_FIRST (comma-separated
case names, as the report names them) fail in their first run only, those
in SNAPLAB_TEST_FAIL_ALWAYS in every run; the cases themselves are not
changed. Loaded with `-p fail_on_run`, tests/integration on PYTHONPATH."""

import os

import pytest


def _cases(variable):
    return {name.strip() for name in os.environ.get(variable, "").split(",") if name.strip()}


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_call(item):
    properties = dict(item.user_properties)
    case, run = properties.get("case"), properties.get("run", 1)
    if case in _cases("SNAPLAB_TEST_FAIL_ALWAYS") or (
            case in _cases("SNAPLAB_TEST_FAIL_FIRST") and run == 1):
        raise AssertionError("made to fail in run %d by tests/integration/fail_on_run.py" % run)
