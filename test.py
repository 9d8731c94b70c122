"""Evaluate a checkpoint: per-task metrics, sparsity per layer / component / overall, parameters, Δ_T.

    python test.py --path outputs/adapmtl/segment_semantic_normal_depth_zbuffer.model
    python test.py --path DENSE.model --json dense.json
    python test.py --path SPARSE.model --reference dense.json --json sparse.json

The model, dataset and tasks are read from the checkpoint's stored config; no training flags are needed.
"""

from main.cli.test import main
from main.errors import cli_main

if __name__ == "__main__":
    cli_main(main)
