"""The suite's --repeat on the real suite, and the report's rates, flaky
cases and regressions from what it wrote: two fast cases of native on a
real ext4, twice each. tests/integration/fail_on_run.py makes a case fail
in its first run only, or in every run, without changing the case."""

import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HERE = os.path.dirname(os.path.abspath(__file__))
CASES = "test_basic or test_stat_active"
LABEL = "repeat-test"


def run_suite(results, **fail):
    env = dict(os.environ, SNAPLAB_RUN_LABEL=LABEL, PYTHONPATH=os.pathsep.join(
        p for p in (REPO, HERE, os.environ.get("PYTHONPATH")) if p), **fail)
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "conformance", "-q", "-p", "no:cacheprovider",
         "-p", "fail_on_run", "--repeat", "2", "-k", CASES, "--backends", "native",
         "--filesystems", "ext4", "--results-json", str(results)],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        universal_newlines=True, timeout=600, check=False)
    assert results.exists(), proc.stdout
    return proc, json.loads(results.read_text())["results"]


def run_report(results, history):
    return subprocess.run(
        [sys.executable, "-m", "conformance.report", "--history", str(history), str(results)],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True,
        timeout=120, check=False)


def test_repeated_runs_make_flaky_cases_and_regressions(tmp_path):
    history = tmp_path / "history.json"
    proc, results = run_suite(tmp_path / "first.json", SNAPLAB_TEST_FAIL_FIRST="basic")
    assert proc.returncode == 1, proc.stdout  # pytest saw basic's first run fail
    assert sorted((r["case"], r["run"], r["runs"], r["outcome"]) for r in results) == [
        ("basic", 1, 2, "failed"), ("basic", 2, 2, "passed"),
        ("stat_active", 1, 2, "passed"), ("stat_active", 2, 2, "passed")]
    assert {r["target"] for r in results} == {"native-on-ext4"}
    assert len({r["nodeid"] for r in results}) == 4
    assert "made to fail in run 1" in next(r["reason"] for r in results if r["outcome"] == "failed")

    shown = run_report(tmp_path / "first.json", history)
    assert shown.returncode == 0, shown.stdout + shown.stderr  # flaky is not a failure
    assert "| native | 🟡 3 pass · 1 flaky |" in shown.stdout
    assert "| native-on-ext4 @ %s | basic | 1/2 | 1/2 | — |" % LABEL in shown.stdout

    # stat_active passed in every run so far; now it fails in every run.
    proc, results = run_suite(tmp_path / "second.json", SNAPLAB_TEST_FAIL_ALWAYS="stat_active")
    assert proc.returncode == 1, proc.stdout
    shown = run_report(tmp_path / "second.json", history)
    assert shown.returncode == 1, shown.stdout + shown.stderr
    regressions = shown.stdout.split("## ❌ Regressions (1)")[1].split("##")[0]
    assert "native-on-ext4 :: stat_active — AssertionError: made to fail in run 1" in regressions
    assert "(2 runs); passed in every run of 1 earlier report(s)" in regressions
    # basic passed in both runs now, but failed once before: 3 of 4.
    assert "| native-on-ext4 @ %s | basic | 3/4 | 2/2 | 1/2 |" % LABEL in shown.stdout
    assert len(json.loads(history.read_text())["cells"]["native-on-ext4 @ %s" % LABEL]) == 2
