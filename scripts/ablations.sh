#!/usr/bin/env bash
# Queue the paper's ablations (Park et al. 2019, Section 4) and its successors' comparisons
# as DVC experiments on top of the current params.yaml (each one changes one setting), then,
# with --run, run them one after another and compare them:
#
#   bash scripts/ablations.sh             # queue only; `dvc queue start` runs them
#   bash scripts/ablations.sh --run       # queue, run, link MLflow runs, rebuild the report
#   bash scripts/ablations.sh --with-vgg  # also "VGG loss on" (needs the VGG19 ImageNet weights)
#
# An experiment whose setting equals the baseline's (e.g. syncbatch when params.yaml already
# uses it) has nothing to run: DVC restores the baseline's outputs, and
# `gaugan link-experiments` lists it as restored instead of hiding it.
# Each experiment is a full pipeline run: on the 2-core CPU at the built-in defaults, several
# minutes each. Commit your work first: queued experiments start from the last commit.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"

run=false
with_vgg=false
for arg in "$@"; do
  case "$arg" in
    --run) run=true ;;
    --with-vgg) with_vgg=true ;;
    *) echo "usage: bash scripts/ablations.sh [--run] [--with-vgg]" >&2; exit 2 ;;
  esac
done

queue() {  # queue NAME KEY=VALUE...
  local name=$1; shift
  local overrides=()
  for setting in "$@"; do overrides+=(-S "$setting"); done
  dvc exp run --queue --name "$name" "${overrides[@]}"
}

# Param-free normalisation inside SPADE (paper Table 4 / Section 4 "SPADE variations").
queue norm-instance generator.param_free_norm=instance
queue norm-batch generator.param_free_norm=batch
queue norm-syncbatch generator.param_free_norm=syncbatch
# SPADE's kernel size (1x1 vs 3x3 vs 5x5).
queue spade-kernel-1 generator.spade_kernel_size=1
queue spade-kernel-3 generator.spade_kernel_size=3
queue spade-kernel-5 generator.spade_kernel_size=5
# Generator width.
queue ngf-8 generator.ngf=8
queue ngf-32 generator.ngf=32
# Multi-modal synthesis: the style encoder and KL loss (Section 3.3).
queue vae-on encoder.use_vae=true
# Feature matching loss off.
queue feat-off loss.use_feat_loss=false
# Generators: pix2pixHD-style baseline (label map at the input only) and CLADE (Tan et al. 2020).
queue arch-pix2pixhd generator.arch=pix2pixhd generator.use_spectral_norm=false  # as the official baseline: plain instance norm
queue arch-clade generator.arch=clade
if $with_vgg; then
  queue vgg-on loss.use_vgg_loss=true
fi

dvc queue status
if $run; then
  dvc queue start --jobs 1
  # Wait for the worker: it leaves nothing queued or running when it is done.
  while dvc queue status | grep -qE 'Queued|Running'; do sleep 30; done
  dvc queue status
  gaugan link-experiments
  dvc repro --force --single-item report
  echo "compare: reports/index.html, reports/ablations.md, dvc exp show --only-changed"
fi
