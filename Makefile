# Two commands on a fresh machine: `make bench` and `make test` (see README.md).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PROFILE ?= default
ARGS ?=
# Data: an explicit DATA_DIR, else ../shared/data when it exists (the offline copies next to
# this checkout), else unset: the default user cache dir, downloading where there is internet.
DATA_DIR ?= $(if $(wildcard ../shared/data/README.md),$(abspath ../shared/data),)
ifneq ($(DATA_DIR),)
export SQUEEZEBENCH_DATA_DIR := $(DATA_DIR)
endif

.PHONY: bench test venv report clean-venv
venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade --quiet pip
	$(BIN)/python -m pip install --quiet -e .
	touch $@

bench: venv
	$(BIN)/python -m pytest bench/ --benchmark-autosave --sb-profile $(PROFILE) $(ARGS)

test: venv
	$(BIN)/python -m pytest tests/ $(ARGS)

report: venv
	$(BIN)/python -m reports markdown

clean-venv:
	rm -rf $(VENV)
