#!/usr/bin/env bash
# Run the paper's ablations and its successors' comparisons (scripts/ablations.txt: one setting
# changed on top of params.yaml each) as one sweep: queued as DVC experiments, run in parallel
# on the node's GPUs (one GPU set each), tracked in MLflow, then linked and compared in the
# report (README "Sweeps and ablations"):
#
#   bash scripts/ablations.sh                     # as many at a time as the GPUs allow (1 on the CPU)
#   bash scripts/ablations.sh --jobs 4 --gpus 0-3 # any other option goes to `gaugan sweep`
#   bash scripts/ablations.sh --with-vgg          # also "VGG loss on" (needs the VGG19 ImageNet weights)
#
# Commit your work first: queued experiments start from the last commit. Ctrl-C stops the
# running experiments cleanly (their MLflow runs end KILLED) and says how to resume. Each
# experiment is a full pipeline run: several minutes each on a 2-core CPU at the built-in defaults.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"

list=scripts/ablations.txt
options=()
for arg in "$@"; do
  case "$arg" in
    --with-vgg)
      list=$(mktemp)
      trap 'rm -f "$list"' EXIT
      { cat scripts/ablations.txt; echo "vgg-on loss.use_vgg_loss=true"; } > "$list" ;;
    *) options+=("$arg") ;;
  esac
done

gaugan sweep --from-file "$list" ${options[@]+"${options[@]}"}
