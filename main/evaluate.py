"""Evaluating a model: one pass over a split (``evaluate``: the trainer's validation and ``test.py`` alike) and
a saved checkpoint on its own terms (``evaluate_checkpoint``: the config inside the file rebuilds model and data).

``evaluate_checkpoint`` is ``test.py``; it returns the JSON object that docs/usage.md ("test.py") describes
(metrics, sparsity per layer / component / overall, Δ_T against a dense reference, parameter counts, FLOPs).
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

from .checkpoint import load_checkpoint, model_from_checkpoint
from .config import Config, ConfigError
from .data import build_dataset, dataset_info, verify_dataset
from .data.batch import to_device
from .export import model_from_export
from .models import MultiTaskModel
from .monitor import progress
from .precision import autocast, predictions_fp32, to_channels_last
from .scores import UndefinedDelta, delta_t
from .sparse import SparsityCounter, SparsityReport, sparse_convs
from .tasks import DEFINITIONS, TaskMetrics, metric_directions, task_loss


@torch.no_grad()
def evaluate(model: nn.Module, batches: Iterable[Mapping[str, Tensor]], tasks: tuple[str, ...],
             metrics: TaskMetrics, device: torch.device, class_weights: Tensor | None = None, *,
             amp: str = "off", channels_last: bool = False, loss_mean: str = "sample") -> dict:
    """Mean per-task loss (sample-weighted) and the metric set over all ``batches``.

    The model is put in eval mode and restored afterwards; nothing here builds an autograd graph.  ``amp`` and
    ``channels_last`` are the run's ``--amp`` / ``--channels_last`` (the model is expected to be converted
    already): the forward runs under the same autocast as training, losses and metrics on fp32 predictions.
    ``loss_mean="batch"``: the plain mean of the per-batch losses (the reference's; a smaller last batch then
    counts as much as a full one) instead of the mean over samples.
    """
    was_training = model.training
    model.eval()
    metrics.reset()
    loss_sums = torch.zeros(len(tasks), device=device, dtype=torch.float64)
    samples = 0
    n_batches = 0
    try:
        for batch in batches:
            batch = to_device(batch, device)
            with autocast(amp, device):
                preds = model(to_channels_last(batch["input"], channels_last))
            preds = predictions_fp32(preds)
            n = batch["input"].shape[0]
            weight = n if loss_mean == "sample" else 1
            loss_sums += torch.stack([task_loss(t, preds[t], batch, class_weights) for t in tasks]).double() * weight
            samples += n
            n_batches += 1
            metrics.update(preds, batch)
    finally:
        model.train(was_training)
    if samples == 0:
        raise ValueError("the evaluation split is empty")
    losses = (loss_sums / (samples if loss_mean == "sample" else n_batches)).tolist()
    return {"losses": dict(zip(tasks, losses)), "metrics": metrics.compute()}


def param_counts(model: MultiTaskModel, report: SparsityReport) -> dict[str, int]:
    """Parameters of the deployed model (thresholds excluded); non-zero counts the EFFECTIVE conv weights.

    Thresholded conv weights count as the soft threshold leaves them (``report``); biases and BatchNorm
    parameters count as stored.
    """
    thresholds = {id(p) for p in model.thresholds.values()}
    conv_weights = {id(conv.weight) for _, m in model.components() for _, conv in sparse_convs(m)}
    total = nonzero = 0
    for p in model.parameters():
        if id(p) in thresholds:
            continue
        total += p.numel()
        if id(p) not in conv_weights:
            nonzero += int(torch.count_nonzero(p))
    return {"total": total, "nonzero": nonzero + report.nonzero}


@torch.no_grad()
def conv_flops(model: MultiTaskModel, input_shape: tuple[int, ...], device: torch.device) -> dict[str, int]:
    """Convolution FLOPs of one forward pass of ONE input of ``input_shape`` (C, H, W), counted by hooks.

    Every ``nn.Conv2d`` counts 2 FLOPs (multiply + add) per multiply-accumulate: ``dense`` charges every
    weight, ``2·numel(W)·H_out·W_out`` (``numel`` of a grouped conv's weight is already C_out·C_in/groups·k·k),
    ``nonzero`` only the non-zero EFFECTIVE weights (soft-thresholded where thresholds are on),
    ``2·nnz(W_eff)·H_out·W_out``: the work a zero-skipping kernel would do.  Biases, BatchNorm, activations,
    pooling and upsampling are not counted; padding positions are charged like interior ones.
    """
    dense = nonzero = 0
    taus = model.taus() if model.sparse else {}
    tau_of = {id(conv): taus.get(name) for name, convs in model._component_convs.items() for conv in convs}

    def hook(conv: torch.nn.Conv2d, _inputs, output: torch.Tensor) -> None:
        nonlocal dense, nonzero
        positions = output.shape[-2] * output.shape[-1]
        tau = tau_of.get(id(conv))
        weight = conv.effective_weight(tau) if tau is not None else conv.weight
        dense += 2 * conv.weight.numel() * positions
        nonzero += 2 * int(torch.count_nonzero(weight)) * positions

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    was_training = model.training
    try:
        model.eval()
        model(torch.zeros((1, *input_shape), device=device))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return {"dense": dense, "nonzero": nonzero}


def load_reference(path: str, tasks: tuple[str, ...], directions: dict[str, dict[str, int]] | None = None) -> dict:
    """A dense model's test.py JSON, checked against this model's tasks (and, given ``directions``, metrics)."""
    try:
        ref = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"--reference {path} not found; write it with test.py --json on the dense model") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"--reference {path} is not valid JSON ({e.msg}, line {e.lineno}); write it with "
                          "test.py --json on the dense model") from None
    except (OSError, UnicodeDecodeError) as e:  # a folder, a binary file (a checkpoint), unreadable
        reason = e.strerror if isinstance(e, OSError) and e.strerror else "not a UTF-8 text file"
        raise ConfigError(f"--reference {path} cannot be read ({reason}); it must be a test.py --json output") \
            from None
    if not isinstance(ref, dict) or not isinstance(ref.get("metrics"), dict):
        raise ConfigError(f"--reference {path} has no 'metrics' object; it must be a test.py --json output")
    if set(ref["metrics"]) != set(tasks):
        raise ConfigError(f"--reference {path} covers tasks {sorted(ref['metrics'])}, this model "
                          f"{sorted(tasks)}; use a dense model trained on the same tasks")
    for task in tasks:
        values = ref["metrics"][task]
        if not isinstance(values, dict) or not all(isinstance(v, int | float) and not isinstance(v, bool)
                                                   for v in values.values()):
            raise ConfigError(f"--reference {path}: metrics of {task} must map metric names to numbers; "
                              "it must be a test.py --json output")
        if directions is not None and set(values) != set(directions[task]):
            raise ConfigError(f"--reference {path} has metrics {sorted(values)} for {task}, this model reports "
                              f"{sorted(directions[task])}; use a test.py --json of a dense model on the same "
                              "dataset and tasks")
    return ref


def _load_model(path: str, device: torch.device, overrides: dict) -> tuple[int | None, Config, MultiTaskModel]:
    """(iteration, config, model) of a checkpoint, or of a sparse export (``python -m main.export``)."""
    if str(path).endswith(".safetensors"):
        cfg, model = model_from_export(path, device, overrides)
        return None, cfg.check(), model
    state = load_checkpoint(path, map_location="cpu")
    cfg, model = model_from_checkpoint(state, path, device, overrides)
    return state.get("iter"), cfg.check(), model


def _delta(metrics: dict, ref: dict, reference: str, directions: dict) -> dict | None:
    """Δ_T against the dense model's JSON (None, with a warning, where a reference metric is 0)."""
    try:
        return delta_t(metrics, ref["metrics"], directions)
    except UndefinedDelta as e:
        warnings.warn(f"Δ_T not computed: {e} in --reference {reference}", stacklevel=1)
    except ValueError as e:
        raise ConfigError(f"--reference {reference} does not match this model's metrics: {e}") from None
    return None


def evaluate_checkpoint(path: str, device: torch.device, split: str = "test", *, batch_size: int | None = None,
                        data_root: str | None = None, metric_definitions: str | None = None,
                        reference: str | None = None, show_progress: bool = False) -> dict:
    """``test.py``: the checkpoint (or sparse export) at ``path`` on ``split``, as the JSON object it writes."""
    overrides = {k: v for k, v in (("data_root", data_root), ("metric_definitions", metric_definitions)) if v}
    iteration, cfg, model = _load_model(path, device, overrides)
    info = dataset_info(cfg)
    directions = metric_directions(info.metric_style, info.tasks)
    ref = load_reference(reference, info.tasks, directions) if reference else None
    for key in ("dataset", "architecture"):  # Δ_T against a dense model of another setting means nothing
        if ref is not None and ref.get(key) not in (None, getattr(cfg, key)):
            raise ConfigError(f"--reference {reference} is a {ref[key]} model, this one {getattr(cfg, key)} ({key}); "
                              f"use the dense model of the same {key}")
    dataset = build_dataset(cfg, split)
    verify_dataset(dataset)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size or cfg.batch_size, shuffle=False,
                                         num_workers=cfg.num_workers, generator=torch.Generator())
    metrics = TaskMetrics(info.tasks, info.num_classes, info.metric_style, cfg.metric_definitions,
                          class_weights=info.class_weights)
    class_weights = info.class_weights.to(device) if info.class_weights is not None else None
    batches = progress(loader, desc=f"eval {split}", enabled=show_progress)
    if cfg.channels_last:  # evaluate the way the run trained: NHWC layout and the same autocast
        model.to(memory_format=torch.channels_last)
    result = evaluate(model, batches, info.tasks, metrics, device, class_weights, amp=cfg.amp,
                      channels_last=cfg.channels_last)
    counter = SparsityCounter(model.components())
    report = counter.report(counter.count(model.taus() if model.sparse else None))
    delta = _delta(result["metrics"], ref, reference, directions) if ref is not None else None
    sparsity = report.as_dict()
    return {
        "checkpoint": str(path),
        "dataset": cfg.dataset,
        "architecture": cfg.architecture,
        "split": split,
        "iter": iteration,
        "dense": cfg.dense,
        "amp": cfg.amp,
        "channels_last": cfg.channels_last,
        "metric_definitions": cfg.metric_definitions,
        "metrics": result["metrics"],
        # both definitions from the same pass: the comparison ranks on one and reports the other beside it
        "metrics_by_definition": {d: metrics.compute(d) for d in DEFINITIONS},
        "losses": result["losses"],
        "sparsity": {k: sparsity[k] for k in ("overall", "components", "layers")},
        "delta_t": delta,
        "params": param_counts(model, report),
        "flops": conv_flops(model, tuple(dataset[0]["input"].shape), device),
        "thresholds": {c: float(t.detach()) for c, t in model.taus().items()} if model.sparse else None,
    }
