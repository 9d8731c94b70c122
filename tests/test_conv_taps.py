"""Kernel taps that only read zero padding are skipped: same outputs and gradients, less work."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from main.conv_taps import conv2d, live_taps, trim
from main.models.heads import ASPPHead


def brute_live(size, k, s, p, d):
    out = (size + 2 * p - d * (k - 1) - 1) // s + 1
    live = [t for t in range(k) if any(0 <= o * s - p + t * d <= size - 1 for o in range(out))]
    return (live[0], live[-1]) if live else (0, k - 1)


def test_live_taps_matches_brute_force():
    for size, k, s, p, d in itertools.product(range(1, 14), (1, 2, 3, 5), (1, 2, 3), range(8), (1, 2, 3, 6, 12)):
        if size + 2 * p - d * (k - 1) - 1 >= 0:
            assert live_taps(size, k, s, p, d) == brute_live(size, k, s, p, d), (size, k, s, p, d)


@pytest.mark.parametrize("size", [5, 8, 12, 13])
@pytest.mark.parametrize("k,s,p,d", [(3, 1, 6, 6), (3, 1, 12, 12), (3, 1, 24, 24), (3, 2, 9, 9), (7, 2, 3, 1)])
def test_trimmed_conv_equals_full_conv_with_gradients(size, k, s, p, d):
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 5, k, stride=s, padding=p, dilation=d)
    x = torch.randn(2, 4, size, size, requires_grad=True)
    full = conv(x)
    g_full = torch.autograd.grad(full.square().sum(), (x, conv.weight, conv.bias))
    trimmed = conv2d(conv, x, conv.weight)
    g_trim = torch.autograd.grad(trimmed.square().sum(), (x, conv.weight, conv.bias))
    assert trimmed.shape == full.shape and torch.allclose(trimmed, full, atol=1e-5)
    assert all(torch.allclose(a, b, atol=1e-4) for a, b in zip(g_trim, g_full))


def test_aspp_rates_beyond_the_feature_map_run_as_one_by_one():
    head = ASPPHead(16, 3, width_mult=1 / 64)
    rates = {name: getattr(head, name).conv1 for name in head.branch_names}
    windows = {name: trim(conv, 8, 8) for name, conv in rates.items()}
    assert windows["fc1"] is None  # rate 6 on 8x8: every tap reads the input somewhere
    assert all(windows[n] == (slice(1, 2), slice(1, 2), (0, 0)) for n in ("fc2", "fc3", "fc4"))
    assert all(trim(conv, 41, 41) is None for conv in rates.values())  # NYUv2 321 crops: nothing to skip
    x = torch.randn(2, 16, 8, 8)
    with torch.no_grad():
        expected = sum(nn.functional.conv2d(x, b.conv1.weight, b.conv1.bias, 1, b.conv1.padding, b.conv1.dilation)
                       for b in (getattr(head, n) for n in head.branch_names))
        got = sum(getattr(head, n).conv1(x) for n in head.branch_names)
    assert torch.allclose(got, expected, atol=1e-5)
