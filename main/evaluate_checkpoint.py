"""Evaluate a saved checkpoint on its own terms: the config inside the file rebuilds model and data.

Used by ``test.py``; returns the JSON object of DESIGN.md §3 (metrics, sparsity per layer / component /
overall, Δ_T against a dense reference, parameter counts).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch

from .checkpoint import load_checkpoint
from .config import ConfigError
from .data import build_dataset, dataset_info, verify_dataset
from .evaluation import UndefinedDelta, delta_t
from .models import MultiTaskModel
from .monitor import progress
from .runner import model_from_checkpoint
from .sparse import SparsityCounter, SparsityReport, sparse_convs
from .tasks import DEFINITIONS, TaskMetrics, metric_directions
from .validation import evaluate


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


def evaluate_checkpoint(path: str, device: torch.device, split: str = "test", *, batch_size: int | None = None,
                        data_root: str | None = None, metric_definitions: str | None = None,
                        reference: str | None = None, show_progress: bool = False) -> dict:
    overrides = {k: v for k, v in (("data_root", data_root), ("metric_definitions", metric_definitions)) if v}
    if str(path).endswith(".safetensors"):  # a sparse export (python -m main.export)
        from .export import model_from_export

        state = {"iter": None}
        cfg, model = model_from_export(path, device, overrides)
    else:
        state = load_checkpoint(path, map_location="cpu")
        cfg, model = model_from_checkpoint(state, path, device, overrides)
    cfg.validate()
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
    delta = None
    if ref is not None:
        try:
            delta = delta_t(result["metrics"], ref["metrics"], directions)
        except UndefinedDelta as e:
            warnings.warn(f"Δ_T not computed: {e} in --reference {reference}", stacklevel=1)
        except ValueError as e:
            raise ConfigError(f"--reference {reference} does not match this model's metrics: {e}") from None
    sparsity = report.as_dict()
    return {
        "checkpoint": str(path),
        "dataset": cfg.dataset,
        "architecture": cfg.architecture,
        "split": split,
        "iter": state.get("iter"),
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
