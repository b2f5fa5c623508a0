#!/usr/bin/env python3
"""What one more container costs on disk: O(N) copies against O(1) CoW.

    python3 benchmarks/bench_storage_cost.py [--snapshots 100] [--image-mib 100]
        [--backends native,overlay,btrfs,zfs,blockfile,blockfile-xfs,erofs]
        [--json OUT] [--markdown OUT]

For each backend, on its own loop-backed filesystem (native, overlay,
blockfile and erofs on ext4, btrfs on btrfs, zfs on a zfs pool — kernel
OpenZFS or zfs-fuse; the row blockfile-xfs is blockfile on xfs, with
reflink), the benchmark commits one image of --image-mib MiB of random (incompressible)
data, then prepares --snapshots active snapshots on it, as a node starting
that many containers of one image does. It reports, per added snapshot:

- the filesystem's own accounting: how many more bytes the filesystem has in
  use (ext4/xfs: statvfs blocks in use; btrfs: `btrfs filesystem usage`
  "Used", data and metadata with their profiles; zfs: `used` of the pool's
  top dataset), after everything is flushed to disk — the figure that
  matters, since it is free space that runs out;
- what Usage() says each active snapshot holds (containerd's number);
- the Prepare latency (p50).

Everything it makes (filesystems, loop devices, pools, a zfs-fuse daemon it
started) is removed at the end, also on failure.
"""

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time

from conformance.filesystems import FilesystemPool
from conformance.inprocess import InProcessTarget
from snaplab import mount as mountlib

import benchjson

MIB = 1024 * 1024
# Each backend on the filesystem containerd users put it on; blockfile twice:
# on ext4 its images are sparse copies, on xfs (reflink) clones.
FILESYSTEM_OF = {"native": "ext4", "overlay": "ext4", "btrfs": "btrfs", "zfs": "zfs",
                 "blockfile": "ext4", "blockfile-xfs": "xfs", "erofs": "ext4"}
# Rows named other than their backend.
BACKEND_OF_ROW = {"blockfile-xfs": "blockfile"}


def filesystem_sizes(image_mib, snapshots):
    """Loop file sizes (MiB, sparse) big enough for every backend's worst case:
    native copies the image for each snapshot."""
    copies = image_mib * (snapshots + 2)
    return {"ext4": copies + copies // 8 + 256, "btrfs": 4 * image_mib + 1024,
            "zfs": 4 * image_mib + 1024, "xfs": 4 * image_mib + 1024}


def backend_options(backend, image_mib):
    """A blockfile scratch with room for the image (its default is 64 MiB)."""
    if backend == "blockfile":
        return {"scratch_size": "%dM" % (image_mib * 3 // 2 + 64)}
    return {}


def flush(mountpoint, fstype):
    """Write everything out, so the accounting below is final."""
    os.sync()
    if fstype in ("zfs", "fuse.zfs"):
        # `used`/`allocated` move when the transaction group syncs; this sync
        # task forces one (zfs-fuse has no `zpool sync`), and changes nothing.
        dataset = mountlib.lookup(mountpoint).source
        subprocess.run(["zfs", "inherit", "snaplab:sync", dataset], check=True)
    elif fstype == "btrfs":
        subprocess.run(["btrfs", "filesystem", "sync", mountpoint], check=True,
                       stdout=subprocess.DEVNULL)


def bytes_in_use(mountpoint, fstype):
    """What the filesystem itself counts as used (see the module docstring)."""
    flush(mountpoint, fstype)
    if fstype == "btrfs":
        out = subprocess.run(["btrfs", "filesystem", "usage", "-b", mountpoint], check=True,
                             capture_output=True, text=True).stdout
        return int(re.search(r"^\s*Used:\s+(\d+)", out, re.MULTILINE).group(1))
    if fstype in ("zfs", "fuse.zfs"):
        # The pool's top dataset counts everything below it, snapshots and
        # metadata included (zfs-fuse's zpool has no parsable `allocated`).
        pool = mountlib.lookup(mountpoint).source.split("/")[0]
        out = subprocess.run(["zfs", "get", "-Hp", "-o", "value", "used", pool], check=True,
                             capture_output=True, text=True).stdout
        return int(out.split()[0])
    st = os.statvfs(mountpoint)
    return (st.f_blocks - st.f_bfree) * st.f_frsize


def write_image(mounts, work, image_mib):
    """The image: 1 MiB files of random data in a few directories."""
    target = os.path.join(work, "image-mnt")
    os.makedirs(target, exist_ok=True)
    mountlib.mount_all(mounts, target)
    try:
        for i in range(image_mib):
            directory = os.path.join(target, "usr", "lib%d" % (i % 8))
            os.makedirs(directory, exist_ok=True)
            with open(os.path.join(directory, "blob-%04d" % i), "wb") as blob:
                blob.write(os.urandom(MIB))
    finally:
        mountlib.unmount_all(target)


def percentile(samples, fraction):
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(round(fraction * (len(ordered) - 1))))]


def bench_backend(row, pool, snapshots, image_mib):
    backend = BACKEND_OF_ROW.get(row, row)
    target = InProcessTarget(backend, FILESYSTEM_OF[row], backend_options(backend, image_mib))
    target.fs = pool.get(target.filesystem)
    directory = tempfile.mkdtemp(prefix="bench-%s-" % backend, dir=target.fs.mountpoint)
    fsroot = target.fs.mountpoint
    fstype = mountlib.lookup(fsroot).fstype
    sn = target.open(os.path.join(directory, "root"))
    try:
        before_image = bytes_in_use(fsroot, fstype)
        write_image(sn.prepare("image-active", ""), directory, image_mib)
        sn.commit("image", "image-active")
        after_image = bytes_in_use(fsroot, fstype)
        prepare_s = []
        for i in range(snapshots):
            started = time.perf_counter()
            sn.prepare("container-%d" % i, "image")
            prepare_s.append(time.perf_counter() - started)
        after_snapshots = bytes_in_use(fsroot, fstype)
        usage = [sn.usage("container-%d" % i).size for i in range(snapshots)]
        for i in range(snapshots):
            sn.remove("container-%d" % i)
        sn.remove("image")
    finally:
        sn.close()
        for where in target.kept_mounts_under(directory):  # erofs's images, after a failure
            mountlib.unmount_all(where)
        problems = target.fs.release_under(directory)  # the zfs root's dataset
        shutil.rmtree(directory, ignore_errors=True)
        if problems:
            raise RuntimeError("; ".join(problems))
    return {"filesystem": "%s (%s)" % (target.filesystem, fstype),
            "image_bytes": after_image - before_image,
            "per_snapshot_bytes": (after_snapshots - after_image) / snapshots,
            "usage_per_snapshot_bytes": sum(usage) / snapshots,
            "prepare_p50_ms": percentile(prepare_s, 0.5) * 1000,
            "prepare_p99_ms": percentile(prepare_s, 0.99) * 1000}


def human(n):
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return "%.1f %s" % (n, unit) if unit != "B" else "%d B" % n
        n /= 1024.0
    return str(n)


def table(results, snapshots, image_mib):
    reference = results.get("native")
    lines = ["Storage cost of %d active snapshots on one committed %d MiB image "
             "(kernel %s)" % (snapshots, image_mib, platform.release()), "",
             "| backend | filesystem | image on disk | each added snapshot (filesystem) "
             "| Usage() per snapshot | native ÷ this | Prepare p50 |",
             "|---|---|---|---|---|---|---|"]
    for backend, row in results.items():
        # How many times less one more snapshot costs than a full copy.
        ratio = ("%.0f×" % (reference["per_snapshot_bytes"] / row["per_snapshot_bytes"])
                 if reference and row["per_snapshot_bytes"] > 0 else "—")
        lines.append("| %s | %s | %s | %s | %s | %s | %.1f ms |" % (
            backend, row["filesystem"], human(row["image_bytes"]),
            human(row["per_snapshot_bytes"]), human(row["usage_per_snapshot_bytes"]), ratio,
            row["prepare_p50_ms"]))
    return "\n".join(lines)


def json_rows(results, image_mib):
    """benchjson rows: what one more snapshot costs on disk against a full
    copy of the image (the peer: its size as the filesystem counts it)."""
    return [benchjson.row("%s per added snapshot, vs a copy of the %d MiB image"
                          % (backend, image_mib), row["per_snapshot_bytes"],
                          row["image_bytes"], "bytes")
            for backend, row in results.items()]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--snapshots", type=int, default=100)
    parser.add_argument("--image-mib", type=int, default=100)
    parser.add_argument("--backends",
                        default="native,overlay,btrfs,zfs,blockfile,blockfile-xfs,erofs")
    parser.add_argument("--fs-dir", help="where the loop files go (default: the temp dir)")
    parser.add_argument("--json", help="also write the figures here (benchmarks/benchjson.py)")
    parser.add_argument("--markdown", help="also write the table here")
    args = parser.parse_args(argv)
    backends = [b for b in args.backends.split(",") if b]
    unknown = [b for b in backends if b not in FILESYSTEM_OF]
    if unknown:
        parser.error("no storage-cost setup for %s (known: %s)" % (
            ", ".join(unknown), ", ".join(FILESYSTEM_OF)))
    pool = FilesystemPool(args.fs_dir, sizes_mib=filesystem_sizes(args.image_mib, args.snapshots))
    results = {}
    try:
        for backend in backends:
            print("%s: %d snapshots on a %d MiB image..." % (backend, args.snapshots,
                                                            args.image_mib), flush=True)
            results[backend] = bench_backend(backend, pool, args.snapshots, args.image_mib)
            print("  %s" % json.dumps(results[backend]), flush=True)
    finally:
        pool.destroy()
    text = table(results, args.snapshots, args.image_mib)
    benchjson.emit(text, "bench_storage_cost", json_rows(results, args.image_mib),
                   args.markdown, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
