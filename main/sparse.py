"""Soft-threshold convolutions and sparsity accounting.

AdapMTL (after STR, Kusupati et al. 2020) keeps every convolution weight dense and applies the
soft-threshold operator in the forward pass::

    W_eff = sign(W) * relu(|W| - sigmoid(s_c))

with ONE learnable scalar ``s_c`` per component (the backbone and each task head).  The thresholds live
once in ``MultiTaskModel.thresholds`` (a ``ParameterDict``); each forward hands the component's
``tau = sigmoid(s_c)`` to its convolutions, so the state dict carries each threshold exactly once (the
original aliased one Parameter under every layer, which ``safetensors`` refuses to save).

Sparsity is counted on the weights' device: ``count_nonzero`` returns device tensors and never copies a
weight to the host, so the per-step stop rule costs one scalar transfer, not one per layer.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import conv_taps


class _SoftThreshold(torch.autograd.Function):
    """``W − clamp(W, −tau, tau)`` with a hand-written backward.

    Autograd's backward of a clamp with tensor bounds runs about a dozen full passes over the weight, three of
    them ``where`` (slow on CPU: about 5× a multiply) plus ``le``/``ge``/``logical_and``/``gt``/``lt``/
    ``logical_or``.  Here it is a handful of vectorised passes driven by s = sign(W_eff) ∈ {−1, 0, 1}: the
    kept set is read off the output, W_eff ≠ 0 ⇔ |W| > tau (a float difference is zero only for equal
    operands), so nothing but W_eff is saved.  For finite incoming gradients g the results are bit-identical
    to autograd's: W gets ``0 + g·|s|``, i.e. g where kept and +0 elsewhere (autograd's ``g + 0`` and
    ``g + (−g)``); the bounds −tau and tau (passed as two inputs, as to
    ``clamp``, so autograd accumulates tau's gradient over the layers in the same order as before) get
    ``Σ g·min(s,0)`` = Σ_{W<−tau} −g and ``−Σ g·max(s,0)`` = Σ_{W>tau} −g, the two full-shape sums autograd
    forms, over the same values (a product with 0 may be −0, which leaves a float sum unchanged).
    """

    @staticmethod
    def forward(ctx, weight: Tensor, lo: Tensor, hi: Tensor) -> Tensor:  # noqa: D102
        out = weight - torch.clamp(weight, lo, hi)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, Tensor | None, Tensor | None]:  # noqa: D102
        (out,) = ctx.saved_tensors
        sign = out.sign()
        grad_w = grad_lo = grad_hi = None
        if ctx.needs_input_grad[0]:
            grad_w = torch.addcmul(grad.new_zeros(()), grad, sign.abs())
        if ctx.needs_input_grad[1]:
            grad_lo = (grad * sign.clamp(max=0)).sum()  # Σ_{W<lo} −g
        if ctx.needs_input_grad[2]:
            grad_hi = -(grad * sign.clamp(min=0)).sum()  # Σ_{W>hi} −g (negation is exact)
        return grad_w, grad_lo, grad_hi


class _SoftShrink(torch.autograd.Function):
    """The same operator on CPU tensors as ONE fused ``softshrink`` pass forward and one fused mask pass back.

    ``softshrink(W, tau)`` is ``W − tau`` above tau, ``W + tau`` below −tau and 0 between: the same values as
    ``W − clamp(W, −tau, tau)`` (``x − (−tau)`` and ``x + tau`` are one IEEE operation; only the sign of a zero
    may differ: softshrink's scalar tail gives −0 for small negative weights, which every count here reads as
    zero).  ``softshrink_backward`` gives g where |W| > tau and zero elsewhere, bit for bit the weight gradient
    of the general path.  tau's gradient, −Σ_{|W|>tau} g·sign(W), is one BLAS dot product here instead of
    autograd's two sums: the value agrees to float rounding, not bit for bit (tested).  Against
    ``_SoftThreshold`` this cuts the elementwise passes over every weight by more than half, which was most of
    AdapMTL's training-step overhead on CPU (``bench/step_overhead.py``).

    The kernel takes tau as a number: ``tau.item()`` is a plain memory read for a CPU tensor, which is why this
    path is used on CPU only (on a GPU it would be a host sync per layer).  With a ``sink`` (the conv recording
    counts for the stop rule) the backward also stores the number of kept weights in ``sink.last_nnz``, from the
    sign vector it builds anyway, instead of a separate counting pass in the forward.
    """

    @staticmethod
    def forward(ctx, weight: Tensor, tau: Tensor, sink: SoftThresholdConv2d | None) -> Tensor:  # noqa: D102
        ctx.lambd = tau.item()
        ctx.sink = sink
        out = F.softshrink(weight, ctx.lambd)
        ctx.save_for_backward(weight, out)  # ``out`` is the tensor the conv keeps anyway: no extra memory
        return out

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, Tensor | None, None]:  # noqa: D102
        weight, out = ctx.saved_tensors
        grad_w, sign, dot = _shrink_backward(grad, weight, out, ctx.lambd, ctx.needs_input_grad[1])
        if ctx.sink is not None:
            ctx.sink.last_nnz = _count_signs(sign)
        return (grad_w if ctx.needs_input_grad[0] else None), (None if dot is None else -dot), None


def _shrink_backward(grad: Tensor, weight: Tensor, out: Tensor, lambd: float,
                     tau_grad: bool) -> tuple[Tensor, Tensor, Tensor | None]:
    """One thresholded weight's backward: (W's gradient, the flat sign vector of W_eff, Σ g_W·sign or None).

    The sign is ±1 where kept (the sign of W) and ±0 elsewhere, where W's gradient is 0 anyway, so tau's gradient
    is minus the dot product: a dot reads both once, ~5x faster than a product and a sum.
    """
    grad_w = torch.ops.aten.softshrink_backward(grad, weight, lambd)
    sign = out.sign().reshape(-1)
    return grad_w, sign, (torch.dot(grad_w.reshape(-1), sign) if tau_grad else None)


class _GroupSoftShrink(torch.autograd.Function):
    """``_SoftShrink`` for every convolution of one component in ONE autograd node.

    At the CPU preset the weights are small (a width-1/8 ResNet34 and its heads: about 3 ms of elementwise work
    per step in all), so what AdapMTL adds to a step is mostly fixed cost per layer: a Python autograd node, a
    ``tau.item()``, the accumulation of 72 scalar gradients into tau.  One node per component pays these once per
    component.  The values are ``_SoftShrink``'s, bit for bit, weights and their gradients alike; tau's gradient
    is the same per-layer dot products summed in one reduction (float rounding, as before).  Outputs that get no
    gradient (a layer off the loss's path) still have their kept weights counted, so the stop rule's counts are
    complete whenever ``backward()`` has run.
    """

    @staticmethod
    def forward(ctx, tau: Tensor, convs: tuple[SoftThresholdConv2d, ...], *weights: Tensor) -> tuple[Tensor, ...]:  # noqa: D102
        ctx.lambd = tau.item()
        ctx.convs = convs
        ctx.set_materialize_grads(False)
        outs = tuple(F.softshrink(w, ctx.lambd) for w in weights)
        ctx.save_for_backward(*weights, *outs)
        return outs

    @staticmethod
    def backward(ctx, *grads: Tensor | None) -> tuple[Tensor | None, ...]:  # noqa: D102
        n = len(grads)
        saved = ctx.saved_tensors
        grad_ws: list[Tensor | None] = [None] * n
        dots = []
        for i, grad in enumerate(grads):
            if grad is None:  # off the loss's path: nothing to propagate, but the count is still due
                sign = saved[n + i].sign().reshape(-1)
            else:
                grad_w, sign, dot = _shrink_backward(grad, saved[i], saved[n + i], ctx.lambd, ctx.needs_input_grad[0])
                if dot is not None:
                    dots.append(dot)
                if ctx.needs_input_grad[2 + i]:
                    grad_ws[i] = grad_w
            if ctx.convs[i].record_nnz:
                ctx.convs[i].last_nnz = _count_signs(sign)
        grad_tau = -torch.stack(dots).sum() if dots else None
        return (grad_tau, None, *grad_ws)


def grouped_soft_threshold(convs: list[SoftThresholdConv2d], tau: Tensor) -> tuple[Tensor, ...] | None:
    """The effective weights of ``convs`` (one component, one ``tau``) from one ``_GroupSoftShrink`` node, or None
    where that fused CPU training path does not apply (each conv then thresholds its own weight in its forward).

    It applies when training on CPU with fp32 weights and a scalar tau, outside autocast's reach (``--amp`` keeps
    the threshold in fp32: autocast is switched off around it, as in ``soft_threshold``).
    """
    if not (convs and torch.is_grad_enabled() and tau.device.type == "cpu" and tau.numel() == 1):
        return None
    weights = [conv.weight for conv in convs]
    if any(w.device.type != "cpu" or w.dtype != torch.float32 for w in weights):
        return None
    if not (tau.requires_grad or any(w.requires_grad for w in weights)):
        return None
    with torch.autocast("cpu", enabled=False):
        return _GroupSoftShrink.apply(tau.float(), tuple(convs), *weights)


def _count_signs(sign: Tensor) -> Tensor:
    """Non-zeros of a ±1/±0 vector as an int64 device scalar.

    ``sign·sign`` sums ones, exactly while every partial sum stays below 2**24 (fp32 integers); the dot reads the
    vector once and is ~9x faster than ``count_nonzero(sign != 0)``, which larger layers fall back to.
    """
    if sign.numel() < 2**24 or sign.dtype == torch.float64:
        return torch.dot(sign, sign).to(torch.int64)
    return torch.count_nonzero(sign != 0)


# How the soft threshold of CPU training is computed (``MultiTaskModel.set_threshold_kernel``): "grouped" (the
# default) one fused ``_GroupSoftShrink`` node per component, "per_layer" one fused ``_SoftShrink`` per conv,
# "general" the clamp form every device can run (what GPUs always take).  Evaluation is never fused.
THRESHOLD_KERNELS = ("grouped", "per_layer", "general")


def soft_threshold(weight: Tensor, tau: Tensor, count_into: SoftThresholdConv2d | None = None,
                   fused: bool = True) -> Tensor:
    """``sign(W)·relu(|W| − tau)``, computed as ``W − clamp(W, −tau, tau)``, in fp32 (fp64 stays fp64).

    Both forms give bit-identical values and the same gradients (1[|W| > tau] for W, −sign(W)·1[|W| > tau]
    for tau) but the clamp form needs two kernels instead of five, which matters because it runs on every
    thresholded weight in every forward pass; the backward is ``_SoftThreshold``'s.  On CPU, training uses the
    fused ``_SoftShrink`` instead (one kernel each way).

    fp32 on purpose, also under ``--amp``: which weights survive is decided by comparing |W| with a tau that is
    often ~1e-3..1e-13, and the effective weights feed the fp32 sparsity count of the stop rule.  Autocast is
    switched off here (none of these ops is on its cast lists today; this keeps it so) and only the conv that
    consumes the result runs in low precision.  For the fp32 master weights the casts below are no-ops; tau takes
    the weight's precision as before (fp32, or fp64 for fp64 weights), never less than fp32.

    ``count_into`` (a conv) receives the number of kept weights in its ``last_nnz``: counted here from the result,
    or, on the fused CPU training path, by the backward (so it is there once ``backward()`` has run).
    ``fused=False`` keeps CPU training on the general path (``THRESHOLD_KERNELS``).
    """
    if torch.is_autocast_enabled(weight.device.type):
        with torch.autocast(weight.device.type, enabled=False):
            return soft_threshold(weight, tau, count_into, fused)
    out_dtype = weight.dtype
    dtype = torch.promote_types(weight.dtype, torch.float32)
    weight, tau = weight.to(dtype), tau.to(dtype)
    if not (weight.requires_grad or tau.requires_grad) or not torch.is_grad_enabled():
        out = weight - torch.clamp(weight, -tau, tau)  # zeros are +0 here: exports and hashes see one bit pattern
    elif fused and weight.device.type == "cpu" and tau.numel() == 1:
        return _SoftShrink.apply(weight, tau, count_into).to(out_dtype)  # counted by the backward
    else:
        out = _SoftThreshold.apply(weight, -tau, tau)
    if count_into is not None:
        count_into.last_nnz = torch.count_nonzero(out.detach() != 0)  # ~5x faster than on floats
    return out if out.dtype == out_dtype else out.to(out_dtype)


class SoftThresholdConv2d(nn.Conv2d):
    """``nn.Conv2d`` whose weight is soft-thresholded by its component's current ``tau``.

    ``tau`` is a plain attribute set by the owning model before each forward (``None`` = dense).  It is not a
    registered buffer or parameter on purpose: the learnable threshold is registered once on the model.
    Bias is never thresholded.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.tau: Tensor | None = None
        # With ``record_nnz`` set (the trainer does, for the stop rule), each thresholded forward leaves the
        # number of non-zero effective weights in ``last_nnz`` as a device scalar: counting the weight the
        # forward built anyway costs one read pass instead of a second |W| > tau pass.  On the fused CPU
        # training path the backward fills it in instead (see ``soft_threshold``).
        self.record_nnz = False
        self.last_nnz: Tensor | None = None
        # The effective weight for the next forward, when the model built its component's in one node
        # (``grouped_soft_threshold``); consumed by that forward, so a later call thresholds afresh.
        self.pending_weight: Tensor | None = None
        self.fused_cpu = True  # False: the general soft-threshold path on CPU too (see THRESHOLD_KERNELS)

    def effective_weight(self, tau: Tensor | None = None) -> Tensor:
        tau = self.tau if tau is None else tau
        if tau is None:
            return self.weight
        return soft_threshold(self.weight, tau)

    def forward(self, x: Tensor) -> Tensor:
        weight, self.pending_weight = self.pending_weight, None
        if self.tau is None:
            weight = self.weight
        elif weight is not None:  # built by the model with its component's; counted by that node's backward
            self.last_nnz = None
        else:
            self.last_nnz = None  # never a count of an earlier forward
            weight = soft_threshold(self.weight, self.tau, self if self.record_nnz else None, self.fused_cpu)
        return conv_taps.conv2d(self, x, weight)  # kernel taps that only read zero padding are skipped


def sparse_convs(module: nn.Module) -> list[tuple[str, SoftThresholdConv2d]]:
    """All soft-threshold convolutions of ``module`` with their names relative to it, in module order."""
    return [(n, m) for n, m in module.named_modules() if isinstance(m, SoftThresholdConv2d)]


def threshold_value(s: Tensor) -> Tensor:
    """tau = sigmoid(s), always in fp32 (autocast off): sigmoid(-30) ~ 9e-14 underflows to 0 in fp16."""
    if torch.is_autocast_enabled(s.device.type):
        with torch.autocast(s.device.type, enabled=False):
            return torch.sigmoid(s.float())
    return torch.sigmoid(s.float())


@dataclass
class SparsityReport:
    """Host-side sparsity numbers, built once per log interval from device counts.

    ``layers`` maps ``"<component>.<layer name>"`` to (nonzero, total); components and overall are
    weight-count weighted, so a 1×1 classifier does not count as much as a 3×3 1024-channel conv.
    """

    layers: dict[str, tuple[int, int]]
    components: dict[str, tuple[int, int]]

    @staticmethod
    def _sparsity(nonzero: int, total: int) -> float:
        return 1.0 - nonzero / total if total else 0.0

    @property
    def overall(self) -> float:
        nz = sum(v[0] for v in self.components.values())
        tot = sum(v[1] for v in self.components.values())
        return self._sparsity(nz, tot)

    def component_sparsity(self) -> dict[str, float]:
        return {c: self._sparsity(*v) for c, v in self.components.items()}

    def layer_sparsity(self) -> dict[str, float]:
        return {n: self._sparsity(*v) for n, v in self.layers.items()}

    @property
    def nonzero(self) -> int:
        return sum(v[0] for v in self.components.values())

    @property
    def total(self) -> int:
        return sum(v[1] for v in self.components.values())

    def as_dict(self) -> dict:
        return {"overall": self.overall, "components": self.component_sparsity(),
                "layers": self.layer_sparsity(), "nonzero": self.nonzero, "total": self.total}


class SparsityCounter:
    """Counts non-zero effective weights per layer of named components, on the weights' device.

    ``components`` is an iterable of (name, module); every ``SoftThresholdConv2d`` inside counts.  With
    ``taus`` given (component -> tau tensor) a weight is non-zero iff |W| > tau, i.e. exactly the weights the
    soft threshold keeps; without, the stored weight itself is counted (hard-masked or dense models).
    """

    def __init__(self, components: Iterator[tuple[str, nn.Module]]) -> None:
        self.layers: list[tuple[str, str, SoftThresholdConv2d]] = []
        for cname, module in components:
            for lname, conv in sparse_convs(module):
                self.layers.append((cname, lname, conv))
        self.component_names: list[str] = list(dict.fromkeys(c for c, _, _ in self.layers))
        self.totals = [conv.weight.numel() for _, _, conv in self.layers]

    @torch.no_grad()
    def count(self, taus: dict[str, Tensor] | None = None) -> Tensor:
        """Per-layer non-zero counts as one int64 device tensor (no host sync)."""
        counts = []
        for cname, _, conv in self.layers:
            w = conv.weight
            if taus is not None and cname in taus:
                dtype = torch.promote_types(w.dtype, torch.float32)  # >= fp32, like soft_threshold
                counts.append((w.to(dtype).abs() > taus[cname].to(dtype)).sum())
            else:
                counts.append(torch.count_nonzero(w))
        return torch.stack(counts)

    def record_forward_counts(self, enabled: bool) -> None:
        """Have every counted conv record its non-zero count in each thresholded forward (see ``forward_counts``)."""
        for _, _, conv in self.layers:
            conv.record_nnz = enabled
            conv.last_nnz = None

    def counts_ready(self) -> bool:
        """True when every layer holds its count of the last forward (on the fused CPU training path they arrive
        with the backward, so a trainer reads them after ``backward()``)."""
        return all(conv.last_nnz is not None for _, _, conv in self.layers)

    def step_counts(self, taus: dict[str, Tensor] | None) -> Tensor | None:
        """A training step's counts right after its forward: counted with ``taus`` when the forward thresholded
        nothing (``taus`` given), read off the forward's records when it did, or None when they only arrive with
        the backward (the fused CPU path; ``forward_counts`` reads them then)."""
        if taus is not None:
            return self.count(taus)
        return self.forward_counts() if self.counts_ready() else None

    def forward_counts(self) -> Tensor:
        """``count(taus)`` for the taus of the forward just run, read off the counts it (or its backward) recorded.

        Equal to ``count`` because W_eff ≠ 0 ⇔ |W| > tau.  Each recorded count is consumed, so a layer that did
        not run a thresholded forward (and, on the fused CPU path, its backward) since the last call raises
        instead of reporting a stale number.
        """
        counts = []
        for cname, lname, conv in self.layers:
            if conv.last_nnz is None:
                raise RuntimeError(f"{cname}.{lname} recorded no count: call record_forward_counts(True) and run a "
                                   "thresholded forward first (and its backward, when training on CPU)")
            counts.append(conv.last_nnz)
            conv.last_nnz = None
        return torch.stack(counts)

    def report(self, counts: Tensor) -> SparsityReport:
        """Build the host-side report from ``count()``'s tensor (one device-to-host copy)."""
        host = counts.tolist()
        layers: dict[str, tuple[int, int]] = {}
        comps: dict[str, list[int]] = {c: [0, 0] for c in self.component_names}
        for (cname, lname, _), nz, tot in zip(self.layers, host, self.totals):
            layers[f"{cname}.{lname}"] = (int(nz), tot)
            comps[cname][0] += int(nz)
            comps[cname][1] += tot
        return SparsityReport(layers, {c: (v[0], v[1]) for c, v in comps.items()})

    def overall_density(self, counts: Tensor) -> Tensor:
        """Fraction of non-zero weights over all counted layers, as a device scalar."""
        return counts.sum().to(torch.float64) / float(sum(self.totals))
