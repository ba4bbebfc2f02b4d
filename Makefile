# Front door; see README.md.
#   make up      bring the machines up and deploy the cluster (LXC lab where there is no VirtualBox)
#   make test    everything: lint, unit and plan tests, then the lab end to end (slow, needs root)
#   make check   the fast part of `make test` (no lab)
#   make lab-test-day-two  the slow day-two lab tests (CA rotation, nodes added and removed, upgrade)
#   make lab-test-large    the lab's 16-node topology: the cluster's tests, pod network across every pair
#   make conformance  Kubernetes' own conformance suite, all of it, on the lab's reference cluster
PY := .venv/bin/python

.PHONY: setup up down test check lint unit plan lab-test lab-test-day-two lab-test-large conformance pki validate diagram bench bench-lab bench-plan

setup:
	@scripts/setup

up: setup
	@scripts/up

down: setup
	@scripts/down

# Each part prints its duration (a fresh machine also builds every lab binary first: ~21 min).
test: setup
	@scripts/timed "lint, unit and plan tests" $(MAKE) --no-print-directory check
	@scripts/timed "lab set-up and artifact builds" sh -c 'scripts/setup --lab && lab/artifacts/build && lab/artifacts/build conformance'
	@scripts/timed "lab end-to-end tests" $(MAKE) --no-print-directory lab-test

check: lint
	$(PY) -m pytest tests/unit tests/plan

lint: setup
	.venv/bin/ruff check .

unit: setup
	$(PY) -m pytest tests/unit

plan: setup
	$(PY) -m pytest tests/plan

lab-test: setup
	@scripts/setup --lab
	$(PY) -m pytest -s --durations=30 tests/lab -m "not day_two and not large" -k "not three-masters"

# The slow lab tests, kept out of `make test` (CI's budget): on the reference topology CA and
# encryption-key rotation, a worker and a master added and removed, a rolling upgrade to the next
# Kubernetes minor version (built first if needed), the scheduled etcd snapshots (every minute,
# fetched, restored), the failure drills (the load balancer away for three minutes, ...), the
# health drills; and the whole three-master topology: the cluster's tests, a master killed without
# notice, a fourth master added and removed.
lab-test-day-two: setup
	@scripts/setup --lab
	$(PY) -m pytest -s --durations=30 tests/lab -m "not large" -k "three-masters or (day_two and not bridge)"

# The 16-node topology (tests/lab/large.yaml: 3 masters, 12 workers, the load balancer): the
# cluster's own tests and the pod network across every pair of nodes (14 min on 2026-12-06).
lab-test-large: setup
	@scripts/setup --lab
	$(PY) -m pytest -s tests/lab -m large -k "test_cluster or test_pod_network"

# Every [Conformance] test of the cluster's Kubernetes version, offline, on the reference
# cluster (brought up and deployed first; a few hours). Results: .kthw/conformance/full/.
conformance: up
	lab/artifacts/build conformance
	KTHW_CLUSTER=$(CURDIR)/.kthw/lab/cluster.yaml $(PY) lab/conformance

validate: setup
	$(PY) -m kthw validate

pki: setup
	$(PY) -m kthw pki

diagram: setup
	$(PY) -m kthw diagram

bench: setup
	$(PY) bench/pki.py

# Planning cost on the @fake connector (no machine): operations per host, plan time and peak
# memory for 3 masters and 10 to 1,000 workers, fresh and converged (about 15 minutes).
bench-plan: setup
	$(PY) bench/plan.py

bench-lab: setup
	@scripts/setup --lab
	$(PY) bench/lab_deploy.py
	.venv/bin/pip install -q --disable-pip-version-check -r bench/requirements.txt
	$(PY) bench/plot_lab.py
