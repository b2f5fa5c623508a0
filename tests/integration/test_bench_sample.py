"""make test's sample of `make bench`: each of bench-check's quick benchmarks
runs once, for real (loop filesystems, containerd, serve, ansible-playbook),
and must exit 0 and write every row the committed baseline has, each with a
ratio. Nothing is timed or compared here: timings are benchmarks, and this
only keeps the benchmarks runnable (a serve change once broke
bench_serve_floor's no-op snapshotter, and only `make bench` noticed).
"""

import importlib.util
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BENCHMARKS = os.path.join(REPO, "benchmarks")


def load(name):
    # benchmarks/ is a directory of scripts, not a package: loaded by path,
    # and registered by name for bench_check's sibling `import benchjson`.
    spec = importlib.util.spec_from_file_location(name, os.path.join(BENCHMARKS, name + ".py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(name, module)
    spec.loader.exec_module(module)
    return module


benchjson = load("benchjson")
bench_check = load("bench_check")
BASELINE = benchjson.read_baseline(bench_check.BASELINE)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the benchmarks make loop filesystems")


@pytest.mark.parametrize("name", sorted(bench_check.QUICK))
def test_quick_benchmark_writes_the_baselines_rows(name, tmp_path):
    out = tmp_path / (name + ".json")
    env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
    done = subprocess.run([sys.executable, os.path.join(BENCHMARKS, name + ".py"),
                           *bench_check.QUICK[name], "--json", str(out)],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          check=False, env=env, timeout=900)
    assert done.returncode == 0, done.stdout[-4000:]
    doc = benchjson.read(str(out))
    assert doc["benchmark"] == name
    written = {row["what"]: row for row in doc["rows"]}
    missing = set(BASELINE["benchmarks"][name]) - set(written)
    assert not missing, "rows of the baseline not written: %s" % sorted(missing)
    for what in BASELINE["benchmarks"][name]:
        assert written[what]["ratio"] is not None and written[what]["ratio"] > 0, written[what]
