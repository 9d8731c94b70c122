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
statistics and the RNG untouched (``stages.side_effect_free``), so the masked run differs from the dense run with
the same flags only by the mask.  Then one ordinary training run with the mask enforced after every step.

Under ``torchrun`` the model is rank 0's seeded initialisation (DDP broadcasts it), each rank scores its own
slices of the first ``--num_batches`` global batches on the unwrapped model (``trainer.model``: no DDP hooks
fire), and the score tensors (SNIP's total, DiSparse-static's per task) are averaged over the ranks before the
selection, so all ranks install the same mask; ``random`` draws from a generator seeded by ``--seed`` alone.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from main.config import Config, ConfigError, Provenance
from main.data import dataset_info
from main.distributed import DistInfo
from main.errors import cli_main
from main.masks import MaskSet
from main.trainer import Trainer
from main.trainer_setup import build_trainer, start_again_if_nothing_to_resume

from .commands import add_target, method_parser, run_command
from .engine import check_same_on_all_ranks
from .oneshot import disparse_static_step, random_step, snip_step
from .registry import Method, OptionGroup, PruneInputs, choose, methods, names, register
from .stages import finish, hard_mask_config, read_method, score_batches, side_effect_free, write_method

COMMAND = "SOTA_methods.at_init"
# Scoring batches when --num_batches is not given: SNIP's one batch, the DiSparse reference's 50.
DEFAULT_BATCHES = {"snip": 1, "disparse_static": 50, "random": 0}


def at_init_methods() -> list[Method]:
    """The methods this command trains (registered below)."""
    return methods(lambda m: m.command == COMMAND)


def add_at_init_options(group: OptionGroup) -> None:
    """The command's options, the same for each of its methods."""
    group.add_argument("--method", default=None, help=names(at_init_methods()))
    add_target(group)
    group.add_argument("--num_batches", type=int, default=None,
                       help="training batches the scores are summed over (default: snip 1, disparse_static 50)")


def run_at_init(cfg: Config, given: Provenance, opts: dict, dist_info: DistInfo | None = None,
                device: torch.device | None = None) -> dict:
    """Score and mask the fresh model, train it for ``--iters``; returns the ``masks.json`` summary.

    ``dist_info`` / ``device`` come from ``init_distributed`` (torchrun); default: one process.
    """
    dist_info = dist_info or DistInfo()
    cfg, given = start_again_if_nothing_to_resume(
        cfg, given, None if opts["target"] is None else f"the fresh initialisation (--target {opts['target']:g})",
        "its --method and --target")
    if cfg.resume:  # the checkpoint carries the masks; nothing to score again
        pruning = read_method(cfg.save_dir)
        trainer = build_trainer(cfg, given, dist_info, device)
        trainer.train()
        return finish(trainer, pruning)
    method = choose(opts["method"], at_init_methods())
    if opts["target"] is None:
        raise ConfigError("--target is required, e.g. --target 0.9")
    cfg = hard_mask_config(cfg)
    n_batches = opts["num_batches"] if opts["num_batches"] is not None else DEFAULT_BATCHES[method.name]
    if n_batches <= 0 and method.needs_batches:
        raise ConfigError(f"--num_batches must be a positive integer for {method.name}, got {n_batches}")
    trainer = build_trainer(cfg, given, dist_info, device)
    pruning = {"method": method.name, "target": opts["target"], "num_batches": n_batches, "seed": cfg.seed}
    if dist_info.enabled:
        pruning["world_size"] = dist_info.world_size  # the scores saw n_batches x world_size slices
    write_method(trainer.save_dir, pruning, dist_info)
    info = dataset_info(cfg)
    masks = MaskSet(trainer.model)
    prune_at_init(method, trainer, masks, opts["target"], n_batches, info.tasks)
    check_same_on_all_ranks(masks.masks, dist_info, f"{method.name} at init")
    trainer.set_masks(masks)
    trainer.log.info(f"{method.name} at init: {100 * masks.sparsity():.2f}% of the prunable weights pruned "
                     f"({n_batches} scoring batches); training {cfg.iters} iterations with the mask fixed")
    trainer.train()
    return finish(trainer, pruning)


def prune_at_init(method: Method, trainer: Trainer, masks: MaskSet, target: float, n_batches: int,
                  tasks: Sequence[str]) -> None:
    """Apply ``method``'s one-shot step to the trainer's current (fresh) weights, identically on every DDP rank.

    The scoring passes run on ``trainer.model``, never on the DDP wrapper ``trainer.net`` (its reducer expects
    one backward per wrapped forward, inside the training step), and leave BN statistics and the RNG untouched.
    The steps sum scores over this rank's batches, then average them over the ranks: the rankings are those of one
    process summing over every rank's batches.  SNIP weights the task losses by λ = ``--priority`` (default 1).
    """
    cfg = trainer.cfg
    lam = dict(zip(tasks, cfg.priority)) if cfg.priority else None
    inputs = PruneInputs(cfg, trainer.model, masks, target, [], tuple(tasks), trainer.device,
                         class_weights=trainer.class_weights, dist=trainer.dist, loss_weights=lam)
    if not method.needs_batches:
        method.prune(inputs)
        return
    with side_effect_free(trainer.model):
        inputs.batches = score_batches(cfg, n_batches, trainer.dist.rank, trainer.dist.world_size)
        method.prune(inputs)


SNIP = register(Method(
    name="snip", kind="at-init", label="SNIP", run=run_at_init, command=COMMAND,
    about="|w·g| of the total loss at initialisation (Lee et al., 2019), one global ranking",
    prune=snip_step, needs_batches=True))
DISPARSE_STATIC = register(Method(
    name="disparse_static", kind="at-init", label="DiSparse-static", run=run_at_init, command=COMMAND,
    about="per-task |w·g_t| at initialisation (Sun et al., 2022), a shared weight kept if any task keeps it",
    prune=disparse_static_step, needs_batches=True))
RANDOM = register(Method(
    name="random", kind="at-init", label="Random (static)", run=run_at_init, command=COMMAND,
    about="uniformly random scores, one global ranking", prune=random_step))


def main(argv: Sequence[str] | None = None) -> int:
    labels = " / ".join(m.label for m in at_init_methods())
    parser, group = method_parser(f"Prune a fresh initialisation ({labels}), then train it.", at_init_methods(),
                                  add_at_init_options)
    return run_command(parser, argv, group, run_at_init, lambda summary: summary["pruning"]["method"])


if __name__ == "__main__":
    cli_main(main)
