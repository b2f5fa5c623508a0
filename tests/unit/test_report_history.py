"""The report over repeated runs and across reports (conformance/report.py,
conformance/history.py): pass rates, flaky cases, regressions, the history
file and its trimming, from crafted result files."""

import json

import pytest

from conformance import history, report


def result(target, case, outcome="passed", run=1, runs=1, reason=""):
    backend, _, filesystem = target.partition("-on-")
    record = {"target": target, "backend": backend, "filesystem": filesystem, "case": case,
              "nodeid": "conformance/test_x.py::test_%s[%s-run%d]" % (case, target, run),
              "outcome": outcome, "duration": 0.1, "reason": reason}
    if runs > 1:
        record.update(run=run, runs=runs)
    return record


def runs_of(target, case, outcomes, reason="boom"):
    """One record per run of `case`, with these outcomes."""
    return [result(target, case, outcome, n, len(outcomes), reason if outcome != "passed" else "")
            for n, outcome in enumerate(outcomes, 1)]


def write_run(path, results, started="2026-12-01T10:00:00Z", label="bookworm",
              kernel="6.1.0-18-amd64"):
    path.write_text(json.dumps({
        "format": "snaplab-conformance/1",
        "run": {"started": started, "finished": started, "hostname": "node1", "kernel": kernel,
                "distro": "Debian GNU/Linux 12 (bookworm)", "python": "3.11.2", "label": label},
        "results": results}), encoding="utf-8")
    return str(path)


def report_of(capsys, *argv):
    code = report.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def cell_of(markdown, row):
    line = next(ln for ln in markdown.splitlines() if ln.startswith("| %s |" % row))
    return line.split("|")[2].strip()


def section(markdown, title):
    """The lines of the section whose heading starts with `title`."""
    lines = markdown.splitlines()
    start = next(n for n, ln in enumerate(lines) if ln.startswith("## " + title))
    end = next((n for n in range(start + 1, len(lines)) if lines[n].startswith("## ")), len(lines))
    return [ln for ln in lines[start + 1:end] if ln.strip()]


def test_a_case_that_passes_in_some_runs_is_flaky_with_its_rate_not_a_failure(tmp_path, capsys):
    path = write_run(tmp_path / "r.json",
                     runs_of("overlay-on-xfs", "basic", ["passed", "failed", "passed"])
                     + runs_of("overlay-on-xfs", "usage", ["passed"] * 3))
    page = tmp_path / "r.html"
    code, out, err = report_of(capsys, "--html", str(page), path)
    assert (code, err) == (0, "")
    assert cell_of(out, "overlay") == "🟡 5 pass · 1 flaky"
    html = page.read_text()
    assert '<td class="yellow">' in html and "<h2>Flaky cases (1)</h2>" in html
    assert "<td>basic</td><td>2/3</td>" in html
    assert "overlay-on-xfs :: basic (run 2/3)" in html  # the details name each run
    assert "each case ran up to 3 times" in out
    assert section(out, "Flaky cases (1)")[-1] == (
        "| overlay-on-xfs @ bookworm | basic | 2/3 | 2/3 | — | boom |")
    assert "## Failures" not in out


def test_repeated_runs_without_a_flaky_case_say_so(tmp_path, capsys):
    path = write_run(tmp_path / "r.json", runs_of("overlay-on-xfs", "basic", ["passed"] * 3)
                     + runs_of("overlay-on-xfs", "usage", ["passed"] * 3))
    code, out, _ = report_of(capsys, path)
    assert code == 0
    assert section(out, "Flaky cases (0)") == [
        "No case both passed and failed across this report's 3 runs: each passed in every run "
        "or failed in every run."]
    once = write_run(tmp_path / "once.json", [result("overlay-on-xfs", "basic")])
    assert "Flaky cases" not in report_of(capsys, once)[1]  # one run: nothing to say


def test_a_case_that_fails_in_every_run_is_one_failure(tmp_path, capsys):
    path = write_run(tmp_path / "r.json",
                     runs_of("overlay-on-xfs", "basic", ["failed", "failed"])
                     + runs_of("overlay-on-xfs", "usage", ["passed", "failed"]))
    code, out, _ = report_of(capsys, path)
    assert code == 1
    assert cell_of(out, "overlay") == "❌ 1 pass · 2 fail · 1 flaky"
    assert section(out, "Failures (1)") == ["- overlay-on-xfs :: basic — boom (2 runs)"]
    assert "| overlay-on-xfs @ bookworm | usage | 1/2 |" in out


def test_a_known_failure_that_fails_sometimes_is_flaky_and_its_entry_not_stale(tmp_path, capsys):
    known = tmp_path / "known.txt"
    known.write_text("overlay-on-* :: basic | listed | https://bug\n")
    path = write_run(tmp_path / "r.json",
                     runs_of("overlay-on-xfs", "basic", ["xfailed", "xpassed"], reason="known: x"))
    code, out, _ = report_of(capsys, "--known-failures", str(known), path)
    assert code == 0
    assert cell_of(out, "overlay") == "🟡 1 pass · 1 flaky"
    assert "| basic | 1/2 | 1/2 | — | known: x; known: listed (https://bug) |" in out
    assert "Unexpectedly passing" not in out and "stale" not in out


def test_history_marks_a_newly_failing_case_a_regression(tmp_path, capsys):
    kept = tmp_path / "history.json"
    first = write_run(tmp_path / "1.json", runs_of("native-on-ext4", "basic", ["passed"] * 2)
                      + runs_of("native-on-ext4", "usage", ["failed"] * 2),
                      kernel="6.1.0-17-amd64")
    code, out, _ = report_of(capsys, "--history", str(kept), first)
    assert code == 1 and "Regressions" not in out  # usage: no earlier report passed it
    second = write_run(tmp_path / "2.json", runs_of("native-on-ext4", "basic", ["failed"] * 2)
                       + runs_of("native-on-ext4", "usage", ["failed"] * 2),
                       started="2026-12-02T10:00:00Z")
    code, out, _ = report_of(capsys, "--history", str(kept), "--markdown",
                             str(tmp_path / "r.md"), "--html", str(tmp_path / "r.html"), second)
    assert code == 1
    assert section(out, "❌ Regressions (1)") == [
        "- ❌ native-on-ext4 :: basic — boom (2 runs); passed in every run of 1 earlier "
        "report(s), last 2026-12-01T10:00:00Z on 6.1.0-17-amd64"]
    assert section(out, "Failures (1)") == ["- native-on-ext4 :: usage — boom (2 runs)"]
    assert out.index("Regressions") < out.index("## Failures")
    assert '<h2 class="regression">Regressions (1)</h2>' in (tmp_path / "r.html").read_text()
    cells = json.loads(kept.read_text())["cells"]
    assert [e["cases"]["basic"] for e in cells["native-on-ext4 @ bookworm"]] == [
        {"pass": 2, "fail": 0, "skip": 0}, {"pass": 0, "fail": 2, "skip": 0}]
    assert [e["kernel"] for e in cells["native-on-ext4 @ bookworm"]] == [
        "6.1.0-17-amd64", "6.1.0-18-amd64"]


def test_history_makes_a_case_that_failed_before_and_passes_now_flaky(tmp_path, capsys):
    kept = tmp_path / "history.json"
    for day, outcome in enumerate(["passed", "failed", "passed"], 1):
        path = write_run(tmp_path / ("%d.json" % day), runs_of("native-on-ext4", "basic", [outcome] * 3),
                         started="2026-12-0%dT10:00:00Z" % day)
        code, out, _ = report_of(capsys, "--history", str(kept), path)
    assert code == 0  # the last report passed, but the case is not sound
    assert section(out, "Flaky cases (1)")[-1] == (
        "| native-on-ext4 @ bookworm | basic | 6/9 | 3/3 | 3/6 | (failed in an earlier report) |")
    assert "Regressions" not in out
    # Failing in every run now, after passing and failing before: still flaky.
    path = write_run(tmp_path / "4.json", runs_of("native-on-ext4", "basic", ["failed"] * 3),
                     started="2026-12-04T10:00:00Z")
    code, out, _ = report_of(capsys, "--history", str(kept), path)
    assert code == 0 and "6/12" in out  # still flaky over the history: 6 of 12 runs passed


def test_a_known_failure_is_never_a_regression(tmp_path, capsys):
    kept, known = tmp_path / "history.json", tmp_path / "known.txt"
    known.write_text("native-on-ext4 @ bookworm :: basic | found yesterday\n")
    report_of(capsys, "--history", str(kept),
              write_run(tmp_path / "1.json", runs_of("native-on-ext4", "basic", ["passed"])))
    code, out, _ = report_of(capsys, "--history", str(kept), "--known-failures", str(known),
                             write_run(tmp_path / "2.json", runs_of("native-on-ext4", "basic", ["failed"]),
                                       started="2026-12-02T10:00:00Z"))
    assert code == 0 and "Regressions" not in out
    assert section(out, "Expected failures (1)") == [
        "- native-on-ext4 :: basic — found yesterday"]


def test_history_keeps_the_last_k_reports_and_the_same_results_once(tmp_path, capsys):
    kept = tmp_path / "history.json"
    paths = [write_run(tmp_path / ("%d.json" % n), runs_of("native-on-ext4", "basic", ["passed"]),
                       started="2026-12-0%dT10:00:00Z" % n) for n in (1, 2, 3)]
    for path in paths:
        report_of(capsys, "--history", str(kept), "--history-keep", "2", path)
    report_of(capsys, "--history", str(kept), "--history-keep", "2", paths[-1])  # again
    entries = json.loads(kept.read_text())["cells"]["native-on-ext4 @ bookworm"]
    assert [e["when"] for e in entries] == ["2026-12-02T10:00:00Z", "2026-12-03T10:00:00Z"]
    assert entries[-1]["runs"] == ["node1 2026-12-03T10:00:00Z"]
    # another cell's entries are left as they were by a report without it
    report_of(capsys, "--history", str(kept), "--history-keep", "2", write_run(
        tmp_path / "4.json", runs_of("overlay-on-xfs", "basic", ["passed"]),
        started="2026-12-04T10:00:00Z"))
    cells = json.loads(kept.read_text())["cells"]
    assert len(cells["native-on-ext4 @ bookworm"]) == 2 and len(cells["overlay-on-xfs @ bookworm"]) == 1


@pytest.mark.parametrize("content, message", [
    ("{not json", "invalid JSON (line 1"),
    ('{"format": "other"}', "not a snaplab-history/1 history file"),
    ('{"format": "snaplab-history/1", "cells": {"c": [{"cases": {"basic": {"pass": "x"}}}]}}',
     "cell 'c', entry 0: case 'basic' needs counts pass, fail, skip (numbers)"),
])
def test_a_corrupt_history_is_one_error_line_exit_2_and_left_as_it_is(tmp_path, capsys,
                                                                       content, message):
    kept = tmp_path / "history.json"
    kept.write_text(content)
    code, out, err = report_of(capsys, "--history", str(kept), write_run(
        tmp_path / "r.json", runs_of("native-on-ext4", "basic", ["passed"])))
    assert (code, out) == (2, "")
    assert err.startswith("report: error: ") and message in err and err.count("\n") == 1
    assert kept.read_text() == content


def test_verdicts():
    def counts(passes, failures):
        return {"pass": passes, "fail": failures, "skip": 0}
    assert history.verdict(counts(0, 2), [counts(3, 0), counts(0, 0)]) == ("regression", 3, 5)
    assert history.verdict(counts(0, 2), []) == (None, 0, 2)
    assert history.verdict(counts(0, 2), [counts(2, 1)]) == ("flaky", 2, 5)
    assert history.verdict(counts(2, 0), [counts(0, 1)]) == ("flaky", 2, 3)
    assert history.verdict(counts(0, 0), [counts(0, 1), counts(1, 0)])[0] is None  # not run now
