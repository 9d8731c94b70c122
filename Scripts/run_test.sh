#!/usr/bin/env bash
# Evaluate every run directory under a folder and collect one table (Delta_T against the dense run).
#
# usage: Scripts/run_test.sh RUNS_DIR [DENSE_RUN_NAME] [extra test.py flags...]
#   RUNS_DIR        folder whose sub-folders are run directories (each with a *.model checkpoint)
#   DENSE_RUN_NAME  sub-folder of the dense reference (default: dense)
# Uses best_<tasks>.model when a run has one, else <tasks>.model. Writes RUNS_DIR/<run>.json and prints a table.
# Environment: PYTHON (default python).
set -euo pipefail
source "$(dirname "$0")/usage.sh"
[ $# -ge 1 ] || usage
RUNS=$1; DENSE=${2:-dense}
shift $(( $# >= 2 ? 2 : 1 ))
[ -d "$RUNS" ] || { echo "error: $RUNS is not a folder" >&2; exit 2; }
[ -d "$RUNS/$DENSE" ] || { echo "error: no dense reference run $RUNS/$DENSE (pass its name as 2nd argument)" >&2; exit 2; }
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}

pick() {  # newest best_*.model, else a plain *.model
  local run=$1 f
  f=$(ls "$run"/best_*.model 2>/dev/null | head -n 1 || true)
  [ -n "$f" ] || f=$(ls "$run"/*.model 2>/dev/null | grep -v '/best_' | head -n 1 || true)
  echo "$f"
}

dense_ckpt=$(pick "$RUNS/$DENSE")
[ -n "$dense_ckpt" ] || { echo "error: no checkpoint in $RUNS/$DENSE" >&2; exit 2; }
"$PYTHON" test.py --path "$dense_ckpt" --json "$RUNS/$DENSE.json" --label "$DENSE" "$@" > /dev/null
files=("$RUNS/$DENSE.json"); labels=("$DENSE")
for run in "$RUNS"/*/; do
  name=$(basename "$run")
  [ "$name" = "$DENSE" ] && continue
  ckpt=$(pick "$run")
  [ -n "$ckpt" ] || { echo "skip $name: no checkpoint"; continue; }
  "$PYTHON" test.py --path "$ckpt" --reference "$RUNS/$DENSE.json" --json "$RUNS/$name.json" --label "$name" "$@" \
      > /dev/null
  files+=("$RUNS/$name.json"); labels+=("$name")
done
"$PYTHON" Scripts/results_table.py "${files[@]}" --labels "${labels[@]}"
