#!/usr/bin/env bash
# Every CUDA path once (AdapMTL/dense training in fp32, bf16 + channels_last, fp16, the stop rule's non-blocking
# flags, budget control, evaluation, export, the benchmarks' CUDA modes, DDP with NCCL) and one JSON summary.
# Exits 0 with {"gpu": false, "status": "no GPU"} on a machine without a GPU.
#
# usage: bash bench/gpu_check.sh [--out FILE.json] [--timeout SECONDS]     (PYTHON=... picks the interpreter)
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-python}" -m bench.gpu_check "$@"
