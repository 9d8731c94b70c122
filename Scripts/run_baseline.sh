#!/usr/bin/env bash
# Train the reference pipelines: a dense model and AdapMTL at a target sparsity, from a preset.
#
# usage: Scripts/run_baseline.sh PRESET DATA_ROOT OUT_DIR [RATIO] [extra baseline.py flags...]
#   PRESET     configs/nyuv2_resnet34.yaml | configs/nyuv2_mobilenetv2.yaml | configs/taskonomy_*.yaml | ...
#   DATA_ROOT  dataset folder (ignored by the synthetic presets; pass -)
#   OUT_DIR    runs go to OUT_DIR/dense and OUT_DIR/adapmtl_RATIO
#   RATIO      target overall sparsity (default 0.9)
# Environment: PYTHON (default python), SKIP_DENSE=1 to train AdapMTL only.
set -euo pipefail
source "$(dirname "$0")/usage.sh"
[ $# -ge 3 ] || usage
PRESET=$1; DATA_ROOT=$2; OUT=$3; RATIO=${4:-0.9}
shift $(( $# >= 4 ? 4 : 3 ))
[ -f "$PRESET" ] || { echo "error: preset $PRESET not found" >&2; exit 2; }
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
ROOT_FLAG=()
[ "$DATA_ROOT" != "-" ] && ROOT_FLAG=(--data_root "$DATA_ROOT")

if [ "${SKIP_DENSE:-0}" != 1 ]; then
  "$PYTHON" baseline.py --config "$PRESET" "${ROOT_FLAG[@]}" --dense --save_dir "$OUT/dense" "$@"
fi
"$PYTHON" baseline.py --config "$PRESET" "${ROOT_FLAG[@]}" --ratio "$RATIO" --save_dir "$OUT/adapmtl_$RATIO" "$@"
