"""The body of ``finetune.py`` (usage and the masking rules: that file's docstring)."""

from __future__ import annotations

from main.channel_masks import ChannelMasks
from main.cli.args import parse_finetune_args
from main.cli.train import train_and_report
from main.distributed import cleanup, init_distributed
from main.trainer_setup import build_masked_trainer, build_trainer, start_again_if_nothing_to_resume


def main(argv: list[str] | None = None) -> int:
    cfg, given, start = parse_finetune_args(argv)
    cfg, given = start_again_if_nothing_to_resume(
        cfg, given, None if start.checkpoint is None else f"--load_checkpoint {start.checkpoint}",
        "its --load_checkpoint")
    dist_info, device = init_distributed(cfg.device)
    try:
        if cfg.resume:  # the checkpoint in --save_dir carries the masks
            state = None
            trainer = build_trainer(cfg, given, dist_info, device)
        else:
            trainer, state = build_masked_trainer(start.checkpoint, cfg, given, dist_info, device, start.reinit)
        if trainer.masks is not None:  # structurally pruned filters: keep their BatchNorm gamma and beta at zero
            ChannelMasks.from_checkpoint(trainer.model, state, trainer.masks).attach(trainer)
        train_and_report(trainer, " (masks enforced)")
    finally:
        cleanup(dist_info)
    return 0

