"""Train a multitask model: AdapMTL (soft thresholds, default) or dense (``--dense``).

    python baseline.py                                   # AdapMTL on the synthetic benchmark (CPU preset)
    python baseline.py --config configs/nyuv2_resnet34.yaml --data_root DATA/NYUv2
    python baseline.py --save_dir RUN --resume           # continue RUN exactly
    python baseline.py --reload dense.model --sInit_value -10 --save_dir RUN2   # prune from a dense model
    torchrun --nproc_per_node=4 baseline.py --config configs/nyuv2_resnet34.yaml --data_root DATA/NYUv2
"""

from __future__ import annotations

from args import parse_args
from main.distributed import cleanup, init_distributed
from main.errors import cli_main
from main.runner import build_trainer


def main(argv: list[str] | None = None) -> int:
    cfg = parse_args(argv)
    dist_info, device = init_distributed(cfg.device)  # torchrun: one process per GPU (or CPU rank)
    try:
        trainer = build_trainer(cfg, getattr(cfg, "explicit", set()), dist_info, device)
        trainer.train()
        if trainer.is_main:
            report = trainer.sparsity_report()
            trainer.log.info(f"done: {trainer.iteration} iterations, overall sparsity "
                             f"{100 * report.overall:.2f}%, checkpoint {trainer.save_dir}")
    finally:
        cleanup(dist_info)
    return 0


if __name__ == "__main__":
    cli_main(main)
