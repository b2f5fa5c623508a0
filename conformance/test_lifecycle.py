"""Lifecycle: a service stopped, crashed and restarted keeps its word.

For targets the suite starts itself (a start command: conformance/started.py;
the serve-* rows and `--start-command`), one service per root:

- stopped with SIGTERM or SIGINT, it must stop cleanly, and once started
  again on the same root every snapshot (kind, parent, labels, times), every
  byte of content (written through the mounts before: files, modes, links)
  is there, and the mounts of each name paths that exist.
- killed with SIGKILL while a Prepare, Commit or Remove is in flight (the
  call in a thread, the kill after a delay varied over the call's own
  duration, measured first; the operation made slow with many files), then
  started again: the committed data is intact; the interrupted operation
  happened entirely (its result usable, its content right) or not at all (a
  retry of the same call works); and once everything is removed and Cleanup
  has run, the root holds nothing a fresh root does not.
- after Remove of everything and a Cleanup, nothing is left under the root
  beyond what a fresh root of the same command holds (one that saw a Prepare
  and a Remove, so that files made on the first write are in it too);
  compared as the set of paths, once both services are stopped.
- several clients at once, each its own gRPC channel, preparing, committing
  and removing disjoint keys: every result right.

Other targets skip (the suite cannot stop or restart them). Nothing here
knows the on-disk layout of any snapshotter.
"""

import contextlib
import os
import signal
import tempfile
import threading
import time

import pytest

from snaplab import errors
from snaplab.types import Kind

from . import fstest
from .containerd import remove_every_snapshot
from .helpers import mounted

NO_START_COMMAND = "no start command: the suite cannot stop or restart this target"
KILLED_CALL_JOIN_S = 120
# The operation a kill interrupts touches this many files (a full copy, a
# usage walk, a recursive delete), so that some kills land mid-call.
MANY_FILES = 1500
FILES_PER_DIRECTORY = 100
# Kill delays, as fractions of the duration of the same call unkilled.
KILL_AT = (0.0, 0.15, 0.35, 0.55, 0.8)
CLIENTS = 4
ROUNDS_PER_CLIENT = 3
LABELS = {"containerd.io/gc.root": "2026-01-01T00:00:00Z"}


@pytest.fixture
def started(target):
    """The target, which must start its service itself."""
    if target.start_command is None:
        pytest.skip(NO_START_COMMAND)
    return target


# ---------------------------------------------------------------- content

def write_many_files(count, tag):
    """An applier writing `count` small files (content from their names)."""
    def applier(root):
        for number in range(count):
            directory = os.path.join(root, "%s-%02d" % (tag, number // FILES_PER_DIRECTORY))
            os.makedirs(directory, mode=0o755, exist_ok=True)
            with open(os.path.join(directory, "f%04d" % number), "wb") as data:
                data.write(("%s %d\n" % (tag, number)).encode() * 4)
    return applier


def scratch(work, prefix):
    return tempfile.mkdtemp(prefix=prefix, dir=work)


def manifest_of_mounts(mounts, work):
    directory = scratch(work, "look-")
    try:
        with mounted(mounts, directory):
            return fstest.build_manifest(directory)
    finally:
        with contextlib.suppress(OSError):
            os.rmdir(directory)  # only if it was unmounted


def apply_through_mounts(mounts, work, applier):
    directory = scratch(work, "write-")
    try:
        with mounted(mounts, directory):
            applier(directory)
    finally:
        with contextlib.suppress(OSError):
            os.rmdir(directory)


def content(sn, work, info):
    """The manifest of snapshot `info`: an active snapshot or view through
    its own mounts, a committed one through a view (removed after)."""
    if info.kind != Kind.COMMITTED:
        return manifest_of_mounts(sn.mounts(info.name), work)
    view = info.name + "-lifecycle-look"
    mounts = sn.view(view, info.name, labels=dict(LABELS))
    try:
        return manifest_of_mounts(mounts, work)
    finally:
        sn.remove(view)


def check_same_content(expected, actual, what):
    differences = fstest.diff_manifests(expected, actual)
    if differences:
        raise AssertionError("content of %s differs: %s" % (what, "; ".join(differences[:20])))


def check_same_snapshots(before, after):
    """Same names; kind, parent, labels and times of each."""
    assert sorted(after) == sorted(before), "snapshots before and after differ"
    for name, info in before.items():
        have = after[name]
        for field in ("kind", "parent", "labels", "created", "updated"):
            want, got = getattr(info, field), getattr(have, field)
            if field == "labels":
                want, got = dict(want or {}), dict(got or {})
            assert got == want, "%s of %r: %r before, %r after" % (field, name, want, got)


def populate(sn, work):
    """A chain of two committed layers, an active child with changes written
    through its mounts, a view, a parentless active snapshot; labels on
    each. Returns {name: manifest}."""
    base = sn.prepare("base-active", "", labels=dict(LABELS, layer="base"))
    apply_through_mounts(base, work, fstest.apply(
        fstest.create_dir("/etc", 0o755),
        fstest.create_file("/etc/hosts", b"127.0.0.1 localhost\n", 0o644),
        fstest.create_dir("/bin", 0o755),
        fstest.create_random_file("/bin/tool", 7, 64 * 1024, 0o755),
        fstest.symlink("tool", "/bin/link"),
        fstest.link("/etc/hosts", "/etc/hosts.hard"),
        write_many_files(120, "base")))
    sn.commit("base", "base-active", labels=dict(LABELS, layer="base", committed="yes"))
    child = sn.prepare("child-active", "base", labels=dict(LABELS))
    apply_through_mounts(child, work, fstest.apply(
        fstest.create_file("/etc/hosts", b"10.0.0.1 changed\n", 0o600),
        fstest.remove("/bin/link"),
        fstest.create_dir("/var/lib/app", 0o700),
        fstest.create_random_file("/var/lib/app/data", 11, 200 * 1024, 0o640)))
    sn.commit("child", "child-active", labels=dict(LABELS, layer="child"))
    work_mounts = sn.prepare("work", "child", labels=dict(LABELS, role="container"))
    apply_through_mounts(work_mounts, work, fstest.apply(
        fstest.create_dir("/tmp", 0o1777),
        fstest.create_file("/tmp/written-before-stop", b"kept\n" * 1000, 0o644),
        fstest.remove_all("/var/lib/app")))
    sn.view("look", "child", labels=dict(LABELS, role="view"))
    lone = sn.prepare("lone", "", labels=dict(LABELS))
    apply_through_mounts(lone, work, fstest.create_file("/only", b"alone\n", 0o644))
    return {info.name: content(sn, work, info) for info in sn.list()}


def paths_in(mount):
    """The host paths a mount names: an absolute source, and the
    directories of lowerdir, upperdir and workdir."""
    paths = [mount.source] if mount.source.startswith("/") else []
    for option in mount.options:
        name, _eq, value = option.partition("=")
        if name == "lowerdir":
            paths += value.split(":")
        elif name in ("upperdir", "workdir"):
            paths.append(value)
    return paths


def check_named_paths_exist(sn, set_labels):
    """Stat of each snapshot, and Mounts of each active one and view, name
    only paths that exist (a label the snapshotter added whose value is an
    absolute path, the mounts' sources and directories)."""
    missing = []
    for info in sn.list():
        stat = sn.stat(info.name)
        for label, value in (stat.labels or {}).items():
            if label not in set_labels.get(info.name, {}) and value.startswith("/") \
                    and not os.path.exists(value):
                missing.append("label %s of %s: %s" % (label, info.name, value))
        if info.kind == Kind.COMMITTED:
            continue
        for mount in sn.mounts(info.name):
            missing += ["mounts of %s: %s" % (info.name, path) for path in paths_in(mount)
                        if not os.path.exists(path)]
    assert not missing, "paths named after the restart do not exist: %s" % "; ".join(missing)


# ---------------------------------------------------------------- what a root holds

def paths_under(directory):
    """Every path under `directory`, relative, directories with a "/"."""
    found = set()
    for top, subdirectories, names in os.walk(directory):
        for name in subdirectories + names:
            path = os.path.join(top, name)
            relative = os.path.relpath(path, directory)
            found.add(relative + "/" if name in subdirectories else relative)
    return found


def remove_everything(started, sn, root):
    """Remove every snapshot, Cleanup, and stop the service of `root` (once
    the service freed what it keeps of removed snapshots: RootService.collect)."""
    remove_every_snapshot(sn)
    with contextlib.suppress(errors.NotImplemented):
        sn.cleanup()
    assert sn.list() == [], "snapshots listed after removing every one and Cleanup"
    sn.close()
    service = started.service_of(root)
    service.collect()
    assert service.stop() == []


def fresh_root_paths(started, open_snapshotter, test_dir):
    """What a fresh root of the same command holds once it saw one Prepare
    and its Remove (and Cleanup), its service stopped."""
    fresh = os.path.join(test_dir, "fresh-root")
    sn = open_snapshotter(fresh)
    sn.prepare("fresh", "")
    remove_everything(started, sn, fresh)
    return paths_under(started.data_dir(fresh))


def check_nothing_left(started, sn, root, open_snapshotter, test_dir):
    """Remove every snapshot of `sn` (on `root`), Cleanup, stop the service:
    the root holds nothing a fresh root does not."""
    remove_everything(started, sn, root)
    fresh = fresh_root_paths(started, open_snapshotter, test_dir)
    left = paths_under(started.data_dir(root)) - fresh
    assert not left, ("left under the root after removing every snapshot and Cleanup, "
                      "beyond what a fresh root holds: %s" % ", ".join(sorted(left)[:40]))


# ---------------------------------------------------------------- the cases

@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_everything_survives_stop_and_restart(started, open_snapshotter, root, work, signum):
    sn = open_snapshotter(root)
    contents = populate(sn, work)
    before = {info.name: sn.stat(info.name) for info in sn.list()}
    sn.close()
    service = started.service_of(root)
    problems = service.stop(signum)
    assert not problems, problems
    service.start()
    again = open_snapshotter(root)
    check_same_snapshots(before, {info.name: info for info in again.list()})
    check_same_snapshots(before, {name: again.stat(name) for name in before})
    for info in again.list():
        check_same_content(contents[info.name], content(again, work, info), info.name)
    check_named_paths_exist(again, {name: info.labels for name, info in before.items()})


class KilledCall:
    """One call on its own client, in a thread, that a kill may interrupt."""

    def __init__(self, opener, call):
        self.client = opener()
        self.outcome = None  # what it returned or raised
        self.raised = False
        self.thread = threading.Thread(target=self._run, args=(call,), daemon=True)

    def _run(self, call):
        try:
            self.outcome = call(self.client)
        except Exception as err:  # pylint: disable=broad-except
            self.outcome, self.raised = err, True

    def start(self):
        self.thread.start()
        return self

    def join(self):
        self.thread.join(KILLED_CALL_JOIN_S)
        assert not self.thread.is_alive(), "the call did not return after its service died"
        self.client.close()


def stat_or_none(sn, key):
    try:
        return sn.stat(key)
    except errors.NotFound:
        return None


def set_up_prepare(sn, work, number):
    key = "prepared-%d" % number
    return key, (lambda c: c.prepare(key, "base", labels=dict(LABELS)))


def check_prepare(sn, work, key, base_content):
    info = stat_or_none(sn, key)
    done = info is not None
    if not done:  # not at all: a retry works
        sn.prepare(key, "base", labels=dict(LABELS))
        info = sn.stat(key)
    assert (info.kind, info.parent) == (Kind.ACTIVE, "base"), info
    check_same_content(base_content, content(sn, work, info), key)
    sn.remove(key)
    return done


def set_up_commit(sn, work, number):
    key, name = "to-commit-%d" % number, "committed-%d" % number
    mounts = sn.prepare(key, "base", labels=dict(LABELS))
    apply_through_mounts(mounts, work, write_many_files(MANY_FILES, "commit%d" % number))
    return (key, name, manifest_of_mounts(mounts, work)), \
        (lambda c: c.commit(name, key, labels=dict(LABELS)))


def check_commit(sn, work, state, _base_content):
    key, name, expected = state
    active, committed = stat_or_none(sn, key), stat_or_none(sn, name)
    assert (active is None) != (committed is None), (
        "after the kill, %s: active %s, committed %s: it must be one or the other"
        % (key, active, committed))
    done = committed is not None
    if not done:  # not at all: the active one is whole, a retry works
        check_same_content(expected, content(sn, work, active), key)
        sn.commit(name, key, labels=dict(LABELS))
        committed = sn.stat(name)
    assert (committed.kind, committed.parent) == (Kind.COMMITTED, "base"), committed
    check_same_content(expected, content(sn, work, committed), name)
    sn.remove(name)
    return done


def set_up_remove(sn, work, number):
    key, name = "to-remove-%d-active" % number, "to-remove-%d" % number
    mounts = sn.prepare(key, "base", labels=dict(LABELS))
    apply_through_mounts(mounts, work, write_many_files(MANY_FILES, "remove%d" % number))
    expected = manifest_of_mounts(mounts, work)
    sn.commit(name, key, labels=dict(LABELS))
    return (name, expected), (lambda c: c.remove(name))


def check_remove(sn, work, state, _base_content):
    name, expected = state
    info = stat_or_none(sn, name)
    if info is not None:  # not at all: still whole, a retry works
        check_same_content(expected, content(sn, work, info), name)
        sn.remove(name)
    assert stat_or_none(sn, name) is None
    return info is None


# set_up(sn, work, number) -> (state, call); check(sn, work, state, base
# content) after the restart -> whether the call had taken effect.
OPERATIONS = {"Prepare": (set_up_prepare, check_prepare),
              "Commit": (set_up_commit, check_commit),
              "Remove": (set_up_remove, check_remove)}


@pytest.mark.parametrize("operation", sorted(OPERATIONS))
def test_sigkill_mid_call_is_all_or_nothing(started, open_snapshotter, root, work, test_dir,
                                            operation, request):
    set_up, check = OPERATIONS[operation]
    sn = open_snapshotter(root)
    base = sn.prepare("base-active", "", labels=dict(LABELS))
    apply_through_mounts(base, work, write_many_files(MANY_FILES, "base"))
    sn.commit("base", "base-active", labels=dict(LABELS, layer="base"))
    base_info = sn.stat("base")
    base_content = content(sn, work, base_info)
    service = started.service_of(root)

    # The call unkilled, to learn how long it takes here.
    state, call = set_up(sn, work, 0)
    began = time.monotonic()
    call(sn)
    duration = time.monotonic() - began
    check(sn, work, state, base_content)

    raised = done = 0
    for number, fraction in enumerate(KILL_AT, 1):
        state, call = set_up(sn, work, number)
        sn.close()
        in_flight = KilledCall(service.opener(), call).start()
        time.sleep(duration * fraction)
        service.kill()
        in_flight.join()
        raised += in_flight.raised
        service.start()
        sn = open_snapshotter(root)
        check_same_snapshots({"base": base_info}, {"base": sn.stat("base")})
        check_same_content(base_content, content(sn, work, base_info), "base")
        done += check(sn, work, state, base_content)
        assert [info.name for info in sn.list()] == ["base"], (
            "after the kill and the checks of round %d: %s" % (number, sn.list()))
    # Where the kills landed: a call that raised was killed before its
    # answer; one that had taken effect anyway was killed after its work.
    request.node.user_properties.append(("kills", "%d kills, %d calls raised, %d took effect; "
                                         "the call unkilled: %.3f s"
                                         % (len(KILL_AT), raised, done, duration)))
    check_nothing_left(started, sn, root, open_snapshotter, test_dir)


def test_nothing_is_left_after_removing_everything(started, open_snapshotter, root, work,
                                                   test_dir):
    sn = open_snapshotter(root)
    populate(sn, work)
    for number in range(3):
        mounts = sn.prepare("many-%d-active" % number, "child", labels=dict(LABELS))
        apply_through_mounts(mounts, work, write_many_files(300, "many%d" % number))
        sn.commit("many-%d" % number, "many-%d-active" % number)
    check_nothing_left(started, sn, root, open_snapshotter, test_dir)


def client_rounds(opener, work, worker, errors_seen):
    """One client's share: each round commits a layer with a file of its
    own, checks it through a view, and removes every other one."""
    try:
        with opener() as sn:
            for number in range(ROUNDS_PER_CLIENT):
                name = "w%d-%d" % (worker, number)
                mounts = sn.prepare(name + "-active", "base", labels=dict(LABELS))
                apply_through_mounts(mounts, work, fstest.create_file(
                    "/" + name, name.encode() * 100, 0o644))
                sn.commit(name, name + "-active", labels=dict(LABELS, worker=str(worker)))
                directory = scratch(work, "view-")
                with mounted(sn.view(name + "-view", name), directory):
                    with open(os.path.join(directory, name), "rb") as data:
                        assert data.read() == name.encode() * 100
                os.rmdir(directory)
                sn.remove(name + "-view")
                if number % 2:
                    sn.remove(name)
    except Exception as err:  # pylint: disable=broad-except
        errors_seen.append("client %d: %s: %s" % (worker, type(err).__name__, err))


def test_several_clients_at_once(started, open_snapshotter, root, work):
    sn = open_snapshotter(root)
    base = sn.prepare("base-active", "", labels=dict(LABELS))
    apply_through_mounts(base, work, fstest.create_file("/base", b"base\n", 0o644))
    sn.commit("base", "base-active")
    opener = started.opener(root)
    errors_seen = []
    clients = [threading.Thread(target=client_rounds, args=(opener, work, w, errors_seen))
               for w in range(CLIENTS)]
    for client in clients:
        client.start()
    for client in clients:
        client.join()
    assert not errors_seen, errors_seen
    kept = ["w%d-%d" % (w, n) for w in range(CLIENTS) for n in range(ROUNDS_PER_CLIENT)
            if not n % 2]
    assert sorted(info.name for info in sn.list()) == sorted(["base"] + kept)
    for name in kept:
        info = sn.stat(name)
        assert (info.kind, info.parent, info.labels.get("worker")) == \
            (Kind.COMMITTED, "base", name[1:].split("-")[0])
        listing = {entry.path for entry in content(sn, work, info)}
        assert listing == {"/base", "/" + name}, listing
