"""The import structure the README's Layout section draws, checked.

Every import counts, also one inside a function (a lazy import is still a
dependency: it only hides the cycle until the function runs). The rules:

- snaplab/ has no import cycle.
- No module outside snaplab/backends/ imports a particular backend (the
  registry, snaplab.backends itself, is how the rest opens one). Tests may:
  they test the backends.
- No file of the core (snaplab/) is over 600 lines.
- conformance/ imports one way, layer by layer (CONFORMANCE_LAYERS).
- No test module imports another test module; shared helpers live in
  modules whose names do not start with test_.
- Nobody edits sys.path: snaplab, snaplab_grpc and conformance are
  installed into the venv (pyproject.toml).
"""

import ast
import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CORE_MAX_LINES = 600
# Where the collection ships the core: module_utils/_snaplab is snaplab/.
COLLECTION_CORE = "ansible_collections.snaplab.snapshots.plugins.module_utils._snaplab"

# conformance/ from the bottom up: a module may import modules of its own
# layer or below, never above. The suite's test modules and conftest sit on
# top of everything.
CONFORMANCE_LAYERS = [
    {"conformance.fstest", "conformance.resultlog", "conformance.report", "conformance.history",
     "conformance.traits"},
    {"conformance.filesystems", "conformance.leaks"},
    {"conformance.target", "conformance.process"},
    {"conformance.inprocess", "conformance.containerd", "conformance.serve",
     "conformance.endpoint"},
    {"conformance.rootless", "conformance.started", "conformance.stargz"},
    {"conformance.registry"},
    {"conformance.helpers"},
    {"conformance.__main__"},
]


def python_files(*tops):
    for top in tops:
        for directory, subdirectories, names in os.walk(os.path.join(REPO, top)):
            subdirectories[:] = sorted(d for d in subdirectories if d != "__pycache__")
            for name in sorted(names):
                if name.endswith(".py"):
                    yield os.path.join(directory, name)


def module_name(path):
    relative = os.path.relpath(path, REPO)[:-3].split(os.sep)
    if relative[-1] == "__init__":
        relative = relative[:-1]
    return ".".join(relative)


def imports_of(path):
    """Every module `path` imports (absolute names; `from a import b` also
    names a.b, which is a module when b is a sub-module), with the line."""
    name = module_name(path)
    package = name.split(".") if path.endswith("__init__.py") else name.split(".")[:-1]
    with open(path, encoding="utf-8") as source:
        tree = ast.parse(source.read(), path)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module
            found.append((module, node.lineno))
            found += [(module + "." + alias.name, node.lineno) for alias in node.names]
    return found


def graph(*tops):
    """{module: {imported module of the same tree: line}} over real modules only."""
    files = {module_name(path): path for path in python_files(*tops)}
    edges = {}
    for name, path in files.items():
        edges[name] = {}
        for imported, line in imports_of(path):
            # A module's own packages run first whatever it imports: that
            # edge is implied, not a dependency anyone chose.
            if imported in files and not (name + ".").startswith(imported + "."):
                edges[name].setdefault(imported, line)
    return edges, files


def find_cycle(edges):
    """One import cycle as a list of modules, or None."""
    state = {}
    stack = []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for target in sorted(edges.get(node, ())):
            if state.get(target) == "open":
                return stack[stack.index(target):] + [target]
            if target not in state:
                cycle = visit(target)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(edges):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_the_graph_sees_lazy_and_relative_imports(tmp_path):
    """The checker itself: an import inside a function and a relative one count."""
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (tmp_path / "pkg" / "a.py").write_text("def f():\n    from . import b\n")
    (tmp_path / "pkg" / "b.py").write_text("from .a import f\n")
    global REPO
    saved, REPO = REPO, str(tmp_path)
    try:
        edges, _ = graph("pkg")
    finally:
        REPO = saved
    assert edges["pkg.a"] == {"pkg.b": 2}
    assert "pkg.a" in edges["pkg.b"]
    assert find_cycle(edges) in (["pkg.a", "pkg.b", "pkg.a"], ["pkg.b", "pkg.a", "pkg.b"])


def test_the_core_has_no_import_cycle():
    edges, _ = graph("snaplab")
    cycle = find_cycle(edges)
    assert cycle is None, "import cycle in snaplab/: " + " -> ".join(cycle)


def particular_backends():
    """The backends by name, as the registry knows them (the other modules
    under snaplab/backends/ are their shared helpers: base, zfs_commands...)."""
    from snaplab.backends import BACKENDS
    return set(BACKENDS)


def test_only_the_backends_import_a_particular_backend():
    backends = particular_backends()
    offenders = []
    # benchmarks/bench_btrfs_ioctl.py measures the btrfs backend's ioctls
    # themselves (against btrfs-progs), as the tests test the backends.
    for path in python_files("snaplab", "snaplab_grpc", "conformance", "collection/plugins",
                             "labs"):
        if module_name(path).startswith("snaplab.backends"):
            continue
        for imported, line in imports_of(path):
            for prefix in ("snaplab.backends.", COLLECTION_CORE + ".backends."):
                if imported.startswith(prefix) and imported[len(prefix):].split(".")[0] in backends:
                    offenders.append("%s:%d imports %s" % (os.path.relpath(path, REPO), line,
                                                          imported))
    assert not offenders, "\n".join(offenders)


def test_no_core_file_is_over_600_lines():
    long_files = []
    for path in python_files("snaplab"):
        with open(path, encoding="utf-8") as source:
            lines = sum(1 for _ in source)
        if lines > CORE_MAX_LINES:
            long_files.append("%s: %d lines" % (os.path.relpath(path, REPO), lines))
    assert not long_files, "\n".join(long_files)


def conformance_layer(name):
    if name.startswith("conformance.test_") or name == "conformance.conftest":
        return len(CONFORMANCE_LAYERS)
    if name == "conformance":
        return 0
    for number, layer in enumerate(CONFORMANCE_LAYERS):
        if name in layer:
            return number
    return None


def test_every_conformance_module_has_a_layer():
    _, files = graph("conformance")
    assert [name for name in files if conformance_layer(name) is None] == []


def test_conformance_imports_point_down():
    edges, _ = graph("conformance")
    upward = ["%s (layer %s) imports %s (layer %s) at line %d" % (
        name, conformance_layer(name), imported, conformance_layer(imported), line)
        for name, targets in sorted(edges.items()) for imported, line in sorted(targets.items())
        if (conformance_layer(imported) or 0) > (conformance_layer(name) or 0)]
    assert not upward, "\n".join(upward)
    cycle = find_cycle(edges)
    assert cycle is None, "import cycle in conformance/: " + " -> ".join(cycle)


def is_test_module(name):
    return name.split(".")[-1].startswith("test_")


def test_no_test_module_imports_another():
    edges, _ = graph("tests", "conformance")
    offenders = ["%s imports %s (line %d)" % (name, imported, line)
                 for name, targets in sorted(edges.items()) if is_test_module(name)
                 for imported, line in sorted(targets.items()) if is_test_module(imported)]
    assert not offenders, "\n".join(offenders)


# protoc's generated modules import each other by their proto package names
# (`containerd.types...`): their directory must be on the path.
SYS_PATH_ALLOWED = {"snaplab_grpc/stubs.py"}


@pytest.mark.parametrize("top", ["snaplab", "snaplab_grpc", "conformance", "collection",
                                 "labs", "tests", "benchmarks"])
def test_nobody_edits_sys_path(top):
    edits = []
    for path in python_files(top):
        if os.path.relpath(path, REPO) in SYS_PATH_ALLOWED:
            continue
        with open(path, encoding="utf-8") as source:
            tree = ast.parse(source.read(), path)
        for node in ast.walk(tree):
            target = node.func.value if (isinstance(node, ast.Call)
                                         and isinstance(node.func, ast.Attribute)) else None
            if (isinstance(target, ast.Attribute) and target.attr == "path"
                    and isinstance(target.value, ast.Name) and target.value.id == "sys"):
                edits.append("%s:%d sys.path.%s" % (os.path.relpath(path, REPO), node.lineno,
                                                    node.func.attr))
    assert not edits, "\n".join(edits)
