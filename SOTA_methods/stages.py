"""Training stages: what the baselines that train share (IMP, LTH, prune-at-init, DiSparse dynamic).

Each of those commands is a chain of *stages*: one ordinary ``Trainer`` run (built by
``main.trainer_setup.build_trainer``, so data order, seeding, validation, checkpoints and logs are exactly those of
``baseline.py`` / ``finetune.py``)
started from given weights and hard masks.  What differs between methods is only what happens between stages
(prune, rewind) or inside one (a step hook), so the stage plumbing, the source model and scoring batches, and the
final ``masks.json`` report live here once (the command lines they share: ``SOTA_methods.commands``).

Conventions every command follows:
- hard-masked runs always train with ``dense=True`` (no AdapMTL soft thresholds; a sparse source checkpoint has
  its thresholds baked into the weights first, as ``pruning.py`` does);
- a source checkpoint's stored config is the base and flags given on the command line override it (the
  ``finetune.py`` rule), so ``--iters``, ``--lr`` ... set the schedule of the training stages;
- intermediate stages write to sub-folders of ``--save_dir``; the last one writes ``<save_dir>/<tasks>.model``
  (resumable with ``finetune.py --save_dir DIR --resume``, masks included) and ``<save_dir>/masks.json``;
- under ``torchrun`` each command joins the process group once (``main.distributed.init_distributed``) and hands
  the same ``DistInfo`` to every stage's ``build_trainer``, so each stage is an ordinary DDP run.  Every rank takes
  every decision itself, identically: magnitude rankings see bit-identical weights, gradient scores are averaged
  over the ranks first (``engine.mean_over_ranks``), random masks come from generators seeded by ``--seed`` alone,
  and ``engine.check_same_on_all_ranks`` stops the run loudly should masks ever differ.  Only rank 0 writes
  (run folders, checkpoints, logs, json reports); the stages hand weights and masks on in memory, so no rank
  ever reads a file another rank is writing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
from collections.abc import Iterator, Mapping
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import DataLoader

from main.atomic import atomic_write_text
from main.checkpoint import (
    checkpoint_name,
    load_checkpoint,
    load_weights,
    model_from_checkpoint,
    rng_state,
    set_rng_state,
)
from main.config import Config, ConfigError, Provenance
from main.data import build_dataset, dataset_info, verify_dataset
from main.data.sampler import ResumableBatchSampler
from main.device import resolve_device
from main.distributed import DistInfo
from main.masks import MaskSet
from main.models import MultiTaskModel, model_for
from main.sparse import SparsityCounter, SparsityReport
from main.trainer import Trainer
from main.trainer_setup import build_trainer

# Flags that may differ from the source checkpoint's config when pruning it.
PRUNE_OVERRIDES = ("data_root", "device", "batch_size", "num_workers", "seed", "save_dir", "overwrite", "progress")


# ------------------------------------------------------------------------------------------------ sources
def load_source(cfg: Config, given: Provenance, checkpoint: str | None,
                device: torch.device) -> tuple[Config, MultiTaskModel, dict | None]:
    """The model to prune, with soft thresholds baked into the weights, and the config to store with it."""
    if checkpoint:
        state = load_checkpoint(checkpoint)
        overrides = {k: getattr(cfg, k) for k in given.explicit & set(PRUNE_OVERRIDES)}
        cfg, model = model_from_checkpoint(state, checkpoint, device, overrides)
        masks = state.get("masks")
    else:
        info = dataset_info(cfg)
        model = model_for(cfg, info.task_channels).to(device)
        masks = None
    model.bake_thresholds()
    cfg.dense = True
    cfg.resume = False
    cfg.reload = None
    return cfg.check(), model, masks


def score_batches(cfg: Config, n: int, rank: int = 0, world_size: int = 1) -> list[dict[str, Tensor]]:
    """The first ``n`` training batches of the run's seeded order (what at-init / gradient scores see).

    Under DDP (``world_size`` > 1) this rank's slices of the first ``n`` global batches, i.e. exactly what its
    first ``n`` training steps see; the ranks' scores are then averaged (``engine.mean_over_ranks``).
    """
    dataset = build_dataset(cfg, "train")
    verify_dataset(dataset)
    sampler = ResumableBatchSampler(len(dataset), cfg.batch_size, cfg.seed, rank=rank, world_size=world_size,
                                    stream=getattr(dataset, "stream", False))
    loader = DataLoader(dataset, batch_sampler=sampler, num_workers=cfg.num_workers, generator=torch.Generator())
    it = iter(loader)
    return [next(it) for _ in range(n)]


def report_of(model: MultiTaskModel) -> SparsityReport:
    """Sparsity measured from the weights themselves (not the masks), as AdapMTL's is, so the tables compare."""
    counter = SparsityCounter(model.components())
    return counter.report(counter.count(None))


def refuse_resume(cfg: Config, command: str) -> None:
    """Multi-stage commands cannot be resumed as a whole; say what can be."""
    if cfg.resume:
        raise ConfigError(f"{command} runs several training stages and cannot be resumed as a whole; continue an "
                          "interrupted final stage with `python finetune.py --save_dir DIR --resume`, or start over "
                          "with --overwrite")


def hard_mask_config(cfg: Config) -> Config:
    """The config of a hard-masked run: dense storage (no soft thresholds), weights never from ``--reload``."""
    cfg.dense, cfg.reload = True, None
    return cfg.check()


def load_trained(cfg: Config, given: Provenance, checkpoint: str,
                 device: torch.device | None = None) -> tuple[Config, MultiTaskModel, MaskSet]:
    """A trained checkpoint as (its config with the command-line flags on top, baked model, its masks).

    Zeros already in the weights (an AdapMTL run's thresholded weights, an earlier pruning) stay pruned;
    a stored mask set is used as is.  ``device``: this rank's device under torchrun (default ``--device``).
    Every rank reads the same file, so every rank starts from the same weights and masks.
    """
    base, model, saved = load_source(cfg, given, checkpoint, device or resolve_device(cfg.device))
    for key in given.explicit - {"dense", "reload", "resume"}:
        setattr(base, key, getattr(cfg, key))
    base.resume = False
    masks = MaskSet.from_weights(model)
    if saved is not None:
        masks.load_state_dict(saved)
    return hard_mask_config(base), model, masks


# ------------------------------------------------------------------------------------------------ stages
def stage_trainer(cfg: Config, save_dir: Path | str, iters: int | None = None, dist_info: DistInfo | None = None,
                  device: torch.device | None = None) -> Trainer:
    """A fresh ``Trainer`` (new optimiser, schedule at 0, seeded data order) writing to ``save_dir``.

    ``dist_info`` / ``device``: what ``init_distributed`` returned at the command's start; every stage is a DDP
    run on the same process group (DDP broadcasts rank 0's fresh initialisation when it wraps the model).
    """
    stage = dataclasses.replace(cfg, save_dir=str(save_dir), iters=iters or cfg.iters, resume=False)
    return build_trainer(stage.check(), None, dist_info, device)


def start_from(trainer: Trainer, weights: Mapping[str, Tensor], masks: MaskSet | Mapping[str, Tensor],
               source: str = "previous stage") -> MaskSet:
    """Load ``weights`` into the stage's model and enforce ``masks`` from its first step on."""
    load_weights(trainer.model, {"state_dict": dict(weights)}, source, trainer.cfg)
    return enforce(trainer, masks)


def enforce(trainer: Trainer, masks: MaskSet | Mapping[str, Tensor]) -> MaskSet:
    """Install ``masks`` (a MaskSet of any model, or its state dict) on the trainer's model.

    The optimiser state at pruned entries is cleared too, so a stage that starts from restored Adam
    moments (an LTH rewind to iteration k) cannot move pruned weights.
    """
    ms = MaskSet(trainer.model)
    ms.load_state_dict(masks.state_dict() if isinstance(masks, MaskSet) else dict(masks))
    trainer.set_masks(ms)
    ms.zero_optimizer_state(trainer.optimizer)
    return ms


@contextlib.contextmanager
def side_effect_free(model: torch.nn.Module) -> Iterator[None]:
    """Extra forward passes (scoring, regrowth gradients) leave no trace on the run.

    Train-mode forwards update BatchNorm running statistics and dropout draws from the global RNG; both are
    restored afterwards, so a run with scoring passes sees the same later RNG draws and BN statistics as one
    without (the reference computed such gradients on a copy of the network, with the same effect on BN).
    """
    buffers = {k: v.detach().clone() for k, v in model.named_buffers()}
    rng = rng_state()
    try:
        yield
    finally:
        with torch.no_grad():
            for k, v in model.named_buffers():
                v.copy_(buffers[k])
        set_rng_state(rng)


# ------------------------------------------------------------------------------------------------ rounds
def round_sparsities(start: float, target: float, per_round: float | None) -> list[float]:
    """Overall sparsity after each round: each removes ``per_round`` of what remains, the last lands on target.

    ``per_round=None`` is one-shot.  The count is the smallest n with 1 − (1 − start)(1 − p)^n ≥ target
    (e.g. 0 → 0.9 at p = 0.2 takes 11 rounds), so the last round never removes a sliver.
    """
    if target <= start + 1e-12:
        raise ConfigError(f"the source is already {100 * start:.2f}% sparse, at or above --target {target}; "
                          "choose a higher target")
    if per_round is None:
        return [target]
    n = max(1, math.ceil(math.log((1.0 - target) / (1.0 - start)) / math.log(1.0 - per_round) - 1e-9))
    return [1.0 - (1.0 - start) * (1.0 - per_round) ** k for k in range(1, n)] + [target]


# ------------------------------------------------------------------------------------------------ report
METHOD_FILE = "pruning.json"


def write_method(save_dir: Path | str, info: dict, dist_info: DistInfo | None = None) -> None:
    """Record a single-stage run's method settings at its start, so ``--resume`` can continue it as it began.

    Rank 0 only (the other ranks have no run folder of their own; ``--resume`` reads it on every rank later).
    """
    if dist_info is None or dist_info.is_main:
        atomic_write_text(Path(save_dir) / METHOD_FILE, json.dumps(info, indent=1))


def write_json(path: Path | str, obj: object, dist_info: DistInfo | None = None) -> None:
    """A json report, written by rank 0 only (every rank holds the same content)."""
    if dist_info is None or dist_info.is_main:
        atomic_write_text(Path(path), json.dumps(obj, indent=1))


def read_method(save_dir: Path | str) -> dict:
    path = Path(save_dir) / METHOD_FILE
    if not path.is_file():
        raise ConfigError(f"--resume: {save_dir} holds no run of this command ({METHOD_FILE} missing); "
                          "start it without --resume")
    return json.loads(path.read_text())


def finish(trainer: Trainer, pruning: dict, extra: dict | None = None) -> dict:
    """Write ``masks.json`` beside the final checkpoint: sparsity measured from the weights, plus the masks'.

    Every rank returns the summary; only rank 0 writes it.
    """
    report = report_of(trainer.model)
    summary = {"checkpoint": str(trainer.save_dir / checkpoint_name(trainer.tasks)), "pruning": pruning,
               "sparsity": report.as_dict(),
               "mask_sparsity": trainer.masks.sparsity() if trainer.masks is not None else 0.0,
               "iter": trainer.iteration, **(extra or {})}
    write_json(trainer.save_dir / "masks.json", summary, trainer.dist)
    return summary
