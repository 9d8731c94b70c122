"""DiSparse dynamic (Sun et al., CVPR 2022): sparse training with magnitude drop and per-task gradient regrowth.

    python -m SOTA_methods.disparse --config configs/nyuv2_resnet34.yaml --data_root DATA/NYUv2 --target 0.9 \\
        --save_dir outputs/dsd90                         # ΔT and END scaled from the reference (50, 15000 of 20000)
    python -m SOTA_methods.disparse ... --delta_t 50 --end 15000 --prune_rate 0.5
    python -m SOTA_methods.disparse --save_dir outputs/dsd90 --resume

The network starts from its seeded fresh initialisation with per-layer densities d_l from ERK (the reference
``googleAI_ERK``: d_l ∝ ((Σ shape)/(Π shape))^0.9, layers that would exceed density 1 made dense and the budget
re-solved over the rest) and a random mask per layer.  Every ``--delta_t`` iterations t < ``--end`` (and once
before the first step, as the reference's ``iteration % INT == 0`` includes 0), with r(t) = ``--prune_rate``·
(1 + cos(π t / END)) / 2:

1. drop (task-agnostic): per layer, the active weights are magnitude-pruned to d_l·N_l·(1 − r);
2. grow (per task): on the current training batch (in ``--grow_splits`` micro-batches, reference 2) each task t
   takes |∂L_t/∂w| (unweighted L_t) at the current sparse point, and per layer picks the d_l·N_l − active
   inactive weights with the largest values — every task on backbone layers, only the owning task on its head;
3. arbiter: a backbone weight regrows if ANY task picks it (union; the backbone overshoots d_l until the next
   drop), a head weight if its task does.  Regrown weights start from ZERO (RigL), and Adam's moments are cleared
   at every entry whose mask changed.
At t = END one final per-layer magnitude drop to exactly d_l·N_l (counts rounded so that their sum is exactly
(1 − target)·N), then the mask stays fixed to ``--iters``: the final overall sparsity is exact.

Differences from the reference code (see SOTA_methods/README.md and docs/baselines.md): gradients are
taken at the sparse point on the model itself (the reference took them on a dense copy holding stale pruned
values), regrown weights restart at zero instead of their stale ``weight_orig`` value, exactly k weights are
regrown per layer (the reference's ``score ≥ k-th value`` could regrow a whole layer when gradients were zero),
``backbone.conv1`` is masked like every other layer (the reference left it dense though ERK budgeted it), the
regrowth passes leave BatchNorm statistics and the RNG untouched, and updates run in a ``Trainer`` step hook, i.e.
after the optimiser step of iteration t instead of before it.

Under ``torchrun`` (DDP) every rank runs every update itself: the ERK random mask comes from a generator seeded by
``--seed`` alone, the drop ranks |w| of bit-identical weights, and the regrowth scores |∂L_t/∂w| (summed over the
rank's own micro-batches of its slice of the step's global batch, on the unwrapped ``trainer.model``) are averaged
over the ranks before the per-layer top-k, i.e. the sum over all ranks' micro-batches up to a constant.  So
every rank grows the same weights; the t = 0 update scores each rank's slice of the first global batch.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from main.config import Config, ConfigError, Provenance
from main.data.batch import to_device
from main.distributed import DistInfo
from main.errors import cli_main
from main.masks import MaskSet
from main.models import BACKBONE
from main.trainer import Trainer
from main.trainer_setup import build_trainer, start_again_if_nothing_to_resume

from .commands import add_target, method_main
from .engine import (
    check_same_on_all_ranks,
    magnitude_scores,
    mean_over_ranks_per_task,
    task_gradients,
    top_k_mask,
)
from .registry import Method, OptionGroup, register
from .stages import finish, hard_mask_config, read_method, score_batches, side_effect_free, write_method

REFERENCE = {"delta_t": 50, "end": 15000, "iters": 20000}  # NYUv2 / Cityscapes config_*.py (Taskonomy 250/75k/100k)


# ------------------------------------------------------------------------------------------------ budgets
def erk_densities(shapes: Mapping[str, Sequence[int]], density: float, power: float = 0.9) -> dict[str, float]:
    """Per-layer densities whose weighted sum is ``density`` of all weights (the reference ``googleAI_ERK``).

    Small layers (few weights per fan-in + fan-out) get higher density; a layer whose density would exceed 1 is
    made dense and the budget re-solved over the others, until every density is ≤ 1.
    """
    if not 0.0 < density < 1.0:
        raise ValueError(f"density must be in (0, 1), got {density}")
    numel = {n: math.prod(s) for n, s in shapes.items()}
    raw = {n: (sum(s) / numel[n]) ** power for n, s in shapes.items()}
    dense: set[str] = set()
    while True:
        free = [n for n in shapes if n not in dense]
        rhs = sum(numel[n] * density for n in free) - sum(numel[n] * (1.0 - density) for n in dense)
        eps = rhs / sum(raw[n] * numel[n] for n in free)
        top = max(raw[n] for n in free)
        if top * eps <= 1.0:
            break
        dense |= {n for n in free if raw[n] == top}
    return {n: 1.0 if n in dense else eps * raw[n] for n in shapes}


def exact_counts(numel: Mapping[str, int], densities: Mapping[str, float], kept_total: int) -> dict[str, int]:
    """Integer kept counts per layer, each ⌊d_l·N_l⌋ or one more, summing to exactly ``kept_total``.

    Largest-remainder rounding: per-layer rounding alone could miss the overall target by up to one weight per
    layer; this way the final sparsity is exact.
    """
    ideal = {n: min(float(numel[n]), densities[n] * numel[n]) for n in numel}
    counts = {n: int(math.floor(v)) for n, v in ideal.items()}
    short = kept_total - sum(counts.values())
    order = sorted(numel, key=lambda n: ideal[n] - counts[n], reverse=True)
    while short > 0:
        progressed = False
        for n in order:
            if short and counts[n] < numel[n]:
                counts[n] += 1
                short -= 1
                progressed = True
        if not progressed:
            break
    for n in reversed(order):  # only when the float sum overshot: take back from the smallest remainders
        while short < 0 and counts[n] > 0:
            counts[n] -= 1
            short += 1
    return counts


def layer_budgets(masks: MaskSet, target: float, power: float = 0.9) -> dict[str, int]:
    """Final kept weights per layer for overall sparsity ``target`` (ERK shape, exact total)."""
    shapes = {n: tuple(m.shape) for n, m in masks.masks.items()}
    numel = {n: m.numel() for n, m in masks.masks.items()}
    dens = erk_densities(shapes, 1.0 - target, power)
    return exact_counts(numel, dens, round((1.0 - target) * masks.total()))


def random_masks(masks: MaskSet, counts: Mapping[str, int], seed: int) -> dict[str, Tensor]:
    """Uniformly random ``counts[name]`` kept positions per layer (the reference ``erk_init``), seeded."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for name, m in masks.masks.items():
        keep = torch.zeros(m.numel(), dtype=torch.bool)
        keep[torch.randperm(m.numel(), generator=gen)[:counts[name]]] = True
        out[name] = keep.view_as(m).to(m.device)
    return out


# ------------------------------------------------------------------------------------------------ updates
def drop(masks: MaskSet, counts: Mapping[str, int], rate: float) -> dict[str, Tensor]:
    """Per layer, keep the round(c_l·(1 − rate)) active weights of largest |w| (task-agnostic)."""
    scores = magnitude_scores(masks)
    out: dict[str, Tensor] = {}
    for name, c in counts.items():
        out.update(top_k_mask(scores, [name], masks, round(c * (1.0 - rate))))
    return out


def grow_top(score: Tensor, active: Tensor, n: int) -> Tensor:
    """The ``n`` inactive entries with the largest ``score`` (exactly n, ties by topk order)."""
    flat = torch.where(active.flatten(), torch.full_like(score.flatten(), float("-inf")), score.flatten().float())
    n = max(0, min(n, int((~active).sum())))
    grown = torch.zeros(flat.numel(), dtype=torch.bool, device=flat.device)
    if n:
        grown[torch.topk(flat, n, sorted=False).indices] = True
    return grown.view_as(active)


def grow(masks: MaskSet, counts: Mapping[str, int], task_scores: Mapping[str, Mapping[str, Tensor]]) \
        -> dict[str, Tensor]:
    """Regrowth sets: per layer, each task in scope picks c_l − active inactive weights; union on the backbone.

    ``task_scores[t][name]`` is |g_t| (any non-negative score).  A head layer is grown by its own task only.
    """
    out: dict[str, Tensor] = {}
    for w in masks:
        active = masks.masks[w.name]
        n = counts[w.name] - int(active.sum())
        grown = torch.zeros_like(active)
        if n > 0:
            tasks = list(task_scores) if w.component == BACKBONE else [w.component]
            for t in tasks:
                grown |= grow_top(task_scores[t][w.name], active, n)
        out[w.name] = grown
    return out


def split_batch(batch: Mapping[str, Tensor], parts: int) -> list[dict[str, Tensor]]:
    """``parts`` micro-batches along the batch dimension (the reference split 16 into 2, Taskonomy 8)."""
    size = batch["input"].shape[0]
    parts = max(1, min(parts, size))
    bounds = [round(i * size / parts) for i in range(parts + 1)]
    return [{k: v[a:b] if isinstance(v, Tensor) and v.dim() and v.shape[0] == size else v
             for k, v in batch.items()} for a, b in zip(bounds, bounds[1:])]


def abs_grad(weight: Tensor, grad: Tensor) -> Tensor:
    return grad.abs()


@torch.no_grad()
def clear_changed_state(optimizer: torch.optim.Optimizer, masks: MaskSet, before: Mapping[str, Tensor]) -> int:
    """Zero Adam's moments wherever the mask changed (dropped and regrown entries); returns how many changed."""
    changed_total = 0
    for w in masks:
        changed = before[w.name] ^ masks.masks[w.name]
        changed_total += int(changed.sum())
        for value in optimizer.state.get(w.param, {}).values():
            if isinstance(value, Tensor) and value.shape == w.param.shape:
                value[changed] = 0
    return changed_total


class DynamicSchedule:
    """The DiSparse-dynamic mask updates, run as a ``Trainer`` step hook (see the module docstring)."""

    def __init__(self, counts: Mapping[str, int], tasks: Sequence[str], delta_t: int, end: int, prune_rate: float,
                 grow_splits: int = 2) -> None:
        self.counts = dict(counts)
        self.tasks = tuple(tasks)
        self.delta_t, self.end, self.prune_rate, self.grow_splits = delta_t, end, prune_rate, grow_splits
        self.history: list[dict] = []

    def rate(self, t: int) -> float:
        """r(t): cosine decay from ``prune_rate`` at t = 0 to 0 at t = END (the reference ``CosineDecay``)."""
        return self.prune_rate * (1.0 + math.cos(math.pi * min(t, self.end) / self.end)) / 2.0

    def update(self, trainer: Trainer, batch: Mapping[str, Tensor], t: int) -> None:
        """One drop-and-grow step at the current weights, the same on every DDP rank (``batch``: this rank's)."""
        masks, model = trainer.masks, trainer.model
        before = {n: m.clone() for n, m in masks.masks.items()}
        r = self.rate(t)
        for name, keep in drop(masks, self.counts, r).items():
            masks.masks[name] = masks.masks[name] & keep
        masks.apply()  # gradients below are taken at the sparse point
        after_drop = masks.sparsity()
        with side_effect_free(model):  # the unwrapped model: DDP's reducer only sees the training step's backward
            scores = task_gradients(model, masks, split_batch(batch, self.grow_splits), self.tasks, trainer.device,
                                    per_task=True, class_weights=trainer.class_weights, statistic=abs_grad)
        scores = mean_over_ranks_per_task(scores, trainer.dist)
        with torch.no_grad():
            for name, grown in grow(masks, self.counts, scores).items():
                masks.masks[name] = masks.masks[name] | grown
                masks.by_name[name].param[grown] = 0.0  # regrowth from zero (RigL), not the stale value
        check_same_on_all_ranks(masks.masks, trainer.dist, f"DiSparse dynamic update at iteration {t}")
        changed = clear_changed_state(trainer.optimizer, masks, before)
        self.history.append({"iter": t, "rate": r, "sparsity_after_drop": after_drop,
                             "sparsity": masks.sparsity(), "changed": changed})

    def finalize(self, trainer: Trainer) -> None:
        """The exact final per-layer drop to c_l; the mask is fixed afterwards."""
        masks = trainer.masks
        before = {n: m.clone() for n, m in masks.masks.items()}
        for name, keep in drop(masks, self.counts, 0.0).items():
            masks.masks[name] = masks.masks[name] & keep
        masks.apply()
        check_same_on_all_ranks(masks.masks, trainer.dist, "DiSparse dynamic final drop")
        changed = clear_changed_state(trainer.optimizer, masks, before)
        self.history.append({"iter": trainer.iteration, "rate": 0.0, "sparsity": masks.sparsity(),
                             "changed": changed, "final": True})
        trainer.log.info(f"DiSparse dynamic: mask fixed at iteration {trainer.iteration}, "
                         f"sparsity {100 * masks.sparsity():.4f}%")

    def __call__(self, trainer: Trainer, iteration: int, batch: Mapping[str, Tensor]) -> None:
        end = min(self.end, trainer.cfg.iters)
        if iteration == end:
            self.finalize(trainer)
        elif iteration < end and iteration % self.delta_t == 0:
            self.update(trainer, batch, iteration)
            if iteration % trainer.cfg.log_every == 0:
                h = self.history[-1]
                trainer.log.info(f"DiSparse dynamic [Iter {iteration}] r {h['rate']:.4f}: dropped to "
                                 f"{100 * h['sparsity_after_drop']:.2f}%, regrown to {100 * h['sparsity']:.2f}% "
                                 f"({h['changed']} entries changed)")


# ------------------------------------------------------------------------------------------------ command
def add_disparse_args(group: OptionGroup) -> None:
    add_target(group)
    group.add_argument("--delta_t", type=int, default=None,
                       help="iterations between mask updates (default: --iters × 50/20000, at least 1)")
    group.add_argument("--end", type=int, default=None,
                       help="iteration at which the mask is fixed (default: --iters × 15000/20000)")
    group.add_argument("--prune_rate", type=float, default=0.5, help="initial drop fraction r(0) (default 0.5)")
    group.add_argument("--erk_power", type=float, default=0.9, help="ERK exponent (reference googleAI_ERK: 0.9)")
    group.add_argument("--grow_splits", type=int, default=2,
                       help="micro-batches of the regrowth gradient (default 2)")


def schedule_options(cfg: Config, opts: dict) -> dict:
    """Explicit values, or the reference's fractions of the run length."""
    iters = cfg.iters
    sched = {"method": "disparse_dynamic", "target": opts["target"], "prune_rate": opts["prune_rate"],
             "erk_power": opts["erk_power"], "grow_splits": opts["grow_splits"],
             "delta_t": opts["delta_t"] or max(1, round(iters * REFERENCE["delta_t"] / REFERENCE["iters"])),
             "end": opts["end"] or max(1, round(iters * REFERENCE["end"] / REFERENCE["iters"]))}
    if sched["delta_t"] <= 0 or sched["end"] <= 0 or sched["grow_splits"] <= 0:
        raise ConfigError("--delta_t, --end and --grow_splits must be positive integers")
    if not 0.0 <= sched["prune_rate"] < 1.0:
        raise ConfigError(f"--prune_rate must be in [0, 1), got {sched['prune_rate']}")
    if sched["erk_power"] <= 0:
        raise ConfigError(f"--erk_power must be positive, got {sched['erk_power']}")
    return sched


def run_disparse(cfg: Config, given: Provenance, opts: dict, dist_info: DistInfo | None = None,
                 device: torch.device | None = None) -> dict:
    """Train with dynamic masks (or continue such a run); returns the ``masks.json`` summary.

    ``dist_info`` / ``device`` come from ``init_distributed`` (torchrun); default: one process.
    """
    dist_info = dist_info or DistInfo()
    cfg, given = start_again_if_nothing_to_resume(
        cfg, given, None if opts.get("target") is None else f"the fresh initialisation (--target {opts['target']:g})",
        "its --target")
    if cfg.resume:
        sched = read_method(cfg.save_dir)
        if sched.get("method") != "disparse_dynamic":
            raise ConfigError(f"--resume: {cfg.save_dir} holds a {sched.get('method')} run, not DiSparse dynamic")
        trainer = build_trainer(cfg, given, dist_info, device)
        counts = layer_budgets(trainer.masks, sched["target"], sched["erk_power"])
        schedule = DynamicSchedule(counts, trainer.tasks, sched["delta_t"], sched["end"], sched["prune_rate"],
                                   sched["grow_splits"])
    else:
        cfg = hard_mask_config(cfg)
        sched = schedule_options(cfg, opts)
        trainer = build_trainer(cfg, given, dist_info, device)
        write_method(trainer.save_dir, sched, dist_info)
        masks = MaskSet(trainer.model)
        counts = layer_budgets(masks, sched["target"], sched["erk_power"])
        schedule = DynamicSchedule(counts, trainer.tasks, sched["delta_t"], sched["end"], sched["prune_rate"],
                                   sched["grow_splits"])
        masks.masks = random_masks(masks, counts, cfg.seed)
        trainer.set_masks(masks)
        trainer.log.info(f"DiSparse dynamic: ERK random init at {100 * masks.sparsity():.2f}% sparsity; updates "
                         f"every {sched['delta_t']} iterations until {sched['end']}, r(0) = {sched['prune_rate']}")
        # The reference also updates at t = 0, before the first step, on the first training batch.
        first = score_batches(cfg, 1, dist_info.rank, dist_info.world_size)[0]
        schedule.update(trainer, to_device(first, trainer.device), 0)
    trainer.step_hooks.append(schedule)
    trainer.train()
    pruning = {**sched, "seed": trainer.cfg.seed}
    return finish(trainer, pruning, {"updates": schedule.history})


DISPARSE_DYNAMIC = register(Method(
    name="disparse_dynamic", kind="during-training", label="DiSparse-dynamic", run=run_disparse,
    command="SOTA_methods.disparse", add_args=add_disparse_args,
    about="DiSparse dynamic: ERK random init, periodic magnitude drop + per-task regrowth."))


def main(argv: Sequence[str] | None = None) -> int:
    return method_main(DISPARSE_DYNAMIC, argv)


if __name__ == "__main__":
    cli_main(main)
