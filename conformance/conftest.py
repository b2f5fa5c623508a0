"""The conformance harness: targets, real filesystems, fresh roots, results.

Choose what to run (options, or the environment variables beside them):
  --backends native,overlay           SNAPLAB_BACKENDS
  --filesystems ext4,xfs,btrfs,...    SNAPLAB_FILESYSTEMS
  --results-json PATH                 write the JSON result file for the report
  --fs-dir DIR                        where loop images and mounts go (default /tmp)
  --filesystem-at NAME=PATH           use a filesystem already mounted at PATH (made
                                      by node_storage, say) instead of making one;
                                      repeatable                    SNAPLAB_FILESYSTEM_AT
  --known-failures FILE               cases known to fail where (report.py's format and
                                      matching) are strict xfails: a listed case that
                                      passes fails the run     SNAPLAB_KNOWN_FAILURES
                                      (default: known-differences.yml beside this file;
                                      "" for none)
  --endpoint ADDRESS --plugin NAME    instead of the matrix, the one target
                                      endpoint-NAME: snapshotter NAME of the
                                      service at ADDRESS (conformance/endpoint.py)
                                      SNAPLAB_ENDPOINT, SNAPLAB_PLUGIN
  --namespace-prefix P                the endpoint's namespaces (or key prefixes)
                                      start with P      SNAPLAB_NAMESPACE_PREFIX
  --traits FILE                       the traits of the endpoint's (or start
                                      command's) snapshotter (conformance/traits.py
                                      says what they are)         SNAPLAB_TRAITS
  --trait NAME=VALUE                  one trait on top; repeatable
  --start-command CMD --plugin NAME   instead of the matrix, the row endpoint-NAME:
                                      snapshotter NAME of a service the suite starts
                                      from CMD per root ({root}, {socket} in it;
                                      conformance/started.py) on each of
                                      --filesystems (default: ext4). Not with
                                      --endpoint.                SNAPLAB_START_COMMAND
  --repeat N                          run every selected case N times (default 1),
                                      to see which fail only sometimes  SNAPLAB_REPEAT

Every test that takes `snapshotter`, `work` or `target` runs once per target
(backend × filesystem), with ids like `overlay-on-xfs`. The filesystems are made
once per run and removed at its end, also when tests fail; every mount a test
leaves under its own directory is unmounted after it.

With --repeat N every case runs N times in a row (`test_basic[overlay-on-xfs-run2]`
is its second run). Each run gets fresh function-scoped fixtures (a fresh
directory, root and snapshotter), as any two cases do; the session's own (the
targets, their filesystems, the services started for them) are shared, as
they are between cases. Each result record says which run it was ("run": 2,
"runs": 3) under the same case name, so that the report groups the runs of a
case and known-failures entries match every run. --repeat 1 changes nothing:
no run suffix in the ids, no run keys in the records.
"""

import functools
import os
import platform
import tempfile

import pytest

from snaplab import errors
from snaplab import mount as mountlib

from . import report, resultlog
from . import traits as traitslib
from .containerd import containerd_daemons_fixture
from .filesystems import DEFAULT_FILESYSTEMS, FilesystemPool, FilesystemUnavailable
from .registry import (DEFAULT_BACKENDS, KNOWN_DIFFERENCES, all_targets, endpoint_targets,
                       started_targets)
from .serve import proxies_fixture
from .target import Target


# A started service's row: one filesystem unless asked (a service per root
# and filesystem is the costly part).
STARTED_FILESYSTEMS = ["ext4"]


def _split(text):
    return [part.strip() for part in text.split(",") if part.strip()]


def pytest_addoption(parser):
    group = parser.getgroup("snaplab", "snaplab conformance")
    group.addoption("--backends", default=os.environ.get("SNAPLAB_BACKENDS",
                                                         ",".join(DEFAULT_BACKENDS)),
                    help="comma-separated backends (default: %(default)s)")
    group.addoption("--filesystems", default=os.environ.get("SNAPLAB_FILESYSTEMS"),
                    help="comma-separated filesystems (default: %s; with --start-command: %s)"
                    % (",".join(DEFAULT_FILESYSTEMS), ",".join(STARTED_FILESYSTEMS)))
    group.addoption("--results-json", default=os.environ.get("SNAPLAB_RESULTS_JSON"),
                    help="write the run's results as JSON for `python3 -m conformance.report`")
    group.addoption("--fs-dir", default=os.environ.get("SNAPLAB_FS_DIR"),
                    help="directory for loop images and mount points (default: the temp dir)")
    group.addoption("--filesystem-at", action="append", metavar="NAME=PATH",
                    default=_split(os.environ.get("SNAPLAB_FILESYSTEM_AT", "")),
                    help="use the filesystem already mounted at PATH as NAME (e.g. "
                         "xfs=/var/lib/snaplab/xfs) instead of making a loop-backed one")
    group.addoption("--known-failures",
                    default=os.environ.get("SNAPLAB_KNOWN_FAILURES", KNOWN_DIFFERENCES),
                    help="cases known to fail (conformance.report's --known-failures file): "
                         "strict xfails (default: %(default)s)")
    group.addoption("--endpoint", default=os.environ.get("SNAPLAB_ENDPOINT"),
                    help="run the suite against the snapshots gRPC API at this address "
                         "(unix:///path or a path) instead of the backends x filesystems")
    group.addoption("--plugin", default=os.environ.get("SNAPLAB_PLUGIN"),
                    help="the endpoint's snapshotter plugin (containerd's name for it; "
                         "a service of one snapshotter takes any name)")
    group.addoption("--namespace-prefix", default=os.environ.get("SNAPLAB_NAMESPACE_PREFIX"),
                    help="what the endpoint's case namespaces (or key prefixes) start with")
    group.addoption("--traits", default=os.environ.get("SNAPLAB_TRAITS"), metavar="FILE",
                    help="the traits of the endpoint's or start command's snapshotter: a "
                         "YAML file of `name: value` lines "
                         "(default: the suite's own for a plugin it knows, else every "
                         "trait at its default)")
    group.addoption("--trait", action="append", default=[], metavar="NAME=VALUE",
                    help="one of the endpoint's traits, on top of --traits; repeatable "
                         "(traits: %s)" % ", ".join(traitslib.TRAIT_OF_NAME))
    group.addoption("--start-command", default=os.environ.get("SNAPLAB_START_COMMAND"),
                    metavar="CMD",
                    help="run the suite against snapshotter --plugin of a service the suite "
                         "starts itself, one per root, from CMD: {root} and {socket} in it "
                         "are the root and the unix socket to serve on (the row "
                         "endpoint-PLUGIN on --filesystems; not with --endpoint)")
    group.addoption("--repeat", type=int, default=int(os.environ.get("SNAPLAB_REPEAT") or 1),
                    metavar="N",
                    help="run every selected case N times (fresh function fixtures each "
                         "time); the report shows each case's pass rate and the flaky ones")


def pytest_configure(config):
    if config.getoption("--repeat") < 1:
        raise pytest.UsageError("--repeat takes a number of runs, 1 or more")
    if config.getoption("--repeat") > 1:
        config.pluginmanager.register(_Repeat(config.getoption("--repeat")), "snaplab-repeat")
    if config.getoption("--results-json"):
        resultlog.register(config, config.getoption("--results-json"))
    config.addinivalue_line("markers", "storage_layout(name): white-box cases of the on-disk "
                                       "layout of targets whose storage_layout trait is `name`")
    if config.getoption("--start-command"):
        _targets(config)  # a bad command is a usage error now, not one per test module


# Where the run's targets are kept on pytest's config. An attribute of our
# own, not config.stash: the suite runs on Debian's python3-pytest, and
# bullseye's (6.0) has no stash (pytest 7.0).
_TARGETS = "_snaplab_targets"


def _targets(config):
    """The run's targets, made once: every test function gets the very same
    objects, so that each is set up once (an endpoint probed once) and
    pytest groups the cases of one target together."""
    if getattr(config, _TARGETS, None) is None:
        setattr(config, _TARGETS, _make_targets(config))
    return getattr(config, _TARGETS)


def _make_targets(config):
    command = config.getoption("--start-command")
    if command and config.getoption("--endpoint"):
        raise pytest.UsageError("--endpoint and --start-command are two ways to reach the "
                                "snapshotter: give one")
    filesystems = config.getoption("--filesystems")
    if command:
        try:
            return started_targets(command, config.getoption("--plugin"),
                                   _split(filesystems or ",".join(STARTED_FILESYSTEMS)),
                                   config.getoption("--traits"), config.getoption("--trait"))
        except errors.InvalidArgument as bad:
            raise pytest.UsageError(str(bad)) from None
    if config.getoption("--endpoint"):
        try:
            return endpoint_targets(config.getoption("--endpoint"), config.getoption("--plugin"),
                                    config.getoption("--namespace-prefix"),
                                    config.getoption("--traits"), config.getoption("--trait"))
        except errors.InvalidArgument as bad:
            raise pytest.UsageError(str(bad)) from None
    if config.getoption("--traits") or config.getoption("--trait"):
        raise pytest.UsageError("--traits and --trait are an endpoint's or a start "
                                "command's: the matrix's snapshotters declare theirs in "
                                "conformance/traits/")
    return all_targets(_split(config.getoption("--backends")),
                       _split(filesystems or ",".join(DEFAULT_FILESYSTEMS)))


def pytest_generate_tests(metafunc):
    if "target" in metafunc.fixturenames:
        targets = _targets(metafunc.config)
        # White-box cases of one on-disk layout (marked
        # `storage_layout("snaplab-overlay")`) are not generated for targets
        # of other layouts at all, rather than skipped there; nor behind a
        # service: they read the in-process snapshotter's metadata too.
        layout = metafunc.definition.get_closest_marker("storage_layout")
        if layout is not None:
            targets = [t for t in targets
                       if t.service is None and t.traits.storage_layout in layout.args]
        metafunc.parametrize("target", targets, ids=[t.name for t in targets],
                             indirect=True, scope="session")


def _run_id(run):
    return "run%d" % run


class _Repeat:
    """--repeat N > 1: as pytest-repeat does, a parameter of its own, so
    that each run is an item (a result) of its own with fresh function
    fixtures. Parametrized last, after the target and the case's own
    parameters, so that the run is the id's last part."""

    def __init__(self, runs):
        self.runs = runs

    @pytest.hookimpl(trylast=True)
    def pytest_generate_tests(self, metafunc):
        metafunc.fixturenames.append("_repeat_run")
        metafunc.parametrize("_repeat_run", range(1, self.runs + 1), ids=_run_id, indirect=True)


@pytest.fixture
def _repeat_run(request):
    """Which run of the case this is (1..--repeat)."""
    return request.param


def pytest_collection_modifyitems(config, items):
    # A white-box case with no target of its layout selected has no
    # target at all (pytest puts a placeholder there): it is not run.
    not_applicable = [item for item in items if "target" in getattr(item, "fixturenames", ())
                      and not isinstance(_target_of(item), Target)]
    if not_applicable:
        config.hook.pytest_deselected(items=not_applicable)
        items[:] = [item for item in items if item not in not_applicable]
    # What the result file and the report need to place each result.
    known = _known_failures(config)
    strict = not (config.getoption("--endpoint") or config.getoption("--start-command"))
    run = {"label": os.environ.get("SNAPLAB_RUN_LABEL", ""), "kernel": platform.release(),
           "distro": resultlog.os_release_name()}
    runs = config.getoption("--repeat")
    for item in items:
        target = _target_of(item)
        case = item.originalname if hasattr(item, "originalname") else item.name
        case = case[len("test_"):] if case.startswith("test_") else case
        number = _run_of(item)
        if number is not None:
            # The same case name for every run: the report groups them, and
            # known-failures globs match them all.
            item.user_properties.extend([("run", number), ("runs", runs)])
        if target is not None:
            # A case's own parameters stay in its name (stopped with SIGINT
            # or with SIGTERM are two results); the target's make the cell,
            # the run number (the id's last part) the run.
            others = item.callspec.id
            if number is not None:
                others = others[:-len(_run_id(number))]
            others = others.replace(target.name, "", 1).strip("-")
            if others:
                case = "%s[%s]" % (case, others)
            item.user_properties.extend([("target", target.name), ("backend", target.backend),
                                         ("filesystem", target.filesystem)])
            # The report's own matching, so that pytest and the report agree.
            entry = report.known_entry({"case": case, "target": target.name}, known, run)
            if entry is not None:
                # Strict for the matrix: a listed case that passes must
                # fail the run. Not on an endpoint: someone else's service
                # of another version may have fixed it (the report says so).
                # And not for what fails only when a kill lands just so.
                item.add_marker(pytest.mark.xfail(
                    strict=strict and not entry["sometimes"], reason="known: %s%s" % (
                        entry["reason"], " (%s)" % entry["link"] if entry["link"] else "")))
        item.user_properties.append(("case", case))


def _known_failures(config):
    path = config.getoption("--known-failures")
    if not path:
        return []
    if path == KNOWN_DIFFERENCES:
        # The default is about containerd's targets: a node running only
        # snaplab's backends may have neither the file nor PyYAML.
        try:
            import yaml  # noqa: F401 pylint: disable=import-outside-toplevel,unused-import
        except ImportError:
            return []
        if not os.path.exists(path):
            return []
    try:
        return report.load_known_failures(path)
    except report.InputError as bad:
        raise pytest.UsageError("--known-failures: %s" % bad) from None


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem):
    """A target whose cases run elsewhere (rootless: an unprivileged child
    process) runs the test function; else pytest calls it here."""
    __tracebackhide__ = True
    target = _target_of(pyfuncitem)
    return target.run_case(pyfuncitem) if isinstance(target, Target) else None


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A failed case shows what its target can tell beside it: the tail of
    the log of each service the suite started for it."""
    outcome = yield
    report = outcome.get_result()
    target = _target_of(item)
    if report.failed and isinstance(target, Target) and call.when in ("call", "setup"):
        for title, text in target.diagnostics():
            report.sections.append((title, text))


def _run_of(item):
    """Which run of its case `item` is (--repeat), None without repeats."""
    callspec = getattr(item, "callspec", None)
    return callspec.params.get("_repeat_run") if callspec else None


def _target_of(item):
    callspec = getattr(item, "callspec", None)
    return callspec.params.get("target") if callspec else None


@pytest.fixture(scope="session", autouse=True)
def _umask_zero():
    """containerd's suite runs under umask 0 (clearMask): modes must be explicit."""
    previous = os.umask(0)
    yield
    os.umask(previous)


@pytest.fixture(autouse=True)
def _record_traits(request):
    """The traits each result was checked against, for the report (known
    once the target is set up: an endpoint's depend on what answers)."""
    if "target" in request.fixturenames:
        target = request.getfixturevalue("target")
        request.node.user_properties.append(("traits", target.traits.summary()))


@pytest.fixture(scope="session")
def filesystem_pool(request):
    provided = {}
    for pair in request.config.getoption("--filesystem-at"):
        name, sep, path = pair.partition("=")
        if not sep or not name or not path:
            raise pytest.UsageError("--filesystem-at takes NAME=PATH, not %r" % pair)
        provided[name] = path
    pool = FilesystemPool(request.config.getoption("--fs-dir"), provided=provided)
    yield pool
    pool.destroy()


@pytest.fixture(scope="session")
def target(request, filesystem_pool):
    """The target under test, its filesystem made (and mounted) for it."""
    target = request.param
    try:
        target.fs = filesystem_pool.get(target.filesystem)
    except FilesystemUnavailable as unavailable:
        pytest.skip("%s is not available: %s" % (target.filesystem, unavailable))
    target.setup_session(request)
    return target


@pytest.fixture(scope="session")
def containerd_daemons(filesystem_pool):
    """One private containerd per filesystem, for the containerd-* targets;
    stopped (and its files removed) before the filesystems go."""
    yield from containerd_daemons_fixture()


@pytest.fixture(scope="session")
def snaplab_proxies(filesystem_pool):
    """A snaplab serve + private containerd (proxy plugin) per backend and
    filesystem, for the containerd-proxy-snaplab-* targets; stopped (and
    their files removed) before the filesystems go."""
    yield from proxies_fixture()


@pytest.fixture
def test_dir(target):
    """A fresh directory on the target's filesystem; whatever a test leaves
    mounted under it is unmounted, and it is removed."""
    base = tempfile.mkdtemp(prefix="case-", dir=target.fs.mountpoint)
    os.chmod(base, 0o777)
    yield base
    # Not leaks: the mounts of datasets made for zfs roots (zfs's own), and
    # what a snapshotter keeps mounted (erofs's images), unmounted after.
    kept = target.kept_mounts_under(base)
    leaked = [where for where in target.fs.leaked_mounts_under(base) if where not in kept]
    for where in leaked + kept:
        mountlib.unmount_all(where)
    # Those datasets go before the directories they are mounted on; a
    # service's own state for these roots (containerd namespaces) first.
    problems = target.release_under(base) + target.fs.release_under(base)
    if not problems:
        problems += target.fs.remove_tree(base)
    if leaked:
        pytest.fail("the test left mounts behind: %s" % ", ".join(leaked))
    if problems:
        pytest.fail("what was made for the test's roots could not be released or removed: %s"
                    % "; ".join(problems))


@pytest.fixture
def work(test_dir):
    """Where a test puts its mount points (keys are often paths in it)."""
    path = os.path.join(test_dir, "work")
    os.mkdir(path, 0o777)
    return path


@pytest.fixture
def root(test_dir):
    """A snapshotter root path that does not exist yet."""
    return os.path.join(test_dir, "root")


@pytest.fixture
def open_snapshotter(target, test_dir):
    """Factory: open_snapshotter(root=None, **options) -> a snapshotter of the
    target's backend (extra backend options merged in), closed after the test.

    Where the backend must refuse this filesystem, the case is skipped with
    the backend's own reason (test_environment checks the refusal itself).
    """
    opened = []

    def open_now(root, options):
        root = root or tempfile.mkdtemp(prefix="root-", dir=test_dir)
        try:
            return target.open(root, **options)
        except errors.FailedPrecondition:
            refusal = target.expected_refusal()
            if refusal:
                # One reason for all cases (no temp paths) so the report can
                # group them; the refusal's own text is checked elsewhere.
                pytest.skip(refusal.skip_reason(target))
            raise

    def factory(root=None, **options):
        # (a rootless target opens it later, in the case's unprivileged process)
        sn = target.open_for_case(functools.partial(open_now, root, options))
        opened.append(sn)
        return sn

    yield factory
    for sn in opened:
        sn.close()


@pytest.fixture
def snapshotter(open_snapshotter, root):
    """A fresh snapshotter of the target on a fresh root."""
    return open_snapshotter(root)
