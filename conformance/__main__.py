"""The suite against any snapshotter: `python -m conformance` (or snaplab-conformance).

    python -m conformance --endpoint unix:///run/containerd/containerd.sock \\
        --plugin overlayfs --report DIR [--traits FILE] [--trait NAME=VALUE] \\
        [--namespace-prefix P] [pytest args...]
    python -m conformance --start-command "my-snapshotter --root {root} --address {socket}" \\
        --plugin mine --report DIR [--filesystems ext4,xfs] [pytest args...]

runs the suite's cases (the test modules of this package, found beside
this file: no repository needed, any working directory) against
snapshotter `--plugin` of the service of containerd's snapshots gRPC API
at `--endpoint`: containerd's own socket, a proxy plugin's socket, or
`snaplab serve`'s (conformance/endpoint.py says how each case is isolated
there). Whatever else is on the command line goes to pytest (`-k walk`,
`-x`, `-v`...). --traits names a file of the snapshotter's traits (what it
does where containerd's contract leaves a choice: conformance/traits.py);
without one, a plugin the suite knows (overlayfs, native, btrfs, ...) gets
the suite's own, any other every trait's default.

With --start-command instead of --endpoint, the suite starts the service
itself, one process per snapshotter root a case opens, from the command:
{root} (a fresh root on the filesystem under test) and {socket} (a unix
socket to serve on) are put into its arguments (conformance/started.py).
Then the suite sees the storage, and the lifecycle cases run too
(test_lifecycle.py: stop with SIGTERM and SIGINT, SIGKILL mid-call,
restart, nothing left on disk). The row is endpoint-<plugin> on each of
--filesystems (default: ext4). --endpoint and --start-command together are
refused: the lifecycle cases need a service the suite started, and every
other case runs as well on it.

With --report DIR, DIR receives what `make pytest` writes: results.json
and junit.xml from pytest, report.md and report.html from
conformance.report. The exit code is pytest's (0: every case passed or
skipped, or failed as known), or 2 when the report could not be written.
"""

import argparse
import contextlib
import io
import os
import sys

import pytest

from . import report
from .registry import KNOWN_DIFFERENCES

SUITE_DIR = os.path.dirname(os.path.abspath(__file__))


def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog="python -m conformance",
        description="Run snaplab's conformance suite against a service of containerd's "
                    "snapshots gRPC API, running (--endpoint) or started by the suite "
                    "(--start-command). Other arguments go to pytest.")
    reach = parser.add_mutually_exclusive_group(required=True)
    reach.add_argument("--endpoint", metavar="ADDRESS",
                       help="its socket: unix:///path or a path")
    reach.add_argument("--start-command", metavar="CMD",
                       help="start the service per root from CMD, with {root} and {socket} "
                            "in it (the root to keep its data in, the unix socket to serve "
                            "on): the lifecycle cases run too")
    parser.add_argument("--filesystems", metavar="NAMES",
                        help="with --start-command: the comma-separated filesystems its "
                             "roots go on (default: ext4)")
    parser.add_argument("--plugin", required=True, metavar="NAME",
                        help="the snapshotter plugin: containerd's name for it (overlayfs, "
                             "native, a proxy plugin's name...); a service of one "
                             "snapshotter (snaplab serve, a proxy plugin's own socket) "
                             "takes any name")
    parser.add_argument("--report", metavar="DIR",
                        help="write results.json, junit.xml, report.md and report.html here")
    parser.add_argument("--namespace-prefix", metavar="P",
                        help="the cases' containerd namespaces (or, on a bare snapshotter "
                             "service, key prefixes) start with P")
    parser.add_argument("--traits", metavar="FILE",
                        help="the snapshotter's traits: `name: value` lines (default: the "
                             "suite's own for a plugin it knows, else the defaults)")
    parser.add_argument("--trait", action="append", default=[], metavar="NAME=VALUE",
                        help="one trait, on top of --traits; repeatable")
    parser.add_argument("--known-failures", default=KNOWN_DIFFERENCES, metavar="FILE",
                        help="cases known to fail where, as strict xfails (default: the "
                             "suite's known-differences.yml; '' for none)")
    return parser.parse_known_args(argv)


def pytest_argv(args, extra):
    """pytest's command line: the suite's directory and options, then `extra`."""
    argv = [SUITE_DIR,
            # The suite's directory may be read-only (site-packages).
            "-p", "no:cacheprovider",
            "--plugin", args.plugin, "--known-failures", args.known_failures]
    if args.endpoint:
        argv += ["--endpoint", args.endpoint]
    else:
        argv += ["--start-command", args.start_command]
    if args.filesystems:
        argv += ["--filesystems", args.filesystems]
    if args.namespace_prefix:
        argv += ["--namespace-prefix", args.namespace_prefix]
    if args.traits:
        argv += ["--traits", os.path.abspath(args.traits)]
    for trait in args.trait:
        argv += ["--trait", trait]
    if args.report:
        argv += ["--junitxml", os.path.join(args.report, "junit.xml"),
                 "--results-json", os.path.join(args.report, "results.json")]
    return argv + list(extra)


def write_report(directory, known_failures):
    """report.md and report.html of DIR/results.json, as `make pytest`
    writes them (conformance.report's command line; its Markdown on stdout
    is not wanted here); returns conformance.report's exit code."""
    argv = ["--markdown", os.path.join(directory, "report.md"),
            "--html", os.path.join(directory, "report.html"),
            os.path.join(directory, "results.json")]
    if known_failures:
        argv = ["--known-failures", known_failures] + argv
    with contextlib.redirect_stdout(io.StringIO()):
        return report.main(argv)


def main(argv=None):
    args, extra = parse_args(sys.argv[1:] if argv is None else argv)
    if args.report:
        os.makedirs(args.report, exist_ok=True)
    code = int(pytest.main(pytest_argv(args, extra)))
    if args.report:
        if not os.path.exists(os.path.join(args.report, "results.json")):
            print("conformance: pytest wrote no results (exit %d): no report" % code,
                  file=sys.stderr)
            return code
        if write_report(args.report, args.known_failures) == 2:  # it said why on stderr
            return code or 2
        print("conformance: report in %s (report.md, report.html, results.json, junit.xml)"
              % args.report)
    return code


if __name__ == "__main__":
    sys.exit(main())
