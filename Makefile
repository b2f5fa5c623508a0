# snaplab — the front door. Every target installs what it needs itself
# (Debian packages, and a venv with the pinned Python packages).

SHELL := /bin/bash
PYTHON_SYSTEM ?= /usr/bin/python3
VENV ?= .venv
PY := $(VENV)/bin/python
REPORTS ?= reports
# golang-go and stargz's sources: the suite builds containerd-stargz-grpc,
# which Debian's stargz-snapshotter package does not ship (conformance/stargz.py).
APT_PACKAGES := python3 python3-venv python3-pytest e2fsprogs xfsprogs btrfs-progs util-linux mount attr zstd erofs-utils \
	containerd golang-go golang-github-containerd-stargz-snapshotter-dev
# ZFS for the zfs backend: OpenZFS's tools where the kernel has the module,
# else zfs-fuse (a daemon; the kernel needs only FUSE). Both are in contrib.
ZFS_PACKAGE := $(if $(wildcard /sys/module/zfs),zfsutils-linux,zfs-fuse)
CONTRIB_PACKAGES := $(ZFS_PACKAGE)
# Keep one test from hanging CI forever; the slowest case (128 layers on
# zfs-fuse) takes about 1 min.
PYTEST_TIMEOUT ?= 900

.PHONY: all deps apt venv test test-host pytest sanity lint units molecule collection demo bench bench-check clean leaks \
	torture staged-collections

all: test

## Debian's contrib component is enabled (Components lines and `deb` lines
## of Debian's own archives that name main get contrib) only when a contrib
## package is missing; nothing else in the apt sources changes.
apt:
	@missing=""; for p in $(APT_PACKAGES) $(CONTRIB_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  for f in /etc/apt/sources.list.d/debian.sources /etc/apt/sources.list; do \
	    [ -f $$f ] || continue; \
	    perl -pi -e 's/^(Components:(?!.*\bcontrib\b).*\bmain\b.*?)\s*$$/$$1 contrib\n/; \
	                 s{^(deb(?:-src)?\s(?!.*\bcontrib\b)(?:\[[^\]]*\]\s+)?\S+/debian(?:-security)?/?\s.*\bmain\b.*?)\s*$$}{$$1 contrib\n}' $$f; \
	  done; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi

$(VENV)/.installed: requirements.txt pyproject.toml
	$(PYTHON_SYSTEM) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements.txt
	$(PY) -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
	$(PY) -m snaplab_grpc.stubs
	touch $@

venv: $(VENV)/.installed

deps: apt venv

## make test: every test — unit and integration tests (real mounts, real
## ansible-playbook runs), the whole conformance suite over native, overlay,
## btrfs, zfs (and aufs, reported as not runnable) and containerd's own
## snapshotter plugins (a private containerd per filesystem; known
## differences: conformance/known-differences.yml) on loop ext4, xfs, btrfs,
## zfs (a pool on a loop file; zfs-fuse where the kernel has no zfs), a
## filesystem without d_type and a host directory, ansible-test sanity and
## units and ansible-lint's production profile on the staged collection, the
## changelog's fragments, and Molecule (`make test-host`: all of
## that) and, alongside it, `make lab-smoke`: the bookworm box (built when
## the cache lacks it) and one VM running the suite on kernel ZFS.
##
## tests/lanes.py runs the two lanes and says how: the lab's niced and a
## session of its own (Ctrl-C reaches it as the SIGTERM labs.run needs to
## take its VM down), the host tests in a mount namespace of their own (the
## box build has another, labs/boxes.py) so that libvirt's qemu does not
## copy their mounts; its exit status is 0 only if both lanes passed.
LAB_SMOKE_LOG ?= $(REPORTS)/lab-smoke.log
test: deps lab-deps
	@$(PY) -m tests.lanes --log $(LAB_SMOKE_LOG) \
	  --host 'make test-host' '$(MAKE) --no-print-directory test-host' \
	  --lab 'make lab-smoke' '$(MAKE) --no-print-directory lab-smoke'
	$(MAKE) --no-print-directory leaks

## make test-host: the tests on this machine only (no VM), then the leak
## check (in the same mount namespace, so it sees the tests' mounts).
test-host: deps
	$(MAKE) --no-print-directory pytest sanity lint units molecule
	$(MAKE) --no-print-directory leaks

pytest: deps
	mkdir -p $(REPORTS)
	PATH=$(abspath $(VENV))/bin:$$PATH $(PY) -m pytest --timeout=$(PYTEST_TIMEOUT) tests conformance \
	  --junitxml=$(REPORTS)/test-junit.xml --results-json=$(REPORTS)/test-results.json
	$(PY) -m conformance.report --known-failures conformance/known-differences.yml \
	  --markdown $(REPORTS)/test-report.md --html $(REPORTS)/test-report.html \
	  $(REPORTS)/test-results.json > /dev/null
	@echo "conformance matrix (snaplab's and containerd's rows): $(REPORTS)/test-report.md, .html"

## The collection is assembled (staged) from galaxy.yml, collection/, roles/
## and a copy of the core into $(STAGED_COLLECTIONS), which molecule, demo and
## the collection's tarball use. collection/stage.py restages it only when
## something it is made from changed, and swaps the new tree in whole (a
## playbook reading it never sees half of one). ansible-test runs on a copy
## outside the repository (collection/ansible_test.sh); the lab stages its own
## (build/lab/collections, labs/run.py), which a restaging here cannot touch
## while a VM runs.
STAGED_COLLECTIONS := build/collections
staged-collections: venv
	$(PY) collection/stage.py $(STAGED_COLLECTIONS)

collection: deps staged-collections
	$(VENV)/bin/ansible-galaxy collection build \
	  $(STAGED_COLLECTIONS)/ansible_collections/snaplab/snapshots --output-path build --force

## make wheels: snaplab and its suite as two wheels, in $(WHEELS): snaplab
## (snaplab, snaplab_grpc with its .proto files and the stubs generated here;
## no dependencies, the extra `grpc`) and snaplab-conformance (the suite and
## its data files; snaplab[grpc] of the same version, pytest, PyYAML; the
## command snaplab-conformance). Each is built from a copy in $(WHEELS_SRC)
## holding only its packages: the checkout's pyproject.toml also lists
## conformance (for `make venv`), and the suite's pyproject.toml is
## conformance/pyproject.suite.toml given the version of pyproject.toml.
WHEELS ?= build/wheels
WHEELS_SRC ?= build/wheels-src
.PHONY: wheels
wheels: venv
	rm -rf $(WHEELS) $(WHEELS_SRC)
	mkdir -p $(WHEELS) $(WHEELS_SRC)/snaplab $(WHEELS_SRC)/suite
	cp -r pyproject.toml snaplab snaplab_grpc $(WHEELS_SRC)/snaplab/
	rm -rf $(WHEELS_SRC)/snaplab/snaplab_grpc/_generated
	cd $(WHEELS_SRC)/snaplab && PYTHONDONTWRITEBYTECODE=1 $(abspath $(PY)) -m snaplab_grpc.stubs
	cp -r conformance $(WHEELS_SRC)/suite/
	version=$$($(PY) -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])') && \
	  sed "s/@VERSION@/$$version/g" conformance/pyproject.suite.toml > $(WHEELS_SRC)/suite/pyproject.toml
	for project in snaplab suite; do \
	  $(PY) -m pip wheel -q --no-deps --no-build-isolation -w $(WHEELS) $(WHEELS_SRC)/$$project || exit 1; \
	done
	@ls -l $(WHEELS)

sanity: deps
	PATH=$(abspath $(VENV))/bin:$$PATH collection/ansible_test.sh sanity

## make lint: antsibull-changelog lint (changelogs/), then ansible-lint
## --profile production, nothing skipped, on a staged copy of the collection
## outside the repository and on the Molecule scenarios
## (collection/ansible_lint.sh).
lint: deps
	PATH=$(abspath $(VENV))/bin:$$PATH collection/ansible_lint.sh

units: deps
	PATH=$(abspath $(VENV))/bin:$$PATH collection/ansible_test.sh units

molecule: deps staged-collections
	PATH=$(abspath $(VENV))/bin:$$PATH ANSIBLE_COLLECTIONS_PATH=$(abspath $(STAGED_COLLECTIONS)) \
	  $(VENV)/bin/molecule test -s default

## make demo: the main job, through the collection: node_storage makes
## loop-backed ext4, xfs, btrfs and ext4-without-d_type, the conformance role
## runs the suite for native and overlay on them (and a host directory) and
## renders the matrix; node_storage then takes the filesystems down.
DEMO_WORKSPACE ?= /var/tmp/snaplab-demo
DEMO_PLAYBOOK = ANSIBLE_COLLECTIONS_PATH=$(abspath $(STAGED_COLLECTIONS)) \
	ANSIBLE_PYTHON_INTERPRETER=/usr/bin/python3 \
	$(VENV)/bin/ansible-playbook -i localhost, -c local snaplab.snapshots.demo \
	-e demo_workspace=$(DEMO_WORKSPACE) -e demo_results=$(abspath $(REPORTS))/conformance
demo: deps staged-collections
	mkdir -p $(REPORTS)
	rm -rf $(REPORTS)/conformance
	$(DEMO_PLAYBOOK) || { $(DEMO_PLAYBOOK) -e demo_teardown_only=true; exit 1; }
	@echo
	@cat $(REPORTS)/conformance/report.md
	@echo
	@echo "report: $(REPORTS)/conformance/report.md and report.html;" \
	      "per host: $(REPORTS)/conformance/localhost/{results.json,junit.xml,pytest-output.txt}"
	$(MAKE) --no-print-directory leaks

## make bench: latency of the core operations, btrfs ioctls against
## btrfs-progs, the storage cost of 100 snapshots per backend, apply-layer
## against tar -x and Usage against du, snaplab (in-process and served)
## against containerd's own snapshotters over gRPC, and the container-start
## path (ctr and containerd's API, snaplab as proxy plugin against
## overlayfs). Each also writes its figures as JSON to $(BENCH_JSON)
## (benchmarks/benchjson.py's format: ratios against the peer of the same
## run). Not tests.
BENCH_JSON ?= $(REPORTS)/bench
bench: deps
	mkdir -p $(BENCH_JSON)
	$(PY) benchmarks/bench_latency.py --json $(BENCH_JSON)/bench_latency.json
	$(PY) benchmarks/bench_latency.py --backends native,overlay,btrfs --filesystem btrfs --ops 300 \
	  --json $(BENCH_JSON)/bench_latency-btrfs.json
	$(PY) benchmarks/bench_btrfs_ioctl.py --json $(BENCH_JSON)/bench_btrfs_ioctl.json
	$(PY) benchmarks/bench_storage_cost.py --json $(BENCH_JSON)/bench_storage_cost.json
	$(PY) benchmarks/bench_remap.py --json $(BENCH_JSON)/bench_remap.json
	PATH=$(abspath $(VENV))/bin:$$PATH $(PY) benchmarks/bench_declare.py \
	  --json $(BENCH_JSON)/bench_declare.json
	$(PY) benchmarks/bench_apply_usage.py --json $(BENCH_JSON)/bench_apply_usage.json
	$(PY) benchmarks/bench_containerd.py --json $(BENCH_JSON)/bench_containerd.json
	$(PY) benchmarks/bench_ctr.py --json $(BENCH_JSON)/bench_ctr.json
	$(PY) benchmarks/bench_serve_floor.py --json $(BENCH_JSON)/bench_serve_floor.json

## make bench-check: the quick benchmarks (small --ops), BENCH_REPEAT times
## each, interleaved; fails when the median of a ratio regressed against
## benchmarks/baseline.json by more than that row's tolerance, and names the
## row (benchmarks/bench_check.py; --write-baseline NOTE writes a new
## baseline). About 2 minutes with BENCH_REPEAT=3; not part of `make test`.
BENCH_REPEAT ?= 3
bench-check: deps
	PATH=$(abspath $(VENV))/bin:$$PATH $(PY) benchmarks/bench_check.py --repeat $(BENCH_REPEAT)

## make torture: crash injection and concurrency (tests/torture/run.py). Each
## mutating verb (prepare, view, commit, rm, label, cleanup, apply-layer,
## apply-layers) runs in a child that is SIGKILLed at named crash points
## (snaplab/faults.py) and after random delays, at least 1,000 kills over
## native and overlay (loop ext4), btrfs (loop btrfs) and zfs (a zfs-fuse
## pool), each followed by the invariant checks without a manual cleanup
## first; then 8 processes x 500 mixed verbs on one root per backend. Prints
## kills, named points hit and violations per backend and verb, and the
## times; $(REPORTS)/torture.json. TORTURE_ARGS adds options (--seed S...).
## Then the stateful model test (tests/model) with MODEL_EXAMPLES sequences per
## backend (5 backends: 10,000 sequences; `make test` runs 200 per backend).
TORTURE_ARGS ?=
MODEL_EXAMPLES ?= 2000
torture: deps
	mkdir -p $(REPORTS)
	PATH=$(abspath $(VENV))/bin:$$PATH $(PY) -m tests.torture.run --kills 1000 \
	  --concurrency-ops 500 --report $(REPORTS)/torture.json $(TORTURE_ARGS)
	PATH=$(abspath $(VENV))/bin:$$PATH SNAPLAB_MODEL_EXAMPLES=$(MODEL_EXAMPLES) \
	  $(PY) -m pytest -q --timeout=0 -p no:cacheprovider tests/model/test_stateful.py \
	  --junitxml=$(REPORTS)/model-junit.xml

## make leaks: fail if a run left a snaplab mount, loop device, zpool,
## zfs-fuse daemon, containerd or snaplab serve behind (conformance/leaks.py
## says which are ours). Run in the namespace of the runs it checks.
leaks: venv
	@$(PY) -m conformance.leaks

clean:
	rm -rf $(VENV) $(REPORTS) .pytest_cache build *.egg-info

# The VM lab: boxes (labs/lab.mk) and the runs through Vagrant + Molecule
# (labs/smoke.mk): `make lab` (every release), `make lab-smoke` (one cell,
# part of `make test`).
include labs/lab.mk
include labs/smoke.mk
