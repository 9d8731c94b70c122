#!/usr/bin/env bash
# Every method at equal sparsity and equal training budget on the synthetic 3-task benchmark (bench/compare.py):
# ResNet34 and MobileNetV2, 5 seeds at 90%: dense, AdapMTL (stop rule, budget control, from dense), SNIP,
# DiSparse static/dynamic, IMP, LTH and the two AdapMTL ablations; writes logs/comparison.md (noise floor, 95%
# intervals, paired tests), the raw test.py JSON of every cell and the plots.
# Resumable: run it again to continue (finished cells are skipped); --data_seed N reproduces it on other scenes.
#
# usage: Scripts/compare.sh [--quick] [--architectures resnet34 mobilenetv2] [--seeds 5] [--data_seed 0] [...]
#        (python -m bench.compare --help lists every option; PYTHON=... picks the interpreter)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
exec "$PYTHON" -m bench.compare "$@"
