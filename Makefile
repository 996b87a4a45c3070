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

# Three pytest workers, one module each at a time (module fixtures, such as
# the one-machine Slurm or a finished run, are built once), longest modules
# first (tests/conftest.py orders them; xdist's own reorder would put the
# Slurm tests, few but long and mostly waiting on their jobs, last). Three
# on two cores: while the Slurm module waits on its jobs, two workers still
# compute (measured on the 2-core machine: -n 2 6 min 35 s, -n 3 5 min 53 s).
# XDIST= runs serially.
XDIST   ?= -n 3 --dist loadscope --no-loadscope-reorder

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
