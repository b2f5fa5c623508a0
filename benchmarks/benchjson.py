"""The figures every benchmark writes with --json, and the regression check on them.

One format for all benchmarks, so that `make bench-check` can compare any of
them with the committed baseline (benchmarks/baseline.json):

    {"benchmark": "bench_containerd", "load": [1 min, 5 min, 15 min],
     "rows": [{"what": "native stat p50, serve", "snaplab": 0.52, "peer": 0.33,
               "unit": "ms", "ratio": 1.58, "goal": 1.0, "better": "lower"}]}

`ratio` is snaplab ÷ peer, measured side by side in the same run, so that
it means the same on a fast or a slow machine; `better` says which way it
improves ("lower": snaplab should take less than the peer); `goal` is the
ratio the project aims at (null where none is stated). A row may also say
`unchecked` (why it is reported but kept out of the baseline: containerd's
Remove p99 is its garbage collector's pause, there in one run and not the
next). The baseline keeps ratios only, never absolute times.

A ratio regresses when its median over the runs is worse than the
baseline's by more than the row's tolerance: for "lower", median >
baseline × (1 + tolerance); for "higher", median < baseline ÷ (1 +
tolerance). A baseline row that no run produced is a failure too (a renamed
or vanished row must not pass unnoticed).

Standard library only: the benchmarks import it as a sibling module, the
unit test (tests/unit/test_bench_check.py) loads it by path.
"""

import json
import os
import re
import statistics

BETTER = ("lower", "higher")
# p50s and sizes are stable enough for this; a p99 of a few hundred samples
# on a shared machine is not, hence its own, wider default.
DEFAULT_TOLERANCE = 0.35
DEFAULT_P99_TOLERANCE = 1.0


def row(what, snaplab, peer, unit, goal=None, better="lower", unchecked=None):
    """One row of the format; ratio is None where the peer measured 0.

    `unchecked`: why the row is reported but never compared with a baseline
    (its ratio follows the peer's noise, not snaplab's code)."""
    if better not in BETTER:
        raise ValueError("better must be one of %s, not %r" % (BETTER, better))
    entry = {"what": what, "snaplab": snaplab, "peer": peer, "unit": unit,
             "ratio": snaplab / peer if peer else None, "goal": goal, "better": better}
    if unchecked:
        entry["unchecked"] = unchecked
    return entry


def document(benchmark, rows):
    return {"benchmark": benchmark, "load": list(os.getloadavg()), "rows": list(rows)}


def write(path, benchmark, rows):
    """Write the rows of `benchmark` as the format above."""
    with open(path, "w", encoding="utf-8") as out:
        json.dump(document(benchmark, rows), out, indent=2)
        out.write("\n")


def emit(text, benchmark, rows, markdown=None, json_path=None):
    """What a benchmark ends with: its table printed, the same text as Markdown
    where asked (--markdown), its rows in the format above where asked (--json)."""
    print(text)
    if markdown:
        with open(markdown, "w", encoding="utf-8") as out:
            out.write(text + "\n")
    if json_path:
        write(json_path, benchmark, rows)


def read(path):
    """A document of the format, checked enough to name what is wrong with it."""
    with open(path, encoding="utf-8") as source:
        doc = json.load(source)
    if not isinstance(doc, dict) or not {"benchmark", "load", "rows"} <= set(doc):
        raise ValueError("%s: not a benchmark document (benchmark, load, rows)" % path)
    for entry in doc["rows"]:
        missing = {"what", "snaplab", "peer", "unit", "ratio", "goal", "better"} - set(entry)
        if missing:
            raise ValueError("%s: row %r lacks %s" % (path, entry.get("what"),
                                                      ", ".join(sorted(missing))))
    return doc


def medians(documents):
    """{benchmark: {what: {"ratio": median, "better": ..., "runs": n}}} over
    several runs' documents (rows without a ratio, and unchecked rows, are
    left out)."""
    ratios = {}
    for doc in documents:
        for entry in doc["rows"]:
            if entry["ratio"] is None or entry.get("unchecked"):
                continue
            key = (doc["benchmark"], entry["what"])
            ratios.setdefault(key, (entry["better"], []))[1].append(entry["ratio"])
    found = {}
    for (benchmark, what), (better, values) in ratios.items():
        found.setdefault(benchmark, {})[what] = {
            "ratio": statistics.median(values), "better": better, "runs": len(values),
            "worst": max(values) if better == "lower" else min(values)}
    return found


def spread(entry):
    """How much worse than the median the worst run was (0.5: 50 % worse)."""
    if entry["better"] == "lower":
        return entry["worst"] / entry["ratio"] - 1 if entry["ratio"] else 0.0
    return entry["ratio"] / entry["worst"] - 1 if entry["worst"] else 0.0


def default_tolerance(what, tolerance=DEFAULT_TOLERANCE, p99_tolerance=DEFAULT_P99_TOLERANCE):
    """A p99 row (its name says "p99") gets the wider tolerance."""
    return p99_tolerance if "p99" in what else tolerance


def baseline(found, note, loads, tolerance=DEFAULT_TOLERANCE,
             p99_tolerance=DEFAULT_P99_TOLERANCE):
    """A baseline document from medians(): the ratios and each row's tolerance:
    the default, or the spread its runs showed where that is wider (a row
    that varies that much between runs of the same code cannot tell a
    smaller regression from noise; on a quiet machine the defaults win)."""
    def row_tolerance(what, entry):
        return round(max(default_tolerance(what, tolerance, p99_tolerance), spread(entry)), 2)
    return {"note": note, "loads": [[round(x, 2) for x in load] for load in loads],
            "benchmarks": {
                benchmark: {what: {"ratio": round(entry["ratio"], 4), "better": entry["better"],
                                   "tolerance": row_tolerance(what, entry)}
                            for what, entry in sorted(rows.items())}
                for benchmark, rows in sorted(found.items())}}


def read_baseline(path):
    with open(path, encoding="utf-8") as source:
        base = json.load(source)
    for benchmark, rows in base["benchmarks"].items():
        for what, expected in rows.items():
            if expected.get("better") not in BETTER or not isinstance(
                    expected.get("ratio"), (int, float)):
                raise ValueError("%s: %s: %r needs a ratio and better (%s)"
                                 % (path, benchmark, what, "/".join(BETTER)))
    return base


def write_baseline(path, base):
    text = json.dumps(base, indent=2, ensure_ascii=False)
    # One line per load average triple: the file is read in diffs.
    text = re.sub(r"\[\s+([0-9.]+),\s+([0-9.]+),\s+([0-9.]+)\s+\]", r"[\1, \2, \3]", text)
    with open(path, "w", encoding="utf-8") as out:
        out.write(text + "\n")


def compare(base, found, benchmarks=None):
    """Findings of medians() against a baseline document, one per baseline row
    of the benchmarks that ran (`benchmarks`: those names; default: all in
    `found`), and one per row or benchmark the baseline lacks: dicts with
    benchmark, what, baseline, median, limit and verdict ("ok", "improved",
    "regressed", "missing", "new" or "unbaselined")."""
    ran = set(found) if benchmarks is None else set(benchmarks)
    findings = [{"benchmark": benchmark, "what": "(every row)", "baseline": None, "median": None,
                 "limit": None, "better": None, "verdict": "unbaselined"}
                for benchmark in sorted(ran - set(base["benchmarks"]))]
    for benchmark, rows in sorted(base["benchmarks"].items()):
        if benchmark not in ran:
            continue
        for what in sorted(set(found.get(benchmark, {})) - set(rows)):
            findings.append({"benchmark": benchmark, "what": what, "baseline": None,
                             "median": found[benchmark][what]["ratio"], "limit": None,
                             "better": found[benchmark][what]["better"], "verdict": "new"})
        for what, expected in sorted(rows.items()):
            measured = found.get(benchmark, {}).get(what)
            tolerance = expected.get("tolerance", default_tolerance(what))
            if expected["better"] == "lower":
                limit = expected["ratio"] * (1 + tolerance)
            else:
                limit = expected["ratio"] / (1 + tolerance)
            finding = {"benchmark": benchmark, "what": what, "baseline": expected["ratio"],
                       "median": None, "limit": limit, "better": expected["better"]}
            if measured is None:
                finding["verdict"] = "missing"
            else:
                median = finding["median"] = measured["ratio"]
                worse = median > limit if expected["better"] == "lower" else median < limit
                better = (median < expected["ratio"] if expected["better"] == "lower"
                          else median > expected["ratio"])
                finding["verdict"] = "regressed" if worse else "improved" if better else "ok"
            findings.append(finding)
    return findings


def failures(findings):
    """Regressed rows, rows the baseline has and no run produced, and
    benchmarks the baseline has no rows of (a new row of a known benchmark
    only is listed: --write-baseline takes it in)."""
    return [f for f in findings if f["verdict"] in ("regressed", "missing", "unbaselined")]


def describe(finding):
    """One line per finding, naming the row."""
    if finding["verdict"] == "unbaselined":
        return "UNBASELINED %s: the baseline has no rows of it (write them with " \
            "--only %s --write-baseline NOTE)" % (finding["benchmark"], finding["benchmark"])
    if finding["verdict"] == "new":
        return "NEW       %s: %s: median %.3f, not in the baseline" % (
            finding["benchmark"], finding["what"], finding["median"])
    if finding["verdict"] == "missing":
        return "MISSING   %s: %s (baseline %.3f): no run produced this row" % (
            finding["benchmark"], finding["what"], finding["baseline"])
    return "%-9s %s: %s: median %.3f, baseline %.3f, limit %.3f (%s is better)" % (
        finding["verdict"].upper(), finding["benchmark"], finding["what"], finding["median"],
        finding["baseline"], finding["limit"], finding["better"])
