#!/usr/bin/env python3
"""btrfs subvolume operations: the ioctls the btrfs backend calls vs btrfs-progs.

    python3 benchmarks/bench_btrfs_ioctl.py [--ops 200] [--json OUT]

On a loop-backed btrfs that it makes and removes, the benchmark does --ops
of each operation twice, once through snaplab.backends.btrfs (one ioctl
each) and once by running the btrfs-progs command that does the same:

    create    BTRFS_IOC_SUBVOL_CREATE       btrfs subvolume create P
    snapshot  BTRFS_IOC_SNAP_CREATE_V2      btrfs subvolume snapshot BASE P
    set-ro    BTRFS_IOC_SUBVOL_SETFLAGS     btrfs property set P ro true
    id        BTRFS_IOC_INO_LOOKUP          btrfs inspect-internal rootid P
    delete    BTRFS_IOC_SNAP_DESTROY        btrfs subvolume delete P

and prints p50/p99 in milliseconds for both and the p50 ratio. The snapshot
source holds --base-files files of 4 KiB, like a small layer.
"""

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time

from conformance.filesystems import FilesystemPool
from snaplab.backends import btrfs

import benchjson

OPERATIONS = ("create", "snapshot", "set-ro", "id", "delete")


def percentile(samples, fraction):
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, max(0, int(round(fraction * (len(ordered) - 1)))))]


def progs(*argv):
    subprocess.run(["btrfs", *argv], check=True, stdout=subprocess.DEVNULL)


IOCTL = {
    "create": lambda base, path: btrfs.create_subvolume(path),
    "snapshot": lambda base, path: btrfs.snapshot_subvolume(base, path),
    "set-ro": lambda base, path: btrfs.set_readonly(path),
    "id": lambda base, path: btrfs.subvolume_id(path),
    "delete": lambda base, path: btrfs.destroy_subvolume(path),
}

PROGS = {
    "create": lambda base, path: progs("subvolume", "create", path),
    "snapshot": lambda base, path: progs("subvolume", "snapshot", base, path),
    "set-ro": lambda base, path: progs("property", "set", path, "ro", "true"),
    "id": lambda base, path: subprocess.run(["btrfs", "inspect-internal", "rootid", path],
                                            check=True, stdout=subprocess.PIPE),
    "delete": lambda base, path: progs("subvolume", "delete", path),
}


def run(calls, directory, ops, base):
    """Time `ops` of each operation with `calls`; every subvolume is deleted."""
    timings = {op: [] for op in OPERATIONS}
    clock = time.perf_counter
    created = [os.path.join(directory, "created-%d" % i) for i in range(ops)]
    snapshots = [os.path.join(directory, "snapshot-%d" % i) for i in range(ops)]
    for op, paths in (("create", created), ("snapshot", snapshots), ("set-ro", snapshots),
                      ("id", snapshots)):
        for path in paths:
            t0 = clock()
            calls[op](base, path)
            timings[op].append(clock() - t0)
    for path in snapshots + created:
        t0 = clock()
        calls["delete"](base, path)
        timings["delete"].append(clock() - t0)
    return {op: {"p50_ms": percentile(s, 0.50) * 1000, "p99_ms": percentile(s, 0.99) * 1000,
                 "count": len(s)} for op, s in timings.items()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ops", type=int, default=200)
    parser.add_argument("--base-files", type=int, default=16)
    parser.add_argument("--json", help="also write the figures here (benchmarks/benchjson.py)")
    args = parser.parse_args(argv)
    pool = FilesystemPool()
    results = {}
    try:
        fs = pool.get("btrfs")
        work = tempfile.mkdtemp(prefix="bench-", dir=fs.mountpoint)
        base = os.path.join(work, "base")
        btrfs.create_subvolume(base)
        for i in range(args.base_files):
            with open(os.path.join(base, "file-%03d" % i), "wb") as f:
                f.write(os.urandom(4096))
        for name, calls in (("ioctl", IOCTL), ("btrfs-progs", PROGS)):
            directory = os.path.join(work, name)
            os.mkdir(directory)
            try:
                results[name] = run(calls, directory, args.ops, base)
            finally:  # also after a failure: no subvolume stays in the way of destroy()
                btrfs.delete_subvolume_tree(directory)
        btrfs.delete_subvolume_tree(base)
    finally:
        pool.destroy()
    print("btrfs subvolume operations, %d each, on a loop btrfs, kernel %s, %s"
          % (args.ops, platform.release(), progs_version()))
    print("%-9s %12s %12s %14s %14s %9s" % ("op", "ioctl p50", "ioctl p99", "progs p50",
                                          "progs p99", "p50 ratio"))
    for op in OPERATIONS:
        i, p = results["ioctl"][op], results["btrfs-progs"][op]
        print("%-9s %9.3f ms %9.3f ms %11.3f ms %11.3f ms %8.1fx" % (
            op, i["p50_ms"], i["p99_ms"], p["p50_ms"], p["p99_ms"], p["p50_ms"] / i["p50_ms"]))
    if args.json:
        benchjson.write(args.json, "bench_btrfs_ioctl", [
            benchjson.row("%s %s, ioctl vs btrfs-progs" % (op, stat),
                          results["ioctl"][op][stat + "_ms"],
                          results["btrfs-progs"][op][stat + "_ms"], "ms")
            for op in OPERATIONS for stat in ("p50", "p99")])
    return 0


def progs_version():
    try:
        return subprocess.run(["btrfs", "--version"], capture_output=True,
                              text=True).stdout.strip()
    except OSError:
        return "btrfs-progs not found"


if __name__ == "__main__":
    sys.exit(main())
