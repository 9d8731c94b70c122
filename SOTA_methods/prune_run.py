"""What ``pruning.py`` does: load (or initialise) a model, score, select, save a pruned checkpoint + mask report."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from main.atomic import atomic_write_text
from main.checkpoint import CHECKPOINT_VERSION, atomic_save, load_checkpoint
from main.config import Config, ConfigError
from main.data import build_dataset, dataset_info, verify_dataset
from main.data.sampler import ResumableBatchSampler
from main.masks import MaskSet
from main.models import MultiTaskModel, build_model
from main.run_dir import check_run_dir
from main.runner import model_from_checkpoint, resolve_device, seed_everything
from main.sparse import SparsityCounter, SparsityReport
from main.trainer import checkpoint_name

from .engine import install
from .oneshot import UNSTRUCTURED, prune_oneshot

STRUCTURED = ("taylor", "cosprune")
# Flags that may differ from the source checkpoint's config when pruning it.
PRUNE_OVERRIDES = ("data_root", "device", "batch_size", "num_workers", "seed", "save_dir", "overwrite", "progress")


def load_source(cfg: Config, checkpoint: str | None,
                device: torch.device) -> tuple[Config, MultiTaskModel, dict | None]:
    """The model to prune, with soft thresholds baked into the weights, and the config to store with it."""
    if checkpoint:
        state = load_checkpoint(checkpoint)
        overrides = {k: getattr(cfg, k) for k in getattr(cfg, "explicit", set()) & set(PRUNE_OVERRIDES)}
        cfg, model = model_from_checkpoint(state, checkpoint, device, overrides)
        masks = state.get("masks")
    else:
        info = dataset_info(cfg)
        model = build_model(cfg.architecture, info.task_channels, cfg.width_mult, cfg.sInit_value,
                            sparse=not cfg.dense, head_dropout=cfg.head_dropout,
                            threshold_scope=cfg.threshold_scope).to(device)
        masks = None
    model.bake_thresholds()
    cfg.dense = True
    cfg.resume = False
    cfg.reload = None
    return cfg.validate(), model, masks


def score_batches(cfg: Config, n: int, rank: int = 0, world_size: int = 1):
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
    counter = SparsityCounter(model.components())
    return counter.report(counter.count(None))


def prune(cfg: Config, opts: dict) -> dict:
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # every rank would score and write the same files
        raise ConfigError("pruning.py scores and saves once and does not train, so it runs in one process: start "
                          "it with python, not torchrun (then fine-tune under torchrun with finetune.py)")
    method = opts["method"]
    if method not in UNSTRUCTURED + STRUCTURED:
        raise ConfigError(f"--method {method!r} is not known; choose one of: {', '.join(UNSTRUCTURED + STRUCTURED)}")
    device = resolve_device(cfg.device)
    seed_everything(cfg.seed)
    cfg, model, saved_masks = load_source(cfg, opts["load_checkpoint"], device)
    inputs = {"--load_checkpoint": opts["load_checkpoint"]}
    check_run_dir(cfg, create=False, inputs=inputs)  # created only once every check (data included) has passed
    info = dataset_info(cfg)
    masks = MaskSet.from_weights(model)  # zeros already there (baked thresholds, earlier pruning) stay pruned
    if saved_masks is not None:
        masks.load_state_dict(saved_masks)
    if method not in STRUCTURED and masks.sparsity() > opts["prune_ratio"] + 1e-6:
        raise ConfigError(f"--prune_ratio {opts['prune_ratio']:g} is below the checkpoint's sparsity "
                          f"({masks.sparsity():.4f}): pruning never un-prunes; ask for at least that much")
    batches = score_batches(cfg, opts["num_batches"]) if method not in ("magnitude", "random") else []
    class_weights = info.class_weights.to(device) if info.class_weights is not None else None
    if method in STRUCTURED:
        from .structured import prune_structured

        extra = prune_structured(method, model, masks, opts["prune_ratio"], batches, info.tasks, device,
                                 class_weights=class_weights)
    else:
        disparse_score = opts.get("disparse_score") or ("w2grad" if cfg.dataset == "taskonomy" else "magnitude")
        keep = prune_oneshot(method, model, masks, opts["prune_ratio"], batches, info.tasks, device, seed=cfg.seed,
                             backbone_sparsity=opts["backbone_sparsity"], class_weights=class_weights,
                             disparse_score=disparse_score)
        install(masks, keep)
        extra = {}
    report = report_of(model)
    save_dir = Path(cfg.save_dir)
    pruning = {"method": method, "prune_ratio": opts["prune_ratio"], "source": opts["load_checkpoint"],
               "backbone_sparsity": opts["backbone_sparsity"], "num_batches": opts["num_batches"], **extra}
    channel_masks = pruning.pop("channel_masks", None)  # structured: tensors, kept out of masks.json
    state = {"iter": 0, "state_dict": model.state_dict(), "config": cfg.to_dict(), "masks": masks.state_dict(),
             "pruning": pruning, "version": CHECKPOINT_VERSION}
    if channel_masks is not None:
        state["channel_masks"] = channel_masks
    path = save_dir / checkpoint_name(info.tasks)
    check_run_dir(cfg, inputs=inputs)
    atomic_save(state, path)
    summary = {"checkpoint": str(path), "pruning": pruning, "sparsity": report.as_dict()}
    atomic_write_text(save_dir / "masks.json", json.dumps(summary, indent=1))
    return summary
