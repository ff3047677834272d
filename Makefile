# Two commands do everything on a fresh machine: `make demo` and `make test`.
# Both create .venv on first use (pip, the package in editable mode with its test extras),
# then reuse it: the stamp file is rebuilt only when pyproject.toml changes.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# The suite runs on two worker processes (pytest-xdist): CI has 2 cores and a 15-minute budget.

.PHONY: demo test lint bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test,bench]"
	touch $(STAMP)

demo: $(STAMP)
	$(PY) examples/seed_walkthrough.py

test: $(STAMP)
	$(PY) -m pytest -q -n 2

bench: $(STAMP)
	$(PY) -m benchmarks

lint: $(STAMP)
	$(VENV)/bin/ruff check jaxupdate tests benchmarks examples

clean:
	rm -rf $(VENV)
