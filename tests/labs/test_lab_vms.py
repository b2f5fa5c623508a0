"""Tests of labs/libvirt.py and labs/vagrant.py on this machine, for real.

- libvirt: the daemons are started when they do not run and stopped again
  by `down` (and only those), the state file makes `down` idempotent; needs
  root and libvirt (make lab-deps).
- the KVM probe boots the box's kernel; under TCG it must reach userspace
  (that is how the probe's console reading is checked), and its verdict on
  this host is printed. Needs the bookworm box.
- one VM up and down through Vagrant, with the network rule checked while
  it runs (only 127.0.0.1 listeners, no libvirt network) and the host clean
  afterwards. Minutes: only with SNAPLAB_LAB=1.
"""

import json
import os
import shutil
import stat
import subprocess
import tempfile

import pytest

from labs import boxes, libvirt

IS_ROOT = os.geteuid() == 0
HAVE_LIBVIRT = shutil.which("libvirtd") is not None and shutil.which("virsh") is not None
needs_libvirt = pytest.mark.skipif(not (IS_ROOT and HAVE_LIBVIRT),
                                   reason="needs root and libvirt (make lab-deps)")
needs_lab = pytest.mark.skipif(os.environ.get("SNAPLAB_LAB") != "1",
                               reason="boots a VM through Vagrant (minutes): set SNAPLAB_LAB=1")
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture
def state_dir():
    path = tempfile.mkdtemp(prefix="snaplab-test-lab-")
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def test_the_lab_owns_only_its_names():
    assert libvirt.ours_domain("snaplab-lab-bookworm")
    assert not libvirt.ours_domain("bookworm")
    assert libvirt.ours_volume("snaplab-lab-bookworm-vdb.qcow2")
    assert libvirt.ours_volume("snaplab-VAGRANTSLASH-bookworm_vagrant_box_image_0_1795945300_box.img")
    assert not libvirt.ours_volume("debian12.qcow2")


@pytest.fixture
def no_lab_run():
    """The lab run's lock, held for the test: `make test` runs `make
    lab-smoke` alongside the host tests, and a test that starts and stops
    libvirtd, or takes lab VMs down, must not do it under that run's VM."""
    from labs import run as labrun
    try:
        lock = labrun.run_lock()
    except labrun.RunError as err:
        pytest.skip("a lab run is in progress (%s)" % err)
    with lock:
        yield


@pytest.fixture
def libvirt_idle(monkeypatch, no_lab_run):
    """`down` removes every lab domain and volume: these tests run only where
    libvirt is not in use (checked when the test runs, not when it is
    collected; no lab run starts meanwhile: its lock is held), and their
    `down` looks for names no lab uses."""
    if HAVE_LIBVIRT and libvirt.answers():
        pytest.skip("libvirtd runs already (a lab may be using it)")
    monkeypatch.setattr(libvirt, "DOMAIN_PREFIX", "snaplab-test-nolab-")
    monkeypatch.setattr(libvirt, "BOX_VOLUME_PREFIX", "snaplab-test-nolab-")


def test_down_without_up_does_nothing(state_dir, libvirt_idle):
    assert libvirt.down(os.path.join(state_dir, "none.json")) == []


@needs_libvirt
def test_up_starts_only_what_is_not_running_and_down_stops_only_that(state_dir, libvirt_idle):
    before = {name: libvirt.daemon_pid(name) for name in libvirt.DAEMONS}
    state = os.path.join(state_dir, "libvirt.json")
    with libvirt.session(state):
        assert libvirt.answers()
        recorded = json.load(open(state))["started"]
        for name in libvirt.DAEMONS:
            # Started by us exactly when it was not running before.
            assert (name in recorded) == (before[name] is None)
        assert libvirt.active_networks() == []
    after = {name: libvirt.daemon_pid(name) for name in libvirt.DAEMONS}
    assert after == before
    assert not os.path.exists(state)


@needs_libvirt
def test_down_twice_is_fine(state_dir, libvirt_idle):
    state = os.path.join(state_dir, "libvirt.json")
    libvirt.up(state)
    libvirt.down(state)
    assert libvirt.down(state) == []


CAPABILITIES_CACHE = "/var/cache/libvirt/qemu/capabilities"


def capabilities_files():
    """{name: mtime_ns} of libvirt's cached qemu capabilities."""
    names = os.listdir(CAPABILITIES_CACHE) if os.path.isdir(CAPABILITIES_CACHE) else []
    return {name: os.stat(os.path.join(CAPABILITIES_CACHE, name)).st_mtime_ns for name in names}


def define_and_undefine(name):
    """A domain definition: libvirt looks its qemu capabilities up for it."""
    path = os.path.join(tempfile.mkdtemp(prefix="snaplab-test-lab-"), "domain.xml")
    with open(path, "w") as f:
        f.write("<domain type='qemu'><name>%s</name><memory unit='MiB'>64</memory><vcpu>1</vcpu>"
                "<os><type arch='x86_64'>hvm</type></os></domain>" % name)
    try:
        libvirt.virsh("define", path)
        libvirt.virsh("undefine", name)
    finally:
        shutil.rmtree(os.path.dirname(path))


@needs_libvirt
@pytest.mark.skipif(not os.path.exists("/dev/kvm"), reason="no /dev/kvm on this host")
def test_libvirt_up_for_tcg_keeps_its_capabilities_cache(state_dir, libvirt_idle):
    host_kvm = os.stat("/dev/kvm")
    # From an empty cache (libvirtd is not running: libvirt_idle; it rebuilds
    # the cache when it needs it): where /dev/kvm is there but not the qemu
    # user's, a libvirtd that saw it probed qemu with KVM on, then found that
    # cache stale at every later lookup and probed again (measured: a
    # `virsh define` took 31 s, not 1 s).
    for name in capabilities_files():
        os.unlink(os.path.join(CAPABILITIES_CACHE, name))
    state = os.path.join(state_dir, "libvirt.json")
    try:
        libvirt.up(state, tcg=True)
        assert not os.path.exists(libvirt.NO_KVM_FILE)  # unlinked once the mount held it
        pid = libvirt.daemon_pid("libvirtd")
        # The lab's libvirtd sees the host's /dev (each domain gets a copy).
        assert stat.S_ISCHR(os.stat("/proc/%d/root/dev/kvm" % pid).st_mode)
        define_and_undefine(libvirt.DOMAIN_PREFIX + "probe")
        libvirt.virsh("capabilities")
        probed = capabilities_files()
        for _ in range(2):
            define_and_undefine(libvirt.DOMAIN_PREFIX + "probe")
            libvirt.virsh("capabilities")
        assert capabilities_files() == probed  # not probed (and rewritten) again
    finally:
        libvirt.down(state)
    after = os.stat("/dev/kvm")
    assert (after.st_mode, after.st_rdev, after.st_uid) == (host_kvm.st_mode, host_kvm.st_rdev, host_kvm.st_uid)


@needs_libvirt
@pytest.mark.skipif(not os.path.exists("/dev/kvm"), reason="no /dev/kvm on this host")
def test_a_probing_libvirtd_a_killed_run_left_is_stopped_by_the_next_up(state_dir, libvirt_idle):
    # What a SIGKILL between starting the probe and stopping it leaves.
    try:
        subprocess.run(libvirt.hidden_kvm_argv(["libvirtd", "-d"]), check=True)
    finally:
        os.unlink(libvirt.NO_KVM_FILE)
    left = libvirt.wait_ready("libvirtd", None)
    assert libvirt.leftover_probe_pid() == left
    state = os.path.join(state_dir, "libvirt.json")
    try:
        libvirt.up(state, tcg=True)
        pid = libvirt.daemon_pid("libvirtd")
        assert pid != left and libvirt.leftover_probe_pid() is None
        assert stat.S_ISCHR(os.stat("/proc/%d/root/dev/kvm" % pid).st_mode)
    finally:
        libvirt.down(state)
    assert libvirt.daemon_pid("libvirtd") is None


def built_image(release="bookworm"):
    box = boxes.current_box(release)
    if not box.is_built():
        pytest.skip("the %s box is not built: python3 labs/boxes.py build %s" % (release, release))
    return box.image


def test_the_probe_sees_the_kernel_reach_userspace_under_tcg():
    from labs import vagrant as labvagrant
    usable, reason = labvagrant.probe_kvm(built_image(), timeout=120, accelerator="tcg")
    assert usable, reason


def test_the_kvm_probe_gives_a_verdict_with_a_reason(capsys):
    from labs import vagrant as labvagrant
    usable, reason = labvagrant.probe_kvm(built_image(), timeout=30)
    with capsys.disabled():
        print("\nKVM probe on this host: %s (%s)" % ("kvm" if usable else "tcg", reason))
    assert reason


@needs_lab
@needs_libvirt
def test_a_vm_comes_up_on_loopback_only_and_leaves_nothing(state_dir, no_lab_run):
    if libvirt.answers():
        pytest.skip("libvirtd runs already (a lab may be using it)")
    built_image()
    env = dict(os.environ, LAB_RUN_DIR=state_dir)
    python = os.path.join(REPO, ".venv", "bin", "python")
    config = os.path.join(state_dir, "instance.json")
    try:
        subprocess.run([python, "-m", "labs.vagrant", "up", "bookworm", "--instance-config", config],
                       cwd=REPO, env=env, check=True)
        instance = json.load(open(config))[0]
        assert instance["address"] == "127.0.0.1"
        ssh = ["ssh", "-i", instance["identity_file"], "-p", str(instance["port"]),
               "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
               "-o", "BatchMode=yes", "vagrant@127.0.0.1"]
        out = subprocess.run(ssh + ["lsblk -dno SERIAL; cat /sys/module/zfs/version"],
                             stdout=subprocess.PIPE, universal_newlines=True, check=True).stdout
        assert "snaplab-zfs" in out and "snaplab-ext4" in out
        # Listening sockets: loopback only (the VM's forwarded SSH port among them).
        listeners = subprocess.run(["ss", "-Htlnup"], stdout=subprocess.PIPE,
                                   universal_newlines=True, check=True).stdout
        for line in listeners.splitlines():
            if "qemu" in line or "libvirtd" in line:
                local = line.split()[4]
                assert local.startswith("127.0.0.1:"), line
        assert libvirt.active_networks() == []
        # The guest reaches nothing: restrict=on user networking.
        probe = subprocess.run(ssh + ["timeout 5 bash -c 'echo > /dev/tcp/10.0.2.2/22' 2>/dev/null "
                                      "&& echo reached || echo isolated"],
                               stdout=subprocess.PIPE, universal_newlines=True).stdout
        assert "isolated" in probe
    finally:
        subprocess.run([python, "-m", "labs.vagrant", "down"], cwd=REPO, env=env, check=True)
    if libvirt.answers():
        assert not [d for d in libvirt.domains() if libvirt.ours_domain(d)]
        assert not [v for v in libvirt.volumes() if libvirt.ours_volume(v)]
    # libvirt names the qemu process after the domain (-name guest=snaplab-lab-...).
    assert subprocess.run(["pgrep", "-f", "qemu-system.*guest=snaplab-lab-"],
                          stdout=subprocess.DEVNULL).returncode == 1
