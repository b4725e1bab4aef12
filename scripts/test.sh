#!/usr/bin/env bash
# Set up (scripts/setup.sh), install the browser the page tests drive, check the code with
# ruff (pyproject.toml [tool.ruff.lint]; a finding fails the run) and run the whole test suite.
# This is what CI runs (.ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# The studio's and the report's end-to-end tests drive a real headless Chromium through
# Playwright (its own browser download needs the internet, so the system's Chromium is used).
if ! command -v chromium >/dev/null 2>&1 && ! command -v chromium-browser >/dev/null 2>&1; then
  sudo=""
  if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1; then sudo="sudo"; fi
  if command -v apt-get >/dev/null 2>&1; then
    echo "installing Chromium for the browser tests (apt-get install chromium)"
    $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium >/dev/null \
      || echo "warning: could not install Chromium; the browser tests will be skipped" >&2
  else
    echo "warning: no Chromium and no apt-get; the browser tests will be skipped (set GAUGAN_CHROMIUM to a Chromium binary)" >&2
  fi
fi
.venv/bin/python -m ruff check .
exec .venv/bin/python -m pytest "$@"
