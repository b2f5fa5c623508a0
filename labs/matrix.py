#!/usr/bin/env python3
"""The lab matrix (labs/matrix.yml): releases, VM sizes, filesystems, cells.

    python3 -m labs.matrix check            validate the matrix (exit 1 on problems)
    python3 -m labs.matrix cells [RELEASE]  the cells, one `release filesystem backend` a line
    python3 -m labs.matrix vars RELEASE     the scenario's declaration for RELEASE's VM (JSON)
    python3 -m labs.matrix github-actions   the matrix as a GitHub Actions workflow (YAML),
                                            one job per release on a self-hosted KVM runner

LAB_FILESYSTEMS (comma-separated, e.g. "zfs") narrows every release to those
of its filesystems (the Vagrantfile reads it too): `make lab-smoke` is one
cell, bookworm with kernel ZFS.

The YAML is read through Ruby's YAML (Psych), the parser the Vagrantfile
uses, so that both sides read the same data and labs/ stays standard-library
Python (Ruby is there wherever Vagrant is).
"""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys

LABS = os.path.dirname(os.path.abspath(__file__))
MATRIX = os.path.join(LABS, "matrix.yml")

# Keep in step with the Vagrantfile, which derives the same names.
DISK_SERIAL_PREFIX = "snaplab-"
# virtio-blk serials are at most 20 bytes (longer ones are cut, and the
# /dev/disk/by-id name with them).
SERIAL_MAX = 20
MOUNT_BASE = "/srv/snaplab"
FSTYPES = ("ext4", "xfs", "btrfs", "zfs")
# The suite's filesystem names (conformance/filesystems.py) that a VM disk can hold.
SUITE_FILESYSTEMS = ("ext4", "xfs", "xfs-noftype", "btrfs", "zfs")
BACKENDS = ("native", "overlay", "btrfs", "zfs", "aufs", "blockfile", "erofs")
FILESYSTEM_KEYS = {"fstype", "root_backend", "xfs_ftype", "zfs_pool", "on_partition"}
RELEASE_KEYS = {"box", "kernel", "ssh_port", "mac", "filesystems", "memory_mib", "cpus",
                "disk_size"}
SIZE = re.compile(r"^[1-9][0-9]*[MG]$")
MAC = re.compile(r"^52:54:00(:[0-9a-f]{2}){3}$")


class MatrixError(Exception):
    """The matrix cannot be read, or is not valid; the message says why."""


def load(path=MATRIX):
    """The matrix as plain data, parsed by Ruby's YAML."""
    ruby = shutil.which("ruby")
    if ruby is None:
        raise MatrixError("ruby is not installed (it comes with vagrant: make lab-deps)")
    script = "require 'yaml'; require 'json'; print JSON.generate(YAML.safe_load(File.read(ARGV[0])))"
    done = subprocess.run([ruby, "-e", script, path], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, universal_newlines=True, check=False)
    if done.returncode != 0:
        raise MatrixError("%s: %s" % (path, done.stderr.strip()))
    return json.loads(done.stdout)


def problems(data):
    """Everything wrong with the matrix, as sentences (empty: valid)."""
    found = []
    if not isinstance(data, dict):
        return ["the matrix is not a mapping"]
    unknown = set(data) - {"defaults", "releases", "filesystems", "backends"}
    if unknown:
        found.append("unknown top-level keys: %s" % ", ".join(sorted(unknown)))
    filesystems = data.get("filesystems") or {}
    backends = data.get("backends") or {}
    releases = data.get("releases") or {}
    if not releases:
        found.append("no releases")
    for name, fs in filesystems.items():
        if name not in SUITE_FILESYSTEMS:
            found.append("filesystem %s: not one the suite knows (%s)" % (name, ", ".join(SUITE_FILESYSTEMS)))
        if not isinstance(fs, dict) or fs.get("fstype") not in FSTYPES:
            found.append("filesystem %s: fstype must be one of %s" % (name, ", ".join(FSTYPES)))
            continue
        if fs.get("root_backend") not in BACKENDS:
            found.append("filesystem %s: root_backend must be one of %s" % (name, ", ".join(BACKENDS)))
        elif name not in backends.get(fs["root_backend"], []):
            found.append("filesystem %s: its root_backend %s does not apply to it (backends:)"
                         % (name, fs["root_backend"]))
        if set(fs) - FILESYSTEM_KEYS:
            found.append("filesystem %s: unknown keys %s" % (name, ", ".join(sorted(set(fs) - FILESYSTEM_KEYS))))
        if fs["fstype"] == "zfs" and not fs.get("zfs_pool"):
            found.append("filesystem %s: zfs needs zfs_pool" % name)
        # udev names the partition <by-id name>-part1; the serial must still fit.
        if len(DISK_SERIAL_PREFIX + name) > SERIAL_MAX:
            found.append("filesystem %s: disk serial %s%s is longer than %d bytes"
                         % (name, DISK_SERIAL_PREFIX, name, SERIAL_MAX))
    for backend, names in backends.items():
        if backend not in BACKENDS:
            found.append("backend %s: not a snaplab backend (%s)" % (backend, ", ".join(BACKENDS)))
        for name in names or []:
            if name not in filesystems:
                found.append("backend %s: filesystem %s is not declared" % (backend, name))
    ports, macs = {}, {}
    for name in releases:
        undeclared = [fs for fs in (releases[name] or {}).get("filesystems") or []
                      if fs not in filesystems]
        if undeclared:
            found.append("release %s: filesystem %s is not declared under filesystems:"
                         % (name, ", ".join(undeclared)))
            continue
        try:
            rel = release(data, name)
        except MatrixError as err:
            found.append(str(err))
            continue
        unknown = set(releases[name]) - RELEASE_KEYS
        if unknown:
            found.append("release %s: unknown keys %s" % (name, ", ".join(sorted(unknown))))
        if not re.match(r"^[a-z0-9._/-]+$", str(rel["box"])):
            found.append("release %s: box %r is not a Vagrant box name" % (name, rel["box"]))
        port = rel["ssh_port"]
        if not isinstance(port, int) or not 1024 <= port <= 65535 - 21000:
            found.append("release %s: ssh_port %r must be 1024..%d (the tunnel uses +20000 "
                         "and +21000)" % (name, port, 65535 - 21000))
        else:
            for other, used in ports.items():
                if {port, port + 20000, port + 21000} & {used, used + 20000, used + 21000}:
                    found.append("release %s: ssh_port %d clashes with %s's" % (name, port, other))
            ports[name] = port
        if not MAC.match(str(rel["mac"])):
            found.append("release %s: mac %r must be 52:54:00:xx:xx:xx, lower case"
                         % (name, rel["mac"]))
        elif rel["mac"] in macs.values():
            found.append("release %s: mac %s is used twice" % (name, rel["mac"]))
        macs[name] = rel["mac"]
        if not isinstance(rel["memory_mib"], int) or rel["memory_mib"] < 512:
            found.append("release %s: memory_mib must be an integer >= 512" % name)
        if not isinstance(rel["cpus"], int) or rel["cpus"] < 1:
            found.append("release %s: cpus must be an integer >= 1" % name)
        if not rel["filesystems"]:
            found.append("release %s: no filesystems" % name)
        for disk in rel["disks"]:
            if not SIZE.match(str(disk["size"])):
                found.append("release %s: disk %s size %r must be like 512M or 2G"
                             % (name, disk["name"], disk["size"]))
        if len(set(rel["filesystems"])) != len(rel["filesystems"]):
            found.append("release %s: a filesystem is listed twice" % name)
    return found


def validate(data):
    """`data`, or MatrixError listing its problems."""
    found = problems(data)
    if found:
        raise MatrixError("labs/matrix.yml is not valid:\n  " + "\n  ".join(found))
    return data


def selected_filesystems(environ=None):
    """The LAB_FILESYSTEMS selection as a list (None: every filesystem)."""
    text = (os.environ if environ is None else environ).get("LAB_FILESYSTEMS", "")
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in SUITE_FILESYSTEMS]
    if unknown:
        raise MatrixError("LAB_FILESYSTEMS: %s not a filesystem of the lab (%s)"
                          % (", ".join(unknown), ", ".join(SUITE_FILESYSTEMS)))
    return names or None


def release(data, name, only=None):
    """One release with the defaults applied and its disks spelled out;
    `only` (a list of filesystem names) keeps just those of its filesystems,
    and a selection the release has none of is an error."""
    releases = data.get("releases") or {}
    if name not in releases:
        raise MatrixError("unknown release %r: one of %s" % (name, ", ".join(releases)))
    own = releases[name] or {}
    defaults = data.get("defaults") or {}
    merged = dict(defaults)
    merged.update(own)
    for key in ("box", "ssh_port", "mac", "filesystems"):
        if key not in merged:
            raise MatrixError("release %s: %s is missing" % (name, key))
    if only:
        kept = [fs for fs in merged["filesystems"] if fs in only]
        if not kept:
            raise MatrixError("release %s has none of the filesystems %s (it has %s)"
                              % (name, ", ".join(only), ", ".join(merged["filesystems"])))
        merged["filesystems"] = kept
    sizes = dict(defaults.get("disk_size") or {})
    sizes.update(own.get("disk_size") or {})
    disks = []
    for fs in merged["filesystems"]:
        if fs not in sizes:
            raise MatrixError("release %s: no disk_size for %s" % (name, fs))
        disks.append({"name": fs, "size": sizes[fs], "serial": DISK_SERIAL_PREFIX + fs,
                      "device": "/dev/disk/by-id/virtio-" + DISK_SERIAL_PREFIX + fs})
    merged.update(name=name, disks=disks, memory_mib=merged.get("memory_mib", 2048),
                  cpus=merged.get("cpus", 2))
    merged.pop("disk_size", None)
    return merged


def cells(data, releases=None):
    """(release, filesystem, backend) where the backend applies, in matrix order."""
    found = []
    for name in releases or list(data["releases"]):
        for fs in release(data, name)["filesystems"]:
            for backend, where in data["backends"].items():
                if fs in where:
                    found.append((name, fs, backend))
    return found


def scenario_vars(data, name, only=None):
    """What the lab scenario declares for `name`'s VM: node_storage's
    filesystems (one per data disk), the suite's --filesystem-at map, the
    backends to run, the snapshotter roots converge declares a chain on, and
    the disks that get one GPT partition first (`on_partition`)."""
    rel = release(data, name, only)
    storage, at, roots, partitions = [], {}, [], []
    for disk in rel["disks"]:
        fs = data["filesystems"][disk["name"]]
        mount_point = "%s/%s" % (MOUNT_BASE, disk["name"])
        entry = {"name": "lab-" + disk["name"], "fstype": fs["fstype"],
                 "device": disk["device"], "mount_point": mount_point}
        if fs.get("on_partition"):
            # udev's by-id name of the disk's first partition.
            entry["device"] = disk["device"] + "-part1"
            partitions.append(disk["device"])
        root = {"path": "%s/%s" % (mount_point, fs["root_backend"]), "backend": fs["root_backend"]}
        if fs["fstype"] == "xfs":
            entry["xfs_ftype"] = fs.get("xfs_ftype", 1)
            entry["xfs_reflink"] = entry["xfs_ftype"] == 1
        if fs["fstype"] == "zfs":
            entry["zfs_pool"] = fs["zfs_pool"]
        else:
            # noatime: the suite's Usage reads st_blocks, not atimes, and TCG
            # is slow enough without an inode write per read.
            entry["mount_options"] = ["noatime"]
        entry["snapshotter_root"] = root
        storage.append(entry)
        at[disk["name"]] = mount_point
        roots.append(dict(root, filesystem=disk["name"]))
    backends = [b for b in data["backends"] if any(fs in data["backends"][b] for fs in rel["filesystems"])]
    return {"lab_release": name, "lab_box": rel["box"], "lab_kernel": str(rel.get("kernel", "")),
            "lab_filesystems": storage, "lab_filesystem_at": at, "lab_backends": backends,
            "lab_suite_filesystems": list(rel["filesystems"]), "lab_roots": roots,
            "lab_partitioned_disks": partitions}


# GitHub Actions: runners are the CI owner's own machines with KVM (GitHub's
# hosted runners have no nested virtualisation worth using, and the lab needs
# root, libvirt and a box cache). One job per release, so that a failed
# release does not stop the others, and a last job that merges their reports.
RUNNER_LABELS = ["self-hosted", "linux", "x64", "kvm"]
JOB_TIMEOUT_MIN = 240


def github_actions(data, labels=None):
    """The matrix as a GitHub Actions workflow (plain data): one job per
    release calling the same make targets as a local run, then one job that
    merges the releases' results into the lab's report."""
    labels = list(labels or RUNNER_LABELS)
    jobs = {}
    for name in data["releases"]:
        rel = release(data, name)
        jobs["lab-" + name] = {
            "name": "lab %s (kernel %s): %s" % (name, rel.get("kernel", "?"),
                                                 ", ".join(rel["filesystems"])),
            "runs-on": labels,
            "timeout-minutes": JOB_TIMEOUT_MIN,
            "steps": [
                {"uses": "actions/checkout@v4"},
                {"name": "Host packages and the venv", "run": "sudo make lab-deps venv"},
                {"name": "Box for %s (cached on the runner by recipe hash)" % name,
                 "run": "sudo make boxes LAB_RELEASES=%s" % name},
                {"name": "Lab: %s" % name,
                 "run": "sudo make lab LAB_RELEASES=%s LAB_REPORTS=reports/lab" % name},
                {"name": "Keep the results", "if": "always()",
                 "uses": "actions/upload-artifact@v4",
                 "with": {"name": "lab-" + name, "path": "reports/lab/%s/" % name,
                          "if-no-files-found": "warn"}},
            ],
        }
    jobs["report"] = {
        "name": "lab report (every release, known failures applied)",
        "needs": [job for job in jobs],
        "if": "always()",
        "runs-on": labels,
        "steps": [
            {"uses": "actions/checkout@v4"},
            {"uses": "actions/download-artifact@v4",
             "with": {"pattern": "lab-*", "path": "reports/lab"}},
            {"name": "Merged report", "run": "make lab-report LAB_REPORTS=reports/lab"},
            {"name": "Keep the report", "if": "always()", "uses": "actions/upload-artifact@v4",
             "with": {"name": "lab-report", "path": "reports/lab/report.*"}},
        ],
    }
    return {"name": "snaplab lab",
            "on": {"workflow_dispatch": {}, "schedule": [{"cron": "17 3 * * 1"}]},
            "permissions": {"contents": "read"},
            "jobs": jobs}


def to_yaml(value):
    """YAML text of plain data, written by Ruby's YAML (as load() reads it),
    which quotes what YAML 1.1 would misread (the key 'on')."""
    ruby = shutil.which("ruby")
    if ruby is None:
        raise MatrixError("ruby is not installed (it comes with vagrant: make lab-deps)")
    done = subprocess.run([ruby, "-e", "require 'yaml'; require 'json'; print YAML.dump(JSON.parse(STDIN.read))"],
                          input=json.dumps(value), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          universal_newlines=True, check=False)
    if done.returncode != 0:
        raise MatrixError("ruby could not write YAML: %s" % done.stderr.strip())
    return done.stdout


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python3 -m labs.matrix", description=__doc__.split("\n\n")[0])
    parser.add_argument("--matrix", default=MATRIX, help="default: %(default)s")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("check", help="validate the matrix")
    p = commands.add_parser("cells", help="list the cells")
    p.add_argument("releases", nargs="*", metavar="RELEASE")
    p = commands.add_parser("vars", help="the scenario's declaration for RELEASE (JSON)")
    p.add_argument("release", metavar="RELEASE")
    p = commands.add_parser("github-actions", help="print the matrix as a GitHub Actions workflow")
    p.add_argument("--runs-on", action="append", metavar="LABEL",
                   help="a runner label (repeat; default: %s)" % ", ".join(RUNNER_LABELS))
    args = parser.parse_args(argv)
    try:
        data = validate(load(args.matrix))
        if args.command == "check":
            print("%s: %d releases, %d cells" % (args.matrix, len(data["releases"]), len(cells(data))))
        elif args.command == "cells":
            for cell in cells(data, args.releases or None):
                print(" ".join(cell))
        elif args.command == "vars":
            print(json.dumps(scenario_vars(data, args.release, selected_filesystems()), indent=2))
        elif args.command == "github-actions":
            print("# Generated by `python3 -m labs.matrix github-actions` from labs/matrix.yml;\n"
                  "# regenerate it when the matrix changes.")
            sys.stdout.write(to_yaml(github_actions(data, args.runs_on)))
    except MatrixError as err:
        print("error: %s" % err, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
