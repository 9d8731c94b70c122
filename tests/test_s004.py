"""bench/s004.py: the re-training experiment's schedule, commands and report (no training here: the commands run
in ``python -m bench.s004 --quick``)."""

from __future__ import annotations

import json

from bench import s004


def _result(pixel_acc: float, best_score: float | None) -> dict:
    metrics = {"segment_semantic": {"mIoU": 0.2, "Pixel Acc": pixel_acc},
               "normal": {"Angle Mean": 30.0, "Angle Median": 20.0, "Angle 11.25": 20.0, "Angle 22.5": 50.0,
                          "Angle 30": 60.0},
               "depth_zbuffer": {"abs_err": 0.5, "rel_err": 0.2, "sigma_1.25": 60.0, "sigma_1.25^2": 80.0,
                                 "sigma_1.25^3": 90.0}}
    return {"metrics_by_definition": {"standard": metrics, "parity": metrics},
            "params": {"nonzero": 1000, "total": 2000}, "flops": {"nonzero": 50, "dense": 100},
            "best": None if best_score is None else {"score": best_score}}


def test_schedule_prunes_the_ratio_in_steps_by_half_of_the_fine_tuning(tmp_path):
    ns = s004.parse(["--quick", "--out", str(tmp_path), "--ratios", "50"])
    exp = s004.S004(ns)
    window, per_step, best_after = exp.schedule(50)
    fine_tuning = exp.plan.T - exp.plan.P
    assert window * s004.PRUNING_STEPS <= fine_tuning and best_after == window * s004.PRUNING_STEPS - 1
    key, cmds, _ = exp.iterative("cosprune", 50)
    assert key == "cosprune_r50_iterative" and "--select_by" in cmds[0] and "--best_after" in cmds[0]
    key, cmds, _ = exp.retrained("cosprune", 50, 5e-4)
    assert "--reinit" in cmds[0] and cmds[0][cmds[0].index("--lr") + 1] == "0.0005"


def test_report_takes_the_learning_rate_with_the_best_validation_score(tmp_path):
    ns = s004.parse(["--quick", "--out", str(tmp_path), "--ratios", "50", "--methods", "taylor"])
    root = tmp_path / "s004"
    runs = root / "runs"
    runs.mkdir(parents=True)
    (runs / "taylor_r50_iterative.json").write_text(json.dumps(_result(0.40, 0.41)))
    for lr, test_acc, val_score in ((0.001, 0.30, 0.35), (0.0005, 0.50, 0.45), (0.0001, 0.90, None)):
        (runs / f"taylor_r50_retrained_lr{lr:g}.json").write_text(json.dumps(_result(test_acc, val_score)))
    text = s004.write_report(ns, root).read_text()
    assert "taylor 50% iterative" in text
    retrained = next(line for line in text.splitlines() if "re-trained" in line)
    assert "lr 0.0005 of 2" in retrained and "| 50.00 |" in retrained  # chosen on validation, never on test
    assert "| 1k | 50.0 | 0.500 |" in retrained  # non-zero params, S004's %_R (parameters removed), FLOPs ratio
    search = text.split("## The learning-rate search")[1].splitlines()
    assert [line.split(" | ")[1] for line in search if line.startswith("| taylor 50%")] == ["0.001", "0.0005"]
    assert any("| 0.4500 |" in line for line in search)


def _mark_done(exp: s004.S004, key: str, commands: list[list[str]]) -> None:
    path = exp.root / "runs" / f"{key}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("{}")
    exp.book[key] = {"commands": [s004.shlex.join(["python", *c]) for c in commands]}


def test_a_missing_iterative_checkpoint_is_trained_again_before_its_re_trainings(tmp_path, monkeypatch):
    ns = s004.parse(["--quick", "--out", str(tmp_path), "--logs", str(tmp_path), "--ratios", "50",
                     "--methods", "taylor"])
    exp = s004.S004(ns)
    calls = []
    monkeypatch.setattr(exp, "run", lambda key, cmds, save, force=False, pretrained=False:
                        calls.append((key, force, pretrained)))
    key, cmds, save = exp.iterative("taylor", 50)
    _mark_done(exp, key, cmds)
    for lr in ns.lrs:
        _mark_done(exp, *exp.retrained("taylor", 50, lr)[:2])
    exp.run_all()  # everything done: nothing is forced (run returns the kept JSON)
    assert calls[0] == (key, False, True) and len(calls) == 1 + len(ns.lrs)
    (exp.root / "runs" / "taylor_r50_retrained_lr0.0001.json").unlink()  # one re-training left, folder gone
    calls.clear()
    exp.run_all()
    assert calls[0] == (key, True, True)
    save.mkdir(parents=True)
    (save / s004.CKPT).write_bytes(b"")  # the iterative checkpoint is here: it is not trained again
    calls.clear()
    exp.run_all()
    assert calls[0] == (key, False, True)
