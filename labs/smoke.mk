# The lab's smoke test: one cell of the matrix through the whole Vagrant +
# Molecule path. Included by the top-level Makefile (after labs/lab.mk,
# whose lab-deps it uses; the Makefile's venv target gives molecule and
# python-vagrant).
#
#   make lab-smoke [LAB_SMOKE_RELEASE=bookworm] [LAB_SMOKE_K='basic or usage or refuses']
#
# Steps: host packages (lab-deps), the box (labs/boxes.py; cached, ~6 min
# from scratch), the staged collection, then `molecule test -s lab` for the
# release: a VM with kernel OpenZFS from the box, node_storage makes ext4,
# xfs, xfs without ftype, btrfs and a zfs pool on its data disks, the suite
# runs a selection of cases (-k) on them, idempotence, testinfra, destroy.
# Results: $(LAB_SMOKE_REPORTS)/<release>/{results.json,junit.xml,pytest-output.txt}
# and $(LAB_SMOKE_REPORTS)/report.{md,html}; step times in timings.txt.
#
# Whatever happens (a failed step, Ctrl-C, SIGTERM), the lab is taken down
# at the end (labs/vagrant.py down: the VM, libvirt's domains and volumes of
# the lab, the pool if this run defined it, the box it added to Vagrant, the
# daemons it started), and the host is checked: no lab domain, volume, qemu
# process or active libvirt network left.

LAB_PYTHON ?= /usr/bin/python3
LAB_SMOKE_RELEASE ?= bookworm
# TCG runs the suite ~10x slower than the host: a selection of the cases
# that still covers every backend x filesystem (basic lifecycle, usage, and
# the refusals of backends on filesystems they do not support).
LAB_SMOKE_K ?= basic or usage or refuses
LAB_SMOKE_REPORTS ?= $(or $(REPORTS),reports)/lab-smoke
LAB_RUN_DIR ?= $(abspath build/lab)
LAB_VENV ?= $(or $(VENV),.venv)

.PHONY: lab-smoke

lab-smoke: lab-deps venv
	@set -uo pipefail; \
	start=$$(date +%s); last=$$start; rc=0; \
	reports=$(abspath $(LAB_SMOKE_REPORTS)); venv=$(abspath $(LAB_VENV)); \
	export PATH="$$venv/bin:$$PATH" LAB_RUN_DIR=$(LAB_RUN_DIR) LAB_RELEASE=$(LAB_SMOKE_RELEASE) \
	       LAB_PYTEST_K='$(LAB_SMOKE_K)' LAB_RESULTS_DIR="$$reports"; \
	step() { now=$$(date +%s); \
	  if [ -n "$${current:-}" ]; then \
	    printf '%-34s %5d s\n' "$$current" $$((now - last)) >> "$$reports/timings.txt"; fi; \
	  current="$$1"; last=$$now; \
	  echo "== lab-smoke [$$((now - start)) s] $$1"; }; \
	finish() { trap - EXIT INT TERM HUP; \
	  step "take the lab down (safety net)"; \
	  "$$venv/bin/python" -m labs.vagrant down || rc=1; \
	  step "check the host is clean"; \
	  left="$$(virsh -q -c qemu:///system list --all --name 2>/dev/null | grep '^snaplab-lab-'; \
	          virsh -q -c qemu:///system vol-list default 2>/dev/null | grep -E 'snaplab-(lab-|VAGRANTSLASH-)'; \
	          virsh -q -c qemu:///system net-list --name 2>/dev/null | sed 's/^/active network /'; \
	          pgrep -af 'qemu-system.*guest=snaplab-lab-')"; \
	  if [ -n "$$left" ]; then echo "LEFT BEHIND:"; echo "$$left"; rc=1; fi; \
	  "$$venv/bin/python" -m labs.libvirt report; \
	  echo "qemu processes: $$(pgrep -c qemu-system || true)"; \
	  step "done"; \
	  echo "== lab-smoke: $$([ $$rc -eq 0 ] && echo passed || echo FAILED) in $$(( $$(date +%s) - start )) s (step times: $$reports/timings.txt)"; \
	  exit $$rc; }; \
	trap finish EXIT; trap 'rc=130; exit 130' INT TERM HUP; \
	rm -rf "$$reports"; mkdir -p "$$reports"; \
	step "box $(LAB_SMOKE_RELEASE) (labs/boxes.py, cached)"; \
	$(LAB_PYTHON) labs/boxes.py build $(LAB_SMOKE_RELEASE) || { rc=1; exit 1; }; \
	step "stage the collection"; \
	rm -rf build/lab/collections && "$$venv/bin/python" collection/stage.py build/lab/collections >/dev/null || { rc=1; exit 1; }; \
	step "molecule test -s lab ($(LAB_SMOKE_RELEASE))"; \
	NO_COLOR=1 COLUMNS=200 molecule test -s lab 2>&1 | tee "$$reports/molecule.log" | \
	while IFS= read -r line; do \
	  printf '%s\n' "$$line"; \
	  case "$$line" in \
	    *"[lab > "*"] Executing") printf -v t0 '%(%s)T' -1 ;; \
	    *"[lab > "*"] Executed"*) printf -v t1 '%(%s)T' -1; action="$${line#*\[lab > }"; \
	      printf '  %-32s %5d s\n' "molecule $${action%%]*}" $$((t1 - $${t0:-t1})) >> "$$reports/timings.txt" ;; \
	  esac; \
	done; \
	[ $${PIPESTATUS[0]} -eq 0 ] || rc=1; \
	step "report (python3 -m conformance.report)"; \
	if [ -f "$$reports/$(LAB_SMOKE_RELEASE)/results.json" ]; then \
	  "$$venv/bin/python" -c 'import collections, datetime, json, sys; \
	    d = json.load(open(sys.argv[1])); p = lambda t: datetime.datetime.strptime(t, "%Y-%m-%dT%H:%M:%SZ"); \
	    n = collections.Counter(r["outcome"] for r in d["results"]); \
	    print("  suite in the VM (%s, %s) %5d s: %s" % (d["run"]["kernel"], d["run"]["distro"], \
	      (p(d["run"]["finished"]) - p(d["run"]["started"])).total_seconds(), \
	      ", ".join("%d %s" % (v, k) for k, v in sorted(n.items()))))' \
	    "$$reports/$(LAB_SMOKE_RELEASE)/results.json" | tee -a "$$reports/timings.txt"; \
	  "$$venv/bin/python" -m conformance.report "$$reports/$(LAB_SMOKE_RELEASE)/results.json" \
	    --markdown "$$reports/report.md" --html "$$reports/report.html" >/dev/null; \
	  [ $$? -le 1 ] || rc=1; \
	  cat "$$reports/report.md"; \
	else echo "no results were fetched"; rc=1; fi
