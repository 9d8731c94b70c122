#!/usr/bin/env bash
# Hard-prune one trained checkpoint at several ratios (the reference run_pruning.sh sweep, any method).
#
# usage: Scripts/run_pruning.sh CHECKPOINT OUT_DIR [METHOD] [RATIOS] [extra pruning.py flags...]
#   CHECKPOINT  trained model (dense, or AdapMTL: its thresholds are baked in first)
#   OUT_DIR     pruned models go to OUT_DIR/<method>_<ratio>/
#   METHOD      magnitude (default) | random | snip | disparse_pt | taylor | cosprune
#   RATIOS      space-separated target sparsities, quoted (default "0.9 0.93 0.95 0.97 0.99")
# e.g. the reference head-sensitivity sweep: Scripts/run_pruning.sh dense.model out magnitude "0.9 0.95" --backbone_sparsity 0.6
# Environment: PYTHON (default python).
set -euo pipefail
source "$(dirname "$0")/usage.sh"
[ $# -ge 2 ] || usage
CKPT=$1; OUT=$2; METHOD=${3:-magnitude}; RATIOS=${4:-"0.9 0.93 0.95 0.97 0.99"}
shift $(( $# >= 4 ? 4 : $# ))
[ -f "$CKPT" ] || { echo "error: checkpoint $CKPT not found" >&2; exit 2; }
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
for r in $RATIOS; do
  echo "== $METHOD to $r -> $OUT/${METHOD}_$r"
  "$PYTHON" pruning.py --load_checkpoint "$CKPT" --method "$METHOD" --prune_ratio "$r" --save_dir "$OUT/${METHOD}_$r" "$@"
done
