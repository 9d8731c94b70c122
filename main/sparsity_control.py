"""``--sparsity_control budget``: reach a requested overall sparsity without sweeping sInit and weight decay.

With the reference control (``stop``) a soft-threshold run cannot be *asked* for a sparsity: the thresholds
freeze once ``--ratio`` is reached, but coupled weight decay keeps shrinking the weights, so sparsity keeps
rising; where it ends is set by sInit x weight decay and users sweep both per target (reference-adapmtl.md §3.4).

The budget controller closes the loop instead.  Every step it compares the measured overall sparsity (the exact
count the forward pass already produced, still on the device) with a target that ramps cubically from the
sparsity at the start of the run to ``--ratio`` over ``--budget_ramp`` x ``--iters`` iterations, and moves every
threshold parameter by the same amount ``clip(gain x error + integral_gain x sum of errors, ±max_step)`` after the
optimiser step.  The integral term cancels the steady drift (weight decay keeps shrinking weights below the
thresholds, which a purely proportional controller would leave as a constant offset above the target).  Because
tau = sigmoid(s) ~ exp(s) for the s values in use, a shift of s is a relative change of every tau: the controller
scales all thresholds together and never decides which component is pruned more.  That split still comes from
the learned part of each s (its task-loss gradient and weight decay through Adam), as in AdapMTL.

Everything is computed on the device: no host synchronisation is added to the step.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class BudgetController:
    """Proportional control of all thresholds toward a ramped sparsity target."""

    def __init__(self, ratio: float, iters: int, ramp: float, gain: float, max_step: float, total: int,
                 integral_gain: float = 0.0) -> None:
        self.ratio = ratio
        self.ramp_iters = max(1, round(ramp * iters))
        self.gain = gain
        self.integral_gain = integral_gain
        self.max_step = max_step
        self.total = float(total)
        self.initial: float | None = None  # sparsity when the run started; set on the first step, checkpointed
        self.integral: Tensor | None = None  # sum of errors (device scalar), clipped so its term stays <= max_step

    def target(self, iteration: int) -> float:
        """Sparsity asked for after ``iteration`` completed steps (cubic ramp, as gradual magnitude pruning)."""
        start = self.ratio if self.initial is None else self.initial
        left = max(0.0, 1.0 - iteration / self.ramp_iters)
        return self.ratio + (start - self.ratio) * left ** 3

    def step(self, thresholds: nn.ParameterDict, counts: Tensor, iteration: int) -> None:
        """Shift every s by the clipped error; ``counts`` = non-zeros per layer of this step's forward."""
        sparsity = 1.0 - counts.sum().double() / self.total
        if self.initial is None:
            self.initial = float(sparsity)  # one host read, on the first step of a run only
        error = self.target(iteration) - sparsity
        shift = self.gain * error
        if self.integral_gain > 0:
            limit = self.max_step / self.integral_gain  # anti-windup
            self.integral = (error if self.integral is None else self.integral + error).clamp(-limit, limit)
            shift = shift + self.integral_gain * self.integral
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
