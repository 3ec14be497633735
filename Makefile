# The whole set-up on a fresh machine with only Python: `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
# Fake 8 host devices for mesh tests (correctness only; never benchmark with it).
TEST_XLA_FLAGS := --xla_force_host_platform_device_count=8
WORKDIR ?= runs/default

.PHONY: run test venv clean

venv: $(STAMP)

# (Re)install when the venv is missing or pyproject.toml changed since the last install.
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e '.[test]'
	@touch $(STAMP)

run: $(STAMP)
	$(BIN)/python -m launch.run --workdir=$(WORKDIR)

test: $(STAMP)
	XLA_FLAGS=$(TEST_XLA_FLAGS) JAX_PLATFORMS=cpu $(BIN)/python -m pytest -n 2 --durations=15 tests

clean:
	rm -rf $(VENV) runs build *.egg-info
