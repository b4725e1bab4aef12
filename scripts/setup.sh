#!/usr/bin/env bash
# Create .venv (if missing) and install the project with its test tools. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
# torch/torchvision: the ordinary PyPI pair (do not pin torch to a local CPU-only wheel:
# PyPI's torchvision cannot load its operators with it).
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e ".[test]"
