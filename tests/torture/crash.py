"""Crash injection: each mutating CLI verb runs in a child process that is
SIGKILLed at a named crash point (snaplab/faults.py: SNAPLAB_CRASH_AT) or
after a random delay within the verb's measured duration; then, without a
manual cleanup first, the invariants are checked:

  (a) a fresh cycle works: prepare, usage, commit, view, ls, info, rm exit 0
  (b) every committed snapshot of the fixture has the content it had
  (c) the killed operation happened wholly or not at all (its keys' kind,
      parent and labels, and the content of what it made)
  (d) after `snaplab cleanup` nothing on disk is unreferenced (doctor)
  (e) nothing new is mounted under the root or the temp directory, and no
      snaplab temp name is left there

A violation is recorded (backend, operation, point or delay, seed, what
failed) and the run goes on. The child is forked from this process (no
interpreter start-up, so a random delay lands inside the operation) and
runs snaplab.cli.main in a process group of its own: the kill takes the
zfs commands it runs with it, as a crash would.
"""

import collections
import json
import os
import signal
import sys
import tempfile
import time
import traceback

from snaplab import backends

from tests.torture import lab as labmod
from tests.torture.lab import CheckFailed, cli, info_of

CRASH_ENV = "SNAPLAB_CRASH_AT"
GC_ROOT = "containerd.io/gc.root"
FIXED_GC_ROOT = ("--label", GC_ROOT + "=torture")  # deterministic labels to compare

OPERATIONS = ("prepare", "view", "commit", "rm", "label", "cleanup", "apply-layer",
              "apply-layers", "prepare-mapped")
# A uid/gid mapping (snaplab/idmap.py): native and btrfs chown the new
# snapshot, overlay only stores it (its mounts are idmapped).
MAPPING_LABELS = {"containerd.io/snapshot/uidmapping": "0:100000:65536",
                  "containerd.io/snapshot/gidmapping": "0:100000:65536"}

# Named points each operation can reach (snaplab/faults.py), and how many
# times at most it reaches one per run (the N of NAME:N is drawn up to it).
POINTS = {
    "prepare": {"create.staged": 1, "create.stored": 1, "copy.file": "files"},
    "view": {"create.staged": 1, "create.stored": 1},
    "commit": {"commit.stored": 1, "erofs.image_built": 1, "erofs.image_stored": 1,
               "erofs.committed": 1},
    "rm": {"remove.stored": 1, "remove.committed": 1, "erofs.unmounted": 1},
    "label": {},
    "cleanup": {"cleanup.entry": 1},
    "apply-layer": {"apply.entry": "entries", "apply.mounted": 1},
    "apply-layers": {"create.staged": 2, "create.stored": 2, "apply.entry": "entries",
                     "commit.stored": 2},
    "prepare-mapped": {"create.staged": 1, "create.stored": 1, "copy.file": "files",
                       "remap.entry": "files"},
}
# Points that only some backends' code paths reach.
BACKEND_ONLY = {"copy.file": ("native",), "remap.entry": ("native", "btrfs"),
                "erofs.image_built": ("erofs",), "erofs.image_stored": ("erofs",),
                "erofs.committed": ("erofs",), "erofs.unmounted": ("erofs",)}
MISSES_BEFORE_DROP = 3

# The fixture: a parent with thousands of files (native copies it on each
# Prepare: slow enough to be hit mid-copy), its child, and layers with many
# entries. Every check reads the committed ones back; through zfs-fuse that
# costs about 1 ms a file, hence a smaller parent there.
PARENT_FILES = {"native": 2000, "zfs": 400}
DEFAULT_PARENT_FILES = 1000
CHILD_FILES = 200
LAYER_ENTRIES = 1500
UPPER_LAYER_ENTRIES = 100


class Fixture:
    """The committed snapshots every check reads back, and the layer tars."""

    def __init__(self, root, backend, scratch, tmpdir, rng):
        self.root, self.backend, self.tmpdir = root, backend, tmpdir
        self.committed = {}  # name -> manifest recorded when it was made
        self.parent_files = PARENT_FILES.get(backend, DEFAULT_PARENT_FILES)
        self._commit_with_files("base", "", self.parent_files, rng)
        self._commit_with_files("base2", "base", CHILD_FILES, rng)
        self.layer = os.path.join(scratch, "layer1.tar")
        labmod.make_layer_tar(self.layer, LAYER_ENTRIES, rng)
        self.upper_layer = os.path.join(scratch, "layer2.tar")
        labmod.make_layer_tar(self.upper_layer, UPPER_LAYER_ENTRIES, rng,
                              remove=["layer/d000/e00001", "layer/d001"])
        self.layer_manifest = labmod.layers_manifest([self.layer], scratch)
        self.chain_manifest = labmod.layers_manifest([self.layer, self.upper_layer], scratch)
        applied = labmod.layers_manifest([self.layer], scratch)
        self.base_with_layer = _overlaid(self.committed["base"], applied)
        planned = json.loads(self.run("--json", "apply-layers", self.layer,
                                      self.upper_layer).out)
        self.chain = [layer["chain_id"] for layer in planned["layers"]]
        self.diff_ids = [layer["diff_id"] for layer in planned["layers"]]
        for name, expected in zip(self.chain, (self.layer_manifest, self.chain_manifest)):
            self.committed[name] = expected
        self.verify_committed()  # what was made is what was meant
        for name in reversed(self.chain):  # apply-layers cases make them again
            del self.committed[name]
            self.run("rm", name)

    def run(self, *argv):
        result = cli(self.root, self.backend, *argv)
        if result.code != 0:
            raise CheckFailed("fixture: snaplab %s: %r" % (" ".join(argv), result))
        return result

    def _commit_with_files(self, name, parent, count, rng):
        work = name + "-work"
        self.run("prepare", work, *([parent] if parent else []))
        with labmod.mounted(self.root, self.backend, work, self.tmpdir) as target:
            labmod.write_files(target, count, rng, prefix=name)
            content = labmod.manifest(target)
        self.run("commit", *FIXED_GC_ROOT, name, work)
        self.committed[name] = content

    def verify_committed(self):
        """Findings: committed snapshots whose content is not what was recorded."""
        findings = []
        for name, expected in self.committed.items():
            try:
                found = labmod.content_of(self.root, self.backend, name, self.tmpdir)
            except CheckFailed as err:
                findings.append("(b) committed %s unreadable: %s" % (name, err))
                continue
            difference = labmod.manifest_difference(expected, found)
            if difference:
                findings.append("(b) committed %s changed: %s" % (name, difference))
        if findings:
            raise CheckFailed("; ".join(findings))


def _overlaid(lower, upper):
    """The manifest of `upper` applied on `lower` (no whiteouts in upper)."""
    merged = dict(lower)
    merged.update({k: v for k, v in upper.items() if k != "."})
    return merged


def state(info):
    """What (c) compares of a key: (kind, parent, labels), or None if absent."""
    if info is None:
        return None
    return (info["Kind"].lower(), info.get("Parent", ""), dict(sorted(info.get("Labels", {}).items())))


class Case:
    """One operation to kill: its argv, the keys it touches and their allowed
    states (before, maybe some in between, after), the content a key must
    have if it ends in its `after` state, and the keys to remove afterwards."""

    def __init__(self, op, argv, keys, outcomes, content=None, teardown=(), on_success=None,
                 restore=None):
        self.op = op
        self.argv = list(argv)
        self.keys = list(keys)
        self.outcomes = outcomes  # [ {key: state} ], the first "before", the last "after"
        self.content = content or {}  # key -> manifest, checked when the key exists
        self.teardown = list(teardown)  # keys to rm, in order
        self.on_success = on_success  # (key, manifest) that must hold after exit 0
        self.restore = restore  # argv that undoes the operation's effect afterwards


class CrashRun:
    """The crash campaign on one backend's root."""

    def __init__(self, backend, root, scratch, tmpdir, seed):
        self.backend, self.root, self.scratch, self.tmpdir = backend, root, scratch, tmpdir
        self.seed = seed
        self.rng = labmod.seeded(seed, "crash", backend)
        self.results = []
        self.durations = {}  # op -> seconds of its last uninterrupted run
        self.number = 0
        self.point_hits = collections.Counter()  # (op, point name) -> kills there
        self.point_misses = collections.Counter()  # ... -> runs that never reached it
        # snaplab's temp mounts go to our private directory (the forked
        # children inherit it), where nothing else makes any.
        os.environ["TMPDIR"] = tmpdir
        tempfile.tempdir = tmpdir
        self.fixture = Fixture(root, backend, scratch, tmpdir, self.rng)
        self.pristine_mounts = labmod.mounts_of([root, tmpdir])

    def run(self, *argv):
        return cli(self.root, self.backend, *argv)

    # -- the cases -----------------------------------------------------------

    def _new_key(self, stem):
        self.number += 1
        return "%s-%d" % (stem, self.number)

    def _make(self, *argv):
        result = self.run(*argv)
        if result.code != 0:
            raise CheckFailed("setup: snaplab %s: %r" % (" ".join(argv), result))

    def case(self, op):
        base = self.fixture.committed["base"]
        if op in ("prepare", "view", "prepare-mapped"):
            key = self._new_key(op)
            labels = {GC_ROOT: "torture"} if op == "prepare" else {}
            label_args = FIXED_GC_ROOT if op == "prepare" else ()
            if op == "prepare-mapped":
                labels = dict(MAPPING_LABELS, **{GC_ROOT: "torture"})
                label_args = [arg for name, value in sorted(labels.items())
                              for arg in ("--label", "%s=%s" % (name, value))]
            kind = "view" if op == "view" else "active"
            verb = "view" if op == "view" else "prepare"
            return Case(op, [verb, *label_args, key, "base"], [key],
                        [{key: None}, {key: (kind, "base", labels)}],
                        content={key: base}, teardown=[key])
        if op == "commit":
            work, name = self._new_key("work"), self._new_key("committed")
            self._make("prepare", *FIXED_GC_ROOT, work, "base")
            with labmod.mounted(self.root, self.backend, work, self.tmpdir) as target:
                labmod.write_files(target, 50, self.rng, prefix="new")
                os.unlink(os.path.join(target, "base000", "base00007"))
                expected = labmod.manifest(target)
            labels = {GC_ROOT: "torture"}
            return Case(op, ["commit", *FIXED_GC_ROOT, name, work], [work, name],
                        [{work: ("active", "base", labels), name: None},
                         {work: None, name: ("committed", "base", labels)}],
                        content={name: expected}, teardown=[name, work])
        if op == "rm":
            key = self._new_key("doomed")
            committed = self.number % 2 == 0
            if committed:
                work = key + "-work"
                self._make("prepare", *FIXED_GC_ROOT, work, "base")
                self._make("commit", *FIXED_GC_ROOT, key, work)
            else:
                self._make("prepare", *FIXED_GC_ROOT, key, "base")
            before = state(info_of(self.root, self.backend, key))
            return Case(op, ["rm", key], [key], [{key: before}, {key: None}], teardown=[key])
        if op == "label":
            before = state(info_of(self.root, self.backend, "base2"))
            value = self._new_key("value")
            after = (before[0], before[1], dict(sorted(dict(before[2], **{"torture": value})
                                                       .items())))
            return Case(op, ["label", "base2", "torture=" + value], ["base2"],
                        [{"base2": before}, {"base2": after}],
                        restore=["label", "base2", "torture="])
        if op == "cleanup":
            # Something to clean: a Prepare killed with its data stored and
            # its metadata not committed (an orphan, as a crash leaves it).
            orphan = self._new_key("orphan")
            outcome = fork_and_kill(self.root, self.backend,
                                    ["prepare", orphan, "base"], crash_at="create.stored")
            teardown = [orphan] if not outcome["killed"] else []
            keys = ["base", "base2"]
            unchanged = {k: state(info_of(self.root, self.backend, k)) for k in keys}
            return Case(op, ["cleanup"], keys, [unchanged, unchanged], teardown=teardown)
        if op == "apply-layer":
            key = self._new_key("unpack")
            self._make("prepare", *FIXED_GC_ROOT, key, "base")
            active = ("active", "base", {GC_ROOT: "torture"})
            return Case(op, ["apply-layer", key, self.fixture.layer], [key],
                        [{key: active}, {key: active}], teardown=[key],
                        on_success=(key, self.fixture.base_with_layer))
        if op == "apply-layers":
            bottom, top = self.fixture.chain
            # Half the time with the DiffIDs given: each layer written in one
            # pass, never scanned (killed there, the same outcomes hold).
            given = []
            if self.rng.random() < 0.5:
                for diff_id in self.fixture.diff_ids:
                    given += ["--diff-id", diff_id]
            # apply-layers adds containerd's labels; only their presence is
            # compared (the values are the chain's own).
            return Case(op, ["apply-layers"] + given + [self.fixture.layer,
                                                        self.fixture.upper_layer],
                        [bottom, top],
                        [{bottom: None, top: None}, {bottom: ("committed", "", None), top: None},
                         {bottom: ("committed", "", None), top: ("committed", bottom, None)}],
                        content={bottom: self.fixture.layer_manifest,
                                 top: self.fixture.chain_manifest},
                        teardown=[top, bottom])
        raise ValueError(op)

    # -- one attempt -----------------------------------------------------------

    def attempt(self, op, mode):
        """Set up `op`, run it in a child, kill it (mode: "point", "random" or
        "calibrate" = no kill), check the invariants; returns the record."""
        record = {"backend": self.backend, "op": op, "mode": mode, "seed": self.seed,
                  "point": None, "delay": None, "killed": False, "point_reached": None,
                  "exit": None, "violations": [], "notes": []}
        try:
            case = self.case(op)
        except CheckFailed as err:
            record["violations"].append("setup failed: %s" % err)
            self._repair(record)
            return record
        crash_at = delay = None
        if mode == "point":
            crash_at = self._pick_point(op)
            record["point"] = crash_at
            if crash_at is None:
                mode = record["mode"] = "random"
        if mode == "random":
            delay = self.rng.uniform(0, self.durations.get(op, 0.5))
            record["delay"] = round(delay, 4)
        outcome = fork_and_kill(self.root, self.backend, case.argv, crash_at, delay)
        record["seconds"] = {"op": round(outcome["seconds"], 3)}
        record["exit"] = outcome["exit"]
        record["killed"] = outcome["killed"]
        if mode == "point":
            record["point_reached"] = outcome["killed"]
            counter = self.point_hits if outcome["killed"] else self.point_misses
            counter[op, crash_at.split(":")[0]] += 1
        if not outcome["killed"]:
            if outcome["exit"] == 0:
                self.durations[op] = outcome["seconds"]
            else:
                record["violations"].append("(c) %s failed without a kill: exit %s: %s"
                                            % (op, outcome["exit"], outcome["stderr"][-500:]))
            if outcome["exit"] == 0 and outcome["stderr"].strip():
                record["violations"].append("(c) %s succeeded with stderr: %s"
                                            % (op, outcome["stderr"][-300:]))
        self.check(case, outcome, record)
        return record

    def _pick_point(self, op):
        """NAME:N for `op`, or None if it has no point left: one not reached
        in its first MISSES_BEFORE_DROP tries is not tried again (this code
        path does not pass it, as a native view of a parent creates nothing)."""
        points = [p for p in POINTS[op]
                  if self.backend in BACKEND_ONLY.get(p, (self.backend,))
                  and not (self.point_misses[op, p] >= MISSES_BEFORE_DROP
                           and not self.point_hits[op, p])]
        if not points:
            return None
        name = self.rng.choice(points)
        most = POINTS[op][name]
        most = {"files": self.fixture.parent_files, "entries": LAYER_ENTRIES}.get(most, most)
        return "%s:%d" % (name, self.rng.randint(1, most))

    def check(self, case, outcome, record):
        found = record["violations"]
        steps = (("(c) outcome", lambda: self._check_outcome(case, outcome, found)),
                 ("(a) fresh cycle", self._check_fresh_cycle),
                 ("(b) committed content", self.fixture.verify_committed),
                 ("cleanup", lambda: self._expect_clean_run("cleanup")),
                 ("(d) unreferenced after cleanup", self._check_unreferenced),
                 ("(c) content after cleanup", lambda: self._check_content(case)),
                 ("(e) mounts and temp names", lambda: self._check_leftovers(record)),
                 ("teardown", lambda: self._teardown(case, record)))
        timing = record.setdefault("seconds", {})
        for name, step in steps:
            started = time.monotonic()
            try:
                step()
            except CheckFailed as err:
                found.append("%s: %s" % (name, err))
            except Exception:  # a traceback from the CLI or the checker
                found.append("%s: %s" % (name, traceback.format_exc()[-1500:]))
            timing[name.split(" ")[0]] = round(time.monotonic() - started, 2)
        if found:
            self._repair(record)

    def _check_outcome(self, case, outcome, found):
        observed = {k: state(info_of(self.root, self.backend, k)) for k in case.keys}
        matches = [i for i, wanted in enumerate(case.outcomes) if _matches(observed, wanted)]
        if not matches:
            raise CheckFailed("partly done: %s is none of %s" % (observed, case.outcomes))
        if outcome["exit"] == 0 and len(case.outcomes) - 1 not in matches:
            raise CheckFailed("exit 0 but the state is %s, not %s" % (observed,
                                                                       case.outcomes[-1]))
        problems = self._content_problems(case, observed)
        if case.on_success and outcome["exit"] == 0:
            key, expected = case.on_success
            difference = labmod.manifest_difference(
                expected, labmod.content_of(self.root, self.backend, key, self.tmpdir))
            if difference:
                problems.append("content of %s after success: %s" % (key, difference))
        if problems:
            raise CheckFailed("; ".join(problems))

    def _content_problems(self, case, observed):
        problems = []
        for key, expected in case.content.items():
            if observed.get(key) is None:
                continue
            difference = labmod.manifest_difference(
                expected, labmod.content_of(self.root, self.backend, key, self.tmpdir))
            if difference:
                problems.append("content of %s: %s" % (key, difference))
        return problems

    def _check_content(self, case):
        """What the operation made is still whole after Cleanup (which must
        not take a live snapshot's data for a crash's leftover)."""
        observed = {k: state(info_of(self.root, self.backend, k)) for k in case.content}
        problems = self._content_problems(case, observed)
        if problems:
            raise CheckFailed("; ".join(problems))

    def _check_fresh_cycle(self):
        work, name, view = (self._new_key(s) for s in ("check-work", "check", "check-view"))
        for argv in (("prepare", *FIXED_GC_ROOT, work, "base"), ("usage", work),
                     ("commit", name, work), ("view", view, name), ("ls",), ("info", name),
                     ("usage", name), ("rm", view), ("rm", name)):
            self._expect_clean_run(*argv)

    def _expect_clean_run(self, *argv):
        result = self.run(*argv)
        if result.code != 0 or result.err.strip():
            raise CheckFailed("snaplab %s: %r" % (" ".join(argv), result))

    def _check_unreferenced(self):
        findings = labmod.unreferenced(self.root, self.backend)
        if findings:
            raise CheckFailed("; ".join(findings))

    def _check_leftovers(self, record):
        """New mounts under the root or our temp dir, snaplab temp names in
        the temp dir: a finding each; then they are removed (they are ours)."""
        problems = []
        new = labmod.mounts_of([self.root, self.tmpdir]) - self.pristine_mounts
        zfs_homes = os.path.join(self.root, "snapshots") + "/"
        kept = set(backends.kept_mounts_under(self.backend, self.root))
        for mountpoint, source, fstype in sorted(new, key=lambda m: -len(m[0])):
            if fstype == "fuse.zfs" and mountpoint.startswith(zfs_homes):
                continue  # a dataset's own mount: storage, (d)'s business
            if mountpoint in kept:
                continue  # an erofs image the snapshotter keeps mounted by design
            problems.append("mounted: %s (%s %s)" % (mountpoint, fstype, source))
            labmod.mountlib.unmount_all(mountpoint, labmod.MNT_DETACH)
        for name in labmod.snaplab_temp_names(self.tmpdir):
            problems.append("temp name left: %s" % os.path.join(self.tmpdir, name))
            path = os.path.join(self.tmpdir, name)
            for where in labmod.mountlib.mounts_under(path):
                labmod.mountlib.unmount_all(where, labmod.MNT_DETACH)
            os.rmdir(path)
        if problems:
            raise CheckFailed("; ".join(problems))

    def _teardown(self, case, record):
        if case.restore:
            self._expect_clean_run(*case.restore)
        leftovers = [i["Name"] for i in json.loads(self.run("--json", "ls").out)
                     if i["Name"].startswith("extract-")]
        if leftovers:
            # containerd's unpacker leaves them too; a lease's expiry removes them there
            record["notes"].append("apply-layers left active %s" % ", ".join(leftovers))
        for key in leftovers + case.teardown:
            result = self.run("rm", key)
            if result.code not in (0, 2):
                raise CheckFailed("rm %s: %r" % (key, result))

    def _repair(self, record):
        """After a violation: cleanup once more so the next attempt starts
        from a root that works, if it can (the violation stays recorded)."""
        result = self.run("cleanup")
        if result.code != 0:
            record["notes"].append("repair cleanup failed: %r" % result)

    # -- the campaign -------------------------------------------------------------

    def campaign(self, kills, operations=OPERATIONS, deadline=None):
        """One calibrating (unkilled) run per operation, then the operations in
        turn, named-point and random kills alternately, until `kills` kills.
        An operation gets at most 3x its share of tries: a point it never
        reaches, or a verb too quick to be hit, does not stall the run."""
        for op in operations:
            self.results.append(self.attempt(op, "calibrate"))
        share = -(-kills // len(operations))
        tries = dict.fromkeys(operations, 0)
        total = 0
        while total < kills:
            open_ops = [op for op in operations if tries[op] < 3 * share]
            if not open_ops:
                return
            for op in open_ops:
                if deadline is not None and time.monotonic() > deadline:
                    return
                mode = "point" if POINTS[op] and tries[op] % 2 == 0 else "random"
                record = self.attempt(op, mode)
                self.results.append(record)
                tries[op] += 1
                total += record["killed"]
                if total >= kills:
                    return


def _matches(observed, wanted):
    for key, want in wanted.items():
        have = observed.get(key)
        if want is None or have is None:
            if want != have:
                return False
        elif want[2] is None:  # labels not compared
            if have[:2] != want[:2]:
                return False
        elif have != want:
            return False
    return True


def fork_and_kill(root, backend, argv, crash_at=None, delay=None):
    """Run `snaplab ARGV` in a forked child (its own process group) with
    SNAPLAB_CRASH_AT=crash_at, SIGKILL the group after `delay` seconds if it
    still runs. {"killed": died of SIGKILL, "exit": code or -9, "seconds",
    "stderr"}."""
    output = tempfile.TemporaryFile()
    sys.stdout.flush()  # or the child would write our buffered text again
    sys.stderr.flush()
    started = time.monotonic()
    pid = os.fork()
    if pid == 0:  # the child: never returns
        code = 99
        try:
            os.setpgid(0, 0)
            if crash_at:
                os.environ[CRASH_ENV] = crash_at
            else:
                os.environ.pop(CRASH_ENV, None)
            # Fresh streams on fresh descriptors: under pytest sys.stderr is
            # its capture, not descriptor 2.
            os.dup2(output.fileno(), 2)
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 1)
            sys.stdout = open(1, "w", closefd=False)
            sys.stderr = open(2, "w", closefd=False)
            from snaplab import cli as snaplab_cli
            code = snaplab_cli.main(["--root", root, "--backend", backend, *argv])
            sys.stdout.flush()
            sys.stderr.flush()
        except BaseException:
            traceback.print_exc()
            sys.stderr.flush()
        finally:
            os._exit(code)
    try:
        os.setpgid(pid, pid)
    except OSError:
        pass  # the child did it already (or has exited)
    status = None
    if delay is not None:
        deadline = started + delay
        while status is None:
            done, status_now = os.waitpid(pid, os.WNOHANG)
            if done:
                status = status_now
            elif time.monotonic() >= deadline:
                os.killpg(pid, signal.SIGKILL)
                status = os.waitpid(pid, 0)[1]
            else:
                time.sleep(0.001)
    else:
        status = os.waitpid(pid, 0)[1]
    seconds = time.monotonic() - started
    _kill_group(pid)  # whatever it started (a zfs command) goes with it
    killed = os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    output.seek(0)
    stderr = output.read().decode("utf-8", "replace")
    output.close()
    return {"killed": killed, "exit": -signal.SIGKILL if killed else os.waitstatus_to_exitcode(status),
            "seconds": seconds, "stderr": stderr}


def _kill_group(pgid):
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        return
    # Wait (briefly) until the group's processes are gone, so the next step
    # does not race a dying zfs command.
    for _ in range(200):
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.01)


def run_backend(backend, root, scratch, tmpdir, seed, kills, operations=OPERATIONS,
                deadline=None):
    """The whole campaign on one root; returns the records."""
    campaign = CrashRun(backend, root, scratch, tmpdir, seed)
    campaign.campaign(kills, operations, deadline)
    return campaign.results


def summarize(records):
    """{(backend, op): {"kills", "points_hit", "points_not_reached", "tries", "violations"}}."""
    table = {}
    for r in records:
        row = table.setdefault((r["backend"], r["op"]), dict(
            tries=0, kills=0, points_hit=0, points_not_reached=0, violations=0))
        row["tries"] += 1
        row["kills"] += r["killed"]
        if r["mode"] == "point":
            row["points_hit" if r["point_reached"] else "points_not_reached"] += 1
        row["violations"] += bool(r["violations"])
    return table


def format_table(table):
    columns = ("tries", "kills", "points_hit", "points_not_reached", "violations")
    header = "%-8s %-13s" % ("backend", "operation") + "".join(" %9s" % c[:9] for c in columns)
    lines = [header, "-" * len(header)]
    totals = dict.fromkeys(columns, 0)
    for (backend, op), row in sorted(table.items(),
                                     key=lambda kv: (labmod.BACKENDS.index(kv[0][0]),
                                                     OPERATIONS.index(kv[0][1]))):
        lines.append("%-8s %-13s" % (backend, op) + "".join(" %9d" % row[c] for c in columns))
        for c in columns:
            totals[c] += row[c]
    lines.append("-" * len(header))
    lines.append("%-22s" % "total" + "".join(" %9d" % totals[c] for c in columns))
    return "\n".join(lines) + "\n"
