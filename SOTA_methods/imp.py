"""IMP, iterative magnitude pruning (Han et al., 2015), as the MTL baselines run it: global |w| ranking.

    python -m SOTA_methods.imp --load_checkpoint DENSE/segment_semantic_normal_depth_zbuffer.model \\
        --target 0.9 --finetune_iters 2000 --iters 20000 --save_dir outputs/imp90
    python -m SOTA_methods.imp --load_checkpoint DENSE.model --target 0.9 --one_shot --iters 20000 ...
    python -m SOTA_methods.imp ... --scope component     # every component (backbone, each head) to the same sparsity

Round r removes ``--per_round`` (default 20 %) of the weights still alive, ranked by |w| over all prunable
weights at once (``--scope global``; ``component`` / ``layer`` rank inside each component / layer), the last
round landing exactly on ``--target``; between rounds the masked network is fine-tuned ``--finetune_iters``
iterations, each time with a new optimiser and LR schedule (as the reference ``finetune.py``); after the last
round comes the final fine-tune of ``--iters`` iterations.  ``--one_shot`` is a single round (the AdapMTL
reference's ``pruning.py`` + ``finetune.py``).  Round r's fine-tune lives in ``<save_dir>/round_<r>/``; the final
one writes ``<save_dir>/<tasks>.model`` and ``masks.json`` (with the per-round log, also in ``rounds.json``).

Under ``torchrun --nproc_per_node=N -m SOTA_methods.imp ...`` every fine-tune is a DDP run; the |w| rankings
need no communication (DDP keeps the weights bit-identical on every rank, so every rank picks the same mask) and
only rank 0 writes.

Why fine-tune from the previous round's *last* weights (not its best checkpoint): that is Han et al.'s loop, and
the best checkpoint is selected on validation data the next round should not depend on.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from main.config import Config, ConfigError, Provenance
from main.distributed import DistInfo
from main.errors import cli_main
from main.run_dir import check_run_dir
from main.seeding import seed_everything

from .commands import add_rounds, add_target, method_main
from .engine import check_same_on_all_ranks, install, magnitude_keep
from .registry import Method, OptionGroup, register
from .stages import finish, load_trained, refuse_resume, round_sparsities, stage_trainer, start_from, write_json


def add_imp_args(group: OptionGroup) -> None:
    group.add_argument("--load_checkpoint", metavar="CKPT", help="trained (dense or AdapMTL) checkpoint to prune")
    add_target(group)
    add_rounds(group, "global (one |w| ranking, default) | component (each component to the round's sparsity) "
                      "| layer (each layer to it)")
    group.add_argument("--finetune_iters", type=int, default=None,
                       help="fine-tuning iterations after every round but the last (default: --iters)")


def run_imp(cfg: Config, given: Provenance, opts: dict, dist_info: DistInfo | None = None,
            device: torch.device | None = None) -> dict:
    """Prune/fine-tune rounds, then the final fine-tune; returns the ``masks.json`` summary.

    ``dist_info`` / ``device`` come from ``init_distributed`` (torchrun); default: one process.
    """
    dist_info = dist_info or DistInfo()
    refuse_resume(cfg, "imp")
    if not opts["load_checkpoint"]:
        raise ConfigError("--load_checkpoint TRAINED.model is required (IMP prunes a trained model)")
    cfg, model, masks = load_trained(cfg, given, opts["load_checkpoint"], device)
    seed_everything(cfg.seed)
    # Every rank refuses an occupied folder alike (one clean error, no rank left waiting in a collective); it
    # cannot see rank 0's files yet, since rank 0 writes run files only after a collective this rank joins.
    check_run_dir(cfg, create=dist_info.is_main, inputs={"--load_checkpoint": opts["load_checkpoint"],
                                                            "--config": given.preset_file})
    save_dir = Path(cfg.save_dir)
    ft_iters = opts["finetune_iters"] or cfg.iters
    if ft_iters <= 0:
        raise ConfigError(f"--finetune_iters must be a positive integer, got {ft_iters}")
    start = masks.sparsity()
    plan = round_sparsities(start, opts["target"], None if opts["one_shot"] else opts["per_round"])
    rounds = []
    for r, sparsity in enumerate(plan, 1):
        install(masks, magnitude_keep(masks, sparsity, opts["scope"]))
        check_same_on_all_ranks(masks.masks, dist_info, f"IMP round {r}")
        last = r == len(plan)
        stage_dir = save_dir if last else save_dir / f"round_{r:02d}"
        trainer = stage_trainer(cfg, stage_dir, None if last else ft_iters, dist_info, device)
        trainer.log.info(f"IMP round {r}/{len(plan)}: pruned to {100 * masks.sparsity():.2f}% "
                         f"({opts['scope']} |w|), fine-tuning {trainer.cfg.iters} iterations")
        start_from(trainer, model.state_dict(), masks)
        trainer.train()
        model, masks = trainer.model, trainer.masks
        rounds.append({"round": r, "sparsity": masks.sparsity(), "target": sparsity, "dir": str(stage_dir),
                       "finetune_iters": trainer.cfg.iters, "best": trainer.best})
        write_json(save_dir / "rounds.json", rounds, dist_info)
    pruning = {"method": "imp", "target": opts["target"], "per_round": None if opts["one_shot"] else
               opts["per_round"], "scope": opts["scope"], "source": opts["load_checkpoint"],
               "finetune_iters": ft_iters, "final_iters": cfg.iters, "start_sparsity": start}
    return finish(trainer, pruning, {"rounds": rounds})


IMP = register(Method(
    name="imp", kind="iterative", label="IMP", run=run_imp, command="SOTA_methods.imp",
    about="Iterative magnitude pruning of a trained checkpoint, fine-tuning between rounds.", add_args=add_imp_args))


def main(argv: Sequence[str] | None = None) -> int:
    return method_main(IMP, argv)


if __name__ == "__main__":
    cli_main(main)
