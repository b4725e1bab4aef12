#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run the whole pipeline on the built-in dataset: dvc repro.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
if [ ! -d .dvc ]; then
  echo "error: .dvc/ is missing; run from a git clone of the project" >&2
  exit 1
fi
exec dvc repro "$@"
