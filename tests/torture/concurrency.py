"""Concurrency: worker processes run mixed CLI verbs on ONE root, keys drawn
from a small shared space so that they collide, cleanup racing rm, commit
and apply-layer.

Expected failures are the classes a collision means (NotFound 2,
AlreadyExists 3, FailedPrecondition 4). Violations: any other exit code (1
above all), an exception escaping snaplab.cli.main (a user's traceback),
"database is locked" anywhere, an rm that succeeds but says its data was
"left for cleanup" (a concurrent cleanup got in its way), a cleanup that
fails. After the run: cleanup, then `snaplab doctor` must find it clean.
"""

import collections
import json
import multiprocessing
import os
import tempfile
import time
import traceback

from tests.torture import lab as labmod
from tests.torture.lab import cli

EXPECTED_CODES = (0, 2, 3, 4)
ACTIVE_KEYS = ["active-%d" % i for i in range(5)]
COMMITTED_KEYS = ["layer-%d" % i for i in range(4)]
VIEW_KEYS = ["view-%d" % i for i in range(3)]
ALL_KEYS = ACTIVE_KEYS + COMMITTED_KEYS + VIEW_KEYS
PARENTS = ["cbase"] + COMMITTED_KEYS
BASE_FILES = 100
LAYER_ENTRIES = 200

# verb -> weight in the mix
MIX = {"prepare": 14, "view": 7, "commit": 10, "rm": 16, "label": 6, "ls": 5, "info": 5,
       "usage": 5, "cleanup": 8, "apply-layer": 6}


def _argv(verb, rng, worker, layer_tar):
    """The CLI argv lists for one operation of `verb` (apply-layer is three)."""
    if verb == "prepare":
        return [["prepare", rng.choice(ACTIVE_KEYS), rng.choice(PARENTS)]]
    if verb == "view":
        return [["view", rng.choice(VIEW_KEYS), rng.choice(PARENTS)]]
    if verb == "commit":
        return [["commit", rng.choice(COMMITTED_KEYS), rng.choice(ACTIVE_KEYS)]]
    if verb == "rm":
        return [["rm", rng.choice(ALL_KEYS)]]
    if verb == "label":
        return [["label", rng.choice(ALL_KEYS + ["cbase"]), "worker=%d" % worker]]
    if verb in ("info", "usage"):
        return [[verb, rng.choice(ALL_KEYS)]]
    if verb in ("ls", "cleanup"):
        return [[verb]]
    if verb == "apply-layer":  # on the worker's own key: only cleanup races it
        own = "own-%d" % worker
        return [["prepare", own, "cbase"], ["apply-layer", own, layer_tar], ["rm", own]]
    raise ValueError(verb)


def _violation(argv, result):
    """What is wrong with one CLI result, or None."""
    text = result.err
    if "database is locked" in text or "database is locked" in result.out:
        return "database is locked"
    if "Traceback" in text:
        return "traceback"
    if argv[0] == "cleanup" and result.code != 0:
        return "cleanup failed"
    if result.code not in EXPECTED_CODES:
        return "exit %d" % result.code
    if argv[0] == "rm" and result.code == 0 and "left for cleanup" in text:
        return "rm succeeded but left data for cleanup"
    return None


def worker_main(root, backend, worker, ops, seed, layer_tar, report_path, tmpdir):
    """One worker process: `ops` operations; writes its tally as JSON."""
    os.environ["TMPDIR"] = tmpdir
    tempfile.tempdir = tmpdir
    rng = labmod.seeded(seed, "concurrency", backend, worker)
    verbs, weights = zip(*MIX.items())
    codes = collections.Counter()
    by_verb = collections.Counter()
    violations = []
    for _ in range(ops):
        verb = rng.choices(verbs, weights)[0]
        by_verb[verb] += 1
        for argv in _argv(verb, rng, worker, layer_tar):
            try:
                result = cli(root, backend, *argv)
            except BaseException:  # escaped main(): a traceback for a user
                violations.append({"argv": argv, "what": "exception",
                                   "detail": traceback.format_exc()[-1500:]})
                codes["exception"] += 1
                continue
            codes[str(result.code)] += 1
            problem = _violation(argv, result)
            if problem:
                violations.append({"argv": argv, "what": problem, "exit": result.code,
                                   "detail": result.err.strip()[-500:]})
    with open(report_path, "w") as report:
        json.dump({"worker": worker, "codes": codes, "verbs": by_verb,
                   "violations": violations}, report)


def run_backend(backend, root, scratch, tmpdir, seed, workers=8, ops=500):
    """The concurrency run on one root; returns its summary dict."""
    os.environ["TMPDIR"] = tmpdir
    tempfile.tempdir = tmpdir
    rng = labmod.seeded(seed, "concurrency-fixture", backend)
    summary = {"backend": backend, "workers": workers, "ops_per_worker": ops,
               "codes": collections.Counter(), "verbs": collections.Counter(),
               "violations": [], "seconds": None}
    _make_base(root, backend, tmpdir, rng)
    layer_tar = os.path.join(scratch, "concurrency-layer.tar")
    labmod.make_layer_tar(layer_tar, LAYER_ENTRIES, rng)
    started = time.monotonic()
    context = multiprocessing.get_context("fork")
    processes = []
    for worker in range(workers):
        report = os.path.join(scratch, "concurrency-worker-%d.json" % worker)
        process = context.Process(target=worker_main, args=(
            root, backend, worker, ops, seed, layer_tar, report, tmpdir))
        process.start()
        processes.append((process, report))
    for process, report in processes:
        process.join()
        if process.exitcode != 0:
            summary["violations"].append({"argv": ["worker"], "what": "worker died",
                                          "exit": process.exitcode, "detail": ""})
            continue
        with open(report) as data:
            tally = json.load(data)
        summary["codes"].update(tally["codes"])
        summary["verbs"].update(tally["verbs"])
        summary["violations"] += tally["violations"]
    summary["seconds"] = round(time.monotonic() - started, 1)
    result = cli(root, backend, "cleanup")
    if result.code != 0:
        summary["violations"].append({"argv": ["cleanup"], "what": "final cleanup failed",
                                      "exit": result.code, "detail": result.err.strip()})
    for finding in labmod.unreferenced(root, backend):
        summary["violations"].append({"argv": ["doctor"], "what": "doctor finding",
                                      "detail": finding})
    leftovers = labmod.snaplab_temp_names(tmpdir)
    if leftovers:
        summary["violations"].append({"argv": [], "what": "temp names left",
                                      "detail": ", ".join(leftovers)})
    summary["codes"] = dict(summary["codes"])
    summary["verbs"] = dict(summary["verbs"])
    return summary


def _make_base(root, backend, tmpdir, rng):
    for argv in (["prepare", "cbase-work"],):
        result = cli(root, backend, *argv)
        if result.code != 0:
            raise labmod.CheckFailed("concurrency fixture: %r" % result)
    with labmod.mounted(root, backend, "cbase-work", tmpdir) as target:
        labmod.write_files(target, BASE_FILES, rng, prefix="c")
    result = cli(root, backend, "commit", "cbase", "cbase-work")
    if result.code != 0:
        raise labmod.CheckFailed("concurrency fixture: commit: %r" % result)


def format_summaries(summaries):
    lines = ["%-8s %8s %8s %s" % ("backend", "ops", "seconds", "exit codes / violations")]
    for s in summaries:
        total = sum(v for k, v in s["codes"].items())
        codes = " ".join("%s:%d" % (k, v) for k, v in sorted(s["codes"].items()))
        lines.append("%-8s %8d %8s %s; %d violations" % (s["backend"], total, s["seconds"],
                                                          codes, len(s["violations"])))
    return "\n".join(lines) + "\n"
