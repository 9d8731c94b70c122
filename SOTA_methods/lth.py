"""Lottery tickets with rewinding (Frankle & Carbin, 2019; late rewinding: Frankle et al., 2020).

    # one command: train dense (snapshotting θ_0), prune 20 % of the rest per round, rewind, retrain, repeat
    python -m SOTA_methods.lth --config configs/nyuv2_resnet34.yaml --data_root DATA/NYUv2 --target 0.9 \\
        --save_dir outputs/lth90
    python -m SOTA_methods.lth ... --target 0.9 --one_shot --rewind 500     # one round, rewind to θ_500
    # from an existing dense run (θ_0 regenerated from its config and seed, or given as --init_checkpoint)
    python -m SOTA_methods.lth --load_checkpoint DENSE.model --target 0.9 --one_shot --save_dir outputs/lth90
    python -m SOTA_methods.lth --load_checkpoint DENSE.model --init_checkpoint RUN/dense/rewind_iter500.model ...

Without ``--load_checkpoint`` the command first trains the dense model from the config in ``<save_dir>/dense/``
and snapshots the complete training state at iteration k (``--rewind init`` = k = 0, the weights before the
first step; ``--rewind K`` = after K steps) into ``<save_dir>/dense/rewind_iter<K>.model``.  Each round then
ranks the surviving weights of the last trained network by |w| (global over all prunable weights, or
``--scope component|layer``), removes ``--per_round`` of them (the last round lands exactly on ``--target``;
``--one_shot`` = one round, what AdapMTL appears to have run), rewinds and retrains with the identical schedule:

- rewinding restores the snapshot's weights **and BatchNorm running statistics**, its iteration counter, LR
  schedule position, adaptive-weighting window, RNG state and Adam moments (zero at k = 0; cleared at pruned
  entries), then applies the mask — so surviving weights equal θ_k exactly and pruned ones are 0;
- the retraining runs from iteration k to ``--iters`` with the data order of the dense run from batch k on
  (the sampler is a pure function of seed and batch index): it is the dense run's continuation from k, masked.
  open_lth recreates the optimiser at the rewind point instead; restoring Adam's moments keeps "identical
  schedule" literal (at k = 0 the two coincide).

Round r's retraining lives in ``<save_dir>/round_<r>/``, the last one writes ``<save_dir>/<tasks>.model`` and
``masks.json`` (round log also in ``rounds.json``).  Cost: iterative LTH to 90 % at 20 %/round is 11 retrainings.

Under ``torchrun`` every training stage is a DDP run and each rank keeps its own in-memory snapshot: identical
weights, optimiser and schedule on every rank, plus that rank's RNG state (its dropout stream), and the saved
``rewind_iter<K>.model`` (rank 0 writes it) carries every rank's RNG as a DDP checkpoint does.  Masks are |w|
rankings of bit-identical weights, hence identical without communication.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from main.checkpoint import CheckpointError, atomic_save, load_checkpoint, load_weights, rng_state
from main.config import Config, ConfigError, Provenance
from main.distributed import DistInfo, gather_objects
from main.errors import cli_main
from main.masks import MaskSet
from main.run_dir import check_run_dir
from main.seeding import seed_everything
from main.trainer import Trainer

from .commands import add_rounds, add_target, method_main
from .engine import check_same_on_all_ranks, install, magnitude_keep
from .registry import Method, OptionGroup, register
from .stages import (
    enforce,
    finish,
    hard_mask_config,
    load_trained,
    refuse_resume,
    round_sparsities,
    stage_trainer,
    write_json,
)


def add_lth_args(group: OptionGroup) -> None:
    group.add_argument("--load_checkpoint", metavar="CKPT",
                       help="a trained dense checkpoint to start from (default: train it here from the flags)")
    group.add_argument("--init_checkpoint", metavar="CKPT",
                       help="with --load_checkpoint: the rewind snapshot (a rewind_iter<K>.model written by this "
                            "command, or any checkpoint of that run); default θ_0 regenerated from the seed")
    group.add_argument("--rewind", default=None, help="init (θ_0, default) | K (the weights after K iterations)")
    add_target(group)
    add_rounds(group, "global (one |w| ranking, default) | component | layer")


def rewind_iteration(text: str | None) -> int:
    if text is None or text == "init":
        return 0
    try:
        k = int(text)
    except ValueError:
        raise ConfigError(f"--rewind {text!r} is not known; use init or an iteration count, e.g. --rewind 500") \
            from None
    if k < 0:
        raise ConfigError(f"--rewind must be init or a non-negative iteration, got {k}")
    return k


def _to_cpu(obj: Any) -> Any:
    """A detached host copy (the snapshot must not hold ~3 model copies of GPU memory for the whole run)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(_to_cpu(v) for v in obj)
    return copy.deepcopy(obj)


def _full_state(trainer: Trainer) -> dict:
    """``trainer.state_dict()`` with every rank's RNG (a collective under DDP: all ranks call it at the same step).

    A rewind restores this rank's own entry; the file rank 0 saves is then a complete DDP checkpoint.
    """
    ranks = gather_objects(rng_state(), trainer.dist) if trainer.dist.enabled else None
    return _to_cpu(trainer.state_dict(rng_ranks=ranks))


def snapshot_at(trainer: Trainer, k: int) -> dict:
    """Capture the trainer's full state (weights, BN statistics, optimiser, schedule, RNG) at iteration k."""
    store: dict = {}
    if k == 0:
        store["state"] = _full_state(trainer)
    else:
        def hook(tr: Trainer, iteration: int, batch: dict) -> None:
            if iteration == k:
                store["state"] = _full_state(tr)

        trainer.step_hooks.append(hook)
    return store


def rewind(trainer: Trainer, snapshot: dict | None, masks: MaskSet, source: str) -> MaskSet:
    """Put the fresh stage ``trainer`` at the snapshot (None: its own fresh init is θ_0) and apply ``masks``."""
    if snapshot is not None:
        if "optimizer" in snapshot and "scheduler" in snapshot and "weighting" in snapshot:
            trainer.resume_from({**snapshot, "masks": None}, source)
        else:  # weights only (e.g. a pruned checkpoint): iteration and schedule position from its counter
            load_weights(trainer.model, snapshot, source, trainer.cfg)
            trainer.iteration = int(snapshot.get("iter", 0))
            with warnings.catch_warnings():  # "scheduler.step() before optimizer.step()": intended here
                warnings.simplefilter("ignore", UserWarning)
                for _ in range(trainer.iteration):
                    trainer.scheduler.step()
        trainer.best = None
    return enforce(trainer, masks)


def from_dense_checkpoint(cfg: Config, given: Provenance, opts: dict, k: int, dist_info: DistInfo,
                          device: torch.device | None) -> tuple[Config, MaskSet, dict | None, str, int]:
    """``--load_checkpoint``: its config and masks, the rewind snapshot (None: θ_0 from the seed), its source, k."""
    snapshot, snap_source = None, "θ_0 regenerated from the seed"
    if not opts["init_checkpoint"] and "seed" in given.explicit:
        # θ_0 is the seeded init build_trainer makes (datasets draw nothing from the global RNG), so only
        # the dense run's own seed regenerates it.
        raise ConfigError("--seed: θ_0 is regenerated from the dense run's own seed; drop --seed or pass the "
                          "snapshot as --init_checkpoint")
    cfg, _, masks = load_trained(cfg, given, opts["load_checkpoint"], device)
    seed_everything(cfg.seed)
    # every rank refuses alike; only rank 0 creates (as imp)
    check_run_dir(cfg, create=dist_info.is_main, inputs={"--load_checkpoint": opts["load_checkpoint"],
                                                         "--init_checkpoint": opts["init_checkpoint"],
                                                         "--config": given.preset_file})
    if opts["init_checkpoint"]:
        snapshot, snap_source = load_checkpoint(opts["init_checkpoint"]), opts["init_checkpoint"]
        at = int(snapshot.get("iter", 0))
        if opts["rewind"] is not None and at != k:
            raise ConfigError(f"--init_checkpoint {snap_source} is the state at iteration {at}, not --rewind "
                              f"{opts['rewind']}; drop --rewind or pass the matching snapshot")
        k = at
    elif k != 0:
        raise ConfigError(f"--rewind {k} needs θ_{k}: pass --init_checkpoint (a rewind_iter{k}.model from an "
                          "earlier lth run), or omit --load_checkpoint so lth trains the dense model itself")
    return cfg, masks, snapshot, snap_source, k


def train_dense(cfg: Config, given: Provenance, opts: dict, k: int, dist_info: DistInfo,
                device: torch.device | None) -> tuple[Config, MaskSet, dict, str]:
    """Train the dense model in ``<save_dir>/dense/``, snapshotting it at iteration k (saved as a record too)."""
    if opts["init_checkpoint"]:
        raise ConfigError("--init_checkpoint goes with --load_checkpoint (the dense run it belongs to)")
    cfg = hard_mask_config(cfg)
    check_run_dir(cfg, create=dist_info.is_main, inputs={"--config": given.preset_file})
    trainer = stage_trainer(cfg, Path(cfg.save_dir) / "dense", None, dist_info, device)
    if k >= cfg.iters:
        raise ConfigError(f"--rewind {k} is not before the end of training (--iters {cfg.iters})")
    store = snapshot_at(trainer, k)
    trainer.log.info(f"LTH: training the dense model, snapshot at iteration {k}")
    trainer.train()
    snapshot = store["state"]
    snap_source = str(trainer.save_dir / f"rewind_iter{k}.model")
    if dist_info.is_main:  # a record for --init_checkpoint; this run rewinds to its in-memory copy
        atomic_save(snapshot, snap_source)
    return cfg, MaskSet.from_weights(trainer.model), snapshot, snap_source


def run_lth(cfg: Config, given: Provenance, opts: dict, dist_info: DistInfo | None = None,
            device: torch.device | None = None) -> dict:
    """Dense training (unless given), then prune → rewind → retrain rounds; returns the ``masks.json`` summary.

    ``dist_info`` / ``device`` come from ``init_distributed`` (torchrun); default: one process.
    """
    dist_info = dist_info or DistInfo()
    refuse_resume(cfg, "lth")
    k = rewind_iteration(opts["rewind"])
    if opts["load_checkpoint"]:
        cfg, masks, snapshot, snap_source, k = from_dense_checkpoint(cfg, given, opts, k, dist_info, device)
    else:
        cfg, masks, snapshot, snap_source = train_dense(cfg, given, opts, k, dist_info, device)
    if k >= cfg.iters:
        raise ConfigError(f"the rewind point (iteration {k}) is not before the end of training (--iters {cfg.iters})")
    save_dir = Path(cfg.save_dir)
    start = masks.sparsity()
    plan = round_sparsities(start, opts["target"], None if opts["one_shot"] else opts["per_round"])
    rounds = []
    for r, sparsity in enumerate(plan, 1):
        install(masks, magnitude_keep(masks, sparsity, opts["scope"]))
        check_same_on_all_ranks(masks.masks, dist_info, f"LTH round {r}")
        last = r == len(plan)
        stage_dir = save_dir if last else save_dir / f"round_{r:02d}"
        trainer = stage_trainer(cfg, stage_dir, None, dist_info, device)
        try:
            masks = rewind(trainer, snapshot, masks, snap_source)
        except CheckpointError as e:
            raise CheckpointError(f"the rewind snapshot does not fit: {e}") from None
        trainer.log.info(f"LTH round {r}/{len(plan)}: {100 * masks.sparsity():.2f}% pruned ({opts['scope']} |w|), "
                         f"rewound to iteration {trainer.iteration}, retraining to {cfg.iters}")
        trainer.train()
        masks = trainer.masks
        rounds.append({"round": r, "sparsity": masks.sparsity(), "target": sparsity, "dir": str(stage_dir),
                       "rewind_iter": k, "best": trainer.best})
        write_json(save_dir / "rounds.json", rounds, dist_info)
    pruning = {"method": "lth", "target": opts["target"], "rewind_iter": k, "rewind_source": snap_source,
               "per_round": None if opts["one_shot"] else opts["per_round"], "scope": opts["scope"],
               "source": opts["load_checkpoint"], "iters": cfg.iters}
    return finish(trainer, pruning, {"rounds": rounds})


LTH = register(Method(
    name="lth", kind="iterative", label="LTH", run=run_lth, command="SOTA_methods.lth",
    about="Lottery ticket: train dense, prune by magnitude, rewind to θ_0 / θ_k, retrain.", add_args=add_lth_args))


def main(argv: Sequence[str] | None = None) -> int:
    return method_main(LTH, argv)


if __name__ == "__main__":
    cli_main(main)
