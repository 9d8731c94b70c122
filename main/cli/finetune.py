"""The body of ``finetune.py`` (usage and the masking rules: that file's docstring)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from main.channel_masks import ChannelMasks
from main.cli.args import Start, parse_finetune_args
from main.cli.train import train_and_report
from main.config import Config, Provenance
from main.distributed import cleanup, init_distributed
from main.run_dir import has_checkpoint
from main.trainer_setup import build_masked_trainer, build_trainer


def restart_before_first_checkpoint(cfg: Config, given: Provenance, start: Start) -> tuple[Config, Provenance]:
    """``--resume`` of a fine-tuning killed before its first checkpoint: nothing to continue, so the run starts
    again from its ``--load_checkpoint`` (which the command line carries), replacing the dead start's files.

    Why: a requeued cluster job repeats the same ``--resume`` command; without a checkpoint it would otherwise loop
    on "no checkpoint".  Without ``--load_checkpoint`` the start cannot be rebuilt and the resume rules say so.
    """
    save_dir = Path(cfg.save_dir)
    if not (cfg.resume and start.checkpoint and save_dir.is_dir() and not has_checkpoint(save_dir)):
        return cfg, given
    print(f"notice: --resume: {save_dir} holds no checkpoint yet (the run stopped before its first); starting it "
          f"again from --load_checkpoint {start.checkpoint}")
    cfg.resume, cfg.overwrite = False, True
    return cfg, replace(given, explicit=given.explicit | {"resume", "overwrite"})


def main(argv: list[str] | None = None) -> int:
    cfg, given, start = parse_finetune_args(argv)
    cfg, given = restart_before_first_checkpoint(cfg, given, start)
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

