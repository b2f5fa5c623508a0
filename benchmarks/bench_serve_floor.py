#!/usr/bin/env python3
"""Where serve's time goes: Stat and Usage through serve, through serve over a no-op backend, and containerd.

    python3 benchmarks/bench_serve_floor.py [--ops 600] [--rounds 10] [--json OUT]

Three services of containerd's snapshots API, each called with the same
client (snaplab_grpc.client.RemoteSnapshotter), in --rounds rotating rounds:

- serve: `snaplab serve` of the native backend on a loop ext4;
- serve, no-op backend: the same server code (snaplab_grpc.server's Server,
  servicer and conversions) over a snapshotter that answers Stat and Usage
  with constants and touches nothing: what grpcio and serve's own layer
  cost, without snaplab's backend;
- containerd: containerd 1.6's native plugin in a private containerd
  (conformance/containerd.py), its root on the same loop ext4, under a lease.

Stat and Usage of a committed snapshot are metadata reads everywhere, so
the no-op row is the floor of serve's latency as it is built: when it is
above containerd's whole call, no change to snaplab's backend can reach
containerd's latency. Ratios: p50 and p99 against containerd.

Everything started or made is stopped and removed at the end, also on failure.
"""

import argparse
import contextlib
import os
import platform
import subprocess
import sys
import tempfile
import time

from bench_containerd import make_base, percentile, stop_containerd
from conformance.containerd import Containerd, unavailable_reason
from conformance.filesystems import FilesystemPool
from conformance.serve import served_snapshotter
from snaplab.types import Info, Kind, Usage

import benchjson

NAMESPACE = "snaplab-bench-floor"
OPERATIONS = ("stat", "usage")
VARIANTS = ("serve", "serve, no-op backend", "containerd")
READY_TIMEOUT_S = 30


class NoopSnapshotter:
    """Stat and Usage answered with constants: all the servicer calls here."""

    def stat(self, key):
        return Info(kind=Kind.COMMITTED, name=key, created=1, updated=1)

    def usage(self, key):
        return Usage(size=4096, inodes=1)

    # What serve asks of every snapshotter before it is ready.
    def remove_data_in_background(self):
        """There is no data here to delete."""

    def capabilities(self):
        return []


def serve_noop(socket_path):
    """The child's part: serve the no-op snapshotter until SIGTERM."""
    from snaplab_grpc import server  # needs grpcio
    server.configure_logging()
    return server.serve(NoopSnapshotter(), server.SocketPath(socket_path), "no-op snapshotter")


@contextlib.contextmanager
def noop_served():
    """A RemoteSnapshotter to a child process serving the no-op snapshotter."""
    from snaplab_grpc.client import RemoteSnapshotter
    directory = tempfile.mkdtemp(prefix="snaplab-bench-floor-")
    socket_path = os.path.join(directory, "serve.sock")
    child = subprocess.Popen(  # pylint: disable=consider-using-with
        [sys.executable, os.path.abspath(__file__), "--serve-noop", socket_path],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not os.path.exists(socket_path):
            if child.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the no-op serve did not start: %s" % child.stderr.read())
            time.sleep(0.05)
        with contextlib.closing(RemoteSnapshotter(socket_path, "noop")) as sn:
            yield sn
    finally:
        child.terminate()
        try:
            child.wait(10)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
        child.stderr.close()
        if os.path.exists(socket_path):
            os.unlink(socket_path)
        os.rmdir(directory)


def bench(pool, ops, rounds, base_files):
    fs = pool.get("ext4")
    work = tempfile.mkdtemp(prefix="bench-floor-", dir=fs.mountpoint)
    timings = {variant: {op: [] for op in OPERATIONS} for variant in VARIANTS}
    with contextlib.ExitStack() as cleanup:
        services = {"serve": cleanup.enter_context(
            served_snapshotter(os.path.join(work, "serve"), "native"))}
        services["serve, no-op backend"] = cleanup.enter_context(noop_served())
        daemon = Containerd(plugin_roots={"native": os.path.join(work, "containerd")})
        cleanup.callback(stop_containerd, daemon)
        daemon.start()
        services["containerd"] = cleanup.enter_context(
            daemon.snapshotter("native", NAMESPACE, daemon.create_lease(NAMESPACE)))
        for variant in ("serve", "containerd"):
            make_base(services[variant], work, base_files)
        clock = time.perf_counter
        for r in range(rounds):
            order = VARIANTS[r % len(VARIANTS):] + VARIANTS[:r % len(VARIANTS)]
            for variant in order:
                sn = services[variant]
                for _ in range(ops // rounds):
                    t0 = clock()
                    sn.stat("base")
                    t1 = clock()
                    sn.usage("base")
                    t2 = clock()
                    timings[variant]["stat"].append(t1 - t0)
                    timings[variant]["usage"].append(t2 - t1)
        for variant in ("serve", "containerd"):
            services[variant].remove("base")
    return {variant: {op: {"p50_ms": percentile(samples, 0.50) * 1000,
                           "p99_ms": percentile(samples, 0.99) * 1000}
                      for op, samples in timings[variant].items()}
            for variant in VARIANTS}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ops", type=int, default=600)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--base-files", type=int, default=16)
    parser.add_argument("--json", help="also write the figures here (benchmarks/benchjson.py)")
    parser.add_argument("--serve-noop", metavar="SOCKET", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_noop:
        return serve_noop(args.serve_noop)
    reason = unavailable_reason()
    if reason:
        print("serve floor benchmark not run: %s" % reason)
        return 1
    load_before = os.getloadavg()[0]
    pool = FilesystemPool()
    try:
        results = bench(pool, args.ops, args.rounds, args.base_files)
    finally:
        pool.destroy()
    print("Stat and Usage of a committed snapshot, %d each, kernel %s; load average (1 min) "
          "%.2f before, %.2f after" % (args.ops, platform.release(), load_before,
                                        os.getloadavg()[0]))
    print("| op | variant | p50 / p99 | p50 ÷ containerd | p99 ÷ containerd |")
    print("|---|---|---|---|---|")
    rows = []
    for op in OPERATIONS:
        peer = results["containerd"][op]
        for variant in VARIANTS:
            mine = results[variant][op]
            print("| %s | %s | %.3f / %.3f ms | %.2f× | %.2f× |" % (
                op, variant, mine["p50_ms"], mine["p99_ms"], mine["p50_ms"] / peer["p50_ms"],
                mine["p99_ms"] / peer["p99_ms"]))
            if variant != "containerd":
                rows += [benchjson.row("%s %s, %s vs containerd" % (op, stat, variant),
                                       mine[stat + "_ms"], peer[stat + "_ms"], "ms", goal=1.0)
                         for stat in ("p50", "p99")]
    if args.json:
        benchjson.write(args.json, "bench_serve_floor", rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
