"""Merge conformance result files into one matrix a person reads at a glance.

    python3 -m conformance.report [--markdown OUT.md] [--html OUT.html]
                                  [--known-failures FILE]
                                  [--history FILE [--history-keep K]] RESULT.json...

Rows are backends, columns filesystems; when the runs come from more than one
distro/kernel every column is "filesystem @ distro/kernel".  Each cell counts
pass / fail / skip / xfail / xpass; under the table every unexpected failure is
listed as ``target :: case — reason`` and skip reasons are grouped with a count.
The Markdown matrix is always printed to stdout.

Known failures (optional, ``--known-failures FILE``) are entries with a
"case", a "cell", a "reason" and an optional "link".  The cell is
"TARGET" or "TARGET @ WHERE": TARGET is the target's name (overlay-on-xfs),
WHERE the run's label, kernel or distro (bookworm, 6.1.0-*); both and the case
may be fnmatch globs (no "@ WHERE": every run).  The file is YAML (.yml/.yaml:
a list of entries, or {known_failures: [...]}), JSON (the same), or one entry
a line, "#" starts a comment::

    overlay-on-xfs @ bookworm :: remove_fails_while_children_exist | reason | https://link

("target" is accepted in place of "cell", as in older files.)  A matching
failure counts as an expected failure (not red); a matching case that passes is
"unexpectedly passing"; an entry that matched no failure at all is listed as
stale (it passes now, was skipped, or is not among these results), so that the
list does not outlive the bugs in it. An entry with "sometimes: true" (YAML or
JSON) is for a case that fails only when something lands just so, such as
where a kill falls: a pass there is a plain pass, and the entry never stale.

Repeats and flakiness: when a case ran several times in a cell (the suite's
--repeat, or several result files of the same target and run label), the
cell counts every run. A case that passed in some runs and failed in others
is *flaky*: its failed runs count as "flaky", not "fail", and it is listed
under "Flaky cases" with its pass rate (passes/runs), not among the failures;
it does not make the exit status nonzero. A case that failed in every run is
a failure as before, known or unexpected.

History (``--history FILE``, conformance/history.py; a missing FILE starts
empty): per cell (target @ run label), each case's outcome in the last K
reports (``--history-keep K``, default 10), rewritten atomically after the
report. With it, a case failing unexpectedly in every run now that passed in
every run of each earlier report that ran it is a *regression*: listed first,
red, exit status 1. A case that passed and failed across this report and the
history is flaky, with its pass rate over all of them (9/10). A known failure
(--known-failures) is never a regression: it is expected to fail.

Exit status: 0 when no unexpected failure or regression, 1 when there is one,
2 for bad input (a bad history file too: it is then left as it is).
"""

import argparse
import fnmatch
import html
import json
import sys

from . import history as historylib
from .resultlog import REFUSAL_SKIP

FORMAT = "snaplab-conformance/1"
OUTCOMES = ("passed", "failed", "skipped", "error", "xfailed", "xpassed")
RESULT_KEYS = ("target", "backend", "filesystem", "case", "nodeid", "outcome", "duration", "reason",
               "traits")
# Cell counters, in the order they are shown.  "fail" holds only *unexpected*
# failures and errors; known failures and pytest xfails are "xfail"; the
# failed runs of a case that also passed are "flaky".
COUNTS = ("pass", "fail", "flaky", "skip", "xfail", "xpass")
NOT_RUN = "—"
MARK = {"red": "❌", "yellow": "🟡", "green": "✅", "grey": "⚪"}
# What each status is for the history and the pass rates: a run that passed,
# one that failed (expected or not), or one that did not run.
CLASS_OF_STATUS = {"pass": "pass", "xpass": "pass", "fail": "fail", "xfail": "fail",
                   "skip": "skip"}


class InputError(Exception):
    """A result or known-failures file that cannot be used; main() exits 2."""


# ---------------------------------------------------------------- loading

def read_text(path):
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except OSError as e:
        raise InputError("cannot read %s: %s" % (path, e.strerror or e))
    except UnicodeDecodeError:
        raise InputError("%s: not UTF-8 text" % path)


def read_json(path, text=None):
    text = read_text(path) if text is None else text
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise InputError("%s: invalid JSON (line %d, column %d: %s)" % (path, e.lineno, e.colno, e.msg))


def load_results(paths):
    """Read result files; return a list of runs {"source", "run", "results"}.

    Raises InputError naming the file and the problem."""
    runs = []
    for path in paths:
        data = read_json(path)
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            found = data.get("format") if isinstance(data, dict) else type(data).__name__
            raise InputError("%s: not a %s result file (format: %r)" % (path, FORMAT, found))
        run = data.get("run")
        results = data.get("results")
        if not isinstance(run, dict) or not isinstance(results, list):
            raise InputError('%s: needs a "run" object and a "results" list' % path)
        clean = []
        for i, r in enumerate(results):
            if not isinstance(r, dict):
                raise InputError("%s: results[%d] is not an object" % (path, i))
            if r.get("outcome") not in OUTCOMES:
                raise InputError("%s: results[%d] has outcome %r, expected one of %s"
                                 % (path, i, r.get("outcome"), ", ".join(OUTCOMES)))
            if not r.get("case") and not r.get("nodeid"):
                raise InputError("%s: results[%d] names no case" % (path, i))
            item = {k: r.get(k) or "" for k in RESULT_KEYS}
            item["case"] = item["case"] or item["nodeid"]
            try:
                item["duration"] = float(r.get("duration") or 0.0)
            except (TypeError, ValueError):
                raise InputError("%s: results[%d] has a non-numeric duration" % (path, i))
            for k in ("target", "backend", "filesystem", "case", "nodeid", "reason", "traits"):
                item[k] = str(item[k])
            for k in ("run", "runs"):  # a repeated case's run (the suite's --repeat)
                try:
                    item[k] = int(r.get(k) or 1)
                except (TypeError, ValueError):
                    raise InputError("%s: results[%d] has a non-numeric %s" % (path, i, k))
            clean.append(item)
        info = {k: str(run.get(k) or "") for k in
                ("started", "finished", "hostname", "kernel", "distro", "python", "label")}
        runs.append({"source": str(path), "run": info, "results": clean})
    return runs


KNOWN_KEYS = ("case", "cell", "target", "reason", "link", "sometimes")


def known(case, cell, reason, link, where, sometimes=False):
    """One normalized entry; `where` names it in errors. `sometimes`: the
    case fails only when something lands just so (where a kill falls), so
    a pass is no news: not an unexpected pass, not a stale entry."""
    target, sep, env = cell.partition("@")
    if sep and not env.strip():
        raise InputError("%s: cell %r has nothing after '@'" % (where, cell))
    target, env = target.strip() or "*", env.strip() or "*"
    return {"case": case.strip(), "cell": cell.strip() or "*", "target": target, "where": env,
            "reason": reason.strip(), "link": link.strip(), "sometimes": sometimes}


def parse_known_line(line, where):
    head, _pipe, rest = line.partition("|")
    cell, sep, case = head.partition("::")
    if not sep or not case.strip():
        raise InputError("%s: expected 'cell-glob :: case | reason | link'" % where)
    reason, _pipe, link = rest.partition("|")
    return known(case, cell, reason, link, where)


def parse_yaml(path, text):
    try:
        import yaml  # PyYAML (requirements.txt); only the report on the controller needs it
    except ImportError:
        raise InputError("%s: reading YAML needs PyYAML (pip install -r requirements.txt)" % path)
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise InputError("%s: invalid YAML (%s)" % (path, " ".join(str(e).split())))


def load_known_failures(path):
    """Read a known-failures file (YAML, JSON or line format, see module doc)."""
    text = read_text(path)
    if path.endswith((".yml", ".yaml")) or text.lstrip()[:1] in ("[", "{"):
        data = parse_yaml(path, text) if path.endswith((".yml", ".yaml")) else read_json(path, text)
        if isinstance(data, dict) and "known_failures" in data:
            data = data["known_failures"]
        if data is None:
            data = []  # an empty file or list: nothing is known to fail
        if not isinstance(data, list):
            raise InputError('%s: expected a list of entries or {"known_failures": [...]}' % path)
        entries = []
        for i, e in enumerate(data):
            where = "%s: entry %d" % (path, i)
            if not isinstance(e, dict) or not isinstance(e.get("case"), str) or not e["case"]:
                raise InputError('%s needs a "case" string' % where)
            unknown = sorted(set(e) - set(KNOWN_KEYS))
            if unknown:
                raise InputError("%s (%s): unknown keys %s (known: %s)"
                                 % (where, e["case"], ", ".join(map(str, unknown)), ", ".join(KNOWN_KEYS)))
            if "cell" in e and "target" in e:
                raise InputError('%s (%s): "cell" or "target", not both' % (where, e["case"]))
            if not isinstance(e.get("reason"), str) or not e["reason"].strip():
                raise InputError('%s (%s) needs a "reason": a known failure says why'
                                 % (where, e["case"]))
            cell = e.get("cell", e.get("target")) or "*"
            if not isinstance(cell, str) or not isinstance(e.get("link") or "", str):
                raise InputError('%s (%s): "cell" and "link" are strings' % (where, e["case"]))
            if not isinstance(e.get("sometimes", False), bool):
                raise InputError('%s (%s): "sometimes" is true or false' % (where, e["case"]))
            entries.append(known(e["case"], cell, e["reason"], e.get("link") or "", where,
                                 e.get("sometimes", False)))
    else:
        entries = []
        for n, line in enumerate(text.splitlines(), 1):
            line = line.strip()
            if line and not line.startswith("#"):
                entries.append(parse_known_line(line, "%s:%d" % (path, n)))
    return entries


def matches(pattern, value):
    # Exact first: case names with [params] would read as fnmatch character sets.
    return value == pattern or fnmatch.fnmatchcase(value, pattern)


def concerns(entry, run):
    """Whether `entry`'s WHERE names `run` (its "run" info: label, kernel, distro)."""
    places = [v for v in ((run or {}).get(k) for k in ("label", "kernel", "distro")) if v]
    return entry.get("where", "*") == "*" or any(matches(entry["where"], p) for p in places)


def known_entry(result, known_failures, run=None):
    """The first entry that covers `result` of `run` (its "run" info), or None."""
    for entry in known_failures:
        if matches(entry["case"], result["case"]) and matches(entry["target"], result["target"]) \
                and concerns(entry, run):
            return entry
    return None


def stale_entries(known_failures, items, runs=None):
    """Entries that covered no failure in `items` (every result with its
    "known" entry and "status"), each with what its results did instead.
    An entry for runs that are not among `runs` (another release) is not
    stale: nothing here says whether it still fails."""
    seen = {}
    for item in items:
        if item["known"] is not None:
            seen.setdefault(id(item["known"]), []).append(item["status"])
    stale = []
    for entry in known_failures:
        statuses = seen.get(id(entry), [])
        if "xfail" in statuses or entry["sometimes"]:
            continue
        if "xpass" in statuses:
            now = "passes now (%d result%s)" % (statuses.count("xpass"), "" if statuses.count("xpass") == 1 else "s")
        elif statuses:
            now = "skipped (%d result%s)" % (len(statuses), "" if len(statuses) == 1 else "s")
        elif runs is not None and not any(concerns(entry, run["run"]) for run in runs):
            continue
        else:
            now = "not among these results"
        stale.append(dict(entry, now=now))
    return stale


# ---------------------------------------------------------------- the matrix

def status_of(result, entry):
    """Map a pytest outcome and a known-failure match to a cell counter."""
    outcome = result["outcome"]
    if outcome in ("failed", "error"):
        return "xfail" if entry else "fail"
    if entry and entry["sometimes"] and outcome in ("passed", "xpassed"):
        return "pass"
    if outcome == "passed":
        return "xpass" if entry else "pass"
    if outcome == "skipped":
        return "skip"
    return {"xfailed": "xfail", "xpassed": "xpass"}[outcome]


def build_matrix(results, known_failures=(), history=None):
    """Merge runs (from load_results) into a matrix dict the renderers draw;
    `history` (load_history's) tells regressions and flaky cases over time.

    Keys: runs, rows, columns, cells[(row, column)] (absent = not run),
    regressions, failures, flaky, expected, unexpected_passes, skips, stale,
    unexpected_failures, history_entries ({cell: this report's entry})."""
    runs = list(results)
    known_failures = list(known_failures or ())
    environments = {(r["run"]["distro"], r["run"]["kernel"]) for r in runs}
    qualify = len(environments) > 1  # only then does the kernel/distro need saying

    every = []
    traits = {}  # row -> the traits its results were checked against
    for run in runs:
        info = run["run"]
        env = "%s/%s" % (info["distro"] or "?", info["kernel"] or "?")
        for result in run["results"]:
            row = result["backend"] or result["target"] or "(no target)"
            column = result["filesystem"] or "(no filesystem)"
            if qualify:
                column = "%s @ %s" % (column, env)
            if result["traits"]:
                traits.setdefault(row, set()).add(result["traits"])
            entry = known_entry(result, known_failures, info)
            every.append(dict(result, status=status_of(result, entry), column=column, row=row,
                              env=env, known=entry, source=run["source"],
                              cell=historylib.cell_key(result["target"] or row,
                                                       info["label"] or env),
                              label=info["label"], kernel=info["kernel"],
                              when=info["finished"] or info["started"],
                              run_id="%s %s" % (info["hostname"], info["started"])))
    # Stale: what the known failures' own cases did, before the runs of a
    # flaky case are counted as flaky.
    stale = stale_entries(known_failures, every, runs)
    regressions, flaky, history_entries = judge_over_time(every, history)

    cells, lists = {}, {status: [] for status in COUNTS}
    for item in every:
        cell = cells.setdefault((item["row"], item["column"]),
                                {"counts": dict.fromkeys(COUNTS, 0), "results": []})
        cell["counts"][item["status"]] += 1
        cell["results"].append(item)
        lists[item["status"]].append(item)
    for cell in cells.values():
        c = cell["counts"]
        cell["refused"] = refusal_of(cell)
        # A refusal the suite expects is not a failure, but nothing ran there.
        cell["color"] = ("red" if c["fail"] else "yellow" if c["flaky"] else
                         "grey" if cell["refused"] else
                         "green" if c["pass"] + c["xpass"] else "grey")
        cell["results"].sort(key=lambda i: (i["target"], i["case"], i["run"]))

    def order(i):
        return (i["row"], i["column"], i["target"], i["case"])

    regressed = {(i["cell"], i["case"]) for i in regressions}
    failures = once_per_case(i for i in lists["fail"] if (i["cell"], i["case"]) not in regressed)
    skips = {}
    for item in lists["skip"]:
        skips.setdefault(item["reason"] or "(no reason given)", []).append(item)
    return {
        "runs": runs,
        "qualified": qualify,
        "rows": sorted({row for row, _column in cells}),
        "columns": sorted({column for _row, column in cells}),
        "cells": cells,
        "regressions": sorted(regressions, key=order),
        "failures": sorted(failures, key=order),
        "flaky": sorted(flaky, key=order),
        "expected": sorted(once_per_case(lists["xfail"]), key=order),
        "unexpected_passes": sorted(once_per_case(lists["xpass"]), key=order),
        # Most frequent reason first: that is usually the one to fix in the lab.
        "skips": sorted(((reason, sorted(items, key=order)) for reason, items in skips.items()),
                        key=lambda s: (-len(s[1]), s[0])),
        "stale": stale,
        "traits": {row: "; ".join(sorted(texts)) for row, texts in sorted(traits.items())},
        "unexpected_failures": len(failures) + len(regressions),
        "repeats": max([i["runs"] for i in every] or [1]),
        "history_entries": history_entries,
        "with_history": bool(history and history["cells"]),
    }


def once_per_case(items):
    """The first result of each case of a cell, with how many runs it
    stands for (`times`): a case that failed in each of 3 runs is one line."""
    first = {}
    for item in items:
        key = (item["cell"], item["column"], item["case"])
        if key in first:
            first[key]["times"] += 1
        else:
            first[key] = dict(item, times=1)
    return list(first.values())


def judge_over_time(every, history=None):
    """Group the results by cell (target @ run label) and case, and judge
    each case over its runs here and in `history`'s earlier reports:
    returns (regressions, flaky, this report's history entries). The runs
    of a flaky case change status in place: a failed one is "flaky", a
    pass of a known failure a plain "pass" (it is listed as flaky)."""
    history = history or historylib.empty()
    regressions, flaky, entries = [], [], {}
    by_cell = {}
    for item in every:
        by_cell.setdefault(item["cell"], {}).setdefault(item["case"], []).append(item)
    for cell, cases in sorted(by_cell.items()):
        items = [i for case_items in cases.values() for i in case_items]
        run_ids = sorted({i["run_id"] for i in items})
        before = historylib.earlier(history, cell, run_ids)
        entry = entries[cell] = {
            "when": max(i["when"] for i in items), "label": items[0]["label"],
            "kernel": ", ".join(sorted({i["kernel"] for i in items if i["kernel"]})),
            "runs": run_ids, "cases": {}}
        for case, case_items in sorted(cases.items()):
            now = {outcome_class: 0 for outcome_class in historylib.CLASSES}
            for item in case_items:
                now[CLASS_OF_STATUS[item["status"]]] += 1
            entry["cases"][case] = now
            earlier = [(e, e["cases"][case]) for e in before if case in e["cases"]]
            kind, passes, total = historylib.verdict(now, [counts for _e, counts in earlier])
            failed = [i for i in case_items if CLASS_OF_STATUS[i["status"]] == "fail"]
            if kind == "regression":
                if all(i["status"] == "fail" for i in failed):  # a known failure is expected
                    last = [e for e, counts in earlier if counts.get("pass")][-1]
                    regressions.append(dict(failed[0], times=len(failed), before=(
                        "passed in every run of %d earlier report(s), last %s%s" % (
                            sum(1 for _e, counts in earlier if counts.get("pass")),
                            last.get("when", "?"), " on " + last["kernel"]
                            if last.get("kernel") else ""))))
                continue
            if kind != "flaky":
                continue
            ran_now = now["pass"] + now["fail"]
            flaky.append(dict(
                case_items[0], passes=passes, total=total,
                now="%d/%d" % (now["pass"], ran_now),
                earlier="%d/%d" % (passes - now["pass"], total - ran_now) if total > ran_now
                else "", reason=failed[0]["reason"] if failed else "",
                known=next((i["known"] for i in case_items if i["known"]), None)))
            for item in case_items:
                if item["status"] in ("fail", "xfail"):
                    item["status"] = "flaky"
                elif item["status"] == "xpass":
                    item["status"] = "pass"
    return regressions, flaky, entries


def load_history(path):
    """The history file's (conformance/history.py) contents; none yet: empty."""
    try:
        return historylib.load(path)
    except historylib.HistoryError as e:
        raise InputError(str(e)) from None


def save_history(path, history, matrix, keep=historylib.DEFAULT_KEEP):
    """Add this report's entries (`matrix`'s) to `history`, keep the last
    `keep` a cell, and rewrite `path`."""
    try:
        historylib.save(path, historylib.updated(history, matrix["history_entries"], keep))
    except historylib.HistoryError as e:
        raise InputError(str(e)) from None


def refusal_of(cell):
    """The short reason when the backend refused this filesystem (as the
    suite expects: every skip of the cell is that refusal), else None."""
    reasons = {i["reason"] for i in cell["results"] if i["status"] == "skip"}
    if cell["counts"]["fail"] or len(reasons) != 1:
        return None
    found = REFUSAL_SKIP.match(reasons.pop() or "")
    return found.group(2) if found else None


def cell_text(cell):
    c = cell["counts"]
    # "pass" always shows so a cell never reads empty; the rest only when non-zero.
    parts = ["%d pass" % c["pass"]] + ["%d %s" % (c[k], k) for k in COUNTS[1:] if c[k]]
    if cell.get("refused"):
        # The refusal itself passed; the rest could not run there.
        parts.insert(0, "refuses (%s)" % cell["refused"])
    return " · ".join(parts)


def sentence(item):
    """`target :: case`, the way a test reads in the report."""
    return "%s :: %s" % (item["target"] or item["row"], item["case"])


def failure_text(item):
    text = item["reason"] or "(no message)"
    # An error broke the harness (setup, teardown, collection), not the case itself.
    if item["outcome"] == "error" and not text.startswith(("error", "collection")):
        text = "error: " + text
    return text


def times(item):
    """How many runs a listed result stands for, when more than one."""
    return " (%d runs)" % item["times"] if item.get("times", 1) > 1 else ""


def flaky_why(item):
    """What a flaky case's line says beside its rates."""
    text = item["reason"] or "(failed in an earlier report)"
    return text + ("; known: " + entry_why(item["known"]) if item["known"] else "")


def run_of(item):
    return " (run %d/%d)" % (item["run"], item["runs"]) if item["runs"] > 1 else ""


FLAKY_INTRO = ("Passed in some runs and failed in others (this report's runs%s): not counted "
               "as failures. pass rate = passed runs / runs that passed or failed.")


def entry_why(entry):
    return (entry["reason"] or "listed as a known failure") + (
        " (%s)" % entry["link"] if entry["link"] else "")


def why(item):
    """Reason of an expected failure or unexpected pass."""
    entry = item["known"]
    if entry:
        return entry_why(entry)
    return item["reason"] or "marked xfail"


# ---------------------------------------------------------------- Markdown

def md(text):
    # Keep every reason on one line and out of the table's column syntax.
    return " ".join(str(text).split()).replace("|", "\\|")


def render_markdown(matrix):
    out = ["# snaplab conformance report", ""]
    runs = matrix["runs"]
    out.append("%d run(s), %d result(s)%s." % (
        len(runs), sum(len(r["results"]) for r in runs),
        "; each case ran up to %d times" % matrix["repeats"] if matrix["repeats"] > 1 else ""))
    out.append("")
    if runs:
        out += ["| run | host | distro | kernel | started | label |", "|---|---|---|---|---|---|"]
        for r in runs:
            info = r["run"]
            out.append("| %s |" % " | ".join(md(v) for v in (
                r["source"], info["hostname"], info["distro"], info["kernel"],
                info["started"], info["label"])))
        out.append("")

    if matrix["rows"]:
        out.append("| backend \\ filesystem | %s |" % " | ".join(md(c) for c in matrix["columns"]))
        out.append("|---|%s" % ("---|" * len(matrix["columns"])))
        for row in matrix["rows"]:
            texts = []
            for column in matrix["columns"]:
                cell = matrix["cells"].get((row, column))
                texts.append("%s %s" % (MARK[cell["color"]], cell_text(cell)) if cell else NOT_RUN)
            out.append("| %s | %s |" % (md(row), " | ".join(texts)))
        out.append("")
        out.append("fail = unexpected failures and errors; flaky = failed runs of a case that "
                   "also passed; xfail = expected failures; xpass = unexpectedly passing; "
                   "%s = not run." % NOT_RUN)
    else:
        out.append("No results.")
    out.append("")

    def env(item):
        return " _(%s)_" % md(item["env"]) if matrix["qualified"] else ""

    def section(title, items, line):
        if items:
            out.append("## %s (%d)" % (title, len(items)))
            out.append("")
            out.extend(line(i) for i in items)
            out.append("")

    section("%s Regressions" % MARK["red"], matrix["regressions"],
            lambda i: "- %s %s — %s%s; %s%s" % (
                MARK["red"], md(sentence(i)), md(failure_text(i)), times(i), md(i["before"]),
                env(i)))
    section("Failures", matrix["failures"],
            lambda i: "- %s — %s%s%s" % (md(sentence(i)), md(failure_text(i)), times(i), env(i)))
    if matrix["flaky"]:
        out += ["## Flaky cases (%d)" % len(matrix["flaky"]), "",
                FLAKY_INTRO % (" and the history's" if matrix.get("with_history") else ""), "",
                "| cell | case | pass rate | this report | earlier reports | a failure |",
                "|---|---|---|---|---|---|"]
        out.extend("| %s | %s | %d/%d | %s | %s | %s |" % (
            md(i["cell"]), md(i["case"]), i["passes"], i["total"], i["now"],
            i["earlier"] or NOT_RUN, md(flaky_why(i))) for i in matrix["flaky"])
        out.append("")
    elif matrix["repeats"] > 1 or matrix.get("with_history"):
        # Said, not left out: with repeats (or a history) "no flaky case" is a finding.
        out += ["## Flaky cases (0)", "",
                "No case both passed and failed across %s: each passed in every run or failed "
                "in every run." % ("this report's runs and the history's" if matrix.get("with_history")
                                   else "this report's %d runs" % matrix["repeats"]), ""]
    section("Unexpectedly passing", matrix["unexpected_passes"],
            lambda i: "- %s — was expected to fail: %s%s" % (md(sentence(i)), md(why(i)), env(i)))
    section("Expected failures", matrix["expected"],
            lambda i: "- %s — %s%s%s" % (md(sentence(i)), md(why(i)), times(i), env(i)))
    section("Known failures that did not fail (stale entries)", matrix["stale"],
            lambda e: "- %s :: %s — %s; listed because: %s" % (
                md(e["cell"]), md(e["case"]), md(e["now"]), md(entry_why(e))))
    if matrix["traits"]:
        out.append("## Traits of each row")
        out.append("")
        out.extend("- %s — %s" % (md(row), md(text)) for row, text in matrix["traits"].items())
        out.append("")
    if matrix["skips"]:
        out.append("## Skipped (%d)" % sum(len(items) for _reason, items in matrix["skips"]))
        out.append("")
        for reason, items in matrix["skips"]:
            targets = sorted({i["target"] or i["row"] for i in items})
            out.append("- %d × %s — %s" % (len(items), md(reason), md(", ".join(targets))))
        out.append("")
    return "\n".join(out)


# ---------------------------------------------------------------- HTML

CSS = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { border: 1px solid #bbb; padding: .35em .7em; text-align: left; vertical-align: top; }
th { background: #eee; }
td.green { background: #d4f4d4; } td.red { background: #f8c8c8; }
td.yellow { background: #fbf0b8; } td.grey { background: #e4e4e4; } td.notrun { color: #888; text-align: center; }
td a { color: inherit; }
.status-fail { color: #a00; font-weight: bold; } .status-xpass { color: #a60; font-weight: bold; }
.status-flaky { color: #a60; } .regression { color: #a00; }
.status-pass { color: #070; } .status-skip, .status-xfail { color: #666; }
details { margin: .4em 0; } summary { cursor: pointer; font-weight: bold; }
.small { font-size: 90%; color: #555; }
"""


def cell_id(matrix, row, column):
    # Positions, not names: names may hold any character and must not collide.
    return "cell-%d-%d" % (matrix["rows"].index(row), matrix["columns"].index(column))


def render_html(matrix):
    e = html.escape
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           "<title>snaplab conformance report</title>", "<style>%s</style>" % CSS,
           "</head><body>", "<h1>snaplab conformance report</h1>"]
    runs = matrix["runs"]
    if runs:
        out.append("<table><tr><th>run</th><th>host</th><th>distro</th><th>kernel</th>"
                   "<th>started</th><th>label</th><th>results</th></tr>")
        for r in runs:
            info = r["run"]
            out.append("<tr>%s</tr>" % "".join("<td>%s</td>" % e(str(v)) for v in (
                r["source"], info["hostname"], info["distro"], info["kernel"],
                info["started"], info["label"], len(r["results"]))))
        out.append("</table>")

    if matrix["rows"]:
        out.append("<table><tr><th>backend \\ filesystem</th>%s</tr>"
                   % "".join("<th>%s</th>" % e(c) for c in matrix["columns"]))
        for row in matrix["rows"]:
            tds = []
            for column in matrix["columns"]:
                cell = matrix["cells"].get((row, column))
                if cell:
                    tds.append('<td class="%s"><a href="#%s">%s</a></td>'
                               % (cell["color"], cell_id(matrix, row, column), e(cell_text(cell))))
                else:
                    tds.append('<td class="notrun" title="not run">%s</td>' % NOT_RUN)
            out.append("<tr><th>%s</th>%s</tr>" % (e(row), "".join(tds)))
        out.append("</table>")
        out.append('<p class="small">fail = unexpected failures and errors; flaky = failed '
                   "runs of a case that also passed; xfail = expected failures; xpass = "
                   "unexpectedly passing; %s = not run.</p>" % NOT_RUN)
    else:
        out.append("<p>No results.</p>")

    def item_list(title, items, text, css=""):
        if items:
            out.append("<h2%s>%s (%d)</h2><ul%s>" % (css, e(title), len(items), css))
            for i in items:
                where = " <span class='small'>(%s)</span>" % e(i["env"]) if matrix["qualified"] else ""
                out.append("<li><b>%s</b> — %s%s</li>" % (e(sentence(i)), e(text(i)), where))
            out.append("</ul>")

    item_list("Regressions", matrix["regressions"],
              lambda i: "%s%s; %s" % (failure_text(i), times(i), i["before"]),
              css=' class="regression"')
    item_list("Failures", matrix["failures"], lambda i: failure_text(i) + times(i))
    if matrix["flaky"]:
        out.append("<h2>Flaky cases (%d)</h2><p class='small'>%s</p>" % (
            len(matrix["flaky"]), e(FLAKY_INTRO % (" and the history's"
                                                   if matrix.get("with_history") else ""))))
        out.append("<table><tr><th>cell</th><th>case</th><th>pass rate</th><th>this report</th>"
                   "<th>earlier reports</th><th>a failure</th></tr>")
        out.extend("<tr><td>%s</td><td>%s</td><td>%d/%d</td><td>%s</td><td>%s</td><td>%s</td>"
                   "</tr>" % (e(i["cell"]), e(i["case"]), i["passes"], i["total"], e(i["now"]),
                              e(i["earlier"] or NOT_RUN), e(flaky_why(i)))
                   for i in matrix["flaky"])
        out.append("</table>")
    item_list("Unexpectedly passing", matrix["unexpected_passes"],
              lambda i: "was expected to fail: " + why(i))
    item_list("Expected failures", matrix["expected"], why)
    if matrix["stale"]:
        out.append("<h2>Known failures that did not fail (stale entries) (%d)</h2><ul>" % len(matrix["stale"]))
        for entry in matrix["stale"]:
            out.append("<li><b>%s :: %s</b> — %s; listed because: %s</li>" % (
                e(entry["cell"]), e(entry["case"]), e(entry["now"]), e(entry_why(entry))))
        out.append("</ul>")
    if matrix["traits"]:
        out.append("<h2>Traits of each row</h2><ul>")
        out.extend("<li><b>%s</b> — %s</li>" % (e(row), e(text))
                   for row, text in matrix["traits"].items())
        out.append("</ul>")
    if matrix["skips"]:
        out.append("<h2>Skipped (%d)</h2><ul>" % sum(len(items) for _reason, items in matrix["skips"]))
        for reason, items in matrix["skips"]:
            targets = sorted({i["target"] or i["row"] for i in items})
            out.append("<li>%d × %s — <span class='small'>%s</span></li>"
                       % (len(items), e(reason), e(", ".join(targets))))
        out.append("</ul>")

    if matrix["cells"]:
        out.append("<h2>Details</h2>")
        for row in matrix["rows"]:
            for column in matrix["columns"]:
                cell = matrix["cells"].get((row, column))
                if not cell:
                    continue
                # Red cells open by default: that is what the reader came for.
                out.append('<details id="%s"%s><summary>%s × %s — %s</summary>' % (
                    cell_id(matrix, row, column), " open" if cell["color"] == "red" else "",
                    e(row), e(column), e(cell_text(cell))))
                out.append("<table><tr><th>test</th><th>status</th><th>outcome</th>"
                           "<th>duration</th><th>reason</th></tr>")
                for i in cell["results"]:
                    reason = why(i) if i["status"] in ("xfail", "xpass") else i["reason"]
                    out.append('<tr><td>%s</td><td class="status-%s">%s</td><td>%s</td>'
                               "<td>%.2fs</td><td>%s</td></tr>" % (
                                   e(sentence(i) + run_of(i)), i["status"], i["status"],
                                   e(i["outcome"]),
                                   i["duration"], e(reason)))
                out.append("</table></details>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------- command line

def write_text(path, text):
    try:
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
    except OSError as e:
        raise InputError("cannot write %s: %s" % (path, e.strerror or e))


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python3 -m conformance.report",
        description="Merge snaplab conformance result files into a backend x filesystem matrix.")
    parser.add_argument("results", nargs="+", metavar="RESULT.json")
    parser.add_argument("--markdown", metavar="OUT.md", help="also write the Markdown report here")
    parser.add_argument("--html", metavar="OUT.html", help="write a self-contained HTML report")
    parser.add_argument("--known-failures", metavar="FILE",
                        help="expected failures: YAML (.yml), JSON or line format (see above)")
    parser.add_argument("--history", metavar="FILE",
                        help="each cell's outcomes in earlier reports (JSON, made when missing, "
                             "rewritten with this report's): tells regressions and flaky cases")
    parser.add_argument("--history-keep", metavar="K", type=int, default=historylib.DEFAULT_KEEP,
                        help="reports the history keeps per cell (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.history_keep < 1:
        parser.error("--history-keep takes 1 or more")

    try:
        known = load_known_failures(args.known_failures) if args.known_failures else []
        history = load_history(args.history) if args.history else None
        matrix = build_matrix(load_results(args.results), known, history)
        markdown = render_markdown(matrix)
        if args.markdown:
            write_text(args.markdown, markdown)
        if args.html:
            write_text(args.html, render_html(matrix))
        if args.history:
            save_history(args.history, history, matrix, args.history_keep)
    except InputError as e:
        print("report: error: %s" % e, file=sys.stderr)
        return 2

    # A console that cannot show "—" or "✅" should degrade, not crash the report.
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(errors="replace")
    print(markdown)
    return 1 if matrix["unexpected_failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
