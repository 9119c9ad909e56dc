# The two commands of the contract: `make demo` and `make test`. Both set up .venv first.
SHELL := /bin/bash
# Keras 2 (tf_keras) for TFT/TFMA: must be in the environment before any Python process starts.
export TF_USE_LEGACY_KERAS := 1
export PYTHONPATH := $(CURDIR)
export PYTHONUNBUFFERED := 1
PY := .venv/bin/python
PYTEST_ARGS ?=

.PHONY: setup demo test test-serial test-fast serve lock clean

setup:
	@scripts/setup_env.sh

demo: setup
	$(PY) -m pipelines run --score-rows 5 --target-sparsity 0.95 $(ARGS)

# The end-to-end (e2e) tests run beside the others: each is mostly single-threaded Beam/TFX work,
# so two pytest processes keep both cores busy (CI on a 2-core machine: ~32 min in series). The e2e
# marker also takes the longest training and benchmark runs, so that the two take about as long. Each has
# its own basetemp (one per checkout: two clones testing at once must not clear each other's);
# e2e lines are prefixed "[e2e]"; the target fails if either fails.
E2E_BASETEMP ?= $(or $(TMPDIR),/tmp)/sparsectr-e2e-tests-$(shell printf '%s' "$(CURDIR)" | cksum | cut -d' ' -f1)
test: setup
	@set -o pipefail; \
	( $(PY) -m pytest -m e2e -p no:cacheprovider --basetemp=$(E2E_BASETEMP) $(PYTEST_ARGS) tests 2>&1 \
	  | sed -u 's/^/[e2e] /' ) & e2e=$$!; \
	$(PY) -m pytest -m "not e2e" $(PYTEST_ARGS) tests; rest=$$?; \
	wait $$e2e; e2e_rc=$$?; \
	echo "make test: tests without e2e exit $$rest, e2e exit $$e2e_rc"; \
	[ $$rest -eq 0 ] && [ $$e2e_rc -eq 0 ]

test-serial: setup
	$(PY) -m pytest $(PYTEST_ARGS) tests

test-fast: setup
	$(PY) -m pytest -m "not e2e" $(PYTEST_ARGS) tests

serve: setup
	$(PY) -m pipelines serve $(ARGS)

clean:
	rm -rf output .pytest_cache
