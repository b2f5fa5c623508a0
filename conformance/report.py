"""Merge conformance result files into one matrix a person reads at a glance.

    python3 -m conformance.report [--markdown OUT.md] [--html OUT.html]
                                  [--known-failures FILE] RESULT.json...

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

Exit status: 0 when no unexpected failure, 1 when there is one, 2 for bad input.
"""

import argparse
import fnmatch
import html
import json
import sys

from .resultlog import REFUSAL_SKIP

FORMAT = "snaplab-conformance/1"
OUTCOMES = ("passed", "failed", "skipped", "error", "xfailed", "xpassed")
RESULT_KEYS = ("target", "backend", "filesystem", "case", "nodeid", "outcome", "duration", "reason",
               "traits")
# Cell counters, in the order they are shown.  "fail" holds only *unexpected*
# failures and errors; known failures and pytest xfails are "xfail".
COUNTS = ("pass", "fail", "skip", "xfail", "xpass")
NOT_RUN = "—"
MARK = {"red": "❌", "green": "✅", "grey": "⚪"}


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


def build_matrix(results, known_failures=()):
    """Merge runs (from load_results) into a matrix dict the renderers draw.

    Keys: runs, rows, columns, cells[(row, column)] (absent = not run),
    failures, expected, unexpected_passes, skips, stale, unexpected_failures."""
    runs = list(results)
    known_failures = list(known_failures or ())
    environments = {(r["run"]["distro"], r["run"]["kernel"]) for r in runs}
    qualify = len(environments) > 1  # only then does the kernel/distro need saying

    cells, failures, expected, unexpected_passes, skips, every = {}, [], [], [], {}, []
    traits = {}  # row -> the traits its results were checked against
    for run in runs:
        env = "%s/%s" % (run["run"]["distro"] or "?", run["run"]["kernel"] or "?")
        for result in run["results"]:
            row = result["backend"] or result["target"] or "(no target)"
            column = result["filesystem"] or "(no filesystem)"
            if qualify:
                column = "%s @ %s" % (column, env)
            if result["traits"]:
                traits.setdefault(row, set()).add(result["traits"])
            entry = known_entry(result, known_failures, run["run"])
            status = status_of(result, entry)
            item = dict(result, status=status, column=column, row=row, env=env,
                        known=entry, source=run["source"])
            cell = cells.setdefault((row, column), {"counts": dict.fromkeys(COUNTS, 0), "results": []})
            cell["counts"][status] += 1
            cell["results"].append(item)
            every.append(item)
            if status == "fail":
                failures.append(item)
            elif status == "xfail":
                expected.append(item)
            elif status == "xpass":
                unexpected_passes.append(item)
            elif status == "skip":
                skips.setdefault(result["reason"] or "(no reason given)", []).append(item)

    for cell in cells.values():
        c = cell["counts"]
        cell["refused"] = refusal_of(cell)
        # A refusal the suite expects is not a failure, but nothing ran there.
        cell["color"] = ("red" if c["fail"] else "grey" if cell["refused"]
                         else "green" if c["pass"] + c["xpass"] else "grey")
        cell["results"].sort(key=lambda i: (i["target"], i["case"]))

    def order(i):
        return (i["row"], i["column"], i["target"], i["case"])

    return {
        "runs": runs,
        "qualified": qualify,
        "rows": sorted({row for row, _column in cells}),
        "columns": sorted({column for _row, column in cells}),
        "cells": cells,
        "failures": sorted(failures, key=order),
        "expected": sorted(expected, key=order),
        "unexpected_passes": sorted(unexpected_passes, key=order),
        # Most frequent reason first: that is usually the one to fix in the lab.
        "skips": sorted(((reason, sorted(items, key=order)) for reason, items in skips.items()),
                        key=lambda s: (-len(s[1]), s[0])),
        "stale": stale_entries(known_failures, every, runs),
        "traits": {row: "; ".join(sorted(texts)) for row, texts in sorted(traits.items())},
        "unexpected_failures": len(failures),
    }


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
    out.append("%d run(s), %d result(s)." % (len(runs), sum(len(r["results"]) for r in runs)))
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
        out.append("fail = unexpected failures and errors; xfail = expected failures; "
                   "xpass = unexpectedly passing; %s = not run." % NOT_RUN)
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

    section("Failures", matrix["failures"],
            lambda i: "- %s — %s%s" % (md(sentence(i)), md(failure_text(i)), env(i)))
    section("Unexpectedly passing", matrix["unexpected_passes"],
            lambda i: "- %s — was expected to fail: %s%s" % (md(sentence(i)), md(why(i)), env(i)))
    section("Expected failures", matrix["expected"],
            lambda i: "- %s — %s%s" % (md(sentence(i)), md(why(i)), env(i)))
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
td.grey { background: #e4e4e4; } td.notrun { color: #888; text-align: center; }
td a { color: inherit; }
.status-fail { color: #a00; font-weight: bold; } .status-xpass { color: #a60; font-weight: bold; }
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
        out.append('<p class="small">fail = unexpected failures and errors; xfail = expected '
                   "failures; xpass = unexpectedly passing; %s = not run.</p>" % NOT_RUN)
    else:
        out.append("<p>No results.</p>")

    def item_list(title, items, text):
        if items:
            out.append("<h2>%s (%d)</h2><ul>" % (e(title), len(items)))
            for i in items:
                where = " <span class='small'>(%s)</span>" % e(i["env"]) if matrix["qualified"] else ""
                out.append("<li><b>%s</b> — %s%s</li>" % (e(sentence(i)), e(text(i)), where))
            out.append("</ul>")

    item_list("Failures", matrix["failures"], failure_text)
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
                                   e(sentence(i)), i["status"], i["status"], e(i["outcome"]),
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
    args = parser.parse_args(argv)

    try:
        known = load_known_failures(args.known_failures) if args.known_failures else []
        matrix = build_matrix(load_results(args.results), known)
        markdown = render_markdown(matrix)
        if args.markdown:
            write_text(args.markdown, markdown)
        if args.html:
            write_text(args.html, render_html(matrix))
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
