"""The training loop: weights, soft thresholds and adaptive task weights optimised together.

Per iteration, in the reference order: forward → per-task losses → adaptive weights → backward → stop rule
(threshold gradients dropped while overall sparsity ≥ ``--ratio``) → Adam step → StepLR step.  The
reference's costly habits are gone: sparsity is counted on the device (one scalar reaches the host per
step, for the stop rule), per-layer scalars are logged every ``--log_every`` steps, validation runs under
``torch.no_grad()`` and never between backward and step.  Everything else (losses, metrics, weighting,
checkpoint files, TensorBoard) is delegated to the modules named in the imports.
"""

from __future__ import annotations

import signal
import time
import warnings
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from .atomic import atomic_write_text
from .checkpoint import (
    CHECKPOINT_VERSION,
    CheckpointError,
    atomic_save,
    rng_state,
    save_with_snapshots,
    set_rng_state,
)
from .config import Config, ConfigError
from .data import DatasetInfo
from .data.sampler import ResumableBatchSampler
from .distributed import DistInfo, all_reduce_mean, barrier, gather_objects
from .errors import UserError
from .evaluation import NYUV2_REFERENCE_SCORES, selection_score
from .masks import MaskSet
from .models import MultiTaskModel
from .monitor import ScalarWriter, component_tag, get_logger, progress, want_progress
from .precision import amp_warning, autocast, grad_scaler, predictions_fp32, to_channels_last
from .preemption import Preempted, StopSignals, signal_name
from .sparse import SparsityCounter, SparsityReport
from .sparsity_control import BudgetController
from .tasks import TaskMetrics, metric_directions, task_loss
from .validation import evaluate, to_device
from .weighting import build_weighting

BUDGET_TOLERANCE = 0.01  # budget control: a checkpoint within 1 pp of --ratio counts as on target


class TrainingDiverged(UserError):
    """Too many consecutive non-finite losses; the last good checkpoint is left untouched."""


class _StepFlags:
    """Per-step host decisions, "loss is finite" and "overall sparsity >= ratio", in ONE transfer.

    Both are computed on the device right after the forward pass (the loss check on the all-reduced losses, so
    every rank agrees).  On CUDA the pair is copied to the host without blocking and an event is recorded, so
    reading it after ``backward()`` waits for those few kernels only, not for the whole backward pass.
    """

    def __init__(self, losses: Tensor, counts: Tensor | None, limit: float) -> None:
        finite = torch.isfinite(losses).all()
        reached = counts.sum().double() <= limit if counts is not None else torch.zeros((), dtype=torch.bool,
                                                                                         device=losses.device)
        flags = torch.stack([finite, reached])
        self._event = None
        if flags.device.type == "cuda":
            self._flags = flags.to("cpu", non_blocking=True)
            self._event = torch.cuda.Event()
            self._event.record()
        else:
            self._flags = flags

    def get(self) -> tuple[bool, bool]:
        if self._event is not None:
            self._event.synchronize()
        finite, reached = self._flags.tolist()
        return bool(finite), bool(reached)


def parse_metric_selector(select_by: str, directions: dict[str, dict[str, int]]) -> tuple[str, str]:
    """``metric:<task>/<metric>`` -> (task, metric), checked against the run's metrics."""
    task, _, metric = select_by[len("metric:"):].partition("/")
    if task not in directions or metric not in directions[task]:
        known = ", ".join(f"metric:{t}/{m}" for t, ms in directions.items() for m in ms)
        raise ConfigError(f"--select_by {select_by}: this run has no such metric; choose one of: {known}")
    return task, metric


def checkpoint_name(tasks: tuple[str, ...] | list[str], best: bool = False) -> str:
    """Reference file names: ``<tasks joined by _>.model`` and ``best_<...>.model``."""
    return ("best_" if best else "") + "_".join(tasks) + ".model"


class Trainer:
    """Owns the model, optimiser, scheduler, weighting and loaders of one run (one process of it under DDP)."""

    def __init__(self, cfg: Config, model: MultiTaskModel, info: DatasetInfo, train_set: Dataset,
                 val_set: Dataset, device: torch.device, dist_info: DistInfo | None = None) -> None:
        self.cfg = cfg
        self.info = info
        self.tasks = info.tasks
        self.device = device
        self.dist = dist_info or DistInfo()
        self.is_main = self.dist.is_main
        self.model = model.to(device)
        if cfg.channels_last:  # NHWC conv weights (inputs follow in _step_losses); state dicts are saved NCHW
            self.model.to(memory_format=torch.channels_last)
        self.model.set_sparse(not cfg.dense)
        self.net: torch.nn.Module = self.model  # what the training forward calls (DDP-wrapped under torchrun)
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel

            self.net = DistributedDataParallel(self.model, device_ids=[device.index] if device.type == "cuda" else None)
        self.sparse = not cfg.dense
        self.class_weights = info.class_weights.to(device) if info.class_weights is not None else None
        params = [p for p in self.model.parameters() if p.requires_grad]
        # Reference: one Adam group, coupled L2 on everything (weights, BN, biases and thresholds).
        self.optimizer = torch.optim.Adam(params, lr=cfg.lr, betas=(0.5, 0.999), weight_decay=cfg.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.StepLR(self.optimizer, cfg.decay_lr_freq, cfg.decay_lr_rate)
        # --amp fp16 only: loss scaling (fp16 gradients underflow).  A step whose scaled gradients overflow is
        # skipped by the scaler itself (and the scale lowered); that is not a "bad step" of --max_bad_steps.
        self.scaler = grad_scaler(cfg.amp, device)
        self.weighting = build_weighting(cfg.task_weighting, self.tasks, cfg.adaptive_begin, cfg.adaptive_window,
                                         cfg.adaptive_total, getattr(torch, cfg.weighting_dtype))
        self.priority = torch.tensor(cfg.priority or [1.0] * len(self.tasks), device=device)
        self.counter = SparsityCounter(self.model.components())
        self.counter.record_forward_counts(self.sparse)
        self.controller = (BudgetController(cfg.ratio, cfg.iters, cfg.budget_ramp, cfg.budget_gain,
                                            cfg.budget_max_step, sum(self.counter.totals), cfg.budget_integral,
                                            cfg.budget_mode)
                           if self.sparse and cfg.sparsity_control == "budget" else None)
        self.train_set = train_set
        self.val_set = val_set
        self.iteration = 0  # completed iterations
        self.best: dict | None = None
        self.save_dir = Path(cfg.save_dir)
        self.metrics = TaskMetrics(self.tasks, info.num_classes, info.metric_style, cfg.metric_definitions,
                                   class_weights=info.class_weights)
        self.directions = metric_directions(info.metric_style, self.tasks)
        self.show_progress = self.is_main and want_progress(cfg.progress)
        self.log = get_logger(str(self.save_dir), enabled=self.is_main)
        if amp_warning(cfg.amp, device):
            self.log.warning(amp_warning(cfg.amp, device))
        self.last_report: SparsityReport | None = None
        self._val_loader: DataLoader | None = None
        self.bad_steps = 0  # non-finite losses skipped so far (this process)
        self.masks: MaskSet | None = None  # hard-pruning masks, enforced after every step when set
        # Called as hook(trainer, iteration, batch) after every optimiser step (masks already enforced): the seam
        # for schedules that change masks during training (DiSparse dynamic, CosPrune / Taylor windows, LTH k).
        self.step_hooks: list = []

    def set_masks(self, masks: MaskSet | None) -> None:
        """Enforce ``masks`` from now on (pruned weights zeroed now and after every optimiser step)."""
        self.masks = masks.to(self.device) if masks is not None else None
        if self.masks is not None:
            self.masks.apply()

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self, rng_ranks: list | None = None) -> dict:
        return {
            "iter": self.iteration,
            # .contiguous(): a no-op except under --channels_last, whose NHWC strides would otherwise be saved
            "state_dict": {k: v.contiguous() for k, v in self.model.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "scheduler": self.scheduler.state_dict(),
            "config": self.cfg.to_dict(),
            "weighting": self.weighting.state_dict(),
            "rng": rng_state(),
            "rng_ranks": rng_ranks,
            "best": self.best,
            "masks": self.masks.state_dict() if self.masks is not None else None,
            "controller": self.controller.state_dict() if self.controller is not None else None,
            "version": CHECKPOINT_VERSION,
            "torch_version": str(torch.__version__),
        }

    def load_model_weights(self, state: dict, source: str) -> None:
        """Strict load with a readable error when the checkpoint belongs to another model."""
        try:
            self.model.load_state_dict(state["state_dict"])
        except RuntimeError as e:
            cfg = state.get("config", {})
            raise CheckpointError(
                f"{source} does not fit this model (it was trained with architecture "
                f"{cfg.get('architecture')!r}, tasks {cfg.get('tasks')}, width_mult {cfg.get('width_mult')}; "
                f"this run has {self.cfg.architecture!r}, {list(self.tasks)}, {self.cfg.width_mult}): "
                f"{str(e).splitlines()[0]}") from None

    def resume_from(self, state: dict, source: str) -> None:
        """Continue exactly: weights, optimiser, scheduler, weighting window, RNG, best and iteration."""
        self.load_model_weights(state, source)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.weighting.load_state_dict(state["weighting"])
        ranks = state.get("rng_ranks")
        same_world = ranks is not None and len(ranks) == self.dist.world_size
        set_rng_state(ranks[self.dist.rank] if same_world else state["rng"])
        self.best = state.get("best")
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        if self.controller is not None:
            self.controller.load_state_dict(state.get("controller"), self.device)
        if state.get("masks") is not None:
            masks = MaskSet(self.model)
            masks.load_state_dict(state["masks"])
            self.set_masks(masks)
        self.iteration = int(state["iter"])

    def reload_from(self, state: dict, source: str) -> None:
        """Reference ``--reload``: a new run from the weights, every threshold reset to ``--sInit_value``."""
        self.load_model_weights(state, source)
        self.model.reset_thresholds(self.cfg.sInit_value)

    def save(self, best: bool = False, rng_ranks: list | None = None) -> Path:
        """Write the latest (or best) checkpoint; never one holding a NaN / Inf parameter."""
        bad = [n for n, p in self.model.named_parameters() if not bool(torch.isfinite(p).all())]
        if bad:
            raise TrainingDiverged(f"parameter {bad[0]} is NaN/Inf at iteration {self.iteration}; nothing was "
                                   f"saved and the last good checkpoint in {self.save_dir} is intact: lower --lr, "
                                   "then --resume")
        path = self.save_dir / checkpoint_name(self.tasks, best)
        if best:
            atomic_save(self.state_dict(), path)
        else:
            save_with_snapshots(self.state_dict(rng_ranks), path, self.iteration, self.cfg.keep_checkpoints)
        return path

    # ------------------------------------------------------------------ loop pieces
    def _train_loader(self) -> DataLoader:
        sampler = ResumableBatchSampler(len(self.train_set), self.cfg.batch_size, self.cfg.seed,
                                        start_batch=self.iteration, rank=self.dist.rank,
                                        world_size=self.dist.world_size,
                                        stream=getattr(self.train_set, "stream", False))
        return DataLoader(self.train_set, batch_sampler=sampler, num_workers=self.cfg.num_workers,
                          pin_memory=self.device.type == "cuda", generator=torch.Generator(),
                          persistent_workers=False)

    def val_loader(self) -> DataLoader:
        """Built once: with workers they persist between validations instead of restarting each time."""
        if self._val_loader is None:
            # Own generator: creating the iterator must not consume the global RNG (exact resume).
            workers = self.cfg.num_workers
            self._val_loader = DataLoader(self.val_set, batch_size=self.cfg.batch_size, shuffle=False,
                                          num_workers=workers, generator=torch.Generator(),
                                          pin_memory=self.device.type == "cuda", persistent_workers=workers > 0)
        return self._val_loader

    def _scheduler_step(self) -> None:
        """StepLR counts iterations, skipped steps included (NaN skips and fp16-overflow skips alike).

        With a GradScaler the first optimiser step is often skipped (the initial scale 2**16 overflows), and torch
        then warns that the scheduler stepped before the optimiser: intended here, so only that warning is muted.
        """
        if self.scaler is None:
            self.scheduler.step()
            return
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)` before")
            self.scheduler.step()

    def _threshold_count_limit(self) -> float:
        # sparsity >= ratio  <=>  nonzero <= (1 - ratio) * total
        return (1.0 - self.cfg.ratio) * sum(self.counter.totals)

    def _step_losses(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor, Tensor | None]:
        # Under --amp only the network forward runs in low precision; thresholds are fp32 inside it (main.sparse)
        # and the losses are computed on fp32 predictions.
        with autocast(self.cfg.amp, self.device):
            preds = self.net(to_channels_last(batch["input"], self.cfg.channels_last))
        preds = predictions_fp32(preds)
        losses = torch.stack([task_loss(t, preds[t], batch, self.class_weights) for t in self.tasks])
        # The stop rule's exact per-step count, taken from the effective weights this forward built; None when
        # the fused CPU path records it during the backward (``flags_after_backward`` then reads it).
        counts = None
        if self.sparse:
            if not self.model.sparse:
                counts = self.counter.count(self.model.taus())
            elif self.counter.counts_ready():
                counts = self.counter.forward_counts()
        return preds, losses, counts

    def flags_before_backward(self, losses: Tensor, counts: Tensor | None, limit: float) -> _StepFlags | None:
        """The step's flags when the forward already gave its counts (on CUDA they then travel while the backward
        runs); None on the fused CPU path, whose backward records the counts: ``flags_after_backward`` builds them.
        """
        return _StepFlags(losses, counts, limit) if counts is not None or not self.sparse else None

    def flags_after_backward(self, flags: _StepFlags | None, losses: Tensor, counts: Tensor | None,
                             limit: float) -> tuple[_StepFlags, Tensor | None]:
        """The step's flags and counts once ``backward()`` has run: those built before it, or built now from the
        counts the backward recorded."""
        if flags is not None:
            return flags, counts
        if self.sparse:
            counts = self.counter.forward_counts()
        return _StepFlags(losses, counts, limit), counts

    def sparsity_report(self) -> SparsityReport:
        taus = self.model.taus() if self.sparse else None
        return self.counter.report(self.counter.count(taus))

    # ------------------------------------------------------------------ training
    def train(self) -> dict:
        cfg = self.cfg
        if self.iteration >= cfg.iters:
            self.log.info(f"nothing to do: the run already completed {self.iteration} of {cfg.iters} iterations")
            return {"iter": self.iteration}
        writer = ScalarWriter(str(self.save_dir) if (self.is_main and cfg.tensorboard) else None,
                              purge_step=self.iteration + 1 if self.iteration else None)
        limit = self._threshold_count_limit()
        loss_acc = torch.zeros(len(self.tasks), device=self.device)
        acc_steps = 0
        frozen_steps = 0
        consecutive_bad = 0
        t_last = time.perf_counter()
        self.model.train()
        batches = iter(self._train_loader())
        bar = progress(total=cfg.iters, initial=self.iteration, desc="train", enabled=self.show_progress)
        stop = StopSignals()
        try:
            stop.__enter__()
            for it in range(self.iteration, cfg.iters):
                batch = to_device(next(batches), self.device)
                _, losses, counts = self._step_losses(batch)
                # Every rank folds in the same (all-reduced) losses, so every rank holds the same weights.
                global_losses = all_reduce_mean(losses.detach(), self.dist)
                saved_weighting = self.weighting.snapshot()
                weights = self.weighting.update(global_losses, it)
                total = (losses * weights * self.priority).sum()
                # the step is skipped when a task loss OR the weighted total is not finite (the global total:
                # every rank decides alike)
                checked = torch.cat([global_losses, (global_losses * weights * self.priority).sum().reshape(1)])
                flags = self.flags_before_backward(checked, counts, limit)
                self.optimizer.zero_grad(set_to_none=True)
                (self.scaler.scale(total) if self.scaler is not None else total).backward()
                flags, counts = self.flags_after_backward(flags, checked, counts, limit)
                finite, reached = flags.get()
                if finite:
                    consecutive_bad = 0
                    if self.scaler is not None:  # true gradients before masking, the stop rule and the step
                        self.scaler.unscale_(self.optimizer)
                    if self.masks is not None:
                        self.masks.mask_grads()
                    if reached and self.controller is None:  # stop rule: the thresholds skip this step
                        # (Adam ignores a None grad)
                        for s in self.model.thresholds.values():
                            s.grad = None
                        frozen_steps += 1
                    if self.scaler is not None:  # skips the step if a gradient overflowed in fp16
                        self.scaler.step(self.optimizer)
                        self.scaler.update()
                    else:
                        self.optimizer.step()
                    if self.masks is not None:
                        self.masks.apply()
                    if self.controller is not None and counts is not None:
                        self.controller.step(self.model.thresholds, counts, it + 1)
                else:  # skip the step entirely: no update, and the weighting window never sees the NaN
                    self.weighting.restore(saved_weighting)
                    self.optimizer.zero_grad(set_to_none=True)
                    self.bad_steps += 1
                    consecutive_bad += 1
                    self.log.warning(f"[Iter {it + 1}] non-finite loss {global_losses.tolist()}: step skipped "
                                     f"({consecutive_bad} in a row, limit --max_bad_steps {cfg.max_bad_steps})")
                    if consecutive_bad >= cfg.max_bad_steps:
                        raise TrainingDiverged(
                            f"the loss was NaN/Inf for {consecutive_bad} consecutive steps (iteration {it + 1}); the "
                            f"last good checkpoint in {self.save_dir} is intact: lower --lr or check the data, "
                            "then --resume")
                self._scheduler_step()
                self.iteration = it + 1
                if finite:
                    for hook in self.step_hooks:
                        hook(self, self.iteration, batch)
                    loss_acc += losses.detach()
                    acc_steps += 1
                bar.update(1)

                if self.iteration % cfg.log_every == 0 or self.iteration == cfg.iters:
                    now = time.perf_counter()
                    mean = loss_acc / acc_steps if acc_steps else torch.full_like(loss_acc, float("nan"))
                    self._log_interval(writer, mean, weights, frozen_steps,
                                       max(acc_steps, 1), (now - t_last) / max(acc_steps, 1), bar)
                    loss_acc.zero_()
                    acc_steps = frozen_steps = 0
                    t_last = now
                if self.iteration % cfg.val_iters == 0 or self.iteration == cfg.iters:
                    if self.is_main:  # parameters are identical on every rank: one evaluation suffices
                        self._validate(writer)
                    barrier(self.dist)
                    t_last = time.perf_counter()
                saved = self.iteration % cfg.save_iters == 0 or self.iteration == cfg.iters
                if saved:
                    self._save_latest()
                signum = self._stop_signal(stop, logged=self.iteration % cfg.log_every == 0)
                if signum is not None and self.iteration < cfg.iters:
                    if not saved:
                        self._save_latest()
                    raise Preempted(f"stopped by {signal_name(signum)} after iteration {self.iteration}: checkpoint "
                                    f"written to {self.save_dir}; continue with the same command plus --resume",
                                    signum)
        finally:
            stop.__exit__()
            bar.close()
            writer.close()
        bad = getattr(self.train_set, "bad_samples", 0)
        if bad and self.is_main:
            self.log.info(f"skipped {bad} unreadable training sample(s) (--skip_bad_samples); see the dataset check: "
                          f"python -m main.data.check --dataset {self.cfg.dataset} --data_root {self.cfg.data_root}")
        return {"iter": self.iteration, "best": self.best}

    def _save_latest(self) -> None:
        # every rank's RNG (dropout streams differ per rank) so a DDP resume is exact on all ranks
        rng_ranks = gather_objects(rng_state(), self.dist) if self.dist.enabled else None
        if self.is_main:
            self.save(rng_ranks=rng_ranks)
            self._write_sparsity_json()

    def _stop_signal(self, stop: StopSignals, logged: bool) -> int | None:
        """The signal to stop on after this step, if any.  Alone: as soon as one arrived.  Under torchrun the
        ranks agree at log intervals (one all-reduce), so that all of them stop at the same iteration."""
        if not self.dist.enabled:
            return stop.signum
        if not logged:
            return None
        seen = torch.tensor([float(stop.signum or 0)], device=self.device)
        agreed = float(all_reduce_mean(seen, self.dist))
        return None if agreed == 0 else (stop.signum or int(signal.SIGTERM))

    def _log_interval(self, writer: ScalarWriter, mean_losses: Tensor, weights: Tensor, frozen: int,
                      steps: int, sec_per_iter: float, bar) -> None:
        if not self.is_main:
            return
        step = self.iteration
        losses = mean_losses.tolist()
        w = weights.tolist()
        lr = self.optimizer.param_groups[0]["lr"]
        scalars = {f"Loss/train/{t}": v for t, v in zip(self.tasks, losses)}
        scalars.update({f"LR/{t}/weights": v for t, v in zip(self.tasks, w)})
        scalars["Loss/train/total"] = sum(p * x * y for p, x, y in zip(self.priority.tolist(), losses, w))
        scalars["LR"] = lr
        scalars["time/iter_s"] = sec_per_iter
        scalars["train/bad_steps"] = self.bad_steps
        if self.scaler is not None:
            scalars["amp/grad_scale"] = self.scaler.get_scale()
        report = self.sparsity_report()
        self.last_report = report
        for comp, sp in report.component_sparsity().items():
            scalars[f"sparsity/{component_tag(comp)}"] = 100.0 * sp
        scalars["sparsity/overall_sparsity"] = report.overall
        if self.sparse:
            scalars["sparsity/target"] = self.cfg.ratio
            if self.controller is not None:
                scalars["sparsity/budget_target"] = self.controller.target(step)
            scalars["sparsity/frozen_fraction"] = frozen / steps
            taus = {c: float(t.detach()) for c, t in self.model.taus().items()}
            scalars["LR/sparseThreshold"] = float(self.model.threshold_param("backbone").detach())
            for comp, tau in taus.items():
                scalars[f"threshold/{comp}"] = tau
            for name, sp in report.layer_sparsity().items():
                comp, layer = name.split(".", 1)
                tag = f"{component_tag(comp)}_{layer}"
                scalars[f"Layer_sparsity/{tag}"] = 100.0 * sp
                scalars[f"Layer_thresh/{tag}"] = taus[comp]
        writer.scalars(scalars, step)
        loss_txt = " ".join(f"{t[:4]} {v:.4f}" for t, v in zip(self.tasks, losses))
        wt_txt = " ".join(f"{v:.2f}" for v in w)
        msg = (f"[Iter {step}] loss {loss_txt} | weights {wt_txt} | sparsity {100 * report.overall:.2f}% "
               f"| lr {lr:.2e} | {sec_per_iter:.3f} s/it")
        bar.set_postfix_str(f"loss {scalars['Loss/train/total']:.3f} sp {100 * report.overall:.1f}%", refresh=False)
        self.log.info(msg)

    def selection_value(self, result: dict) -> float:
        """Higher is better: the reference test score, one validation metric (signed by its direction: S004 picks
        by Pixel Acc), or minus the mean validation loss."""
        if self.cfg.select_by.startswith("metric:"):
            task, metric = parse_metric_selector(self.cfg.select_by, self.directions)
            return self.directions[task][metric] * result["metrics"][task][metric]
        if self.cfg.select_by == "score":
            refs = NYUV2_REFERENCE_SCORES[self.cfg.architecture]
            priority = dict(zip(self.tasks, self.cfg.priority)) if self.cfg.priority else None  # as the reference
            return selection_score(result["metrics"], refs, self.directions, task_priority=priority)
        return -sum(result["losses"].values()) / len(result["losses"])

    def _sparsity_reached(self, overall: float, step: int) -> bool:
        """May this model be "best"?  Stop rule: at or above --ratio.  Budget control: ramp over, within 1 pp."""
        if self.controller is None:
            return overall >= self.cfg.ratio
        return step >= self.controller.ramp_iters and abs(overall - self.cfg.ratio) <= BUDGET_TOLERANCE

    def _validate(self, writer: ScalarWriter) -> dict:
        batches = progress(self.val_loader(), desc="val", enabled=self.show_progress, leave=False)
        result = evaluate(self.model, batches, self.tasks, self.metrics, self.device, self.class_weights,
                          amp=self.cfg.amp, channels_last=self.cfg.channels_last, loss_mean=self.cfg.val_loss_mean)
        step = self.iteration
        score = self.selection_value(result)
        report = self.sparsity_report()
        if self.is_main:
            for t, v in result["losses"].items():
                writer.scalar(f"Loss/val/{t}", v, step)
            for t, ms in result["metrics"].items():
                for m, v in ms.items():
                    writer.scalar(f"Metric/{t}/{m}", v, step)
            writer.scalar("Loss/avg_score", score, step)
            writer.flush()
            metrics_txt = "; ".join(f"{t}: " + ", ".join(f"{m} {v:.4f}" for m, v in ms.items())
                                    for t, ms in result["metrics"].items())
            self.log.info(f"[Iter {step}] val {metrics_txt} | selection {score:.4f} "
                          f"| sparsity {100 * report.overall:.2f}%")
        eligible = step > self.cfg.best_after and (not self.sparse or self._sparsity_reached(report.overall, step))
        if eligible and (self.best is None or score > self.best["score"]):
            self.best = {"score": score, "iter": step, "sparsity": report.overall, "select_by": self.cfg.select_by}
            if self.is_main:
                self.save(best=True)
        return result

    def _write_sparsity_json(self) -> None:
        import json

        report = self.sparsity_report()
        summary = {"iter": self.iteration, **report.as_dict()}
        atomic_write_text(self.save_dir / "sparsity.json", json.dumps(summary, indent=1))
