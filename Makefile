# Front door; see README.md.
#   make up      bring the machines up and deploy the cluster (LXC lab where there is no VirtualBox)
#   make test    everything: lint, unit and plan tests, then the lab end to end (slow, needs root)
#   make check   the fast part of `make test` (no lab)
PY := .venv/bin/python

.PHONY: setup up down test check lint unit plan lab-test pki validate diagram bench bench-lab

setup:
	@scripts/setup

up: setup
	@scripts/up

down: setup
	@scripts/down

# Each part prints its duration (a fresh machine also builds every lab binary first: ~21 min).
test: setup
	@scripts/timed "lint, unit and plan tests" $(MAKE) --no-print-directory check
	@scripts/timed "lab set-up and artifact builds" sh -c 'scripts/setup --lab && lab/artifacts/build'
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
	$(PY) -m pytest -s tests/lab

validate: setup
	$(PY) -m kthw validate

pki: setup
	$(PY) -m kthw pki

diagram: setup
	$(PY) -m kthw diagram

bench: setup
	$(PY) bench/pki.py

bench-lab: setup
	@scripts/setup --lab
	$(PY) bench/lab_deploy.py
