"""Convolution without the kernel taps that only ever read zero padding: the same outputs, less work.

A dilated 3x3 conv whose dilation reaches past the whole input reads real input only through its centre tap: at
the CPU benchmark's sizes the ASPP heads see 8x8 (64x64 crops) or 12x12 (96x96) feature maps, and their rates 12,
18 and 24 put every off-centre tap in the zero padding at every output position, yet the kernel still multiplies
a 3x3 window over an input padded by 24 on each side (at 64x64, 3 of 4 branches do 9x the work of a 1x1 conv, and
these convs are most of the step's FLOPs).  ``conv2d`` drops such taps: the conv runs on the kernel's live
window with the padding reduced by as much, so every output position sums the same products minus exact zeros.
Outputs are equal up to float summation order; the dropped taps get a zero gradient, as they do when they multiply
padding (the optimiser's weight decay still acts on them).  At NYUv2's 321x321 crops (41x41 maps) every tap is
live and nothing changes.  Trimming is applied when the dead taps are symmetric (the live window stays centred,
so one symmetric padding still describes it) and the padding is zeros; otherwise the conv runs as given.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


def live_taps(size: int, kernel: int, stride: int, padding: int, dilation: int) -> tuple[int, int]:
    """(first, last) kernel taps along one dimension that read an input element at some output position."""
    out = (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1
    live = []
    for k in range(kernel):
        offset = k * dilation - padding  # input index of output 0 through tap k
        o_min = -(offset // stride) if offset < 0 else 0  # first output whose index is >= 0 (ceil division)
        if o_min <= out - 1 and o_min * stride + offset <= size - 1:
            live.append(k)
    return (live[0], live[-1]) if live else (0, kernel - 1)


def trim(conv: nn.Conv2d, height: int, width: int) -> tuple[slice, slice, tuple[int, int]] | None:
    """The live window of ``conv``'s kernel for a ``height`` x ``width`` input and the padding it runs with, or
    None when every tap is live or the window cannot be trimmed symmetrically."""
    if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
        return None
    windows = []
    for size, k, s, p, d in zip((height, width), conv.kernel_size, conv.stride, conv.padding, conv.dilation):
        first, last = live_taps(size, k, s, p, d)
        if first != k - 1 - last:
            return None
        windows.append((first, last, p - first * d))
    if all(first == 0 for first, _, _ in windows):
        return None
    (h0, h1, ph), (w0, w1, pw) = windows
    return slice(h0, h1 + 1), slice(w0, w1 + 1), (ph, pw)


def conv2d(conv: nn.Conv2d, x: Tensor, weight: Tensor) -> Tensor:
    """``conv``'s convolution of ``x`` with ``weight`` (its own or an effective one), dead taps skipped."""
    key = tuple(x.shape[-2:])
    cache = conv.__dict__.setdefault("_trim_cache", {})
    if key not in cache:
        cache[key] = trim(conv, *key)
    window = cache[key]
    if window is None:
        return F.conv2d(x, weight, conv.bias, conv.stride, conv.padding, conv.dilation, conv.groups)
    rows, cols, padding = window
    return F.conv2d(x, weight[:, :, rows, cols], conv.bias, conv.stride, padding, conv.dilation, conv.groups)
