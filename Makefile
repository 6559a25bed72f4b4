# Set-up, tests and demos for dsg_ros. Everything lives in ./.venv, built from
# the package registries on first use; later runs reuse it (stamp file).
#
#   make demo    create/reuse .venv, install, run the mapping node and the
#                simulator publisher over DDS for 60 s, print the summary
#   make lint    create/reuse .venv, install, run ruff and mypy (pyproject.toml)
#   make test    create/reuse .venv, install, lint, run the test suite (what CI runs)
#   make bench   solver, mapping and node benches (GTSAM as the solver reference),
#                and the fuzz tests with ten times the examples (HYPOTHESIS_PROFILE=long)

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
EXTRAS ?= ros,plots,bench,test

# Quieter, non-interactive pip in CI logs.
PIP_FLAGS := $(if $(CI),--progress-bar off,)

# Tests that open DDS keep discovery on this host (each test also picks its
# own ROS_DOMAIN_ID); plots render off-screen.
export ROS_AUTOMATIC_DISCOVERY_RANGE ?= LOCALHOST
export MPLBACKEND ?= Agg

.PHONY: venv install lint test demo bench clean distclean

venv: $(BIN)/python

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install $(PIP_FLAGS) --upgrade pip

install: $(STAMP)

# Editable install: code edits need no reinstall; only packaging changes
# (these prerequisites) trigger one.
$(STAMP): setup.py setup.cfg package.xml Makefile | $(BIN)/python
	$(BIN)/python -m pip install $(PIP_FLAGS) -e '.[$(EXTRAS)]'
	touch $@

lint: install
	$(BIN)/ruff check .
	$(BIN)/mypy

test: lint
	$(BIN)/python -m pytest -q test

demo: install
	$(BIN)/dsg-ros demo

bench: install
	$(BIN)/dsg-ros bench core
	$(BIN)/dsg-ros bench mapping
	$(BIN)/dsg-ros bench node
	HYPOTHESIS_PROFILE=long $(BIN)/python -m pytest -q test/test_fuzz_*.py

clean:
	rm -rf build install log *.egg-info .pytest_cache .mypy_cache .ruff_cache .hypothesis $(STAMP)
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV)
