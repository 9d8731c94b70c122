#!/usr/bin/env bash
# Every method at equal sparsity and equal training budget on the synthetic 3-task benchmark (bench/compare.py):
# dense, AdapMTL (stop rule and budget control), SNIP, DiSparse static/dynamic, IMP, LTH, Taylor, CosPrune and
# the two AdapMTL ablations; writes logs/synthetic_comparison.md, the raw test.py JSON and the plots.
# Resumable: run it again to continue (finished cells are skipped).  About 2.1-2.4 hours on 2 CPU cores, two
# cells at a time (--jobs; 3.5 hours one at a time with --jobs 1).
#
# usage: Scripts/compare.sh [--quick] [--sparsities 50 70 90 95] [--seeds 3] [--iters 1000] [...]
#        (python -m bench.compare --help lists every option; PYTHON=... picks the interpreter)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
exec "$PYTHON" -m bench.compare "$@"
