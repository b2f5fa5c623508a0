#!/usr/bin/env python3
"""libvirt for the lab, leaving the host as it was found.

    python3 -m labs.libvirt up STATE       start virtlogd/libvirtd if they are not running
    python3 -m labs.libvirt down STATE     remove the lab's domains and volumes, undo
                                           what `up` did (daemons, the storage pool)
    python3 -m labs.libvirt cleanup        remove the lab's domains and volumes only
    python3 -m labs.libvirt report         what libvirt holds now (domains, volumes,
                                           networks, daemons)

vagrant-libvirt needs libvirtd (and libvirtd needs virtlogd for the qemu
logs). Here there is no systemd: they are started by hand (`virtlogd -d`,
`libvirtd -d`) and stopped again by the pid they wrote, but only those this
run started. Under systemd, `systemctl start` / `stop`, with the same rule.

What a run leaves behind in libvirt is removed by name, never by guess:

- domains named snaplab-lab-* (the Vagrantfile's default_prefix) and their
  volumes (the root overlay and the data disks, snaplab-lab-*.img / *.qcow2);
- box volumes that vagrant-libvirt uploads into the `default` pool on the
  first `vagrant up` of a box (snaplab-VAGRANTSLASH-*). They are a cache
  vagrant-libvirt would reuse, but uploading one again costs 2-5 s (measured:
  the 315 MiB bookworm box, 2.1-4.7 s) against 0.3-0.5 GiB per release left
  in /var/lib/libvirt/images, so they go too (`down --keep-box-volumes`
  keeps them);
- the `default` storage pool itself, when vagrant-libvirt defined it during
  this run (it does so if it is missing).

For a TCG lab, libvirt's qemu capabilities are probed first where /dev/kvm
cannot be seen. Where /dev/kvm exists but neither works for a guest nor is
accessible to libvirt's qemu user (here: mode 0600, no udev to give it to
the kvm group), libvirt 9 probes qemu with KVM on, then finds that cache
stale at every later lookup ("KVM was enabled when probing ..., but it
should be disabled now") and probes again: 4 s a probe, about 130 s of a
`vagrant up` (two thirds of it; a `virsh define` took 31 s instead of 1).
So before the lab's libvirtd starts, a libvirtd in a mount namespace of its
own, whose /dev/kvm is an empty file only root can open, probes once and
writes libvirt's cache without KVM, and exits. The lab's libvirtd then
finds that cache consistent with what it checks and keeps it. (It cannot
itself run with /dev/kvm covered: it moves every mount under /dev into each
domain's own /dev, and fails on a file mount: "Unable to move /dev/kvm
mount".) The host's /dev/kvm is not touched. Under systemd libvirtd is the
host's own service: left as it is.

The state of one run (what it started, whether the pool existed) is a small
JSON file, so that `up` and `down` can be separate processes (Molecule's
create and destroy); `session()` is the same as a context manager.
"""

import argparse
import contextlib
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time

URI = "qemu:///system"
DOMAIN_PREFIX = "snaplab-lab-"
# vagrant-libvirt names a box's volume <box name with / as -VAGRANTSLASH->_vagrant_box_image_...
BOX_VOLUME_PREFIX = "snaplab-VAGRANTSLASH-"
POOL = "default"
# In start order; stopped in reverse.
DAEMONS = ("virtlogd", "libvirtd")
START_WAIT_S = 30
# What covers /dev/kvm in the namespace of the libvirtd that probes for TCG:
# an empty file, mode 0600, unlinked again once the bind mount holds it.
NO_KVM_FILE = "/run/snaplab-lab-no-kvm"
STOP_WAIT_S = 30


class LibvirtError(Exception):
    """libvirt could not be started, asked, or cleaned; the message says why."""


def say(text):
    print("[libvirt] %s" % text, flush=True)


def virsh(*argv, check=True):
    """`virsh -c qemu:///system argv...`; its stdout."""
    done = subprocess.run(["virsh", "-q", "-c", URI, *argv], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, universal_newlines=True, check=False)
    if check and done.returncode != 0:
        raise LibvirtError("virsh %s: %s" % (" ".join(argv), done.stderr.strip()))
    return done.stdout


def answers():
    """Whether libvirtd answers on its system socket."""
    if shutil.which("virsh") is None:
        return False
    return subprocess.run(["virsh", "-q", "-c", URI, "uri"], stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL, check=False).returncode == 0


def under_systemd():
    return os.path.isdir("/run/systemd/system")


def pidfile(name):
    return "/run/%s.pid" % name


def daemon_pid(name):
    """The pid of the running daemon `name` (from its pidfile, checked
    against /proc), else None."""
    try:
        with open(pidfile(name)) as f:
            pid = int(f.read().strip())
        with open("/proc/%d/comm" % pid) as f:
            comm = f.read().strip()
        with open("/proc/%d/stat" % pid) as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, ValueError, IndexError):
        return None
    return pid if comm == name and state != "Z" else None


def hidden_kvm_argv(argv):
    """`argv` run in a private mount namespace in which /dev/kvm is covered
    by an empty file only root can open (see the module's docstring)."""
    fd = os.open(NO_KVM_FILE, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    os.fchmod(fd, 0o600)
    os.close(fd)
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c",
            'mount --bind "$0" /dev/kvm && exec "$@"', NO_KVM_FILE] + list(argv)


def leftover_probe_pid():
    """The pid of a probing libvirtd (one that sees /dev/kvm as the empty
    file) that a killed run left running, else None: it is in no run's
    state, and every domain it started would fail."""
    pid = daemon_pid("libvirtd")
    if pid is None:
        return None
    try:
        seen = os.stat("/proc/%d/root/dev/kvm" % pid)
    except OSError:
        return None
    return pid if stat.S_ISREG(seen.st_mode) else None


def probe_capabilities_without_kvm():
    """libvirt's qemu capabilities cache written by a libvirtd that cannot
    see /dev/kvm (see the module's docstring); that libvirtd is stopped
    again. Only when no libvirtd runs and /dev/kvm exists."""
    if not os.path.exists("/dev/kvm") or daemon_pid("libvirtd") is not None:
        return
    try:
        subprocess.run(hidden_kvm_argv(["libvirtd", "-d"]), check=True)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(NO_KVM_FILE)
    pid = wait_ready("libvirtd", None)
    try:
        # The host's capabilities probe every emulator; the domain's, the one used.
        virsh("capabilities")
        virsh("domcapabilities", "--virttype", "qemu")
    finally:
        stop_daemon("libvirtd", pid)


def wait_ready(name, started):
    """The pid of `name` (or `started`) once it runs and, for libvirtd, answers."""
    deadline = time.monotonic() + START_WAIT_S
    while True:
        if started is None:
            started = daemon_pid(name)
        ready = started is not None and (name != "libvirtd" or answers())
        if ready:
            return started
        if time.monotonic() > deadline:
            raise LibvirtError("%s did not come up within %d s" % (name, START_WAIT_S))
        time.sleep(0.1)


def start_daemon(name, tcg=False):
    """Start `name` if it does not run; its pid (or 'systemd') if this call
    started it, else None. `tcg`: the lab runs its VMs under TCG (libvirtd's
    capabilities are probed without KVM first; see the module's docstring)."""
    if under_systemd():
        active = subprocess.run(["systemctl", "is-active", "--quiet", name], check=False)
        if active.returncode == 0:
            return None
        subprocess.run(["systemctl", "start", name], check=True)
        started = "systemd"
    else:
        if name == "libvirtd" and leftover_probe_pid() is not None:
            # A run killed while its probe ran: that libvirtd goes first.
            stop_daemon(name, leftover_probe_pid())
        if daemon_pid(name) is not None:
            return None
        if shutil.which(name) is None:
            raise LibvirtError("%s is not installed: make lab-deps" % name)
        if tcg and name == "libvirtd":
            probe_capabilities_without_kvm()
        # -d daemonizes; the daemon writes /run/NAME.pid itself.
        subprocess.run([name, "-d"], check=True)
        started = None
    return wait_ready(name, started)


def stop_daemon(name, started):
    """Stop `name` if `started` says this run started it (and, for a pid,
    that pid is still that daemon)."""
    if started == "systemd":
        subprocess.run(["systemctl", "stop", name], check=False)
        return
    if not isinstance(started, int) or daemon_pid(name) != started:
        return
    os.kill(started, signal.SIGTERM)
    deadline = time.monotonic() + STOP_WAIT_S
    while daemon_pid(name) == started:
        if time.monotonic() > deadline:
            raise LibvirtError("%s (pid %d) did not exit within %d s of SIGTERM"
                               % (name, started, STOP_WAIT_S))
        time.sleep(0.1)


# ---------------------------------------------------------------------------
# What libvirt holds


def domains():
    """{name: state} of every domain."""
    found = {}
    for line in virsh("list", "--all", "--name").splitlines():
        name = line.strip()
        if name:
            found[name] = virsh("domstate", name, check=False).strip() or "unknown"
    return found


def pool_info():
    """None if the pool is not defined, else {'active': bool, 'path': str}."""
    listed = virsh("pool-list", "--all", "--name").split()
    if POOL not in listed:
        return None
    active = POOL in virsh("pool-list", "--name").split()
    path = ""
    for line in virsh("pool-dumpxml", POOL).splitlines():
        line = line.strip()
        if line.startswith("<path>"):
            path = line[len("<path>"):-len("</path>")]
    return {"active": active, "path": path}


def volumes():
    """Names of the volumes in the pool (empty if it is not active)."""
    info = pool_info()
    if not info or not info["active"]:
        return []
    virsh("pool-refresh", POOL, check=False)
    return [line.split()[0] for line in virsh("vol-list", POOL).splitlines() if line.strip()]


def active_networks():
    return virsh("net-list", "--name").split()


def ours_domain(name):
    return name.startswith(DOMAIN_PREFIX)


def ours_volume(name):
    return name.startswith(DOMAIN_PREFIX) or name.startswith(BOX_VOLUME_PREFIX)


QEMU_LOG_DIR = "/var/log/libvirt/qemu"


def collect_logs(dest):
    """Move libvirt's logs of the lab's domains (qemu's log, the serial
    console) into `dest`: they belong to the run, not to /var/log."""
    moved = []
    if not os.path.isdir(QEMU_LOG_DIR):
        return moved
    for name in sorted(os.listdir(QEMU_LOG_DIR)):
        if name.startswith(DOMAIN_PREFIX) and name.endswith(".log"):
            os.makedirs(dest, exist_ok=True)
            shutil.move(os.path.join(QEMU_LOG_DIR, name), os.path.join(dest, name))
            moved.append("log %s -> %s" % (name, dest))
    return moved


def cleanup(box_volumes=True):
    """Remove the lab's domains (stopped first) and volumes; returns what was
    removed. Only names the lab owns (module docstring)."""
    removed = []
    for name in sorted(domains()):
        if not ours_domain(name):
            continue
        virsh("destroy", name, check=False)  # fails when it is not running: fine
        # --remove-all-storage deletes the domain's own volumes (its overlay and
        # data disks), never the box volume they are backed by.
        virsh("undefine", name, "--remove-all-storage", "--managed-save",
              "--snapshots-metadata", "--nvram", check=False)
        if name in domains():
            raise LibvirtError("could not remove domain %s" % name)
        removed.append("domain " + name)
    for name in volumes():
        if ours_volume(name) and (box_volumes or not name.startswith(BOX_VOLUME_PREFIX)):
            virsh("vol-delete", "--pool", POOL, name)
            removed.append("volume " + name)
    return removed


# ---------------------------------------------------------------------------
# One run


def read_state(path):
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        return None


def write_state(path, state):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    temp = path + ".tmp"
    with open(temp, "w") as f:
        json.dump(state, f, indent=2)
        f.write("\n")
    os.rename(temp, path)


def up(state_path, tcg=False):
    """Make libvirt usable; record what this run changes in `state_path`.
    A second `up` with the same state file (a second VM) adds to it.
    `tcg`: the lab runs its VMs under TCG (see the module's docstring)."""
    state = read_state(state_path) or {"started": {}}
    for name in DAEMONS:
        started = start_daemon(name, tcg=tcg)
        if started is not None:
            state["started"][name] = started
            say("started %s (%s)" % (name, "systemd" if started == "systemd" else "pid %d" % started))
            write_state(state_path, state)  # at once: a later failure must still stop it
    if "pool" not in state:
        info = pool_info()
        state["pool"] = info
        state["pool_dir_existed"] = os.path.isdir(info["path"] if info else "/var/lib/libvirt/images")
        state["networks_active"] = active_networks()
        write_state(state_path, state)
    return state


def down(state_path, box_volumes=True):
    """Remove the lab's domains and volumes, then undo what `up` recorded:
    the pool if vagrant-libvirt defined it, the daemons this run started.
    Returns what was removed or stopped. Safe to call twice, or without `up`."""
    state = read_state(state_path) or {"started": {}}
    done = []
    problems = []
    if answers():
        try:
            done += cleanup(box_volumes=box_volumes)
            done += collect_logs(os.path.dirname(os.path.abspath(state_path)))
            if "pool" in state and state["pool"] is None and pool_info() is not None:
                info = pool_info()
                left = [v for v in volumes() if not ours_volume(v)]
                if left:
                    problems.append("pool %s was made by this run but holds other volumes (%s): "
                                    "kept" % (POOL, ", ".join(left)))
                else:
                    virsh("pool-destroy", POOL, check=False)
                    virsh("pool-undefine", POOL)
                    done.append("pool " + POOL)
                    if not state.get("pool_dir_existed") and info["path"]:
                        with contextlib.suppress(OSError):
                            os.rmdir(info["path"])
            new_networks = sorted(set(active_networks()) - set(state.get("networks_active", [])))
            if new_networks:
                # Never started by the lab; say so loudly rather than stop
                # something another user may have started meanwhile.
                problems.append("libvirt networks became active during the run: %s"
                                % ", ".join(new_networks))
        except LibvirtError as err:
            problems.append(str(err))
    elif state["started"]:
        problems.append("libvirtd does not answer: cannot check for the lab's domains")
    for name in reversed(DAEMONS):
        started = state["started"].get(name)
        if started is not None:
            try:
                stop_daemon(name, started)
                done.append("stopped " + name)
            except LibvirtError as err:
                problems.append(str(err))
    if problems:
        write_state(state_path, state)
        raise LibvirtError("; ".join(problems))
    with contextlib.suppress(FileNotFoundError):
        os.unlink(state_path)
    return done


@contextlib.contextmanager
def session(state_path):
    """libvirt up for the block; everything the lab made removed and what
    this run started stopped afterwards, also when the block fails."""
    up(state_path)
    try:
        yield
    finally:
        for line in down(state_path):
            say(line)


def report():
    """What libvirt and the host look like now, for people and tests."""
    lines = ["daemons: " + ", ".join("%s %s" % (n, "pid %d" % daemon_pid(n) if daemon_pid(n)
                                                   else "not running") for n in DAEMONS)]
    if answers():
        lines.append("domains: %s" % (", ".join("%s (%s)" % kv for kv in domains().items()) or "none"))
        info = pool_info()
        lines.append("pool %s: %s" % (POOL, "not defined" if info is None else
                                      ("active" if info["active"] else "inactive") + " " + info["path"]))
        lines.append("volumes: %s" % (", ".join(volumes()) or "none"))
        lines.append("active networks: %s" % (", ".join(active_networks()) or "none"))
    else:
        lines.append("libvirtd does not answer")
    return lines


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python3 -m labs.libvirt", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("up", help="start the daemons if needed, record the host's state")
    p.add_argument("state", help="the run's state file")
    p = commands.add_parser("down", help="remove the lab's domains/volumes, undo `up`")
    p.add_argument("state", help="the run's state file")
    p.add_argument("--keep-box-volumes", action="store_true",
                   help="keep the uploaded box volumes in the pool (a cache)")
    commands.add_parser("cleanup", help="remove the lab's domains and volumes only")
    commands.add_parser("report", help="what libvirt holds now")
    args = parser.parse_args(argv)
    try:
        if args.command == "up":
            up(args.state)
        elif args.command == "down":
            for line in down(args.state, box_volumes=not args.keep_box_volumes):
                say(line)
        elif args.command == "cleanup":
            if not answers():
                raise LibvirtError("libvirtd does not answer")
            for line in cleanup():
                say("removed " + line)
        elif args.command == "report":
            for line in report():
                print(line)
    except (LibvirtError, subprocess.CalledProcessError) as err:
        print("error: %s" % err, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
