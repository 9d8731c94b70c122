"""``python -m bench.compare --quick``: cells run, the report is built from their JSON, re-runs skip finished cells."""

from __future__ import annotations

import json

import pytest

from bench import compare
from main.errors import UserError


def run(tmp_path, *extra: str) -> None:
    assert compare.main(["--quick", "--out", str(tmp_path / "out"), "--logs", str(tmp_path / "logs"), *extra]) == 0


def test_quick_comparison_runs_tunes_reports_and_resumes(tmp_path, capsys):
    run(tmp_path, "--methods", "imp", "--sparsities", "90", "--seeds", "1", "--grid_lr", "1e-3", "5e-4")
    logs = tmp_path / "logs"
    runs = logs / "synthetic_comparison" / "runs"
    assert sorted(p.stem for p in runs.glob("*.json")) == ["dense_seed0", "imp_sp90_seed0"]
    # the grid: both learning rates tried on the validation split, per tunable method
    tuned = sorted(p.stem for p in (logs / "synthetic_comparison" / "tuning").glob("*_lr*.json"))
    assert tuned == ["imp_sp90_seed0_lr0.0005", "imp_sp90_seed0_lr0.001"]
    assert json.loads((logs / "synthetic_comparison" / "tuning" / "imp_sp90_seed0_lr0.001.json").read_text())[
        "split"] == "val"
    book = json.loads((logs / "synthetic_comparison" / "cells.json").read_text())
    assert book["imp_sp90_seed0"]["commands"][0].startswith("python -m SOTA_methods.imp")
    assert book["imp_sp90_seed0"]["lr"] in (1e-3, 5e-4)
    imp = json.loads((runs / "imp_sp90_seed0.json").read_text())
    # the tuning run with the chosen lr is the seed-0 cell itself: evaluated on test, not trained twice
    assert "tuning" in imp["checkpoint"] and f"lr{book['imp_sp90_seed0']['lr']:g}" in imp["checkpoint"]
    assert imp["sparsity"]["overall"] == pytest.approx(0.9, abs=0.005)  # pruned to the target
    md = (logs / "synthetic_comparison.md").read_text()
    for needle in ("## Target overall sparsity 90%", "| Dense (baseline) |", "| IMP |", "Sp. backbone",
                   "python -m SOTA_methods.imp", "chosen: imp"):
        assert needle in md, needle
    assert "| LTH |" not in md  # only what ran is in the table
    capsys.readouterr()

    # re-running skips every finished cell (and the tuning runs): nothing is trained again
    before = {p: p.stat().st_mtime_ns for p in runs.glob("*.json")}
    run(tmp_path, "--methods", "imp", "--sparsities", "90", "--seeds", "1", "--grid_lr", "1e-3", "5e-4")
    assert "done in" not in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in runs.glob("*.json")} == before


def test_unknown_method_and_bad_target_are_user_errors():
    with pytest.raises(UserError, match="unknown method"):
        compare.parse(["--methods", "magic"])
    with pytest.raises(UserError, match="percentages"):
        compare.parse(["--sparsities", "100"])


def test_equal_budget_bookkeeping(tmp_path):
    """Every method trains --iters iterations in total: pre-training + its own stages."""
    plan = compare.Plan(compare.parse(["--iters", "1000", "--out", str(tmp_path)]))

    def iters(cmd: list[str]) -> int:
        total = int(cmd[cmd.index("--iters") + 1])
        if "--finetune_iters" in cmd:  # IMP: rounds - 1 fine-tunes between rounds, then the final one
            import math

            target = float(cmd[cmd.index("--target") + 1])
            rounds = math.ceil(math.log(1 - target) / math.log(0.5) - 1e-9)
            total += (rounds - 1) * int(cmd[cmd.index("--finetune_iters") + 1])
        return total

    for method in ("adapmtl", "snip", "disparse_dynamic", "imp", "lth", "taylor"):
        for target in (50, 70, 90, 95):
            cmds = plan.commands(method, target, 0, tmp_path / "x", None)
            pre = plan.P if plan.needs_pretrain(method) else 0
            trained = sum(iters(c) for c in cmds if "--iters" in c)
            assert pre + trained == 1000, (method, target)


def test_tuning_reuses_identical_runs_and_reruns_cells_of_another_lr(tmp_path, monkeypatch, capsys):
    """A cell run before the grid is the grid's run at its lr; a cell of a learning rate the grid did not
    choose is stale and replaced by the chosen tuning run, never kept as if it were tuned."""
    import bench.compare_report

    trained: list[str] = []
    lr_of: dict[str, str] = {}

    def fake_run(commands, log, threads=None):
        for cmd in commands:
            save = cmd[cmd.index("--save_dir") + 1]
            trained.append(save)
            lr_of[save] = cmd[cmd.index("--lr") + 1] if "--lr" in cmd else "dense"
            (compare.Path(save)).mkdir(parents=True, exist_ok=True)
            (compare.Path(save) / compare.CKPT).write_text("x")
        return 1.0

    scores = {"0.0005": 2.0, "0.001": 1.0, "dense": 0.0}

    def fake_evaluate(checkpoint, out_json, reference, split, log, label, extra, threads=None):
        score = scores[lr_of[str(checkpoint.parent)]]
        out_json.parent.mkdir(parents=True, exist_ok=True)
        out_json.write_text(json.dumps({"delta_t": {"overall": score}, "losses": {}, "split": split,
                                        "sparsity": {"overall": 0.9}}))

    monkeypatch.setattr(compare, "run_commands", fake_run)
    monkeypatch.setattr(compare, "evaluate", fake_evaluate)
    monkeypatch.setattr(bench.compare_report, "write_report", lambda plan, lrs, wall: tmp_path / "report.md")
    args = ["--methods", "snip", "--sparsities", "90", "--seeds", "1", "--out", str(tmp_path / "out"),
            "--logs", str(tmp_path / "logs")]
    assert compare.main([*args, "--grid_lr", "1e-3"]) == 0
    assert len(trained) == 2  # dense, snip at 1e-3
    book_path = tmp_path / "logs" / "synthetic_comparison" / "cells.json"
    assert json.loads(book_path.read_text())["snip_sp90_seed0"]["lr"] == 1e-3

    trained.clear()
    assert compare.main([*args, "--grid_lr", "1e-3", "5e-4"]) == 0
    # only the grid's new learning rate trained: 1e-3 is the finished cell, the chosen 5e-4 run becomes the cell
    assert [lr_of[s] for s in trained] == ["0.0005"]
    book = json.loads(book_path.read_text())
    assert book["snip_sp90_seed0_lr0.001"]["reused"] == "snip_sp90_seed0"
    assert book["snip_sp90_seed0"]["lr"] == 5e-4
    assert book["snip_sp90_seed0"]["reused"] == "snip_sp90_seed0_lr0.0005"
    assert "--lr 0.0005" in book["snip_sp90_seed0"]["commands"][0]
    assert "recorded with other commands" in capsys.readouterr().out

    trained.clear()
    assert compare.main([*args, "--grid_lr", "1e-3", "5e-4"]) == 0
    assert trained == []  # everything is done and consistent

    # the grid's choice flips back (as after a change of the tuning rule; here the validation scores change): the
    # lr-1e-3 training still exists (its tuning entry points at it) and is evaluated again, not retrained
    for tuned in (tmp_path / "logs" / "synthetic_comparison" / "tuning").glob("*_lr*.json"):
        res = json.loads(tuned.read_text())
        res["delta_t"]["overall"] = 2.0 if "lr0.001" in tuned.name else 1.0
        tuned.write_text(json.dumps(res))
    trained.clear()
    assert compare.main([*args, "--grid_lr", "1e-3", "5e-4"]) == 0
    assert trained == []
    assert json.loads(book_path.read_text())["snip_sp90_seed0"]["lr"] == 1e-3

    # --report_only reads the grid's choice from the finished tuning runs (for the report), training nothing
    seen = {}
    monkeypatch.setattr(bench.compare_report, "write_report", lambda plan, lrs, wall: seen.update(lrs) or tmp_path)
    assert compare.main([*args, "--grid_lr", "1e-3", "5e-4", "--report_only"]) == 0
    assert trained == [] and seen["snip"] == 1e-3


def test_tuning_prefers_a_learning_rate_that_reaches_the_target(tmp_path, monkeypatch):
    """A run that stops short of the target sparsity does not win the grid on Δ_T (it is less sparse)."""
    import bench.compare_report

    lr_of: dict[str, str] = {}

    def fake_run(commands, log, threads=None):
        for cmd in commands:
            save = cmd[cmd.index("--save_dir") + 1]
            lr_of[save] = cmd[cmd.index("--lr") + 1] if "--lr" in cmd else "dense"
            compare.Path(save).mkdir(parents=True, exist_ok=True)
            (compare.Path(save) / compare.CKPT).write_text("x")
        return 1.0

    def fake_evaluate(checkpoint, out_json, reference, split, log, label, extra, threads=None):
        lr = lr_of[str(checkpoint.parent)]
        # the small lr scores better but ends at 85% (stopped short of 90%); the large one reaches 90.6%
        res = {"0.0005": (9.0, 0.85), "0.001": (1.0, 0.906), "dense": (0.0, 0.0)}[lr]
        out_json.parent.mkdir(parents=True, exist_ok=True)
        out_json.write_text(json.dumps({"delta_t": {"overall": res[0]}, "losses": {}, "split": split,
                                        "sparsity": {"overall": res[1]}}))

    monkeypatch.setattr(compare, "run_commands", fake_run)
    monkeypatch.setattr(compare, "evaluate", fake_evaluate)
    monkeypatch.setattr(bench.compare_report, "write_report", lambda plan, lrs, wall: tmp_path / "report.md")
    assert compare.main(["--methods", "adapmtl", "--sparsities", "90", "--seeds", "1", "--grid_lr", "1e-3", "5e-4",
                         "--out", str(tmp_path / "out"), "--logs", str(tmp_path / "logs")]) == 0
    book = json.loads((tmp_path / "logs" / "synthetic_comparison" / "cells.json").read_text())
    assert book["adapmtl_sp90_seed0"]["lr"] == 1e-3


def test_jobs_run_cells_side_by_side_with_their_share_of_the_cores(tmp_path, monkeypatch):
    """--jobs 2: two cells train at once, each told its thread count; the results are the same bookkeeping as
    one at a time, and a failing cell stops the comparison with its error."""
    import threading
    import time

    import bench.compare_report

    active, peak, threads_seen = [0], [0], set()
    lock = threading.Lock()

    def fake_run(commands, log, threads=None):
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
            threads_seen.add(threads)
        time.sleep(0.2)
        for cmd in commands:
            save = compare.Path(cmd[cmd.index("--save_dir") + 1])
            save.mkdir(parents=True, exist_ok=True)
            (save / compare.CKPT).write_text("x")
            if "--lr" in cmd and cmd[cmd.index("--lr") + 1] == "0.0005" and "imp" in str(save) and fail[0]:
                raise UserError("command failed (exit 1): a broken cell")
        with lock:
            active[0] -= 1
        return 1.0

    def fake_evaluate(checkpoint, out_json, reference, split, log, label, extra, threads=None):
        out_json.parent.mkdir(parents=True, exist_ok=True)
        out_json.write_text(json.dumps({"delta_t": {"overall": 0.0}, "losses": {}, "split": split,
                                        "sparsity": {"overall": 0.9}}))

    fail = [False]
    monkeypatch.setattr(compare, "run_commands", fake_run)
    monkeypatch.setattr(compare, "evaluate", fake_evaluate)
    monkeypatch.setattr(bench.compare_report, "write_report", lambda plan, lrs, wall: tmp_path / "report.md")
    monkeypatch.setattr(compare.os, "cpu_count", lambda: 4)
    args = ["--methods", "snip", "lth", "--sparsities", "90", "--seeds", "2", "--grid_lr", "1e-3", "--out",
            str(tmp_path / "out"), "--logs", str(tmp_path / "logs"), "--jobs", "2"]
    assert compare.main(args) == 0
    assert peak[0] == 2 and threads_seen == {2}  # 4 cores, 2 jobs: 2 threads each
    book = json.loads((tmp_path / "logs" / "synthetic_comparison" / "cells.json").read_text())
    assert {"dense_seed0", "dense_seed1", "pretrain_P500_seed0", "pretrain_P500_seed1", "snip_sp90_seed0",
            "snip_sp90_seed1", "lth_sp90_seed0", "lth_sp90_seed1"} <= set(book)
    assert all(e["jobs"] == 2 and e["threads"] == 2 for e in book.values())

    fail[0] = True
    with pytest.raises(UserError, match="a broken cell"):
        compare.main(["--methods", "imp", "--sparsities", "90", "--seeds", "1", "--grid_lr", "1e-3", "5e-4",
                      "--out", str(tmp_path / "out"), "--logs", str(tmp_path / "logs"), "--jobs", "2"])


def test_job_layout_defaults():
    assert compare.job_layout(compare.parse(["--jobs", "1"])) == (1, None)
    assert compare.job_layout(compare.parse(["--extra", "--device", "cuda"]))[0] == 1
    jobs, threads = compare.job_layout(compare.parse([]))
    assert jobs == min(compare.os.cpu_count() or 1, 8) and (threads is None) == (jobs == 1)
