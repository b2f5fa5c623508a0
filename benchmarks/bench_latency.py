#!/usr/bin/env python3
"""Latency of Prepare, Commit, Stat and Remove, per backend, p50/p99.

    python3 benchmarks/bench_latency.py [--ops 1000] [--backends native,overlay]
                                        [--filesystem ext4|host-dir] [--layer-files N]
                                        [--json OUT]

Each backend gets a fresh root on the same filesystem (a loop-backed ext4 by
default, made and removed by the benchmark). A small committed base layer
(--base-files files of 4 KiB) is the parent of every prepared snapshot, as
in a container start: Prepare(key_i, base), Commit(name_i, key_i),
Stat(name_i), then Remove(name_i) for all. Native's Prepare copies the base,
overlay's does not: the ratio column shows what that costs. Any backend
snaplab has can be named (blockfile: its Prepare copies the base's image,
a clone on --filesystem xfs or btrfs). With --layer-files N each active
gets N files of 4 KiB (written untimed, through its mounts) before its
Commit: erofs's Commit packs them into an image.
"""

import argparse
import os
import platform
import sys
import tempfile
import time

from conformance.filesystems import FilesystemPool
from snaplab import open_snapshotter

import benchjson

OPERATIONS = ("prepare", "commit", "stat", "remove")


def percentile(samples, fraction):
    ordered = sorted(samples)
    index = min(len(ordered) - 1, max(0, int(round(fraction * (len(ordered) - 1)))))
    return ordered[index]


def write_files(mounts, work, files):
    """`files` files of 4 KiB of random data into the snapshot of `mounts`."""
    from snaplab.mount import mount_all, unmount_all
    target = os.path.join(work, "layer-mnt")
    os.makedirs(target, exist_ok=True)
    mount_all(mounts, target)
    try:
        for i in range(files):
            with open(os.path.join(target, "file-%03d" % i), "wb") as f:
                f.write(os.urandom(4096))
    finally:
        unmount_all(target)


def make_base(sn, work, files):
    write_files(sn.prepare("base-active", ""), work, files)
    sn.commit("base", "base-active")


def bench_backend(backend, directory, ops, base_files, layer_files=0):
    root = tempfile.mkdtemp(prefix="root-%s-" % backend, dir=directory)
    timings = {op: [] for op in OPERATIONS}
    with open_snapshotter(root, backend) as sn:
        make_base(sn, directory, base_files)
        clock = time.perf_counter
        for i in range(ops):
            key, name = "active-%d" % i, "committed-%d" % i
            t0 = clock()
            mounts = sn.prepare(key, "base")
            t1 = clock()
            if layer_files:  # not timed
                write_files(mounts, directory, layer_files)
            committing = clock()
            sn.commit(name, key)
            t2 = clock()
            sn.stat(name)
            t3 = clock()
            timings["prepare"].append(t1 - t0)
            timings["commit"].append(t2 - committing)
            timings["stat"].append(t3 - t2)
        for i in range(ops):
            t0 = clock()
            sn.remove("committed-%d" % i)
            timings["remove"].append(clock() - t0)
        sn.remove("base")
    return {op: {"p50_ms": percentile(samples, 0.50) * 1000,
                 "p99_ms": percentile(samples, 0.99) * 1000,
                 "count": len(samples)} for op, samples in timings.items()}


def json_rows(results, backends):
    """benchjson rows: each backend against the last one (the reference), per
    operation: no outside peer here, the ratios catch one backend slowing
    down against the other."""
    reference = backends[-1]
    return [benchjson.row("%s %s %s, vs %s" % (backend, op, stat, reference),
                          results[backend][op][stat + "_ms"],
                          results[reference][op][stat + "_ms"], "ms")
            for backend in backends[:-1] for op in OPERATIONS for stat in ("p50", "p99")]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ops", type=int, default=1000)
    parser.add_argument("--backends", default="native,overlay")
    parser.add_argument("--filesystem", default="ext4")
    parser.add_argument("--base-files", type=int, default=16)
    parser.add_argument("--layer-files", type=int, default=0,
                        help="files of 4 KiB each active gets before its Commit")
    parser.add_argument("--json", help="also write the figures here (benchmarks/benchjson.py)")
    args = parser.parse_args(argv)
    backends = [b for b in args.backends.split(",") if b]
    pool = FilesystemPool()
    results = {}
    try:
        fs = pool.get(args.filesystem)
        for backend in backends:
            directory = tempfile.mkdtemp(prefix="bench-", dir=fs.mountpoint)
            results[backend] = bench_backend(backend, directory, args.ops, args.base_files,
                                             args.layer_files)
    finally:
        pool.destroy()
    print("snaplab latency, %d operations each, on %s, kernel %s, %d base files, %d files "
          "per layer, load %.2f" % (args.ops, args.filesystem, platform.release(),
                                   args.base_files, args.layer_files, os.getloadavg()[0]))
    reference = backends[-1]
    header = "%-8s %-8s %10s %10s" % ("op", "backend", "p50 ms", "p99 ms")
    if len(backends) > 1:
        header += "   p50 vs %s" % reference
    print(header)
    for op in OPERATIONS:
        for backend in backends:
            row = results[backend][op]
            line = "%-8s %-8s %10.3f %10.3f" % (op, backend, row["p50_ms"], row["p99_ms"])
            if len(backends) > 1:
                line += "   %8.2fx" % (row["p50_ms"] / results[reference][op]["p50_ms"])
            print(line)
    if args.json:
        benchjson.write(args.json, "bench_latency", json_rows(results, backends))
    return 0


if __name__ == "__main__":
    sys.exit(main())
