"""Prune at initialisation, then train the masked network for the full schedule: SNIP, DiSparse-static, random.

    python -m SOTA_methods.at_init --method snip --target 0.9 --config configs/nyuv2_resnet34.yaml \\
        --data_root DATA/NYUv2 --save_dir outputs/snip90
    python -m SOTA_methods.at_init --method disparse_static --target 0.9 --num_batches 50 ... --save_dir outputs/ds90
    python -m SOTA_methods.at_init --method random --target 0.9 ...          # the "Random (static)" row
    python -m SOTA_methods.at_init --save_dir outputs/snip90 --resume          # continue the training stage

The model is the seeded fresh initialisation ``baseline.py`` would train from the same flags, and it is scored
at exactly those weights (not on a re-initialised copy, DiSparse bug §8.5):
- ``snip`` (Lee et al., 2019): |w·g| of the λ-weighted total loss Σ λ_t L_t (λ = ``--priority``, default all 1
  as in AdapMTL; the adaptive weights are 1 at initialisation), summed over ``--num_batches`` batches (default 1,
  as SNIP), one global ranking over every prunable weight;
- ``disparse_static`` (Sun et al., 2022): |w·g_t| per task over backbone + that task's head, summed over
  ``--num_batches`` batches (default 50, as the reference), per-task top-κ, backbone kept if ANY task keeps it,
  κ found by bisection so that the union lands on ``--target`` (replaces the hand-tuned κ tables);
- ``random``: uniform random scores, one global ranking.
The scoring batches are the first batches of the run's own data order; their forward passes leave BatchNorm
statistics and the RNG untouched (``runs.side_effect_free``), so the masked run differs from the dense run with
the same flags only by the mask.  Then one ordinary training run with the mask enforced after every step.

Under ``torchrun`` the model is rank 0's seeded initialisation (DDP broadcasts it), each rank scores its own
slices of the first ``--num_batches`` global batches on the unwrapped model (``trainer.model``: no DDP hooks
fire), and the score tensors (SNIP's total, DiSparse-static's per task) are averaged over the ranks before the
selection, so all ranks install the same mask; ``random`` draws from a generator seeded by ``--seed`` alone.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import torch

from main.config import Config, ConfigError
from main.data import dataset_info
from main.distributed import DistInfo
from main.errors import cli_main
from main.masks import MaskSet
from main.runner import build_trainer
from main.trainer import Trainer

from .engine import (
    check_same_on_all_ranks,
    connection_sensitivity,
    install,
    mean_over_ranks,
    random_scores,
    select_disparse,
    select_global,
    task_gradients,
)
from .prune_run import score_batches
from .runs import (
    add_target,
    finish,
    hard_mask_config,
    method_parser,
    read_method,
    run_command,
    side_effect_free,
    write_method,
)

METHODS = ("snip", "disparse_static", "random")
DEFAULT_BATCHES = {"snip": 1, "disparse_static": 50, "random": 0}
OPTIONS = ("method", "target", "num_batches")


def build_at_init_parser() -> argparse.ArgumentParser:
    parser, g = method_parser("Prune a fresh initialisation (SNIP / DiSparse-static / random), then train it.")
    g.add_argument("--method", default=None, help="snip | disparse_static | random")
    add_target(g)
    g.add_argument("--num_batches", type=int, default=None,
                   help="training batches the scores are summed over (default: snip 1, disparse_static 50)")
    return parser


def run_at_init(cfg: Config, opts: dict, dist_info: DistInfo | None = None,
                device: torch.device | None = None) -> dict:
    """Score and mask the fresh model, train it for ``--iters``; returns the ``masks.json`` summary.

    ``dist_info`` / ``device`` come from ``init_distributed`` (torchrun); default: one process.
    """
    dist_info = dist_info or DistInfo()
    explicit = getattr(cfg, "explicit", set())
    if cfg.resume:  # the checkpoint carries the masks; nothing to score again
        pruning = read_method(cfg.save_dir)
        trainer = build_trainer(cfg, explicit, dist_info, device)
        trainer.train()
        return finish(trainer, pruning)
    method = opts["method"]
    if method not in METHODS:
        raise ConfigError(f"--method {method!r} is not known; choose one of: {', '.join(METHODS)}")
    if opts["target"] is None:
        raise ConfigError("--target is required, e.g. --target 0.9")
    cfg = hard_mask_config(cfg)
    n_batches = opts["num_batches"] if opts["num_batches"] is not None else DEFAULT_BATCHES[method]
    if n_batches <= 0 and method != "random":
        raise ConfigError(f"--num_batches must be a positive integer for {method}, got {n_batches}")
    trainer = build_trainer(cfg, explicit, dist_info, device)
    pruning = {"method": method, "target": opts["target"], "num_batches": n_batches, "seed": cfg.seed}
    if dist_info.enabled:
        pruning["world_size"] = dist_info.world_size  # the scores saw n_batches x world_size slices
    write_method(trainer.save_dir, pruning, dist_info)
    info = dataset_info(cfg)
    masks = MaskSet(trainer.model)
    keep = score_and_select(method, trainer, masks, opts["target"], n_batches, info.tasks)
    install(masks, keep)
    check_same_on_all_ranks(masks.masks, dist_info, f"{method} at init")
    trainer.set_masks(masks)
    trainer.log.info(f"{method} at init: {100 * masks.sparsity():.2f}% of the prunable weights pruned "
                     f"({n_batches} scoring batches); training {cfg.iters} iterations with the mask fixed")
    trainer.train()
    return finish(trainer, pruning)


def score_and_select(method: str, trainer: Trainer, masks: MaskSet, target: float, n_batches: int,
                     tasks: Sequence[str]) -> dict[str, torch.Tensor]:
    """Keep masks of ``method`` at the trainer's current (fresh) weights, identical on every DDP rank.

    The scoring passes run on ``trainer.model``, never on the DDP wrapper ``trainer.net`` (its reducer expects
    one backward per wrapped forward, inside the training step), and leave BN statistics and the RNG untouched.
    Scores are sums over this rank's batches, then averaged over the ranks: the rankings are those of one
    process summing over every rank's batches.
    """
    cfg, dist_info = trainer.cfg, trainer.dist
    if method == "random":  # the same generator, seeded by --seed alone, on every rank
        return select_global(random_scores(masks, cfg.seed), masks, target)
    with side_effect_free(trainer.model):
        batches = score_batches(cfg, n_batches, dist_info.rank, dist_info.world_size)
        if method == "snip":
            lam = dict(zip(tasks, cfg.priority)) if cfg.priority else None
            scores = task_gradients(trainer.model, masks, batches, tasks, trainer.device, per_task=False,
                                    class_weights=trainer.class_weights, statistic=connection_sensitivity,
                                    weights=lam)["total"]
            return select_global(mean_over_ranks(scores, dist_info), masks, target)
        per_task = task_gradients(trainer.model, masks, batches, tasks, trainer.device, per_task=True,
                                  class_weights=trainer.class_weights, statistic=connection_sensitivity)
        flat = mean_over_ranks({(t, n): s for t, scores in per_task.items() for n, s in scores.items()}, dist_info)
        per_task = {t: {n: flat[(t, n)] for n in scores} for t, scores in per_task.items()}
        return select_disparse(per_task, masks, target)


def main(argv: Sequence[str] | None = None) -> int:
    return run_command(build_at_init_parser(), argv, OPTIONS, run_at_init, lambda summary: summary["pruning"]["method"])


if __name__ == "__main__":
    cli_main(main)
