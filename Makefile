# Two commands do all the set-up on a fresh machine:
#   make demo   - virtual environment, install, data, then BP / FA / DFA on real MNIST with a results table
#   make test   - the same set-up, then the test suite (fast tests; `make test-slow` for the slow ones)
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
# Use the genuine datasets beside the repository when they are there; otherwise bioprop fetches them.
SHARED_DATA := $(wildcard ../shared/data/mnist)
export BIOPROP_DATA ?= $(if $(SHARED_DATA),$(abspath ../shared/data),)
EPOCHS ?= 3

.PHONY: install demo test test-slow bench clean

# setuptools>=77 builds the editable install (--no-build-isolation: the one in the venv, not a download)
$(BIN)/bioprop: requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip "setuptools>=77"
	$(BIN)/pip install --quiet -r requirements.txt
	$(BIN)/pip install --quiet --no-deps --no-build-isolation -e .
	touch $(BIN)/bioprop

install: $(BIN)/bioprop

demo: install
	$(BIN)/bioprop data fetch mnist
	$(BIN)/python examples/demo.py --epochs $(EPOCHS)
	@echo "bioprop is installed in $(VENV): run $(BIN)/bioprop --help, or 'source $(BIN)/activate' first and then bioprop --help"

# The real-data tests use MNIST and Fashion-MNIST (found, or fetched into the cache). Without
# network access the fetch fails: the suite still runs, and those tests are skipped saying why.
test: install
	$(BIN)/bioprop data fetch mnist || echo "make test: no MNIST (see above): the tests that need it will be skipped"
	$(BIN)/bioprop data fetch fashion-mnist || echo "make test: no Fashion-MNIST (see above): the tests that need it will be skipped"
	$(BIN)/python -m pytest -q

test-slow: install
	$(BIN)/python -m pytest -q -m slow

bench: install
	$(BIN)/python bench/bench_lc.py
	$(BIN)/python bench/bench_rules.py

clean:
	rm -rf $(VENV) runs/demo
