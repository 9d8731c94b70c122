"""The body of ``baseline.py`` (usage: that file's docstring): parse, join torchrun's group, train, report."""

from __future__ import annotations

from main.cli.args import parse_args
from main.distributed import cleanup, init_distributed
from main.trainer import Trainer
from main.trainer_setup import build_trainer


def main(argv: list[str] | None = None) -> int:
    cfg, given = parse_args(argv)
    dist_info, device = init_distributed(cfg.device)  # torchrun: one process per GPU (or CPU rank)
    try:
        train_and_report(build_trainer(cfg, given, dist_info, device, from_settings=True))
    finally:
        cleanup(dist_info)
    return 0


def train_and_report(trainer: Trainer, note: str = "") -> None:
    """Train, then (rank 0) log where the run ended: iterations, overall sparsity, the run folder."""
    trainer.train()
    if trainer.is_main:
        report = trainer.sparsity_report()
        trainer.log.info(f"done: {trainer.iteration} iterations, overall sparsity {100 * report.overall:.2f}%"
                         f"{note}, checkpoint {trainer.save_dir}")

