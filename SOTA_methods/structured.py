"""Structured (whole-filter) pruning of the shared backbone: Taylor (Molchanov et al. 2019) and CosPrune (S004).

Unit.  A *filter* is one output channel of a backbone conv whose removal changes no tensor shape that anything
else depends on; heads are pruned only with ``heads=True`` (``--prune_heads``): S004 prunes the shared backbone
only, which stays the default, and the option lets them be compared at AdapMTL's FLOPs, most of which are in the
heads.  A head unit is a hidden channel of an ASPP branch (``main.channel_masks``).  Taylor only: CosPrune's score
compares the tasks' gradients on a unit, and a task head receives its own task's gradient alone (every other
task's is zero, so every head channel would score 0 and the ranking among them would be arbitrary).

* Deeplab-ResNet34: the internal ``conv1`` of every BasicBlock (→ ``bn1`` → ReLU → read by ``conv2``).  Every other
  backbone conv (stem, block ``conv2``, ``downsample``) feeds a residual add, so its channels are coupled across a
  whole stage; restricting pruning to ``conv1`` is the simple faithful choice the spec allows (coupled groups are
  not pruned).
* MobileNetV2: the hidden channels of each inverted residual: pw-expand output = depthwise channels = pw-linear
  input, never touched by a residual add.  In the ``t = 1`` first block the hidden channels are the stem's outputs;
  they form a unit too when that block has no shortcut (full width), otherwise they are coupled and skipped.

Masking.  Removing channel c of a unit sets, in the per-weight ``MaskSet``, the conv rows ``[c]`` of every conv on
the chain (pw-expand and depthwise) and the consumer's input columns ``[:, c]`` to False, so the trainer enforces
them and sparsity is counted by the same code as every other method; ``ChannelMasks`` additionally zeroes the
γ **and** β of every BatchNorm on the chain (with β alone the channel would emit a constant).  The channel then
outputs exactly 0 in train and eval mode (batch statistics are per channel), so the masked network computes what
the physically smaller network of ``SOTA_methods.compact`` computes.

Criteria (higher = keep; the lowest are pruned, one global ranking over all units).

* Taylor: I = (Σ_s w_s·g_s)² per unit, g the gradient of the TOTAL loss (sum of task losses), averaged over the
  batches (``form="abs"``: |Σ_s w_s·g_s|, S004 eq. 5 up to sign).  ``source="gate"`` (default) takes S = {γ_c, β_c}
  of the unit's last BatchNorm, which is Molchanov's "gate after BN" (``(γ·∂L/∂γ + β·∂L/∂β)²`` = first-order loss
  change of zeroing the channel, the variant NVIDIA found best).  ``source="weight"`` takes S = the conv filter
  rows (S004 eq. 5 literally); but a conv followed by a batch-statistics BN is scale invariant, so Σ w·g of its
  filter is 0 up to the BN epsilon, and that ranking is mostly noise on these backbones.
* CosPrune (S004 Algorithm 1): per unit and task, the gradient of that task's loss w.r.t. the unit's conv filter
  rows (concatenated over the chain for MobileNetV2; a head unit's bias entry included), normalised;
  C = Σ_{i<j} cos(g_i, g_j) (0 where a norm is 0).  S004 writes Σ over T×T, which adds the constant T and counts
  each pair twice: the same ranking.  Scores are summed over the batches (AC += C); low = the tasks conflict on
  that filter.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence

import torch
from torch import Tensor, nn

from main.channel_masks import ChannelMasks, FilterUnit
from main.config import ConfigError
from main.data.batch import to_device
from main.masks import MaskSet
from main.models import MultiTaskModel
from main.tasks import task_loss

from .compact import FLOPS_UNIT, cost
from .registry import PruneFn, PruneInputs

# The filter criteria this module computes; the methods that use them are registered by ``structured_train``.
CRITERIA = ("taylor", "cosprune")
RATIO_MEANING = ("fraction of the prunable filters (the units listed in per_layer: backbone filters, and the heads' "
                 "hidden channels with --prune_heads) removed in total, counting filters an earlier step removed")


# ------------------------------------------------------------------------------------------------ scores
def _scored_params(channels: ChannelMasks, unit: FilterUnit, method: str, source: str) -> list[nn.Parameter]:
    if method == "taylor" and source == "gate" and unit.bns:
        bn = channels.modules[unit.bns[-1]]
        return [bn.weight, bn.bias]
    return [channels.modules[c].weight for c in unit.convs] + [channels.modules[c].bias for c in unit.biases]


def _per_channel(tensors: Sequence[Tensor]) -> Tensor:
    """[C, D] view: each tensor's leading dim is the channel, the rest is flattened and concatenated."""
    return torch.cat([t.reshape(t.shape[0], -1) for t in tensors], dim=1)


def batch_scores(model: MultiTaskModel, channels: ChannelMasks, batch: Mapping[str, Tensor],
                 tasks: Sequence[str], method: str, *, form: str = "sq", source: str = "gate",
                 class_weights: Tensor | None = None,
                 loss_weights: Mapping[str, float] | None = None,
                 reduce: Callable[[list[Tensor]], list[Tensor]] | None = None) -> dict[str, Tensor]:
    """One batch's per-filter criterion, ``{unit layer: [C] tensor}`` (higher = keep); ``.grad`` untouched.

    One forward in the model's current mode, then one backward of the total loss (Taylor) or T backward passes
    through ``autograd.grad`` (CosPrune).  ``loss_weights`` scales task losses (default 1 each; CosPrune is
    invariant to it by construction, which the tests check).

    ``reduce`` (DDP: the element-wise mean over the ranks) makes the score that of the global batch, whose
    gradient is the ranks' mean gradient: Taylor reduces the per-channel Σ w·g before squaring (linear in g, so
    exact and only C numbers per layer); CosPrune reduces the per-task gradients before the cosine (the mean of
    per-rank cosines would be a different, noisier statistic).  Every rank gets the same scores.
    """
    if method not in CRITERIA:
        raise ValueError(f"unknown structured method {method!r}; choose one of {', '.join(CRITERIA)}")
    if form not in ("sq", "abs"):
        raise ValueError(f"Taylor form must be sq or abs, got {form!r}")
    if source not in ("gate", "weight"):
        raise ValueError(f"Taylor source must be gate or weight, got {source!r}")
    if method == "cosprune" and len(tasks) < 2:
        raise ValueError("CosPrune compares task gradients and needs at least two tasks")
    device = next(model.parameters()).device
    batch = to_device(batch, device)
    preds = model(batch["input"])
    weights = loss_weights or {}
    losses = [task_loss(t, preds[t], batch, class_weights) * float(weights.get(t, 1.0)) for t in tasks]
    groups = [_scored_params(channels, u, method, source) for u in channels.units]
    flat = [p for g in groups for p in g]

    def split(grads: Sequence[Tensor | None]) -> list[list[Tensor]]:
        out, i = [], 0
        for g in groups:
            out.append([gr if gr is not None else torch.zeros_like(p) for p, gr in zip(g, grads[i:i + len(g)])])
            i += len(g)
        return out

    if method == "taylor":
        grads = split(torch.autograd.grad(sum(losses), flat, allow_unused=True))
        sums = [_per_channel([p.detach() * g for p, g in zip(params, gs)]).sum(1) for params, gs in zip(groups, grads)]
        if reduce is not None:
            sums = reduce(sums)
        return {u.name: s.pow(2) if form == "sq" else s.abs() for u, s in zip(channels.units, sums)}
    per_task = [split(torch.autograd.grad(loss, flat, retain_graph=i < len(losses) - 1, allow_unused=True))
                for i, loss in enumerate(losses)]
    if reduce is not None:  # one call for every task's gradients: a single collective under DDP
        reduced = iter(reduce([g for task in per_task for unit in task for g in unit]))
        per_task = [[[next(reduced) for _ in unit] for unit in task] for task in per_task]
    return _cosine_scores(channels, per_task, device)


def _cosine_scores(channels: ChannelMasks, per_task: Sequence[Sequence[Sequence[Tensor]]],
                   device: torch.device) -> dict[str, Tensor]:
    """CosPrune's C per filter: Σ_{i<j} cos(g_i, g_j) of the tasks' gradients of the unit's conv rows."""
    scores: dict[str, Tensor] = {}
    for k, u in enumerate(channels.units):
        unit_dirs = []
        for task in per_task:
            g = _per_channel(task[k]).float()
            norm = g.norm(dim=1, keepdim=True)
            unit_dirs.append(torch.where(norm > 0, g / norm.clamp_min(torch.finfo(g.dtype).tiny), 0.0))
        c = torch.zeros(u.channels, device=device)
        for i in range(len(unit_dirs)):
            for j in range(i + 1, len(unit_dirs)):
                c += (unit_dirs[i] * unit_dirs[j]).sum(1)
        scores[u.name] = c
    return scores


class ScoreAccumulator:
    """Running sum (CosPrune's AC) or mean (Taylor, as NVIDIA's code) of per-batch scores; ranking-equivalent."""

    def __init__(self, reduce: str = "sum") -> None:
        if reduce not in ("sum", "mean"):
            raise ValueError(f"reduce must be sum or mean, got {reduce!r}")
        self.reduce = reduce
        self.total: dict[str, Tensor] = {}
        self.count = 0

    def add(self, scores: Mapping[str, Tensor]) -> None:
        for n, s in scores.items():
            s = s.detach().double()
            self.total[n] = self.total[n] + s if n in self.total else s.clone()
        self.count += 1

    def value(self) -> dict[str, Tensor]:
        if self.reduce == "sum" or self.count == 0:
            return dict(self.total)
        return {n: s / self.count for n, s in self.total.items()}

    def reset(self) -> None:
        self.total, self.count = {}, 0


def reduce_of(method: str) -> str:
    return "mean" if method == "taylor" else "sum"


def accumulate_scores(model: MultiTaskModel, channels: ChannelMasks, batches: Iterable[Mapping[str, Tensor]],
                      tasks: Sequence[str], method: str, **kwargs) -> dict[str, Tensor]:
    """``batch_scores`` accumulated over ``batches`` with the model in train mode (BN batch statistics, as in
    training), restored afterwards."""
    acc = ScoreAccumulator(reduce_of(method))
    was_training = model.training
    model.train()
    try:
        for batch in batches:
            acc.add(batch_scores(model, channels, batch, tasks, method, **kwargs))
    finally:
        model.train(was_training)
    if acc.count == 0:
        raise ValueError(f"{method} needs at least one batch to score filters (--num_batches)")
    return acc.value()


def removable(channels: ChannelMasks, min_keep: int = 1) -> int:
    """How many more filters can go while every unit layer keeps ``min_keep`` (a zero-width conv is not a net)."""
    return sum(max(0, int(k.sum()) - min_keep) for k in channels.keep.values())


def select_lowest(scores: Mapping[str, Tensor], channels: ChannelMasks, n: int,
                  min_keep: int = 1) -> dict[str, Tensor]:
    """The ``n`` lowest-scoring live filters over all unit layers (one global ranking, ties by order), never
    leaving a layer with fewer than ``min_keep``; returns ``{layer: channel indices}``."""
    names, chans, vals = [], [], []
    for u in channels.units:
        alive = channels.keep[u.name].nonzero().flatten().cpu()
        s = scores[u.name].detach().double().cpu()[alive]
        names += [u.name] * alive.numel()
        chans.append(alive)
        vals.append(torch.nan_to_num(s, nan=math.inf))
    if n <= 0 or not names:
        return {}
    chan, val = torch.cat(chans), torch.cat(vals)
    order = torch.argsort(val, stable=True).tolist()
    left = {u.name: int(channels.keep[u.name].sum()) for u in channels.units}
    chosen: dict[str, list[int]] = {}
    for i in order:
        if n == 0:
            break
        name = names[i]
        if left[name] > min_keep:
            chosen.setdefault(name, []).append(int(chan[i]))
            left[name] -= 1
            n -= 1
    return {name: torch.tensor(sorted(idx), dtype=torch.long) for name, idx in chosen.items()}


def prune_structured(method: str, model: MultiTaskModel, masks: MaskSet, ratio: float,
                     batches: Sequence[Mapping[str, Tensor]], tasks: Sequence[str], device: torch.device,
                     class_weights: Tensor | None = None, *, form: str = "sq", source: str = "gate",
                     loss_weights: Mapping[str, float] | None = None, heads: bool = False) -> dict:
    """One-shot: score every filter on ``batches`` and remove the lowest so that ``ratio`` of them are gone
    (backbone filters; with ``heads`` the heads' hidden channels too).

    ``masks`` is updated in place and the removed filters' conv rows, consumer columns and BN γ, β are zeroed in
    ``model``.  Returns ``{"structured": report (plain types), "channel_masks": {layer: bool tensor}}``; the
    report says what ``ratio`` means, the filters removed per layer and params / FLOPs before and after.
    """
    if method not in CRITERIA:
        raise ValueError(f"unknown structured method {method!r}; choose one of {', '.join(CRITERIA)}")
    if not 0.0 <= ratio < 1.0:
        raise ConfigError(f"ratio must be a fraction of the prunable filters in [0, 1), got {ratio}")
    check_heads(method, heads)
    if not batches:
        raise ConfigError(f"{method} needs at least one batch to score filters (--num_batches)")
    model.to(device)
    channels = ChannelMasks.from_model(model, masks, heads)  # filters an earlier step removed stay removed
    already = channels.pruned()
    target = round(ratio * channels.total())
    n = max(0, target - already)
    if n > removable(channels):
        raise ConfigError(f"ratio {ratio} asks for {target} of {channels.total()} prunable filters; at most "
                         f"{already + removable(channels)} can go while every layer keeps one filter")
    input_shape = [1, *batches[0]["input"].shape[1:]]
    before = cost(model, channels, input_shape)
    scores = accumulate_scores(model, channels, batches, tasks, method, form=form, source=source,
                               class_weights=class_weights, loss_weights=loss_weights)
    channels.remove(select_lowest(scores, channels, n))
    channels.install(masks)
    after = cost(model, channels, input_shape)
    report = {
        "criterion": describe(method, form, source),
        "ratio": ratio, "ratio_meaning": RATIO_MEANING, "heads": heads,
        "filters_total": channels.total(), "filters_removed": channels.pruned(), "filters_removed_now": n,
        "per_layer": channels.per_layer(),
        "params_before": before["params"], "params_after": after["params"],
        "backbone_params_before": before["backbone_params"], "backbone_params_after": after["backbone_params"],
        "flops_before": before["flops"], "flops_after": after["flops"], "flops_unit": FLOPS_UNIT,
        "input_shape": input_shape, "num_batches": len(batches),
    }
    return {"structured": report, "channel_masks": channels.state_dict()}


def describe(method: str, form: str = "sq", source: str = "gate") -> str:
    if method == "cosprune":
        return "cosprune: sum over batches of sum_{i<j} cos(g_i, g_j) of per-task conv-filter gradients"
    what = "BN gate (gamma*dL/dgamma + beta*dL/dbeta)" if source == "gate" else "conv filter sum(w*g)"
    return f"taylor: mean over batches of {'squared' if form == 'sq' else 'absolute'} {what}, total loss"


def one_shot_step(method: str) -> PruneFn:
    """``prune_structured`` by ``method``'s criterion as a registry one-shot step (what ``pruning.py`` applies)."""
    def step(inp: PruneInputs) -> dict:
        return prune_structured(method, inp.model, inp.masks, inp.sparsity, inp.batches, inp.tasks, inp.device,
                                class_weights=inp.class_weights, heads=bool(inp.options.get("prune_heads")))
    return step


def check_heads(method: str, heads: bool) -> None:
    """Refuse head pruning where the criterion cannot rank head channels (see the module docstring)."""
    if heads and method == "cosprune":
        raise ConfigError("--prune_heads works with --method taylor only: CosPrune compares the tasks' gradients on a "
                          "channel, and a task head's channels receive one task's gradient alone")


def add_structured_args(group) -> None:
    """The options of Taylor and CosPrune that ``pruning.py`` and ``structured_train`` share."""
    group.add_argument("--prune_heads", action="store_true",
                       help="Taylor: the task heads' hidden channels are prunable units too, in the same global "
                            "ranking (default: backbone filters only, as S004)")
