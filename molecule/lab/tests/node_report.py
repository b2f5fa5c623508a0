"""What test_lab.py checks, read in the VM in one go: run there as
`python3 -c <this file> <lab-vars JSON> <suite workdir>`, it prints one JSON
object. A command costs an SSH round trip and a process start in a slow
(TCG) guest; this is one. Only the standard library (the guest's python3).

In order: the kernel, the release, zfs; every mount, the fstab, each
declared disk and pool; each snapshotter root's snapshots (as converge left
them); then each root used once through the snaplab CLI (a new active
snapshot on the chain, mounted, read, written, unmounted and removed; its
mount and directory go also when a step fails); and last what is left
(mounts, loop devices, pools, names in the mount points), which must
include nothing of the suite or of this use.
"""

import json
import os
import subprocess
import sys
import tempfile


def run(*argv, cwd=None):
    try:
        done = subprocess.run(argv, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              universal_newlines=True)
    except OSError as err:  # a missing tool is an answer (a shell's 127), not a lost report
        return {"argv": list(argv), "rc": 127, "stdout": "", "stderr": str(err)}
    return {"argv": list(argv), "rc": done.returncode, "stdout": done.stdout, "stderr": done.stderr}


def read(path):
    with open(path) as f:
        return f.read()


def mounts():
    """/proc/self/mounts as [{device, path, fstype, options}] (octal escapes undone)."""
    def unescape(field):
        return field.encode().decode("unicode_escape")
    found = []
    for line in read("/proc/self/mounts").splitlines():
        device, path, fstype, options = line.split()[:4]
        found.append({"device": unescape(device), "path": unescape(path), "fstype": fstype,
                      "options": options.split(",")})
    return found


def os_release():
    fields = {}
    for line in read("/etc/os-release").splitlines():
        if "=" in line:
            key, value = line.split("=", 1)
            fields[key] = value.strip().strip('"')
    return fields


def processes():
    names = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                names.append(read("/proc/%s/comm" % pid).strip())
            except OSError:
                pass  # gone meanwhile
    return names


def use_root(snaplab, root):
    """A new active snapshot on the chain: mounted, read, written, unmounted,
    removed. Each step's result; the mount and the directory always go."""
    key = "verify-%s" % root["filesystem"]
    target = tempfile.mkdtemp(prefix="snaplab-verify-", dir="/tmp")
    used = {"key": key, "steps": [], "base_txt": None}

    def step(name, done):
        used["steps"].append(dict(done, step=name))
        return done["rc"] == 0
    try:
        step("prepare", snaplab(root, "prepare", key, "top"))
        if step("mount", snaplab(root, "mount", target, key)):
            try:
                used["base_txt"] = read(os.path.join(target, "base.txt"))
                with open(os.path.join(target, "new.txt"), "w") as f:
                    f.write("written\n")
            finally:
                step("umount", run("umount", target))
        step("rm", snaplab(root, "rm", key))
    finally:
        os.rmdir(target)
    used["ls_after"] = snaplab(root, "--json", "ls")
    return used


def main():
    lab, workdir = json.loads(sys.argv[1]), sys.argv[2]

    def snaplab(root, *argv):
        """The snaplab CLI in the VM, from the copy the conformance role made."""
        return run(sys.executable, "-m", "snaplab", "--root", root["path"], "--backend", root["backend"],
                   *argv, cwd=workdir)

    filesystems = lab["lab_filesystems"]
    report = {
        "kernel": os.uname().release,
        "codename": os_release().get("VERSION_CODENAME"),
        "zfs_module": os.path.exists("/sys/module/zfs/version"),
        "processes": processes(),
        "mounts": mounts(),
        "fstab": read("/etc/fstab"),
        "realpath": {fs["device"]: os.path.realpath(fs["device"]) for fs in filesystems},
        "zpool_vdevs": {},
        "xfs_info": {fs["mount_point"]: run("xfs_info", fs["mount_point"])
                     for fs in filesystems if fs["fstype"] == "xfs"},
        "ls": {root["path"]: snaplab(root, "--json", "ls") for root in lab["lab_roots"]},
    }
    report["realpath"].update({m["device"]: os.path.realpath(m["device"])
                               for m in report["mounts"] if m["device"].startswith("/dev/")})
    for fs in filesystems:
        if fs["fstype"] == "zfs":
            status = run("zpool", "status", "-P", fs["zfs_pool"])
            # the vdevs as disks: each path in the config, resolved
            report["zpool_vdevs"][fs["zfs_pool"]] = dict(status, resolved=[
                os.path.realpath(field) for line in status["stdout"].splitlines()
                for field in line.split()[:1] if field.startswith("/dev/")])
    report["used"] = {root["path"]: use_root(snaplab, root) for root in lab["lab_roots"]}
    # what is left, after the suite and after the use above
    report["mountinfo_after"] = read("/proc/self/mountinfo")
    report["mounts_after"] = mounts()
    report["losetup_after"] = run("losetup", "--list", "--noheadings")
    report["zpools_after"] = run("zpool", "list", "-H", "-o", "name")
    report["left_in_mount_points"] = {fs["mount_point"]: sorted(os.listdir(fs["mount_point"]))
                                      for fs in filesystems}
    json.dump(report, sys.stdout)


if __name__ == "__main__":
    main()
