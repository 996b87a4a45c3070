# hpcxt: `make demo` and `make test` each set up .venv first (idempotent).
PY      := .venv/bin/python
PYTEST  := .venv/bin/pytest
DEMO    ?= demo-out
NP      ?= 2

.PHONY: setup demo test test-fast bench clean-venv

setup:
	bash scripts/bootstrap.sh

demo: setup
	$(PY) -m hpcxt demo --outdir $(DEMO) --np $(NP)

# Serial by default (XDIST="-n 4 --dist loadgroup" runs four pytest workers;
# tests that share a Slurm or a finished run stay on one worker, but the
# Slurm chains then miss their wall-time windows on two cores).
XDIST   ?=

test:
	HPCXT_BOOTSTRAP_TEST=1 bash scripts/bootstrap.sh
	$(PYTEST) -q $(XDIST)

test-fast:
	HPCXT_BOOTSTRAP_TEST=1 bash scripts/bootstrap.sh
	$(PYTEST) -q $(XDIST) -m "not slow and not slurm"

bench: setup
	$(PY) benchmarks/prep.py
	$(PY) benchmarks/scalemap.py
	$(PY) benchmarks/fit.py
	$(PY) benchmarks/template_fit.py

clean-venv:
	rm -rf .venv
