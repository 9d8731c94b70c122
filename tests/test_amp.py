"""Mixed precision (``--amp``) and ``--channels_last``: thresholds and sparsity counts stay fp32, runs work end to end.

Tolerances, and why.  The threshold math itself (tau = sigmoid(s), W − clamp(W, −tau, tau), its backward, the
sparsity counts) runs in fp32 under autocast, so in isolation it is bit-identical to fp32 and the counts of a whole
network are exactly equal (they only read the fp32 weights and tau).  The gradient of a component's s through the
whole network, however, is σ'(s)·Σ_kept −sign(W)·∂L/∂W_eff, and ∂L/∂W_eff comes out of bf16 convolutions: a signed
sum over every kept weight with strong cancellation (a freshly initialised backbone's can be 10× smaller than its
terms), so its error relative to its own value is unbounded (we saw 10×).  The meaningful scale is the size of its
terms, m_c = σ'(s)·Σ_kept |∂L/∂W_eff| (fp32): over 16 cases (s ∈ {−4.5, −5, −6, −8} × 4 seeds) |Δ| / m_c was at
most 1.7e-2 for the backbone (30+ layers of bf16 activations) and 2.7e-3 for the heads; the test allows 5e-2.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch

import main.cli.test as test_script
import main.cli.train as baseline
from main.checkpoint import load_checkpoint
from main.config import Config
from main.data import build_dataset, dataset_info
from main.errors import cli_main
from main.models import build_model
from main.precision import autocast, predictions_fp32
from main.sparse import SoftThresholdConv2d, SparsityCounter, threshold_value
from main.tasks import task_loss

CKPT = "segment_semantic_normal_depth_zbuffer.model"
GRAD_TOL = 5e-2  # |Δ grad of s| / (σ'(s)·Σ_kept |∂L/∂W|); observed at most 1.7e-2, see the module docstring


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_threshold_math_is_fp32_and_bit_identical_under_autocast(amp):
    torch.manual_seed(0)
    conv = SoftThresholdConv2d(6, 5, 3)
    s = torch.nn.Parameter(torch.tensor(-3.0))
    upstream = torch.randn_like(conv.weight)
    results = []
    for mode in ("off", amp):
        conv.zero_grad(set_to_none=True)
        s.grad = None
        with autocast(mode, "cpu"):
            tau = threshold_value(s)
            weight = conv.effective_weight(tau)
            assert tau.dtype == weight.dtype == torch.float32
            (weight * upstream).sum().backward()
        count = SparsityCounter([("c", conv)]).count({"c": tau.detach()})
        results.append((weight.detach(), s.grad.clone(), conv.weight.grad.clone(), count))
    for a, b in zip(*results):
        assert torch.equal(a, b)
    assert 0 < int(results[0][3]) < conv.weight.numel()


def _tiny_batch():
    cfg = Config(width_mult=0.0625, crop_size=32, train_size=8, val_size=4, test_size=4)
    info = dataset_info(cfg)
    data = build_dataset(cfg, "train")
    return info, torch.utils.data.default_collate([data[i] for i in range(4)])


@pytest.mark.parametrize("seed", [0, 1])
def test_bf16_threshold_gradients_and_sparsity_counts_match_fp32(seed):
    info, batch = _tiny_batch()
    torch.manual_seed(seed)
    base = build_model("resnet34", info.task_channels, 0.0625, -4.5, sparse=True, head_dropout=0.0).train()
    runs = {}
    for amp in ("off", "bf16"):
        model = copy.deepcopy(base)
        counter = SparsityCounter(model.components())
        counter.record_forward_counts(True)
        with autocast(amp, "cpu"):
            raw = model(batch["input"])
        assert {p.dtype for p in raw.values()} == {torch.float32 if amp == "off" else torch.bfloat16}
        preds = predictions_fp32(raw)
        loss = sum(task_loss(t, preds[t], batch, info.class_weights) for t in info.tasks)
        loss.backward()
        taus = {c: t.detach() for c, t in model.taus().items()}
        forward_counts = counter.forward_counts()
        assert torch.equal(forward_counts, counter.count(taus))
        mass = {}  # σ'(s)·Σ_kept |∂L/∂W|: the scale of the threshold gradient's terms
        for c, convs in model._component_convs.items():
            kept = sum(float((conv.weight.grad.abs() * (conv.weight.abs() > taus[c])).sum()) for conv in convs)
            mass[c] = kept * float(taus[c] * (1 - taus[c]))
        grads = {c: float(s.grad) for c, s in model.thresholds.items()}
        runs[amp] = (forward_counts, counter.report(forward_counts).components, grads, mass, float(loss.detach()))
    counts32, comps32, grads32, mass32, loss32 = runs["off"]
    counts16, comps16, grads16, _, loss16 = runs["bf16"]
    assert torch.equal(counts32, counts16)  # exactly: both count fp32 effective weights
    assert comps32 == comps16
    assert 0 < sum(n for n, _ in comps32.values()) < sum(t for _, t in comps32.values())
    assert abs(loss16 - loss32) <= 1e-2 * abs(loss32)
    for c in grads32:
        assert mass32[c] > 0 and grads32[c] != 0, c
        assert abs(grads16[c] - grads32[c]) <= GRAD_TOL * mass32[c], (c, grads32[c], grads16[c], mass32[c])


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_threshold_at_minus_30_is_positive_fp32_under_autocast(amp):
    s = torch.nn.Parameter(torch.tensor(-30.0))
    with autocast(amp, "cpu"):
        tau = threshold_value(s)
    value = float(tau.detach())
    assert tau.dtype == torch.float32 and torch.isfinite(tau) and value > 0
    assert value == pytest.approx(9.357623e-14, rel=1e-6)
    # what fp16 would do: sigmoid(-30) ~ 9.4e-14 is below fp16's smallest subnormal (6e-8) and flushes to 0
    assert float(torch.sigmoid(torch.tensor(-30.0, dtype=torch.float16))) == 0.0
    # and its gradient σ'(−30) ≈ 9.4e-14 is representable too, so s still learns
    tau.backward()
    assert torch.isfinite(s.grad) and float(s.grad) > 0


def test_bf16_channels_last_run_checkpoint_is_fp32_and_evaluates(tmp_path, tiny_flags, capsys):
    run = tmp_path / "run"
    assert baseline.main(tiny_flags + ["--iters", "3", "--amp", "bf16", "--channels_last", "--no-tensorboard",
                                       "--save_dir", str(run)]) == 0
    state = load_checkpoint(run / CKPT)
    assert state["config"]["amp"] == "bf16" and state["config"]["channels_last"] is True
    assert state["scaler"] is None  # bf16 needs no loss scaling
    for name, value in state["state_dict"].items():
        assert value.is_contiguous(), name  # stored in the usual NCHW layout
        assert not value.is_floating_point() or value.dtype == torch.float32, name
    out = tmp_path / "eval.json"
    assert test_script.main(["--path", str(run / CKPT), "--json", str(out), "--progress", "off"]) == 0
    result = json.loads(out.read_text())
    assert result["amp"] == "bf16" and result["channels_last"] is True
    assert 0.0 < result["sparsity"]["overall"] < 1.0
    values = [v for ms in result["metrics"].values() for v in ms.values()] + list(result["losses"].values())
    assert all(isinstance(v, float) and v == v for v in values)


def test_fp16_with_grad_scaler_resumes_exactly(tmp_path, tiny_flags):
    """fp16 on CPU with loss scaling: the tiny model's weight gradients (~50) overflow fp16 at the initial scale
    2**16, so the scaler skips the first ~6 steps while lowering the scale; the scale is checkpointed, so a resume
    skips the same steps and ends bit-identical."""
    full, half = tmp_path / "full", tmp_path / "half"
    flags = tiny_flags + ["--amp", "fp16", "--no-tensorboard"]
    assert baseline.main(flags + ["--iters", "10", "--save_dir", str(full)]) == 0
    assert baseline.main(flags + ["--iters", "5", "--save_dir", str(half)]) == 0
    mid = load_checkpoint(half / CKPT)["scaler"]
    assert baseline.main(["--save_dir", str(half), "--resume", "--iters", "10"]) == 0
    a, b = load_checkpoint(full / CKPT), load_checkpoint(half / CKPT)
    assert mid["scale"] < 2.0**16  # overflow steps were skipped by the scaler, not counted as bad steps
    assert a["scaler"] == b["scaler"] and a["scaler"]["scale"] <= mid["scale"]
    assert a["optimizer"]["state"], "no optimiser step was taken after the scaler settled"
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]), key


def test_invalid_amp_is_one_line_exit_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        cli_main(lambda _: baseline.main(["--amp", "x", "--save_dir", str(tmp_path / "r"), "--progress", "off"]))
    out, err = capsys.readouterr()
    assert exc.value.code == 2 and out == ""
    assert err.splitlines() == ["error: --amp 'x' is not known; choose one of: off, bf16, fp16"]
    assert not (tmp_path / "r").exists()
