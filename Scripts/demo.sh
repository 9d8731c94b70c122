#!/usr/bin/env bash
# The main job on the embedded synthetic benchmark (CPU preset, configs/synthetic.yaml):
# train a dense model and an AdapMTL model (target overall sparsity 0.9), evaluate both on the test split,
# print one table with AdapMTL's Delta_T against the dense model.  `make demo` runs this after installing.
#
# usage: Scripts/demo.sh [OUT_DIR]          (default OUT_DIR: outputs/demo; PYTHON=... to pick the interpreter)
set -euo pipefail
source "$(dirname "$0")/usage.sh"
case "${1:-}" in -*) echo "error: unknown option $1 (the only argument is OUT_DIR; see Scripts/demo.sh --help)" >&2; exit 2 ;; esac
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
OUT=${1:-outputs/demo}
CONFIG=configs/synthetic.yaml
CKPT=segment_semantic_normal_depth_zbuffer.model
start=$(date +%s)

echo "== 1/4 dense baseline -> $OUT/dense"
"$PYTHON" baseline.py --config "$CONFIG" --dense --save_dir "$OUT/dense" --overwrite --progress on
echo "== 2/4 AdapMTL, target overall sparsity 0.9 -> $OUT/adapmtl"
"$PYTHON" baseline.py --config "$CONFIG" --ratio 0.9 --save_dir "$OUT/adapmtl" --overwrite --progress on
echo "== 3/4 evaluate both on the test split"
"$PYTHON" test.py --path "$OUT/dense/$CKPT" --json "$OUT/dense.json" --progress on > /dev/null
"$PYTHON" test.py --path "$OUT/adapmtl/$CKPT" --reference "$OUT/dense.json" --json "$OUT/adapmtl.json" \
    --progress on > /dev/null
echo "== 4/4 results (test split)"
"$PYTHON" Scripts/results_table.py "$OUT/dense.json" "$OUT/adapmtl.json" --labels dense AdapMTL
echo "demo finished in $(( $(date +%s) - start )) s; runs in $OUT (tensorboard --logdir $OUT)"
