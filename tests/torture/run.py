"""`make torture`: the crash-injection campaign and the concurrency run on
native, overlay and blockfile (loop ext4), btrfs (loop btrfs) and zfs (a
zfs-fuse pool, or kernel OpenZFS), one process per backend, side by side.

    .venv/bin/python -m tests.torture.run [--kills N] [--backends a,b] [--seed S]
        [--concurrency-ops N] [--workers N] [--report PATH]

Prints a table of kills, named points hit and violations per backend and
operation, the concurrency tally, and the time each part took; writes it all
as JSON (reports/torture.json). Exit 1 if there was any violation, or fewer
kills than --kills. Run it from the repository root (tests/ is not installed;
snaplab and conformance are).
"""

import argparse
import json
import multiprocessing
import os
import re
import sys
import time
import traceback

from tests.torture import concurrency, crash
from tests.torture import lab as labmod

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# zfs-fuse makes every zfs step cost a few hundred ms: it gets a smaller
# share of the kills so that the four backends, run side by side, end together.
KILL_SHARES = {"native": 10, "overlay": 10, "btrfs": 10, "zfs": 2, "blockfile": 10,
               "erofs": 10}


def split_kills(kills, backends):
    """{backend: kills}, by KILL_SHARES, summing to at least `kills`."""
    weight = sum(KILL_SHARES[b] for b in backends)
    return {b: -(-kills * KILL_SHARES[b] // weight) for b in backends}


def backend_part(backend, root, scratch, tmpdir, seed, kills, workers, ops, report_path,
                 crash_deadline=None):
    """One backend's crash campaign, then its concurrency run (a process of its own)."""
    part = {"backend": backend, "records": [], "concurrency": None, "errors": [],
            "crash_seconds": None, "concurrency_seconds": None}
    started = time.monotonic()
    try:
        part["records"] = crash.run_backend(backend, root, scratch, tmpdir, seed, kills,
                                            deadline=crash_deadline)
    except Exception:
        part["errors"].append("crash campaign aborted: " + traceback.format_exc()[-2000:])
    part["crash_seconds"] = round(time.monotonic() - started, 1)
    started = time.monotonic()
    if ops:
        try:
            part["concurrency"] = concurrency.run_backend(backend, root, scratch, tmpdir, seed,
                                                          workers, ops)
        except Exception:
            part["errors"].append("concurrency run aborted: " + traceback.format_exc()[-2000:])
    part["concurrency_seconds"] = round(time.monotonic() - started, 1)
    with open(report_path, "w") as report:
        json.dump(part, report)


def run(backends, kills, seed, workers, ops, report_path=None, out=sys.stdout,
        crash_minutes=None):
    """The whole run; returns the report dict (report["violations"] counts them all).
    `crash_minutes` stops the crash campaigns after that long (fewer kills)."""
    started = time.monotonic()
    crash_deadline = started + 60 * crash_minutes if crash_minutes else None
    shares = split_kills(kills, backends)
    parts = []
    with labmod.Lab(backends) as lab:
        setup_seconds = round(time.monotonic() - started, 1)
        context = multiprocessing.get_context("fork")
        processes = []
        for backend in backends:
            path = os.path.join(lab.scratch(backend), "part.json")
            process = context.Process(target=backend_part, args=(
                backend, lab.roots[backend], lab.scratch(backend), lab.tmp_for(backend), seed,
                shares[backend], workers, ops, path, crash_deadline))
            process.start()
            processes.append((backend, process, path))
        for backend, process, path in processes:
            process.join()
            if process.exitcode != 0 or not os.path.exists(path):
                parts.append({"backend": backend, "records": [], "concurrency": None,
                              "errors": ["backend process exit %s" % process.exitcode],
                              "crash_seconds": None, "concurrency_seconds": None})
                continue
            with open(path) as data:
                parts.append(json.load(data))
    records = [r for p in parts for r in p["records"]]
    table = crash.summarize(records)
    summaries = [p["concurrency"] for p in parts if p["concurrency"]]
    crash_violations = [r for r in records if r["violations"]]
    concurrency_violations = sum(len(s["violations"]) for s in summaries)
    errors = [e for p in parts for e in p["errors"]]
    report = {
        "seed": seed, "backends": backends, "kills_wanted": shares,
        "table": [dict(backend=b, op=o, **row) for (b, o), row in sorted(table.items())],
        "kills": sum(r["killed"] for r in records),
        "crash_violations": crash_violations,
        "concurrency": summaries,
        "errors": errors,
        "seconds": {"setup": setup_seconds,
                    "total": round(time.monotonic() - started, 1),
                    "crash": {p["backend"]: p["crash_seconds"] for p in parts},
                    "concurrency": {p["backend"]: p["concurrency_seconds"] for p in parts}},
        "notes": sorted({n for r in records for n in r["notes"]})[:50],
    }
    report["violations"] = len(crash_violations) + concurrency_violations + len(errors)
    out.write("\ncrash injection (seed %s): kills, named points hit, violations\n" % seed)
    out.write(crash.format_table(table))
    for r in crash_violations:
        where = r["point"] or ("delay %.3fs" % r["delay"] if r["delay"] is not None
                               else r["mode"])
        out.write("VIOLATION %s %s at %s (exit %s): %s\n" % (
            r["backend"], r["op"], where, r["exit"], " | ".join(r["violations"])[:1500]))
    kinds = violation_kinds(crash_violations, summaries)
    if kinds:
        out.write("\nviolations by kind (count, where, first text):\n")
        for text, (count, where) in sorted(kinds.items(), key=lambda kv: -kv[1][0]):
            out.write("%5d  %s\n       %s\n" % (count, ", ".join(sorted(where))[:300], text))
    report["violation_kinds"] = {text: {"count": count, "where": sorted(where)}
                                 for text, (count, where) in kinds.items()}
    if summaries:
        out.write("\nconcurrency (%d workers x %d operations per backend)\n" % (workers, ops))
        out.write(concurrency.format_summaries(summaries))
        for s in summaries:
            for v in s["violations"][:20]:
                out.write("VIOLATION %s concurrent %s: %s (exit %s) %s\n" % (
                    s["backend"], " ".join(v["argv"]), v["what"], v.get("exit"),
                    v["detail"][:500]))
    for error in errors:
        out.write("ERROR %s\n" % error)
    out.write("\ntime: setup %ss; crash %s; concurrency %s; total %ss\n" % (
        report["seconds"]["setup"], report["seconds"]["crash"],
        report["seconds"]["concurrency"], report["seconds"]["total"]))
    out.write("kills %d (wanted %d), violations %d\n" % (report["kills"], sum(shares.values()),
                                                         report["violations"]))
    if report_path:
        os.makedirs(os.path.dirname(os.path.abspath(report_path)), exist_ok=True)
        with open(report_path, "w") as data:
            json.dump(report, data, indent=1)
    return report


def violation_kinds(crash_violations, summaries):
    """{text with numbers, hex and keys blurred: (count, {backend op/point})}."""
    kinds = {}

    def add(text, where):
        text = re.sub(r"0x[0-9a-f]+|[0-9a-f]{12,}|\d+", "N", text)[:400]
        count, places = kinds.get(text, (0, set()))
        places.add(where)
        kinds[text] = (count + 1, places)

    for r in crash_violations:
        point = (r["point"] or "").split(":")[0] or r["mode"]
        for text in r["violations"]:
            add(text, "%s %s@%s" % (r["backend"], r["op"], point))
    for s in summaries:
        for v in s["violations"]:
            add("concurrent %s: %s: %s" % (v["argv"][0] if v["argv"] else "", v["what"],
                                           v["detail"]), "%s concurrency" % s["backend"])
    return kinds


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=1000,
                        help="SIGKILLs in all, shared out over the backends (default 1000)")
    parser.add_argument("--backends", default=",".join(labmod.BACKENDS),
                        help="comma-separated (default: %s)" % ",".join(labmod.BACKENDS))
    parser.add_argument("--seed", default=None, help="random seed (default: the time)")
    parser.add_argument("--concurrency-ops", type=int, default=500,
                        help="operations per concurrency worker (0: no concurrency run)")
    parser.add_argument("--workers", type=int, default=8, help="concurrency workers")
    parser.add_argument("--crash-minutes", type=float, default=None,
                        help="stop the crash campaigns after this long (default: no limit)")
    parser.add_argument("--report", default=os.path.join(REPO, "reports", "torture.json"))
    args = parser.parse_args(argv)
    backends = [b for b in args.backends.split(",") if b]
    unknown = sorted(set(backends) - set(labmod.BACKENDS))
    if unknown:
        parser.error("unknown backend %s" % ", ".join(unknown))
    seed = args.seed if args.seed is not None else str(int(time.time()))
    report = run(backends, args.kills, seed, args.workers, args.concurrency_ops, args.report,
                 crash_minutes=args.crash_minutes)
    print("report: %s" % args.report)
    # Fewer kills than asked (a bounded crash phase, verbs finishing before
    # the timer) is no proof of the number claimed: a failure too.
    short = report["kills"] < args.kills
    if short:
        print("only %d kills of the %d asked for" % (report["kills"], args.kills))
    return 1 if report["violations"] or short else 0


if __name__ == "__main__":
    sys.exit(main())
