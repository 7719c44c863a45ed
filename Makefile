# The two commands: `make run` and `make test` (`make check` is the fast tier). All create .venv when it is missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test
CONFORMANCE_STAMP := $(VENV)/.installed-conformance

.PHONY: run test check lint conformance conformance-registry install clean system-deps docs

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip setuptools wheel

$(STAMP): $(BIN)/python setup.cfg pyproject.toml
	$(BIN)/pip install -q -e .
	touch $@

$(TEST_STAMP): $(STAMP)
	$(BIN)/pip install -q -e '.[test]'
	touch $@

$(CONFORMANCE_STAMP): $(STAMP)
	$(BIN)/pip install -q -e '.[test,conformance]'
	touch $@

install: $(STAMP)

# As root with Podman, images go to var/images (root's; runs see it read-only), into which the
# service pulls what published workflows name from allowed_registries: without a store it
# could run only images an admin loaded by hand.
run: $(STAMP)
	@scripts/system-deps run
	mkdir -p var
	@if [ "$$(id -u)" = 0 ] && [ -z "$${WES_GATEWAY_IMAGE_STORE+set}" ] && command -v podman >/dev/null; then \
		mkdir -p var/images; export WES_GATEWAY_IMAGE_STORE=$(CURDIR)/var/images; fi; \
	WES_GATEWAY_DATA_DIR=$${WES_GATEWAY_DATA_DIR:-$(CURDIR)/var} exec $(BIN)/gunicorn -c gunicorn.conf.py

system-deps:
	@scripts/system-deps

# The guards: lint, formatting and strict typing, with no findings allowed.
lint: $(TEST_STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# The fast tier: lint, types and the in-process tests (tests/fast: no Gunicorn, no Toil
# leader), in under a minute. Run it after every edit.
check: $(TEST_STAMP) lint
	$(BIN)/python -m pytest -q -p no:cacheprovider tests/fast

# Both tiers: the fast one, then end to end (tests/e2e: real Gunicorn, supervisor, Toil,
# Podman, PostgreSQL, Apache, Slurm). Run it before you stop. It needs the conformance extra
# too: tests/e2e/test_registry_conformance.py runs cwltest through toil-wes-cwl-runner.
test: $(TEST_STAMP) $(CONFORMANCE_STAMP) system-deps check
	$(BIN)/python -m pytest tests/e2e $(PYTEST_ARGS)

# The CWL v1.2 conformance suite through the gateway with toil-wes-cwl-runner.
# TAGS=required (default) or TAGS=all; CWL_SUITE=../shared/cwl-v1.2 by default.
conformance: $(CONFORMANCE_STAMP)
	@scripts/system-deps conformance
	$(BIN)/python scripts/conformance.py

# The suite's `docker` tests with every image pulled by the service from a loopback registry
# (standing in for Docker Hub through registry_mirrors) into an empty store (issue 35).
conformance-registry: $(CONFORMANCE_STAMP)
	@scripts/system-deps
	$(BIN)/python scripts/conformance.py --registry --tags docker

# docs/configuration.md from the Settings model (tests/fast/test_docs.py fails while it is stale).
docs: $(STAMP)
	$(BIN)/python scripts/config-doc --write

clean:
	rm -rf $(VENV) var .pytest_cache
