#!/usr/bin/env bash
# Fine-tune every pruned model under a folder (as written by run_pruning.sh), masks enforced.
#
# usage: Scripts/run_finetune.sh PRUNED_DIR OUT_DIR [extra finetune.py flags, e.g. --iters 2000 --priority 1 2 1]
#   PRUNED_DIR  folder whose sub-folders each hold a pruned <tasks>.model
#   OUT_DIR     fine-tuned runs go to OUT_DIR/<sub-folder>/  (then: Scripts/run_test.sh OUT_DIR ...)
# Environment: PYTHON (default python).
set -euo pipefail
source "$(dirname "$0")/usage.sh"
[ $# -ge 2 ] || usage
IN=$1; OUT=$2; shift 2
[ -d "$IN" ] || { echo "error: $IN is not a folder" >&2; exit 2; }
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
found=0
for run in "$IN"/*/; do
  ckpt=$(ls "$run"*.model 2>/dev/null | grep -v '/best_' | head -n 1 || true)
  [ -n "$ckpt" ] || continue
  found=1
  name=$(basename "$run")
  echo "== fine-tune $name -> $OUT/$name"
  "$PYTHON" finetune.py --load_checkpoint "$ckpt" --save_dir "$OUT/$name" "$@"
done
[ "$found" = 1 ] || { echo "error: no pruned checkpoint under $IN" >&2; exit 2; }
