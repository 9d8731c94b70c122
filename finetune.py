"""Fine-tune a pruned checkpoint with its masks enforced: pruned weights stay exactly zero.

    python finetune.py --load_checkpoint outputs/pruned_mag90/segment_semantic_normal_depth_zbuffer.model \\
                       --iters 1000 --save_dir outputs/ft_mag90 [--priority 1 2 1]
    python finetune.py --save_dir outputs/ft_mag90 --resume --iters 2000

The run starts from the checkpoint's config; flags given here override it (a new optimiser and schedule start
at iteration 0, as the reference ``finetune.py``).  Masks come from the checkpoint (or, for a checkpoint
without masks, from its zero weights); they zero the gradients of pruned weights and re-zero the weights
after every optimiser step.  Filters removed by structured pruning (taylor / cosprune) also keep their
BatchNorm gamma and beta at zero (``ChannelMasks``), on a fresh start and on --resume alike.
"""

from __future__ import annotations

from args import parse_finetune_args
from main.distributed import cleanup, init_distributed
from main.errors import cli_main
from main.runner import build_masked_trainer, build_trainer
from SOTA_methods.structured import ChannelMasks


def main(argv: list[str] | None = None) -> int:
    cfg, ckpt = parse_finetune_args(argv)
    explicit = getattr(cfg, "explicit", set())
    dist_info, device = init_distributed(cfg.device)
    try:
        if cfg.resume:  # the checkpoint in --save_dir carries the masks
            state = None
            trainer = build_trainer(cfg, explicit, dist_info, device)
        else:
            trainer, state = build_masked_trainer(ckpt, cfg, explicit, dist_info, device)
        if trainer.masks is not None:  # structurally pruned filters: keep their BatchNorm gamma and beta at zero
            ChannelMasks.from_checkpoint(trainer.model, state, trainer.masks).attach(trainer)
        trainer.train()
        if trainer.is_main:
            report = trainer.sparsity_report()
            trainer.log.info(f"done: {trainer.iteration} iterations, overall sparsity {100 * report.overall:.2f}% "
                             f"(masks enforced), checkpoint {trainer.save_dir}")
    finally:
        cleanup(dist_info)
    return 0


if __name__ == "__main__":
    cli_main(main)
