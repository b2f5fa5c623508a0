"""The suite against a snapshotter this project did not write: stargz-snapshotter.

containerd-stargz-grpc (conformance/stargz.py: built from Debian's sources)
is started here on a root on a loop ext4, and `python -m conformance
--endpoint <its socket> --plugin stargz --report DIR -k "basic or usage"`
runs against it as a user runs it (a subprocess, from a directory outside
the repository). Checked: the report lists the endpoint-stargz row with
those cases, each passed (or failed as a known difference, which none of
them is today), and the daemon stops cleanly (exit 0, its socket gone),
leaving no snapshot data on its root. The daemon and the filesystem go
also on failure.
"""

import collections
import json
import os
import subprocess
import sys

import pytest

from conformance.filesystems import TEST_PREFIX
from conformance.serve import grpc_missing
from conformance.stargz import DATA_SUBDIR, STARGZ_BACKEND, stargz_missing, stargz_process

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="the cases mount snapshots: root"),
    pytest.mark.skipif(grpc_missing() is not None, reason=str(grpc_missing())),
    pytest.mark.skipif(stargz_missing() is not None, reason=str(stargz_missing())),
]

SUBSET = "basic or usage"
RUN_TIMEOUT_S = 300
ROW = "endpoint-" + STARGZ_BACKEND


def test_the_suite_runs_against_stargz(loop_filesystem, scratch_dir):
    with loop_filesystem("ext4", TEST_PREFIX + "stargz-") as fs, \
            scratch_dir(TEST_PREFIX + "stargz-run-") as where:
        root = os.path.join(fs.mountpoint, "root")
        stargz = stargz_process(root).start()
        try:
            report = os.path.join(where, "report")
            done = subprocess.run(
                [sys.executable, "-m", "conformance", "--endpoint", "unix://" + stargz.socket,
                 "--plugin", STARGZ_BACKEND, "--report", report, "--fs-dir", where,
                 "-k", SUBSET],
                cwd=where, capture_output=True, text=True, timeout=RUN_TIMEOUT_S, check=False)
            assert stargz.running, "containerd-stargz-grpc died:\n%s" % stargz.log_tail()
        finally:
            code = stargz.stop()
            stargz.discard()
        assert code == 0, "containerd-stargz-grpc exited %s on SIGTERM:\n%s" % (
            code, stargz.log_tail())
        assert not os.path.lexists(stargz.socket)

        assert done.returncode == 0, "exit %d:\n%s\n%s" % (
            done.returncode, done.stdout[-4000:], done.stderr[-2000:])
        with open(os.path.join(report, "results.json"), encoding="utf-8") as text:
            results = json.load(text)["results"]
        assert {(r["backend"], r["filesystem"]) for r in results} == {(ROW, "endpoint")}
        outcomes = collections.Counter(r["outcome"] for r in results)
        assert set(outcomes) <= {"passed", "xfailed"}, outcomes
        cases = {r["case"].split("[")[0] for r in results}
        assert any("basic" in case for case in cases), cases
        assert sum("usage" in case for case in cases) >= 5, cases
        # The cases removed what they made (Cleanup ran: stargz removes
        # asynchronously), so no snapshot directory is left.
        assert os.listdir(os.path.join(root, DATA_SUBDIR, "snapshots")) == []
