"""The training loop: weights, soft thresholds and adaptive task weights optimised together.

Per iteration, in the reference order: forward → per-task losses → adaptive weights → backward → sparsity control
(stop rule: threshold gradients dropped while overall sparsity ≥ ``--ratio``) → Adam step → StepLR step.  The
reference's costly habits are gone: sparsity is counted on the device (one scalar reaches the host per step, for
the stop rule), per-layer scalars are logged every ``--log_every`` steps, validation runs under
``torch.no_grad()`` and never between backward and step.

``Trainer.step`` is one optimisation step; ``Trainer.train`` runs the steps and hands each to the callbacks, one
object per feature: ``TrainingLog`` (progress, scalars), ``Validation`` (best checkpoint), ``SaveLatest``
(resumable checkpoints), ``Preemption`` (SIGTERM / SIGINT).  ``step_hooks`` are the pruning schedules' seam:
``hook(trainer, iteration, batch)`` after every applied optimiser step, masks already enforced.
"""

from __future__ import annotations

import contextlib
import time
import warnings
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from .checkpoint import load_weights
from .checkpoint_saver import CheckpointSaver, SaveLatest, TrainingDiverged
from .config import Config
from .data import DatasetInfo
from .data.batch import to_device
from .data.loaders import train_loader, val_loader
from .distributed import DistInfo, all_reduce_mean
from .masks import MaskSet
from .models import MultiTaskModel
from .monitor import ScalarWriter, get_logger, want_progress
from .optimizer import build_optimizer, build_scheduler
from .precision import amp_warning, autocast, grad_scaler, predictions_fp32, to_channels_last
from .preemption import Preemption
from .sparse import SparsityCounter, SparsityReport
from .sparsity_control import build_sparsity_control
from .step_flags import StepCheck
from .tasks import TaskMetrics, metric_directions, task_loss
from .training_log import StepResult, TrainingLog
from .training_state import restore_training_state, training_state
from .validation import Validation
from .weighting import build_weighting

__all__ = ["Trainer", "TrainingDiverged"]


class Trainer:
    """Owns the model, optimiser, scheduler, weighting and loaders of one run (one process of it under DDP)."""

    def __init__(self, cfg: Config, model: MultiTaskModel, info: DatasetInfo, train_set: Dataset,
                 val_set: Dataset, device: torch.device, dist_info: DistInfo | None = None) -> None:
        self.cfg, self.info, self.tasks, self.device = cfg, info, info.tasks, device
        self.dist = dist_info or DistInfo()
        self.is_main = self.dist.is_main
        self.model = model.to(device)
        if cfg.channels_last:  # NHWC conv weights (inputs follow in step); state dicts are saved NCHW
            self.model.to(memory_format=torch.channels_last)
        self.sparse = not cfg.dense
        self.model.set_sparse(self.sparse)
        self.net: torch.nn.Module = self.model  # what the training forward calls (DDP-wrapped under torchrun)
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel

            self.net = DistributedDataParallel(self.model, device_ids=[device.index] if device.type == "cuda" else None)
        self.class_weights = info.class_weights.to(device) if info.class_weights is not None else None
        # Reference: one Adam group, coupled L2 on everything (weights, BN, biases and thresholds).
        self.optimizer = build_optimizer(cfg, self.model)
        self.scheduler = build_scheduler(cfg, self.optimizer)
        # --amp fp16 only: loss scaling (fp16 gradients underflow).  A step whose scaled gradients overflow is
        # skipped by the scaler itself (and the scale lowered); that is not a "bad step" of --max_bad_steps.
        self.scaler = grad_scaler(cfg.amp, device)
        self.weighting = build_weighting(cfg.task_weighting, self.tasks, cfg.adaptive_begin, cfg.adaptive_window,
                                         cfg.adaptive_total, getattr(torch, cfg.weighting_dtype))
        self.priority = torch.tensor(cfg.priority or [1.0] * len(self.tasks), device=device)
        self.counter = SparsityCounter(self.model.components())
        self.counter.record_forward_counts(self.sparse)
        total = sum(self.counter.totals)
        self.control = build_sparsity_control(cfg, total)
        # sparsity >= ratio  <=>  nonzero <= (1 - ratio) * total
        self.check = StepCheck(self.counter if self.sparse else None, (1.0 - cfg.ratio) * total)
        self.train_set, self.val_set = train_set, val_set
        self.iteration = 0  # completed iterations
        self.best: dict | None = None
        self.save_dir = Path(cfg.save_dir)
        self.saver = CheckpointSaver(self.save_dir, self.tasks, cfg.keep_checkpoints)
        self.metrics = TaskMetrics(self.tasks, info.num_classes, info.metric_style, cfg.metric_definitions,
                                   class_weights=info.class_weights)
        self.directions = metric_directions(info.metric_style, self.tasks)
        self.show_progress = self.is_main and want_progress(cfg.progress)
        self.log = get_logger(str(self.save_dir), enabled=self.is_main)
        if amp_warning(cfg.amp, device):
            self.log.warning(amp_warning(cfg.amp, device))
        self.writer = ScalarWriter(None)  # the run's TensorBoard writer while ``train`` runs
        self._val_loader: DataLoader | None = None
        self.bad_steps = 0  # non-finite losses skipped so far (this process)
        self.consecutive_bad = 0
        self.masks: MaskSet | None = None  # hard-pruning masks, enforced after every step when set
        self.step_hooks: list = []
        self.compact: dict | None = None  # a compacted architecture's widths (main.compact_arch), kept in checkpoints

    def set_masks(self, masks: MaskSet | None) -> None:
        """Enforce ``masks`` from now on (pruned weights zeroed now and after every optimiser step)."""
        self.masks = masks.to(self.device) if masks is not None else None
        if self.masks is not None:
            self.masks.apply()

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self, rng_ranks: list | None = None) -> dict:
        """Everything an exact resume needs (``main.training_state``); ``rng_ranks``: every rank's RNG state."""
        return training_state(self, rng_ranks)

    def resume_from(self, state: dict, source: str) -> None:
        """Continue exactly: weights, optimiser, scheduler, weighting window, RNG, best and iteration."""
        restore_training_state(self, state, source)

    def reload_from(self, state: dict, source: str) -> None:
        """Reference ``--reload``: a new run from the weights, every threshold reset to ``--sInit_value``."""
        load_weights(self.model, state, source, self.cfg)
        self.model.reset_thresholds(self.cfg.sInit_value)

    def save(self, best: bool = False, rng_ranks: list | None = None) -> Path:
        """Write the latest (or best) checkpoint; never one holding a NaN / Inf parameter."""
        return self.saver.save(self.model, self.state_dict(None if best else rng_ranks), self.iteration, best)

    # ------------------------------------------------------------------ data
    def val_loader(self) -> DataLoader:
        """Built once: with workers they persist between validations instead of restarting each time."""
        if self._val_loader is None:
            self._val_loader = val_loader(self.val_set, self.cfg, self.device)
        return self._val_loader

    def sparsity_report(self) -> SparsityReport:
        taus = self.model.taus() if self.sparse else None
        return self.counter.report(self.counter.count(taus))

    # ------------------------------------------------------------------ one step
    def step(self, batch: dict[str, Tensor], iteration: int) -> tuple[Tensor, Tensor, bool]:
        """One optimisation step at 0-based ``iteration``; -> (this rank's task losses, task weights, applied).

        A step whose task losses or weighted total are not finite (all-reduced: every rank decides alike) is
        skipped entirely: no update, and the weighting window never sees the NaN.
        """
        # Under --amp only the network forward runs in low precision; thresholds are fp32 inside it (main.sparse)
        # and the losses are computed on fp32 predictions.
        with autocast(self.cfg.amp, self.device):
            preds = self.net(to_channels_last(batch["input"], self.cfg.channels_last))
        preds = predictions_fp32(preds)
        losses = torch.stack([task_loss(t, preds[t], batch, self.class_weights) for t in self.tasks])
        # Every rank folds in the same (all-reduced) losses, so every rank holds the same weights.
        global_losses = all_reduce_mean(losses.detach(), self.dist)
        saved_weighting = self.weighting.snapshot()
        weights = self.weighting.update(global_losses, iteration)
        total = (losses * weights * self.priority).sum()
        checked = torch.cat([global_losses, (global_losses * weights * self.priority).sum().reshape(1)])
        self.check.after_forward(checked, self.model.taus() if self.sparse and not self.model.sparse else None)
        self.optimizer.zero_grad(set_to_none=True)
        (self.scaler.scale(total) if self.scaler is not None else total).backward()
        finite, reached, counts = self.check.after_backward()
        if finite:
            self._apply_step(reached, counts, iteration)
        else:
            self._skip_step(saved_weighting, global_losses, iteration)
        self._scheduler_step()
        return losses.detach(), weights, finite

    def _apply_step(self, reached: bool, counts: Tensor | None, iteration: int) -> None:
        self.consecutive_bad = 0
        if self.scaler is not None:  # true gradients before masking, the sparsity control and the step
            self.scaler.unscale_(self.optimizer)
        if self.masks is not None:
            self.masks.mask_grads()
        if self.control is not None:
            self.control.before_optimizer_step(self.model.thresholds, reached)
        if self.scaler is not None:  # skips the step if a gradient overflowed in fp16
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        if self.masks is not None:
            self.masks.apply()
        if self.control is not None:
            self.control.after_optimizer_step(self.model.thresholds, counts, iteration + 1)

    def _skip_step(self, saved_weighting, global_losses: Tensor, iteration: int) -> None:
        self.weighting.restore(saved_weighting)
        self.optimizer.zero_grad(set_to_none=True)
        self.bad_steps += 1
        self.consecutive_bad += 1
        limit = self.cfg.max_bad_steps
        self.log.warning(f"[Iter {iteration + 1}] non-finite loss {global_losses.tolist()}: step skipped "
                         f"({self.consecutive_bad} in a row, limit --max_bad_steps {limit})")
        if self.consecutive_bad >= limit:
            raise TrainingDiverged(
                f"the loss was NaN/Inf for {self.consecutive_bad} consecutive steps (iteration {iteration + 1}); "
                f"the last good checkpoint in {self.save_dir} is intact: lower --lr or check the data, then --resume")

    def _scheduler_step(self) -> None:
        """StepLR counts iterations, skipped steps included (NaN skips and fp16-overflow skips alike).

        With a GradScaler the first optimiser step is often skipped (the initial scale 2**16 overflows), and torch
        then warns that the scheduler stepped before the optimiser: intended here, so only that warning is muted.
        """
        with warnings.catch_warnings():
            if self.scaler is not None:
                warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)` before")
            self.scheduler.step()

    # ------------------------------------------------------------------ the loop
    def callbacks(self, stack: contextlib.ExitStack) -> list:
        """What runs after every step, in order: each ``on_step_end(trainer, StepResult)``.  ``stack`` closes
        what they hold (progress bar, signal handlers) however the loop ends."""
        training_log = TrainingLog(self)
        stack.callback(training_log.close)
        save_latest = SaveLatest()
        return [training_log, Validation(self), save_latest, stack.enter_context(Preemption(save_latest))]

    def train(self) -> dict:
        cfg = self.cfg
        if self.iteration >= cfg.iters:
            self.log.info(f"nothing to do: the run already completed {self.iteration} of {cfg.iters} iterations")
            return {"iter": self.iteration}
        self.writer = ScalarWriter(str(self.save_dir) if (self.is_main and cfg.tensorboard) else None,
                                   purge_step=self.iteration + 1 if self.iteration else None)
        self.model.train()
        batches = iter(train_loader(self.train_set, self.cfg, self.iteration, self.dist, self.device))
        with contextlib.ExitStack() as stack:
            stack.callback(self.writer.close)
            callbacks = self.callbacks(stack)
            for it in range(self.iteration, cfg.iters):
                start = time.perf_counter()
                batch = to_device(next(batches), self.device)
                losses, weights, finite = self.step(batch, it)
                self.iteration = it + 1
                if finite:
                    for hook in self.step_hooks:
                        hook(self, self.iteration, batch)
                result = StepResult(losses, weights, finite, time.perf_counter() - start)
                for callback in callbacks:
                    callback.on_step_end(self, result)
        bad = getattr(self.train_set, "bad_samples", 0)
        if bad and self.is_main:
            self.log.info(f"skipped {bad} unreadable training sample(s) (--skip_bad_samples); see the dataset check: "
                          f"python -m main.data.check --dataset {cfg.dataset} --data_root {cfg.data_root}")
        return {"iter": self.iteration, "best": self.best}
