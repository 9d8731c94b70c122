#!/usr/bin/env bash
# Train on N processes with PyTorch DDP under torchrun (one process per GPU; gloo on CPU).
#
# usage: Scripts/distributed_train.sh NPROC [baseline.py flags...]
#   e.g. Scripts/distributed_train.sh 4 --config configs/nyuv2_resnet34.yaml --data_root DATA/NYUv2 --save_dir RUN
# --batch_size is per process (global batch = NPROC x batch_size).  Multi-node: set NNODES, NODE_RANK and
# MASTER_ADDR[:MASTER_PORT] on every node, e.g. under SLURM
#   NNODES=$SLURM_NNODES NODE_RANK=$SLURM_NODEID MASTER_ADDR=$(scontrol show hostnames | head -n1) \
#     Scripts/distributed_train.sh 8 --config ...
# Environment: TORCHRUN (default: python -m torch.distributed.run), SCRIPT (default baseline.py; finetune.py too).
set -euo pipefail
source "$(dirname "$0")/usage.sh"
[ $# -ge 1 ] || usage
NPROC=$1; shift
[[ "$NPROC" =~ ^[1-9][0-9]*$ ]] || { echo "error: NPROC must be a positive integer, got '$NPROC'" >&2; exit 2; }
cd "$(dirname "$0")/.."
TORCHRUN=${TORCHRUN:-"${PYTHON:-python} -m torch.distributed.run"}
SCRIPT=${SCRIPT:-baseline.py}
if [ -n "${NNODES:-}" ] && [ "${NNODES}" -gt 1 ]; then
  : "${MASTER_ADDR:?set MASTER_ADDR to the first node for a multi-node run}"
  exec $TORCHRUN --nnodes="$NNODES" --node_rank="${NODE_RANK:?set NODE_RANK}" --nproc_per_node="$NPROC" \
    --rdzv_backend=c10d --rdzv_endpoint="$MASTER_ADDR:${MASTER_PORT:-29500}" "$SCRIPT" "$@"
fi
exec $TORCHRUN --standalone --nproc_per_node="$NPROC" "$SCRIPT" "$@"
