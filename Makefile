# Front door. `make test` sets everything up and runs the tests; see README.md.
PY := .venv/bin/python

.PHONY: setup test lint unit pki validate diagram bench

setup:
	@scripts/setup

test: setup lint
	$(PY) -m pytest

lint: setup
	.venv/bin/ruff check .

unit: setup
	$(PY) -m pytest tests/unit

validate: setup
	$(PY) -m kthw validate

pki: setup
	$(PY) -m kthw pki

diagram: setup
	$(PY) -m kthw diagram

bench: setup
	$(PY) bench/pki.py
