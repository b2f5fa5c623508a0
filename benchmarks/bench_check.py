#!/usr/bin/env python3
"""Run the quick benchmarks a few times and fail on a ratio that regressed.

    python3 benchmarks/bench_check.py [--repeat 3] [--only bench_containerd,...]
        [--baseline benchmarks/baseline.json] [--keep DIR] [--write-baseline NOTE]
    python3 benchmarks/bench_check.py --from DIR   # compare JSON already written

Each benchmark in QUICK runs --repeat times with small --ops (a few seconds
to a minute each), writing benchmarks/benchjson.py's format; the median of
each row's ratio (snaplab ÷ its peer in the same run) is compared with
benchmarks/baseline.json. A row whose median is worse than the baseline by
more than its tolerance, or a baseline row no run produced, fails the check
and is named; exit status 1. Improvements are listed, so that the baseline
can be tightened.

--write-baseline NOTE writes the medians as the new baseline instead (NOTE:
where and under what load they were taken). Ratios only: the baseline means
the same on any machine, though a loaded one widens their spread.

`make bench-check` runs this; it is no part of `make test` (timings are
benchmarks, never tests).
"""

import argparse
import glob
import os
import subprocess
import sys
import tempfile

import benchjson

HERE = os.path.dirname(os.path.abspath(__file__))
BASELINE = os.path.join(HERE, "baseline.json")
# name -> the quick command's arguments (the script is HERE/<name>.py). zfs
# is left out: one zfs-fuse daemon per machine, and the suite's runs own it.
QUICK = {
    "bench_latency": ["--ops", "100", "--backends", "native,overlay"],
    "bench_btrfs_ioctl": ["--ops", "50"],
    "bench_storage_cost": ["--snapshots", "10", "--image-mib", "8",
                           "--backends", "native,overlay,btrfs,blockfile,blockfile-xfs,erofs"],
    "bench_remap": ["--files", "1000", "--rounds", "3"],
    "bench_containerd": ["--ops", "60", "--rounds", "3"],
    "bench_ctr": ["--ops", "40", "--rounds", "4"],
    "bench_serve_floor": ["--ops", "300", "--rounds", "6"],
    "bench_declare": ["--snapshots", "40", "--runs", "2"],
}


def run(names, repeat, directory):
    """Run each benchmark `repeat` times, interleaved (all once, then all
    again), so a change of the machine's load spreads over all of them."""
    for attempt in range(repeat):
        for name in names:
            out = os.path.join(directory, "%s.%d.json" % (name, attempt))
            argv = [sys.executable, os.path.join(HERE, name + ".py"), *QUICK[name],
                    "--json", out]
            print("run %d/%d: %s" % (attempt + 1, repeat, " ".join(argv[1:])), flush=True)
            done = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  text=True, check=False)
            if done.returncode != 0 or not os.path.exists(out):
                print(done.stdout)
                raise SystemExit("%s failed (exit %d); see its output above"
                                 % (name, done.returncode))


def documents_in(directory):
    return [benchjson.read(path) for path in sorted(glob.glob(os.path.join(directory, "*.json")))]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--only", help="comma-separated benchmark names (default: %s)"
                        % ",".join(QUICK))
    parser.add_argument("--baseline", default=BASELINE)
    parser.add_argument("--keep", help="write the runs' JSON here (default: a temp dir, removed)")
    parser.add_argument("--from", dest="source", help="compare the JSON files in this "
                        "directory instead of running anything")
    parser.add_argument("--write-baseline", metavar="NOTE",
                        help="write the medians as the baseline, with this note")
    parser.add_argument("--tolerance", type=float, default=benchjson.DEFAULT_TOLERANCE,
                        help="for --write-baseline: each row's tolerance (p99 rows: "
                        "--p99-tolerance)")
    parser.add_argument("--p99-tolerance", type=float, default=benchjson.DEFAULT_P99_TOLERANCE)
    args = parser.parse_args(argv)
    names = [n for n in (args.only or ",".join(QUICK)).split(",") if n]
    unknown = [n for n in names if n not in QUICK]
    if unknown:
        parser.error("unknown benchmark %s (known: %s)" % (", ".join(unknown), ", ".join(QUICK)))

    with tempfile.TemporaryDirectory(prefix="snaplab-bench-check-") as scratch:
        directory = args.source or args.keep or scratch
        if not args.source:
            os.makedirs(directory, exist_ok=True)
            run(names, args.repeat, directory)
        docs = [d for d in documents_in(directory) if d["benchmark"] in names]
    if not docs:
        raise SystemExit("no benchmark documents of %s" % ", ".join(names))
    found = benchjson.medians(docs)
    loads = [d["load"] for d in docs]

    if args.write_baseline:
        written = benchjson.baseline(found, args.write_baseline, loads, args.tolerance,
                                     args.p99_tolerance)
        if os.path.exists(args.baseline):
            # Benchmarks not run this time keep their rows (and their runs' loads).
            previous = benchjson.read_baseline(args.baseline)
            if set(previous["benchmarks"]) - set(found):
                written["loads"] = previous.get("loads", []) + written["loads"]
                written["note"] = "%s; %s: %s" % (previous["note"], ", ".join(sorted(found)),
                                                  args.write_baseline)
            written["benchmarks"] = dict(previous["benchmarks"], **written["benchmarks"])
        benchjson.write_baseline(args.baseline, written)
        print("wrote %s: %d rows of %s" % (args.baseline, sum(map(len, found.values())),
                                           ", ".join(sorted(found))))
        return 0

    if not os.path.exists(args.baseline):
        raise SystemExit("no baseline at %s: write one with --write-baseline NOTE" % args.baseline)
    findings = benchjson.compare(benchjson.read_baseline(args.baseline), found,
                                 benchmarks=sorted(found))
    for finding in findings:
        print(benchjson.describe(finding))
    failed = benchjson.failures(findings)
    print("load averages (1, 5, 15 min) of the runs: %s"
          % "; ".join("%.2f %.2f %.2f" % tuple(load) for load in loads))
    if failed:
        print("bench-check FAILED: %d of %d rows regressed, missing or without a baseline:"
              % (len(failed), len(findings)))
        for finding in failed:
            print("  " + benchjson.describe(finding))
        return 1
    print("bench-check passed: %d rows within their tolerance of %s"
          % (len(findings), os.path.relpath(args.baseline)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
