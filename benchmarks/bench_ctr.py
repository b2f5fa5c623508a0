#!/usr/bin/env python3
"""The container-start path end to end: snaplab as containerd's proxy plugin against overlayfs.

    python3 benchmarks/bench_ctr.py [--ops 100] [--rounds 4] [--backend overlay]
        [--base-files 16] [--json OUT] [--markdown OUT]

One private containerd (conformance/containerd.py) with two snapshotters on
one loop ext4: its own overlayfs, and `snaplab serve` of --backend as the
proxy plugin "snaplab" (conformance/serve.py's ProxyPair, as the suite's
containerd-proxy-snaplab-* targets and tests/integration/test_containers.py
run it). Both get a committed base of --base-files files of 4 KiB, made
under a lease. Then, per operation i, through two clients:

- ctr: `ctr snapshots --snapshotter S prepare active-i base`, `commit
  committed-i active-i`, and `rm committed-i` at the end of each round, one
  ctr process per call, as a user types them (ctr labels what it makes
  containerd.io/gc.root, so containerd's garbage collector keeps it);
- containerd's API: the same calls (and Usage, Stat) through containerd's
  snapshots service with a RemoteSnapshotter naming the plugin, under the
  lease: what containerd's own clients (the unpacker, CRI) send.

containerd's metadata layer is in front of both plugins in both clients, and
its garbage collector removes the data of removed snapshots later, from
both, outside the timed calls (snaplab's through the proxy's Remove). The
four variants run in --rounds rounds in a rotating order, so a change of the
machine's load shows in all alike. Ratios: snaplab ÷ overlayfs of the same
client, p50 and p99 (below 1: snaplab is faster).

Everything started or made (serve, containerd, mounts, the loop filesystem)
is stopped and removed at the end, also on failure.
"""

import argparse
import contextlib
import os
import platform
import sys
import tempfile
import time

from bench_containerd import make_base, percentile, run_chunk
from conformance.containerd import unavailable_reason
from conformance.filesystems import FilesystemPool
from conformance.serve import ProxyPair, ServeFailed, grpc_missing

import benchjson

PROXY = "snaplab"
OVERLAYFS = "overlayfs"
NAMESPACE = "snaplab-bench-ctr"
FILESYSTEM = "ext4"
CTR_OPERATIONS = ("prepare", "commit", "remove")
API_OPERATIONS = ("prepare", "usage", "commit", "stat", "remove")
CLIENTS = {"ctr": CTR_OPERATIONS, "api": API_OPERATIONS}
CLIENT_TITLE = {"ctr": "ctr", "api": "containerd API"}
VARIANTS = tuple((client, plugin) for client in CLIENTS for plugin in (PROXY, OVERLAYFS))
GOAL = 1.0


def run_ctr_chunk(daemon, plugin, first, last, timings):
    """ctr's prepare and commit per operation, then rm of what was committed."""
    def ctr(*argv):
        daemon.ctr("snapshots", "--snapshotter", plugin, *argv, namespace=NAMESPACE)

    clock = time.perf_counter
    for i in range(first, last):
        key, name = "ctr-active-%d" % i, "ctr-committed-%d" % i
        t0 = clock()
        ctr("prepare", key, "base")
        t1 = clock()
        ctr("commit", name, key)
        t2 = clock()
        timings["prepare"].append(t1 - t0)
        timings["commit"].append(t2 - t1)
    for i in range(first, last):
        t0 = clock()
        ctr("rm", "ctr-committed-%d" % i)
        timings["remove"].append(clock() - t0)


def stop_pair(pair):
    problems = pair.stop()
    if problems:
        raise ServeFailed("stopping the benchmark's serve and containerd: " + "; ".join(problems))


def bench(pool, backend, ops, rounds, base_files):
    fs = pool.get(FILESYSTEM)
    overlayfs_root = tempfile.mkdtemp(prefix="bench-ctr-overlayfs-", dir=fs.mountpoint)
    timings = {variant: {op: [] for op in CLIENTS[variant[0]]} for variant in VARIANTS}
    with contextlib.ExitStack() as cleanup:
        pair = ProxyPair(backend, fs, PROXY, plugin_roots={OVERLAYFS: overlayfs_root})
        cleanup.callback(stop_pair, pair)
        daemon = pair.containerd
        for plugin in (PROXY, OVERLAYFS):
            refusal = daemon.refusal(plugin)
            if refusal:
                raise RuntimeError("containerd's %s did not load: %s" % (plugin, refusal))
        lease = daemon.create_lease(NAMESPACE)
        work = tempfile.mkdtemp(prefix="bench-ctr-", dir=fs.mountpoint)
        api = {}
        for plugin in (PROXY, OVERLAYFS):
            api[plugin] = cleanup.enter_context(daemon.snapshotter(plugin, NAMESPACE, lease))
            make_base(api[plugin], work, base_files)
        bounds = [ops * r // rounds for r in range(rounds + 1)]
        for r in range(rounds):
            order = VARIANTS[r % len(VARIANTS):] + VARIANTS[:r % len(VARIANTS)]
            for client, plugin in order:
                chunk = timings[(client, plugin)]
                if client == "ctr":
                    run_ctr_chunk(daemon, plugin, bounds[r], bounds[r + 1], chunk)
                else:
                    run_chunk(api[plugin], bounds[r], bounds[r + 1], chunk)
        for plugin in (PROXY, OVERLAYFS):
            api[plugin].remove("base")
        # A synchronous garbage collection: the removed snapshots' data goes
        # from both plugins before they stop.
        daemon.delete_lease(NAMESPACE, lease)
    return {variant: {op: {"p50_ms": percentile(samples, 0.50) * 1000,
                           "p99_ms": percentile(samples, 0.99) * 1000,
                           "count": len(samples)}
                      for op, samples in timings[variant].items()}
            for variant in VARIANTS}


def json_rows(results):
    return [benchjson.row("%s %s %s, snaplab proxy vs overlayfs" % (client, op, stat),
                          results[(client, PROXY)][op][stat + "_ms"],
                          results[(client, OVERLAYFS)][op][stat + "_ms"], "ms", goal=GOAL)
            for client, operations in CLIENTS.items() for op in operations
            for stat in ("p50", "p99")]


def table(results, backend, ops, load):
    lines = ["The container-start path: snaplab %s as containerd's proxy plugin against "
             "containerd's overlayfs, %d operations each, one loop %s; kernel %s; load "
             "average (1 min) %.2f before, %.2f after"
             % (backend, ops, FILESYSTEM, platform.release(), load[0], load[1]), "",
             "| client | op | snaplab proxy p50 / p99 | overlayfs p50 / p99 "
             "| p50 ratio (goal ≤ 1.0) | p99 ratio |", "|---|---|---|---|---|---|"]
    for client, operations in CLIENTS.items():
        for op in operations:
            mine, peer = results[(client, PROXY)][op], results[(client, OVERLAYFS)][op]
            lines.append("| %s | %s | %.3f / %.3f ms | %.3f / %.3f ms | %.2f× | %.2f× |" % (
                CLIENT_TITLE[client], op, mine["p50_ms"], mine["p99_ms"], peer["p50_ms"],
                peer["p99_ms"], mine["p50_ms"] / peer["p50_ms"],
                mine["p99_ms"] / peer["p99_ms"]))
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ops", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--backend", default="overlay", choices=["overlay", "native"])
    parser.add_argument("--base-files", type=int, default=16)
    parser.add_argument("--json", help="also write the figures here (benchmarks/benchjson.py)")
    parser.add_argument("--markdown", help="also write the table here")
    args = parser.parse_args(argv)
    reason = unavailable_reason() or grpc_missing()
    if reason:
        print("ctr benchmark not run: %s" % reason)
        return 1
    load_before = os.getloadavg()[0]
    pool = FilesystemPool()
    try:
        print("%s: %d operations x 4 (ctr and containerd's API, snaplab and overlayfs)..."
              % (args.backend, args.ops), flush=True)
        results = bench(pool, args.backend, args.ops, args.rounds, args.base_files)
    finally:
        pool.destroy()
    text = table(results, args.backend, args.ops, (load_before, os.getloadavg()[0]))
    benchjson.emit(text, "bench_ctr", json_rows(results), args.markdown, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
