#!/usr/bin/env python3
"""Vagrant libvirt boxes for the lab, one per Debian release, built locally
from Debian's package mirror (no box downloads).

    python3 labs/boxes.py build RELEASE... [--force] [--verbose]
    python3 labs/boxes.py list
    python3 labs/boxes.py path RELEASE [--image | --manifest]
    python3 labs/boxes.py check RELEASE [--reboot]

A box holds the release's cloud kernel, OpenZFS built by DKMS for that
kernel, python3 (with pytest and apt bindings for Ansible), the filesystem
tools, qemu-guest-agent and a `vagrant` user (insecure key, passwordless
sudo). Each clone makes its own machine-id and SSH host keys on first boot.

The cache lives outside the clone: $SNAPLAB_BOX_CACHE, else
/var/cache/snaplab/boxes. Its files are named by release and recipe hash:

    snaplab-bookworm-<hash>.box     the Vagrant box (provider libvirt)
    snaplab-bookworm-<hash>.qcow2   the same disk, for booting qemu directly
    snaplab-bookworm-<hash>.json    manifest: versions, sizes, step times
    snaplab-bookworm-<hash>.log     the build's log

The hash covers everything that shapes the box: the files under
labs/recipe/ (package lists, the scripts run in the chroot, the image
layout) and the source of this file's build steps. An unchanged recipe is
reused; a changed one is rebuilt (and the release's older files removed).
The manifest is written last, by rename, so an interrupted build never
leaves a box that looks finished. Every mount, loop device and process the
build makes is undone in `finally`, also on Ctrl-C or SIGTERM.

`check` boots the image with qemu (TCG, SSH forwarded from 127.0.0.1 only,
the guest's network restricted) and checks what the lab relies on.
"""

import argparse
import contextlib
import ctypes
import datetime
import fcntl
import glob
import hashlib
import inspect
import io
import json
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import threading
import time

LABS = os.path.dirname(os.path.abspath(__file__))
RECIPE = os.path.join(LABS, "recipe")
GUEST_CHECK = os.path.join(LABS, "guest-check.sh")
DEFAULT_CACHE = "/var/cache/snaplab/boxes"
# Release -> how its box is made: `suite`, the Debian suite debootstrap
# installs; `kernel`, the series its cloud kernel must belong to (checked at
# build); `kernel_suite`, where the kernel and OpenZFS come from when that
# is not the release itself (a backports kernel: OpenZFS from the same
# suite, the newest one built for it).
RELEASES = {
    "bullseye": {"suite": "bullseye", "kernel": "5.10"},
    "bookworm": {"suite": "bookworm", "kernel": "6.1"},
    "trixie": {"suite": "trixie", "kernel": "6.12"},
    "trixie-backports": {"suite": "trixie", "kernel_suite": "trixie-backports", "kernel": "7.3"},
    "forky": {"suite": "forky", "kernel": "7.2"},
}
# debootstrap scripts for suites older debootstraps do not know yet (the
# host's may predate them): a Debian suite newer than its scripts is made
# like sid.
DEBOOTSTRAP_SCRIPTS = "/usr/share/debootstrap/scripts"
# The kernel meta package of packages.txt: installed by configure.sh with
# apt after debootstrap, from `kernel_suite` when a release has one.
KERNEL_PACKAGE = "linux-image-cloud-amd64"
# Bump to rebuild every box when the cache layout or manifest changes.
RECIPE_FORMAT = 1
# Where Debian's vagrant package keeps the insecure key pair, and where
# Vagrant copies the private key on first use.
VAGRANT_PUBLIC_KEYS = "/usr/share/rubygems-integration/all/gems/vagrant-*/keys/vagrant.pub"
VAGRANT_PRIVATE_KEYS = [os.path.expanduser("~/.vagrant.d/insecure_private_key"),
                        "/usr/share/rubygems-integration/all/gems/vagrant-*/keys/vagrant"]
MBR_FILES = ["/usr/lib/syslinux/mbr/mbr.bin", "/usr/lib/EXTLINUX/mbr.bin"]
# Host commands a build runs (checked before it starts, not 10 minutes in).
BUILD_TOOLS = ["debootstrap", "chroot", "mount", "umount", "losetup", "sfdisk", "mkfs.ext4",
               "extlinux", "qemu-img", "cp", "rm"]
CHECK_TOOLS = ["qemu-system-x86_64", "qemu-img", "ssh"]
# zfs.sh's exit status when zfs-dkms does not build for the box's kernel
# (the box is made without zfs), and where it writes why, in the root.
ZFS_DID_NOT_BUILD = 3
ZFS_REASON_FILE = "/tmp/snaplab-recipe/zfs-unavailable.txt"
# Where the recipe is copied inside the chroot while it is built (seal.sh
# empties /tmp at the end).
RECIPE_IN_ROOT = "/tmp/snaplab-recipe"
# A build says where it is this often (seconds), also inside a long step.
PROGRESS_EVERY_S = 60
# Files in the recipe directory that are not recipe (editor and Python junk).
NOT_RECIPE = ("__pycache__", ".pyc", "~", ".swp")


class BoxError(Exception):
    """A build or check failed; the message says what and where to look."""


# ---------------------------------------------------------------------------
# Recipe and cache


_RECIPE_STEPS = []


def recipe_step(function):
    """Mark a function whose source is part of the recipe hash: a change to
    how a box is made must rebuild it, a change to the CLI must not."""
    _RECIPE_STEPS.append(function)
    return function


def recipe_files(recipe_dir=RECIPE):
    """The recipe's files, as paths relative to `recipe_dir`, sorted."""
    found = []
    for top, dirs, files in os.walk(recipe_dir):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        for name in files:
            if not name.endswith(NOT_RECIPE):
                found.append(os.path.relpath(os.path.join(top, name), recipe_dir))
    return sorted(found)


def recipe_hash(release, recipe_dir=RECIPE, steps=None):
    """A short hash of everything that makes `release`'s box."""
    digest = hashlib.sha256()
    # Not the mirror: any mirror serves the same packages (boxes built from
    # another site's mirror are the same boxes).
    spec = json.dumps(RELEASES.get(release, {}), sort_keys=True)
    digest.update(f"snaplab box format {RECIPE_FORMAT}\0{release}\0{spec}\0".encode())
    for rel in recipe_files(recipe_dir):
        path = os.path.join(recipe_dir, rel)
        executable = os.stat(path).st_mode & 0o111 != 0
        digest.update(f"file {rel} {executable:d}\0".encode())
        with open(path, "rb") as f:
            digest.update(f.read())
        digest.update(b"\0")
    for function in _RECIPE_STEPS if steps is None else steps:
        digest.update(inspect.getsource(function).encode() + b"\0")
    return digest.hexdigest()[:12]


def cache_dir():
    return os.environ.get("SNAPLAB_BOX_CACHE") or DEFAULT_CACHE


class Box:
    """The cache files of one release at one recipe hash."""

    def __init__(self, release, digest, cache=None):
        self.release = release
        self.digest = digest
        self.cache = cache or cache_dir()
        self.name = f"snaplab-{release}-{digest}"
        base = os.path.join(self.cache, self.name)
        self.box = base + ".box"
        self.image = base + ".qcow2"
        self.manifest = base + ".json"
        self.log = base + ".log"

    def read_manifest(self):
        with open(self.manifest) as f:
            return json.load(f)

    def is_built(self):
        """True when the manifest and both files it describes are there, with
        the sizes it records (cheap: no hashing of the images)."""
        try:
            manifest = self.read_manifest()
            return (os.path.getsize(self.box) == manifest["box_bytes"]
                    and os.path.getsize(self.image) == manifest["image_bytes"])
        except (OSError, ValueError, KeyError):
            return False


def current_box(release, cache=None):
    check_release(release)
    return Box(release, recipe_hash(release), cache)


def check_release(release):
    if release not in RELEASES:
        raise BoxError(f"unknown release {release!r}: one of {', '.join(RELEASES)}")


# ---------------------------------------------------------------------------
# The Debian mirror: the host's own, as an installer takes it


APT_SOURCES = ("/etc/apt/sources.list", "/etc/apt/sources.list.d")
# Suites that name Debian itself, besides the releases' own (an entry for
# the host's release, or one of these, is a Debian mirror; one for a third
# party's "nodistro" or "cloud-sdk-bookworm" is not).
DEBIAN_SUITES = {"stable", "testing", "unstable", "sid", "oldstable", "oldoldstable",
                 "buster", "bullseye", "bookworm", "trixie", "forky", "duke"}


def parse_apt_sources(path, text):
    """The enabled `deb` entries of one apt sources file, one-line (.list)
    or deb822 (.sources) format: [(uri, [suites], [components])]."""
    entries = []
    if path.endswith(".sources"):
        for stanza in re.split(r"\n\s*\n", text):
            fields, key = {}, None
            for line in stanza.splitlines():
                if line.startswith("#") or not line.strip():
                    continue
                if line[0].isspace() and key:
                    fields[key] += " " + line.strip()
                    continue
                key, _, value = line.partition(":")
                key = key.strip().lower()
                fields[key] = value.strip()
            if "deb" not in fields.get("types", "").split() or fields.get("enabled", "yes").lower() == "no":
                continue
            for uri in fields.get("uris", "").split():
                entries.append((uri, fields.get("suites", "").split(),
                                fields.get("components", "").split()))
        return entries
    for line in text.splitlines():
        words = line.split("#", 1)[0].split()
        if not words or words[0] != "deb":
            continue
        words = words[1:]
        if words and words[0].startswith("["):  # [arch=amd64 signed-by=...]
            while words and not words[0].endswith("]"):
                words.pop(0)
            words = words[1:]
        if len(words) >= 2:
            entries.append((words[0], [words[1]], words[2:]))
    return entries


def host_debian_suites():
    suites = set(DEBIAN_SUITES) | {spec["suite"] for spec in RELEASES.values()}
    with contextlib.suppress(OSError):
        with open("/etc/os-release") as f:
            for line in f:
                if line.startswith("VERSION_CODENAME="):
                    suites.add(line.split("=", 1)[1].strip().strip('"'))
    return suites


def debian_mirror(sources=APT_SOURCES, environ=None):
    """The Debian mirror boxes are built from: $SNAPLAB_DEBIAN_MIRROR (or
    `build --mirror`), else the first of the host's apt sources that serves
    a Debian suite's main component (not its security archive), as
    debian-installer and debootstrap users take it. A site with its own
    mirror or proxy then needs no edit here."""
    given = (os.environ if environ is None else environ).get("SNAPLAB_DEBIAN_MIRROR", "").strip()
    if given:
        return given.rstrip("/")
    files = []
    for source in sources:
        if os.path.isdir(source):
            files += sorted(os.path.join(source, n) for n in os.listdir(source)
                            if n.endswith((".list", ".sources")))
        elif os.path.exists(source):
            files.append(source)
    debian = host_debian_suites()
    for path in files:
        with open(path, errors="replace") as f:
            entries = parse_apt_sources(path, f.read())
        for uri, suites, components in entries:
            if not uri.startswith(("http://", "https://", "file:/")) or "main" not in components:
                continue  # debootstrap takes neither mirror+file: nor cdrom:
            for suite in suites:
                base = suite.split("-", 1)[0]
                if base in debian and not suite.endswith("-security") \
                        and not uri.rstrip("/").endswith("-security"):
                    return uri.rstrip("/")
    raise BoxError("no Debian mirror in the host's apt sources (%s): set SNAPLAB_DEBIAN_MIRROR "
                   "or pass --mirror URL" % ", ".join(files or sources))


def apt_proxy_env():
    """http_proxy/https_proxy for debootstrap and the chroot's apt, from the
    host's apt configuration (Acquire::http::Proxy), unless already set."""
    env = {}
    if shutil.which("apt-config") is None:
        return env
    for scheme in ("http", "https"):
        if os.environ.get(f"{scheme}_proxy"):
            continue
        done = subprocess.run(["apt-config", "shell", "P", f"Acquire::{scheme}::Proxy"],
                              stdout=subprocess.PIPE, text=True, check=False)
        match = re.match(r"P='(.*)'", done.stdout.strip())
        if match and match.group(1) and match.group(1).upper() != "DIRECT":
            env[f"{scheme}_proxy"] = match.group(1)
    return env


def read_list(path):
    """A package list: one name a line, '#' starts a comment."""
    names = []
    with open(path) as f:
        for line in f:
            names.extend(line.split("#", 1)[0].split())
    return names


def read_kernel_config_rules(path):
    """(required options, reported options) from recipe/kernel-config.txt."""
    required, reported = [], []
    with open(path) as f:
        for number, line in enumerate(f, 1):
            words = line.split("#", 1)[0].split()
            if not words:
                continue
            if len(words) != 2 or words[0] not in ("require", "report"):
                raise BoxError(f"{path}:{number}: expected 'require|report CONFIG_NAME'")
            (required if words[0] == "require" else reported).append(words[1])
    return required, reported


def parse_kernel_config(text):
    """{option: 'y'|'m'|value|'n'} from a kernel .config."""
    options = {}
    for line in text.splitlines():
        if line.startswith("CONFIG_") and "=" in line:
            name, value = line.split("=", 1)
            options[name] = value.strip('"')
        elif line.startswith("# CONFIG_") and line.endswith(" is not set"):
            options[line[2:-len(" is not set")]] = "n"
    return options


# ---------------------------------------------------------------------------
# Build


class Build:
    """One build of one box, in a work directory inside the cache (so that
    the results are published by rename on the same filesystem)."""

    def __init__(self, box, work, verbose=False):
        self.box = box
        self.release = box.release
        self.work = work
        self.root = os.path.join(work, "root")
        self.mnt = os.path.join(work, "mnt")
        self.raw = os.path.join(work, "disk.raw")
        self.qcow2 = os.path.join(work, "disk.qcow2")
        self.box_file = os.path.join(work, "disk.box")
        self.log_path = os.path.join(work, "build.log")
        self.verbose = verbose
        self.spec = RELEASES[box.release]
        self.mirror = debian_mirror()
        self.proxy_env = apt_proxy_env()
        self.started = time.monotonic()
        self.current_step, self.next_tick = None, self.started + PROGRESS_EVERY_S
        self.steps = {}
        self.cpu = {}
        self.facts = {}
        with open(os.path.join(RECIPE, "image.json")) as f:
            self.image = json.load(f)

    # -- helpers ----------------------------------------------------------

    def say(self, text):
        print(f"[{self.release}] {text}", flush=True)

    @contextlib.contextmanager
    def step(self, name):
        """Time a step. The CPU time of its commands is shown too: on a shared
        machine the wall time says as much about the neighbours as the step."""
        self.say(f"{name} ...")
        self.log(f"==== step {name}")
        start, cpu = time.monotonic(), children_cpu_seconds()
        self.current_step, self.next_tick = (name, start), start + PROGRESS_EVERY_S
        try:
            yield
        finally:
            self.current_step = None
        elapsed, cpu = time.monotonic() - start, children_cpu_seconds() - cpu
        self.steps[name] = round(elapsed, 1)
        self.cpu[name] = round(cpu, 1)
        self.say(f"{name}: {elapsed:.1f} s (cpu {cpu:.1f} s)")

    def log(self, text):
        with open(self.log_path, "a") as f:
            f.write(text + "\n")

    def run(self, argv, capture=False, allowed=(0,), input=None):
        """Run a command, its output into the build log (and the terminal with
        --verbose); with capture, return its stdout instead, else its exit
        status (one of `allowed`; another raises). While it runs, a line a
        minute says which step it is in and for how long: a box build is
        quiet for many minutes (zfs DKMS), and a quiet build looks hung."""
        self.log("$ " + " ".join(argv))
        env = dict(os.environ, LC_ALL="C", DEBIAN_FRONTEND="noninteractive", **self.proxy_env)
        with open(self.log_path, "ab") as log:
            out = subprocess.PIPE if capture else (None if self.verbose else log)
            err = log if capture else (None if self.verbose else subprocess.STDOUT)
            # Its own process group: an interrupted build stops all of it
            # (debootstrap's dpkg, a DKMS compile), not just its first process.
            process = subprocess.Popen(argv, stdin=subprocess.PIPE if input is not None else None,
                                       stdout=out, stderr=err, env=env, start_new_session=True)
            # A thread reads the pipes (communicate), the caller ticks.
            result = {}
            reader = threading.Thread(target=lambda: result.update(
                out=process.communicate(input)[0]), daemon=True)
            try:
                reader.start()
                while True:
                    reader.join(timeout=max(1.0, self.next_tick - time.monotonic()))
                    if not reader.is_alive():
                        break
                    self.tick()
            except BaseException:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()
                raise
        if process.returncode not in allowed:
            raise BoxError(f"{' '.join(argv)} exited with status {process.returncode}")
        return result["out"].decode() if capture else process.returncode

    def tick(self):
        """The progress line, once a minute while a step runs."""
        now = time.monotonic()
        if now < self.next_tick:
            return
        self.next_tick = now + PROGRESS_EVERY_S
        if self.current_step:
            name, started = self.current_step
            self.say(f"{name}: {now - started:.0f} s so far (build {now - self.started:.0f} s)")

    def chroot(self, *argv, capture=False, allowed=(0,)):
        return self.run(["chroot", self.root, *argv], capture=capture, allowed=allowed)

    def in_root(self, path):
        """The host path of `path` inside the box's root, refusing any path
        whose parent resolves outside it (an absolute symlink in the root
        would otherwise point at the host's own files)."""
        host = os.path.join(self.root, path.lstrip("/"))
        parent = os.path.realpath(os.path.dirname(host))
        if parent != os.path.realpath(self.root) and not parent.startswith(os.path.realpath(self.root) + "/"):
            raise BoxError(f"{path} resolves outside the box's root ({parent})")
        return host

    def write_in_root(self, path, data, mode=0o644):
        host = self.in_root(path)
        if os.path.lexists(host):
            os.unlink(host)  # never write through a symlink
        with open(host, "wb") as f:
            f.write(data if isinstance(data, bytes) else data.encode())
        os.chmod(host, mode)

    def copy_in_root(self, source, path):
        with open(source, "rb") as f:
            self.write_in_root(path, f.read(), os.stat(source).st_mode & 0o7777)

    def kernel_version(self):
        versions = sorted(os.listdir(self.in_root("/usr/lib/modules")))
        if len(versions) != 1:
            raise BoxError(f"expected one kernel in the box, found {versions}")
        return versions[0]

    @contextlib.contextmanager
    def chroot_mounts(self):
        """proc, sys, dev and dev/pts for package scripts in the chroot, and
        the host's resolv.conf so that apt reaches the mirror."""
        try:
            for fstype, source, target, options in (
                    ("proc", "proc", "proc", []),
                    ("sysfs", "sysfs", "sys", []),
                    (None, "/dev", "dev", ["--bind"]),
                    (None, "/dev/pts", "dev/pts", ["--bind"])):
                point = os.path.join(self.root, target)
                os.makedirs(point, exist_ok=True)
                argv = ["mount", *options] + (["-t", fstype] if fstype else []) + [source, point]
                self.run(argv)
            with open("/etc/resolv.conf", "rb") as f:
                self.write_in_root("/etc/resolv.conf", f.read())
            yield
        finally:
            kill_chrooted(self.root)
            unmount_under(self.root)
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(self.root, "etc/resolv.conf"))

    @contextlib.contextmanager
    def loop_device(self, path, offset):
        loop = self.run(["losetup", "--find", "--show", "--offset", str(offset), path],
                        capture=True).strip()
        try:
            yield loop
        finally:
            subprocess.run(["losetup", "--detach", loop], check=False)

    # -- steps (their source is part of the recipe hash) ------------------

    @recipe_step
    def step_debootstrap(self):
        # The kernel is installed by configure.sh, with apt: from forky on it
        # depends on "dracut | initramfs-tools | linux-initramfs-tool", and
        # debootstrap's resolver takes the first alternative (whatever
        # --exclude says) and unpacks dracut beside packages.txt's
        # initramfs-tools, which dpkg refuses; apt sees initramfs-tools is
        # there. (And a backports kernel comes from its own suite.)
        packages = [p for p in read_list(os.path.join(RECIPE, "packages.txt")) if p != KERNEL_PACKAGE]
        os.makedirs(self.root)
        # recipe/rootfs/ goes in first, so that package scripts run by
        # debootstrap see it (the kernel's initramfs is made with the box's
        # initramfs-tools settings, once).
        overlay = os.path.join(RECIPE, "rootfs")
        for rel in recipe_files(overlay):
            os.makedirs(self.in_root(os.path.dirname("/" + rel)), exist_ok=True)
            self.copy_in_root(os.path.join(overlay, rel), "/" + rel)
        # dpkg without fsync for the whole build (debootstrap's own dpkg runs
        # read it too): the root is thrown away if the build fails, and the
        # image is written from it afterwards. seal.sh removes the file.
        os.makedirs(self.in_root("/etc/dpkg/dpkg.cfg.d"))
        self.write_in_root("/etc/dpkg/dpkg.cfg.d/snaplab-build", "force-unsafe-io\n")
        # apt in the build takes the mirror's Release files as they are: a
        # mirror frozen at a date (a snapshot, a site's pinned mirror) serves
        # testing's past its Valid-Until (a week), and apt then refuses the
        # suite ("Release file ... is expired"); debootstrap itself does not
        # check it. The signatures are still checked. seal.sh removes it.
        os.makedirs(self.in_root("/etc/apt/apt.conf.d"), exist_ok=True)
        self.write_in_root("/etc/apt/apt.conf.d/99snaplab-build", 'Acquire::Check-Valid-Until "false";\n')
        suite = self.spec["suite"]
        argv = ["debootstrap", "--variant=minbase", "--components=main",
                "--include=" + ",".join(packages), suite, self.root, self.mirror]
        if not os.path.exists(os.path.join(DEBOOTSTRAP_SCRIPTS, suite)):
            argv.append(os.path.join(DEBOOTSTRAP_SCRIPTS, "sid"))
        self.run(argv)

    @recipe_step
    def step_configure(self, public_key):
        os.makedirs(self.in_root(RECIPE_IN_ROOT))
        for rel in recipe_files(RECIPE):
            if not rel.startswith("rootfs/"):
                self.copy_in_root(os.path.join(RECIPE, rel), f"{RECIPE_IN_ROOT}/{rel}")
        self.copy_in_root(public_key, f"{RECIPE_IN_ROOT}/vagrant.pub")
        self.chroot("/bin/sh", f"{RECIPE_IN_ROOT}/configure.sh", self.release, self.spec["suite"],
                    self.mirror, f"{RECIPE_IN_ROOT}/vagrant.pub", KERNEL_PACKAGE,
                    self.spec.get("kernel_suite", ""))
        kernel = self.kernel_version()
        series = self.spec["kernel"]
        if not kernel.startswith(series + "."):
            raise BoxError(f"{self.release} installed kernel {kernel}, expected {series}.x")
        self.facts["kernel"] = kernel
        self.check_kernel_config()

    def check_kernel_config(self):
        kernel = self.facts["kernel"]
        with open(self.in_root(f"/boot/config-{kernel}")) as f:
            options = parse_kernel_config(f.read())
        required, reported = read_kernel_config_rules(os.path.join(RECIPE, "kernel-config.txt"))
        found = {name: options.get(name, "n") for name in required + reported}
        self.facts["kernel_config"] = found
        self.say("kernel " + kernel + ": " + " ".join(
            f"{name[len('CONFIG_'):]}={value}" for name, value in found.items()))
        missing = [name for name in required if found[name] not in ("y", "m")]
        if missing:
            raise BoxError(f"kernel {kernel} lacks {', '.join(missing)} (recipe/kernel-config.txt)")

    @recipe_step
    def step_zfs(self):
        """OpenZFS by DKMS for the box's kernel. Where it does not build (a
        kernel newer than the OpenZFS release supports), the box is still
        made, without zfs: its manifest says why, and the lab reports that
        release's zfs cells as refused with that reason."""
        kernel = self.facts["kernel"]
        status = self.chroot("/bin/sh", f"{RECIPE_IN_ROOT}/zfs.sh", kernel,
                             f"{RECIPE_IN_ROOT}/zfs-packages.txt",
                             self.spec.get("kernel_suite", ""), allowed=(0, ZFS_DID_NOT_BUILD))
        if status == ZFS_DID_NOT_BUILD:
            with open(self.in_root(ZFS_REASON_FILE)) as f:
                reason = f.read().strip()
            self.facts["zfs_module"] = None
            self.facts["zfs_unavailable"] = reason
            self.say(f"no zfs in this box: {reason}")
            return
        self.facts["zfs_module"] = self.chroot(
            "modinfo", "-k", kernel, "-F", "version", "zfs", capture=True).strip()

    def collect_facts(self):
        """Versions for the manifest, read before seal.sh removes the build's
        identity (the build's machine-id is recorded so that `check` can
        tell a clone made its own)."""
        def query(*packages):
            out = self.chroot("dpkg-query", "-W", "-f", "${Package} ${Version}\\n", *packages,
                              capture=True)
            return dict(line.split(" ", 1) for line in out.splitlines())
        kernel = self.facts["kernel"]
        versions = query(f"linux-image-{kernel}", "systemd", "python3", "openssh-server")
        if self.facts.get("zfs_module"):
            versions.update(query("zfs-dkms", "zfsutils-linux"))
        self.facts.update({
            "kernel_package": versions[f"linux-image-{kernel}"],
            "zfs_dkms": versions.get("zfs-dkms"),
            "zfsutils": versions.get("zfsutils-linux"),
            "systemd": versions["systemd"],
            "openssh": versions["openssh-server"],
            "python3": self.chroot("python3", "-c",
                                   "import platform; print(platform.python_version())",
                                   capture=True).strip(),
            "packages": len(self.chroot("dpkg-query", "-W", "-f", "${Package}\\n",
                                        capture=True).split()),
        })
        with open(self.in_root("/etc/debian_version")) as f:
            self.facts["debian_version"] = f.read().strip()
        with open(self.in_root("/etc/machine-id")) as f:
            self.facts["build_machine_id"] = f.read().strip()

    @recipe_step
    def step_seal(self):
        self.chroot("/bin/sh", f"{RECIPE_IN_ROOT}/seal.sh")

    @recipe_step
    def step_image(self):
        image = self.image
        label = image["root_label"]
        start = image["partition_start_sectors"] * 512
        with open(self.raw, "wb") as f:
            f.truncate(image["virtual_size_gib"] << 30)
        # One bootable partition; the image boots with SeaBIOS -> MBR -> extlinux.
        self.run(["sfdisk", "--quiet", self.raw],
                 input=f"label: dos\nstart={image['partition_start_sectors']}, type=83, bootable\n".encode())
        os.makedirs(self.mnt)
        with self.loop_device(self.raw, start) as loop:
            # Features off so that extlinux and bullseye's e2fsprogs can read it;
            # inode tables and journal written now rather than by every clone's
            # first boot (lazy init writes into each VM's overlay).
            self.run(["mkfs.ext4", "-q", "-L", label, "-O", image["mkfs_ext4_features"],
                      "-E", "lazy_itable_init=0,lazy_journal_init=0", loop])
            self.run(["mount", loop, self.mnt])
            try:
                # cp -a keeps numeric owners, modes, links and xattrs; -x stays on
                # the root's own filesystem.
                self.run(["cp", "-ax", self.root + "/.", self.mnt + "/"])
                kernel = self.facts["kernel"]
                with open(os.path.join(self.mnt, "etc/fstab"), "w") as f:
                    f.write(f"LABEL={label} / ext4 defaults,errors=remount-ro 0 1\n")
                os.makedirs(os.path.join(self.mnt, "boot/extlinux"))
                with open(os.path.join(self.mnt, "boot/extlinux/extlinux.conf"), "w") as f:
                    f.write("DEFAULT linux\nPROMPT 0\nTIMEOUT 1\nLABEL linux\n"
                            f"  LINUX /boot/vmlinuz-{kernel}\n"
                            f"  INITRD /boot/initrd.img-{kernel}\n"
                            f"  APPEND root=LABEL={label} {image['kernel_cmdline']}\n")
                self.run(["extlinux", "--install", os.path.join(self.mnt, "boot/extlinux")])
            finally:
                unmount_under(self.mnt)
        mbr = next((p for p in MBR_FILES if os.path.exists(p)), None)
        if mbr is None:
            raise BoxError(f"no MBR boot code ({' or '.join(MBR_FILES)}): make lab-deps")
        with open(mbr, "rb") as f:
            code = f.read(440)  # the boot code only; the partition table stays
        with open(self.raw, "r+b") as f:
            f.write(code)
        # zstd compresses ~4x faster than zlib here, and smaller; -W lets the
        # compressing coroutines write out of order (a new file, nothing to keep).
        self.run(["qemu-img", "convert", "-c", "-W", "-O", "qcow2",
                  "-o", "compression_type=" + image["qcow2_compression"], self.raw, self.qcow2])
        os.unlink(self.raw)

    @recipe_step
    def step_box(self):
        metadata = {"provider": "libvirt", "format": "qcow2",
                    "virtual_size": self.image["virtual_size_gib"]}
        vagrantfile = (
            "# Defaults of machines made from this box; a project Vagrantfile overrides them.\n"
            "Vagrant.configure(\"2\") do |config|\n"
            "  config.vm.provider :libvirt do |libvirt|\n"
            "    libvirt.driver = \"qemu\"  # TCG: no usable KVM on the lab's machines\n"
            "  end\n"
            "end\n")
        # A plain (uncompressed) tar: the qcow2 inside is compressed already.
        with tarfile.open(self.box_file, "w", format=tarfile.GNU_FORMAT) as tar:
            for name, data in (("metadata.json", json.dumps(metadata, indent=2) + "\n"),
                               ("Vagrantfile", vagrantfile)):
                info = tarfile.TarInfo(name)
                info.size = len(data.encode())
                info.mtime = int(time.time())
                info.mode = 0o644
                tar.addfile(info, io.BytesIO(data.encode()))
            tar.add(self.qcow2, arcname="box.img")

    # -- the whole build --------------------------------------------------

    def run_all(self):
        public_key = find_vagrant_key(VAGRANT_PUBLIC_KEYS)
        started = time.monotonic()
        with self.step("debootstrap"):
            self.step_debootstrap()
        with self.chroot_mounts():
            with self.step("configure"):
                self.step_configure(public_key)
            with self.step("zfs dkms"):
                self.step_zfs()
            self.collect_facts()
            with self.step("seal"):
                self.step_seal()
        self.facts["root_mib"] = round(tree_size(self.root) / 2**20)
        with self.step("image"):
            self.step_image()
        with self.step("box"):
            self.step_box()
        total = time.monotonic() - started
        return round(total, 1)

    def publish(self, total):
        """Move the results into the cache: the image and box first, the
        manifest (what makes them count as built) last, each by rename."""
        box = self.box
        manifest = dict(self.facts, release=self.release, recipe=box.digest, mirror=self.mirror,
                        suite=self.spec["suite"], kernel_suite=self.spec.get("kernel_suite"),
                        built=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                        box=os.path.basename(box.box), image=os.path.basename(box.image),
                        box_bytes=os.path.getsize(self.box_file),
                        image_bytes=os.path.getsize(self.qcow2),
                        virtual_size_gib=self.image["virtual_size_gib"],
                        steps=self.steps, steps_cpu=self.cpu, total_seconds=total)
        os.rename(self.qcow2, box.image)
        os.rename(self.box_file, box.box)
        os.rename(self.log_path, box.log)
        temp = box.manifest + ".tmp"
        with open(temp, "w") as f:
            json.dump(manifest, f, indent=2, sort_keys=True)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.rename(temp, box.manifest)
        return manifest


def find_vagrant_key(patterns):
    for pattern in [patterns] if isinstance(patterns, str) else patterns:
        found = sorted(glob.glob(pattern))
        if found:
            return found[-1]
    raise BoxError(f"no Vagrant insecure key at {patterns} (Debian's vagrant package "
                   "has it): make lab-deps")


def children_cpu_seconds():
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def missing_tools(tools):
    return [tool for tool in tools if shutil.which(tool) is None]


def tree_size(path):
    total = 0
    for top, dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(top, name)).st_blocks * 512
    return total


# ---------------------------------------------------------------------------
# Undoing what a build left: mounts, loop devices, processes. Only ever
# under a work directory of this builder.


CLONE_NEWNS = 0x00020000
MS_REC = 0x4000
MS_PRIVATE = 1 << 18


def private_mount_namespace():
    """Move this process (and so every command of the build) into a mount
    namespace of its own, whose mounts propagate nowhere (`boxes.py build`
    does, before it builds).

    The build's mounts (the chroot's /dev, /proc, /sys; the image's root)
    are then invisible to the rest of the host, and the other way round:
    `make test` runs the host tests and this build side by side, and a
    namespace copied while one of them had something mounted (libvirt's qemu
    copies the host's for its VM) would keep that mount, and its loop device
    or pool, busy after its owner unmounted it. If the build is killed, the
    kernel unmounts what it left when its last process goes; loop devices
    are global and still detached in `finally`."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWNS) != 0:
        raise BoxError(f"unshare(CLONE_NEWNS): {os.strerror(ctypes.get_errno())}")
    if libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None) != 0:
        raise BoxError(f"making / private in the build's mount namespace: "
                       f"{os.strerror(ctypes.get_errno())}")


def mounts_under(path):
    """Mount points at or below `path` (deepest first), from mountinfo."""
    path = os.path.realpath(path)
    points = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            point = line.split()[4].encode().decode("unicode_escape")
            if point == path or point.startswith(path + "/"):
                points.append(point)
    return sorted(set(points), key=lambda p: p.count("/"), reverse=True)


def unmount_under(path):
    """Unmount everything at or below `path`; a mount still busy after a few
    tries is detached lazily (it goes once its last user does)."""
    for point in mounts_under(path):
        for attempt in range(5):
            if subprocess.run(["umount", point], stderr=subprocess.DEVNULL).returncode == 0:
                break
            time.sleep(0.2 * (attempt + 1))
        else:
            subprocess.run(["umount", "--lazy", point], check=False)
    left = mounts_under(path)
    if left:
        raise BoxError(f"could not unmount {', '.join(left)}")


def kill_chrooted(root):
    """Kill processes whose root directory is `root` (package scripts, a DKMS
    build, ...): they are the build's, and they would keep its mounts busy."""
    root = os.path.realpath(root)
    for _ in range(50):
        found = []
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            with contextlib.suppress(OSError):
                proc_root = os.readlink(f"/proc/{pid}/root")
                if proc_root == root or proc_root.startswith(root + "/"):
                    found.append(int(pid))
        if not found:
            return
        for pid in found:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.1)


def detach_loops_under(path):
    """Detach loop devices whose backing file is below `path`."""
    out = subprocess.run(["losetup", "--list", "--noheadings", "--output", "NAME,BACK-FILE"],
                         stdout=subprocess.PIPE, text=True, check=False).stdout
    path = os.path.realpath(path)
    for line in out.splitlines():
        name, _, back = line.strip().partition(" ")
        back = back.strip()
        if back.startswith(path + "/"):
            subprocess.run(["losetup", "--detach", name], check=False)


def remove_work(work):
    """Remove a work directory after undoing everything it still holds. It
    is never removed while something is mounted below it: rm would descend
    into the host's /dev or /proc through a bind mount."""
    if not os.path.isdir(work):
        return
    kill_chrooted(os.path.join(work, "root"))
    unmount_under(work)
    detach_loops_under(work)
    if mounts_under(work):
        raise BoxError(f"left {work} in place: still mounted below it")
    subprocess.run(["rm", "-rf", "--one-file-system", work], check=True)


@contextlib.contextmanager
def release_lock(cache, release):
    """One build per release and cache at a time (others wait)."""
    with open(os.path.join(cache, f".lock-{release}"), "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"[{release}] waiting for another build of {release} ...", flush=True)
            fcntl.flock(lock, fcntl.LOCK_EX)
        yield


@contextlib.contextmanager
def signals_raise():
    """SIGTERM and SIGHUP unwind like Ctrl-C does, so that `finally` blocks
    undo mounts and loop devices when make or CI stops the build."""
    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")
    previous = {s: signal.signal(s, interrupt) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def build(release, force=False, verbose=False, cache=None):
    """Build `release`'s box unless the cache has it for the current recipe;
    return (Box, manifest)."""
    box = current_box(release, cache)
    if not force and box.is_built():
        print(f"[{release}] up to date: {box.box} (recipe {box.digest})", flush=True)
        return box, box.read_manifest()
    if os.geteuid() != 0:
        raise BoxError("building a box needs root (debootstrap, chroot, mount, losetup)")
    missing = missing_tools(BUILD_TOOLS)
    if missing:
        raise BoxError(f"missing host commands {', '.join(missing)}: make lab-deps")
    find_vagrant_key(VAGRANT_PUBLIC_KEYS)
    os.makedirs(box.cache, exist_ok=True)
    with signals_raise(), release_lock(box.cache, release):
        if not force and box.is_built():  # another build finished it meanwhile
            print(f"[{release}] up to date: {box.box} (recipe {box.digest})", flush=True)
            return box, box.read_manifest()
        # With the lock held, any work directory of this release is a dead build's.
        for stale in glob.glob(os.path.join(box.cache, f".work-{release}-*")):
            print(f"[{release}] removing an interrupted build's {stale}", flush=True)
            remove_work(stale)
        print(f"[{release}] building {box.name} in {box.cache}", flush=True)
        work = tempfile.mkdtemp(prefix=f".work-{release}-", dir=box.cache)
        builder = Build(box, work, verbose)
        try:
            try:
                total = builder.run_all()
            except BaseException:
                failed_log = os.path.join(box.cache, f"snaplab-{release}-failed.log")
                with contextlib.suppress(OSError):
                    shutil.copyfile(builder.log_path, failed_log)
                    print(f"[{release}] build failed; last lines of {failed_log}:", file=sys.stderr)
                    with open(failed_log, errors="replace") as f:
                        sys.stderr.write("".join(f.readlines()[-30:]))
                raise
            manifest = builder.publish(total)
        finally:
            remove_work(work)
        removed = prune(box)
        print(f"[{release}] built {box.box} in {total:.0f} s: "
              f"box {manifest['box_bytes'] / 2**20:.0f} MiB, kernel {manifest['kernel']}, "
              f"zfs {manifest['zfs_module'] or 'none (' + manifest['zfs_unavailable'] + ')'}" + (f"; removed {len(removed)} older file(s)" if removed else ""),
              flush=True)
        return box, manifest


def prune(box):
    """Remove the release's files of other recipe hashes (and a failure log)."""
    removed = []
    for path in glob.glob(os.path.join(box.cache, f"snaplab-{box.release}-*")):
        name = os.path.basename(path)
        if not name.startswith(box.name + "."):
            os.unlink(path)
            removed.append(name)
    return removed


def cached_manifests(cache=None):
    found = []
    for path in sorted(glob.glob(os.path.join(cache or cache_dir(), "snaplab-*.json"))):
        with contextlib.suppress(OSError, ValueError):
            with open(path) as f:
                found.append(json.load(f))
    return found


# ---------------------------------------------------------------------------
# Check: boot the image and look inside


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ssh_argv(port, key, command):
    return ["ssh", "-i", key, "-p", str(port), "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes",
            "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
            "-o", "LogLevel=ERROR", "-o", "ConnectTimeout=10", "vagrant@127.0.0.1", command]


def ssh(port, key, command, stdin=None, timeout=300):
    return subprocess.run(ssh_argv(port, key, command), input=stdin, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, timeout=timeout, text=True)


class GuestVM:
    """A qemu process on a throwaway overlay of an image, SSH forwarded from
    127.0.0.1 only; the guest's user network is restricted (it reaches
    nothing). Stopped and its files removed on exit, whatever happens."""

    def __init__(self, image, name, data_disk_gib=2, cpus=2, memory_mib=2048):
        self.image = image
        self.name = name
        self.data_disk_gib = data_disk_gib
        self.cpus = cpus
        self.memory_mib = memory_mib
        self.dir = None
        self.process = None
        self.port = None
        self.key = None

    def __enter__(self):
        self.dir = tempfile.mkdtemp(prefix=f"snaplab-check-{self.name}-", dir="/var/tmp")
        try:
            self.key = os.path.join(self.dir, "key")
            # ssh refuses a private key others can read; the packaged one is 0644.
            shutil.copyfile(find_vagrant_key(VAGRANT_PRIVATE_KEYS), self.key)
            os.chmod(self.key, 0o600)
            overlay = os.path.join(self.dir, "os.qcow2")
            data = os.path.join(self.dir, "data.qcow2")
            subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", self.image,
                            "-F", "qcow2", overlay], check=True)
            subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", data,
                            f"{self.data_disk_gib}G"], check=True)
            self.port = free_port()
            argv = ["qemu-system-x86_64", "-name", f"snaplab-check-{self.name}",
                    "-accel", "tcg,thread=multi", "-cpu", "max",
                    "-smp", str(self.cpus), "-m", str(self.memory_mib),
                    "-drive", f"file={overlay},if=virtio,format=qcow2,cache=unsafe",
                    "-drive", f"file={data},if=virtio,format=qcow2,cache=unsafe",
                    "-netdev", f"user,id=net0,restrict=on,hostfwd=tcp:127.0.0.1:{self.port}-:22",
                    "-device", "virtio-net-pci,netdev=net0",
                    "-display", "none", "-monitor", "none",
                    "-serial", f"file:{self.console}"]
            with open(os.path.join(self.dir, "qemu.log"), "wb") as log:
                # Own session: a Ctrl-C reaches us, and we stop qemu in order.
                self.process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log,
                                                stderr=subprocess.STDOUT, start_new_session=True)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    @property
    def console(self):
        return os.path.join(self.dir, "console.log")

    def console_tail(self, lines=25):
        with contextlib.suppress(OSError):
            with open(self.console, errors="replace") as f:
                return "".join(f.readlines()[-lines:])
        return ""

    def ssh(self, command, stdin=None, timeout=300):
        return ssh(self.port, self.key, command, stdin, timeout)

    def wait_for_ssh(self, timeout=600, unless_boot_id=None):
        """Seconds until `ssh true` works (and, after a reboot, until the
        guest reports a boot id other than `unless_boot_id`)."""
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            if self.process.poll() is not None:
                raise BoxError(f"qemu exited ({self.process.returncode}); console:\n{self.console_tail()}")
            with contextlib.suppress(subprocess.TimeoutExpired):
                done = self.ssh("cat /proc/sys/kernel/random/boot_id", timeout=30)
                if done.returncode == 0 and done.stdout.strip() != unless_boot_id:
                    return time.monotonic() - start
            time.sleep(1)
        raise BoxError(f"no SSH after {timeout} s; console:\n{self.console_tail()}")

    def __exit__(self, *exc):
        try:
            if self.process is not None and self.process.poll() is None:
                self.process.terminate()
                try:
                    self.process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait()
        finally:
            if self.dir:
                shutil.rmtree(self.dir, ignore_errors=True)

    def poweroff(self, timeout=90):
        """Shut the guest down cleanly; qemu exits when it powers off."""
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.ssh("sudo systemctl poweroff", timeout=30)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=timeout)
            return True
        return False


def parse_guest_report(text):
    report = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            report[key.strip()] = value.strip()
    return report


def check(release, reboot=False, cache=None):
    """Boot `release`'s image and check it; return the guest's report (plus
    boot times). Raises BoxError on the first thing that is wrong."""
    box = current_box(release, cache)
    if not box.is_built():
        raise BoxError(f"{release} is not built for the current recipe: "
                       f"python3 labs/boxes.py build {release}")
    manifest = box.read_manifest()
    missing = missing_tools(CHECK_TOOLS)
    if missing:
        raise BoxError(f"missing host commands {', '.join(missing)}: make lab-deps")
    with open(GUEST_CHECK) as f:
        script = f.read()
    print(f"[{release}] booting {box.image} (TCG) ...", flush=True)
    with signals_raise(), GuestVM(box.image, release) as vm:
        boot = vm.wait_for_ssh()
        print(f"[{release}] SSH ready {boot:.1f} s after qemu started (127.0.0.1:{vm.port})", flush=True)
        done = vm.ssh("sudo sh -s /dev/vdb", stdin=script, timeout=600)
        report = parse_guest_report(done.stdout)
        if done.returncode != 0 or report.get("done") != "1":
            raise BoxError(f"guest check failed (status {done.returncode}):\n"
                           f"{done.stdout}{done.stderr}")
        report["ssh_seconds"] = round(boot, 1)
        problems = []
        if report["kernel"] != manifest["kernel"]:
            problems.append(f"kernel {report['kernel']}, box has {manifest['kernel']}")
        if report["zfs_module"] != (manifest["zfs_module"] or "none"):
            problems.append(f"zfs {report['zfs_module']}, box has {manifest['zfs_module']}")
        if report["machine_id"] in (manifest["build_machine_id"], "uninitialized", ""):
            problems.append(f"machine-id {report['machine_id']!r} is not this clone's own")
        if report["failed_units"]:
            problems.append(f"failed units: {report['failed_units']}")
        if reboot:
            with contextlib.suppress(subprocess.TimeoutExpired):  # the connection may just hang up
                vm.ssh("sudo systemctl reboot", timeout=30)
            again = vm.wait_for_ssh(unless_boot_id=report["boot_id"])
            report["reboot_ssh_seconds"] = round(again, 1)
            after = vm.ssh("cat /etc/machine-id", timeout=60).stdout.strip()
            report["machine_id_after_reboot"] = after
            if after != report["machine_id"]:
                problems.append(f"machine-id changed on reboot: {report['machine_id']} -> {after}")
        clean = vm.poweroff()
        report["clean_poweroff"] = clean
    for key in ("kernel", "python3", "zfs_module", "machine_id", "machine_id_mount",
                "system_state", "xfs_v4", "ssh_seconds", "reboot_ssh_seconds",
                "machine_id_after_reboot", "clean_poweroff"):
        if key in report:
            print(f"[{release}]   {key}: {report[key]}", flush=True)
    if problems:
        raise BoxError(f"{release}: " + "; ".join(problems))
    print(f"[{release}] check passed", flush=True)
    return report


# ---------------------------------------------------------------------------
# CLI


def main(argv=None):
    parser = argparse.ArgumentParser(prog="labs/boxes.py", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("build", help="build boxes not in the cache for the current recipe")
    p.add_argument("releases", nargs="+", metavar="RELEASE", help=" | ".join(RELEASES))
    p.add_argument("--force", action="store_true", help="rebuild even if the cache has it")
    p.add_argument("--verbose", action="store_true", help="show the commands' output (else: the log)")
    p.add_argument("--mirror", metavar="URL",
                   help="the Debian mirror (default: $SNAPLAB_DEBIAN_MIRROR, else the first "
                        "Debian entry of the host's apt sources)")
    commands.add_parser("list", help="the cache's boxes, and each release's current recipe hash")
    p = commands.add_parser("path", help="the current box of RELEASE (fails if not built)")
    p.add_argument("release", metavar="RELEASE")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--image", action="store_true", help="the qcow2 image instead")
    which.add_argument("--manifest", action="store_true", help="the manifest instead")
    p = commands.add_parser("check", help="boot RELEASE's image under qemu and check it")
    p.add_argument("releases", nargs="+", metavar="RELEASE")
    p.add_argument("--reboot", action="store_true",
                   help="also reboot once and check the machine-id stays")
    args = parser.parse_args(argv)
    try:
        if args.command == "build":
            for release in args.releases:
                check_release(release)
            if args.mirror:
                os.environ["SNAPLAB_DEBIAN_MIRROR"] = args.mirror
            print(f"Debian mirror: {debian_mirror()}", flush=True)
            if os.geteuid() == 0:  # (without root, build says what it needs)
                private_mount_namespace()
            for release in args.releases:
                build(release, force=args.force, verbose=args.verbose)
        elif args.command == "list":
            print(f"cache: {cache_dir()}")
            manifests = cached_manifests()
            for release in RELEASES:
                box = current_box(release)
                print(f"{release:16} recipe {box.digest}  "
                      + ("built" if box.is_built() else "not built"))
            for m in manifests:
                current = recipe_hash(m["release"]) == m["recipe"]
                print(f"  {m['box']}  {m['box_bytes'] / 2**20:.0f} MiB  kernel {m['kernel']}  "
                      f"zfs {m['zfs_module'] or 'none'}  built {m['built']} in {m['total_seconds']:.0f} s"
                      + ("" if current else "  (stale recipe)"))
        elif args.command == "path":
            box = current_box(args.release)
            if not box.is_built():
                raise BoxError(f"{args.release} is not built for the current recipe "
                               f"({box.digest}): python3 labs/boxes.py build {args.release}")
            print(box.image if args.image else box.manifest if args.manifest else box.box)
        elif args.command == "check":
            for release in args.releases:
                check_release(release)
            for release in args.releases:
                check(release, reboot=args.reboot)
    except BoxError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted (everything the run made was undone)", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
