#!/usr/bin/env bash
# Headless Chromium (Debian's package) for the run report's browser test (tests/pipelines/test_report.py
# opens report.html in it). Idempotent, quiet and tolerant: nothing to do when a Chromium is on PATH;
# without root or apt-get it says so and exits 0 (the browser tests then skip).
set -uo pipefail
for b in chromium chromium-browser google-chrome; do
  command -v "$b" >/dev/null 2>&1 && exit 0
done
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "setup: no Chromium, and no root apt-get to install it: the report's browser tests will skip" >&2
  exit 0
fi
echo "setup: installing Debian's chromium for the report's browser tests (one time)" >&2
export DEBIAN_FRONTEND=noninteractive
install() { apt-get install -y -qq --no-install-recommends chromium >/dev/null 2>&1; }
if ! install && ! { apt-get update -qq >/dev/null 2>&1 && install; }; then
  echo "setup: could not install chromium: the report's browser tests will skip" >&2
fi
exit 0
