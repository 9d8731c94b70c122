"""``--sparsity_control budget``: reach a requested overall sparsity without sweeping sInit and weight decay.

With the reference control (``stop``) a soft-threshold run cannot be *asked* for a sparsity: the thresholds
freeze once ``--ratio`` is reached, but coupled weight decay keeps shrinking the weights, so sparsity keeps
rising; where it ends is set by sInit x weight decay and users sweep both per target (docs/reference.md §3.4).

The budget controller closes the loop.  Every step it compares the measured overall sparsity (the exact count the
forward pass already produced, still on the device) with a band and moves every threshold parameter by the same
amount ``clip(gain x error + integral_gain x sum of errors, ±max_step)`` after the optimiser step:

- ``--budget_mode band`` (default): the band's ceiling is ``--ratio``, its floor ramps linearly from the sparsity
  at the start of the run to ``--ratio`` over ``--budget_ramp`` x ``--iters`` iterations.  Inside the band the
  error is 0: the thresholds follow AdapMTL's own dynamics (task gradients and weight decay), and the controller
  only pulls them down when the run would overshoot and pushes them up when it falls behind the schedule.
- ``--budget_mode track``: the error is taken against a cubic ramp to ``--ratio`` (both sides, every step).  It
  lands as exactly but, measured on the synthetic benchmark, its early threshold pushes cost accuracy
  (docs/comparison_v1.md).

The integral term cancels the steady drift at the ceiling (weight decay keeps shrinking weights below the
thresholds, which a purely proportional controller would leave as a constant offset above the target); it only
accumulates outside the band.  Because tau = sigmoid(s) ~ exp(s) for the s values in use, a shift of s is a
relative change of every tau: the controller scales all thresholds together and never decides which component is
pruned more.  That split still comes from the learned part of each s, as in AdapMTL.

Everything is computed on the device: no host synchronisation is added to the step.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

if TYPE_CHECKING:
    from .config import Config


class BudgetController:
    """Proportional control of all thresholds toward a ramped sparsity target."""

    def __init__(self, ratio: float, iters: int, ramp: float, gain: float, max_step: float, total: int,
                 integral_gain: float = 0.0, mode: str = "band") -> None:
        if mode not in ("band", "track"):
            raise ValueError(f"mode must be band or track, got {mode!r}")
        self.mode = mode
        self.ratio = ratio
        self.ramp_iters = max(1, round(ramp * iters))
        self.gain = gain
        self.integral_gain = integral_gain
        self.max_step = max_step
        self.total = float(total)
        self.initial: float | None = None  # sparsity when the run started; set on the first step, checkpointed
        self.integral: Tensor | None = None  # sum of errors (device scalar), clipped so its term stays <= max_step

    def target(self, iteration: int) -> float:
        """Lowest sparsity accepted after ``iteration`` steps (band: linear floor; track: the cubic target)."""
        start = self.ratio if self.initial is None else self.initial
        left = max(0.0, 1.0 - iteration / self.ramp_iters)
        return self.ratio + (start - self.ratio) * left ** (3 if self.mode == "track" else 1)

    def _error(self, sparsity: Tensor, iteration: int) -> Tensor:
        low = self.target(iteration)
        if self.mode == "track":
            return low - sparsity
        high = max(low, self.ratio)  # a run that starts above --ratio: the ramp comes down to it
        return (low - sparsity).clamp(min=0) - (sparsity - high).clamp(min=0)

    def step(self, thresholds: nn.ParameterDict, counts: Tensor, iteration: int) -> None:
        """Shift every s by the clipped error; ``counts`` = non-zeros per layer of this step's forward."""
        sparsity = 1.0 - counts.sum().double() / self.total
        if self.initial is None:
            self.initial = float(sparsity)  # one host read, on the first step of a run only
        error = self._error(sparsity, iteration)
        shift = self.gain * error
        if self.integral_gain > 0:
            limit = self.max_step / self.integral_gain  # anti-windup
            self.integral = (error if self.integral is None else self.integral + error).clamp(-limit, limit)
            # inside the band (error 0) the integral neither grows nor acts: the thresholds learn freely
            shift = shift + torch.where(error != 0, self.integral_gain * self.integral, torch.zeros_like(error))
        shift = shift.clamp(-self.max_step, self.max_step)
        with torch.no_grad():
            for s in thresholds.values():
                s.add_(shift.to(s.dtype))

    def state_dict(self) -> dict:
        return {"initial": self.initial, "integral": None if self.integral is None else self.integral.cpu()}

    def load_state_dict(self, state: dict | None, device: torch.device | None = None) -> None:
        state = state or {}
        self.initial = state.get("initial")
        integral = state.get("integral")
        self.integral = None if integral is None else integral.to(device)


BUDGET_TOLERANCE = 0.01  # budget control: a checkpoint within 1 pp of --ratio counts as on target


class StopRule:
    """``--sparsity_control stop`` (the reference): while overall sparsity >= ``--ratio`` the thresholds skip the
    optimiser step (Adam ignores a None gradient); the weights keep training."""

    def __init__(self, ratio: float) -> None:
        self.ratio = ratio
        self.frozen = 0  # steps whose thresholds were frozen since the last log interval

    def before_optimizer_step(self, thresholds: nn.ParameterDict, reached: bool) -> None:
        if reached:
            for s in thresholds.values():
                s.grad = None
            self.frozen += 1

    def after_optimizer_step(self, thresholds: nn.ParameterDict, counts: Tensor | None, iteration: int) -> None:
        """Nothing: the stop rule acts before the step only."""

    def may_be_best(self, overall: float, iteration: int) -> bool:
        """Only a model at or above the target sparsity can be the best checkpoint."""
        return overall >= self.ratio

    def scalars(self, iteration: int, steps: int) -> dict[str, float]:
        """TensorBoard scalars of the interval just ended (``steps`` optimiser steps); no side effect."""
        return {"sparsity/target": self.ratio, "sparsity/frozen_fraction": self.frozen / steps}

    def end_interval(self) -> None:
        """A log interval ended (on every rank, whether or not it logs): its frozen-step count restarts."""
        self.frozen = 0

    def state_dict(self) -> None:
        return None

    def load_state_dict(self, state: dict | None, device: torch.device | None = None) -> None:
        """Nothing to restore: the rule is a function of the current sparsity."""


class BudgetControl(StopRule):
    """``--sparsity_control budget``: the thresholds always train; ``BudgetController`` shifts them after the step."""

    def __init__(self, ratio: float, controller: BudgetController) -> None:
        super().__init__(ratio)
        self.controller = controller

    def before_optimizer_step(self, thresholds: nn.ParameterDict, reached: bool) -> None:
        """Nothing: under budget control the thresholds are never frozen."""

    def after_optimizer_step(self, thresholds: nn.ParameterDict, counts: Tensor | None, iteration: int) -> None:
        if counts is not None:
            self.controller.step(thresholds, counts, iteration)

    def may_be_best(self, overall: float, iteration: int) -> bool:
        """The ramp is over and the sparsity is within ``BUDGET_TOLERANCE`` of the target."""
        return iteration >= self.controller.ramp_iters and abs(overall - self.ratio) <= BUDGET_TOLERANCE

    def scalars(self, iteration: int, steps: int) -> dict[str, float]:
        return {"sparsity/target": self.ratio, "sparsity/budget_target": self.controller.target(iteration),
                "sparsity/frozen_fraction": 0.0}  # never frozen

    def state_dict(self) -> dict:
        return self.controller.state_dict()

    def load_state_dict(self, state: dict | None, device: torch.device | None = None) -> None:
        self.controller.load_state_dict(state, device)


def build_sparsity_control(cfg: Config, total: int) -> StopRule | None:
    """The run's control of its thresholds (``--sparsity_control``), or None for a dense run.

    ``total``: the number of thresholded weights (what the budget's sparsity is a fraction of).
    """
    if cfg.dense:
        return None
    if cfg.sparsity_control == "budget":
        return BudgetControl(cfg.ratio, BudgetController(cfg.ratio, cfg.iters, cfg.budget_ramp, cfg.budget_gain,
                                                         cfg.budget_max_step, total, cfg.budget_integral,
                                                         cfg.budget_mode))
    return StopRule(cfg.ratio)
