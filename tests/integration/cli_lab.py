"""A snaplab CLI lab for the integration tests: `python -m snaplab` as a
subprocess on a root in a test's own temp directory, with its exit code,
its one-line errors and its mount targets checked."""

import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class Lab:
    """A temp directory with a snapshotter root and mount targets in it."""

    def __init__(self, backend, base):
        self.backend = backend
        self.base = base
        self.root = os.path.join(self.base, "root")
        self.targets = []
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("SNAPLAB_")}
        self.env["PYTHONPATH"] = REPO + os.pathsep + self.env.get("PYTHONPATH", "")

    def run(self, *argv, code=0, root=True):
        """Run snaplab with this lab's root and backend; check the exit code."""
        prefix = ["--root", self.root, "--backend", self.backend] if root else []
        proc = subprocess.run([sys.executable, "-m", "snaplab", *prefix, *argv], cwd=REPO,
                              env=self.env, capture_output=True, text=True, timeout=300)
        assert "Traceback" not in proc.stderr, proc.stderr
        assert proc.returncode == code, (argv, proc.returncode, proc.stdout, proc.stderr)
        if code == 0:
            assert proc.stderr == "", proc.stderr
        else:
            lines = proc.stderr.splitlines()
            assert len(lines) == 1 and lines[0].startswith("snaplab: "), proc.stderr
        return proc

    def out(self, *argv):
        return self.run(*argv).stdout

    def json(self, *argv):
        return json.loads(self.run("--json", *argv).stdout)

    def target(self, name="mnt"):
        path = os.path.join(self.base, name)
        os.mkdir(path)
        self.targets.append(path)
        return path


def write_file(path, size):
    with open(path, "wb") as f:
        f.write(os.urandom(size))
        f.flush()
        os.fsync(f.fileno())
