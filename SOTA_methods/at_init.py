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
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from main.config import Config, ConfigError
from main.data import dataset_info
from main.errors import cli_main
from main.masks import MaskSet
from main.runner import build_trainer

from .engine import connection_sensitivity, install, select_global, task_gradients
from .oneshot import prune_oneshot
from .prune_run import score_batches
from .runs import (
    add_target,
    finish,
    hard_mask_config,
    method_parser,
    parse_method_args,
    print_summary,
    read_method,
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


def run_at_init(cfg: Config, opts: dict) -> dict:
    """Score and mask the fresh model, train it for ``--iters``; returns the ``masks.json`` summary."""
    explicit = getattr(cfg, "explicit", set())
    if cfg.resume:  # the checkpoint carries the masks; nothing to score again
        pruning = read_method(cfg.save_dir)
        trainer = build_trainer(cfg, explicit)
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
    trainer = build_trainer(cfg, explicit)
    pruning = {"method": method, "target": opts["target"], "num_batches": n_batches, "seed": cfg.seed}
    write_method(trainer.save_dir, pruning)
    info = dataset_info(cfg)
    masks = MaskSet(trainer.model)
    with side_effect_free(trainer.model):
        batches = score_batches(cfg, n_batches) if method != "random" else []
        if method == "snip":
            lam = dict(zip(info.tasks, cfg.priority)) if cfg.priority else None
            scores = task_gradients(trainer.model, masks, batches, info.tasks, trainer.device, per_task=False,
                                    class_weights=trainer.class_weights, statistic=connection_sensitivity,
                                    weights=lam)["total"]
            keep = select_global(scores, masks, opts["target"])
        else:
            keep = prune_oneshot(method, trainer.model, masks, opts["target"], batches, info.tasks,
                                 trainer.device, seed=cfg.seed, class_weights=trainer.class_weights)
    install(masks, keep)
    trainer.set_masks(masks)
    trainer.log.info(f"{method} at init: {100 * masks.sparsity():.2f}% of the prunable weights pruned "
                     f"({n_batches} scoring batches); training {cfg.iters} iterations with the mask fixed")
    trainer.train()
    return finish(trainer, pruning)


def main(argv: Sequence[str] | None = None) -> int:
    cfg, opts = parse_method_args(build_at_init_parser(), argv, OPTIONS)
    summary = run_at_init(cfg, opts)
    print_summary(summary["pruning"]["method"], summary)
    return 0


if __name__ == "__main__":
    cli_main(main)
