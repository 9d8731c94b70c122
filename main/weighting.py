"""Task-loss weighting strategies (LibMTL-style pluggable objects).

``AdaptiveWeighting`` is the reference AdapMTL rule (``main/trainer.py`` of the original): from iteration
``begin`` on, each task keeps a sliding window of ``|L_t(i-1) - L_t(i)| / L_t(i)`` (relative change of its
loss between consecutive mini-batches); once the window holds more than ``window`` entries the task's weight
is the window mean, and every iteration the weights are rescaled to sum to ``total`` (the reference
hard-codes 3 whatever the number of tasks).  Tasks whose loss fluctuates more get more weight.

Everything lives in device tensors (a ring buffer instead of Python lists) so no loss value is copied to the
host per step; under DDP the caller passes all-reduced losses so every rank holds the same weights.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


class EqualWeighting:
    """Every task weighted 1 (``--task_weighting equal``)."""

    name = "equal"

    def __init__(self, tasks: Sequence[str]) -> None:
        self.tasks = tuple(tasks)
        self._weights: Tensor | None = None

    def update(self, losses: Tensor, iteration: int) -> Tensor:
        if self._weights is None or self._weights.device != losses.device:
            self._weights = torch.ones(len(self.tasks), device=losses.device)
        return self._weights

    def snapshot(self) -> None:
        return None

    def restore(self, snap: None) -> None:
        pass

    def state_dict(self) -> dict:
        return {"name": self.name}

    def load_state_dict(self, state: dict) -> None:
        pass


class AdaptiveWeighting:
    """Sliding-window adaptive task weights (reference defaults: begin 5000, window 500, total 3)."""

    name = "adaptive"

    def __init__(self, tasks: Sequence[str], begin: int = 5000, window: int = 500, total: float = 3.0,
                 dtype: torch.dtype = torch.float32) -> None:
        if window < 1:
            raise ValueError("adaptive window must be >= 1")
        self.tasks = tuple(tasks)
        self.dtype = dtype  # float64: the reference's precision (its losses are Python floats); float32 differs ~1e-7
        self.begin = begin
        self.window = window
        self.total = total
        n = len(self.tasks)
        self.weights = torch.ones(n, dtype=dtype)
        self.prev = torch.zeros(n, dtype=dtype)
        self.buffer = torch.zeros(n, window, dtype=dtype)

    def _to(self, device: torch.device) -> None:
        if self.weights.device != device:
            self.weights = self.weights.to(device)
            self.prev = self.prev.to(device)
            self.buffer = self.buffer.to(device)

    def update(self, losses: Tensor, iteration: int) -> Tensor:
        """Fold this iteration's per-task losses (shape (T,), any device) in; return the weights to use now."""
        losses = losses.detach().to(self.dtype)
        self._to(losses.device)
        if iteration >= self.begin:
            entries = iteration - self.begin  # relative changes recorded after this step
            if entries >= 1:
                self.buffer[:, (entries - 1) % self.window] = (self.prev - losses).abs() / losses
                if entries > self.window:
                    self.weights = self.buffer.mean(dim=1)
            self.prev = losses.clone()
        self.weights = self.weights * (self.total / self.weights.sum())
        return self.weights.float()

    def snapshot(self) -> tuple[Tensor, Tensor, Tensor]:
        """Device copies of the state (no host sync), to undo an update whose losses were not finite."""
        return self.weights, self.prev, self.buffer.clone()

    def restore(self, snap: tuple[Tensor, Tensor, Tensor]) -> None:
        self.weights, self.prev, self.buffer = snap

    def state_dict(self) -> dict:
        return {"name": self.name, "weights": self.weights.cpu(), "prev": self.prev.cpu(),
                "buffer": self.buffer.cpu(), "begin": self.begin, "window": self.window, "total": self.total}

    def load_state_dict(self, state: dict) -> None:
        if state.get("name") != self.name:
            return
        if int(state["window"]) != self.window or state["buffer"].shape[0] != len(self.tasks):
            raise ValueError("adaptive-weighting state does not match --adaptive_window / the task set")
        device = self.weights.device
        self.weights = state["weights"].to(device, self.dtype)
        self.prev = state["prev"].to(device, self.dtype)
        self.buffer = state["buffer"].to(device, self.dtype)


def build_weighting(kind: str, tasks: Sequence[str], begin: int, window: int, total: float | None,
                    dtype: torch.dtype = torch.float32):
    """``kind`` in {"adaptive", "equal"}; ``total`` None means "number of tasks" (the corrected normaliser)."""
    if kind == "equal":
        return EqualWeighting(tasks)
    if kind == "adaptive":
        return AdaptiveWeighting(tasks, begin, window, float(len(tasks)) if total is None else total, dtype)
    raise ValueError(f"unknown task weighting {kind!r}; choose 'adaptive' or 'equal'")
