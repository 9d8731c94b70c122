"""Mixed precision (``--amp off|bf16|fp16``) and ``--channels_last``: the few helpers trainer and evaluation share.

What runs in low precision: only the network forward, under ``torch.autocast`` (convolutions and the other ops on
autocast's lower-precision list).  What stays fp32, and why:

* the parameters (autocast casts a copy for each conv; the optimiser updates fp32 master weights, so checkpoints
  are fp32 exactly as before);
* the soft threshold: ``tau = sigmoid(s)`` and ``W − clamp(W, −tau, tau)`` are computed on the fp32 weights
  (``main.sparse``); s starts near −30 in the reference, where sigmoid(s) ≈ 9e-14 underflows to 0 in fp16, and a
  threshold rounded to bf16 would keep or drop other weights than the fp32 one;
* the sparsity counts of the stop rule (taken from those fp32 effective weights, so they are exactly the fp32
  counts);
* the task losses and metrics: predictions are cast to fp32 before them, so the sums over every pixel are not
  accumulated in 8 (bf16) or 11 (fp16) mantissa bits.

fp16 needs loss scaling (its gradients underflow): ``grad_scaler`` returns a ``torch.amp.GradScaler`` for it, on
CUDA and on CPU alike.  bf16 has fp32's exponent range and needs none.  fp16 on CPU works (torch's CPU autocast
and GradScaler support it) but most CPUs have no fp16 convolution kernels: on the 2-core AVX512-BF16 machine of
docs/performance.md a 3×3 conv ran ~15× slower in fp16 than in fp32 and ~2× faster in bf16, so use bf16 on CPU.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping

import torch
from torch import Tensor

AMP_MODES = ("off", "bf16", "fp16")
AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(amp: str, device: torch.device | str) -> contextlib.AbstractContextManager:
    """``torch.autocast`` for ``amp`` on ``device``'s type, or a no-op context for ``"off"``.

    A separate helper so the trainer, validation and test.py enter exactly the same precision regime.
    """
    if amp == "off":
        return contextlib.nullcontext()
    if amp not in AMP_DTYPES:
        raise ValueError(f"unknown amp mode {amp!r}; choose one of {', '.join(AMP_MODES)}")
    return torch.autocast(device_type=torch.device(device).type, dtype=AMP_DTYPES[amp])


def grad_scaler(amp: str, device: torch.device | str) -> torch.amp.GradScaler | None:
    """A loss scaler for fp16 (gradients below 6e-8 flush to zero without it), ``None`` otherwise."""
    if amp != "fp16":
        return None
    return torch.amp.GradScaler(torch.device(device).type)


def predictions_fp32(preds: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Predictions as fp32 tensors in the standard (NCHW-contiguous) layout, for losses and metrics.

    fp32 so per-pixel sums are accurate under autocast; contiguous so loss and metric code written for NCHW
    (``view`` included) behaves as without ``--channels_last``.  A no-op for contiguous fp32 predictions.
    """
    return {t: p.float().contiguous() for t, p in preds.items()}


def to_channels_last(x: Tensor, enabled: bool) -> Tensor:
    """NHWC memory layout for 4-D ``x`` when ``enabled`` (same values and shape, different strides)."""
    return x.contiguous(memory_format=torch.channels_last) if enabled and x.dim() == 4 else x


def amp_warning(amp: str, device: torch.device | str) -> str | None:
    """A one-line advice for a precision choice that works but is slow, else ``None``."""
    if amp == "fp16" and torch.device(device).type == "cpu":
        return ("--amp fp16 on CPU runs (with loss scaling) but most CPUs have no fp16 convolution kernels, so it is "
                "much slower than fp32 (measured ~15x on a 3x3 conv); use --amp bf16 on CPU")
    return None
