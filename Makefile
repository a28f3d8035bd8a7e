# Two commands a newcomer needs: `make demo` (set up + run the demo) and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup demo test test-fast bench clean

# torch is installed first and pinned (CPU build on local disk) so pip never resolves a CUDA build.
$(BIN)/.medweave-installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

setup: $(BIN)/.medweave-installed

demo: setup
	$(BIN)/medweave demo --out demo-out

test: setup
	$(BIN)/python -m pytest -q

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow"

bench: setup
	$(BIN)/python benchmarks/ingest.py

clean:
	rm -rf demo-out .pytest_cache
