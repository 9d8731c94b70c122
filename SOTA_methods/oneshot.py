"""One-shot unstructured criteria, and what ``pruning.py`` does with any method's one-shot step.

Criteria (each a registry ``prune`` step: score once, select to the target, install the mask):
``magnitude`` (global, or backbone / heads separately as the reference ``pruning_head.py``), ``uniform`` (|w|,
every component to the same sparsity), ``random`` (uniform scores), ``snip`` (|w·g| of the total loss, global
ranking), ``disparse_pt`` (DiSparse on a trained model: per-task scores over backbone + own head, OR on shared
weights), ``disparse_static`` (DiSparse at initialisation: per-task SNIP scores, same arbiter).  ``magnitude``,
``uniform`` and ``disparse_pt`` exist only as one-shot methods and are registered here; SNIP, DiSparse-static and
random are at-init methods, registered by ``SOTA_methods.at_init``, which trains what their step pruned.  Under
torchrun (``at_init``) the gradient scores are averaged over the ranks first.

``prune_once`` is ``pruning.py``: load a checkpoint (or initialise a model), apply the ``--method``'s step, save the
pruned checkpoint and ``masks.json``; no training (``finetune.py`` does that).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch
from torch import Tensor

from main.atomic import atomic_write_text
from main.checkpoint import CHECKPOINT_VERSION, atomic_save, checkpoint_name
from main.config import Config, ConfigError, Provenance
from main.data import dataset_info
from main.device import resolve_device
from main.distributed import DistInfo
from main.masks import MaskSet
from main.models import MultiTaskModel
from main.run_dir import check_run_dir
from main.seeding import seed_everything

from .engine import (
    connection_sensitivity,
    install,
    magnitude_keep,
    magnitude_scores,
    mean_over_ranks,
    mean_over_ranks_per_task,
    random_scores,
    select_disparse,
    select_global,
    select_per_component,
    task_gradients,
)
from .registry import PRUNING_PY, Method, OptionGroup, PruneInputs, choose, methods, register
from .stages import load_source, report_of, score_batches

DISPARSE_SCORES = ("magnitude", "w2grad")


# ------------------------------------------------------------------------------------------------ criteria
def w2_grad(weight: Tensor, grad: Tensor) -> Tensor:
    """DiSparse-PT's Taskonomy score contribution: w²·|g| summed over batches."""
    return weight.pow(2) * grad.abs()


def magnitude_step(inp: PruneInputs) -> dict:
    allocation = inp.options.get("component_sparsity")
    if allocation:
        install(inp.masks, select_per_component(magnitude_scores(inp.masks), inp.masks,
                                                 _allocation(allocation, inp.masks)))
        return {"component_sparsity": dict(allocation)}
    install(inp.masks, magnitude_keep(inp.masks, inp.sparsity, backbone_sparsity=inp.options.get("backbone_sparsity")))
    return {}


def _allocation(allocation: dict[str, float], masks: MaskSet) -> dict[str, float]:
    """``--component_sparsity`` checked against the model's components: every one named, no other."""
    comps = list(masks.components())
    if set(allocation) != set(comps):
        raise ConfigError(f"--component_sparsity must name every component once ({' '.join(comps)}), got "
                          f"{' '.join(allocation)}")
    return allocation


def uniform_step(inp: PruneInputs) -> dict:
    """Every component (backbone, each head) pruned by |w| to the same sparsity: the allocation AdapMTL's learned
    per-component thresholds are meant to improve on."""
    install(inp.masks, magnitude_keep(inp.masks, inp.sparsity, scope="component"))
    return {}


def random_step(inp: PruneInputs) -> dict:
    """Seeded by ``--seed`` alone, so every DDP rank draws the same mask."""
    install(inp.masks, select_global(random_scores(inp.masks, inp.cfg.seed), inp.masks, inp.sparsity))
    return {}


def snip_step(inp: PruneInputs) -> dict:
    scores = task_gradients(inp.model, inp.masks, inp.batches, inp.tasks, inp.device, per_task=False,
                            class_weights=inp.class_weights, statistic=connection_sensitivity,
                            weights=inp.loss_weights)["total"]
    install(inp.masks, select_global(mean_over_ranks(scores, inp.dist), inp.masks, inp.sparsity))
    return {}


def disparse_static_step(inp: PruneInputs) -> dict:
    per_task = task_gradients(inp.model, inp.masks, inp.batches, inp.tasks, inp.device, per_task=True,
                              class_weights=inp.class_weights, statistic=connection_sensitivity)
    install(inp.masks, select_disparse(mean_over_ranks_per_task(per_task, inp.dist), inp.masks, inp.sparsity))
    return {}


def disparse_pt_step(inp: PruneInputs) -> dict:
    """Per-task scores: |w| (the NYUv2 reference) or w²·|g_t| (its Taskonomy code; the default on Taskonomy)."""
    score = inp.options.get("disparse_score") or ("w2grad" if inp.cfg.dataset == "taskonomy" else "magnitude")
    if score == "magnitude":
        mag = magnitude_scores(inp.masks)
        per_task = {t: mag for t in inp.tasks}
    elif score == "w2grad":
        per_task = task_gradients(inp.model, inp.masks, inp.batches, inp.tasks, inp.device, per_task=True,
                                  class_weights=inp.class_weights, statistic=w2_grad)
    else:
        raise ValueError(f"unknown DiSparse score {score!r}; choose one of {', '.join(DISPARSE_SCORES)}")
    install(inp.masks, select_disparse(per_task, inp.masks, inp.sparsity))
    return {}


# ------------------------------------------------------------------------------------------------ pruning.py
def prune_once(cfg: Config, given: Provenance, opts: dict, dist_info: DistInfo | None = None,
               device: torch.device | None = None) -> dict:
    """Load (or initialise) the model, apply ``--method``'s one-shot step, save; returns the ``masks.json`` summary."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # every rank would score and write the same files
        raise ConfigError("pruning.py scores and saves once and does not train, so it runs in one process: start "
                          "it with python, not torchrun (then fine-tune under torchrun with finetune.py)")
    # the registry as imported: through pruning.py (SOTA_methods.catalog) that is every method
    method = choose(opts["method"], methods(lambda m: m.prune is not None))
    device = device or resolve_device(cfg.device)
    seed_everything(cfg.seed)
    cfg, model, saved_masks = load_source(cfg, given, opts["load_checkpoint"], device)
    inputs = {"--load_checkpoint": opts["load_checkpoint"], "--config": given.preset_file}
    check_run_dir(cfg, create=False, inputs=inputs)  # created only once every check (data included) has passed
    info = dataset_info(cfg)
    masks = MaskSet.from_weights(model)  # zeros already there (baked thresholds, earlier pruning) stay pruned
    if saved_masks is not None:
        masks.load_state_dict(saved_masks)
    if method.kind != "structured" and masks.sparsity() > opts["target"] + 1e-6:
        raise ConfigError(f"--target {opts['target']:g} is below the checkpoint's sparsity "
                          f"({masks.sparsity():.4f}): pruning never un-prunes; ask for at least that much")
    batches = score_batches(cfg, opts["num_batches"]) if method.needs_batches else []
    class_weights = info.class_weights.to(device) if info.class_weights is not None else None
    extra = method.prune(PruneInputs(cfg, model, masks, opts["target"], batches, info.tasks, device,
                                     class_weights=class_weights, options=opts))
    check_run_dir(cfg, inputs=inputs)
    return save_pruned(cfg, model, masks, opts, extra, checkpoint_name(info.tasks))


def save_pruned(cfg: Config, model: MultiTaskModel, masks: MaskSet, opts: dict, extra: dict, name: str) -> dict:
    """``<save_dir>/<name>`` (weights, masks, config, the pruning record) and ``masks.json`` beside it."""
    report = report_of(model)
    save_dir = Path(cfg.save_dir)
    pruning = {"method": opts["method"], "prune_ratio": opts["target"], "source": opts["load_checkpoint"],
               "backbone_sparsity": opts.get("backbone_sparsity"), "num_batches": opts["num_batches"], **extra}
    channel_masks = pruning.pop("channel_masks", None)  # structured: tensors, kept out of masks.json
    state = {"iter": 0, "state_dict": model.state_dict(), "config": cfg.to_dict(), "masks": masks.state_dict(),
             "pruning": pruning, "version": CHECKPOINT_VERSION}
    if channel_masks is not None:
        state["channel_masks"] = channel_masks
    path = save_dir / name
    atomic_save(state, path)
    summary = {"checkpoint": str(path), "pruning": pruning, "sparsity": report.as_dict()}
    atomic_write_text(save_dir / "masks.json", json.dumps(summary, indent=1))
    return summary


# ------------------------------------------------------------------------------------------------ registration
def add_magnitude_args(group: OptionGroup) -> None:
    group.add_argument("--backbone_sparsity", type=_backbone_fraction,
                       help="backbone pruned to this, the heads jointly to --target (reference pruning_head.py)")
    group.add_argument("--component_sparsity", type=_component_fraction, nargs="+", action=_PairsToDict,
                       metavar="COMPONENT=FRACTION",
                       help="each component ranked alone to its own sparsity, e.g. backbone=0.8 normal=0.95 ... "
                            "(every component named; --target is then only the check that nothing is un-pruned)")


class _PairsToDict(argparse.Action):
    def __call__(self, parser, namespace, values, option_string=None) -> None:
        setattr(namespace, self.dest, dict(values))


def _component_fraction(text: str) -> tuple[str, float]:
    name, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"--component_sparsity takes COMPONENT=FRACTION pairs, e.g. backbone=0.8, "
                                         f"got {text!r}")
    try:
        fraction = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{name}={value!r}: not a number") from None
    if not 0.0 <= fraction < 1.0:
        raise argparse.ArgumentTypeError(f"--component_sparsity {name}: a fraction in [0, 1), got {fraction}")
    return name, fraction


def _backbone_fraction(text: str) -> float:
    value = float(text)
    if not 0.0 <= value < 1.0:
        raise ConfigError(f"--backbone_sparsity must be in [0, 1), got {value}")
    return value


def add_disparse_pt_args(group: OptionGroup) -> None:
    group.add_argument("--disparse_score", choices=DISPARSE_SCORES,
                       help="magnitude (NYUv2 reference) | w2grad (Taskonomy; the default there)")


MAGNITUDE = register(Method(
    name="magnitude", kind="one-shot", label="Magnitude", run=prune_once, command=PRUNING_PY,
    about="|w|, one global ranking (or backbone and heads to their own sparsities)",
    add_args=add_magnitude_args, prune=magnitude_step))
UNIFORM = register(Method(
    name="uniform", kind="one-shot", label="Uniform", run=prune_once, command=PRUNING_PY,
    about="|w|, every component (backbone, each head) pruned to the same sparsity", prune=uniform_step))
DISPARSE_PT = register(Method(
    name="disparse_pt", kind="one-shot", label="DiSparse-PT", run=prune_once, command=PRUNING_PY,
    about="DiSparse on a trained model: per-task scores, a shared weight kept if any task keeps it",
    add_args=add_disparse_pt_args, prune=disparse_pt_step, needs_batches=True))
