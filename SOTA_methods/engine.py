"""The shared pruning engine: per-task gradients, scorers, selectors that hit an exact budget, task arbiters.

Every unstructured baseline is "collect statistics → score weights → select under a budget → combine tasks →
enforce the mask".  The masks themselves (``main.masks.MaskSet``) live in the core because the trainer enforces
them; this module fills them.  Scores are dicts ``{weight name: tensor shaped like the weight}``; higher means
keep.  Budgets are kept-weight COUNTS over the prunable weights (the ones AdapMTL thresholds), so every method's
sparsity is measured exactly as AdapMTL's is.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TypeVar

import torch
from torch import Tensor

from main.data.batch import to_device
from main.distributed import DistInfo, all_reduce_mean, gather_objects
from main.masks import MaskSet
from main.models import BACKBONE, MultiTaskModel
from main.tasks import task_loss

Scores = dict[str, Tensor]
K = TypeVar("K")


# ------------------------------------------------------------------------------------------- statistics
def task_gradients(model: MultiTaskModel, masks: MaskSet, batches: Iterable[Mapping[str, Tensor]],
                   tasks: Sequence[str], device: torch.device, *, per_task: bool,
                   class_weights: Tensor | None = None,
                   statistic: Callable[[Tensor, Tensor], Tensor] | None = None,
                   weights: Mapping[str, float] | None = None) -> dict[str, Scores]:
    """Accumulate ``statistic(weight, grad)`` (default: the raw gradient) over ``batches``.

    ``per_task=True`` gives one entry per task, each from that task's unweighted loss alone (one forward and T
    backward passes per batch, through ``autograd.grad``); ``per_task=False`` one entry ``"total"`` from the sum
    of the task losses (of ``Σ weights[t]·L_t`` when ``weights`` is given: the λ-weighted total).  Gradients
    are taken at the masked point (pruned weights are zero).  The model is put in train mode (BatchNorm batch
    statistics, as during training) and its parameters' ``.grad`` are untouched.
    """
    statistic = statistic or (lambda w, g: g)
    params = [w.param for w in masks]
    keys = list(tasks) if per_task else ["total"]
    acc: dict[str, Scores] = {k: {w.name: torch.zeros_like(w.param) for w in masks} for k in keys}
    was_training = model.training
    model.train()
    try:
        for batch in batches:
            batch = to_device(batch, device)
            preds = model(batch["input"])
            losses = {t: task_loss(t, preds[t], batch, class_weights) for t in tasks}
            if per_task:
                targets = [(t, losses[t]) for t in tasks]
            else:
                targets = [("total", sum(losses[t] * (weights[t] if weights else 1.0) for t in tasks))]
            for i, (key, loss) in enumerate(targets):
                grads = torch.autograd.grad(loss, params, retain_graph=i < len(targets) - 1, allow_unused=True)
                for w, g in zip(masks, grads):
                    if g is not None:
                        acc[key][w.name] += statistic(w.param.detach(), g)
    finally:
        model.train(was_training)
    return acc


def scope_of(masks: MaskSet, task: str | None) -> list[str]:
    """Weight names a task uses: the shared backbone plus its own head (all weights for ``None``)."""
    return [w.name for w in masks if task is None or w.component in (BACKBONE, task)]


# --------------------------------------------------------------------------------------------- scorers
def magnitude_scores(masks: MaskSet) -> Scores:
    return {w.name: w.param.detach().abs() for w in masks}


def random_scores(masks: MaskSet, seed: int) -> Scores:
    gen = torch.Generator().manual_seed(seed)
    return {w.name: torch.rand(w.param.shape, generator=gen).to(w.param.device) for w in masks}


def connection_sensitivity(weight: Tensor, grad: Tensor) -> Tensor:
    """SNIP's |∂L/∂c| at c = 1, which equals |w·g| exactly (no mask variables needed)."""
    return (weight * grad).abs()


# ------------------------------------------------------------------------------------------- selectors
def _flat(scores: Scores, names: Sequence[str], masks: MaskSet) -> Tensor:
    """Scores of ``names`` concatenated; already-pruned weights get -inf so they are never kept again."""
    parts = []
    for n in names:
        s = scores[n].detach().float().flatten()
        parts.append(torch.where(masks.masks[n].flatten(), s, torch.full_like(s, float("-inf"))))
    return torch.cat(parts)


def _unflatten(keep: Tensor, names: Sequence[str], masks: MaskSet) -> dict[str, Tensor]:
    out, start = {}, 0
    for n in names:
        numel = masks.masks[n].numel()
        out[n] = keep[start:start + numel].view_as(masks.masks[n])
        start += numel
    return out


def top_k_mask(scores: Scores, names: Sequence[str], masks: MaskSet, keep: int) -> dict[str, Tensor]:
    """Keep exactly ``keep`` weights of ``names`` with the highest scores (ties broken by index, never by value)."""
    flat = _flat(scores, names, masks)
    keep = max(0, min(keep, int(torch.isfinite(flat).sum())))
    mask = torch.zeros(flat.numel(), dtype=torch.bool, device=flat.device)
    if keep:
        mask[torch.topk(flat, keep, sorted=False).indices] = True
    return _unflatten(mask, names, masks)


def select_global(scores: Scores, masks: MaskSet, sparsity: float) -> dict[str, Tensor]:
    """One ranking over every prunable weight (IMP / SNIP / magnitude)."""
    names = list(masks.masks)
    return top_k_mask(scores, names, masks, round((1.0 - sparsity) * masks.total()))


def select_per_component(scores: Scores, masks: MaskSet, sparsity: Mapping[str, float]) -> dict[str, Tensor]:
    """A separate ranking per component, each with its own sparsity (the reference ``pruning_head.py``)."""
    out: dict[str, Tensor] = {}
    for comp in masks.components():
        names = [w.name for w in masks if w.component == comp]
        total = sum(masks.masks[n].numel() for n in names)
        out.update(top_k_mask(scores, names, masks, round((1.0 - sparsity[comp]) * total)))
    return out


def select_per_layer(scores: Scores, masks: MaskSet, density: Mapping[str, float]) -> dict[str, Tensor]:
    """Each layer keeps its own fraction ``density[name]`` (ERK budgets, per-layer magnitude drop)."""
    out: dict[str, Tensor] = {}
    for name, d in density.items():
        out.update(top_k_mask(scores, [name], masks, round(d * masks.masks[name].numel())))
    return out


SCOPES = ("global", "component", "layer")


def magnitude_keep(masks: MaskSet, sparsity: float, scope: str = "global",
                   backbone_sparsity: float | None = None) -> dict[str, Tensor]:
    """The |w| criterion at ``sparsity``: the one magnitude selection of ``pruning.py``, IMP and LTH.

    ``scope``: one ranking over every prunable weight (``global``), or every component / every layer pruned to
    ``sparsity`` on its own.  ``backbone_sparsity`` (global scope; the reference ``pruning_head.py``): the backbone
    ranked alone to that sparsity, all heads together to ``sparsity``.
    """
    scores = magnitude_scores(masks)
    if backbone_sparsity is not None:
        if scope != "global":
            raise ValueError(f"backbone_sparsity goes with the global scope, not {scope!r}")
        out: dict[str, Tensor] = {}
        for group, sp in ((True, backbone_sparsity), (False, sparsity)):
            names = [w.name for w in masks if (w.component == BACKBONE) == group]
            total = sum(masks.masks[n].numel() for n in names)
            out.update(top_k_mask(scores, names, masks, round((1.0 - sp) * total)))
        return out
    if scope == "global":
        return select_global(scores, masks, sparsity)
    if scope == "component":
        return select_per_component(scores, masks, {c: sparsity for c in masks.components()})
    if scope == "layer":
        return select_per_layer(scores, masks, {n: 1.0 - sparsity for n in masks.masks})
    raise ValueError(f"scope {scope!r} is not known; choose one of: {', '.join(SCOPES)}")


def arbitrate(task_masks: Mapping[str, Mapping[str, Tensor]], masks: MaskSet) -> dict[str, Tensor]:
    """DiSparse's arbiter: a shared (backbone) weight survives if ANY task keeps it; a head follows its task."""
    out: dict[str, Tensor] = {}
    for w in masks:
        if w.component == BACKBONE:
            keep = torch.zeros_like(masks.masks[w.name])
            for tm in task_masks.values():
                keep |= tm[w.name]
            out[w.name] = keep
        else:
            out[w.name] = task_masks[w.component][w.name]
    return out


def select_disparse(task_scores: Mapping[str, Scores], masks: MaskSet, sparsity: float,
                    tolerance: int = 1) -> dict[str, Tensor]:
    """Per-task top-κ over (backbone + own head), OR on shared weights; κ found by bisection for the target.

    Replaces DiSparse's hand-tuned κ tables: the kept count after the arbiter is monotone in κ, so bisection
    lands within ``tolerance`` weights of the target (or as close as the discrete steps allow).
    """
    target = round((1.0 - sparsity) * masks.total())
    orders = {}
    for task, scores in task_scores.items():
        names = scope_of(masks, task)
        flat = _flat(scores, names, masks)
        orders[task] = (names, torch.argsort(flat, descending=True, stable=True), int(torch.isfinite(flat).sum()))

    def build(kappa: float) -> dict[str, Tensor]:
        per_task = {}
        for task, (names, order, alive) in orders.items():
            n = sum(masks.masks[x].numel() for x in names)
            keep = torch.zeros(n, dtype=torch.bool, device=order.device)
            keep[order[:min(alive, int(kappa * n))]] = True
            per_task[task] = _unflatten(keep, names, masks)
        return arbitrate(per_task, masks)

    def kept(m: dict[str, Tensor]) -> int:
        return int(sum(int(v.sum()) for v in m.values()))

    lo, hi = 0.0, 1.0
    best = build(hi)
    for _ in range(60):
        mid = (lo + hi) / 2
        m = build(mid)
        k = kept(m)
        if abs(k - target) <= tolerance:
            return m
        if k > target:
            hi, best = mid, m
        else:
            lo = mid
    return best


def install(masks: MaskSet, keep: Mapping[str, Tensor]) -> MaskSet:
    """Intersect ``keep`` into ``masks`` (pruned weights stay pruned) and zero the pruned weights."""
    for name, k in keep.items():
        masks.masks[name] = masks.masks[name] & k.to(masks.masks[name].device)
    masks.apply()
    return masks


# ------------------------------------------------------------------------------------------- DDP ranks
def mean_over_ranks(tensors: Mapping[K, Tensor], info: DistInfo | None) -> dict[K, Tensor]:
    """Element-wise mean of every tensor over the DDP ranks (a new dict; identity in one process).

    Gradient-based scores are taken on each rank's own slice of the global batch, so without this every rank
    would select a different mask.  The mean is what one process would accumulate over all ranks' batches (up to
    a constant factor, which no ranking sees), and an all-reduce hands every rank the bit-identical result, so
    the deterministic selectors then pick the same weights everywhere.  One collective per dtype: the tensors
    are flattened and concatenated (a per-layer all-reduce costs a round trip per layer).
    """
    out = dict(tensors)
    if info is None or not info.enabled or not out:
        return out
    by_dtype: dict[torch.dtype, list[K]] = {}
    for key, t in out.items():
        by_dtype.setdefault(t.dtype, []).append(key)
    for keys in by_dtype.values():
        flat = all_reduce_mean(torch.cat([out[k].detach().reshape(-1) for k in keys]), info)
        for key, part in zip(keys, torch.split(flat, [out[k].numel() for k in keys])):
            out[key] = part.view_as(out[key])
    return out


def mean_over_ranks_per_task(scores: Mapping[str, Mapping[str, Tensor]],
                             info: DistInfo | None) -> dict[str, dict[str, Tensor]]:
    """``{task: {weight: score}}`` averaged over the DDP ranks in one collective (the same values in one process)."""
    flat = mean_over_ranks({(t, n): s for t, per in scores.items() for n, s in per.items()}, info)
    return {t: {n: flat[(t, n)] for n in per} for t, per in scores.items()}


def mask_fingerprint(masks: Mapping[str, Tensor]) -> str:
    """A digest of the mask contents (names, shapes and bits); equal digests mean equal masks."""
    h = hashlib.sha256()
    for name in sorted(masks):
        m = masks[name].detach().to("cpu", torch.bool).contiguous()
        h.update(f"{name}:{tuple(m.shape)}".encode())
        h.update(m.numpy().tobytes())
    return h.hexdigest()


def check_same_on_all_ranks(masks: Mapping[str, Tensor], info: DistInfo | None, what: str) -> None:
    """Raise if ranks hold different masks after a pruning decision (cheap: one digest gathered per decision).

    DDP only averages gradients: ranks that pruned differently would keep training silently on different
    networks, and rank 0 would save one of them.  Every decision here is built to be identical, so a mismatch is
    a bug (or a nondeterministic kernel breaking a tie differently), and stopping loudly is the only safe answer.
    """
    if info is None or not info.enabled:
        return
    digests = gather_objects(mask_fingerprint(masks), info)
    if len(set(digests)) > 1:
        raise RuntimeError(f"{what}: the ranks selected different masks ({len(set(digests))} distinct); "
                           "every rank must take the same pruning decision")
