#!/usr/bin/env python3
"""A container's snapshot with a uid/gid mapping: idmapped overlay against chown remap.

    python3 benchmarks/bench_remap.py [--files 10000] [--rounds 5]
        [--backends overlay,erofs,native,btrfs] [--json OUT] [--markdown OUT]

A user-namespaced container needs its image's files to show host ids.
overlay and erofs do it with idmapped lowerdirs (nothing on disk changes); native
and btrfs chown every entry of the new snapshot (snaplab/idmap.py), as
containerd's client does for a snapshotter without the remap-ids
capability (containerd reports 0.1 s against 5-39 s). For each backend, on
its loop filesystem (overlay, erofs and native on ext4, btrfs on btrfs), the
benchmark commits an image of --files small files (100 to a directory),
then --rounds times: Prepare of a child with the mapping labels, and the
mount of its Mounts (where the idmapped mounts are made), timed together;
and the same without labels, so the remap's own cost shows. It reports
p50s; the ratio rows are each idmapped backend over each chown remap.

Everything it makes (filesystems, loop devices) is removed at the end, also
on failure.
"""

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time

from conformance.filesystems import FilesystemPool
from conformance.inprocess import InProcessTarget
from snaplab import mount as mountlib

import benchjson

FILESYSTEM_OF = {"overlay": "ext4", "erofs": "ext4", "native": "ext4", "btrfs": "btrfs"}
# Those that serve the mapping with idmapped lowers; the others chown.
IDMAPPED = ("overlay", "erofs")
MAPPING = {"containerd.io/snapshot/uidmapping": "0:100000:65536",
           "containerd.io/snapshot/gidmapping": "0:100000:65536"}


def write_image(mounts, directory, files):
    with mountlib.temporary_mount(mounts, parent=directory) as target:
        for number in range(files):
            sub = os.path.join(target, "d%03d" % (number // 100))
            if number % 100 == 0:
                os.mkdir(sub)
            with open(os.path.join(sub, "f%05d" % number), "wb") as data:
                data.write(b"x" * (number % 512))


def bench_backend(backend, pool, files, rounds):
    target = InProcessTarget(backend, FILESYSTEM_OF[backend])
    target.fs = pool.get(target.filesystem)
    directory = tempfile.mkdtemp(prefix="bench-remap-%s-" % backend, dir=target.fs.mountpoint)
    sn = target.open(os.path.join(directory, "root"))
    seconds = {"mapped": [], "plain": []}
    try:
        write_image(sn.prepare("image-active", ""), directory, files)
        sn.commit("image", "image-active")
        for number in range(rounds):
            for kind, labels in (("mapped", MAPPING), ("plain", None)):
                key = "%s-%d" % (kind, number)
                os.sync()  # each round starts from the same disk state
                started = time.perf_counter()
                mounts = sn.prepare(key, "image", labels=labels)
                with mountlib.temporary_mount(mounts, parent=directory) as mounted:
                    elapsed = time.perf_counter() - started
                    if kind == "mapped":  # the ids shown are the host's
                        owner = os.stat(os.path.join(mounted, "d000", "f00000")).st_uid
                        assert owner == 100000, owner
                seconds[kind].append(elapsed)
                sn.remove(key)
        sn.remove("image")
    finally:
        sn.close()
        for where in target.kept_mounts_under(directory):  # erofs's images, after a failure
            mountlib.unmount_all(where)
        problems = target.fs.release_under(directory)
        shutil.rmtree(directory, ignore_errors=True)
        if problems:
            raise RuntimeError("; ".join(problems))
    return {kind: statistics.median(values) for kind, values in seconds.items()}


def table(results, files, rounds):
    load = "load average %.2f %.2f %.2f" % os.getloadavg()
    lines = ["Prepare + mount of a child of a %d-file image, p50 of %d rounds (%s)"
             % (files, rounds, load), "",
             "| backend | with mapping labels | without | the mapping's cost |",
             "|---|---|---|---|"]
    for backend, result in results.items():
        how = "idmapped" if backend in IDMAPPED else "chown remap"
        lines.append("| %s (%s) | %.3f s | %.3f s | %+.3f s |" % (
            backend, how, result["mapped"], result["plain"], result["mapped"] - result["plain"]))
    return "\n".join(lines)


def json_rows(results, files):
    return [benchjson.row("mapped Prepare+mount of a %d-file image, %s idmapped vs %s chown "
                          "remap" % (files, idmapped, chowned), results[idmapped]["mapped"],
                          results[chowned]["mapped"], "s", better="lower")
            for idmapped in IDMAPPED if idmapped in results
            for chowned in results if chowned not in IDMAPPED]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=10000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--backends", default="overlay,erofs,native,btrfs")
    parser.add_argument("--fs-dir", help="where the loop images go (default: the temp dir)")
    parser.add_argument("--json", help="also write the figures here")
    parser.add_argument("--markdown", help="also write the table here")
    args = parser.parse_args(argv)
    backends = [b for b in args.backends.split(",") if b]
    unknown = [b for b in backends if b not in FILESYSTEM_OF]
    if unknown:
        parser.error("no remap setup for %s (known: %s)" % (
            ", ".join(unknown), ", ".join(FILESYSTEM_OF)))
    pool = FilesystemPool(args.fs_dir)
    results = {}
    try:
        for backend in backends:
            print("%s: %d files, %d rounds..." % (backend, args.files, args.rounds), flush=True)
            results[backend] = bench_backend(backend, pool, args.files, args.rounds)
    finally:
        pool.destroy()
    benchjson.emit(table(results, args.files, args.rounds), "bench_remap",
                   json_rows(results, args.files), args.markdown, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
