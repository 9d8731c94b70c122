"""The two host decisions of a training step, "loss is finite" and "overall sparsity >= ratio", in ONE transfer.

Both are computed on the device (the loss check on the all-reduced losses, so every rank agrees).  When the
forward already produced the step's sparsity counts, the flags are built before ``backward()``: on CUDA the pair
is then copied to the host without blocking and an event recorded, so reading it after the backward waits for
those few kernels only.  On the fused CPU path the backward records the counts (``main.sparse``), so the flags
are built after it.  ``StepCheck`` hides which of the two happened: the trainer calls ``after_forward`` and
``after_backward`` and never sees the path.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .sparse import SparsityCounter


class StepFlags:
    """(finite, reached) on the device, readable on the host with one (possibly already finished) copy."""

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


class StepCheck:
    """One step's flags and sparsity counts, whichever pass (forward or backward) produced the counts.

    ``counter`` is None for a dense run (nothing is thresholded, "reached" is always False).  ``limit`` is the
    largest non-zero count at which the target sparsity counts as reached: (1 - ratio) x total.
    """

    def __init__(self, counter: SparsityCounter | None, limit: float) -> None:
        self.counter = counter
        self.limit = limit
        self._flags: StepFlags | None = None
        self._losses: Tensor | None = None
        self._counts: Tensor | None = None

    def after_forward(self, losses: Tensor, taus: dict[str, Tensor] | None) -> None:
        """``losses``: what must be finite; ``taus``: the thresholds to count with when the forward recorded no
        counts itself (a model whose convs are not thresholded in the forward)."""
        self._losses = losses
        self._counts = self.counter.step_counts(taus) if self.counter is not None else None
        ready = self.counter is None or self._counts is not None
        self._flags = StepFlags(losses, self._counts, self.limit) if ready else None

    def after_backward(self) -> tuple[bool, bool, Tensor | None]:
        """(finite, reached, per-layer counts or None for a dense run), once ``backward()`` has run."""
        if self._flags is None:
            self._counts = self.counter.forward_counts()
            self._flags = StepFlags(self._losses, self._counts, self.limit)
        finite, reached = self._flags.get()
        return finite, reached, self._counts
