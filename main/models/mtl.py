"""The hard-parameter-sharing multitask model: one backbone, one head per task, one threshold per component."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import torch
from torch import Tensor, nn

from ..sparse import THRESHOLD_KERNELS, SoftThresholdConv2d, grouped_soft_threshold, sparse_convs, threshold_value

BACKBONE = "backbone"
HEADS = "heads"  # the task heads' ModuleDict (module paths "heads.<task>....")
SHARED = "shared"  # the single threshold's key under threshold_scope="global"
THRESHOLD_SCOPES = ("component", "global")


class MultiTaskModel(nn.Module):
    """``forward(x) -> {task: prediction}`` at feature resolution.

    ``thresholds`` is a ``ParameterDict`` keyed by component name ("backbone" and each task) holding the
    raw scalar ``s_c``; it is the only place a threshold is registered.  With ``sparse=False`` the soft
    threshold is skipped entirely (dense training is the same model with thresholds disabled), and the
    thresholds stay in the state dict so dense and sparse checkpoints share one layout.
    """

    def __init__(self, backbone: nn.Module, heads: Mapping[str, nn.Module], s_init: float = -30.5,
                 sparse: bool = True, threshold_scope: str = "component") -> None:
        super().__init__()
        if BACKBONE in heads or SHARED in heads:
            raise ValueError(f"a task may not be called {BACKBONE!r} or {SHARED!r}")
        if threshold_scope not in THRESHOLD_SCOPES:
            raise ValueError(f"threshold_scope must be one of {THRESHOLD_SCOPES}, got {threshold_scope!r}")
        self.backbone = backbone
        self.heads = nn.ModuleDict(dict(heads))
        self.tasks: tuple[str, ...] = tuple(heads)
        # "component" (AdapMTL): one s per component.  "global" (the ablation): one s shared by every component,
        # registered once under "shared" so the state dict says which kind of model it is.
        self.threshold_scope = threshold_scope
        names = [name for name, _ in self.components()] if threshold_scope == "component" else [SHARED]
        self.thresholds = nn.ParameterDict({name: nn.Parameter(torch.tensor(float(s_init))) for name in names})
        self.sparse = sparse
        # Plain lists (not registered): which convolutions take each component's tau.
        self._component_convs: dict[str, list[SoftThresholdConv2d]] = {
            name: [m for _, m in sparse_convs(module)] for name, module in self.components()
        }
        self.threshold_kernel = "grouped"

    def set_threshold_kernel(self, kernel: str) -> None:
        """How CPU training computes the soft threshold (``main.sparse.THRESHOLD_KERNELS``); the same numbers on
        every kernel (bit-identical weights and outputs; tau's gradient to float rounding).  Benchmarks and tests
        switch it; runs keep the fastest, "grouped"."""
        if kernel not in THRESHOLD_KERNELS:
            raise ValueError(f"threshold kernel must be one of {THRESHOLD_KERNELS}, got {kernel!r}")
        self.threshold_kernel = kernel
        for convs in self._component_convs.values():
            for conv in convs:
                conv.fused_cpu = kernel != "general"

    def components(self) -> Iterator[tuple[str, nn.Module]]:
        """("backbone", backbone) then (task, head) in task order; every report iterates over this."""
        yield BACKBONE, self.backbone
        yield from self.heads.items()

    def threshold_param(self, component: str) -> nn.Parameter:
        """The raw ``s`` that sets ``component``'s threshold (the shared one under ``threshold_scope="global"``)."""
        return self.thresholds[SHARED if self.threshold_scope == "global" else component]

    def taus(self) -> dict[str, Tensor]:
        """Current fp32 thresholds sigmoid(s_c) per component."""
        if self.threshold_scope == "global":
            tau = threshold_value(self.thresholds[SHARED])
            return {name: tau for name, _ in self.components()}
        return {name: threshold_value(s) for name, s in self.thresholds.items()}

    def reset_thresholds(self, s_init: float) -> None:
        """Set every component's s to ``s_init`` (the reference ``--reload`` behaviour)."""
        with torch.no_grad():
            for s in self.thresholds.values():
                s.fill_(float(s_init))

    def set_sparse(self, sparse: bool) -> None:
        self.sparse = sparse
        for s in self.thresholds.values():
            s.requires_grad_(sparse)

    @torch.no_grad()
    def bake_thresholds(self) -> None:
        """Write the effective (soft-thresholded) weights into the convs and switch the thresholds off.

        Afterwards the model is an ordinary dense-storage network whose zeros are the pruned weights: the form
        hard pruning, fine-tuning and export work on.  Survivors keep their shrunken value |W| - tau.
        """
        if self.sparse:
            taus = self.taus()
            for name, convs in self._component_convs.items():
                for conv in convs:
                    conv.weight.copy_(conv.effective_weight(taus[name]))
        self.set_sparse(False)

    def _assign_taus(self) -> None:
        taus = self.taus() if self.sparse else {}
        for name, convs in self._component_convs.items():
            tau = taus.get(name)
            # CPU training: the component's effective weights in one autograd node (main.sparse)
            grouped = tau is not None and self.threshold_kernel == "grouped"
            pending = grouped_soft_threshold(convs, tau) if grouped else None
            for i, conv in enumerate(convs):
                conv.tau = tau
                conv.pending_weight = pending[i] if pending is not None else None

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        self._assign_taus()
        try:
            features = self.backbone(x)
            return {task: head(features) for task, head in self.heads.items()}
        finally:  # a weight built for this forward never serves a later one (after an optimiser step)
            for convs in self._component_convs.values():
                for conv in convs:
                    conv.pending_weight = None
