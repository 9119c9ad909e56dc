#!/usr/bin/env bash
# Make .venv: a Python 3.10 virtualenv with exactly requirements.lock, cached outside the checkout
# (keyed by the lock's hash, so every clone with the same lock shares one 3 GB install) and linked
# as .venv here. Idempotent: a second call with the same lock does nothing.
set -euo pipefail
cd "$(dirname "$0")/.."

find_python310() {
  local candidates=()
  [ -n "${SPARSECTR_PYTHON:-}" ] && candidates+=("$SPARSECTR_PYTHON")
  for p in "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.10*/bin/python3.10; do candidates+=("$p"); done
  command -v python3.10 >/dev/null 2>&1 && candidates+=("$(command -v python3.10)")
  for p in "${candidates[@]}"; do
    if [ -x "$p" ] && "$p" -c 'import sys, venv; sys.exit(sys.version_info[:2] != (3, 10))' 2>/dev/null; then
      echo "$p"; return 0
    fi
  done
  return 1
}

lock=requirements.lock
PIP_VERSION=24.3.1
PIP_SHA256=sha256:3790624780082365f47549d032f3770eeb2b1e8bd1f7b2e02dace1afa361b4ed
hash=$(sha256sum "$lock" | cut -c1-16)
cache_root=${SPARSECTR_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/sparsectr}
venv="$cache_root/venv-$hash"

if [ ! -f "$venv/.complete" ]; then
  py=$(find_python310) || {
    echo "setup: Python 3.10 not found: install it (e.g. 'pyenv install 3.10' or apt's python3.10 with venv), or set SPARSECTR_PYTHON=/path/to/python3.10" >&2
    exit 1
  }
  echo "setup: building $venv from $lock with $py (one time, a few minutes)" >&2
  rm -rf "$venv"
  mkdir -p "$cache_root"
  "$py" -m venv "$venv"
  # pip itself, pinned by hash like everything else (the venv's bundled pip is older).
  # (The grep drops notices about this machine's pip index settings, not about the install.)
  "$venv/bin/python" -m pip install -q --require-hashes --no-deps -r /dev/stdin \
    2> >(grep -v 'is ignored: it is neither' >&2) <<< "pip==$PIP_VERSION --hash=$PIP_SHA256"
  # --require-hashes: every file must match the lock's sha256 (pip refuses anything else).
  # --no-deps: the lock is the complete, resolved set; letting pip resolve again backtracks for minutes.
  "$venv/bin/python" -m pip install -q --require-hashes --no-deps -r "$lock" \
    2> >(grep -v 'is ignored: it is neither' >&2)
  touch "$venv/.complete"
fi

if [ "$(readlink .venv 2>/dev/null)" != "$venv" ]; then
  rm -rf .venv
  ln -s "$venv" .venv
fi

# What only the tests import (requirements-test.lock), beside the venv rather than in it, so that the
# pipeline's processes never import it; tests/conftest.py puts .test-deps on the tests' path.
test_lock=requirements-test.lock
test_deps="$cache_root/test-deps-$(cat "$lock" "$test_lock" | sha256sum | cut -c1-16)"
if [ ! -f "$test_deps/.complete" ]; then
  rm -rf "$test_deps"
  "$venv/bin/python" -m pip install -q --require-hashes --no-deps --target "$test_deps" -r "$test_lock" \
    2> >(grep -v 'is ignored: it is neither' >&2)
  touch "$test_deps/.complete"
fi
if [ "$(readlink .test-deps 2>/dev/null)" != "$test_deps" ]; then
  rm -rf .test-deps
  ln -s "$test_deps" .test-deps
fi

# CI (CI=true) or SPARSECTR_INSTALL_CHROMIUM=1: headless Chromium for the run report's browser test,
# from Debian's packages when this runs as root (idempotent; skipped, with one line, otherwise).
if [ "${CI:-}" = "true" ] || [ "${SPARSECTR_INSTALL_CHROMIUM:-}" = "1" ]; then
  scripts/install_chromium.sh
fi
