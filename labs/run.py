#!/usr/bin/env python3
"""Run the lab matrix and merge its results into one report.

    python3 -m labs.run run [--releases R ...] [--reports DIR] [-k EXPR] [--repeat N]
                            [--filesystems FS,...] [--known-failures FILE] [--no-build]
                            [--history FILE]
    python3 -m labs.run report DIR [--known-failures FILE] [--history FILE]

`run` takes each release of labs/matrix.yml through the Molecule scenario
`lab` (molecule/lab: a Vagrant VM of the release's box, node_storage makes
its filesystems, the conformance suite runs in it, idempotence, testinfra,
destroy), one release after the other, and keeps going when one fails.
Progress lines say which release, which step and how long; Molecule's full
output goes to DIR/<release>/molecule.log. At the end the results of every
release are merged by conformance.report (target x filesystem x
release/kernel; failing case names; known failures as expected failures,
stale entries listed) into DIR/report.{md,html}, the step times into
DIR/timings.txt, and the host is checked: no lab domain, volume, qemu or
active libvirt network left.

--repeat N runs each selected case N times in the VM (the suite's --repeat,
through LAB_REPEAT): the report gives each case's pass rate and lists the
flaky ones. The merge keeps a history (conformance.report --history), by
default DIR-history.json beside DIR (a run removes the results under DIR,
never that file), so that consecutive runs tell a case that newly fails (a
regression: the exit status is 1) from one that fails only sometimes.

Exit status: 0 when every release ran and nothing failed unexpectedly, 1
otherwise (a release that could not run counts), 2 for bad arguments.

`report` merges result files already under DIR (e.g. CI artifacts of
separate jobs) the same way.

One VM at a time: under TCG a VM's 2 vCPUs are two busy host threads, and
this machine kind has 2 cores (see README, Labs, for the measurements).
"""

import argparse
import collections
import datetime
import fcntl
import glob
import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time

from conformance import report as conformance_report
from conformance.resultlog import refusal_skip_reason
# labs is not installed into the venv: run `python -m labs.run` from the repository
# top, as labs/smoke.mk does.
from labs import boxes, matrix

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KNOWN_FAILURES = os.path.join(REPO, "labs", "known-failures.yml")
# A hung VM or case must still end the run (per release, seconds).
RELEASE_TIMEOUT_S = int(os.environ.get("LAB_RELEASE_TIMEOUT", "7200"))
HEARTBEAT_S = 60

# Molecule (NO_COLOR) prints "INFO     [lab > converge] Executing" and
# "... Executed: Successful" around each action of its test sequence.
ACTION = re.compile(r"\[lab > (\w+)\] (Executing|Executed)(?::\s*(\w+))?")
# Molecule colours a failed action's line even with NO_COLOR.
ANSI = re.compile(r"\x1b\[[0-9;]*m")
# A step Molecule skips for want of a playbook (cleanup) has not failed.
NOT_FAILED = ("Successful", "Missing", "Skipped")
TASK = re.compile(r"^TASK \[(.*)\] \*+")
# labs/vagrant.py's lines, relayed by create.yml's debug task.
BOOT = re.compile(r"SSH answers \(\+([0-9.]+) s\)")
VAGRANT_UP = re.compile(r"vagrant up \S+: ([0-9.]+) s")


class RunError(Exception):
    """The run cannot start (bad selection, nothing to run); the message says why."""


class Interrupted(Exception):
    """SIGTERM/SIGHUP: stop the current release and clean up."""


_started = time.monotonic()


def elapsed(seconds=None):
    seconds = int(time.monotonic() - _started if seconds is None else seconds)
    return "%d:%02d:%02d" % (seconds // 3600, seconds // 60 % 60, seconds % 60)


def say(text):
    print("[lab %s] %s" % (elapsed(), text), flush=True)


def utc_seconds(text):
    return datetime.datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(
        tzinfo=datetime.timezone.utc).timestamp()


class Progress:
    """Reads Molecule's output line by line: keeps the step times and says
    which step (and, now and then, which task) a release is at."""

    def __init__(self, release, say=say, clock=time.monotonic):
        self.release = release
        self.say = say
        self.clock = clock
        self.steps = collections.OrderedDict()  # action -> seconds
        self.outcomes = {}  # action -> "Successful" / "Failed" ...
        self.current = None
        self.current_start = None
        self.task = None
        self.last_said = clock()
        self.boot_s = None
        self.vagrant_up_s = None

    def feed(self, line):
        now = self.clock()
        line = ANSI.sub("", line)
        found = ACTION.search(line)
        if found:
            action, what, outcome = found.groups()
            if what == "Executing":
                self.current, self.current_start, self.task = action, now, None
                self.say("%s: %s ..." % (self.release, action))
            else:
                took = now - (self.current_start if self.current == action else now)
                # destroy runs twice in `molecule test`: first (nothing to do) and last.
                key = action if action not in self.steps else action + " (again)"
                self.steps[key] = took
                self.outcomes[key] = outcome or ""
                self.say("%s: %s %s in %s" % (self.release, action, (outcome or "done").lower(),
                                              elapsed(took)))
                self.current = None
            self.last_said = now
            return
        task = TASK.match(line)
        if task:
            self.task = task.group(1)
        boot = BOOT.search(line)
        if boot:
            self.boot_s = float(boot.group(1))
        up = VAGRANT_UP.search(line)
        if up:
            self.vagrant_up_s = float(up.group(1))
        self.heartbeat(now)

    def heartbeat(self, now=None):
        now = self.clock() if now is None else now
        if self.current and now - self.last_said >= HEARTBEAT_S:
            self.say("%s: %s, %s so far%s" % (self.release, self.current,
                                              elapsed(now - self.current_start),
                                              (": " + self.task) if self.task else ""))
            self.last_said = now


def failed_steps(outcomes):
    """The steps of Molecule's sequence that failed, in order."""
    return [step for step, outcome in outcomes.items() if outcome and outcome not in NOT_FAILED]


def suite_summary(results_path):
    """(seconds the suite ran in the VM, Counter of outcomes, the run's
    info, how many times each case ran) from results.json."""
    with open(results_path) as f:
        data = json.load(f)
    run = data["run"]
    seconds = utc_seconds(run["finished"]) - utc_seconds(run["started"])
    repeats = max([r.get("runs", 1) for r in data["results"]] or [1])
    return seconds, collections.Counter(r["outcome"] for r in data["results"]), run, repeats


def run_logged(argv, log_path, env=None, on_line=None, on_tick=None, timeout=None):
    """Run `argv` in its own process group, its output into `log_path` (and
    each line to `on_line`; `on_tick` every few seconds, also while it is
    silent); on timeout or an exception the whole group is stopped. Returns
    the exit status (-1: timed out)."""
    lines = queue.Queue()
    with open(log_path, "a") as log:
        process = subprocess.Popen(argv, cwd=REPO, env=env, stdin=subprocess.DEVNULL,
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   universal_newlines=True, errors="replace",
                                   start_new_session=True)

        def read():
            for line in process.stdout:
                lines.put(line)
            lines.put(None)

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        deadline = time.monotonic() + timeout if timeout else None
        try:
            while True:
                try:
                    line = lines.get(timeout=5)
                except queue.Empty:
                    line = ""
                if line is None:
                    break
                if line:
                    log.write(line)
                    log.flush()
                    if on_line:
                        on_line(line.rstrip("\n"))
                if on_tick:
                    on_tick()
                if deadline and time.monotonic() > deadline:
                    log.write("\n[labs.run] timed out after %d s: stopped\n" % timeout)
                    stop_group(process)
                    return -1
            return process.wait()
        finally:
            stop_group(process)
            reader.join(10)
            process.stdout.close()


def stop_group(process):
    """TERM the process group (molecule, ansible, vagrant), KILL if it lingers."""
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(60)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def default_history(reports):
    """Beside the reports directory, whose results.json files a run removes."""
    reports = os.path.abspath(reports)
    return os.path.join(os.path.dirname(reports), os.path.basename(reports) + "-history.json")


def lab_env(release, reports, k, filesystems, repeat=1):
    venv_bin = os.path.dirname(sys.executable)
    # molecule/lab/converge.yml gives the suite --repeat LAB_REPEAT when it is over 1.
    env = dict(os.environ, LAB_RELEASE=release, LAB_RESULTS_DIR=reports, LAB_REPEAT=str(repeat),
               LAB_RUN_DIR=os.environ.get("LAB_RUN_DIR") or os.path.join(REPO, "build", "lab"),
               NO_COLOR="1", COLUMNS="200", PYTHONUNBUFFERED="1",
               PATH=venv_bin + os.pathsep + os.environ.get("PATH", ""))
    env["LAB_PYTEST_K"] = k or ""
    if filesystems:
        env["LAB_FILESYSTEMS"] = ",".join(filesystems)
    else:
        env.pop("LAB_FILESYSTEMS", None)
    return env


def unavailable_filesystems(release):
    """{filesystem: why} for what `release`'s box cannot make: zfs where
    OpenZFS did not build for its kernel (the box manifest says why)."""
    box = boxes.current_box(release)
    if not box.is_built():
        return {}
    reason = box.read_manifest().get("zfs_unavailable")
    return {"zfs": reason} if reason else {}


def write_unavailable_results(out_dir, release, data, unavailable, vm_results=None):
    """A result file in which every cell of an unavailable filesystem is
    refused with the box's reason, as the suite reports a backend refusing a
    filesystem (conformance.report shows the cell as "refuses (why)"). Its
    run is the VM's, when the VM ran the release's other filesystems, so the
    cells fall in the same kernel's columns."""
    info = {"label": release, "kernel": boxes.current_box(release).read_manifest()["kernel"],
            "distro": "Debian %s" % boxes.RELEASES[release]["suite"]}
    if vm_results:
        with open(vm_results) as f:
            info = dict(json.load(f)["run"])
    results = []
    for filesystem, why in unavailable.items():
        # The report's refusal pattern stops at the first ")".
        why = "not in this kernel: " + why.replace("(", "[").replace(")", "]")
        for backend, where in data["backends"].items():
            if filesystem in where:
                target = "%s-on-%s" % (backend, filesystem)
                results.append({"target": target, "backend": backend, "filesystem": filesystem,
                                "case": "filesystem_is_available", "nodeid": target,
                                "outcome": "skipped", "duration": 0.0,
                                "reason": refusal_skip_reason(filesystem, why)})
    path = os.path.join(out_dir, "unavailable", "results.json")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".tmp", "w") as f:
        json.dump({"format": conformance_report.FORMAT, "run": info, "results": results}, f, indent=1)
        f.write("\n")
    os.replace(path + ".tmp", path)
    return path


class BoxProgress:
    """Relays the box builder's own lines (its steps, and a line a minute
    inside a long one) from the release's log to the terminal: a first
    build takes minutes, and `make test` would otherwise say nothing."""

    def __init__(self, release):
        self.prefix = "[%s] " % release

    def feed(self, line):
        if line.startswith(self.prefix):
            say("  box: " + line[len(self.prefix):])


def run_release(release, reports, k, filesystems, build_box=True, timeout=RELEASE_TIMEOUT_S,
                repeat=1):
    """One release through the scenario; a dict of what happened."""
    out_dir = os.path.join(reports, release)
    os.makedirs(out_dir, exist_ok=True)
    log = os.path.join(out_dir, "molecule.log")
    with open(log, "w"):
        pass
    record = {"release": release, "status": "ran", "problem": "", "steps": {}, "repeat": repeat}
    start = time.monotonic()
    env = lab_env(release, reports, k, filesystems, repeat)
    if build_box:
        say("%s: box (labs/boxes.py build, cached by recipe) ..." % release)
        t0 = time.monotonic()
        python = os.environ.get("LAB_PYTHON", "/usr/bin/python3")
        rc = run_logged([python, "labs/boxes.py", "build", release], log, env=env,
                        on_line=BoxProgress(release).feed)
        record["steps"]["box"] = time.monotonic() - t0
        if rc != 0:
            record.update(status="could not run", problem="the box could not be built (%s)" % log)
            say("%s: %s" % (release, record["problem"]))
            return record
    elif not boxes.current_box(release).is_built():
        record.update(status="could not run", problem="no box for the current recipe "
                      "(--no-build): python3 labs/boxes.py build %s" % release)
        say("%s: %s" % (release, record["problem"]))
        return record
    unavailable = unavailable_filesystems(release)
    data = matrix.validate(matrix.load())
    wanted = matrix.release(data, release, filesystems)["filesystems"]
    missing = [fs for fs in wanted if fs in unavailable]
    for fs in missing:
        say("%s: no %s in this box (%s): its cells refuse" % (release, fs, unavailable[fs]))
    if missing:
        left = [fs for fs in wanted if fs not in unavailable]
        if not left:
            write_unavailable_results(out_dir, release, data, {f: unavailable[f] for f in missing})
            record.update(status="ran", total_s=time.monotonic() - start,
                          problem="", refused=missing)
            write_timings(os.path.join(out_dir, "timings.txt"), [record])
            return record
        env["LAB_FILESYSTEMS"] = ",".join(left)  # the Vagrantfile and the scenario read it
    progress = Progress(release)
    try:
        rc = run_logged(["molecule", "test", "-s", "lab"], log, env=env, on_line=progress.feed,
                        on_tick=progress.heartbeat, timeout=timeout)
    finally:
        record["steps"].update(progress.steps)
        record["outcomes"] = progress.outcomes
        record["boot_s"], record["vagrant_up_s"] = progress.boot_s, progress.vagrant_up_s
        # Molecule's destroy takes the lab down; this is the safety net for
        # a run that stopped before it (timeout, Ctrl-C, a crash).
        t0 = time.monotonic()
        if run_logged([sys.executable, "-m", "labs.vagrant", "down"], log, env=env) != 0:
            record.update(status="failed", problem="labs.vagrant down failed (%s)" % log)
        record["steps"]["safety-net down"] = time.monotonic() - t0
    record["total_s"] = time.monotonic() - start
    # Under TCG every figure scales with what else the host runs.
    record["load"] = os.getloadavg()
    results = os.path.join(out_dir, "results.json")
    if rc == -1:
        record.update(status="failed", problem="timed out after %d s (%s)" % (timeout, log))
    elif rc != 0:
        failed = failed_steps(progress.outcomes)
        record.update(status="failed", problem="molecule test failed%s (%s)" % (
            " in " + ", ".join(failed) if failed else " at " + (progress.current or "start"), log))
    if os.path.exists(results):
        record["suite_s"], record["counts"], run, record["repeat"] = suite_summary(results)
        record["kernel"], record["distro"] = run["kernel"], run["distro"]
    elif record["status"] == "ran":
        record.update(status="failed", problem="no results were fetched (%s)" % log)
    if missing:
        write_unavailable_results(out_dir, release, data, {f: unavailable[f] for f in missing},
                                  results if os.path.exists(results) else None)
        record["refused"] = missing
    if record["status"] != "ran":
        say("%s: FAILED: %s" % (release, record["problem"]))
    else:
        say("%s: done in %s" % (release, elapsed(record["total_s"])))
    write_timings(os.path.join(out_dir, "timings.txt"), [record])
    return record


STEP_ORDER = ("box", "destroy", "syntax", "create", "converge", "idempotence", "verify",
              "destroy (again)", "safety-net down")


def timings_lines(record):
    lines = ["%s (%s)" % (record["release"], record.get("kernel") or "no results")]
    if record.get("boot_s") is not None:
        lines.append("  %-38s %7.1f s" % ("VM boot, until SSH answers", record["boot_s"]))
    if record.get("vagrant_up_s") is not None:
        lines.append("  %-38s %7.1f s" % ("vagrant up (box upload, disks, boot)", record["vagrant_up_s"]))
    names = {"create": "molecule create (vagrant up, wait SSH)",
             "converge": "molecule converge (storage + suite)",
             "destroy (again)": "molecule destroy", "destroy": "molecule destroy (first, empty)"}
    for step in STEP_ORDER:
        if step in record["steps"]:
            lines.append("  %-38s %7.1f s" % (names.get(step, "molecule " + step if step not in
                                                        ("box", "safety-net down") else step),
                                              record["steps"][step]))
    if record.get("suite_s") is not None:
        counts = ", ".join("%d %s" % (n, o) for o, n in sorted(record["counts"].items()))
        lines.append("  %-38s %7.1f s  (%s)" % ("suite in the VM (part of converge)",
                                                record["suite_s"], counts))
        lines.append("  %-38s %7d" % ("runs of each case (--repeat)", record.get("repeat", 1)))
    if record.get("total_s") is not None:
        lines.append("  %-38s %7.1f s" % ("total", record["total_s"]))
    if record.get("load"):
        lines.append("  %-38s %s (%d cores)" % ("host load at the end (1/5/15 min)",
                                               " / ".join("%.1f" % v for v in record["load"]),
                                               os.cpu_count() or 0))
    for filesystem in record.get("refused") or []:
        lines.append("  %-38s %s" % ("not in this box's kernel", filesystem + " (its cells refuse)"))
    lines.append("  %-38s %s" % ("status", record["status"] + (": " + record["problem"]
                                                                if record["problem"] else "")))
    return lines


def write_timings(path, records):
    with open(path, "w") as f:
        for record in records:
            f.write("\n".join(timings_lines(record)) + "\n")


def runs_markdown(records):
    """The lab's own table: how each release went, with its step times."""
    out = ["## Lab runs", "",
           "| release | kernel | status | VM boot | converge (incl. suite) | suite | idempotence "
           "| verify | total | runs of each case | results |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]

    def sec(value):
        return "%.0f s" % value if value is not None else "—"

    for r in records:
        counts = ", ".join("%d %s" % (n, o) for o, n in sorted((r.get("counts") or {}).items()))
        status = r["status"] + (": " + r["problem"] if r["problem"] else "")
        out.append("| %s |" % " | ".join(conformance_report.md(v) for v in (
            r["release"], r.get("kernel") or "—", status, sec(r.get("boot_s")),
            sec(r["steps"].get("converge")), sec(r.get("suite_s")),
            sec(r["steps"].get("idempotence")), sec(r["steps"].get("verify")),
            sec(r.get("total_s")), r.get("repeat", 1) if r.get("suite_s") is not None else "—",
            counts or "—")))
    out.append("")
    return "\n".join(out)


def cell_times_markdown(runs):
    """How long each cell's cases took in its VM (the sum of their durations),
    from the runs conformance.report loaded: rows target, columns release."""
    seconds = collections.defaultdict(float)  # (target, label) -> s
    cases = collections.Counter()
    labels = []
    for run_ in runs:
        label = run_["run"]["label"] or os.path.basename(os.path.dirname(run_["source"]))
        labels.append(label)
        for r in run_["results"]:
            seconds[r["target"], label] += r["duration"]
            cases[r["target"], label] += 1
    targets = sorted({t for t, _ in seconds})
    out = ["## Suite time per cell", "",
           "Seconds the cell's cases took in the VM (the sum of their durations; cases).", "",
           "| target | %s |" % " | ".join(labels), "|---|%s" % ("---|" * len(labels))]
    for target in targets:
        out.append("| %s | %s |" % (target, " | ".join(
            "%.1f s (%d)" % (seconds[target, label], cases[target, label])
            if cases[target, label] else "—" for label in labels)))
    out.append("")
    return "\n".join(out)


def find_results(reports):
    return sorted(glob.glob(os.path.join(reports, "**", "results.json"), recursive=True))


def merge(reports, known_failures, records=None, history=None):
    """The merged report of every results.json under `reports`; returns the
    number of unexpected failures and regressions (conformance.report's
    matrix) and of result files. With `history` (a file), earlier reports'
    outcomes tell regressions and flaky cases, and this one is added to it."""
    paths = find_results(reports)
    known = conformance_report.load_known_failures(known_failures) if known_failures else []
    before = conformance_report.load_history(history) if history else None
    runs = conformance_report.load_results(paths)
    merged = conformance_report.build_matrix(runs, known, before)
    markdown = conformance_report.render_markdown(merged)
    if runs:
        markdown += "\n" + cell_times_markdown(runs)
    if records:
        markdown += "\n" + runs_markdown(records)
    conformance_report.write_text(os.path.join(reports, "report.md"), markdown)
    page = conformance_report.render_html(merged)
    if records:
        page = page.replace("</body>", "<h2>Lab runs</h2><pre>%s</pre></body>" % "\n".join(
            "\n".join(timings_lines(r)) for r in records))
    conformance_report.write_text(os.path.join(reports, "report.html"), page)
    if history and runs:
        conformance_report.save_history(history, before, merged)
    print(markdown, flush=True)
    return merged["unexpected_failures"], len(paths)


def host_leftovers():
    """What the lab could have left on the host (empty: clean)."""
    left = []

    def lines(argv):
        done = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                              universal_newlines=True)
        return [ln.strip() for ln in done.stdout.splitlines() if ln.strip()]

    left += ["domain " + d for d in lines(["virsh", "-q", "-c", "qemu:///system", "list", "--all", "--name"])
             if d.startswith("snaplab-lab-")]
    left += ["volume " + v.split()[0] for v in lines(["virsh", "-q", "-c", "qemu:///system", "vol-list", "default"])
             if re.match(r"snaplab-(lab-|VAGRANTSLASH-)", v)]
    left += ["active libvirt network " + n for n in
             lines(["virsh", "-q", "-c", "qemu:///system", "net-list", "--name"])]
    left += ["process " + p for p in lines(["pgrep", "-af", "qemu-system.*guest=snaplab-lab-"])]
    return left


def stage_collection(log):
    """The lab's own staged collection (molecule/lab reads it): restaged by
    collection/stage.py when a source changed, apart from build/collections,
    which make molecule and make demo restage while a lab VM may run."""
    target = os.path.join(REPO, "build", "lab", "collections")
    with open(log, "a") as f:
        subprocess.run([sys.executable, "collection/stage.py", target], cwd=REPO, check=True,
                       stdout=f, stderr=subprocess.STDOUT)


def run_lock():
    """An exclusive lock for this run (kept open until the process ends):
    two runs would share Vagrant's and libvirt's state and take each other's
    VM down."""
    path = os.path.join(os.environ.get("LAB_RUN_DIR") or os.path.join(REPO, "build", "lab"), ".run-lock")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    handle = open(path, "w")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise RunError("another lab run holds %s: one lab run at a time" % path) from None
    return handle


def terminate(signum, _frame):
    raise Interrupted("signal %d" % signum)


def run(releases, reports, k, filesystems, known_failures, build_box=True, repeat=1, history=None):
    data = matrix.validate(matrix.load())
    releases = releases or list(data["releases"])
    for name in releases:
        matrix.release(data, name, filesystems)  # unknown release / no such filesystem: say so now
    if history:
        conformance_report.load_history(history)  # a corrupt one: say so now, not after the VMs
    reports = os.path.abspath(reports)
    lock = run_lock()
    os.makedirs(reports, exist_ok=True)
    for old in find_results(reports):
        os.unlink(old)  # a report of this run only
    signal.signal(signal.SIGTERM, terminate)
    signal.signal(signal.SIGHUP, terminate)
    say("releases %s; filesystems %s; cases %s%s; one VM at a time; reports in %s" % (
        ", ".join(releases), ", ".join(filesystems) if filesystems else "all of each release",
        "-k %r" % k if k else "all", ", each %d times" % repeat if repeat > 1 else "", reports))
    records = []
    try:
        stage_collection(os.path.join(reports, "stage.log"))
        for number, release in enumerate(releases, 1):
            say("== %s (%d/%d)" % (release, number, len(releases)))
            records.append(run_release(release, reports, k, filesystems, build_box,
                                       repeat=repeat))
    except (KeyboardInterrupt, Interrupted) as err:
        say("interrupted (%s): taking the lab down" % (err or "Ctrl-C"))
        subprocess.run([sys.executable, "-m", "labs.vagrant", "down"], cwd=REPO)
        for release in releases[len(records):]:
            records.append({"release": release, "status": "could not run",
                            "problem": "interrupted (%s)" % (err or "Ctrl-C"), "steps": {}})
    write_timings(os.path.join(reports, "timings.txt"), records)
    unexpected, merged = merge(reports, known_failures, records, history)
    left = host_leftovers()
    for line in left:
        say("LEFT BEHIND: " + line)
    not_run = [r["release"] for r in records if r["status"] != "ran"]
    say("%d release(s), %d result file(s), %d unexpected failure(s)%s%s; report %s" % (
        len(records), merged, unexpected,
        "; did not complete: " + ", ".join(not_run) if not_run else "",
        "; host NOT clean" if left else "; host clean", os.path.join(reports, "report.md")))
    return 0 if not (unexpected or not_run or left) else 1


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python3 -m labs.run", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("run", help="run releases of the matrix and merge their results")
    p.add_argument("--releases", nargs="*", metavar="RELEASE", help="default: every release")
    p.add_argument("--reports", default=os.path.join(REPO, "reports", "lab"), help="default: %(default)s")
    p.add_argument("-k", dest="k", default="", help="pytest -k selection of the suite (default: all)")
    p.add_argument("--filesystems", default="",
                   help="comma-separated: only these filesystems of each release (LAB_FILESYSTEMS)")
    p.add_argument("--known-failures", default=KNOWN_FAILURES, help="default: %(default)s")
    p.add_argument("--no-build", action="store_true", help="use the cached boxes, build none")
    p.add_argument("--repeat", type=int, default=1, metavar="N",
                   help="run each case N times (LAB_REPEAT; default 1): pass rates, flaky cases")
    history_help = ("earlier reports' outcomes, to tell regressions and flaky cases; this "
                    "report is added (default: DIR-history.json beside the reports; '' for none)")
    p.add_argument("--history", metavar="FILE", help=history_help)
    p = commands.add_parser("report", help="merge the results.json files under DIR")
    p.add_argument("reports", metavar="DIR")
    p.add_argument("--known-failures", default=KNOWN_FAILURES, help="default: %(default)s")
    p.add_argument("--history", metavar="FILE", help=history_help)
    args = parser.parse_args(argv)
    history = default_history(args.reports) if args.history is None else args.history
    try:
        if args.command == "run":
            filesystems = matrix.selected_filesystems({"LAB_FILESYSTEMS": args.filesystems})
            if args.repeat < 1:
                raise RunError("--repeat takes 1 or more, not %d" % args.repeat)
            return run(args.releases, args.reports, args.k, filesystems, args.known_failures,
                       build_box=not args.no_build, repeat=args.repeat, history=history)
        unexpected, merged = merge(os.path.abspath(args.reports), args.known_failures,
                                   history=history)
        if not merged:
            raise RunError("no results.json under %s" % args.reports)
        return 1 if unexpected else 0
    except (matrix.MatrixError, conformance_report.InputError, RunError) as err:
        print("error: %s" % err, file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
