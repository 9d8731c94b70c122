"""What a run reports while it trains: the progress bar, and every ``--log_every`` iterations the mean task
losses, task weights, learning rate, step time and sparsity (per component and per layer) and thresholds, as one
console / ``train.log`` line and as TensorBoard scalars.

Per-layer numbers are counted once per interval, never per step (the step itself reads one scalar at most).
The tag names are the reference's (``Loss/train/<task>``, ``LR/<task>/weights``, ``sparsity/<Comp>``,
``Layer_sparsity/<Comp>_<layer>``, ``LR/sparseThreshold`` ...), so its TensorBoard habits carry over.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from .monitor import component_tag, progress

if TYPE_CHECKING:
    from .trainer import Trainer


@dataclass
class StepResult:
    """What one training step hands to the callbacks."""

    losses: Tensor  # per-task losses of this rank (detached)
    weights: Tensor  # the task weights the step used
    finite: bool  # False: the step was skipped (non-finite loss)
    seconds: float  # wall time of the step, data loading included


class TrainingLog:
    """Training callback: progress bar, interval means, scalars and the console line."""

    def __init__(self, trainer: Trainer) -> None:
        self.loss_sum = torch.zeros(len(trainer.tasks), device=trainer.device)
        self.finite_steps = 0
        self.steps = 0
        self.seconds = 0.0
        self.bar = progress(total=trainer.cfg.iters, initial=trainer.iteration, desc="train",
                            enabled=trainer.show_progress)

    def on_step_end(self, trainer: Trainer, result: StepResult) -> None:
        if result.finite:
            self.loss_sum += result.losses
            self.finite_steps += 1
        self.steps += 1
        self.seconds += result.seconds
        self.bar.update(1)
        if trainer.iteration % trainer.cfg.log_every == 0 or trainer.iteration == trainer.cfg.iters:
            if trainer.is_main:
                self.report(trainer, result.weights)
            if trainer.control is not None:
                trainer.control.end_interval()
            self.loss_sum.zero_()
            self.finite_steps = self.steps = 0
            self.seconds = 0.0

    def close(self) -> None:
        self.bar.close()

    def report(self, trainer: Trainer, weights: Tensor) -> None:
        steps = max(self.finite_steps, 1)
        mean = self.loss_sum / self.finite_steps if self.finite_steps else torch.full_like(self.loss_sum, float("nan"))
        losses, w = mean.tolist(), weights.tolist()
        lr = trainer.optimizer.param_groups[0]["lr"]
        scalars = {f"Loss/train/{t}": v for t, v in zip(trainer.tasks, losses)}
        scalars.update({f"LR/{t}/weights": v for t, v in zip(trainer.tasks, w)})
        scalars["Loss/train/total"] = sum(p * x * y for p, x, y in zip(trainer.priority.tolist(), losses, w))
        scalars["LR"] = lr
        scalars["time/iter_s"] = self.seconds / max(self.steps, 1)
        scalars["train/bad_steps"] = trainer.bad_steps
        if trainer.scaler is not None:
            scalars["amp/grad_scale"] = trainer.scaler.get_scale()
        overall = self._sparsity_scalars(trainer, scalars, steps)
        trainer.writer.scalars(scalars, trainer.iteration)
        loss_txt = " ".join(f"{t[:4]} {v:.4f}" for t, v in zip(trainer.tasks, losses))
        wt_txt = " ".join(f"{v:.2f}" for v in w)
        self.bar.set_postfix_str(f"loss {scalars['Loss/train/total']:.3f} sp {100 * overall:.1f}%", refresh=False)
        trainer.log.info(f"[Iter {trainer.iteration}] loss {loss_txt} | weights {wt_txt} | sparsity "
                         f"{100 * overall:.2f}% | lr {lr:.2e} | {scalars['time/iter_s']:.3f} s/it")

    @staticmethod
    def _sparsity_scalars(trainer: Trainer, scalars: dict[str, float], steps: int) -> float:
        """Adds the sparsity and threshold scalars; returns the overall sparsity."""
        report = trainer.sparsity_report()
        for comp, sp in report.component_sparsity().items():
            scalars[f"sparsity/{component_tag(comp)}"] = 100.0 * sp
        scalars["sparsity/overall_sparsity"] = report.overall
        if trainer.control is None:
            return report.overall
        scalars.update(trainer.control.scalars(trainer.iteration, steps))
        taus = {c: float(t.detach()) for c, t in trainer.model.taus().items()}
        scalars["LR/sparseThreshold"] = float(trainer.model.threshold_param("backbone").detach())
        start = trainer.cfg.sInit_value  # every run's thresholds start there (--reload resets them to it)
        for comp, tau in taus.items():
            scalars[f"threshold/{comp}"] = tau
            scalars[f"threshold_travel/{comp}"] = abs(float(trainer.model.threshold_param(comp).detach()) - start)
        for name, sp in report.layer_sparsity().items():
            comp, layer = name.split(".", 1)
            tag = f"{component_tag(comp)}_{layer}"
            scalars[f"Layer_sparsity/{tag}"] = 100.0 * sp
            scalars[f"Layer_thresh/{tag}"] = taus[comp]
        return report.overall
