"""Tests of the conformance result log (pytest plugin) and the matrix report."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from conformance import report, resultlog

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def result(target, case, outcome="passed", reason="", duration=0.1):
    backend, _, filesystem = target.partition("-on-")
    return {"target": target, "backend": backend, "filesystem": filesystem, "case": case,
            "nodeid": "conformance/test_cases.py::test_%s[%s]" % (case, target),
            "outcome": outcome, "duration": duration, "reason": reason}


def write_run(path, results, kernel="6.1.0-18-amd64", distro="Debian GNU/Linux 12 (bookworm)",
              label=""):
    doc = {"format": "snaplab-conformance/1",
           "run": {"started": "2024-05-01T10:00:00Z", "finished": "2024-05-01T10:05:00Z",
                   "hostname": "node1", "kernel": kernel, "distro": distro,
                   "python": "3.11.2", "label": label},
           "results": results}
    path.write_text(json.dumps(doc), encoding="utf-8")
    return str(path)


def run_main(capsys, *argv):
    code = report.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def table_rows(markdown):
    """The matrix as {row: [cells]} plus its header, from the Markdown text."""
    lines = [ln for ln in markdown.splitlines() if ln.startswith("| backend")]
    assert len(lines) == 1, markdown
    start = markdown.splitlines().index(lines[0])
    header = [c.strip() for c in lines[0].strip("|").split("|")][1:]
    rows = {}
    for line in markdown.splitlines()[start + 2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[cells[0]] = cells[1:]
    return header, rows


@pytest.fixture
def one_run(tmp_path):
    return write_run(tmp_path / "run.json", [
        result("overlay-on-xfs", "prepare_commit_view"),
        result("overlay-on-xfs", "remove_fails_while_children_exist", "failed",
               "FailedPrecondition: cannot remove snapshot with child"),
        result("overlay-on-xfs", "usage_counts_inodes", "skipped", "needs CAP_SYS_ADMIN"),
        result("overlay-on-ext4", "prepare_commit_view"),
        result("overlay-on-ext4", "usage_counts_inodes", "skipped", "needs CAP_SYS_ADMIN"),
        result("native-on-ext4", "prepare_commit_view"),
        result("native-on-ext4", "walk_filters", "xfailed", "filters not implemented yet"),
    ])


def test_markdown_matrix_counts_each_cell(one_run, capsys):
    code, out, err = run_main(capsys, one_run)
    assert code == 1 and err == ""
    header, rows = table_rows(out)
    assert header == ["ext4", "xfs"]
    assert rows["overlay"] == ["✅ 1 pass · 1 skip", "❌ 1 pass · 1 fail · 1 skip"]
    # native never ran on xfs: the cell says so instead of looking empty or green.
    assert rows["native"] == ["✅ 1 pass · 1 xfail", "—"]


def test_a_refused_filesystem_is_grey_and_says_why(tmp_path, capsys):
    refused = resultlog.refusal_skip_reason("aufs", "not runnable", "kernel 6.1 has no aufs")
    path = write_run(tmp_path / "run.json", [
        result("aufs-on-ext4", "backend_accepts_or_refuses_the_filesystem"),
        result("aufs-on-ext4", "prepare_commit_view", "skipped", refused),
        result("overlay-on-ext4", "prepare_commit_view"),
        # a skip for another reason beside the refusal: not a plain refusal
        result("overlay-on-xfs", "backend_accepts_or_refuses_the_filesystem"),
        result("overlay-on-xfs", "prepare_commit_view", "skipped",
               resultlog.refusal_skip_reason("overlay", "d_type")),
        result("overlay-on-xfs", "usage_counts_inodes", "skipped", "needs CAP_SYS_ADMIN"),
    ])
    code, out, _ = run_main(capsys, path)
    assert code == 0
    _, rows = table_rows(out)
    assert rows["aufs"] == ["⚪ refuses (not runnable) · 1 pass · 1 skip", "—"]
    assert rows["overlay"] == ["✅ 1 pass", "✅ 1 pass · 2 skip"]
    assert "kernel 6.1 has no aufs" in out


def test_markdown_lists_failures_and_grouped_skips(one_run, capsys):
    _, out, _ = run_main(capsys, one_run)
    assert ("- overlay-on-xfs :: remove_fails_while_children_exist — "
            "FailedPrecondition: cannot remove snapshot with child") in out
    assert "- 2 × needs CAP_SYS_ADMIN — overlay-on-ext4, overlay-on-xfs" in out
    assert "native-on-ext4 :: walk_filters — filters not implemented yet" in out
    assert "## Failures (1)" in out and "## Skipped (2)" in out


def test_markdown_and_html_files_are_written(one_run, tmp_path, capsys):
    md, page = tmp_path / "out.md", tmp_path / "out.html"
    code, out, _ = run_main(capsys, "--markdown", str(md), "--html", str(page), one_run)
    assert code == 1
    assert md.read_text(encoding="utf-8") + "\n" == out
    text = page.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>") and "<style>" in text
    assert "<link" not in text and "<script" not in text  # self-contained
    assert 'class="red"' in text and 'class="green"' in text and 'class="notrun"' in text
    assert text.count("<details") == 3  # one per cell that ran
    assert "remove_fails_while_children_exist" in text


def test_html_escapes_reasons(tmp_path):
    path = write_run(tmp_path / "r.json", [
        result("overlay-on-xfs", "kind", "failed", "assert <Kind.ACTIVE: 1> == <Kind.VIEW: 2> & more")])
    page = report.render_html(report.build_matrix(report.load_results([path])))
    assert "&lt;Kind.ACTIVE: 1&gt; == &lt;Kind.VIEW: 2&gt; &amp; more" in page
    assert "<Kind.ACTIVE" not in page


def test_runs_on_different_kernels_get_their_own_columns(tmp_path, capsys):
    old = write_run(tmp_path / "bullseye.json",
                    [result("overlay-on-xfs", "prepare_commit_view"),
                     result("overlay-on-xfs", "remove_fails_while_children_exist", "failed", "boom")],
                    kernel="5.10.0-28-amd64", distro="Debian GNU/Linux 11 (bullseye)")
    new = write_run(tmp_path / "bookworm.json",
                    [result("overlay-on-xfs", "prepare_commit_view"),
                     result("overlay-on-xfs", "remove_fails_while_children_exist"),
                     result("btrfs-on-btrfs", "prepare_commit_view")])
    code, out, _ = run_main(capsys, old, new)
    assert code == 1
    header, rows = table_rows(out)
    assert header == ["btrfs @ Debian GNU/Linux 12 (bookworm)/6.1.0-18-amd64",
                      "xfs @ Debian GNU/Linux 11 (bullseye)/5.10.0-28-amd64",
                      "xfs @ Debian GNU/Linux 12 (bookworm)/6.1.0-18-amd64"]
    assert rows["overlay"] == ["—", "❌ 1 pass · 1 fail", "✅ 2 pass"]
    assert rows["btrfs"] == ["✅ 1 pass", "—", "—"]
    # With several environments each listed failure says where it happened.
    assert ("- overlay-on-xfs :: remove_fails_while_children_exist — boom "
            "_(Debian GNU/Linux 11 (bullseye)/5.10.0-28-amd64)_") in out


def test_runs_on_the_same_kernel_merge_into_one_column(tmp_path, capsys):
    a = write_run(tmp_path / "a.json", [result("overlay-on-xfs", "one")])
    b = write_run(tmp_path / "b.json", [result("overlay-on-xfs", "two"),
                                        result("native-on-xfs", "one")])
    code, out, _ = run_main(capsys, a, b)
    assert code == 0
    header, rows = table_rows(out)
    assert header == ["xfs"]
    assert rows == {"native": ["✅ 1 pass"], "overlay": ["✅ 2 pass"]}


def test_known_failures_json_are_expected_not_red(tmp_path, capsys):
    run = write_run(tmp_path / "run.json", [
        result("overlay-on-xfs", "remove_fails_while_children_exist", "failed", "boom"),
        result("overlay-on-ext4", "remove_fails_while_children_exist", "failed", "boom"),
        result("native-on-ext4", "usage_counts_inodes"),
    ])
    known = tmp_path / "known.json"
    known.write_text(json.dumps({"known_failures": [
        {"case": "remove_fails_while_children_exist", "target": "overlay-on-*",
         "reason": "kernel bug 1234", "link": "https://example.org/1234"},
        {"case": "usage_counts_inodes", "target": "native-*", "reason": "inode counting is off"},
    ]}), encoding="utf-8")
    code, out, _ = run_main(capsys, "--known-failures", str(known), run)
    assert code == 0  # every failure is a known one
    _, rows = table_rows(out)
    # Nothing passed but nothing failed unexpectedly: grey, not red.
    assert rows["overlay"] == ["⚪ 0 pass · 1 xfail", "⚪ 0 pass · 1 xfail"]
    assert rows["native"] == ["✅ 0 pass · 1 xpass", "—"]
    assert ("- overlay-on-xfs :: remove_fails_while_children_exist — kernel bug 1234 "
            "(https://example.org/1234)") in out
    assert "## Unexpectedly passing (1)" in out
    assert "- native-on-ext4 :: usage_counts_inodes — was expected to fail: inode counting is off" in out
    assert "## Failures" not in out


def test_known_failures_line_format(tmp_path, capsys):
    run = write_run(tmp_path / "run.json", [
        result("overlay-on-xfs", "remove_fails_while_children_exist", "failed", "boom"),
        result("overlay-on-xfs", "walk_filters", "error", "error in setup: no loop device"),
    ])
    known = tmp_path / "known.txt"
    known.write_text(textwrap.dedent("""\
        # target-glob :: case | reason | link
        overlay-on-* :: remove_fails_while_children_exist | kernel bug | https://example.org/1

        """), encoding="utf-8")
    entries = report.load_known_failures(str(known))
    assert entries == [{"target": "overlay-on-*", "where": "*", "cell": "overlay-on-*",
                        "case": "remove_fails_while_children_exist",
                        "reason": "kernel bug", "link": "https://example.org/1",
                        "sometimes": False}]
    code, out, _ = run_main(capsys, "--known-failures", str(known), run)
    assert code == 1  # the setup error is not covered by the list
    assert "- overlay-on-xfs :: walk_filters — error in setup: no loop device" in out
    assert "- overlay-on-xfs :: remove_fails_while_children_exist — kernel bug" in out


def test_case_names_with_brackets_match_exactly():
    entry = {"case": "mounts[ro]", "target": "*", "reason": "r", "link": ""}
    assert report.known_entry({"case": "mounts[ro]", "target": "x"}, [entry]) is entry
    assert report.known_entry({"case": "mountsr", "target": "x"}, [entry]) is entry  # still a glob
    assert report.known_entry({"case": "mounts[rw]", "target": "x"}, [entry]) is None


def test_exit_code_zero_when_everything_passes_or_skips(tmp_path, capsys):
    run = write_run(tmp_path / "run.json", [result("overlay-on-xfs", "a"),
                                            result("overlay-on-xfs", "b", "skipped", "why")])
    assert run_main(capsys, run)[0] == 0


@pytest.mark.parametrize("content, message", [
    (None, "cannot read"),
    ("{not json", "invalid JSON (line 1"),
    ('{"format": "junit"}', "not a snaplab-conformance/1 result file"),
    ('[1, 2]', "not a snaplab-conformance/1 result file"),
    ('{"format": "snaplab-conformance/1", "run": {}}', '"results" list'),
    ('{"format": "snaplab-conformance/1", "run": {}, "results": [{"case": "a", "outcome": "ok"}]}',
     "results[0] has outcome 'ok'"),
])
def test_bad_result_file_is_one_error_line_and_exit_2(tmp_path, capsys, content, message):
    path = tmp_path / "bad.json"
    if content is not None:
        path.write_text(content, encoding="utf-8")
    code, out, err = run_main(capsys, str(path))
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("report: error: ")
    assert str(path) in err and message in err


@pytest.mark.parametrize("content, message", [
    ("overlay-on-xfs remove_fails", "expected 'cell-glob :: case | reason | link'"),
    ('[{"target": "x"}]', 'entry 0 needs a "case" string'),
    ('{"entries": []}', "expected a list of entries"),
])
def test_bad_known_failures_file_exits_2(tmp_path, capsys, content, message):
    assert_known_failures_file_refused(tmp_path, capsys, "known", content, message)


def assert_known_failures_file_refused(tmp_path, capsys, name, content, message):
    """The report exits 2 with one line naming what is wrong, and prints no matrix."""
    run = write_run(tmp_path / "run.json", [result("overlay-on-xfs", "a")])
    known = tmp_path / name
    known.write_text(content, encoding="utf-8")
    code, out, err = run_main(capsys, "--known-failures", str(known), run)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and message in err, err


def test_unwritable_output_exits_2(tmp_path, capsys):
    run = write_run(tmp_path / "run.json", [result("overlay-on-xfs", "a")])
    code, _, err = run_main(capsys, "--html", str(tmp_path / "no" / "such" / "dir.html"), run)
    assert code == 2 and "cannot write" in err


# ---------------------------------------------------------------- end to end

CONFTEST = """
from conformance import resultlog

def pytest_addoption(parser):
    parser.addoption("--results-json")

def pytest_configure(config):
    path = config.getoption("--results-json")
    if path:
        resultlog.register(config, path)

def pytest_collection_modifyitems(items):
    # As the suite's conftest does: properties set at collection time, so even
    # tests skipped before their fixtures run carry their target.
    for item in items:
        if item.fspath.basename == "test_cases.py":
            item.user_properties += [("target", "overlay-on-xfs"), ("backend", "overlay"),
                                     ("filesystem", "xfs"), ("case", item.name[len("test_"):])]
"""

CASES = """
import pytest

@pytest.fixture
def broken():
    raise OSError("losetup: cannot find an unused loop device")

def test_prepare_commit_view():
    pass

def test_remove_fails_while_children_exist():
    raise RuntimeError("remove parent\\nFailedPrecondition: snapshot has children")

def size():
    return 2

def test_usage_is_exact():
    assert size() == 3

def test_labels_round_trip():
    assert {"a": "1"} == {"a": "2"}, "labels differ after Update"

@pytest.mark.skip(reason="needs CAP_SYS_ADMIN")
def test_mounts_are_real():
    pass

def test_zfs_clones():
    pytest.skip("zfs module not loaded")

@pytest.mark.xfail(reason="walk filters not implemented")
def test_walk_filters():
    assert False

def test_needs_loop_device(broken):
    pass

@pytest.fixture
def leaky_mount():
    yield
    raise RuntimeError("umount: target is busy")

def test_cleanup_unmounts(leaky_mount):
    pass
"""

PLAIN = """
def test_untargeted():
    pass
"""


def run_suite(tmp_path, files):
    """Run pytest on a throwaway suite with the result log; return (run, results path, env)."""
    suite = tmp_path / "suite"
    suite.mkdir()
    (suite / "conftest.py").write_text(CONFTEST)
    for name, text in files.items():
        (suite / name).write_text(text)
    results = tmp_path / "out" / "results.json"  # "out" does not exist yet on purpose
    env = dict(os.environ, SNAPLAB_RUN_LABEL="e2e",
               PYTHONPATH=os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p))
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir", str(suite),
         "--results-json", str(results), str(suite)],
        cwd=str(suite), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        universal_newlines=True, timeout=120)
    return run, results, env


def test_end_to_end_pytest_run_then_report(tmp_path):
    run, results, env = run_suite(tmp_path, {"test_cases.py": CASES, "test_plain.py": PLAIN})
    assert run.returncode == 1, run.stdout  # the suite has failures

    doc = json.loads(results.read_text(encoding="utf-8"))
    assert doc["format"] == "snaplab-conformance/1"
    assert doc["run"]["label"] == "e2e" and doc["run"]["kernel"] == os.uname().release
    assert doc["run"]["started"].endswith("Z") and doc["run"]["finished"] >= doc["run"]["started"]
    by_case = {r["case"]: r for r in doc["results"]}
    summary = {case: (r["outcome"], r["reason"]) for case, r in by_case.items()}
    assert summary == {
        "prepare_commit_view": ("passed", ""),
        "remove_fails_while_children_exist": ("failed", "FailedPrecondition: snapshot has children"),
        "usage_is_exact": ("failed", "assert 2 == 3"),
        "labels_round_trip": ("failed", "AssertionError: labels differ after Update"),
        "mounts_are_real": ("skipped", "needs CAP_SYS_ADMIN"),
        "zfs_clones": ("skipped", "zfs module not loaded"),
        "walk_filters": ("xfailed", "walk filters not implemented"),
        "needs_loop_device": ("error",
                              "error in setup: OSError: losetup: cannot find an unused loop device"),
        "cleanup_unmounts": ("error", "error in teardown: RuntimeError: umount: target is busy"),
        "test_untargeted": ("passed", ""),
    }
    r = by_case["remove_fails_while_children_exist"]
    assert (r["target"], r["backend"], r["filesystem"]) == ("overlay-on-xfs", "overlay", "xfs")
    assert r["nodeid"] == "test_cases.py::test_remove_fails_while_children_exist"
    assert by_case["test_untargeted"]["target"] == ""
    assert all(isinstance(r["duration"], float) for r in doc["results"])

    rep = subprocess.run(
        [sys.executable, "-m", "conformance.report", "--html", str(tmp_path / "r.html"), str(results)],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        universal_newlines=True, timeout=60)
    assert rep.returncode == 1 and rep.stderr == ""
    _, rows = table_rows(rep.stdout)
    assert rows["overlay"] == ["—", "❌ 1 pass · 5 fail · 2 skip · 1 xfail"]
    assert rows["(no target)"] == ["✅ 1 pass", "—"]
    assert ("- overlay-on-xfs :: remove_fails_while_children_exist — "
            "FailedPrecondition: snapshot has children") in rep.stdout
    assert "- 1 × zfs module not loaded — overlay-on-xfs" in rep.stdout


def test_modules_that_fail_to_import_or_skip_are_recorded(tmp_path):
    # Otherwise their cases would vanish from the matrix without a word.
    run, results, env = run_suite(tmp_path, {
        "test_broken.py": "import snaplab_no_such_module\n",
        "test_zfs.py": "import pytest\npytest.skip('no zfs on this kernel', allow_module_level=True)\n",
    })
    assert run.returncode == 2, run.stdout  # pytest's "interrupted: collection errors"
    doc = json.loads(results.read_text(encoding="utf-8"))
    by_case = {r["case"]: (r["outcome"], r["reason"]) for r in doc["results"]}
    assert by_case == {
        "test_broken.py": ("error", "collection failed: ModuleNotFoundError: "
                                    "No module named 'snaplab_no_such_module'"),
        "test_zfs.py": ("skipped", "no zfs on this kernel"),
    }
    assert report.main([str(results)]) == 1


# ---------------------------------------------------------------- YAML known failures, cells, stale

def test_yaml_known_failures_match_a_cell_by_target_and_release(tmp_path, capsys):
    """`cell: TARGET @ WHERE` covers a failure only in runs whose label,
    kernel or distro WHERE names; the same failure elsewhere stays red."""
    bookworm = write_run(tmp_path / "bookworm.json", [
        result("overlay-on-zfs", "basic", "failed", "EINVAL")], label="bookworm")
    trixie = write_run(tmp_path / "trixie.json", [
        result("overlay-on-zfs", "basic", "failed", "EINVAL")],
        kernel="6.12.57+deb13-cloud-amd64", distro="Debian GNU/Linux 13 (trixie)", label="trixie")
    known = tmp_path / "known-failures.yml"
    known.write_text(textwrap.dedent("""\
        # comment
        known_failures:
          - case: basic
            cell: overlay-on-zfs @ bookworm
            reason: OpenZFS 2.1 cannot be overlay's upper layer
            link: https://github.com/openzfs/zfs/issues/8648
        """), encoding="utf-8")
    code, out, _ = run_main(capsys, "--known-failures", str(known), bookworm, trixie)
    assert code == 1  # trixie's failure is not covered
    assert "## Failures (1)" in out
    assert "- overlay-on-zfs :: basic — EINVAL _(Debian GNU/Linux 13 (trixie)/6.12.57+deb13-cloud-amd64)_" in out
    assert "## Expected failures (1)" in out
    assert ("- overlay-on-zfs :: basic — OpenZFS 2.1 cannot be overlay's upper layer "
            "(https://github.com/openzfs/zfs/issues/8648) _(Debian GNU/Linux 12 (bookworm)/6.1.0-18-amd64)_") in out
    assert "stale" not in out


def test_a_cell_may_name_the_kernel_and_globs():
    entry = report.known("case_*", "overlay-on-* @ 6.1.*", "r", "", "here")
    run = {"label": "", "kernel": "6.1.0-50-cloud-amd64", "distro": "Debian GNU/Linux 12 (bookworm)"}
    assert report.known_entry({"case": "case_a", "target": "overlay-on-zfs"}, [entry], run) is entry
    assert report.known_entry({"case": "case_a", "target": "native-on-zfs"}, [entry], run) is None
    assert report.known_entry({"case": "case_a", "target": "overlay-on-zfs"}, [entry],
                              dict(run, kernel="6.12.1")) is None
    # No "@": every run.
    everywhere = report.known("case_a", "overlay-on-zfs", "r", "", "here")
    assert report.known_entry({"case": "case_a", "target": "overlay-on-zfs"}, [everywhere], {}) is everywhere


def test_stale_entries_are_listed_with_what_happened_instead(tmp_path, capsys):
    run = write_run(tmp_path / "run.json", [
        result("overlay-on-zfs", "basic"),  # passes now
        result("overlay-on-zfs", "usage", "skipped", "no"),
        result("overlay-on-zfs", "remove", "failed", "still broken"),
    ], label="bookworm")
    known = tmp_path / "known.yaml"
    known.write_text(textwrap.dedent("""\
        - {case: basic, cell: overlay-on-zfs, reason: was broken}
        - {case: usage, cell: overlay-on-zfs, reason: was broken too}
        - {case: remove, cell: overlay-on-zfs @ bookworm, reason: still broken}
        - {case: gone, cell: overlay-on-zfs @ bookworm, reason: renamed case, link: https://x.example/1}
        - {case: basic, cell: overlay-on-zfs @ trixie, reason: "another release, not run here"}
        """), encoding="utf-8")
    code, out, _ = run_main(capsys, "--known-failures", str(known), run)
    assert code == 0
    assert "## Known failures that did not fail (stale entries) (3)" in out
    assert "- overlay-on-zfs :: basic — passes now (1 result); listed because: was broken" in out
    assert "- overlay-on-zfs :: usage — skipped (1 result); listed because: was broken too" in out
    assert ("- overlay-on-zfs @ bookworm :: gone — not among these results; listed because: "
            "renamed case (https://x.example/1)") in out
    assert "another release" not in out  # trixie did not run: nothing says it no longer fails
    assert "- overlay-on-zfs :: remove — still broken" in out  # an expected failure, not stale
    page = report.render_html(report.build_matrix(report.load_results([run]),
                                                  report.load_known_failures(str(known))))
    assert "stale entries" in page and "passes now (1 result)" in page


@pytest.mark.parametrize("content, message", [
    ("- {case: a, cell: x}\n", 'needs a "reason"'),
    ("- {case: a, cell: x, reason: r, ticket: 1}\n", "unknown keys ticket"),
    ("- {case: a, cell: x, target: y, reason: r}\n", '"cell" or "target", not both'),
    ("- {case: a, cell: 'x @ ', reason: r}\n", "nothing after '@'"),
    ("- {case: a, cell: [x], reason: r}\n", '"cell" and "link" are strings'),
    ("known_failures: {case: a}\n", "expected a list of entries"),
    ("- [unclosed\n", "invalid YAML"),
])
def test_bad_yaml_known_failures_exit_2_and_say_why(tmp_path, capsys, content, message):
    assert_known_failures_file_refused(tmp_path, capsys, "known.yml", content, message)


def test_an_empty_yaml_file_knows_no_failures(tmp_path):
    known = tmp_path / "known.yml"
    known.write_text("# nothing known to fail\n", encoding="utf-8")
    assert report.load_known_failures(str(known)) == []


def test_the_lab_known_failures_file_is_valid():
    entries = report.load_known_failures(os.path.join(ROOT, "labs", "known-failures.yml"))
    for entry in entries:
        assert entry["reason"] and entry["link"].startswith("https://"), entry
        assert entry["where"] != "*", "a lab entry names its release or kernel: %r" % entry


def test_the_report_says_which_traits_each_row_was_checked_against(tmp_path, capsys):
    native = dict(result("native-on-xfs", "basic"),
                  traits="snaplab-native.yml: usage_includes_parent: true")
    other = result("mine-on-xfs", "basic")  # a result file from before traits: none
    path = write_run(tmp_path / "run.json", [native, other])
    html_path = tmp_path / "r.html"
    code, out, _err = run_main(capsys, path, "--html", str(html_path))
    assert code == 0
    section = out[out.index("## Traits of each row"):]
    assert "- native — snaplab-native.yml: usage_includes_parent: true" in section
    assert "mine" not in section
    assert "snaplab-native.yml: usage_includes_parent: true" in html_path.read_text()


def test_a_sometimes_entry_takes_a_failure_and_a_pass_alike(tmp_path, capsys):
    known = tmp_path / "known.yml"
    known.write_text("known_failures:\n"
                     "  - case: kill_mid_prepare\n    cell: mine-on-*\n    sometimes: true\n"
                     "    reason: fails when a kill lands between two steps\n"
                     "  - case: other\n    cell: mine-on-*\n    reason: always fails\n")
    path = write_run(tmp_path / "run.json", [
        result("mine-on-xfs", "kill_mid_prepare", "failed", "file exists"),
        result("mine-on-ext4", "kill_mid_prepare"),
        result("mine-on-ext4", "other")])
    code, out, _err = run_main(capsys, path, "--known-failures", str(known))
    assert code == 0
    header, rows = table_rows(out)
    cells = dict(zip(header, rows["mine"]))
    assert cells["xfs"].endswith("0 pass · 1 xfail")  # failed when the kill landed
    assert cells["ext4"].endswith("1 pass · 1 xpass")  # a plain pass, and `other`'s xpass
    # only the always-failing entry that passed is news
    assert "## Unexpectedly passing (1)" in out
    assert "other" in out[out.index("## Unexpectedly passing"):]
    assert "Known failures that did not fail (stale entries) (1)" in out


def test_sometimes_must_be_a_boolean(tmp_path):
    known = tmp_path / "known.yml"
    known.write_text("- case: c\n  reason: r\n  sometimes: often\n")
    with pytest.raises(report.InputError, match='"sometimes" is true or false'):
        report.load_known_failures(str(known))


def test_a_strict_xfail_that_passes_is_recorded_as_passing(tmp_path):
    # pytest reports a passing strict xfail (a known failure, in the suite)
    # as "failed" with "[XPASS(strict)]": the record said failed, and the
    # report listed the case among the expected failures although it passed
    # (and could not tell a known failure that passes sometimes).
    cases = ("import pytest\n\n@pytest.mark.xfail(strict=True, reason='known: listed')\n"
             "def test_fixed_since():\n    pass\n")
    run, results, _ = run_suite(tmp_path, {"test_cases.py": cases})
    assert run.returncode == 1, run.stdout  # pytest still fails the run
    (record,) = json.loads(results.read_text(encoding="utf-8"))["results"]
    assert (record["outcome"], record["reason"]) == ("xpassed", "known: listed")
