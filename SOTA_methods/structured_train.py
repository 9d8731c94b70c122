"""Iterative structured pruning during training (S004's protocol): accumulate, prune the lowest, rewind, repeat.

    python -m SOTA_methods.structured_train --method cosprune --load_checkpoint DENSE.model --target 0.5 \\
        --window 2000 --per_step 100 --save_dir outputs/cosprune50 [--iters 40000 --lr 1e-5 ...]

Starts from a checkpoint like ``finetune.py`` (its config; any training flag given here overrides it; dense
training with the masks enforced).  After every optimiser step the hook scores the backbone filters on the step's
batch (Taylor or CosPrune, see ``SOTA_methods.structured``) and accumulates; every ``--window`` iterations it
removes the ``--per_step`` lowest-scoring filters (global ranking), resets the accumulators and, unless
``--no-rewind_lr``, rewinds the learning rate and scheduler to their initial state.  It stops pruning once
``--target`` of the prunable backbone filters are gone and fine-tunes for the remaining ``--iters``.  S004 used
10-epoch windows and 100 filters per step: set ``--window`` to 10 × (training images / batch size).

Writes the usual trainer checkpoints (the structure is recovered from their masks and zeroed BatchNorms by
``ChannelMasks.from_model``) and ``structured.json`` (one record per pruning step: iteration, filters removed,
params and FLOPs of the compacted network).  ``--save_each_step`` also keeps ``step<k>_<tasks>.model`` after each
pruning step (S004 evaluates every step).  Scoring costs one extra forward and 1 (Taylor) or T (CosPrune)
backward passes per iteration, run with the training RNG and BatchNorm running statistics left untouched.

Under ``torchrun`` (DDP) each rank scores its own slice of the step's global batch on the unwrapped model and the
per-step scores are made those of the global batch before accumulating (``structured.batch_scores(reduce=...)``):
Taylor averages the per-filter Σ w·g over the ranks before squaring (Σ w·g is linear in the gradient, and the
global-batch gradient is the ranks' mean: exact, C numbers per layer); CosPrune averages every task's filter
gradients before the cosine (cosines do not average: the mean of per-rank cosines is a noisier statistic of
smaller batches), one all-reduce of T × (scored conv weights) per iteration.  The accumulators, hence every
pruning step, are then identical on all ranks.  Per-rank BatchNorm batch statistics remain (no SyncBatchNorm),
as in the DDP training step itself.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch
from torch import Tensor

from main.atomic import atomic_write_text
from main.channel_masks import ChannelMasks
from main.checkpoint import atomic_save, checkpoint_name
from main.cli.args import parse_finetune_args
from main.config import Config, ConfigError, Provenance
from main.distributed import DistInfo, cleanup, init_distributed
from main.errors import cli_main
from main.trainer_setup import build_masked_trainer

from .compact import cost
from .engine import check_same_on_all_ranks, mean_over_ranks
from .registry import Method, OptionGroup, choose, methods, names, register
from .structured import (
    CRITERIA,
    RATIO_MEANING,
    ScoreAccumulator,
    add_structured_args,
    batch_scores,
    check_heads,
    describe,
    one_shot_step,
    reduce_of,
    removable,
    select_lowest,
)

COMMAND = "SOTA_methods.structured_train"


def ranks_mean(dist_info: DistInfo) -> Callable[[list[Tensor]], list[Tensor]] | None:
    """``batch_scores``' ``reduce``: the element-wise mean of a list of tensors over the DDP ranks (None: 1 process)."""
    if not dist_info.enabled:
        return None

    def reduce(tensors: list[Tensor]) -> list[Tensor]:
        return list(mean_over_ranks(dict(enumerate(tensors)), dist_info).values())

    return reduce


def rewind_lr(trainer) -> None:
    """Learning rate back to its initial value and a fresh StepLR (S004 rewinds LR and scheduler each step)."""
    for group in trainer.optimizer.param_groups:
        group["lr"] = group["initial_lr"]
    trainer.scheduler = torch.optim.lr_scheduler.StepLR(trainer.optimizer, trainer.cfg.decay_lr_freq,
                                                        trainer.cfg.decay_lr_rate)


class StructuredPruningSchedule:
    """Trainer step hook implementing the accumulate-window schedule on a ``ChannelMasks``.

    ``target`` is the fraction of the prunable backbone filters to have removed when the schedule stops;
    every ``window`` iterations ``per_step`` more go (fewer on the last step, so the target is hit exactly).
    """

    def __init__(self, method: str, channels: ChannelMasks, tasks: Sequence[str], *, target: float, window: int,
                 per_step: int, rewind: bool = True, form: str = "sq", source: str = "gate",
                 class_weights: Tensor | None = None, on_prune=None) -> None:
        if method not in CRITERIA:
            raise ConfigError(f"--method {method!r} is not known; choose one of {', '.join(CRITERIA)}")
        if not 0.0 < target < 1.0:
            raise ConfigError(f"--target must be a fraction of the prunable filters in (0, 1), got {target}")
        if window <= 0 or per_step <= 0:
            raise ConfigError(f"--window and --per_step must be positive, got {window} and {per_step}")
        if method == "cosprune" and len(tasks) < 2:
            raise ConfigError("CosPrune compares task gradients and needs at least two tasks")
        self.method, self.channels, self.tasks = method, channels, tuple(tasks)
        self.window, self.per_step, self.rewind = window, per_step, rewind
        self.target_count = round(target * channels.total())
        cap = channels.pruned() + removable(channels)
        if self.target_count > cap:
            raise ConfigError(f"--target {target} asks for {self.target_count} of {channels.total()} prunable filters; "
                              f"at most {cap} can go while every layer keeps one filter")
        self.kwargs = {"form": form, "source": source, "class_weights": class_weights}
        self.acc = ScoreAccumulator(reduce_of(method))
        self.history: list[dict] = []
        self.on_prune = on_prune

    @property
    def done(self) -> bool:
        return self.channels.pruned() >= self.target_count

    def _score(self, trainer, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """This step's scores on the unwrapped model (DDP's reducer only sees the training step's backward)."""
        model = trainer.model
        buffers = {n: b.detach().clone() for n, b in model.named_buffers()}
        devices = [trainer.device] if trainer.device.type == "cuda" else []
        was_training = model.training
        model.train()
        try:
            with torch.random.fork_rng(devices=devices):
                return batch_scores(model, self.channels, batch, self.tasks, self.method,
                                    reduce=ranks_mean(trainer.dist), **self.kwargs)
        finally:
            model.train(was_training)
            with torch.no_grad():
                for n, b in model.named_buffers():
                    b.copy_(buffers[n])

    def __call__(self, trainer, iteration: int, batch: Mapping[str, Tensor]) -> None:
        if self.done:
            return
        self.acc.add(self._score(trainer, batch))
        if iteration % self.window == 0:
            self.prune_step(trainer, iteration, list(batch["input"].shape[1:]))

    def prune_step(self, trainer, iteration: int, input_chw: list[int]) -> dict:
        scores = self.acc.value()  # identical on every rank: each step's scores were reduced (see _score)
        n = min(self.per_step, self.target_count - self.channels.pruned(), removable(self.channels))
        self.channels.remove(select_lowest(scores, self.channels, n))
        check_same_on_all_ranks(self.channels.keep, trainer.dist, f"{self.method} pruning step at {iteration}")
        self.channels.install(trainer.masks)
        trainer.masks.zero_optimizer_state(trainer.optimizer)
        self.channels.zero_optimizer_state(trainer.optimizer)
        self.acc.reset()
        if self.rewind:
            rewind_lr(trainer)
        c = cost(trainer.model, self.channels, [1, *input_chw])
        record = {"iter": iteration, "removed_now": n, "filters_removed": self.channels.pruned(),
                  "filters_total": self.channels.total(),
                  "fraction_removed": self.channels.pruned() / self.channels.total(), **c,
                  "per_layer": self.channels.per_layer()}
        self.history.append(record)
        if self.on_prune is not None:
            self.on_prune(trainer, record)
        return record


def structured_methods() -> list[Method]:
    """The methods this command trains (registered below)."""
    return methods(lambda m: m.command == COMMAND)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Structured pruning during training (Taylor / CosPrune, S004 schedule). Every finetune.py "
                    "flag (--iters, --lr, --save_dir, --batch_size ...) is accepted too and overrides the "
                    "checkpoint's config.", allow_abbrev=False)
    g = OptionGroup(p)
    g.add_argument("--method", default="cosprune", help=f"{names(structured_methods())} (default: cosprune)")
    g.add_argument("--target", "--prune_ratio", dest="target", type=float, required=True,
                   help="stop once this fraction of the prunable filters is removed (backbone filters; with "
                        "--prune_heads the heads' hidden channels too)")
    g.add_argument("--window", type=int, required=True, help="iterations of score accumulation per pruning step")
    g.add_argument("--per_step", type=int, required=True, help="filters removed per pruning step (S004: 100)")
    g.add_argument("--rewind_lr", action=argparse.BooleanOptionalAction, default=True,
                   help="rewind LR and scheduler after each pruning step (default: on, as S004)")
    g.add_argument("--taylor_form", default="sq", choices=("sq", "abs"),
                   help="Taylor: (sum w*g)^2 (Molchanov, default) or |sum w*g| (S004 eq. 5)")
    g.add_argument("--taylor_source", default="gate", choices=("gate", "weight"),
                   help="Taylor: BN gate (gamma, beta; default) or the conv filter weights")
    g.add_argument("--save_each_step", action="store_true", help="also keep a checkpoint after every pruning step")
    add_structured_args(g)
    return p


def parse_structured_args(argv: Sequence[str] | None) -> tuple[Config, Provenance, dict]:
    """-> (config: the checkpoint's with finetune.py's flags on top, its provenance, this command's options)."""
    ours, rest = build_parser().parse_known_args(argv)
    opts = vars(ours)
    choose(opts["method"], structured_methods())
    check_heads(opts["method"], opts["prune_heads"])
    if not 0.0 < opts["target"] < 1.0:
        raise ConfigError(f"--target must be a fraction of the prunable filters in (0, 1), got {opts['target']}")
    if opts["window"] <= 0 or opts["per_step"] <= 0:
        raise ConfigError(f"--window and --per_step must be positive, got {opts['window']} and {opts['per_step']}")
    cfg, given, start = parse_finetune_args(rest)
    if start.reinit:
        raise ConfigError("structured_train prunes the checkpoint's trained weights; --reinit belongs to finetune.py "
                          "(re-train the architecture it writes from a fresh initialisation)")
    opts["load_checkpoint"] = start.checkpoint
    if cfg.resume:
        raise ConfigError("structured_train cannot --resume (the score accumulators are not checkpointed); "
                          "continue with finetune.py --load_checkpoint on its last checkpoint instead")
    return cfg, given, opts


class StepLog:
    """What the command writes besides the trainer's own files (rank 0): ``structured.json`` after every pruning
    step and at the end, a log line per step and, with ``--save_each_step``, a checkpoint per step."""

    def __init__(self, opts: dict, save_dir: Path) -> None:
        self.opts, self.save_dir = opts, save_dir
        self.schedule: StructuredPruningSchedule | None = None

    def report(self) -> dict:
        o, schedule = self.opts, self.schedule
        return {"method": o["method"], "criterion": describe(o["method"], o["taylor_form"], o["taylor_source"]),
                "source": o["load_checkpoint"], "target": o["target"], "target_meaning": RATIO_MEANING,
                "target_filters": schedule.target_count, "window": o["window"], "per_step": o["per_step"],
                "rewind_lr": o["rewind_lr"], "prune_heads": o["prune_heads"], "steps": schedule.history}

    def write(self) -> None:
        atomic_write_text(self.save_dir / "structured.json", json.dumps(self.report(), indent=1))

    def on_prune(self, tr, record: dict) -> None:
        if tr.is_main:
            tr.log.info(f"[Iter {record['iter']}] pruned {record['removed_now']} filters: "
                        f"{record['filters_removed']}/{record['filters_total']} removed, "
                        f"{record['params']:,} params, {record['flops'] / 1e9:.3f} GFLOPs")
            if self.opts["save_each_step"]:
                k = len(self.schedule.history)
                atomic_save(tr.state_dict(), self.save_dir / f"step{k:03d}_{checkpoint_name(tr.tasks)}")
            self.write()


def run_structured_train(cfg: Config, given: Provenance, opts: dict, dist_info: DistInfo | None = None,
                         device: torch.device | None = None) -> dict:
    """Fine-tune ``--load_checkpoint`` while the schedule removes filters; returns the ``structured.json`` report."""
    dist_info = dist_info or DistInfo()
    trainer, state = build_masked_trainer(opts["load_checkpoint"], cfg, given, dist_info, device)
    channels = ChannelMasks.from_checkpoint(trainer.model, state, trainer.masks, opts["prune_heads"])
    channels.to(trainer.device)
    channels.attach(trainer)
    if channels not in trainer.step_hooks:  # nothing pruned yet: still enforce once pruning starts
        trainer.step_hooks.append(channels)
    log = StepLog(opts, Path(trainer.cfg.save_dir))
    log.schedule = StructuredPruningSchedule(
        opts["method"], channels, trainer.tasks, target=opts["target"], window=opts["window"],
        per_step=opts["per_step"], rewind=opts["rewind_lr"], form=opts["taylor_form"], source=opts["taylor_source"],
        class_weights=trainer.class_weights, on_prune=log.on_prune)
    trainer.step_hooks.append(log.schedule)
    trainer.train()
    if trainer.is_main:
        log.write()
        trainer.log.info(f"done: {trainer.iteration} iterations, {channels.pruned()}/{channels.total()} "
                         f"prunable filters removed ({len(log.schedule.history)} pruning steps), "
                         f"checkpoint {log.save_dir}")
    return log.report()


TAYLOR = register(Method(
    name="taylor", kind="structured", label="Taylor (filters)", run=run_structured_train, command=COMMAND,
    about="filters ranked by the Taylor estimate of the loss change (Molchanov et al., 2019)",
    add_args=add_structured_args, prune=one_shot_step("taylor"), needs_batches=True))
COSPRUNE = register(Method(
    name="cosprune", kind="structured", label="CosPrune (filters)", run=run_structured_train, command=COMMAND,
    about="filters ranked by how well the tasks' gradients agree on them (S004)",
    add_args=add_structured_args, prune=one_shot_step("cosprune"), needs_batches=True))


def main(argv: list[str] | None = None) -> int:
    cfg, given, opts = parse_structured_args(argv)
    dist_info, device = init_distributed(cfg.device)
    try:
        run_structured_train(cfg, given, opts, dist_info, device)
    finally:
        cleanup(dist_info)
    return 0


if __name__ == "__main__":
    cli_main(main)
