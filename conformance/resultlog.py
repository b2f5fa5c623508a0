"""pytest plugin that writes one JSON result file per conformance run.

The suite's conftest owns the ``--results-json PATH`` option and calls
``register(config, path)``; this module adds no command-line option so it can be
imported anywhere (and by ``conformance.report``'s tests) without side effects.

The file (format "snaplab-conformance/1") is what ``python3 -m conformance.report``
merges into the target x filesystem x kernel/distro matrix::

    {"format": "snaplab-conformance/1",
     "run": {"started", "finished", "hostname", "kernel", "distro", "python", "label"},
     "results": [{"target", "backend", "filesystem", "case", "nodeid",
                  "outcome", "duration", "reason"[, "run", "runs"]}]}

"run" and "runs" (numbers) are there when the suite ran each case several
times (--repeat): this result is run `run` of `runs` of its case, whose
"case" is the same for every run.

outcome is one of passed, failed, skipped, error (setup/teardown or collection
failed), xfailed, xpassed.  Only long-stable pytest hooks are used so Debian's
python3-pytest 7.2 runs it too.
"""

import datetime
import json
import os
import platform
import re
import socket

FORMAT = "snaplab-conformance/1"
OUTCOMES = ("passed", "failed", "skipped", "error", "xfailed", "xpassed")
REASON_MAX = 300
# How pytest says a strict xfail passed (its report is "failed").
STRICT_XPASS = "[XPASS(strict)] "
# The user_properties the conftest attaches to each item; anything else is ignored.
TARGET_KEYS = ("target", "backend", "filesystem", "case", "traits")
# ... and the numbers of a repeated case (--repeat): which run, of how many.
RUN_KEYS = ("run", "runs")


def register(config, path):
    """Register a ResultLog writing to ``path``; return it (None on xdist workers)."""
    # Under pytest-xdist the controller sees every worker's reports; if workers
    # wrote too they would race on the same file.
    if hasattr(config, "workerinput"):
        return None
    existing = config.pluginmanager.get_plugin("snaplab-resultlog")
    if existing is not None:
        return existing
    plugin = ResultLog(path)
    config.pluginmanager.register(plugin, "snaplab-resultlog")
    return plugin


def utc_now():
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def os_release_name():
    """PRETTY_NAME from os-release, "" when the machine has none."""
    for path in ("/etc/os-release", "/usr/lib/os-release"):
        try:
            with open(path, encoding="utf-8") as f:
                for line in f:
                    key, sep, value = line.strip().partition("=")
                    if sep and key == "PRETTY_NAME":
                        return value.strip().strip("\"'")
        except OSError:
            continue
    return ""


def trim(text, limit=REASON_MAX):
    text = " ".join(text.split())  # one line: the report shows it inline
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return text


def failure_reason(longrepr):
    """The one line of a failure that says what went wrong."""
    crash = getattr(longrepr, "reprcrash", None)
    message = getattr(crash, "message", None)
    if message is None:
        # Plain string reprs (pytest.fail(pytrace=False), strict XPASS, collection
        # errors): their last line is the error, as in a Python traceback.
        message = str(longrepr) if longrepr is not None else ""
        lines = [ln.strip() for ln in message.splitlines() if ln.strip()]
        last = lines[-1] if lines else ""
        if last.startswith("E "):
            last = last[1:].strip()
        return trim(last)
    lines = [ln.strip() for ln in message.splitlines() if ln.strip()]
    if not lines:
        return ""
    # pytest's assertion rewriting puts the assertion (or the assert's message)
    # first and appends "+ where ..." explanations; for any other exception the
    # last line is the telling one (e.g. a command's stderr ends with its error).
    if lines[0].startswith(("AssertionError", "assert ")):
        return trim(lines[0])
    return trim(lines[-1])


def skip_reason(longrepr):
    # Skips carry (path, lineno, "Skipped: <reason>").
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        text = str(longrepr[2])
    else:
        text = str(longrepr) if longrepr is not None else ""
    if text.startswith("Skipped: "):
        text = text[len("Skipped: "):]
    return trim(text)


def xfail_reason(report):
    text = str(getattr(report, "wasxfail", "") or "")
    # pytest.xfail("why") arrives as "reason: why"; the marker's reason comes bare.
    if text.startswith("reason: "):
        text = text[len("reason: "):]
    return trim(text)


class ResultLog:
    """Collects one result per test item and writes the JSON file at session end."""

    def __init__(self, path):
        self.path = os.fspath(path)
        self.started = utc_now()
        self.results = {}  # nodeid -> result dict; dicts keep first-seen order

    def _result(self, report):
        result = self.results.get(report.nodeid)
        if result is None:
            case = report.nodeid.rsplit("::", 1)[-1]  # test name, with [params] if any
            result = {
                "target": "", "backend": "", "filesystem": "", "case": case,
                "nodeid": report.nodeid, "outcome": "passed", "duration": 0.0,
                "reason": "",
            }
            self.results[report.nodeid] = result
        for key, value in getattr(report, "user_properties", None) or ():
            if key in TARGET_KEYS:
                result[key] = str(value)
            elif key in RUN_KEYS:
                result[key] = int(value)
        return result

    def pytest_sessionstart(self, session):
        self.started = utc_now()

    def pytest_runtest_logreport(self, report):
        result = self._result(report)
        result["duration"] = round(result["duration"] + (report.duration or 0.0), 4)
        when = report.when
        if result["outcome"] in ("failed", "error"):
            return  # the first failure is the one to report; teardown noise after it is not
        xfail = hasattr(report, "wasxfail")
        if report.passed:
            if when == "call" and xfail:
                result["outcome"] = "xpassed"
                result["reason"] = xfail_reason(report)
        elif report.skipped:
            if xfail:
                result["outcome"] = "xfailed"
                result["reason"] = xfail_reason(report)
            else:
                result["outcome"] = "skipped"
                result["reason"] = skip_reason(report.longrepr)
        elif report.failed:
            reason = failure_reason(report.longrepr)
            if when == "call" and str(report.longrepr).startswith(STRICT_XPASS):
                # A strict xfail that passed: pytest fails the run, but the
                # case itself passed (a known failure fixed, or a flaky one).
                result["outcome"] = "xpassed"
                result["reason"] = trim(str(report.longrepr)[len(STRICT_XPASS):])
            elif when == "call":
                result["outcome"] = "failed"
                result["reason"] = reason
            else:
                result["outcome"] = "error"
                result["reason"] = trim("error in %s: %s" % (when, reason))

    def pytest_collectreport(self, report):
        # A module that fails to import (or skips itself) would otherwise drop its
        # cases from the matrix without a word; record it as one result.
        if report.passed:
            return
        result = self._result(report)
        if report.failed:
            result["outcome"] = "error"
            result["reason"] = trim("collection failed: %s" % failure_reason(report.longrepr))
        else:
            result["outcome"] = "skipped"
            result["reason"] = skip_reason(report.longrepr)

    def document(self):
        return {
            "format": FORMAT,
            "run": {
                "started": self.started,
                "finished": utc_now(),
                "hostname": socket.gethostname(),
                "kernel": platform.release(),
                "distro": os_release_name(),
                "python": platform.python_version(),
                "label": os.environ.get("SNAPLAB_RUN_LABEL", ""),
            },
            "results": list(self.results.values()),
        }

    def write(self):
        directory = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(directory, exist_ok=True)
        # Write then rename so a crashed run never leaves half a file for the report.
        tmp = self.path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(self.document(), f, indent=1, ensure_ascii=False)
            f.write("\n")
        os.replace(tmp, self.path)

    def pytest_sessionfinish(self, session):
        self.write()


# A case skipped because the backend refused the filesystem, as the suite
# expects there: the report reads these back to mark the cell "refuses".
# The filesystem is not named, so that one reason groups all its targets.
REFUSAL_SKIP = re.compile(r"^(\S+) refuses the filesystem, as it must \(([^)]*)\)")


def refusal_skip_reason(backend, reason, explanation=None):
    """The skip reason of a refused target's cases; REFUSAL_SKIP parses it."""
    text = "%s refuses the filesystem, as it must (%s)" % (backend, reason)
    return text + (": " + explanation if explanation else "")
