"""`make bench-check`'s comparison (benchmarks/benchjson.py, bench_check.py)
on crafted benchmark documents: nothing is timed here."""

import importlib.util
import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BENCHMARKS = os.path.join(REPO, "benchmarks")


def load_benchjson():
    # benchmarks/ is a directory of scripts, not a package: loaded by path.
    spec = importlib.util.spec_from_file_location(
        "benchjson", os.path.join(BENCHMARKS, "benchjson.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


benchjson = load_benchjson()


def doc(benchmark, **ratios):
    """A document whose rows have these ratios (peer 1.0); a name ending in
    _up is a "higher is better" row."""
    rows = []
    for what, ratio in ratios.items():
        better = "higher" if what.endswith("_up") else "lower"
        rows.append(benchjson.row(what, ratio, 1.0, "ms", better=better))
    return {"benchmark": benchmark, "load": [1.0, 1.0, 1.0], "rows": rows}


def base(**rows):
    return {"note": "crafted", "loads": [], "benchmarks": {"b": {
        what: {"ratio": ratio, "better": "higher" if what.endswith("_up") else "lower",
               "tolerance": 0.25} for what, ratio in rows.items()}}}


def verdicts(findings):
    return {f["what"]: f["verdict"] for f in findings}


def test_a_row_is_snaplab_over_peer_and_none_without_a_peer():
    assert benchjson.row("x", 3.0, 2.0, "ms")["ratio"] == 1.5
    assert benchjson.row("x", 3.0, 0, "ms")["ratio"] is None
    with pytest.raises(ValueError):
        benchjson.row("x", 1.0, 1.0, "ms", better="faster")


def test_the_median_of_the_runs_is_compared_not_one_bad_run():
    found = benchjson.medians([doc("b", stat=1.0), doc("b", stat=9.0), doc("b", stat=1.1)])
    assert found["b"]["stat"] == {"ratio": 1.1, "better": "lower", "runs": 3, "worst": 9.0}
    assert verdicts(benchjson.compare(base(stat=1.0), found)) == {"stat": "ok"}


def test_lower_is_better_regresses_past_the_tolerance_only():
    findings = benchjson.compare(base(a=1.0, b=1.0, c=1.0),
                                 benchjson.medians([doc("b", a=1.24, b=1.26, c=0.5)]))
    assert verdicts(findings) == {"a": "ok", "b": "regressed", "c": "improved"}
    assert [f["what"] for f in benchjson.failures(findings)] == ["b"]


def test_higher_is_better_regresses_when_it_falls():
    findings = benchjson.compare(base(x_up=2.0, y_up=2.0, z_up=2.0),
                                 benchjson.medians([doc("b", x_up=1.7, y_up=1.5, z_up=3.0)]))
    # 2.0 / 1.25 = 1.6 is the limit
    assert verdicts(findings) == {"x_up": "ok", "y_up": "regressed", "z_up": "improved"}


def test_a_baseline_row_no_run_produced_fails_and_other_benchmarks_are_skipped():
    baseline = base(stat=1.0, renamed=1.0)
    baseline["benchmarks"]["not_run"] = {"q": {"ratio": 1.0, "better": "lower"}}
    found = benchjson.medians([doc("b", stat=1.0)])
    findings = benchjson.compare(baseline, found)
    assert verdicts(findings) == {"stat": "ok", "renamed": "missing"}
    assert "renamed" in benchjson.describe(benchjson.failures(findings)[0])


def test_rows_without_a_ratio_are_left_out():
    document = doc("b", stat=1.0)
    document["rows"].append(benchjson.row("zero peer", 1.0, 0, "ms"))
    assert set(benchjson.medians([document])["b"]) == {"stat"}


def test_unchecked_rows_are_written_but_never_compared():
    document = doc("b", stat=1.0)
    document["rows"].append(benchjson.row("remove p99", 40.0, 1.0, "ms",
                                          unchecked="the peer's garbage collector"))
    assert document["rows"][-1]["unchecked"] == "the peer's garbage collector"
    found = benchjson.medians([document])
    assert set(found["b"]) == {"stat"}
    assert set(benchjson.baseline(found, "note", [[1, 1, 1]])["benchmarks"]["b"]) == {"stat"}


def test_baseline_tolerances_p99_rows_wider():
    found = benchjson.medians([doc("b", **{"stat p50, serve": 1.0, "stat p99, serve": 2.0})])
    written = benchjson.baseline(found, "note", [[1, 1, 1]], tolerance=0.2, p99_tolerance=0.9)
    rows = written["benchmarks"]["b"]
    assert rows["stat p50, serve"]["tolerance"] == 0.2
    assert rows["stat p99, serve"]["tolerance"] == 0.9
    assert rows["stat p99, serve"]["ratio"] == 2.0


def test_read_refuses_a_document_of_another_format(tmp_path):
    path = tmp_path / "old.json"
    path.write_text(json.dumps({"ops": 200, "results": {}}))
    with pytest.raises(ValueError, match="not a benchmark document"):
        benchjson.read(str(path))
    path.write_text(json.dumps({"benchmark": "b", "load": [], "rows": [{"what": "w"}]}))
    with pytest.raises(ValueError, match="lacks"):
        benchjson.read(str(path))


def check(tmp_path, *args):
    return subprocess.run([sys.executable, os.path.join(BENCHMARKS, "bench_check.py"),
                           "--from", str(tmp_path / "runs"), "--baseline",
                           str(tmp_path / "baseline.json"), *args],
                          capture_output=True, text=True, check=False)


def test_bench_check_names_the_regressed_row_and_exits_1(tmp_path):
    runs = tmp_path / "runs"
    runs.mkdir()
    for n, ratio in enumerate((1.0, 1.1, 1.05)):
        (runs / ("bench_latency.%d.json" % n)).write_text(json.dumps(
            doc("bench_latency", **{"native stat p50, vs overlay": ratio,
                                    "native prepare p50, vs overlay": 3 * ratio})))
    written = check(tmp_path, "--only", "bench_latency", "--write-baseline", "crafted")
    assert written.returncode == 0, written.stdout + written.stderr
    assert check(tmp_path, "--only", "bench_latency").returncode == 0

    for n in range(3):
        path = runs / ("bench_latency.%d.json" % n)
        document = json.loads(path.read_text())
        document["rows"][1] = benchjson.row("native prepare p50, vs overlay", 6.0, 1.0, "ms")
        path.write_text(json.dumps(document))
    failed = check(tmp_path, "--only", "bench_latency")
    assert failed.returncode == 1
    assert "REGRESSED bench_latency: native prepare p50, vs overlay" in failed.stdout
    assert "native stat p50" not in failed.stdout.split("FAILED")[1]


def test_a_row_that_spread_wide_between_runs_gets_that_as_its_tolerance():
    found = benchjson.medians([doc("b", noisy=1.0, steady=1.0, noisy_up=2.0),
                               doc("b", noisy=2.0, steady=1.1, noisy_up=1.0),
                               doc("b", noisy=4.0, steady=1.05, noisy_up=3.0)])
    rows = benchjson.baseline(found, "note", [], tolerance=0.3)["benchmarks"]["b"]
    assert rows["noisy"]["tolerance"] == 1.0  # worst 4.0 against the median 2.0
    assert rows["noisy_up"]["tolerance"] == 1.0  # median 2.0 against the worst 1.0
    assert rows["steady"]["tolerance"] == 0.3  # spread 0.05: the default


def test_a_benchmark_without_baseline_rows_fails_a_new_row_is_only_listed():
    found = benchjson.medians([doc("b", stat=1.0, added=2.0), doc("other", x=1.0)])
    findings = benchjson.compare(base(stat=1.0), found)
    assert verdicts(findings) == {"stat": "ok", "added": "new", "(every row)": "unbaselined"}
    assert [(f["benchmark"], f["verdict"]) for f in benchjson.failures(findings)] == [
        ("other", "unbaselined")]
