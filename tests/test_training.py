"""End to end on a tiny synthetic run: train, evaluate, resume exactly, reload, TensorBoard tags, errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import main.cli.test as test_script
import main.cli.train as baseline
from main.checkpoint import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
CKPT = "segment_semantic_normal_depth_zbuffer.model"


def train(flags: list[str]) -> None:
    assert baseline.main(flags) == 0


def test_train_then_test_json_and_delta(tmp_path, tiny_flags, capsys):
    dense = tmp_path / "dense"
    sparse = tmp_path / "sparse"
    train(tiny_flags + ["--iters", "4", "--dense", "--save_dir", str(dense)])
    train(tiny_flags + ["--iters", "4", "--save_dir", str(sparse)])
    assert (sparse / "config.yaml").is_file() and (sparse / CKPT).is_file()

    assert test_script.main(["--path", str(dense / CKPT), "--json", str(tmp_path / "d.json"),
                             "--progress", "off"]) == 0
    # A 4-iteration dense model can score exactly 0 on a metric, where a relative change is undefined.
    d = json.loads((tmp_path / "d.json").read_text())
    d["metrics"] = {t: {m: v or 1.0 for m, v in ms.items()} for t, ms in d["metrics"].items()}
    (tmp_path / "ref.json").write_text(json.dumps(d))
    assert test_script.main(["--path", str(sparse / CKPT), "--reference", str(tmp_path / "ref.json"),
                             "--json", str(tmp_path / "s.json"), "--progress", "off"]) == 0
    d = json.loads((tmp_path / "d.json").read_text())
    s = json.loads((tmp_path / "s.json").read_text())
    for key in ("checkpoint", "dataset", "architecture", "metrics", "sparsity", "delta_t", "params", "flops"):
        assert key in s
    assert d["delta_t"] is None and d["sparsity"]["overall"] == 0.0
    assert set(s["sparsity"]["components"]) == {"backbone", "segment_semantic", "normal", "depth_zbuffer"}
    assert 0.0 < s["sparsity"]["overall"] < 1.0
    assert set(s["delta_t"]["tasks"]) == {"segment_semantic", "normal", "depth_zbuffer"}
    assert s["params"]["nonzero"] < s["params"]["total"] == d["params"]["total"]
    assert s["flops"]["nonzero"] < s["flops"]["dense"] == d["flops"]["dense"] == d["flops"]["nonzero"]
    out = capsys.readouterr().out
    assert "Δ_T" in out and "mIoU" in out and "conv FLOPs per input" in out


def test_resume_is_exact(tmp_path, tiny_flags):
    full, half = tmp_path / "full", tmp_path / "half"
    train(tiny_flags + ["--iters", "8", "--save_dir", str(full)])
    train(tiny_flags + ["--iters", "4", "--save_dir", str(half)])
    train(["--save_dir", str(half), "--resume", "--iters", "8"])
    a = load_checkpoint(full / CKPT)
    b = load_checkpoint(half / CKPT)
    assert a["iter"] == b["iter"] == 8
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]), key
    assert torch.equal(a["weighting"]["weights"], b["weighting"]["weights"])
    assert a["optimizer"]["state"].keys() == b["optimizer"]["state"].keys()


def test_reload_resets_thresholds_and_starts_fresh(tmp_path, tiny_flags):
    src = tmp_path / "src"
    train(tiny_flags + ["--iters", "4", "--save_dir", str(src)])
    s_before = load_checkpoint(src / CKPT)["state_dict"]["thresholds.backbone"]
    assert float(s_before) != -4.5  # the threshold moved during training
    new = tmp_path / "new"
    train(tiny_flags + ["--iters", "1", "--save_dir", str(new), "--reload", str(src / CKPT),
                        "--sInit_value", "-9", "--lr", "1e-12"])
    state = load_checkpoint(new / CKPT)
    assert state["iter"] == 1
    assert abs(float(state["state_dict"]["thresholds.normal"]) + 9) < 1e-6


def test_tensorboard_reference_tags(tmp_path, tiny_flags):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "tb"
    train(tiny_flags + ["--iters", "3", "--save_dir", str(run)])
    acc = EventAccumulator(str(run), size_guidance={"scalars": 0})
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    for tag in ("sparsity/overall_sparsity", "sparsity/Backbone", "sparsity/Seg", "sparsity/Nor", "sparsity/Dep",
                "LR/segment_semantic/weights", "Loss/train/normal", "Loss/val/depth_zbuffer",
                "Metric/segment_semantic/mIoU", "Metric/normal/Angle Mean", "LR/sparseThreshold"):
        assert tag in tags, tag
    assert any(t.startswith("Layer_sparsity/Backbone_layer1.0.conv1") for t in tags)
    assert any(t.startswith("Layer_thresh/Seg_fc1.conv1") for t in tags)
    # per-layer scalars only every --log_every (2) steps and at the end
    assert [e.step for e in acc.Scalars("Layer_sparsity/Backbone_conv1")] == [2, 3]


def test_stop_rule_freezes_thresholds_once_target_reached(tmp_path, tiny_flags):
    run = tmp_path / "stop"
    # sInit 0: tau = 0.5 prunes every weight at once, so sparsity >= ratio from the first step
    train(tiny_flags + ["--iters", "3", "--save_dir", str(run), "--sInit_value", "0", "--ratio", "0.5"])
    state = load_checkpoint(run / CKPT)
    assert all(float(v) == 0.0 for k, v in state["state_dict"].items() if k.startswith("thresholds."))
    assert json.loads((run / "sparsity.json").read_text())["overall"] >= 0.5


def test_dense_run_never_touches_thresholds(tmp_path, tiny_flags):
    run = tmp_path / "dense"
    train(tiny_flags + ["--iters", "2", "--dense", "--save_dir", str(run)])
    state = load_checkpoint(run / CKPT)
    assert float(state["state_dict"]["thresholds.backbone"]) == -4.5
    assert json.loads((run / "sparsity.json").read_text())["overall"] == 0.0


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("args,needle", [
    (("baseline.py", "--ratio", "2"), "--ratio"),
    (("test.py", "--path", "no/such.model"), "checkpoint not found"),
])
def test_user_errors_exit_2_with_one_line(args, needle):
    proc = run_cli(*args)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and needle in lines[0]


def test_refuses_to_overwrite_another_run(tmp_path, tiny_flags):
    run = tmp_path / "r"
    train(tiny_flags + ["--iters", "1", "--save_dir", str(run)])
    before = (run / CKPT).read_bytes()
    proc = run_cli("baseline.py", *tiny_flags, "--iters", "1", "--save_dir", str(run))
    assert proc.returncode == 2 and "already holds a run" in proc.stderr
    assert (run / CKPT).read_bytes() == before


def test_five_task_variant_trains_and_evaluates(tmp_path, tiny_flags):
    run = tmp_path / "five"
    tasks = ["segment_semantic", "normal", "depth_zbuffer", "keypoints2d", "edge_texture"]
    train(tiny_flags + ["--iters", "2", "--save_dir", str(run), "--tasks", *tasks])
    assert test_script.main(["--path", str(run / ("_".join(tasks) + ".model")), "--json", str(tmp_path / "f.json"),
                             "--progress", "off"]) == 0
    res = json.loads((tmp_path / "f.json").read_text())
    assert set(res["sparsity"]["components"]) == {"backbone", *tasks}
    assert res["metrics"]["keypoints2d"].keys() == {"key_err"} and res["metrics"]["edge_texture"].keys() == {"edge_err"}


def test_sparse_export_is_compact_exact_and_evaluable(tmp_path, tiny_flags):
    from main.export import load_export
    from main.export import main as export_main

    run = tmp_path / "s"
    # sInit -2.2 -> tau 0.1: over 90% of the weights thresholded away
    train(tiny_flags + ["--iters", "2", "--save_dir", str(run), "--sInit_value", "-2.2", "--ratio", "0.95"])
    ckpt = run / CKPT
    out = tmp_path / "m.safetensors"
    assert export_main(["--path", str(ckpt), "--out", str(out)]) == 0
    state = load_checkpoint(ckpt)
    sparsity = json.loads((run / "sparsity.json").read_text())["overall"]
    assert sparsity > 0.9
    # effective weights come back bit-identical
    from main.checkpoint import model_from_checkpoint

    _, model = model_from_checkpoint(state, str(ckpt), torch.device("cpu"))
    torch.save(model.state_dict(), tmp_path / "dense_weights.pt")  # the dense fp32 weights alone
    assert out.stat().st_size <= 0.15 * (tmp_path / "dense_weights.pt").stat().st_size
    taus = model.taus()
    _, exported = load_export(out)
    for comp, module in model.components():
        for name, conv in module.named_modules():
            if hasattr(conv, "effective_weight"):
                prefix = "backbone" if comp == "backbone" else f"heads.{comp}"
                assert torch.equal(exported[f"{prefix}.{name}.weight"], conv.effective_weight(taus[comp]).detach())
    a = test_script.main(["--path", str(ckpt), "--json", str(tmp_path / "a.json"), "--progress", "off"])
    b = test_script.main(["--path", str(out), "--json", str(tmp_path / "b.json"), "--progress", "off"])
    assert a == b == 0
    ja, jb = (json.loads((tmp_path / f).read_text()) for f in ("a.json", "b.json"))
    assert ja["metrics"] == jb["metrics"] and ja["sparsity"]["overall"] == jb["sparsity"]["overall"]
