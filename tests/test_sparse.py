"""Soft threshold: the reference formula, its gradients, and on-device sparsity counting."""

from __future__ import annotations

import pytest
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


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.detach().reshape(-1).view(torch.int32)


PATHS = ("general", "per_layer", "grouped")  # main.sparse.THRESHOLD_KERNELS


def _use_path(model, path: str) -> bool:
    """Put ``model`` on one CPU soft-threshold kernel; True if that kernel is a fused one."""
    model.set_threshold_kernel(path)
    return path != "general"


@pytest.mark.parametrize("path", PATHS)
def test_hand_written_backward_matches_autograd_on_a_whole_model(monkeypatch, path):
    """The custom soft-threshold backwards (speed fixes) against autograd's clamp.

    The general path (``_SoftThreshold``, used on GPUs) changes no gradient bit, tau's included.  The fused CPU
    path, one autograd node per layer (``_SoftShrink``) or per component (``_GroupSoftShrink``), gives
    bit-identical outputs and weight gradients; tau's gradient is summed in another order, so it agrees to float
    rounding.
    """
    import copy

    import main.sparse as sparse_mod
    from main.models import build_model

    torch.manual_seed(0)
    model = build_model("resnet34", {"segment_semantic": 5, "normal": 3}, 0.0625, -4.0).train()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():  # exact ties |W| == tau and zero weights take the edge of every mask
        for conv in model._component_convs["backbone"][:3]:
            conv.weight.view(-1)[:4] = model.taus()["backbone"]
            conv.weight.view(-1)[4:8] = 0.0

    fused = path != "general"
    outputs = {}

    def grads(reference: bool) -> dict[str, torch.Tensor]:
        m = copy.deepcopy(model)
        if reference:  # autograd's clamp, layer by layer (no grouped node)
            m.set_threshold_kernel("general")
            monkeypatch.setattr(sparse_mod, "soft_threshold",
                                lambda w, t, _=None, fused=True: w - torch.clamp(w, -t.to(w.dtype), t.to(w.dtype)))
        else:
            _use_path(m, path)
        torch.manual_seed(1)
        out = m(x)
        outputs[reference] = out
        sum(v.square().mean() for v in out.values()).backward()
        monkeypatch.setattr(sparse_mod, "soft_threshold", soft_threshold)
        return {n: p.grad for n, p in m.named_parameters() if p.grad is not None}

    ref, new = grads(True), grads(False)
    assert ref.keys() == new.keys() and any(n.startswith("thresholds.") for n in ref)
    for task in outputs[True]:
        assert torch.equal(_bits(outputs[True][task]), _bits(outputs[False][task])), task
    for name in ref:
        if fused and name.startswith("thresholds."):
            assert torch.allclose(ref[name], new[name], rtol=1e-5, atol=0), name
            continue
        assert torch.equal(_bits(ref[name]), _bits(new[name])), name


@pytest.mark.parametrize("path", PATHS)
def test_forward_counts_equal_the_tau_count_and_are_never_stale(monkeypatch, path):
    """Counted by the forward (general path) or by its backward (fused CPU paths): the same exact numbers."""
    from main.models import build_model

    torch.manual_seed(0)
    model = build_model("resnet34", {"segment_semantic": 5}, 0.0625, -4.0).train()
    fused = _use_path(model, path)
    counter = SparsityCounter(model.components())
    counter.record_forward_counts(True)
    out = model(torch.randn(2, 3, 32, 32))
    assert counter.counts_ready() is not fused
    out["segment_semantic"].square().mean().backward()
    assert counter.counts_ready()
    expected = counter.count(model.taus())
    assert 0 < int(expected.sum()) < sum(counter.totals)
    assert torch.equal(counter.forward_counts(), expected)
    with pytest.raises(RuntimeError, match="recorded no count"):
        counter.forward_counts()  # consumed: a second read without a forward is refused
    with torch.no_grad():  # evaluation never takes the fused path: counted in the forward
        model(torch.randn(2, 3, 32, 32))
    assert torch.equal(counter.forward_counts(), expected)


def test_grouped_effective_weights_serve_only_the_forward_that_built_them(monkeypatch):
    """The model builds each component's effective weights in one node before its forward; after that forward
    none is left behind, so a conv called on its own after an optimiser step thresholds its updated weight."""
    from main.models import build_model

    torch.manual_seed(0)
    model = build_model("resnet34", {"segment_semantic": 5}, 0.0625, -4.0).train()
    _use_path(model, "grouped")
    x = torch.randn(2, 3, 32, 32)
    model(x)["segment_semantic"].sum().backward()
    convs = [c for cs in model._component_convs.values() for c in cs]
    assert all(c.pending_weight is None for c in convs)

    def broken(_):
        raise ValueError("a head that fails before its convolutions run")

    monkeypatch.setattr(model.heads["segment_semantic"], "forward", broken)
    with pytest.raises(ValueError, match="fails before"):
        model(x)
    assert all(c.pending_weight is None for c in convs)  # the head's were built, never consumed
    monkeypatch.undo()
    conv = model._component_convs["backbone"][0]
    with torch.no_grad():
        conv.weight.mul_(3.0)
    conv.tau = model.taus()["backbone"]
    x1 = torch.randn(1, 3, 8, 8)
    expected = torch.nn.functional.conv2d(x1, soft_threshold(conv.weight, conv.tau), None, conv.stride,
                                          conv.padding)
    assert torch.equal(conv(x1), expected)


def test_conv_flops_count_dense_and_nonzero_macs():
    from main.evaluate import conv_flops
    from main.models import build_model

    torch.manual_seed(0)
    model = build_model("resnet34", {"normal": 3}, 0.0625, -30.0).eval()
    model.set_sparse(False)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    out_hw = {}
    handles = [c.register_forward_hook(lambda m, i, o: out_hw.__setitem__(m, o.shape[-2] * o.shape[-1]))
               for c in convs]
    with torch.no_grad():
        model(torch.zeros(1, 3, 32, 32))
    for h in handles:
        h.remove()
    expected = sum(2 * c.weight.numel() * out_hw[c] for c in convs)
    with torch.no_grad():
        convs[0].weight.zero_()  # dense storage with zeros: nonzero skips exactly that layer
    flops = conv_flops(model, (3, 32, 32), torch.device("cpu"))
    assert flops["dense"] == expected
    assert flops["nonzero"] == expected - 2 * convs[0].weight.numel() * out_hw[convs[0]]
    model.set_sparse(True)
    with torch.no_grad():
        model.thresholds["backbone"].fill_(0.0)  # tau = 0.5 removes every backbone weight
    sparse = conv_flops(model, (3, 32, 32), torch.device("cpu"))
    assert sparse["dense"] == expected and sparse["nonzero"] < flops["nonzero"]
