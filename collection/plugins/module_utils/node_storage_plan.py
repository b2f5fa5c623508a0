# Copyright (c) snaplab maintainers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

# Note that this module util is PRIVATE to the collection: it is the engine of
# the node_storage role and can change at any time.

"""The node_storage role's engine: from the filesystems a node should have and
what it has now, a plan of actions and refusals; then the plan applied.

Three steps, as snaplab's declare.py does for snapshots:

- declarations(): the role's variables -> complete, checked declarations
  (built-in defaults, then the user's node_storage_filesystem_defaults, then
  the entry's own keys), or the list of what is wrong with them. Nothing is
  read or made before this passes.
- read_state(run, ...): everything that exists, read once (findmnt, losetup,
  blkid, the fstab, zpool/zfs, the files); parse_* turn each tool's output
  into data. plan(declared, state, options) is pure: it returns, per
  filesystem, actions and refusals with a before/after summary (diff mode);
  check mode is plan() alone.
- apply(plan, run): runs the actions in order; a failed command is one line
  with its stderr, and what this filesystem's actions made before it (a loop
  file, its directory, a pool, a mount) is undone.

Nothing here imports Ansible: run(argv) -> (rc, stdout, stderr) is injected
(module.run_command, or subprocess in tests). Only the standard library.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import time

BUILTIN_DEFAULTS = {
    "mkfs_options": [],
    "mount_options": [],
    "xfs_ftype": 1,
    "xfs_reflink": True,
    "persistent": True,
    "loop_boot_options": True,
    "state": "present",
}

# The smallest source each mkfs (and zpool create) accepts, in bytes; a
# smaller loop file is refused before anything is made. Measured with
# e2fsprogs 1.47 (64 KiB fails, 128 KiB works), xfsprogs 6.1 ("300MB"),
# btrfs-progs 6.2 (its own message) and OpenZFS's SPA_MINDEVSIZE.
MIN_SIZE = {
    "ext4": 128 << 10,
    "xfs": 300 << 20,
    "btrfs": 114294784,
    "zfs": 64 << 20,
}

MKFS = {
    "ext4": (["mkfs.ext4", "-q"], "-F"),
    "xfs": (["mkfs.xfs", "-q"], "-f"),
    "btrfs": (["mkfs.btrfs", "-q"], "-f"),
}

# Beside a loop file the role made: what it made, so that absent removes that
# (and only that), and so that a new size grows a file the role owns.
MARKER_SUFFIX = ".node_storage"
ZFS_FUSE_MARKER_SUFFIX = ".node_storage"

_SIZE = re.compile(r"^\s*(\d+)\s*(?:([kmgtpe])(ib|b)?)?\s*$", re.IGNORECASE)
_UNITS = "kmgtpe"


def parse_size(text):
    """Bytes of a size as `truncate -s` reads it (1G = 1024^3, 1GB = 1000^3),
    or None when it is not one."""
    match = _SIZE.match(str(text))
    if not match:
        return None
    number, unit, suffix = match.groups()
    if not unit:
        return int(number)
    base = 1000 if suffix and suffix.lower() == "b" else 1024
    return int(number) * base ** (_UNITS.index(unit.lower()) + 1)


def _strip(path):
    return path.rstrip("/") or "/" if path else path


def _source(decl):
    return decl.get("loop_file") or decl.get("device")


def _zfs_root_dataset(decl):
    """The zfs backend's root dataset: <zfs_dataset>/<root path below mount_point, '/' -> '-'>."""
    below = _strip(decl["snapshotter_root"]["path"])[len(_strip(decl["mount_point"])) + 1:]
    return decl["zfs_dataset"] + "/" + below.replace("/", "-")


def declarations(filesystems, defaults=None):
    """(declared, problems): each entry over the user's defaults over the
    built-ins; problems is a list of messages, empty when all is well."""
    base = dict(BUILTIN_DEFAULTS)
    base.update({key: value for key, value in (defaults or {}).items() if value is not None})
    declared, problems = [], []
    for entry in filesystems or []:
        decl = dict(base)
        decl.update({key: value for key, value in entry.items() if value is not None})
        if decl.get("fstype") == "zfs" and decl.get("zfs_pool") and not decl.get("zfs_dataset"):
            decl["zfs_dataset"] = decl["zfs_pool"] + "/snaplab"
        if decl.get("snapshotter_root"):
            decl["snapshotter_root"] = dict({"backend": "overlay"}, **decl["snapshotter_root"])
        declared.append(decl)
        problems.extend("%s: %s" % (decl.get("name"), problem) for problem in _problems(decl))
    for key in ("name", "mount_point"):
        values = [_strip(decl.get(key)) for decl in declared]
        twice = sorted({value for value in values if values.count(value) > 1})
        if twice:
            problems.append("%s must be unique; declared more than once: %s" % (key, ", ".join(twice)))
    return declared, problems


def _problems(decl):
    if decl["state"] not in ("present", "absent"):
        yield "state must be present or absent, not %r" % (decl["state"],)
    if decl.get("fstype") not in ("ext4", "xfs", "btrfs", "zfs"):
        yield "fstype must be ext4, xfs, btrfs or zfs, not %r" % (decl.get("fstype"),)
        return
    if bool(decl.get("device")) == bool(decl.get("loop_file")):
        yield "needs exactly one of device and loop_file"
    if decl.get("fstype") == "zfs" and not (decl.get("zfs_pool")
                                            and decl["zfs_dataset"].startswith(decl["zfs_pool"] + "/")):
        yield "a zfs declaration needs zfs_pool, and a zfs_dataset under it"
    if decl["state"] != "present":
        return
    if decl.get("loop_file"):
        yield from _size_problems(decl)
    root = decl.get("snapshotter_root")
    if root:
        if not (_strip(root["path"]) + "/").startswith(_strip(decl["mount_point"]) + "/") \
                or _strip(root["path"]) == _strip(decl["mount_point"]):
            yield "snapshotter_root.path %s is not below mount_point %s" % (root["path"], decl["mount_point"])
        if root["backend"] in ("btrfs", "zfs") and root["backend"] != decl["fstype"]:
            yield "a %s snapshotter_root needs a %s filesystem, not %s" % (
                root["backend"], root["backend"], decl["fstype"])


def _size_problems(decl):
    if decl.get("size") in (None, ""):
        yield "a loop file declared present needs a size (e.g. 1G)"
        return
    size = parse_size(decl["size"])
    if size is None:
        yield ("size %r is not a size: a number with an optional unit K, M, G, T "
               "(powers of 1024; KB, MB... are powers of 1000), e.g. 512M" % (decl["size"],))
    elif size < MIN_SIZE[decl["fstype"]]:
        yield "size %s is too small: %s needs at least %s" % (
            decl["size"], "a zfs pool" if decl["fstype"] == "zfs" else "mkfs." + decl["fstype"],
            _human(MIN_SIZE[decl["fstype"]]))


def _human(size):
    for unit in ("", "K", "M", "G", "T"):
        if size % 1024 or unit == "T":
            return "%d%s" % (size, unit or " bytes")
        size //= 1024
    return str(size)


# -- reading what exists ------------------------------------------------------


def parse_blkid(text):
    """`blkid --probe --output export` -> {TYPE, LABEL, PTTYPE, ...}."""
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


def holds(probe):
    """What a source holds, as messages say it: '' (nothing), a type, or a partition table."""
    if probe.get("TYPE"):
        return probe["TYPE"]
    if probe.get("PTTYPE"):
        return "a %s partition table" % probe["PTTYPE"]
    return ""


def parse_findmnt(text):
    """`findmnt --json --list --nofsroot -o TARGET,SOURCE,FSTYPE,OPTIONS` -> [mount dicts]."""
    return json.loads(text)["filesystems"] if text.strip() else []


def parse_losetup(text):
    """`losetup --json --list -O NAME,BACK-FILE` -> {back file: [loop devices]}
    (no loop device: losetup prints nothing)."""
    attached = {}
    for device in json.loads(text)["loopdevices"] if text.strip() else []:
        back = (device.get("back-file") or "").replace(" (deleted)", "")
        attached.setdefault(back, []).append(device["name"])
    return attached


def parse_fstab(text):
    """fstab lines -> [{source, target, fstype, options, line}] (comments kept out)."""
    entries = []
    for number, line in enumerate(text.splitlines()):
        fields = line.split()
        if len(fields) >= 4 and not fields[0].startswith("#"):
            entries.append({"source": fields[0], "target": _strip(fields[1]), "fstype": fields[2],
                            "options": fields[3], "number": number})
    return entries


def parse_zpool_status(text):
    """`zpool status POOL` -> the names in its config section below the pool
    (vdevs: a file's path, a device's name), without the header."""
    names, in_config = [], False
    for line in text.splitlines():
        if line.startswith("config:"):
            in_config = True
        elif in_config and line[:1].isspace() and line.split():
            names.append(line.split()[0])
        elif in_config and line.strip() and not line[:1].isspace():
            break
    return names[2:]  # NAME (the header), then the pool itself


def parse_zfs_get(text):
    """`zfs get -H -o name,property,value ...` -> {dataset: {property: value}}."""
    datasets = {}
    for line in text.splitlines():
        fields = line.split("\t")
        if len(fields) == 3:
            datasets.setdefault(fields[0], {})[fields[1]] = fields[2]
    return datasets


def parse_xfs_info(text):
    """`xfs_info` -> {ftype, reflink} as ints (reflink 0 when not printed, V4)."""
    ftype = re.search(r"ftype=(\d)", text)
    reflink = re.search(r"reflink=(\d)", text)
    return {"ftype": int(ftype.group(1)) if ftype else 0, "reflink": int(reflink.group(1)) if reflink else 0}


def parse_proc_filesystems(text):
    """/proc/filesystems -> the names of the filesystems the kernel has now."""
    return [line.split()[-1] for line in text.splitlines() if line.split()]


def _read_file(path):
    try:
        with open(path, encoding="utf-8") as stream:
            return stream.read()
    except FileNotFoundError:
        return None


def _path_facts(path):
    try:
        st = os.stat(path)
    except OSError:
        return {"exists": False}
    facts = {"exists": True, "isblk": (st.st_mode & 0o170000) == 0o060000, "size": st.st_size,
             "realpath": os.path.realpath(path), "isdir": os.path.isdir(path)}
    if facts["isdir"]:
        facts["empty"] = not os.listdir(path)
    return facts


def _missing_directories(path):
    """The directories above `path` that do not exist, top first."""
    missing, directory = [], os.path.dirname(path)
    while directory not in ("", "/") and not os.path.exists(directory):
        missing.insert(0, directory)
        directory = os.path.dirname(directory)
    return missing


def read_state(run, declared, fstab, zfs_fuse_pidfile, zfs_fuse_options=()):
    """Everything plan() needs, read once. run(argv) -> (rc, out, err)."""
    def output(argv, ok=(0,)):
        rc, out, err = run(argv)
        if rc not in ok:
            raise StepFailed(_one_line(argv, rc, err))
        return out if rc == 0 else ""

    state = {
        "mounts": parse_findmnt(output(["findmnt", "--json", "--list", "--nofsroot", "--output",
                                        "TARGET,SOURCE,FSTYPE,OPTIONS"], ok=(0, 1))),
        "loops": parse_losetup(output(["losetup", "--json", "--list", "--output", "NAME,BACK-FILE"])),
        "fstab_text": _read_file(fstab) or "",
        # overlay roots need overlayfs (snaplab's overlay backend refuses without it)
        "kernel_filesystems": parse_proc_filesystems(_read_file("/proc/filesystems") or ""),
        "paths": {}, "probe": {}, "markers": {}, "xfs": {}, "zfs": None, "missing_directories": {},
    }
    for decl in declared:
        source = _source(decl)
        paths = [source, decl["mount_point"]]
        if decl.get("loop_file"):
            state["missing_directories"][source] = _missing_directories(source)
            marker = _read_file(source + MARKER_SUFFIX)
            if marker:
                state["markers"][source] = json.loads(marker)
        if decl.get("snapshotter_root"):
            paths.append(decl["snapshotter_root"]["path"])
        for path in paths:
            state["paths"][path] = _path_facts(path)
        if state["paths"][source]["exists"]:
            # rc 2: nothing found
            state["probe"][source] = parse_blkid(output(["blkid", "--probe", "--output", "export", source],
                                                        ok=(0, 2)))
        mount = _mount_at(state, decl["mount_point"])
        if decl["fstype"] == "xfs" and mount and mount["fstype"] == "xfs":
            state["xfs"][decl["mount_point"]] = parse_xfs_info(output(["xfs_info", decl["mount_point"]]))
    if any(decl["fstype"] == "zfs" for decl in declared):
        state["zfs"] = _read_zfs(run, declared, zfs_fuse_pidfile, zfs_fuse_options)
    return state


def _read_zfs(run, declared, zfs_fuse_pidfile, zfs_fuse_options):
    kernel = os.path.exists("/sys/module/zfs") or run(["modprobe", "--dry-run", "zfs"])[0] == 0
    rc, out, _err = run(["zpool", "list", "-H", "-o", "name"])
    zfs = {"kernel": kernel, "answers": rc == 0, "pools": out.split() if rc == 0 else [],
           "vdevs": {}, "datasets": {}, "systemd": os.path.isdir("/run/systemd/system"),
           "fuse_marker": os.path.exists(zfs_fuse_pidfile + ZFS_FUSE_MARKER_SUFFIX),
           "pidfile": zfs_fuse_pidfile, "fuse_options": list(zfs_fuse_options)}
    for decl in declared:
        if decl["fstype"] != "zfs" or decl["zfs_pool"] not in zfs["pools"]:
            continue
        # no -P: zfs-fuse's zpool has none (a file vdev is its path, a device its /dev name)
        rc, out, _err = run(["zpool", "status", decl["zfs_pool"]])
        zfs["vdevs"][decl["zfs_pool"]] = parse_zpool_status(out) if rc == 0 else []
        zfs["datasets"].update(_read_datasets(run, decl))
    return zfs


def _mount_at(state, mount_point):
    at = [mount for mount in state["mounts"] if mount["target"] == _strip(mount_point)]
    return at[-1] if at else None


# -- planning -----------------------------------------------------------------


class StepFailed(Exception):
    """A command of the plan failed; its message is one line with the stderr."""


def _one_line(argv, rc, err):
    said = " ".join((err or "").split()) or "no error output"
    return "%s failed (rc %s): %s" % (" ".join(shlex.quote(arg) for arg in argv), rc, said)


def _action(kind, say, argv=None, **details):
    return dict(details, kind=kind, say=say, argv=argv)


def mount_options(decl, for_fstab):
    """The options of the mount (and of its fstab line): a loop file's `loop`;
    for its fstab line, unless loop_boot_options is false, `nofail` (a missing
    or broken loop file must not stop the boot) and the ordering on the mount
    that holds the file."""
    options = list(decl["mount_options"])
    if decl.get("loop_file"):
        options = ["loop"] + options
        if for_fstab and decl["loop_boot_options"]:
            extra = ["nofail", "x-systemd.requires-mounts-for=" + os.path.dirname(decl["loop_file"])]
            options += [option for option in extra if option not in options]
    return ",".join(options) or "defaults"


def fstab_line(decl):
    return "%s %s %s %s 0 0" % (_source(decl), _strip(decl["mount_point"]), decl["fstype"],
                                mount_options(decl, for_fstab=True))


def plan(declared, state, allow_format_existing=False, wipe_absent=False):
    """{"filesystems": [{name, state, actions, refusals, before, after}], "fstab": new text or None}.
    Absent first, so that a mount point one entry gives up can be taken by another."""
    fstab = parse_fstab(state["fstab_text"])
    lines = state["fstab_text"].splitlines()
    planned = []
    order = [d for d in declared if d["state"] == "absent"] + [d for d in declared if d["state"] == "present"]
    for decl in order:
        current = _current(decl, state, fstab)
        if decl["fstype"] == "zfs":
            step = _plan_zfs_absent if decl["state"] == "absent" else _plan_zfs_present
        else:
            step = _plan_absent if decl["state"] == "absent" else _plan_present
        entry = {"name": decl["name"], "state": decl["state"], "actions": [], "refusals": [],
                 "before": _summary(current)}
        step(decl, current, state, entry, lines, allow_format_existing, wipe_absent)
        if entry["refusals"]:
            entry["actions"] = []
        planned.append(entry)
    new_fstab = "\n".join(lines) + "\n" if lines else ""
    return {"filesystems": planned,
            "fstab": new_fstab if new_fstab != state["fstab_text"] and not _any_refused(planned) else None}


def _any_refused(planned):
    return any(entry["refusals"] for entry in planned)


def _current(decl, state, fstab):
    source = _source(decl)
    facts = state["paths"].get(source, {"exists": False})
    probe = state["probe"].get(source, {})
    if decl.get("loop_file"):
        our_sources = state["loops"].get(source, [])
        ours_in_fstab = {source}
    else:
        real = facts.get("realpath", source)
        # A mount's source is the kernel's name of the device (/dev/vdd) for
        # most filesystems, but the path it was mounted by for btrfs, which
        # keeps the name it scanned (/dev/disk/by-id/...): both are ours.
        our_sources = [real] + ([decl["device"]] if decl["device"] != real else [])
        ours_in_fstab = {decl["device"], real}
    mount = _mount_at(state, decl["mount_point"])
    line = [entry for entry in fstab if entry["target"] == _strip(decl["mount_point"])]
    return {
        "source": source, "exists": facts["exists"], "isblk": facts.get("isblk", False),
        "size": facts.get("size", 0), "holds": holds(probe), "label": probe.get("LABEL", ""),
        "loop_devices": state["loops"].get(source, []) if decl.get("loop_file") else [],
        "mount": mount, "ours": bool(mount) and (mount["source"] in our_sources
                                                 or mount["source"] == decl.get("zfs_dataset")),
        "elsewhere": [m["target"] for m in state["mounts"] if m["source"] in our_sources
                      and m["target"] != _strip(decl["mount_point"])],
        "in_use": any(m["source"] in our_sources for m in state["mounts"]),
        "fstab": line[-1] if line else None,
        "fstab_ours": bool(line) and line[-1]["source"] in ours_in_fstab,
        "marker": state["markers"].get(source),
        "mount_point": state["paths"].get(decl["mount_point"], {"exists": False}),
    }


def _summary(current):
    mount = current["mount"]
    return "\n".join([
        "source: %s (%s)" % (current["source"], "missing" if not current["exists"]
                             else current["holds"] or "empty"),
        "mounted: %s" % ("%s (%s)" % (mount["source"], mount["fstype"]) if mount else "no"),
        "fstab: %s" % (current["fstab"]["source"] + " " + current["fstab"]["options"]
                       if current["fstab"] else "none"),
    ]) + "\n"


def _remove_fstab_line(lines, target):
    lines[:] = [line for line in lines
                if not (len(line.split()) >= 4 and not line.lstrip().startswith("#")
                        and _strip(line.split()[1]) == target)]


def _plan_present(decl, current, state, entry, lines, allow_format, _wipe):
    name, source, fstype = decl["name"], current["source"], decl["fstype"]
    refuse = entry["refusals"].append
    act = entry["actions"].append
    mount = current["mount"]
    if decl.get("device") and not current["isblk"]:
        refuse("%s: %s is not a block device" % (name, decl["device"]))
    if mount and not current["ours"]:
        refuse("%s: %s already has %s (%s) mounted, not %s; refusing to mount over it" % (
            name, decl["mount_point"], mount["source"], mount["fstype"], source))
    if current["fstab"] and not current["fstab_ours"]:
        refuse("%s: the fstab already mounts %s at %s; refusing to replace that line" % (
            name, current["fstab"]["source"], decl["mount_point"]))
    format_needed = current["holds"] != fstype
    if format_needed and current["holds"]:
        if current["in_use"]:
            refuse("%s: %s holds %s, not %s, and is mounted; refusing to format a filesystem in use" % (
                name, source, current["holds"], fstype))
        elif not allow_format:
            refuse("%s: %s already holds %s (declared: %s). node_storage never formats a source that "
                   "holds something unless told: set node_storage_allow_format_existing=true to "
                   "format it anyway (its data will be lost)" % (name, source, current["holds"], fstype))
    if entry["refusals"]:
        return
    if decl.get("loop_file"):
        _plan_loop_file(decl, current, state, entry)
    if format_needed:
        command, force = MKFS[fstype]
        argv = command + ([force] if current["holds"] else []) + _typed_mkfs_options(decl) \
            + list(decl["mkfs_options"]) + [source]
        act(_action("mkfs", "make %s on %s" % (fstype, source), argv))
    if not current["mount_point"]["exists"]:
        act(_action("mkdir", "create the mount point %s" % decl["mount_point"], path=decl["mount_point"],
                    mode=None))
    wanted_line = fstab_line(decl)
    line_changes = False
    if decl["persistent"]:
        old = current["fstab"]
        if not old or " ".join(lines[old["number"]].split()) != wanted_line:
            line_changes = True
            _remove_fstab_line(lines, _strip(decl["mount_point"]))
            lines.append(wanted_line)
            act(_action("fstab", "write the fstab line: " + wanted_line, line=wanted_line,
                        target=_strip(decl["mount_point"])))
    elif current["fstab_ours"]:
        _remove_fstab_line(lines, _strip(decl["mount_point"]))
        act(_action("fstab", "drop the fstab line an earlier run wrote", line=None,
                    target=_strip(decl["mount_point"])))
    options = mount_options(decl, for_fstab=False)
    if not mount:
        act(_action("mount", "mount %s at %s" % (source, decl["mount_point"]),
                    ["mount", "--types", fstype, "--options", options, source, decl["mount_point"]],
                    undo=["umount", decl["mount_point"]]))
    elif line_changes and current["fstab"]:
        # as ansible.posix.mount does when an fstab line changes: remount
        act(_action("remount", "remount %s with %s" % (decl["mount_point"], options),
                    ["mount", "--options", ",".join(["remount"] + [o for o in options.split(",")
                                                                   if o not in ("loop", "defaults")]),
                     decl["mount_point"]]))
    if entry.get("grow"):
        act(_action("grow_filesystem", "grow the %s at %s to its loop file" % (fstype, decl["mount_point"]),
                    fstype=fstype, mount_point=decl["mount_point"]))
    _finish_growth(entry)
    if fstype == "xfs":
        known = state["xfs"].get(decl["mount_point"])
        wanted = {"ftype": int(decl["xfs_ftype"]),
                  "reflink": int(bool(decl["xfs_reflink"])) if int(decl["xfs_ftype"]) else 0}
        if known is not None and known != wanted:
            entry["actions"] = []
            refuse("%s: the xfs on %s has ftype=%d reflink=%d, but the declaration says ftype=%d reflink=%d. "
                   "node_storage does not reformat an existing filesystem; declare it absent and present "
                   "again to remake it" % (name, source, known["ftype"], known["reflink"],
                                           wanted["ftype"], wanted["reflink"]))
            return
        if known is None and not format_needed:
            act(_action("check_xfs", "check the xfs settings of %s" % source, ["xfs_info", decl["mount_point"]],
                        wanted=wanted, source=source))
    _plan_root_directory(decl, state, entry)
    entry["after"] = "source: %s (%s)\nmounted: %s (%s)\nfstab: %s\n" % (
        source, fstype, source if decl.get("device") else "/dev/loop*", fstype,
        (source + " " + mount_options(decl, True)) if decl["persistent"] else "none")


def _typed_mkfs_options(decl):
    if decl["fstype"] != "xfs":
        return []
    if int(decl["xfs_ftype"]) == 0:
        return ["-m", "crc=0,reflink=0", "-n", "ftype=0"]
    return ["-m", "reflink=%d" % int(bool(decl["xfs_reflink"])), "-n", "ftype=1"]


def _plan_loop_file(decl, current, state, entry):
    """Create the loop file (and its directory), or grow one the role made (or
    an empty one) to a larger declared size; never shrink."""
    source, size = current["source"], parse_size(decl["size"])
    act = entry["actions"].append
    if not current["exists"]:
        # A marker without its file: a run killed before it made the file,
        # after the directories its marker names.
        made = ((current["marker"] or {}).get("made_directories")
                or state["missing_directories"].get(source, []))
        planned_already = state.setdefault("planned_directories", set())
        if made and made[-1] not in planned_already:
            planned_already.update(made)
            act(_action("mkdir", "create the loop file's directory %s" % made[-1], path=made[-1], mode=None,
                        made=made))
        act(_action("loop_file", "create the sparse loop file %s (%s)" % (source, decl["size"]),
                    ["truncate", "--size", str(size), source], path=source,
                    marker={"made_directories": made, "size": size}))
        return
    # The marker's size is what the role finished growing to: a file larger
    # than that is a growth a kill interrupted, whose filesystem (or pool)
    # still has to follow.
    recorded = (current["marker"] or {}).get("size", current["size"])
    if size > current["size"] or recorded < current["size"]:
        owned = current["marker"] is not None or not current["holds"]
        if not owned:
            entry.setdefault("notes", []).append(
                "%s: the loop file %s is smaller than %s but node_storage did not make it; not grown"
                % (decl["name"], source, decl["size"]))
            return
        act(_action("grow_loop_file", "grow the loop file %s to %s" % (source, decl["size"]),
                    ["truncate", "--size", str(max(size, current["size"])), source], path=source,
                    loop_devices=current["loop_devices"]))
        entry["grow"] = bool(current["holds"])
        # written once the filesystem or pool has grown too (_finish_growth)
        entry["grown_marker"] = (source, dict(current["marker"] or {"made_directories": []},
                                              size=max(size, current["size"])))


def _finish_growth(entry):
    """The marker's new size, after everything a growth changes."""
    if entry.get("grown_marker"):
        source, marker = entry["grown_marker"]
        entry["actions"].append(_action("marker", "record %s as grown" % source, path=source,
                                        marker=marker))


def _plan_root_directory(decl, state, entry):
    root = decl.get("snapshotter_root")
    if root and not state["paths"].get(root["path"], {}).get("exists"):
        entry["actions"].append(_action("mkdir", "create the snapshotter root %s" % root["path"],
                                        path=root["path"], mode=0o700))
    if root and root["backend"] == "overlay" and "overlay" not in state["kernel_filesystems"]:
        # A node prerequisite of an overlay root, as containerd's unit does
        # (modprobe overlay) before it starts: snaplab's overlay backend
        # refuses while overlayfs is not in /proc/filesystems. First, so that
        # a kernel without it undoes nothing of this filesystem; once a plan.
        entry["actions"].insert(0, _action("modprobe", "load the overlay module (for the overlay root %s)"
                                           % root["path"], ["modprobe", "overlay"]))
        state["kernel_filesystems"] = state["kernel_filesystems"] + ["overlay"]


def _plan_absent(decl, current, _state, entry, lines, _allow, wipe_absent):
    name, source = decl["name"], current["source"]
    act = entry["actions"].append
    if current["elsewhere"] and (decl.get("loop_file") or wipe_absent):
        entry["refusals"].append("%s: %s is also mounted at %s, which this declaration does not name; "
                                 "unmount it there first" % (name, source, ", ".join(current["elsewhere"])))
        return
    if current["fstab_ours"]:
        _remove_fstab_line(lines, _strip(decl["mount_point"]))
        act(_action("fstab", "drop the fstab line", line=None, target=_strip(decl["mount_point"])))
    if current["ours"]:
        act(_action("umount", "unmount %s" % decl["mount_point"], ["umount", decl["mount_point"]]))
    if current["mount_point"]["exists"] and (not current["mount"] or current["ours"]):
        act(_action("rmdir_if_empty", "remove the mount point %s if empty" % decl["mount_point"],
                    path=decl["mount_point"]))
    _plan_source_teardown(decl, current, entry, wipe_absent)
    entry["after"] = "source: %s (%s)\nmounted: no\nfstab: none\n" % (
        source, "deleted" if decl.get("loop_file") else current["holds"] or "empty")


def _plan_source_teardown(decl, current, entry, wipe_absent):
    act = entry["actions"].append
    source = current["source"]
    if decl.get("loop_file"):
        if current["loop_devices"]:
            act(_action("detach", "detach the loop devices left on %s" % source, path=source))
        if current["exists"]:
            act(_action("delete", "delete the loop file %s" % source, path=source))
        if current["marker"] is not None:
            act(_action("delete_marker", "delete what node_storage made for %s: %s" % (
                source, ", ".join([source + MARKER_SUFFIX] + current["marker"].get("made_directories", [])[::-1])),
                path=source + MARKER_SUFFIX, directories=current["marker"].get("made_directories", [])))
    elif wipe_absent and current["holds"]:
        act(_action("wipefs", "wipe the signatures on %s" % source, ["wipefs", "--all", source]))


def _zfs_settings(decl):
    settings = {"mountpoint": _strip(decl["mount_point"])}
    settings.update({key: str(value) for key, value in (decl.get("zfs_properties") or {}).items()})
    return settings


def _plan_zfs_present(decl, current, state, entry, _lines, allow_format, _wipe):
    name, source, pool, dataset = decl["name"], current["source"], decl["zfs_pool"], decl["zfs_dataset"]
    zfs = state["zfs"]
    refuse = entry["refusals"].append
    act = entry["actions"].append
    imported = pool in zfs["pools"]
    on_source = imported and any(v in (source, os.path.realpath(source)) or os.path.basename(v)
                                 == os.path.basename(source) for v in zfs["vdevs"].get(pool, []))
    ours_or_empty = current["holds"] == "" or (current["holds"] == "zfs_member" and current["label"] == pool)
    mount = current["mount"]
    if decl.get("device") and not current["isblk"]:
        refuse("%s: %s is not a block device" % (name, decl["device"]))
    if mount and mount["source"] != dataset:
        refuse("%s: %s already has %s (%s) mounted, not %s; refusing to mount over it" % (
            name, decl["mount_point"], mount["source"], mount["fstype"], dataset))
    if imported and not on_source:
        refuse("%s: a pool named %s is already imported, and not from %s; refusing to touch it" % (
            name, pool, source))
    if not ours_or_empty:
        if current["in_use"]:
            refuse("%s: %s holds %s and is mounted; refusing to make a pool on it" % (
                name, source, current["holds"]))
        elif not allow_format:
            refuse("%s: %s already holds %s%s, not the pool %s. node_storage never formats a source "
                   "that holds something unless told: set node_storage_allow_format_existing=true to "
                   "make the pool anyway (its data will be lost)" % (
                       name, source, current["holds"],
                       " (pool %s)" % current["label"] if current["label"] else "", pool))
    if entry["refusals"]:
        return
    _plan_zfs_daemon(zfs, entry)
    if decl.get("loop_file"):
        _plan_loop_file(decl, current, state, entry)
    if not imported:
        if current["holds"] == "zfs_member" and current["label"] == pool:
            act(_action("zpool_import", "import the pool %s" % pool,
                        ["zpool", "import", "-d", os.path.dirname(source), pool]))
        else:
            # the pool's root dataset is not mounted (-m none): only the declared dataset is
            act(_action("zpool_create", "create the pool %s on %s" % (pool, source),
                        ["zpool", "create"] + (["-f"] if current["holds"] else []) + ["-m", "none"]
                        + list(decl["mkfs_options"]) + [pool, source], undo=["zpool", "destroy", pool]))
    elif entry.get("grow"):
        act(_action("zpool_online", "grow the pool %s to its loop file" % pool,
                    ["zpool", "online", "-e", pool, source]))
    _finish_growth(entry)
    if imported or not any(action["kind"] == "zpool_import" for action in entry["actions"]):
        entry["actions"].extend(zfs_dataset_actions(decl, zfs["datasets"]))
    else:
        # what an imported pool's datasets are is known only once it is imported
        act(_action("zfs_datasets", "make the datasets of %s as declared, once imported" % pool,
                    decl=decl))
    _plan_root_directory(decl, state, entry)
    entry["after"] = "source: %s (zfs_member %s)\nmounted: %s (zfs)\nfstab: none\n" % (source, pool, dataset)


def zfs_dataset_actions(decl, datasets):
    """The dataset (and the zfs backend's root dataset) as declared, from
    `datasets` ({name: {property: value}} of those that exist)."""
    dataset, actions = decl["zfs_dataset"], []
    have = datasets.get(dataset)
    settings = _zfs_settings(decl)
    if have is None:
        actions.append(_action("zfs_create", "create the dataset %s" % dataset,
                               ["zfs", "create"] + ["-o%s=%s" % item for item in settings.items()] + [dataset]))
    else:
        for key, value in settings.items():
            if have.get(key) != value:
                actions.append(_action("zfs_set", "set %s=%s on %s" % (key, value, dataset),
                                       ["zfs", "set", "%s=%s" % (key, value), dataset]))
        if have.get("mounted") == "no":
            actions.append(_action("zfs_mount", "mount the dataset %s" % dataset, ["zfs", "mount", dataset]))
    root = decl.get("snapshotter_root")
    if root and root["backend"] == "zfs" and _zfs_root_dataset(decl) not in datasets:
        actions.append(_action("zfs_create", "create the snapshotter root's dataset %s" % _zfs_root_dataset(decl),
                               ["zfs", "create", "-o", "mountpoint=" + _strip(root["path"]),
                                _zfs_root_dataset(decl)]))
    return actions


def _read_datasets(run, decl):
    names = [decl["zfs_dataset"]] + ([_zfs_root_dataset(decl)] if decl.get("snapshotter_root") else [])
    properties = ["mounted", "mountpoint"] + sorted(decl.get("zfs_properties") or {})
    datasets = {}
    for name in names:
        rc, out, _err = run(["zfs", "get", "-H", "-o", "name,property,value", ",".join(properties), name])
        if rc == 0:  # else: no such dataset
            datasets.update(parse_zfs_get(out))
    return datasets


def _plan_zfs_daemon(zfs, entry):
    """zfs-fuse's daemon must answer before any zpool/zfs command."""
    if zfs["answers"] or any(action["kind"] == "zfs_daemon" for action in entry["actions"]):
        return
    if zfs["kernel"]:
        entry["actions"].append(_action("zfs_daemon", "load the zfs module", ["modprobe", "zfs"]))
    elif zfs["systemd"]:
        entry["actions"].append(_action("zfs_daemon", "start the zfs-fuse service",
                                        ["systemctl", "enable", "--now", "zfs-fuse"]))
    else:
        entry["actions"].append(_action("zfs_daemon", "start the zfs-fuse daemon", None,
                                        pidfile=zfs["pidfile"], options=zfs["fuse_options"], fuse=True))
    zfs["answers"] = True  # for the next zfs entry of this plan


def _plan_zfs_absent(decl, current, state, entry, _lines, _allow, wipe_absent):
    name, source, pool = decl["name"], current["source"], decl["zfs_pool"]
    zfs = state["zfs"]
    imported = pool in zfs["pools"]
    on_source = imported and any(v in (source, os.path.realpath(source)) or os.path.basename(v)
                                 == os.path.basename(source) for v in zfs["vdevs"].get(pool, []))
    if imported and not on_source:
        entry["refusals"].append("%s: the imported pool %s is not on %s; refusing to export it" % (
            name, pool, source))
        return
    if imported:
        entry["actions"].append(_action("zpool_export", "export the pool %s" % pool,
                                        ["zpool", "export", pool]))
    if current["mount_point"]["exists"] and (not current["mount"] or imported):
        entry["actions"].append(_action("rmdir_if_empty", "remove the mount point %s if empty"
                                        % decl["mount_point"], path=decl["mount_point"]))
    _plan_source_teardown(decl, current, entry, wipe_absent)
    if zfs["fuse_marker"]:
        entry["actions"].append(_action("zfs_fuse_stop", "stop the zfs-fuse daemon node_storage started, "
                                        "if no pool is left", None, pidfile=zfs["pidfile"]))
    entry["after"] = "source: %s\npool: exported\n" % source


# -- applying -----------------------------------------------------------------


def apply(planned, run, fstab):
    """Carry out a plan (refused plans are never applied: the caller fails
    first). Returns the actions done, by filesystem. A failed step raises
    StepFailed after undoing what that filesystem's earlier steps made."""
    done = {}
    for entry in planned["filesystems"]:
        undo = []
        for action in entry["actions"]:
            action.setdefault("fstab_path", fstab)
            try:
                _do(action, run, undo)
            except (StepFailed, OSError) as err:
                _undo(undo, run)
                raise StepFailed("%s: %s: %s" % (entry["name"], action["say"], err)) from None
            done.setdefault(entry["name"], []).append(action["say"])
    return done


def _edit_fstab(action, undo):
    """This filesystem's line only, in the fstab as it is now."""
    path = action["fstab_path"]
    old = _read_file(path) or ""
    lines = old.splitlines()
    _remove_fstab_line(lines, action["target"])
    if action["line"]:
        lines.append(action["line"])
    _write_atomically(path, "\n".join(lines) + "\n" if lines else "")
    undo.append(("write", (path, old)))


def _write_atomically(path, text):
    temporary = path + ".node_storage.tmp"
    with open(temporary, "w", encoding="utf-8") as stream:
        stream.write(text)
    if os.path.exists(path):
        os.chmod(temporary, os.stat(path).st_mode & 0o7777)
    os.replace(temporary, path)


def _run(run, argv, ok=(0,)):
    rc, out, err = run(argv)
    if rc not in ok:
        raise StepFailed(_one_line(argv, rc, err))
    return out


def _do(action, run, undo):
    kind = action["kind"]
    if kind == "mkdir":
        os.makedirs(action["path"], exist_ok=True)
        if action.get("mode") is not None:
            os.chmod(action["path"], action["mode"])
        if action.get("made"):
            undo.append(("rmdirs", action["made"]))
    elif kind == "loop_file":
        # The marker first: killed before the file, the next run makes the
        # file; after it, the file is the role's (absent deletes it).
        _write_marker(action)
        undo.append(("unlink", action["path"] + MARKER_SUFFIX))
        _run(run, action["argv"])
        undo.append(("unlink", action["path"]))
        os.chmod(action["path"], 0o600)
    elif kind == "grow_loop_file":
        _run(run, action["argv"])
        for device in action["loop_devices"]:
            _run(run, ["losetup", "--set-capacity", device])
    elif kind == "marker":
        _write_marker(action)
    elif kind == "grow_filesystem":
        _grow_filesystem(action, run)
    elif kind == "check_xfs":
        found = parse_xfs_info(_run(run, action["argv"]))
        if found != action["wanted"]:
            raise StepFailed("the xfs on %s has ftype=%d reflink=%d, not ftype=%d reflink=%d as declared; "
                             "node_storage does not reformat an existing filesystem" % (
                                 action["source"], found["ftype"], found["reflink"],
                                 action["wanted"]["ftype"], action["wanted"]["reflink"]))
    elif kind == "fstab":
        _edit_fstab(action, undo)
    elif kind == "rmdir_if_empty":
        if os.path.isdir(action["path"]) and not os.listdir(action["path"]):
            os.rmdir(action["path"])
    elif kind == "detach":
        for device in parse_losetup(_run(run, ["losetup", "--json", "--list", "--output",
                                               "NAME,BACK-FILE"])).get(action["path"], []):
            rc, _out, err = run(["losetup", "--detach", device])
            if rc != 0 and "No such device" not in err:
                raise StepFailed(_one_line(["losetup", "--detach", device], rc, err))
    elif kind == "delete":
        os.unlink(action["path"])
    elif kind == "delete_marker":
        if os.path.exists(action["path"]):
            os.unlink(action["path"])
        _remove_empty_directories(action["directories"])
    elif kind == "zfs_daemon" and action.get("fuse"):
        _start_zfs_fuse(action, run)
    elif kind == "zfs_datasets":
        for step in zfs_dataset_actions(action["decl"], _read_datasets(run, action["decl"])):
            _run(run, step["argv"])
    elif kind == "zfs_fuse_stop":
        _stop_zfs_fuse(action, run)
    else:
        _run(run, action["argv"])
        if action.get("undo"):
            undo.append(("run", action["undo"]))


def _remove_empty_directories(directories):
    """Deepest first, each only if empty (something else may live there now)."""
    for directory in reversed(directories):
        if os.path.isdir(directory) and not os.listdir(directory):
            os.rmdir(directory)


def _write_marker(action):
    # Whole or not at all: a torn marker would stop every later run.
    _write_atomically(action["path"] + MARKER_SUFFIX, json.dumps(
        dict(action["marker"], made_by="snaplab.snapshots.node_storage")) + "\n")


def _undo(undo, run):
    """Best effort, newest first: the failure being reported matters more."""
    for what, target in reversed(undo):
        if what == "run":
            run(target)
        elif what == "write":
            _write_atomically(*target)
        elif what == "unlink" and os.path.exists(target):
            os.unlink(target)
        elif what == "rmdirs":
            _remove_empty_directories(target)


def _grow_filesystem(action, run):
    mount_point, fstype = action["mount_point"], action["fstype"]
    if fstype == "ext4":
        device = _run(run, ["findmnt", "--noheadings", "--output", "SOURCE", "--mountpoint", mount_point]).strip()
        try:
            _run(run, ["resize2fs", device])
        except StepFailed as failed:
            if "Permission denied" in str(failed) and not _has_capability(CAP_SYS_RESOURCE):
                # The kernel's online resize (EXT4_IOC_RESIZE_FS) wants
                # CAP_SYS_RESOURCE, which a container's root often lacks.
                raise StepFailed("%s; growing a mounted ext4 needs CAP_SYS_RESOURCE, which this "
                                 "process does not have (a container?): unmount %s and grow it "
                                 "there with resize2fs, or run where root has it"
                                 % (failed, mount_point)) from None
            raise
    elif fstype == "xfs":
        _run(run, ["xfs_growfs", mount_point])
    elif fstype == "btrfs":
        _run(run, ["btrfs", "filesystem", "resize", "max", mount_point])


CAP_SYS_RESOURCE = 24


def _has_capability(number):
    """Whether this process has capability `number` in its effective set."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) >> number & 1)
    except (OSError, ValueError):
        pass
    return True  # cannot tell: the command's own error stands


def _start_zfs_fuse(action, run):
    if run(["pgrep", "--exact", "zfs-fuse"])[0] != 0:
        _run(run, ["zfs-fuse", "--pidfile", action["pidfile"]] + list(action.get("options") or []))
        with open(action["pidfile"] + ZFS_FUSE_MARKER_SUFFIX, "w", encoding="utf-8") as stream:
            stream.write("zfs-fuse started by the node_storage role; state=absent stops it when no pool is left\n")
    for _attempt in range(40):
        if run(["zpool", "list", "-H"])[0] == 0:
            return
        time.sleep(0.5)
    raise StepFailed("zfs-fuse started but zpool list does not answer after 20 seconds")


def _stop_zfs_fuse(action, run):
    rc, out, _err = run(["zpool", "list", "-H", "-o", "name"])
    if rc == 0 and out.split():
        return  # a pool is still imported
    pid = (_read_file(action["pidfile"]) or "").strip()
    if rc == 0 and pid.isdigit():
        run(["kill", "-TERM", pid])
        for _attempt in range(60):
            if not os.path.exists("/proc/" + pid):
                break
            time.sleep(0.5)
    for path in (action["pidfile"], action["pidfile"] + ZFS_FUSE_MARKER_SUFFIX):
        if os.path.exists(path):
            os.unlink(path)
