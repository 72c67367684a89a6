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

# Two pytest workers (pytest-xdist), each with its own Spark session; a test file stays on one
# worker, so its module fixtures (and a file's shared server) are built once.
# The report tests open pages in Debian's headless chromium; install it when missing (as root, as
# on the CI machines; elsewhere the tests that need it skip and say why).
test: $(STAMP)
	command -v chromium >/dev/null 2>&1 || [ "$$(id -u)" != 0 ] || \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null 2>&1 || \
		{ DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null 2>&1 && \
		  DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null 2>&1; } || true
	$(BIN)/python -m pytest -q -n 2 --dist loadfile tests

bench: $(STAMP)
	$(BIN)/mmoe bench scoring
	$(BIN)/mmoe bench evaluation
	$(BIN)/mmoe bench validation

clean:
	rm -rf $(VENV) warehouse artifacts spark-warehouse
