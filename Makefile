# `make demo` and `make test` set everything up on a fresh machine: a .venv with the pinned
# dependencies (requirements.lock) and the project installed editable. The install re-runs only
# when pyproject.toml or requirements.lock change.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: install demo test bench clean

install: $(STAMP)

$(STAMP): pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements.lock
	$(BIN)/python -m pip install -q --no-deps --no-build-isolation -e .
	$(BIN)/python -m pip check
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/mmoe demo

test: $(STAMP)
	$(BIN)/python -m pytest -q tests

bench: $(STAMP)
	$(BIN)/mmoe bench scoring
	$(BIN)/mmoe bench evaluation
	$(BIN)/mmoe bench validation

clean:
	rm -rf $(VENV) warehouse artifacts spark-warehouse
