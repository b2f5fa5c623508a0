"""snaplab and its suite installed as a user installs them, not from this checkout.

`make wheels` builds both wheels into a snaplab-test-installed-* directory; a
fresh venv there gets them and their pinned dependencies from the package
registry (pip as configured on this machine); then, from a directory outside
the repository and with nothing of the checkout on the path: the CLI on the
native backend, `snaplab serve` answering a client run by the venv's own
Python, and the suite's package, its data file and its command. Everything
(venv, roots, serve process, socket) is removed afterwards, also on failure.
"""

import collections
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import zipfile

import pytest

from conformance.serve import READY_MARK, START_TIMEOUT_S, STOP_TIMEOUT_S

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# A few of the suite's cases: enough to show that it runs from the venv.
SUITE_SELECTION = "walk or commit"
PIN = re.compile(r"^([A-Za-z0-9._-]+)(\[[^\]]*\])?==([^\s;]+)")


def run(argv, cwd, env, timeout=300):
    """Run argv; fail the test with its output unless it exits 0."""
    done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, "%s exited %d:\n%s\n%s" % (
        " ".join(argv), done.returncode, done.stdout, done.stderr)
    return done.stdout


class Installed:
    """The venv with both wheels in it, and a working directory outside the repository."""

    def __init__(self, base):
        self.base = base
        self.wheels = os.path.join(base, "wheels")
        self.venv = os.path.join(base, "venv")
        self.cwd = os.path.join(base, "elsewhere")
        self.bin = os.path.join(self.venv, "bin")
        self.python = os.path.join(self.bin, "python")
        # Nothing of the checkout or its venv: no PYTHONPATH, no SNAPLAB_*
        # settings, the installed venv first on PATH.
        self.env = {k: v for k, v in os.environ.items()
                    if k not in ("PYTHONPATH", "VIRTUAL_ENV") and not k.startswith("SNAPLAB_")}
        self.env["PATH"] = self.bin + os.pathsep + os.environ.get("PATH", "")

    def wheel(self, project):
        """The path of `project`'s wheel in self.wheels (exactly one)."""
        prefix = project.replace("-", "_") + "-"
        found = [name for name in os.listdir(self.wheels)
                 if name.startswith(prefix) and name.endswith(".whl")]
        assert len(found) == 1, "%s wheels in %s: %s" % (project, self.wheels,
                                                          os.listdir(self.wheels))
        return os.path.join(self.wheels, found[0])

    def build_and_install(self):
        os.makedirs(self.cwd)
        # The repository's own recipe, with this venv's Python; `-o venv`: the
        # venv running this test is not remade under it.
        run(["make", "--no-print-directory", "-s", "-o", "venv", "wheels",
             "VENV=" + sys.prefix, "WHEELS=" + self.wheels,
             "WHEELS_SRC=" + os.path.join(self.base, "wheels-src")], cwd=REPO, env=None)
        run([sys.executable, "-m", "venv", self.venv], cwd=self.cwd, env=self.env)
        # The wheels by path (a different project named snaplab is on the
        # registry), their dependencies from the registry.
        run([self.python, "-m", "pip", "install", "-q", "--disable-pip-version-check",
             self.wheel("snaplab") + "[grpc]", self.wheel("snaplab-conformance")],
            cwd=self.cwd, env=self.env)

    def python_c(self, code, *args):
        return run([self.python, "-c", code, *args], cwd=self.cwd, env=self.env)

    def snaplab(self, root, *args):
        return run([os.path.join(self.bin, "snaplab"), "--root", root, "--backend", "native",
                    *args], cwd=self.cwd, env=self.env)


@pytest.fixture(scope="module")
def installed(scratch_dir):
    with scratch_dir("snaplab-test-installed-") as base:
        venv = Installed(base)
        started = time.monotonic()
        venv.build_and_install()
        print("wheels built and installed into a fresh venv in %.1f s"
              % (time.monotonic() - started))
        yield venv


def requirement_pins():
    """{lowercased name: version} of requirements.txt's `name==version` lines."""
    pins = {}
    with open(os.path.join(REPO, "requirements.txt"), encoding="utf-8") as text:
        for line in text:
            match = PIN.match(line.strip())
            if match:
                pins[match.group(1).lower()] = match.group(3)
    return pins


def test_the_wheels_pin_what_requirements_txt_pins(installed):
    import tomllib  # pylint: disable=import-outside-toplevel
    with open(os.path.join(REPO, "pyproject.toml"), "rb") as project:
        version = tomllib.load(project)["project"]["version"]
    pins = dict(requirement_pins(), snaplab=version)
    for project in ("snaplab", "snaplab-conformance"):
        with zipfile.ZipFile(installed.wheel(project)) as wheel:
            metadata = next(name for name in wheel.namelist()
                            if name.endswith(".dist-info/METADATA"))
            lines = wheel.read(metadata).decode().splitlines()
        assert "Version: %s" % version in lines
        requires = [line.split(":", 1)[1].strip() for line in lines
                    if line.startswith("Requires-Dist:")]
        assert requires or project == "snaplab"
        for requirement in requires:
            match = PIN.match(requirement)
            assert match, "%s: %r is not pinned with ==" % (project, requirement)
            name, pinned = match.group(1).lower(), match.group(3)
            assert pins.get(name) == pinned, "%s pins %s==%s, requirements.txt %s" % (
                project, name, pinned, pins.get(name))


def test_everything_is_imported_from_the_installed_venv(installed):
    paths = json.loads(installed.python_c(
        "import json, conformance, snaplab, snaplab_grpc\n"
        "print(json.dumps([m.__file__ for m in (snaplab, snaplab_grpc, conformance)]))"))
    site_packages = os.path.realpath(installed.venv) + os.sep
    for path in paths:
        assert os.path.realpath(path).startswith(site_packages), paths


def test_the_cli_prepares_commits_and_lists(installed):
    root = os.path.join(installed.base, "cli-root")
    mounts = json.loads(installed.snaplab(root, "--json", "prepare", "work"))
    assert [m["Type"] for m in mounts] == ["bind"]
    with open(os.path.join(mounts[0]["Source"], "hello"), "w", encoding="utf-8") as out:
        out.write("from the installed snaplab\n")
    installed.snaplab(root, "commit", "layer-1", "work")
    installed.snaplab(root, "prepare", "child", "layer-1")
    listed = {info["Name"]: info for info in json.loads(installed.snaplab(root, "--json", "ls"))}
    assert {name: info["Kind"] for name, info in listed.items()} == {
        "layer-1": "Committed", "child": "Active"}
    assert listed["child"]["Parent"] == "layer-1"


SERVE_CLIENT = """
import json, sys
from snaplab_grpc.client import RemoteSnapshotter
sn = RemoteSnapshotter(sys.argv[1], "snaplab")
try:
    sn.prepare("work", "")
    sn.commit("layer-1", "work", labels={"by": "installed-client"})
    mounts = sn.prepare("child", "layer-1")
    print(json.dumps({"listed": sorted([i.name, str(i.kind), i.parent, i.labels.get("by")]
                                       for i in sn.list()),
                      "mount_types": [m.type for m in mounts]}))
finally:
    sn.close()
"""


@contextlib.contextmanager
def served(installed, name):
    """`snaplab serve` of the installed venv on a new native root, from outside
    the repository; yields its socket path once it is ready. Leaving stops it
    with SIGTERM: it must exit 0 and remove its socket (killed, and failed,
    otherwise)."""
    socket_path = os.path.join(installed.base, name + ".sock")
    log_path = os.path.join(installed.base, name + ".log")

    def log():
        with open(log_path, encoding="utf-8", errors="replace") as text:
            return text.read()

    with open(log_path, "wb") as log_file:
        serve = subprocess.Popen(  # pylint: disable=consider-using-with
            [os.path.join(installed.bin, "snaplab"), "--root",
             os.path.join(installed.base, name + "-root"), "--backend", "native",
             "serve", "--socket", socket_path],
            cwd=installed.cwd, env=installed.env, stdin=subprocess.DEVNULL,
            stdout=log_file, stderr=log_file)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while READY_MARK not in log():
            assert serve.poll() is None, "serve exited %s:\n%s" % (serve.returncode, log())
            assert time.monotonic() < deadline, "serve not ready in %d s:\n%s" % (
                START_TIMEOUT_S, log())
            time.sleep(0.05)
        yield socket_path
        serve.send_signal(signal.SIGTERM)
        assert serve.wait(STOP_TIMEOUT_S) == 0, log()
        assert not os.path.exists(socket_path), "serve left its socket behind"
    finally:
        if serve.poll() is None:
            serve.kill()
            serve.wait()


def test_serve_answers_a_client_of_the_installed_venv(installed):
    with served(installed, "serve") as socket_path:
        answer = json.loads(installed.python_c(SERVE_CLIENT, socket_path))
    assert answer == {
        "listed": [["child", "Active", "layer-1", None],
                   ["layer-1", "Committed", "", "installed-client"]],
        "mount_types": ["bind"]}


def test_serve_without_the_proto_files_says_they_are_missing(installed):
    """What an installation without the package data got: exit 6 (NotImplemented)
    and a message naming the missing .proto files, not grpcio."""
    proto_dir = os.path.join(os.path.dirname(installed.python_c(
        "import snaplab_grpc; print(snaplab_grpc.__file__)").strip()), "proto")
    hidden = proto_dir + ".hidden"
    os.rename(proto_dir, hidden)
    try:
        done = subprocess.run(
            [os.path.join(installed.bin, "snaplab"), "--root",
             os.path.join(installed.base, "no-proto-root"), "--backend", "native",
             "serve", "--socket", os.path.join(installed.base, "no-proto.sock")],
            cwd=installed.cwd, env=installed.env, capture_output=True, text=True,
            timeout=START_TIMEOUT_S, stdin=subprocess.DEVNULL)
    finally:
        os.rename(hidden, proto_dir)
    assert done.returncode == 6, done
    assert "the .proto files of containerd's snapshots API are not installed" in done.stderr
    assert "containerd/types/mount.proto" in done.stderr


def test_the_suite_is_installed_with_its_data(installed):
    out = installed.python_c(
        # conformance.serve imports pytest; the known differences are YAML
        "import importlib.resources, yaml, conformance.serve\n"
        "files = importlib.resources.files('conformance')\n"
        "print((files / 'known-differences.yml').is_file())\n"
        "from conformance import traits\n"
        "print(traits.known('containerd-overlayfs').lower_directory_rename)\n"
        "print((files / 'containerd-stargz-grpc.go').is_file())")
    assert out.split() == ["True", "False", "True"]


def test_the_suite_command_runs(installed):
    for argv in ([os.path.join(installed.bin, "snaplab-conformance"), "--help"],
                 [installed.python, "-m", "conformance", "--help"]):
        assert "--endpoint" in run(argv, cwd=installed.cwd, env=installed.env)


def test_the_suite_runs_against_the_installed_serve(installed):
    report = os.path.join(installed.base, "report")
    with served(installed, "suite") as socket_path:
        run([os.path.join(installed.bin, "snaplab-conformance"), "--endpoint",
             "unix://" + socket_path, "--plugin", "snaplab", "--report", report,
             "-q", "-k", SUITE_SELECTION], cwd=installed.cwd, env=installed.env)
    assert {"results.json", "junit.xml", "report.md", "report.html"} <= set(os.listdir(report))
    with open(os.path.join(report, "results.json"), encoding="utf-8") as text:
        outcomes = collections.Counter(r["outcome"] for r in json.load(text)["results"])
    print("the suite from the venv against its serve: %s" % dict(outcomes))
    assert outcomes["passed"] > 0 and not outcomes["failed"] and not outcomes["error"], outcomes
