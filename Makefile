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

.PHONY: bench test gate ab venv report clean-venv
venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade --quiet pip
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $@

bench: venv
	$(BIN)/python -m pytest bench/ --benchmark-autosave --sb-profile $(PROFILE) $(ARGS)

test: venv
	$(BIN)/python -m pytest tests/ $(ARGS)

# CI gate, part 1: the quick profile against the committed reference history, for what is
# deterministic on CPU: top-1, sizes, validity, the int8 share, and numbers turning unavailable.
# Latency is not compared with a history from another run of another day (--latency off): part 2
# (`make ab`) measures it against the previous commit on this machine in the same job.
GATE_OUT ?= .ci/out/quick.json
gate: venv
	mkdir -p $(dir $(GATE_OUT))
	$(BIN)/python -m pytest bench/ --sb-profile quick -q -p no:cacheprovider --benchmark-json=$(GATE_OUT) \
		--sb-min-time 0.5 --sb-energy-window 0.2
	$(BIN)/python -m reports compare .ci/reference/quick.json $(GATE_OUT) --latency off --config pyproject.toml

# CI gate, part 2: latency, A/B on one machine: the previous commit (AB_BASE=<rev> to choose) and
# this checkout run the records of .ci/ab_args interleaved; the statistical gate of
# [tool.squeezebench.gate] judges them (README: "The latency gate").
ab: venv
	bash .ci/ab

report: venv
	$(BIN)/python -m reports markdown

clean-venv:
	rm -rf $(VENV)
