#!/usr/bin/env python3
"""Apply-layer throughput against `tar -x`, and Usage against `du -s`, on one filesystem.

    python3 benchmarks/bench_apply_usage.py [--layer-mib 200] [--rounds 5]
        [--compressions none,gzip,zstd] [--files 100000] [--at DIR] [--only apply|usage]
        [--json OUT] [--markdown OUT]

Everything happens on one filesystem: a loop-backed ext4 the benchmark makes
(and removes, also on failure), or a directory given with --at.

Apply. A generated, uncompressed PAX layer of --layer-mib MiB shaped like an
image layer (thousands of files of mixed sizes, a few big ones, nested
directories, owners and modes, symlinks, hardlinks; file data cut from a
pool that gzip halves, so that decompression costs what it does on real
layers), and a small second layer on top of it with whiteouts, an opaque
directory and replaced files, each also gzip- and zstd-compressed by the
gzip and zstd programs (--compressions). snaplab applies them two ways:
layers.apply_layer (`snaplab apply-layer`: a scan, a dry run against the
snapshot, the write) to an active overlay snapshot (layer 2 to a child of
layer 1 committed), and layers.apply_layers (`snaplab apply-layers`, the
Ansible module: a scan, then the write in one pass into a snapshot of its
own, committed; and with the DiffID given, --diff-id, containerd's case: the
write alone; the base layer only, as the top's plan would scan the base
again); GNU tar (as root: owners and modes kept; -z, --zstd) extracts the
same files into a plain directory of the same filesystem. tar does not
interpret whiteouts (it writes the .wh. files as they are): the layer-2 row
compares the cost of the same bytes, not the same result. Fairness: before
each timed apply, everything is synced and the page cache dropped (echo 3 >
/proc/sys/vm/drop_caches), so both read the layer from disk; the order of
the appliers turns by round. Two times are kept: until the extractor
returns, and until syncfs(2) of the filesystem returns (data on disk).
Throughput is uncompressed layer bytes / time; the median of the rounds is
reported, with the CPU seconds (user + system, threads and waited-for
children: gzip, zstd) each spent. --json writes the rows in the benchmarks'
common form (benchmarks/benchjson.py): ratio is snaplab ÷ tar.

Usage. An active overlay snapshot whose upper directory holds --files files
(sizes 0-16 KiB and a few larger, 100 per directory, 1% hardlinked, some
symlinks). snaplab's Usage (the backend's usage(): fsutil.disk_usage of the
upper directory, size and inodes in one walk) against `du -s -B1` and
`du -s --inodes` of that directory, warm (after a first untimed pass) and
cold (caches dropped before each run), median of the rounds. The results are
checked equal (du counts hardlinks once, as continuity's DiskUsage). Then the
snapshot is committed and measured again: a committed snapshot's Usage is
stored at Commit (as containerd's), du still walks.
"""

import argparse
import base64
import inspect
import ctypes
import io
import os
import platform
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time

from conformance.filesystems import FilesystemPool
from snaplab import open_snapshotter, layers

import benchjson

MIB = 1024 * 1024
_libc = ctypes.CDLL(None, use_errno=True)


# -- fairness helpers -------------------------------------------------------


def can_drop_caches():
    return os.access("/proc/sys/vm/drop_caches", os.W_OK)


def settle(drop):
    """Write everything out and, if `drop`, empty the page cache, dentries and inodes."""
    os.sync()
    if drop:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")


def syncfs(path):
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if _libc.syncfs(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), path)
    finally:
        os.close(fd)


def cpu_seconds():
    """CPU time (user + system) of this process and of its waited-for children
    so far: what a run costs whatever else the machine is doing."""
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        total += usage.ru_utime + usage.ru_stime
    return total


def timed(action, fs_root):
    """(seconds until `action` returns, seconds until its data is on disk,
    CPU seconds until it returned)."""
    clock = time.perf_counter
    cpu = cpu_seconds()
    started = clock()
    action()
    returned = clock()
    cpu = cpu_seconds() - cpu
    syncfs(fs_root)
    return returned - started, clock() - started, cpu


# -- the layers --------------------------------------------------------------


def _file_size(rng):
    """Sizes as in a distribution's files: mostly small, a tail of larger ones."""
    pick = rng.random()
    if pick < 0.55:
        return rng.randint(0, 2048)
    if pick < 0.85:
        return rng.randint(2048, 16384)
    if pick < 0.97:
        return rng.randint(16384, 131072)
    return rng.randint(131072, 524288)


def content_pool(rng, size=8 * MIB):
    """Bytes that compress about as a distribution's files do (gzip -6 to
    about half): blocks of random bytes (already compressed data), of text
    (base64) and of repeated patterns (tables, padding). File data is cut
    from it, so that the gzip and zstd rows decompress realistic data."""
    blocks = []
    for _ in range(size // 4096):
        pick = rng.random()
        if pick < 0.3:
            blocks.append(os.urandom(4096))
        elif pick < 0.7:
            blocks.append(base64.b64encode(os.urandom(3072)))
        else:
            blocks.append(os.urandom(rng.randint(8, 64)) * 4096)
    return b"".join(block[:4096] for block in blocks)


class LayerBuilder:
    """Writes a PAX tar entry by entry (directories before what they hold)."""

    def __init__(self, path, seed):
        self.tar = tarfile.open(path, "w", format=tarfile.PAX_FORMAT)
        self.rng = random.Random(seed)
        self.mtime = 1700000000
        self.pool = content_pool(self.rng)

    def _info(self, name, kind, mode, uid=0):
        info = tarfile.TarInfo(name)
        info.type = kind
        info.mode = mode
        info.uid = info.gid = uid
        info.uname = info.gname = "root" if uid == 0 else ""
        info.mtime = self.mtime + self.rng.randint(0, 10**6)
        return info

    def directory(self, name, mode=0o755):
        self.tar.addfile(self._info(name, tarfile.DIRTYPE, mode))

    def file(self, name, size, mode=0o644, uid=0):
        info = self._info(name, tarfile.REGTYPE, mode, uid)
        info.size = size
        self.tar.addfile(info, io.BytesIO(self.data(size)))
        return size

    def data(self, size):
        if size > len(self.pool):
            return b"".join(self.data(min(size - done, len(self.pool)))
                            for done in range(0, size, len(self.pool)))
        start = self.rng.randint(0, len(self.pool) - size)
        return self.pool[start:start + size]

    def symlink(self, name, target):
        info = self._info(name, tarfile.SYMTYPE, 0o777)
        info.linkname = target
        self.tar.addfile(info)

    def hardlink(self, name, target):
        info = self._info(name, tarfile.LNKTYPE, 0o644)
        info.linkname = target
        self.tar.addfile(info)

    def close(self):
        self.tar.close()


def make_layers(directory, layer_mib, seed=6):
    """(base layer path, its entry counts, top layer path, its counts)."""
    builders = []
    try:
        return _make_layers(directory, layer_mib, seed, builders)
    finally:  # an open tar on the loop filesystem would keep it from unmounting
        for builder in builders:
            builder.close()


def _make_layers(directory, layer_mib, seed, builders):
    rng = random.Random(seed)
    base_path = os.path.join(directory, "layer-base.tar")
    base = LayerBuilder(base_path, seed)
    builders.append(base)
    budget = layer_mib * MIB
    big_files = 4
    big_size = budget * 2 // 5 // big_files  # 40% in a few big files (libraries, a database)
    small_budget = budget - big_files * big_size
    top_dirs = ["usr", "usr/bin", "usr/lib", "usr/share", "etc", "var", "var/lib", "opt"]
    for name in top_dirs:
        base.directory(name)
    dirs = list(top_dirs)
    files = []
    counts = {"files": 0, "dirs": len(dirs), "symlinks": 0, "hardlinks": 0}
    written = 0
    while written < small_budget:
        if rng.random() < 0.06 or len(dirs) < 40:  # a new directory, up to 5 deep
            parent = rng.choice([d for d in dirs if d.count("/") < 4])
            name = "%s/d%04d" % (parent, len(dirs))
            base.directory(name, rng.choice([0o755, 0o755, 0o750, 0o700]))
            dirs.append(name)
            counts["dirs"] += 1
            continue
        name = "%s/f%06d%s" % (rng.choice(dirs), len(files), rng.choice([".so", ".py", ".txt", ""]))
        size = min(_file_size(rng), small_budget - written)
        written += base.file(name, size, rng.choice([0o644, 0o644, 0o755, 0o600]),
                             rng.choice([0, 0, 0, 1000]))
        files.append(name)
        counts["files"] += 1
    for i in range(big_files):
        written += base.file("usr/lib/big-%d.bin" % i, big_size)
        counts["files"] += 1
    for i in range(max(1, counts["files"] // 20)):  # symlinks, relative and absolute
        target = rng.choice(files)
        link = "%s/l%05d" % (rng.choice(dirs), i)
        base.symlink(link, "/" + target if i % 2 else os.path.relpath(target, os.path.dirname(link)))
        counts["symlinks"] += 1
    linked = rng.sample(files, max(1, counts["files"] // 40))
    for i, target in enumerate(linked):
        base.hardlink("%s/h%05d" % (rng.choice(dirs), i), target)
        counts["hardlinks"] += 1
    base.close()
    counts["bytes"] = os.path.getsize(base_path)

    top_path = os.path.join(directory, "layer-top.tar")
    top = LayerBuilder(top_path, seed + 1)
    builders.append(top)
    top_counts = {"replaced files": 0, "whiteouts": 0, "opaque dirs": 1}
    for parent in sorted({os.path.dirname(f) for f in files[:400]}):
        top.directory(parent)
    for name in rng.sample(files, min(200, len(files))):  # updated files (a package upgrade)
        top.file(name, _file_size(rng))
        top_counts["replaced files"] += 1
    gone = set()
    for name in rng.sample(files, min(40, len(files))):  # deleted files
        if name not in gone:
            top.file(os.path.join(os.path.dirname(name), ".wh." + os.path.basename(name)), 0)
            gone.add(name)
            top_counts["whiteouts"] += 1
    opaque = dirs[len(dirs) // 2]  # a directory emptied and refilled
    top.file(opaque + "/.wh..wh..opq", 0)
    for i in range(20):
        top.file("%s/new-%02d" % (opaque, i), _file_size(rng))
    top.close()
    top_counts["bytes"] = os.path.getsize(top_path)
    return base_path, counts, top_path, top_counts


# -- apply ---------------------------------------------------------------------


def upper_of(sn, key):
    """The directory an overlay snapshot writes to (a bind source without a parent)."""
    (mount,) = sn.mounts(key)
    if mount.type == "bind":
        return mount.source
    for option in mount.options:
        if option.startswith("upperdir="):
            return option[len("upperdir="):]
    raise RuntimeError("%s is not an overlay snapshot with an upper directory" % key)


# How each compression is made from the uncompressed layer, and how tar reads it.
COMPRESSIONS = {
    "none": (None, ".tar", []),
    "gzip": (["gzip", "-6", "-c", "-n"], ".tar.gz", ["-z"]),
    "zstd": (["zstd", "-3", "-c", "-q"], ".tar.zst", ["--zstd"]),
}


def compress_layers(paths, compressions):
    """{compression: [paths]}: the layers made in each compression asked for."""
    made = {}
    for compression in compressions:
        program, suffix, _tar_options = COMPRESSIONS[compression]
        made[compression] = []
        for path in paths:
            if program is None:
                made[compression].append(path)
                continue
            target = path[:-len(".tar")] + suffix
            with open(path, "rb") as source, open(target, "wb") as out:
                subprocess.run(program, stdin=source, stdout=out, check=True)
            made[compression].append(target)
    return made


def bench_apply(sn, work, fs_root, tars, rounds, drop):
    """{(compression, layer, applier): [(returned s, on disk s, CPU s)]} for
    `tars` {compression: (base, top)}. apply_layer: the base to an active
    snapshot, the top to a child of it committed; apply_layers: the base
    unpacked into a snapshot of its own, committed (the top is not: its
    plan would scan the base again), scanned first or, its DiffID given
    as an image config gives it, in one pass; tar -x: both into a plain
    directory.
    The order of the appliers turns by round."""
    samples = {}

    def measure(compression, which, applier, action):
        settle(drop)
        samples.setdefault((compression, which, applier), []).append(timed(action, fs_root))

    def run_apply_layer(r, compression, base_tar, top_tar):
        key = "apply-%d-%s" % (r, compression)
        sn.prepare(key, "")
        measure(compression, "base", "apply_layer", lambda: layers.apply_layer(sn, key, base_tar))
        sn.commit("base-" + key, key)
        sn.prepare(key + "-top", "base-" + key)
        measure(compression, "top", "apply_layer",
                lambda: layers.apply_layer(sn, key + "-top", top_tar))
        sn.remove(key + "-top")
        sn.remove("base-" + key)

    def run_apply_layers(_r, compression, base_tar, _top_tar, diff_ids=None):
        applied = []
        applier = "apply_layers" if diff_ids is None else "apply_layers, DiffID given"
        given = {} if diff_ids is None else {"diff_ids": diff_ids}  # an older snaplab has none
        measure(compression, "base", applier, lambda: applied.extend(
            layers.apply_layers(sn, [base_tar], **given)))
        assert applied[0].applied, "the layer was there already: nothing was measured"
        sn.remove(applied[0].chain_id)

    base_diff_ids = {}  # what an image config lists, known before (not timed)

    def run_apply_layers_given(r, compression, base_tar, top_tar):
        if base_tar not in base_diff_ids:
            base_diff_ids[base_tar] = [layers.inspect_layer(base_tar).diff_id]
        run_apply_layers(r, compression, base_tar, top_tar, base_diff_ids[base_tar])

    def run_tar(r, compression, base_tar, top_tar):
        target = tempfile.mkdtemp(prefix="tar-%d-" % r, dir=work)
        options = COMPRESSIONS[compression][2]
        for which, tar_path in (("base", base_tar), ("top", top_tar)):
            measure(compression, which, "tar", lambda: subprocess.run(
                ["tar", "-x"] + options + ["-f", tar_path, "-C", target], check=True))
        shutil.rmtree(target)

    runs = [run_apply_layer, run_apply_layers, run_apply_layers_given, run_tar]
    if "diff_ids" not in inspect.signature(layers.apply_layers).parameters:
        runs.remove(run_apply_layers_given)  # an older snaplab, measured for comparison
    for r in range(rounds):
        for compression, (base_tar, top_tar) in tars.items():
            for run in runs[r % len(runs):] + runs[:r % len(runs)]:
                run(r, compression, base_tar, top_tar)
            print("  apply round %d %s: %s" % (r, compression, ", ".join(
                "%s/%s %.2fs" % (which, applier, times[-1][0])
                for (comp, which, applier), times in samples.items() if comp == compression)),
                flush=True)
    return samples


# -- usage ---------------------------------------------------------------------


def fill_tree(directory, files, seed=7):
    """`files` files (100 a directory), 1% hardlinks and 1% symlinks among them."""
    rng = random.Random(seed)
    data = os.urandom(1 << 20)
    made = []
    for i in range(files):
        sub = os.path.join(directory, "d%03d" % (i // 10000), "e%03d" % (i // 100 % 100))
        if i % 100 == 0:
            os.makedirs(sub, exist_ok=True)
        path = os.path.join(sub, "f%06d" % i)
        if i % 100 == 50 and made:
            os.link(rng.choice(made), path)
        elif i % 100 == 75:
            os.symlink("f%06d" % (i - 1), path)
        else:
            size = _file_size(rng) // 8 if rng.random() < 0.95 else _file_size(rng)
            with open(path, "wb") as f:
                f.write(data[:size])
            made.append(path)


def run_du(directory, *options):
    out = subprocess.run(["du", "-s"] + list(options) + [directory], check=True,
                         capture_output=True, text=True).stdout
    return int(out.split()[0])


def bench_usage(sn, work, files, rounds, drop):
    key = "usage-%d" % files
    sn.prepare(key, "")
    upper = upper_of(sn, key)
    started = time.perf_counter()
    fill_tree(upper, files)
    print("  %d files written in %.1f s" % (files, time.perf_counter() - started), flush=True)
    usage = sn.usage(key)
    checks = {"size": (usage.size, run_du(upper, "-B1")),
              "inodes": (usage.inodes, run_du(upper, "--inodes"))}
    tools = {"snaplab": lambda: sn.usage(key),  # key: read when called
             "du -s": lambda: run_du(upper, "-B1"),
             "du -s --inodes": lambda: run_du(upper, "--inodes")}
    results = {}
    clock = time.perf_counter
    for cache in ("warm", "cold", "committed"):
        if cache == "cold" and not drop:
            continue
        if cache == "committed":
            # Commit stores the usage (as containerd): Usage no longer walks.
            sn.commit(key + "-committed", key)
            key += "-committed"
        samples = {tool: [] for tool in tools}
        for r in range(rounds):
            names = list(tools) if r % 2 == 0 else list(tools)[::-1]
            for tool in names:
                if cache == "cold":
                    settle(True)
                else:
                    tools[tool]()  # warm: the tree's inodes are in memory
                cpu = cpu_seconds()
                started = clock()
                tools[tool]()
                samples[tool].append((clock() - started, cpu_seconds() - cpu))
        results[cache] = samples
        print("  usage %s: %s" % (cache, ", ".join(
            "%s %.3fs" % (tool, statistics.median(t[0] for t in s))
            for tool, s in samples.items())), flush=True)
    sn.remove(key)
    return checks, results


# -- report ----------------------------------------------------------------------


APPLY_GOALS = {"returned": 0.7, "on disk": 0.9}  # throughput, snaplab ÷ tar
APPLY_CPU_GOAL = 2.0  # CPU seconds, snaplab ÷ tar


def apply_rows(samples, sizes):
    """The rows of the JSON output (ratios: snaplab ÷ tar), from bench_apply's
    samples and the uncompressed size of each layer {"base": B, "top": B}."""
    rows = []
    for (compression, which, applier), times in sorted(samples.items()):
        if applier == "tar":
            continue
        peer = samples[(compression, which, "tar")]
        mib = sizes[which] / MIB
        what = "apply %s layer (%s), %s" % (which, compression, applier)
        for index, until in ((0, "returned"), (1, "on disk")):
            ours = mib / statistics.median(t[index] for t in times)
            theirs = mib / statistics.median(t[index] for t in peer)
            rows.append(benchjson.row("%s, until %s" % (what, until), ours, theirs, "MiB/s",
                                      APPLY_GOALS[until], "higher"))
        ours = statistics.median(t[2] for t in times)
        theirs = statistics.median(t[2] for t in peer)
        rows.append(benchjson.row("%s, CPU" % what, ours, theirs, "s", APPLY_CPU_GOAL, "lower"))
    return rows


def apply_table(rows):
    """The apply rows as a Markdown table."""
    lines = ["| what | snaplab | tar -x | snaplab ÷ tar | goal |", "|---|---|---|---|---|"]
    for row in rows:
        lines.append("| %s | %.3g %s | %.3g %s | %.2f× | %s %s× |" % (
            row["what"], row["snaplab"], row["unit"], row["peer"], row["unit"], row["ratio"],
            "≥" if row["better"] == "higher" else "≤", row["goal"]))
    return "\n".join(lines)


def usage_table(results, checks):
    lines = ["| snapshot, cache | snaplab usage | du -s | du -s --inodes "
             "| snaplab ÷ du -s (goal ≤ 1.2) | snaplab ÷ du --inodes | CPU s: snaplab / du -s |",
             "|---|---|---|---|---|---|---|"]
    figures = {}
    labels = {"warm": "active, warm", "cold": "active, cold",
              "committed": "committed, warm (Usage stored at Commit)"}
    for cache, samples in results.items():
        m = {tool: statistics.median(t[0] for t in s) for tool, s in samples.items()}
        cpu = {tool: statistics.median(t[1] for t in s) for tool, s in samples.items()}
        figures[cache] = dict(m, ratio_du=m["snaplab"] / m["du -s"],
                              ratio_du_inodes=m["snaplab"] / m["du -s --inodes"],
                              cpu_snaplab=cpu["snaplab"], cpu_du=cpu["du -s"])
        lines.append("| %s | %.1f ms | %.1f ms | %.1f ms | %.3f× | %.3f× | %.2f / %.2f |" % (
            labels[cache], m["snaplab"] * 1000, m["du -s"] * 1000, m["du -s --inodes"] * 1000,
            figures[cache]["ratio_du"], figures[cache]["ratio_du_inodes"], cpu["snaplab"],
            cpu["du -s"]))
    same = all(a == b for a, b in checks.values())
    lines.append("")
    lines.append("Same result: %s (snaplab size %d B, inodes %d; du %d B, %d inodes)" % (
        "yes" if same else "NO", checks["size"][0], checks["inodes"][0], checks["size"][1],
        checks["inodes"][1]))
    return "\n".join(lines), figures, same


def usage_rows(figures):
    """The Usage rows in benchjson's form: snaplab's median seconds against
    du -s's, per cache state measured."""
    goals = {"warm": 1.2}  # issue 17: warm within 1.2x of du
    return [benchjson.row("usage of an active snapshot, %s" % cache if cache != "committed"
                          else "usage of a committed snapshot (stored at Commit)",
                          figures[cache]["snaplab"], figures[cache]["du -s"], "s",
                          goal=goals.get(cache)) for cache in figures]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layer-mib", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--files", type=int, default=100000)
    parser.add_argument("--at", help="an existing directory to work in instead of a loop ext4")
    parser.add_argument("--only", choices=("apply", "usage"))
    parser.add_argument("--compressions", default="none,gzip,zstd",
                        help="layers applied in these compressions (none, gzip, zstd)")
    parser.add_argument("--json", help="also write the figures here")
    parser.add_argument("--markdown", help="also write the tables here")
    args = parser.parse_args(argv)
    drop = can_drop_caches()
    # Big enough for the layers, both extractions and the 100k-file tree;
    # ext4's default inode ratio (16 KiB) gives ~196k inodes at 3 GiB.
    size_mib = max(3072, args.layer_mib * 6 + 1024)
    if args.at:
        pool = FilesystemPool(provided={"host-dir": args.at})
        fs_name = "host-dir"
    else:
        pool = FilesystemPool(sizes_mib={"ext4": size_mib})
        fs_name = "ext4"
    load_before = os.getloadavg()
    text = []
    report = {"kernel": platform.release(), "caches_dropped": drop}
    json_rows = []  # the rows of --json (benchmarks/benchjson.py)
    try:
        fs = pool.get(fs_name)
        fs_root = fs.mountpoint
        work = tempfile.mkdtemp(prefix="bench-", dir=fs_root)
        where = "a %d MiB loop ext4" % size_mib if not args.at else args.at
        report["filesystem"] = where
        with open_snapshotter(os.path.join(work, "root"), "overlay") as sn:
            if args.only in (None, "apply"):
                print("making the layers (%d MiB)..." % args.layer_mib, flush=True)
                base_tar, base_counts, top_tar, top_counts = make_layers(work, args.layer_mib)
                print("  base: %s; top: %s" % (base_counts, top_counts), flush=True)
                tars = compress_layers([base_tar, top_tar], args.compressions.split(","))
                samples = bench_apply(sn, work, fs_root, tars, args.rounds, drop)
                rows = apply_rows(samples, {"base": base_counts["bytes"],
                                            "top": top_counts["bytes"]})
                json_rows += rows
                report["apply"] = {"base": base_counts, "top": top_counts,
                                   "samples": {"/".join(k): v for k, v in samples.items()}}
                text += ["Apply-layer throughput and CPU, snaplab (layers.apply_layer to an "
                         "active overlay snapshot; layers.apply_layers, the base unpacked into "
                         "a snapshot of its own) against GNU tar -x, on %s, median of %d "
                         "rounds, caches %s before each" % (
                             where, args.rounds,
                             "dropped" if drop else "NOT dropped (not root)"),
                         "",
                         "Base layer: %(files)d files (4 big), %(dirs)d directories, "
                         "%(symlinks)d symlinks, %(hardlinks)d hardlinks. " % base_counts
                         + "Top layer: %(replaced files)d replaced files, %(whiteouts)d "
                         "whiteouts, %(opaque dirs)d opaque directory (tar writes the .wh. "
                         "files as plain files). MiB/s of the uncompressed layer." % top_counts,
                         "", apply_table(rows), ""]
            if args.only in (None, "usage"):
                print("usage of %d files..." % args.files, flush=True)
                checks, results = bench_usage(sn, work, args.files, args.rounds, drop)
                table, figures, same = usage_table(results, checks)
                report["usage"] = {"files": args.files, "median_s": figures,
                                   "same_result": same, "rows": usage_rows(figures)}
                text += ["Usage of an overlay snapshot holding %d files (snaplab: "
                         "size and inodes in one walk; du needs two runs), on %s, median of "
                         "%d rounds" % (args.files, where, args.rounds), "", table, ""]
    finally:
        pool.destroy()
    load_after = os.getloadavg()
    text.append("Load average (1 min) %.2f before, %.2f after; %d CPUs; kernel %s." % (
        load_before[0], load_after[0], os.cpu_count(), platform.release()))
    report["load"] = {"before": load_before, "after": load_after}
    benchjson.emit("\n".join(text), "bench_apply_usage", json_rows, args.markdown, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
