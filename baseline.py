"""Train a multitask model: AdapMTL (soft thresholds, default) or dense (``--dense``).

    python baseline.py                                   # AdapMTL on the synthetic benchmark (CPU preset)
    python baseline.py --config configs/nyuv2_resnet34.yaml --data_root DATA/NYUv2
    python baseline.py --save_dir RUN --resume           # continue RUN exactly
    python baseline.py --reload dense.model --sInit_value -10 --save_dir RUN2   # prune from a dense model
    torchrun --nproc_per_node=4 baseline.py --config configs/nyuv2_resnet34.yaml --data_root DATA/NYUv2
"""

from main.cli.train import main
from main.errors import cli_main

if __name__ == "__main__":
    cli_main(main)
