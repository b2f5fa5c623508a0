"""Tests of the lab runner's logic that needs no VM (labs/run.py): reading
Molecule's output into progress lines and step times, the timings and the
runs table, merging several releases' results with the known failures, and
the GitHub Actions export of the matrix (labs/matrix.py)."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import yaml

from labs import matrix, run

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
needs_ruby = pytest.mark.skipif(shutil.which("ruby") is None, reason="ruby is not installed (make lab-deps)")

# What `molecule test -s lab` prints with NO_COLOR (shortened, real shapes).
MOLECULE_OUTPUT = """\
INFO     [lab > destroy] Executing
INFO     [lab > destroy] Executed: Successful
INFO     [lab > create] Executing
TASK [Bring up each platform's VM (labs/vagrant.py up)] ************************
        "[lab    12s]   booting, until SSH answers (+0.8 s)",
        "[lab   104s]   SSH answers (+91.7 s)",
        "[lab   115s] vagrant up bookworm: 108.2 s, ssh vagrant@127.0.0.1:2242",
INFO     [lab > create] Executed: Successful
INFO     [lab > converge] Executing
TASK [snaplab.snapshots.node_storage : Make the filesystem | lab-zfs] **********
TASK [snaplab.snapshots.conformance : Run the suite] ***************************
INFO     [lab > converge] Executed: Successful
INFO     [lab > idempotence] Executing
INFO     [lab > idempotence] Executed: Failed
"""


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        self.now += 10.0  # every line is ten seconds later
        return self.now


def test_progress_reads_molecule_steps_boot_time_and_outcomes():
    said = []
    progress = run.Progress("bookworm", say=said.append, clock=Clock())
    for line in MOLECULE_OUTPUT.splitlines():
        progress.feed(line)
    assert list(progress.steps) == ["destroy", "create", "converge", "idempotence"]
    assert progress.steps["create"] == 50.0  # Executing at 40 s, Executed at 90 s (clock starts at 10)
    assert progress.outcomes["idempotence"] == "Failed"
    assert progress.boot_s == 91.7 and progress.vagrant_up_s == 108.2
    assert "bookworm: converge ..." in said
    assert "bookworm: idempotence failed in 0:00:10" in said


def test_a_coloured_failure_is_read_and_a_missing_playbook_is_not_one():
    # Molecule colours a failed action's line even with NO_COLOR; cleanup
    # without a playbook is "Missing", not a failure (the bullseye run was
    # reported as "failed in cleanup" when verify had failed).
    progress = run.Progress("bullseye", say=lambda text: None, clock=Clock())
    for line in ["INFO     [lab > verify] Executing",
                 "ERROR    [lab > verify] \x1b[31mExecuted: Failed\x1b[0m",
                 "INFO     [lab > cleanup] Executing",
                 "WARNING  [lab > cleanup] Executed: Missing playbook (Remove from test_sequence)"]:
        progress.feed(line)
    assert progress.outcomes == {"verify": "Failed", "cleanup": "Missing"}
    assert run.failed_steps(progress.outcomes) == ["verify"]


def test_the_second_destroy_is_its_own_step():
    progress = run.Progress("trixie", say=lambda text: None, clock=Clock())
    for line in ["INFO     [lab > destroy] Executing", "INFO     [lab > destroy] Executed: Successful"] * 2:
        progress.feed(line)
    assert list(progress.steps) == ["destroy", "destroy (again)"]


def test_a_silent_step_still_says_where_it_is():
    said = []
    clock = Clock()
    progress = run.Progress("bullseye", say=said.append, clock=clock)
    progress.feed("INFO     [lab > converge] Executing")
    progress.feed("TASK [snaplab.snapshots.conformance : Run the suite] *****")
    clock.now += run.HEARTBEAT_S
    progress.heartbeat()
    assert said[-1].startswith("bullseye: converge, 0:01:") and said[-1].endswith(
        ": snaplab.snapshots.conformance : Run the suite")


def write_results(path, release, kernel, results, day=29):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump({"format": "snaplab-conformance/1",
                   "run": {"started": "2026-11-%02dT12:00:00Z" % day,
                           "finished": "2026-11-%02dT12:04:30Z" % day,
                           "hostname": "snaplab-" + release, "kernel": kernel,
                           "distro": "Debian " + release, "python": "3", "label": release},
                   "results": [{"target": t, "backend": t.split("-on-")[0],
                                "filesystem": t.split("-on-")[1], "case": c, "nodeid": t + c,
                                "outcome": o, "duration": 1, "reason": "why"} for t, c, o in results]},
                  f)
    return str(path)


def test_suite_summary_reads_time_and_counts(tmp_path):
    path = write_results(tmp_path / "r.json", "bookworm", "6.1.0", [
        ("zfs-on-zfs", "basic", "passed"), ("zfs-on-zfs", "usage", "passed"),
        ("aufs-on-zfs", "basic", "skipped")])
    seconds, counts, info, repeats = run.suite_summary(path)
    assert seconds == 270 and counts == {"passed": 2, "skipped": 1} and info["label"] == "bookworm"
    assert repeats == 1


def repeated(target, case, outcomes):
    """Records of the runs of one case (the suite's --repeat)."""
    return [{"target": target, "backend": target.split("-on-")[0],
             "filesystem": target.split("-on-")[1], "case": case, "nodeid": "%s-run%d" % (case, n),
             "outcome": outcome, "duration": 1, "reason": "why", "run": n, "runs": len(outcomes)}
            for n, outcome in enumerate(outcomes, 1)]


def write_repeated(path, release, results, day):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    path.write_text(json.dumps({
        "format": "snaplab-conformance/1",
        "run": {"started": "2026-11-%02dT12:00:00Z" % day, "finished": "2026-11-%02dT12:04:30Z" % day,
                "hostname": "snaplab-" + release, "kernel": "6.1.0", "distro": "Debian " + release,
                "python": "3", "label": release},
        "results": results}))


def test_repeat_reaches_the_suite_in_the_vm(tmp_path):
    """labs/run.py exports LAB_REPEAT; molecule/lab/converge.yml's
    expression gives the suite --repeat from it when it is over 1."""
    assert run.lab_env("bookworm", str(tmp_path), "", [], repeat=3)["LAB_REPEAT"] == "3"
    with open(os.path.join(REPO, "molecule", "lab", "converge.yml")) as f:
        plays = yaml.safe_load(f)
    (role,) = [r for play in plays for r in play.get("roles", [])
               if isinstance(r, dict) and r.get("role") == "snaplab.snapshots.conformance"]
    expression = role["vars"]["conformance_pytest_args"]
    nativetypes = pytest.importorskip("jinja2.nativetypes")  # as Ansible renders it

    def args(k, repeat):
        env = {"LAB_REPEAT": repeat}
        template = nativetypes.NativeEnvironment().from_string(expression)
        return template.render(lab_pytest_k=k, lookup=lambda _kind, name: env.get(name, ""))

    assert args("basic", "3") == ["-k", "basic", "--repeat", "3"]
    assert args("", "2") == ["--repeat", "2"]
    assert args("basic", "1") == ["-k", "basic"] and args("", "") == []


def test_consecutive_merges_keep_a_history_beside_the_reports(tmp_path):
    reports = tmp_path / "lab"
    history = run.default_history(str(reports))
    assert history == str(tmp_path / "lab-history.json")  # not under reports: a run clears those
    results = reports / "bookworm" / "results.json"
    write_repeated(results, "bookworm", repeated("zfs-on-zfs", "basic", ["passed"] * 3)
                   + repeated("zfs-on-zfs", "usage", ["passed", "failed", "passed"]), day=1)
    record = {"release": "bookworm", "status": "ran", "problem": "", "kernel": "6.1.0",
              "steps": {}, "suite_s": 270.0, "counts": {"passed": 5, "failed": 1}, "repeat": 3}
    assert run.merge(str(reports), "", [record], history) == (0, 1)  # usage is flaky, 2/3
    text = (reports / "report.md").read_text()
    assert "| zfs-on-zfs @ bookworm | usage | 2/3 | 2/3 | — | why |" in text
    assert "| 3 | 1 failed, 5 passed |" in text  # the Lab runs table: runs of each case
    assert "runs of each case (--repeat)" in "\n".join(run.timings_lines(record))
    # The next run: basic fails in every run, having passed in every run before.
    write_repeated(results, "bookworm", repeated("zfs-on-zfs", "basic", ["failed"] * 3)
                   + repeated("zfs-on-zfs", "usage", ["passed"] * 3), day=2)
    assert run.main(["report", str(reports), "--known-failures", ""]) == 1
    text = (reports / "report.md").read_text()
    assert "## ❌ Regressions (1)" in text and "zfs-on-zfs :: basic — why (3 runs)" in text
    assert "| zfs-on-zfs @ bookworm | usage | 5/6 | 3/3 | 2/3 | why |" not in text  # no reason now
    assert "| zfs-on-zfs @ bookworm | usage | 5/6 | 3/3 | 2/3 |" in text
    # The same results again are the same report, not a third one.
    assert run.main(["report", str(reports), "--known-failures", ""]) == 1
    with open(history) as f:
        assert len(json.load(f)["cells"]["zfs-on-zfs @ bookworm"]) == 2
    assert run.main(["report", str(reports), "--known-failures", "", "--history", ""]) == 1


def test_merge_makes_one_report_over_releases_with_known_failures(tmp_path):
    reports = tmp_path / "lab"
    write_results(reports / "bookworm" / "results.json", "bookworm", "6.1.0-50-cloud-amd64", [
        ("overlay-on-zfs", "basic", "failed"), ("zfs-on-zfs", "basic", "passed")])
    write_results(reports / "trixie" / "results.json", "trixie", "6.12.57-cloud-amd64", [
        ("overlay-on-zfs", "basic", "passed"), ("zfs-on-zfs", "basic", "failed")])
    known = tmp_path / "known.yml"
    known.write_text("- {case: basic, cell: overlay-on-zfs @ bookworm, reason: old OpenZFS, "
                     "link: 'https://github.com/openzfs/zfs/issues/8648'}\n")
    records = [{"release": "bookworm", "status": "ran", "problem": "", "kernel": "6.1.0-50-cloud-amd64",
                "steps": {"converge": 400.0, "idempotence": 100.0, "verify": 50.0}, "boot_s": 40.0,
                "suite_s": 270.0, "total_s": 700.0, "counts": {"passed": 1, "failed": 1}},
               {"release": "trixie", "status": "could not run", "problem": "the box could not be built",
                "steps": {}}]
    unexpected, merged = run.merge(str(reports), str(known), records)
    assert (unexpected, merged) == (1, 2)  # trixie's zfs failure is not a known one
    text = (reports / "report.md").read_text()
    assert "zfs @ Debian bookworm/6.1.0-50-cloud-amd64" in text  # column per release/kernel
    assert "zfs @ Debian trixie/6.12.57-cloud-amd64" in text
    assert "## Failures (1)" in text and "- zfs-on-zfs :: basic — why" in text
    assert "## Expected failures (1)" in text
    assert "| bookworm | 6.1.0-50-cloud-amd64 | ran | 40 s | 400 s | 270 s | 100 s | 50 s | 700 s " \
           "| 1 | 1 failed, 1 passed |" in text
    assert "| trixie | — | could not run: the box could not be built |" in text
    # Suite time per cell: each case took 1 s; columns in the order of the runs.
    assert "| target | bookworm | trixie |" in text
    assert "| overlay-on-zfs | 1.0 s (1) | 1.0 s (1) |" in text
    assert "Lab runs" in (reports / "report.html").read_text()


def test_report_command_merges_what_is_there_and_fails_on_nothing(tmp_path, capsys):
    assert run.main(["report", str(tmp_path), "--known-failures", ""]) == 2
    assert "no results.json under" in capsys.readouterr().err
    write_results(tmp_path / "lab-bookworm" / "results.json", "bookworm", "6.1", [
        ("zfs-on-zfs", "basic", "passed")])
    assert run.main(["report", str(tmp_path), "--known-failures", ""]) == 0
    assert (tmp_path / "report.md").exists()


def test_timings_name_every_step_in_order():
    lines = run.timings_lines({"release": "bookworm", "kernel": "6.1.0", "status": "ran", "problem": "",
                               "boot_s": 41.0, "vagrant_up_s": 60.0, "suite_s": 270.0,
                               "counts": {"passed": 3}, "total_s": 900.0,
                               "steps": {"verify": 50.0, "box": 1.0, "create": 70.0, "converge": 400.0}})
    text = "\n".join(lines)
    assert text.index("box") < text.index("create") < text.index("converge") < text.index("verify")
    assert "VM boot, until SSH answers" in text and "(3 passed)" in text and "status" in lines[-1]


def test_run_logged_stops_a_command_that_overruns(tmp_path):
    log = tmp_path / "log"
    started = run.time.monotonic()
    rc = run.run_logged([sys.executable, "-c", "import time; print('hi', flush=True); time.sleep(60)"],
                        str(log), timeout=1)
    assert rc == -1 and run.time.monotonic() - started < 30
    assert "hi" in log.read_text() and "timed out" in log.read_text()


def test_a_corrupt_history_is_refused_before_anything_starts(tmp_path, capsys):
    (tmp_path / "lab-history.json").write_text("{")
    assert run.main(["run", "--releases", "bookworm", "--no-build",
                     "--reports", str(tmp_path / "lab")]) == 2
    assert "lab-history.json: invalid JSON" in capsys.readouterr().err
    assert not (tmp_path / "lab").exists()


def test_bad_selections_are_refused_before_anything_starts(capsys):
    assert run.main(["run", "--releases", "sid", "--no-build", "--reports", "/nonexistent/x"]) == 2
    assert "unknown release 'sid'" in capsys.readouterr().err
    assert run.main(["run", "--filesystems", "ntfs", "--reports", "/nonexistent/x"]) == 2
    assert "ntfs not a filesystem of the lab" in capsys.readouterr().err


# ---------------------------------------------------------------- filesystem selection


@needs_ruby
def test_a_filesystem_selection_narrows_the_vm_and_the_declaration():
    data = matrix.load()
    rel = matrix.release(data, "bookworm", ["zfs"])
    assert rel["filesystems"] == ["zfs"] and [d["name"] for d in rel["disks"]] == ["zfs"]
    declared = matrix.scenario_vars(data, "bookworm", ["zfs"])
    assert declared["lab_suite_filesystems"] == ["zfs"]
    assert declared["lab_backends"] == ["native", "overlay", "zfs", "blockfile", "erofs"]
    data["releases"]["bookworm"]["filesystems"] = ["ext4", "zfs"]
    with pytest.raises(matrix.MatrixError, match="has none of the filesystems xfs-noftype"):
        matrix.release(data, "bookworm", ["xfs-noftype"])


@needs_ruby
@pytest.mark.skipif(shutil.which("vagrant") is None, reason="vagrant is not installed")
def test_the_vagrantfile_gives_disks_only_for_the_selection(tmp_path):
    """The Vagrantfile reads LAB_FILESYSTEMS as labs/matrix.py does (asked
    through `vagrant status`, which evaluates the whole configuration)."""
    with open(os.path.join(REPO, "Vagrantfile")) as f:
        text = f.read()
    assert "filesystems &= ONLY unless ONLY.empty?" in text
    env = dict(os.environ, VAGRANT_DOTFILE_PATH=str(tmp_path / "vagrant"),
               VAGRANT_CHECKPOINT_DISABLE="1", LAB_FILESYSTEMS="zfs")
    done = subprocess.run(["vagrant", "status", "--machine-readable"], cwd=REPO, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True)
    assert done.returncode == 0, done.stdout


# ---------------------------------------------------------------- GitHub Actions export


@needs_ruby
def test_the_github_actions_export_has_a_job_per_release():
    done = subprocess.run([sys.executable, "-m", "labs.matrix", "github-actions"], cwd=REPO,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True)
    assert done.returncode == 0, done.stderr
    workflow = yaml.safe_load(done.stdout)
    data = matrix.load()
    assert "on" in workflow and True not in workflow  # the key stays "on" under YAML 1.1
    jobs = workflow["jobs"]
    assert set(jobs) == {"lab-" + name for name in data["releases"]} | {"report"}
    for name in data["releases"]:
        job = jobs["lab-" + name]
        assert job["runs-on"] == matrix.RUNNER_LABELS
        runs = [step.get("run", "") for step in job["steps"]]
        assert "sudo make boxes LAB_RELEASES=%s" % name in runs
        assert any(r.startswith("sudo make lab LAB_RELEASES=%s " % name) for r in runs)
        assert all(f in job["name"] for f in matrix.release(data, name)["filesystems"])
        upload = [s for s in job["steps"] if s.get("uses", "").startswith("actions/upload-artifact")]
        assert upload and upload[0]["if"] == "always()"
    assert set(jobs["report"]["needs"]) == {"lab-" + name for name in data["releases"]}
    assert jobs["report"]["if"] == "always()"
    assert any("make lab-report" in s.get("run", "") for s in jobs["report"]["steps"])


@needs_ruby
def test_the_export_takes_other_runner_labels():
    data = matrix.load()
    workflow = matrix.github_actions(data, ["self-hosted", "big-kvm"])
    assert all(job["runs-on"] == ["self-hosted", "big-kvm"] for job in workflow["jobs"].values())
    assert yaml.safe_load(matrix.to_yaml(workflow)) == workflow


def test_a_second_run_at_once_is_refused(tmp_path, monkeypatch):
    """Two runs would share Vagrant's and libvirt's state and take each
    other's VM down (it happened: both failed in their first destroy)."""
    monkeypatch.setenv("LAB_RUN_DIR", str(tmp_path))
    held = run.run_lock()
    try:
        done = subprocess.run([sys.executable, "-c", "from labs import run; run.run_lock()"], cwd=REPO,
                              env=dict(os.environ, LAB_RUN_DIR=str(tmp_path)),
                              stderr=subprocess.PIPE, universal_newlines=True)
        assert done.returncode != 0 and "one lab run at a time" in done.stderr
    finally:
        held.close()
    run.run_lock().close()  # free again once the first is gone


@needs_ruby
def test_a_box_without_zfs_refuses_the_zfs_cells_with_its_reason(tmp_path, monkeypatch):
    """A kernel OpenZFS does not build for: the box is made without zfs and
    its manifest says why; the release's zfs cells are refused with that
    reason, in the columns of the kernel the VM ran (not a failed release)."""
    cache = tmp_path / "cache"
    cache.mkdir()
    monkeypatch.setenv("SNAPLAB_BOX_CACHE", str(cache))
    box = run.boxes.current_box("forky")
    why = "zfs-dkms 2.4.4-1 does not build for kernel 7.2.12-cloud-amd64: Cannot build (max 7.1)"
    for path in (box.box, box.image):
        open(path, "w").close()
    with open(box.manifest, "w") as f:
        json.dump({"kernel": "7.2.12-cloud-amd64", "zfs_module": None, "zfs_unavailable": why,
                   "box_bytes": 0, "image_bytes": 0}, f)
    assert run.unavailable_filesystems("forky") == {"zfs": why}
    assert run.unavailable_filesystems("bookworm") == {}  # not built here: nothing known
    data = matrix.validate(matrix.load())
    reports = tmp_path / "lab"
    vm = write_results(reports / "forky" / "results.json", "forky", "7.2.12-cloud-amd64", [
        ("overlay-on-ext4", "basic", "passed")])
    run.write_unavailable_results(str(reports / "forky"), "forky", data, {"zfs": why}, vm)
    unexpected, merged = run.merge(str(reports), "")
    assert (unexpected, merged) == (0, 2)
    text = (reports / "report.md").read_text()
    refused = "refuses (not in this kernel: %s)" % why.replace("(", "[").replace(")", "]")
    on_zfs = ("native", "overlay", "zfs", "blockfile", "erofs")  # labs/matrix.yml's on zfs
    for backend in on_zfs:
        assert "%s-on-zfs" % backend in text
    assert text.count(refused) == len(on_zfs)
    # The VM's own run: one kernel, so the columns need no "@ kernel".
    assert "| backend \\ filesystem | ext4 | zfs |" in text


def test_the_box_builders_lines_reach_the_terminal(capsys):
    progress = run.BoxProgress("forky")
    for line in ("Debian mirror: http://mirror.example/debian", "[forky] zfs dkms ...",
                 "I: Retrieving Packages", "[forky] zfs dkms: 60 s so far (build 130 s)",
                 "[forkyx] not this release's"):
        progress.feed(line)
    out = capsys.readouterr().out
    assert "box: zfs dkms ..." in out and "box: zfs dkms: 60 s so far (build 130 s)" in out
    assert "Retrieving" not in out and "not this release" not in out and "mirror" not in out
