#!/usr/bin/env bash
# Every method at equal sparsity and equal training budget on the synthetic 3-task benchmark (bench/compare.py):
# dense, AdapMTL (stop rule and budget control), SNIP, DiSparse static/dynamic, IMP, LTH, Taylor, CosPrune and
# the two AdapMTL ablations; writes logs/synthetic_comparison.md, the raw test.py JSON and the plots.
# Resumable: run it again to continue (finished cells are skipped).  About 3 hours on 2 CPU cores.
#
# usage: Scripts/compare.sh [--quick] [--sparsities 50 70 90 95] [--seeds 3] [--iters 1000] [...]
#        (python -m bench.compare --help lists every option; PYTHON=... picks the interpreter)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
exec "$PYTHON" -m bench.compare "$@"
