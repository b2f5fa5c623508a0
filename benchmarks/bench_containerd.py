#!/usr/bin/env python3
"""snaplab in-process and through gRPC against containerd's own snapshotters, p50/p99.

    python3 benchmarks/bench_containerd.py [--ops 200] [--rounds 4]
        [--backends overlay,native,btrfs] [--in-process-background]
        [--json OUT] [--markdown OUT]

For each backend, on one loop filesystem of its own (overlay and native on
ext4, btrfs on btrfs), three snapshotters side by side, each on its own root
on that same filesystem:

- in-process: snaplab's backend called directly (open_snapshotter);
- in-process, background (with --in-process-background): the same, with
  remove_data_in_background() (Remove's data deleted by a thread, as serve does);
- serve: a `snaplab serve` process of that backend, called through
  containerd's snapshots gRPC API (snaplab_grpc.client.RemoteSnapshotter);
- containerd: containerd 1.6's own plugin (overlayfs, native, btrfs) in a
  private containerd (conformance/containerd.py), through the same API and
  client, in a namespace under a lease (so its garbage collector leaves the
  snapshots alone while they are in use).

Each gets a committed base of --base-files files of 4 KiB, then, per
operation i: Prepare(active-i, base), Usage(active-i), Commit(committed-i,
active-i), Stat(committed-i), and Remove(committed-i) at the end of each
round. The --ops operations are split into --rounds rounds and the three run
one after another in each round, in a rotating order, so a change of the
machine's load shows in all three alike. Ratios: p50 of snaplab in-process
÷ containerd and of serve ÷ containerd (below 1: snaplab is faster).

Note: containerd's Remove deletes its metadata; the plugin removes the data
at the next garbage collection, outside the timed call. snaplab in-process
deletes the data before Remove returns; `snaplab serve` answers once the
metadata is committed and deletes the data in a thread of its own right
after (Cleanup waits for it), so that deletion is outside the timed call
too, but not outside the run: it competes with the calls that follow.

Everything it starts or makes (serve processes, containerd, mounts, loop
devices, filesystems) is stopped and removed at the end, also on failure.
"""

import argparse
import contextlib
import os
import platform
import sys
import tempfile
import time

from conformance.containerd import Containerd, unavailable_reason
from conformance.filesystems import FilesystemPool
from conformance.inprocess import InProcessTarget
from conformance.serve import served_snapshotter
from snaplab import mount as mountlib

import benchjson

OPERATIONS = ("prepare", "usage", "commit", "stat", "remove")
VARIANTS = ("in-process", "serve", "containerd")
BACKGROUND = "in-process, background"  # the optional fourth
PLUGIN_OF = {"overlay": "overlayfs", "native": "native", "btrfs": "btrfs"}
FILESYSTEM_OF = {"overlay": "ext4", "native": "ext4", "btrfs": "btrfs"}
NAMESPACE = "snaplab-bench"
# Issue 17's goal: every operation through serve at most as slow as containerd.
GOAL = 1.0


def percentile(samples, fraction):
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, max(0, int(round(fraction * (len(ordered) - 1)))))]


def make_base(sn, work, files):
    """A committed snapshot "base" of `files` files of 4 KiB, written through its mounts."""
    target = tempfile.mkdtemp(prefix="base-mnt-", dir=work)
    mountlib.mount_all(sn.prepare("base-active", ""), target)
    try:
        for i in range(files):
            with open(os.path.join(target, "file-%03d" % i), "wb") as f:
                f.write(os.urandom(4096))
    finally:
        mountlib.unmount_all(target)
        os.rmdir(target)
    sn.commit("base", "base-active")


def run_chunk(sn, first, last, timings):
    clock = time.perf_counter
    for i in range(first, last):
        key, name = "active-%d" % i, "committed-%d" % i
        t0 = clock()
        sn.prepare(key, "base")
        t1 = clock()
        sn.usage(key)
        t2 = clock()
        sn.commit(name, key)
        t3 = clock()
        sn.stat(name)
        t4 = clock()
        timings["prepare"].append(t1 - t0)
        timings["usage"].append(t2 - t1)
        timings["commit"].append(t3 - t2)
        timings["stat"].append(t4 - t3)
    for i in range(first, last):
        t0 = clock()
        sn.remove("committed-%d" % i)
        timings["remove"].append(clock() - t0)


def stop_containerd(daemon):
    problems = daemon.stop()
    if problems:
        raise RuntimeError("stopping the benchmark's containerd: " + "; ".join(problems))


def bench_backend(backend, pool, ops, rounds, base_files, variants=VARIANTS):
    target = InProcessTarget(backend, FILESYSTEM_OF[backend])
    target.fs = pool.get(target.filesystem)
    work = tempfile.mkdtemp(prefix="bench-%s-" % backend, dir=target.fs.mountpoint)
    plugin = PLUGIN_OF[backend]
    with contextlib.ExitStack() as cleanup:
        snapshotters = {}
        snapshotters["in-process"] = cleanup.enter_context(
            target.open(os.path.join(work, "in-process")))
        if BACKGROUND in variants:
            snapshotters[BACKGROUND] = cleanup.enter_context(
                target.open(os.path.join(work, "in-process-background")))
            snapshotters[BACKGROUND].remove_data_in_background()
        snapshotters["serve"] = cleanup.enter_context(
            served_snapshotter(os.path.join(work, "serve"), backend))
        daemon = Containerd(plugin_roots={plugin: os.path.join(work, "containerd")})
        cleanup.callback(stop_containerd, daemon)
        daemon.start()
        refusal = daemon.refusal(plugin)
        if refusal:
            raise RuntimeError("containerd's %s did not load: %s" % (plugin, refusal))
        lease = daemon.create_lease(NAMESPACE)
        snapshotters["containerd"] = cleanup.enter_context(
            daemon.snapshotter(plugin, NAMESPACE, lease))

        timings = {variant: {op: [] for op in OPERATIONS} for variant in variants}
        for variant in variants:
            make_base(snapshotters[variant], work, base_files)
        bounds = [ops * r // rounds for r in range(rounds + 1)]
        for r in range(rounds):
            order = variants[r % len(variants):] + variants[:r % len(variants)]
            for variant in order:
                run_chunk(snapshotters[variant], bounds[r], bounds[r + 1], timings[variant])
        for variant in variants:
            snapshotters[variant].remove("base")
    return {variant: {op: {"p50_ms": percentile(samples, 0.50) * 1000,
                           "p99_ms": percentile(samples, 0.99) * 1000,
                           "count": len(samples)}
                      for op, samples in timings[variant].items()}
            for variant in variants}


def table(results, ops, base_files, load):
    measured = list(next(iter(results.values())))  # the variants, containerd among them
    mine = [v for v in measured if v != "containerd"]
    title = {"serve": "serve (gRPC)", "containerd": "containerd (gRPC)"}
    lines = ["snaplab against containerd 1.6's own snapshotters, %d operations each, "
             "base of %d files; same loop filesystem per backend (overlay, native: ext4; "
             "btrfs: btrfs); kernel %s; load average (1 min) %.2f before, %.2f after"
             % (ops, base_files, platform.release(), load[0], load[1]), "",
             "| backend | op | " + " | ".join("%s p50 / p99" % title.get(v, v) for v in measured)
             + " | " + " | ".join("%s ÷ containerd%s" % (v, " (goal ≤ 1.0)" if i == 0 else "")
                                  for i, v in enumerate(mine)) + " |",
             "|---|---|" + "---|" * (len(measured) + len(mine))]
    for backend, variants in results.items():
        for op in OPERATIONS:
            row = {v: variants[v][op] for v in measured}
            ref = row["containerd"]["p50_ms"]
            lines.append("| %s | %s | %s | %s |" % (
                backend, op,
                " | ".join("%.3f / %.3f ms" % (row[v]["p50_ms"], row[v]["p99_ms"])
                           for v in measured),
                " | ".join("%.2f×" % (row[v]["p50_ms"] / ref) for v in mine)))
    return "\n".join(lines)


# containerd's Remove returns before its garbage collector deletes the data;
# a collection that lands inside a timed Remove makes its p99 (2-141 ms in
# the same quick run, five runs apart), so that ratio says nothing of snaplab.
GC_PAUSE = "containerd's Remove p99 is its garbage collector's pause, in some runs and not others"


def json_rows(results):
    """benchjson rows: per backend, operation, percentile and snaplab variant,
    snaplab's time against containerd's."""
    rows = []
    for backend, variants in results.items():
        for op in OPERATIONS:
            for stat in ("p50", "p99"):
                peer = variants["containerd"][op][stat + "_ms"]
                for variant in variants:
                    if variant == "containerd":
                        continue
                    rows.append(benchjson.row(
                        "%s %s %s, %s" % (backend, op, stat, variant),
                        variants[variant][op][stat + "_ms"], peer, "ms", goal=GOAL,
                        unchecked=GC_PAUSE if (op, stat) == ("remove", "p99") else None))
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ops", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--backends", default="overlay,native,btrfs")
    parser.add_argument("--base-files", type=int, default=16)
    parser.add_argument("--in-process-background", action="store_true",
                        help="also snaplab in-process with Remove's data deleted in the "
                             "background (remove_data_in_background(), as serve)")
    parser.add_argument("--json", help="also write the figures here (benchmarks/benchjson.py)")
    parser.add_argument("--markdown", help="also write the table here")
    args = parser.parse_args(argv)
    backends = [b for b in args.backends.split(",") if b]
    unknown = [b for b in backends if b not in PLUGIN_OF]
    if unknown:
        parser.error("no containerd counterpart for %s (known: %s)"
                     % (", ".join(unknown), ", ".join(PLUGIN_OF)))
    reason = unavailable_reason()
    if reason:
        print("containerd benchmark not run: %s" % reason)
        return 1
    load_before = os.getloadavg()[0]
    pool = FilesystemPool()
    results = {}
    try:
        for backend in backends:
            print("%s: %d operations per variant..." % (backend, args.ops), flush=True)
            results[backend] = bench_backend(
                backend, pool, args.ops, args.rounds, args.base_files,
                VARIANTS + ((BACKGROUND,) if args.in_process_background else ()))
    finally:
        pool.destroy()
    load = (load_before, os.getloadavg()[0])
    text = table(results, args.ops, args.base_files, load)
    benchjson.emit(text, "bench_containerd", json_rows(results), args.markdown, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
