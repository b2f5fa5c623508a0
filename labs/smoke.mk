# The VM lab's runs; included by the top-level Makefile (after labs/lab.mk,
# whose lab-deps and LAB_RELEASES they use; the Makefile's venv target gives
# molecule and python-vagrant). Both run labs/run.py (python3 -m labs.run):
# the collection staged into build/lab/collections (collection/stage.py,
# restaged only when a source changed; apart from make molecule's and make
# demo's build/collections), then per release, the box (labs/boxes.py,
# cached by recipe hash), then `molecule test -s lab` (a vagrant-libvirt VM
# with loopback-only SSH;
# node_storage makes the release's filesystems on its data disks, the
# snapshot module declares a chain on each, the conformance suite runs in the
# VM, idempotence, testinfra, destroy), one VM at a time, keeping going when
# a release fails; then one merged report (conformance.report, with
# labs/known-failures.yml) and a check that the host is left as found.
#
#   make lab-smoke     one cell: bookworm with kernel ZFS (native, overlay and
#                      zfs backends on a zfs pool on the VM's disk); `make
#                      test` runs it alongside the host tests (Makefile)
#   make lab           every release x every filesystem of labs/matrix.yml
#   ... REPEAT=N       each case N times: pass rates and flaky cases
#   make lab-report    merge the results already under $(LAB_REPORTS) (CI)
#
# Results: <reports>/<release>/{results.json,junit.xml,pytest-output.txt,
# molecule.log,timings.txt}, <reports>/report.{md,html}, <reports>/timings.txt,
# <reports>-history.json (the last 10 reports' outcomes per cell).
# Exit status: nonzero if a case failed unexpectedly or regressed, a release
# could not run or the host was not left clean.

LAB_SMOKE_RELEASE ?= bookworm
LAB_SMOKE_FILESYSTEMS ?= zfs
# TCG runs the suite ~10x slower than the host: a selection of the cases
# that still covers every backend x filesystem (basic lifecycle, usage, and
# the refusals of backends on filesystems they do not support).
LAB_SMOKE_K ?= basic or usage or refuses
LAB_SMOKE_REPORTS ?= $(or $(REPORTS),reports)/lab-smoke
# make lab: the same selection on every release and filesystem (it covers
# every backend x filesystem cell; the whole suite is several times longer
# under TCG, see README, Labs); LAB_K= runs every case.
LAB_K ?= basic or usage or refuses
LAB_REPORTS ?= $(or $(REPORTS),reports)/lab
LAB_VENV ?= $(or $(VENV),.venv)
LAB_KNOWN_FAILURES ?= labs/known-failures.yml
# make lab REPEAT=3: each case runs 3 times in the VM (the suite's --repeat);
# the report gives pass rates and lists the flaky cases. Both keep a history
# beside their reports (<reports>-history.json) that tells a case newly
# failing (a regression) from one failing sometimes.
LAB_REPEAT ?= $(or $(REPEAT),1)

.PHONY: lab-smoke lab lab-report

lab-smoke: lab-deps venv
	$(LAB_VENV)/bin/python -m labs.run run --releases $(LAB_SMOKE_RELEASE) \
	  --filesystems '$(LAB_SMOKE_FILESYSTEMS)' -k '$(LAB_SMOKE_K)' --repeat $(LAB_REPEAT) \
	  --known-failures $(LAB_KNOWN_FAILURES) --reports $(LAB_SMOKE_REPORTS)

lab: lab-deps venv
	$(LAB_VENV)/bin/python -m labs.run run --releases $(LAB_RELEASES) \
	  -k '$(LAB_K)' --repeat $(LAB_REPEAT) --known-failures $(LAB_KNOWN_FAILURES) \
	  --reports $(LAB_REPORTS)

lab-report: venv
	$(LAB_VENV)/bin/python -m labs.run report $(LAB_REPORTS) --known-failures $(LAB_KNOWN_FAILURES)
