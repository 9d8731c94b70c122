"""Soft threshold: the reference formula, its gradients, and on-device sparsity counting."""

from __future__ import annotations

import torch

from main.sparse import SoftThresholdConv2d, SparsityCounter, soft_threshold


def reference_threshold(w, tau):
    return torch.sign(w) * torch.relu(w.abs() - tau)


def test_soft_threshold_equals_reference_formula_and_gradients():
    torch.manual_seed(0)
    w1 = torch.randn(1000, dtype=torch.float64, requires_grad=True)
    s1 = torch.tensor(-1.0, dtype=torch.float64, requires_grad=True)
    w2 = w1.detach().clone().requires_grad_(True)
    s2 = s1.detach().clone().requires_grad_(True)
    g = torch.randn(1000, dtype=torch.float64)
    a = soft_threshold(w1, torch.sigmoid(s1))
    b = reference_threshold(w2, torch.sigmoid(s2))
    assert torch.equal(a, b)
    (a * g).sum().backward()
    (b * g).sum().backward()
    assert torch.allclose(w1.grad, w2.grad) and torch.allclose(s1.grad, s2.grad)
    # pruned weights get no task gradient
    pruned = w1.detach().abs() <= torch.sigmoid(s1.detach())
    assert pruned.any() and torch.all(w1.grad[pruned] == 0)


def test_conv_uses_effective_weight_and_keeps_dense_storage():
    conv = SoftThresholdConv2d(2, 3, 3, padding=1)
    x = torch.randn(1, 2, 5, 5)
    dense = conv(x)
    conv.tau = torch.tensor(10.0)  # everything pruned -> output is the bias only
    out = conv(x)
    assert torch.allclose(out, conv.bias.view(1, -1, 1, 1).expand_as(out))
    assert not torch.allclose(out, dense)
    assert torch.count_nonzero(conv.weight) == conv.weight.numel()


def test_counter_counts_exactly_what_the_threshold_keeps():
    torch.manual_seed(1)
    a = SoftThresholdConv2d(4, 8, 3)
    b = SoftThresholdConv2d(8, 2, 1)
    counter = SparsityCounter(iter([("backbone", a), ("head", b)]))
    taus = {"backbone": torch.tensor(0.05), "head": torch.tensor(0.2)}
    counts = counter.count(taus)
    expected = [int(torch.count_nonzero(soft_threshold(m.weight, taus[c]))) for c, m in (("backbone", a),
                                                                                          ("head", b))]
    assert counts.tolist() == expected
    report = counter.report(counts)
    total = a.weight.numel() + b.weight.numel()
    assert abs(report.overall - (1 - sum(expected) / total)) < 1e-12
    assert report.components["head"] == (expected[1], b.weight.numel())
    assert set(report.layer_sparsity()) == {"backbone.", "head."}
