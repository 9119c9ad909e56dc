# The two commands of the contract: `make demo` and `make test`. Both set up .venv first.
SHELL := /bin/bash
# Keras 2 (tf_keras) for TFT/TFMA: must be in the environment before any Python process starts.
export TF_USE_LEGACY_KERAS := 1
export PYTHONPATH := $(CURDIR)
export PYTHONUNBUFFERED := 1
PY := .venv/bin/python
PYTEST_ARGS ?=

.PHONY: setup demo test test-fast serve lock clean

setup:
	@scripts/setup_env.sh

demo: setup
	$(PY) -m pipelines run --score-rows 5 $(ARGS)

test: setup
	$(PY) -m pytest $(PYTEST_ARGS) tests

test-fast: setup
	$(PY) -m pytest -m "not e2e" $(PYTEST_ARGS) tests

serve: setup
	$(PY) -m serving.local_server $(ARGS)

clean:
	rm -rf output .pytest_cache
