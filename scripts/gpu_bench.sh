#!/usr/bin/env bash
# The prepared GPU benchmark: one command on a machine with one CUDA GPU (H100/H200), torch
# preinstalled; finishes within about 8 minutes and writes reports/bench_gpu.json (and a copy
# under $OUT when $OUT is set). What it measures: scripts/gpu_bench.py's docstring.
#
#   scripts/gpu_bench.sh                       # everything, 450 s budget for starting measurements
#   scripts/gpu_bench.sh --only builtin_eager builtin_cuda_graph
#   scripts/gpu_bench.sh --device cpu --tiny   # a dry run on the CPU, seconds
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec "$PYTHON" scripts/gpu_bench.py "$@"
