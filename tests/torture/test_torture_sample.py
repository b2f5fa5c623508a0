"""A sample of `make torture` for `make test`: the same harness with small
numbers, per backend about 25 SIGKILLs (named crash points and random
delays) with the invariant checks after each, and 8 workers x 40 mixed
concurrent operations. Any violation fails the test, with the table and
every violation in its message.

The seed is fixed per run of the suite only through SNAPLAB_TORTURE_SEED
(default: the time, printed), so a failure can be replayed:
`SNAPLAB_TORTURE_SEED=<seed> pytest tests/torture`.
"""

import io
import os
import time

import pytest

from tests.torture import lab as labmod
from tests.torture import run as torture

pytestmark = pytest.mark.skipif(os.geteuid() != 0,
                                reason="loop devices, mounts and pools need root")

KILLS_PER_BACKEND = 25
WORKERS = 8
OPS_PER_WORKER = 40


@pytest.mark.parametrize("backend", labmod.BACKENDS)
def test_crash_and_concurrency_sample(backend):
    from conformance.targets import FilesystemUnavailable
    seed = os.environ.get("SNAPLAB_TORTURE_SEED") or str(int(time.time()))
    out = io.StringIO()
    try:
        report = torture.run([backend], KILLS_PER_BACKEND, seed, WORKERS, OPS_PER_WORKER,
                             report_path=None, out=out)
    except FilesystemUnavailable as unavailable:
        pytest.skip("%s is not available here: %s" % (labmod.FILESYSTEM_OF[backend],
                                                     unavailable))
    print(out.getvalue())
    assert report["kills"] >= KILLS_PER_BACKEND * 0.8, out.getvalue()
    assert report["violations"] == 0, out.getvalue()
