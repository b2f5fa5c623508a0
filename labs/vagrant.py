#!/usr/bin/env python3
"""Bring lab VMs up and down through Vagrant (the top-level Vagrantfile).

    python3 -m labs.vagrant up RELEASE [--instance-config FILE] [--vars FILE]
    python3 -m labs.vagrant destroy RELEASE
    python3 -m labs.vagrant down          every lab VM, then libvirt as it was found
    python3 -m labs.vagrant accel [RELEASE]   kvm or tcg, and why

`up` starts libvirtd if needed (labs/libvirt.py), adds RELEASE's box from
the box cache (labs/boxes.py) to Vagrant when Vagrant's copy is missing or
differs, decides between KVM and TCG (below), and runs `vagrant up RELEASE`.
With --instance-config it writes Molecule's instance config (127.0.0.1, the
forwarded port, user vagrant, the key `vagrant ssh-config` names); with
--vars the scenario's declaration for that VM (labs/matrix.py).

`down` destroys every lab VM Vagrant knows, removes the lab's domains and
volumes that are left anyway, removes the boxes `up` added to Vagrant (adding
one again takes ~3 s; --keep-boxes keeps them), and stops the daemons `up`
started. It is safe to run twice, or after a failed
`up`; Molecule's destroy and `make lab-smoke` end with it.

KVM or TCG: /dev/kvm is not enough (on this machine kind it opens, yet a
guest kernel hangs under it). So the box's own kernel is booted under KVM
for a few seconds: KVM is used only if it gets to userspace in time; the
answer is cached per host boot. LAB_ACCEL=kvm|tcg skips the probe.

Runs in the venv (python-vagrant); Vagrant's state goes to
$LAB_RUN_DIR/vagrant (default build/lab/vagrant), the run's state and logs
to $LAB_RUN_DIR.
"""

import argparse
import contextlib
import filecmp
import json
import os
import select
import signal
import socket
import subprocess
import sys
import time

import vagrant  # python-vagrant (requirements.txt)

# labs is not installed into the venv: run `python -m labs.vagrant` from the repository
# top, as molecule/lab and labs.run do.
from labs import boxes, libvirt, matrix

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROBE_TIMEOUT_S = 30
# Lines a Linux kernel prints on the serial console once it runs userspace.
PROBE_MARKERS = ("Run /init as init process", "Freeing unused kernel image",
                 "Run /sbin/init as init process")


# Lines of `vagrant up` that start a phase worth timing, and what to call it.
UP_PHASES = (("Uploading base box image", "uploading the box into libvirt's pool"),
             ("Creating image (snapshot", "creating the VM's disks"),
             ("Starting domain", "starting the domain"),
             ("Waiting for machine to boot", "booting, until SSH answers"),
             ("Machine booted and ready", "SSH answers"))


class LabError(Exception):
    """A lab VM could not be brought up or down; the message says why."""


_started = time.monotonic()


def say(text):
    print("[lab %5.0fs] %s" % (time.monotonic() - _started, text), flush=True)


def run_dir():
    return os.path.abspath(os.environ.get("LAB_RUN_DIR") or os.path.join(REPO, "build", "lab"))


def state_path(name):
    return os.path.join(run_dir(), name)


def read_json(path, default=None):
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        return default


def write_json(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".tmp", "w") as f:
        json.dump(data, f, indent=2)
        f.write("\n")
    os.rename(path + ".tmp", path)


# ---------------------------------------------------------------------------
# KVM or TCG


def boot_id():
    with open("/proc/sys/kernel/random/boot_id") as f:
        return f.read().strip()


def probe_kvm(image, timeout=PROBE_TIMEOUT_S, accelerator="kvm"):
    """(usable, reason): boot `image` under KVM with the CPU the lab would
    use (host-passthrough), reading its serial console until the kernel runs
    userspace or `timeout` passes. Writes go to a throwaway snapshot.
    (accelerator="tcg" runs the same probe under TCG, for the tests.)"""
    if accelerator == "kvm":
        if not os.path.exists("/dev/kvm"):
            return False, "no /dev/kvm"
        try:
            os.close(os.open("/dev/kvm", os.O_RDWR))
        except OSError as err:
            return False, "/dev/kvm does not open: %s" % err.strerror
    cpu = "host" if accelerator == "kvm" else "max"
    argv = ["qemu-system-x86_64", "-accel", accelerator, "-cpu", cpu, "-m", "512", "-smp", "1",
            "-nodefaults", "-display", "none", "-monitor", "none", "-no-reboot", "-snapshot",
            "-drive", "file=%s,if=virtio,format=qcow2" % image, "-serial", "stdio"]
    start = time.monotonic()
    process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, start_new_session=True)
    seen = b""
    try:
        while time.monotonic() - start < timeout:
            ready, _, _ = select.select([process.stdout], [], [], 0.5)
            if ready:
                chunk = os.read(process.stdout.fileno(), 65536)
                if not chunk:
                    break  # qemu exited
                seen = (seen + chunk)[-65536:]
                text = seen.decode(errors="replace")
                if any(marker in text for marker in PROBE_MARKERS):
                    return True, "the box's kernel reached userspace under %s in %.1f s" % (
                        accelerator.upper(), time.monotonic() - start)
        process.poll()
        tail = seen.decode(errors="replace").strip().splitlines()[-1:] or ["no console output"]
        if process.returncode is not None:
            return False, "qemu -accel %s exited (%d): %s" % (accelerator, process.returncode,
                                                              tail[0][:200])
        return False, "the box's kernel did not reach userspace under %s within %d s (last: %s)" % (
            accelerator.upper(), timeout, tail[0][:120])
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        process.stdout.close()


def accel(release):
    """'kvm' or 'tcg' for `release`'s box, with the reason; LAB_ACCEL wins."""
    forced = os.environ.get("LAB_ACCEL", "").strip().lower()
    if forced:
        if forced not in ("kvm", "tcg"):
            raise LabError("LAB_ACCEL must be kvm or tcg, not %r" % forced)
        return forced, "LAB_ACCEL=%s" % forced
    image = boxes.current_box(release).image
    cache = state_path("accel.json")
    known = read_json(cache, {})
    key = "%s %s" % (boot_id(), image)
    if key in known:
        return known[key]["accel"], known[key]["reason"] + " (cached for this boot)"
    usable, reason = probe_kvm(image)
    result = {"accel": "kvm" if usable else "tcg", "reason": reason}
    write_json(cache, {key: result})
    return result["accel"], result["reason"]


# ---------------------------------------------------------------------------
# Boxes and machines


def vagrant_home():
    return os.environ.get("VAGRANT_HOME") or os.path.expanduser("~/.vagrant.d")


def vagrant_box_image(name):
    """Where Vagrant keeps the disk of box `name` (unversioned, libvirt)."""
    return os.path.join(vagrant_home(), "boxes", name.replace("/", "-VAGRANTSLASH-"),
                        "0", "libvirt", "box.img")


def vagrant_env(accel_mode="tcg"):
    env = dict(os.environ, VAGRANT_DOTFILE_PATH=os.path.join(run_dir(), "vagrant"),
               LAB_ACCEL=accel_mode, VAGRANT_NO_COLOR="1",
               # No version checks or plugin lookups on the network.
               VAGRANT_CHECKPOINT_DISABLE="1", VAGRANT_BOX_UPDATE_CHECK_DISABLE="1")
    env.setdefault("LIBVIRT_DEFAULT_URI", libvirt.URI)
    return env


def vagrant_cli(log_name, accel_mode="tcg"):
    log = os.path.join(run_dir(), log_name)
    os.makedirs(run_dir(), exist_ok=True)
    return vagrant.Vagrant(root=REPO, env=vagrant_env(accel_mode),
                           out_cm=vagrant.make_file_cm(log), err_cm=vagrant.make_file_cm(log)), log


def log_tail(path, lines=25):
    with contextlib.suppress(OSError):
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    return ""


def ensure_box(release, name):
    """Vagrant's box `name` holds exactly the cached box of `release`; add it
    (replacing an older one) if not. True if it was added."""
    box = boxes.current_box(release)
    if not box.is_built():
        raise LabError("%s's box is not built for the current recipe (%s): python3 labs/boxes.py "
                       "build %s" % (release, box.digest, release))
    installed = vagrant_box_image(name)
    if os.path.exists(installed) and os.path.getsize(installed) == os.path.getsize(box.image) \
            and filecmp.cmp(installed, box.image, shallow=False):
        return False
    start = time.monotonic()
    cli, log = vagrant_cli("vagrant-box.log")
    try:
        cli.box_add(name, box.box, provider="libvirt", force=True)
    except subprocess.CalledProcessError:
        raise LabError("vagrant box add %s failed:\n%s" % (name, log_tail(log))) from None
    say("added box %s from %s (%.1f s)" % (name, os.path.basename(box.box), time.monotonic() - start))
    return True


def check_ports_free(rel):
    """The VM's SSH port (TCP) and tunnel ports (UDP) on 127.0.0.1 are free."""
    port = rel["ssh_port"]
    for number, kind in ((port, socket.SOCK_STREAM), (port + 20000, socket.SOCK_DGRAM),
                         (port + 21000, socket.SOCK_DGRAM)):
        with socket.socket(socket.AF_INET, kind) as s:
            try:
                s.bind(("127.0.0.1", number))
            except OSError as err:
                raise LabError("127.0.0.1:%d (%s) is in use (%s): another lab VM of %s running? "
                               "python3 -m labs.vagrant down"
                               % (number, "tcp" if kind == socket.SOCK_STREAM else "udp",
                                  err.strerror, rel["name"])) from None


def check_loopback_only(release):
    """Every socket libvirt's daemons and qemu listen on is on 127.0.0.1 (the
    network rule); the listing is kept in the run directory. LabError if not."""
    listing = subprocess.run(["ss", "-Hltunp"], stdout=subprocess.PIPE, universal_newlines=True,
                             check=True).stdout
    # libvirt names the qemu process after the domain (-name guest=...).
    pids = set(subprocess.run(["pgrep", "-f", "qemu-system.*guest=%s%s," % (libvirt.DOMAIN_PREFIX, release)],
                              stdout=subprocess.PIPE, universal_newlines=True).stdout.split())
    pids |= {str(libvirt.daemon_pid(name)) for name in libvirt.DAEMONS if libvirt.daemon_pid(name)}
    ours = [line for line in listing.splitlines()
            if any("pid=%s," % pid in line for pid in pids)]
    with open(state_path("listeners-%s.txt" % release), "w") as f:
        f.write("\n".join(ours) + "\n")
    wrong = [line for line in ours if not line.split()[4].startswith("127.0.0.1:")]
    if wrong:
        raise LabError("listening beyond loopback:\n" + "\n".join(wrong))
    return ours


def machine_state(cli, release):
    with contextlib.suppress(subprocess.CalledProcessError):
        for status in cli.status(vm_name=release):
            return status.state
    return None


def up(release, instance_config=None, vars_path=None):
    data = matrix.validate(matrix.load())
    only = matrix.selected_filesystems()
    rel = matrix.release(data, release, only)  # the disks the Vagrantfile gives the VM
    run_state = state_path("run.json")
    state = read_json(run_state, {"boxes_added": [], "machines": []})
    if ensure_box(release, rel["box"]) and rel["box"] not in state["boxes_added"]:
        state["boxes_added"].append(rel["box"])
    write_json(run_state, state)
    mode, reason = accel(release)
    say("%s: %s (%s)" % (release, mode.upper(), reason))
    # Under TCG, libvirt's capabilities are probed without KVM first
    # (labs/libvirt.py says why: ~130 s a `vagrant up` where KVM is broken).
    libvirt.up(state_path("libvirt.json"), tcg=mode == "tcg")
    cli, log = vagrant_cli("vagrant-%s.log" % release, mode)
    if machine_state(cli, release) != "running":
        check_ports_free(rel)
    if release not in state["machines"]:
        state["machines"].append(release)
    write_json(run_state, state)  # before `up`: `down` must know of a half-made VM
    start = time.monotonic()
    say("vagrant up %s (%d vCPU, %d MiB, disks %s) ..." % (
        release, rel["cpus"], rel["memory_mib"],
        ", ".join("%s %s" % (d["name"], d["size"]) for d in rel["disks"])))
    try:
        with open(log, "w") as out:  # this `up`'s log only
            phase_start = start
            for line in cli.up(vm_name=release, provider="libvirt", no_provision=True,
                               stream_output=True):
                # The box upload draws a progress bar with \r: keep its end only.
                line = line.rsplit("\r", 1)[-1].replace("\x1b[K", "")
                now = time.monotonic()
                out.write("[%6.1f s] %s" % (now - start, line))
                out.flush()
                for marker, name in UP_PHASES:
                    if marker in line:
                        say("  %s (+%.1f s)" % (name, now - phase_start))
                        phase_start = now
        conf = cli.conf(vm_name=release)
    except subprocess.CalledProcessError:
        raise LabError("vagrant up %s failed (log %s):\n%s" % (release, log, log_tail(log))) from None
    say("vagrant up %s: %.1f s, ssh %s@%s:%s" % (release, time.monotonic() - start, conf["User"],
                                                conf["HostName"], conf["Port"]))
    if conf["HostName"] != "127.0.0.1" or int(conf["Port"]) != rel["ssh_port"]:
        raise LabError("vagrant ssh-config says %s:%s, not 127.0.0.1:%d" % (
            conf["HostName"], conf["Port"], rel["ssh_port"]))
    try:
        listening = check_loopback_only(release)
        networks = libvirt.active_networks()
        if networks:
            raise LabError("libvirt networks are active: %s (the lab never starts one)"
                           % ", ".join(networks))
    except LabError:
        destroy(release)  # at once: the VM must not stay reachable beyond loopback
        raise
    say("%s: %d sockets, all on 127.0.0.1; no libvirt network active" % (release, len(listening)))
    if instance_config:
        # JSON is YAML: Molecule reads this with yaml.safe_load.
        write_json(os.path.abspath(instance_config), [{
            "instance": release, "address": "127.0.0.1", "port": int(conf["Port"]),
            "user": conf["User"], "identity_file": conf["IdentityFile"].strip('"'),
            "become_method": "sudo"}])
    if vars_path:
        # The box's facts verify checks the VM against: the Debian suite it
        # was made from (a backports release is its base suite), and why it
        # has no zfs, if it has none.
        manifest = boxes.current_box(release).read_manifest()
        write_json(os.path.abspath(vars_path), dict(
            matrix.scenario_vars(data, release, only), lab_accel=mode,
            lab_suite=boxes.RELEASES[release]["suite"],
            lab_zfs_unavailable=manifest.get("zfs_unavailable") or ""))


def destroy(release):
    """Destroy `release`'s VM (Vagrant first, then whatever libvirt still
    holds of it). The daemons stay up for other VMs; `down` stops them."""
    start = time.monotonic()
    cli, log = vagrant_cli("vagrant-%s.log" % release)
    if libvirt.answers():
        try:
            cli.destroy(vm_name=release)
        except subprocess.CalledProcessError:
            say("vagrant destroy %s failed (log %s); removing its domain directly" % (release, log))
        for line in libvirt.cleanup(box_volumes=False):
            if ("-%s" % release) in line:
                say("removed leftover " + line)
    say("destroyed %s (%.1f s)" % (release, time.monotonic() - start))


def down(keep_boxes=False):
    """Every lab VM down, libvirt as found, the boxes `up` added removed."""
    state = read_json(state_path("run.json"), {"boxes_added": [], "machines": []})
    problems = []
    recorded = libvirt.read_state(state_path("libvirt.json"))
    if recorded and recorded.get("started") and not libvirt.answers():
        # An earlier run was killed together with the daemons it started:
        # what it defined (domains, volumes) is only visible through libvirtd,
        # so start it again (recorded as ours, stopped below) and look.
        say("the daemons an earlier run started are gone; starting them to remove what it left")
        try:
            libvirt.up(state_path("libvirt.json"))
        except libvirt.LibvirtError as err:
            problems.append(str(err))
    for release in state["machines"]:
        try:
            destroy(release)
        except (LabError, libvirt.LibvirtError) as err:
            problems.append(str(err))
    if not keep_boxes:
        # Before libvirt goes: vagrant-libvirt's box removal asks libvirtd.
        cli, log = vagrant_cli("vagrant-box.log")
        for name in state["boxes_added"]:
            if not os.path.exists(vagrant_box_image(name)):
                continue  # removed already (a second `down`)
            try:
                cli.box_remove(name, "libvirt")
                say("removed box %s from Vagrant" % name)
            except subprocess.CalledProcessError:
                problems.append("vagrant box remove %s failed (log %s)" % (name, log))
    try:
        for line in libvirt.down(state_path("libvirt.json")):
            say(line)
    except libvirt.LibvirtError as err:
        problems.append(str(err))
    if problems:
        raise LabError("; ".join(problems))
    with contextlib.suppress(FileNotFoundError):
        os.unlink(state_path("run.json"))


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python3 -m labs.vagrant", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("up", help="bring RELEASE's VM up")
    p.add_argument("release", metavar="RELEASE")
    p.add_argument("--instance-config", help="write Molecule's instance config here")
    p.add_argument("--vars", help="write the scenario's declaration for the VM here (JSON)")
    p = commands.add_parser("destroy", help="destroy RELEASE's VM")
    p.add_argument("release", metavar="RELEASE")
    p = commands.add_parser("down", help="destroy every lab VM; libvirt and Vagrant as found")
    p.add_argument("--keep-boxes", action="store_true", help="keep the boxes added to Vagrant")
    p = commands.add_parser("accel", help="kvm or tcg for RELEASE's box, and why")
    p.add_argument("release", metavar="RELEASE", nargs="?", default="bookworm")
    args = parser.parse_args(argv)
    try:
        if args.command == "up":
            up(args.release, args.instance_config, args.vars)
        elif args.command == "destroy":
            destroy(args.release)
        elif args.command == "down":
            down(keep_boxes=args.keep_boxes)
        elif args.command == "accel":
            mode, reason = accel(args.release)
            print("%s: %s" % (mode, reason))
    except (LabError, libvirt.LibvirtError, matrix.MatrixError, boxes.BoxError) as err:
        print("error: %s" % err, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
