"""The report's memory across reports: per cell, each case's outcome in the
last K reports, so that a case failing now can be told from one that used
to pass (a regression) and from one that fails only sometimes (flaky).

The file (``python3 -m conformance.report --history FILE``), oldest entry
first in each cell::

    {"format": "snaplab-history/1",
     "cells": {"overlay-on-xfs @ bookworm": [
        {"when": "2026-12-05T17:20:00Z", "label": "bookworm",
         "kernel": "6.1.0-18-amd64", "runs": ["node1 2026-12-05T17:00:00Z"],
         "cases": {"basic": {"pass": 3, "fail": 0, "skip": 0}, ...}}, ...]}}

A cell is a target and the run's label (the lab's release; SNAPLAB_RUN_LABEL),
not the kernel: a kernel update that breaks a case is what a regression is.
A run without a label is placed by its distro and kernel instead. Each entry says when, and on which kernel. A case
counts its runs: "pass" (passed or unexpectedly passed), "fail" (failed,
an error, or an expected failure) and "skip". "runs" names the result files'
runs (host and start) an entry was made from, so that reporting the same
results again replaces their entry instead of counting them twice.

Standard library only, as the rest of the report.
"""

import json
import os

FORMAT = "snaplab-history/1"
DEFAULT_KEEP = 10
CLASSES = ("pass", "fail", "skip")


class HistoryError(Exception):
    """A history file that cannot be used (the report exits 2 and leaves it as it is)."""


def cell_key(target, place):
    return "%s @ %s" % (target, place)


def empty():
    return {"format": FORMAT, "cells": {}}


def load(path):
    """The history in `path`; an empty one when there is no file yet."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        return empty()
    except OSError as e:
        raise HistoryError("cannot read %s: %s" % (path, e.strerror or e)) from None
    except UnicodeDecodeError:
        raise HistoryError("%s: not UTF-8 text" % path) from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise HistoryError("%s: invalid JSON (line %d, column %d: %s)"
                           % (path, e.lineno, e.colno, e.msg)) from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        found = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise HistoryError("%s: not a %s history file (format: %r)" % (path, FORMAT, found))
    cells = data.get("cells")
    if not isinstance(cells, dict):
        raise HistoryError('%s: needs a "cells" object' % path)
    for cell, entries in cells.items():
        if not isinstance(entries, list):
            raise HistoryError("%s: cell %r is not a list of entries" % (path, cell))
        for number, entry in enumerate(entries):
            _check_entry(entry, "%s: cell %r, entry %d" % (path, cell, number))
    return data


def _check_entry(entry, where):
    if not isinstance(entry, dict) or not isinstance(entry.get("cases"), dict):
        raise HistoryError('%s: needs a "cases" object' % where)
    if not isinstance(entry.get("runs", []), list):
        raise HistoryError('%s: "runs" is a list' % where)
    for case, counts in entry["cases"].items():
        if not isinstance(counts, dict) or not all(
                isinstance(counts.get(k, 0), int) and counts.get(k, 0) >= 0 for k in CLASSES):
            raise HistoryError("%s: case %r needs counts %s (numbers)"
                               % (where, case, ", ".join(CLASSES)))


def save(path, history):
    """Rewrite `path` atomically: a report killed while writing leaves the old file."""
    directory = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(directory, ".%s.tmp" % os.path.basename(path))
    try:
        os.makedirs(directory, exist_ok=True)
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(history, f, indent=1, sort_keys=True, ensure_ascii=False)
            f.write("\n")
        os.replace(tmp, path)
    except OSError as e:
        raise HistoryError("cannot write %s: %s" % (path, e.strerror or e)) from None


def earlier(history, cell, runs):
    """The cell's entries from other reports than the one of `runs` (the
    same results reported again are not an earlier report)."""
    return [e for e in history["cells"].get(cell, []) if sorted(e.get("runs", [])) != sorted(runs)]


def updated(history, entries, keep=DEFAULT_KEEP):
    """`history` with each cell's new entry ({cell: entry}) added, an entry
    of the same runs replaced, and only the last `keep` entries a cell."""
    if keep < 1:
        raise HistoryError("the history keeps at least one report per cell, not %d" % keep)
    cells = {cell: list(old) for cell, old in history["cells"].items()}
    for cell, entry in entries.items():
        cells[cell] = (earlier(history, cell, entry["runs"]) + [entry])[-keep:]
    return {"format": FORMAT, "cells": cells}


def verdict(now, before):
    """(kind, passes, runs) of one case: `now` its counts in this report,
    `before` its counts in each earlier entry that has it. kind is
    "regression" (every run fails now; every run passed in each earlier
    entry that ran it, and there is one), "flaky" (passes and failures
    across now and before) or None; passes/runs over now and before."""
    ran_before = [b for b in before if b.get("pass", 0) + b.get("fail", 0)]
    passes = now["pass"] + sum(b.get("pass", 0) for b in ran_before)
    failures = now["fail"] + sum(b.get("fail", 0) for b in ran_before)
    runs = passes + failures
    if not now["pass"] + now["fail"]:
        return None, passes, runs
    if now["fail"] and not now["pass"] and ran_before \
            and not any(b.get("fail", 0) for b in ran_before):
        return "regression", passes, runs
    if passes and failures:
        return "flaky", passes, runs
    return None, passes, runs
