"""``python -m bench.compare``: cells run, the report is built from their JSON, re-runs skip finished cells."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import compare, compare_cost
from main.errors import UserError
from main.tasks import metric_directions

DIRS = metric_directions("nyuv2")
R34 = ["--architectures", "resnet34"]


def run(tmp_path, *extra: str) -> None:
    assert compare.main(["--quick", "--out", str(tmp_path / "out"), "--logs", str(tmp_path / "logs"), *extra]) == 0


def fake_metrics(score: float) -> dict:
    """A full NYUv2-style metric table whose every metric is better by ``score`` percent (relative) than 1."""
    return {task: {m: 50.0 * (1 + d * score / 100) for m, d in dirs.items()}
            for task, dirs in DIRS.items() if task in ("segment_semantic", "normal", "depth_zbuffer")}


def fake_result(score: float, split: str = "test", sparsity: float = 0.9) -> dict:
    table = fake_metrics(score)
    return {"metrics": table, "metrics_by_definition": {"standard": table, "parity": table}, "losses": {"a": 1.0},
            "split": split, "sparsity": {"overall": sparsity,
                                         "components": dict.fromkeys(("backbone", "segment_semantic", "normal",
                                                                      "depth_zbuffer"), sparsity)}}


def test_quick_comparison_runs_tunes_reports_and_resumes(tmp_path, capsys):
    run(tmp_path, *R34, "--methods", "imp", "--seeds", "1", "--grid_lr", "1e-3", "5e-4")
    root = tmp_path / "logs" / "comparison"
    runs = root / "runs" / "resnet34"
    assert sorted(p.stem for p in runs.glob("*.json")) == ["dense_seed0", "imp_sp90_seed0"]
    # the grid: both learning rates tried on the validation split, dense included
    tuned = sorted(p.stem for p in (root / "tuning" / "resnet34").glob("*_lr*.json") if not p.stem.endswith(".test"))
    assert tuned == ["dense_seed0_lr0.0005", "dense_seed0_lr0.001", "imp_sp90_seed0_lr0.0005",
                     "imp_sp90_seed0_lr0.001"]
    assert json.loads((root / "tuning" / "resnet34" / "imp_sp90_seed0_lr0.001.json").read_text())["split"] == "val"
    book = json.loads((root / "cells.json").read_text())
    assert book["resnet34/imp_sp90_seed0"]["commands"][0].startswith("python -m SOTA_methods.imp")
    assert book["resnet34/imp_sp90_seed0"]["lr"] in (1e-3, 5e-4)
    imp = json.loads((runs / "imp_sp90_seed0.json").read_text())
    # the tuning run with the chosen lr is the seed-0 cell itself: evaluated on test, not trained twice
    assert "tuning" in imp["checkpoint"] and f"lr{book['resnet34/imp_sp90_seed0']['lr']:g}" in imp["checkpoint"]
    assert imp["architecture"] == "resnet34" and set(imp["metrics_by_definition"]) == {"parity", "standard"}
    assert imp["sparsity"]["overall"] == pytest.approx(0.9, abs=0.005)  # pruned to the target
    md = (tmp_path / "logs" / "comparison.md").read_text()
    for needle in ("## Noise floor", "## resnet34, target overall sparsity 90%", "| Dense (baseline) |", "| IMP |",
                   "Sp. backbone", "python -m SOTA_methods.imp", "chosen: resnet34/dense",
                   "synthetic_compare.yaml"):
        assert needle in md, needle
    assert "| LTH |" not in md  # only what ran is in the table
    capsys.readouterr()

    # re-running skips every finished cell (and the tuning runs): nothing is trained again
    before = {p: p.stat().st_mtime_ns for p in runs.glob("*.json")}
    run(tmp_path, *R34, "--methods", "imp", "--seeds", "1", "--grid_lr", "1e-3", "5e-4")
    assert "done in" not in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in runs.glob("*.json")} == before

    # every finished cell's real cost: compacted, measured, and in the rebuilt report
    assert compare_cost.main(["--logs", str(root), "--repeats", "1"]) == 0
    cost = json.loads((root / "cost" / "resnet34" / "imp_sp90_seed0.json").read_text())
    assert cost["params_compact"] <= cost["params"] and cost["flops_compact"] <= cost["flops"]
    assert cost["ratios"]["latency"] > 0 and "zero_filters" in cost["dead_filters"]
    dense = json.loads((root / "cost" / "resnet34" / "dense_seed0.json").read_text())
    assert dense["params_compact"] == dense["params"]  # nothing dead in a dense model
    run(tmp_path, *R34, "--methods", "imp", "--seeds", "1", "--grid_lr", "1e-3", "5e-4", "--report_only")
    md = (tmp_path / "logs" / "comparison.md").read_text()
    assert "## Accuracy at real cost" in md and "| resnet34 | IMP | 90 |" in md


def test_unknown_method_architecture_and_bad_target_are_user_errors():
    with pytest.raises(UserError, match="unknown method"):
        compare.parse(["--methods", "magic"])
    with pytest.raises(UserError, match="unknown architecture"):
        compare.parse(["--architectures", "vgg"])
    with pytest.raises(UserError, match="percentages"):
        compare.parse(["--sparsities", "100"])
    with pytest.raises(UserError, match="stop rule has no sInit"):  # at the main target it is needed
        compare.parse(["--sparsities", "80", "--seed_sparsity", "80"])
    assert compare.parse(["--sparsities", "80", "90"]).sparsities == [80, 90]  # elsewhere it is left out


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

    for method in ("adapmtl", "adapmtl_dense_start", "snip", "disparse_dynamic", "imp", "lth", "taylor"):
        for arch in ("resnet34", "mobilenetv2"):
            for target in (50, 70, 90, 95):
                cmds = plan.commands(method, arch, target, 0, tmp_path / "x", None)
                pre = plan.P if plan.needs_pretrain(method) else 0
                trained = sum(iters(c) for c in cmds if "--iters" in c)
                assert pre + trained == 1000, (method, target)
                assert all(c[c.index("--architecture") + 1] == arch for c in cmds)
                for c in cmds:  # every phase anneals alike: its lr steps at 1/4, 2/4, 3/4 of its own length
                    if "--decay_lr_freq" in c:
                        phase = int(c[c.index("--finetune_iters" if "--finetune_iters" in c else "--iters") + 1])
                        assert int(c[c.index("--decay_lr_freq") + 1]) == phase // 4, (method, c)
    start = plan.commands("adapmtl_dense_start", "mobilenetv2", 90, 1, tmp_path / "x", None)[0]
    assert start[start.index("--reload") + 1] == str(plan.pretrain_dir("mobilenetv2", 1) / compare.CKPT)


def test_default_grid_is_five_seeds_of_every_ranked_method_on_both_architectures(tmp_path):
    plan = compare.Plan(compare.parse(["--out", str(tmp_path)]))
    cells = plan.cells({})
    ranked = {("resnet34", m) for m in compare.DEFAULT_METHODS} | {("mobilenetv2", m)
                                                                  for m in compare.MOBILENETV2_METHODS
                                                                  if m in compare.DEFAULT_METHODS}
    assert {"uniform", "adapmtl", "adapmtl_budget"} <= set(compare.DEFAULT_METHODS)
    assert {(c.arch, c.method) for c in cells if not compare.METHODS[c.method].ablation} == ranked
    for arch, method in ranked:
        seeds = sorted(c.seed for c in cells if (c.arch, c.method) == (arch, method))
        assert seeds == [0, 1, 2, 3, 4], (arch, method)
    # MobileNetV2 runs the paper's rows (AdapMTL with its stop rule) and AdapMTL with budget control (the stop rule
    # overshoots there: the budget-controlled row is the one at exactly the others' sparsity), unless told otherwise
    assert set(compare.MOBILENETV2_METHODS) == {"dense", "adapmtl", "adapmtl_budget", "snip", "disparse_static",
                                                "disparse_dynamic", "imp", "lth"}
    own = compare.Plan(compare.parse(["--methods", "snip", "--mobilenetv2_methods", "lth"]))
    assert own.methods("mobilenetv2") == ["dense", "lth"] and own.methods("resnet34") == ["dense", "snip"]
    assert {c.target for c in cells if c.method != "dense"} == {90}
    # seed by seed: every method's seed 0 runs before any seed 1 (paired tests need common seeds)
    order = [c.seed for c in cells if not compare.METHODS[c.method].ablation]
    assert order == sorted(order)
    ablations = [c for c in cells if compare.METHODS[c.method].ablation]
    # each ablation at the five seeds of AdapMTL (budget control), whose cells they are paired with
    assert {(c.arch, c.method, c.seed) for c in ablations} == {
        ("resnet34", m, s) for m in compare.DEFAULT_ABLATIONS for s in range(5)}
    budget = {(c.seed, c.target) for c in cells if (c.arch, c.method) == ("resnet34", "adapmtl_budget")}
    assert {(c.seed, c.target) for c in ablations} == budget
    two = compare.Plan(compare.parse(["--out", str(tmp_path), "--ablation_seeds", "2"])).cells({})
    assert sorted({c.seed for c in two if compare.METHODS[c.method].ablation}) == [0, 1]


def test_each_architecture_adds_its_own_protocol_flags_to_every_command(tmp_path):
    """MobileNetV2 (output stride 32) trains at its own crop in every command of every cell, ResNet34 at the
    preset's; a --quick smoke test keeps its tiny crop for both."""
    def crops(plan):  # architecture → every --crop_size value its commands pass (None: the preset's)
        out: dict[str, set] = {}
        for cell in plan.cells({}):
            for cmd in cell.commands:
                if cmd[0] == "pruning.py" and "--crop_size" not in cmd:  # reads its checkpoint's config
                    continue
                values = [cmd[i + 1] for i, flag in enumerate(cmd) if flag == "--crop_size"]
                out.setdefault(cell.arch, set()).add(values[-1] if values else None)
        return out
    full = crops(compare.Plan(compare.parse(["--out", str(tmp_path), "--methods", *compare.METHODS])))
    assert full == {"resnet34": {None}, "mobilenetv2": {compare.ARCH_FLAGS["mobilenetv2"][1]}}
    assert int(compare.ARCH_FLAGS["mobilenetv2"][1]) > 48
    quick = crops(compare.Plan(compare.parse(["--out", str(tmp_path), "--quick"])))
    assert quick == {"resnet34": {"32"}, "mobilenetv2": {"32"}}


def test_another_data_seed_writes_its_own_report_and_renders_other_scenes(tmp_path):
    plan = compare.Plan(compare.parse(["--data_seed", "3", "--out", str(tmp_path / "o"), "--logs", str(tmp_path)]))
    cmd = plan.commands("snip", "resnet34", 90, 0, tmp_path / "x", None)[0]
    assert cmd[cmd.index("--data_seed") + 1] == "3"
    assert plan.report == tmp_path / "comparison_data_seed3.md"
    assert plan.root == tmp_path / "comparison_data_seed3" and "data_seed3" in str(plan.out)
    default = compare.Plan(compare.parse(["--logs", str(tmp_path)]))
    assert default.report == tmp_path / "comparison.md"


def _fakes(monkeypatch, tmp_path, score_of):
    """Replace training and evaluation: a run's checkpoint is a file; its JSON scores by ``score_of(lr, cmd)``."""
    import bench.compare_report

    trained: list[str] = []
    lr_of: dict[str, tuple[str, list[str]]] = {}

    def fake_run(commands, log, threads=None):
        for cmd in commands:
            save = cmd[cmd.index("--save_dir") + 1]
            trained.append(save)
            lr_of[save] = (cmd[cmd.index("--lr") + 1] if "--lr" in cmd else "none", list(cmd))
            compare.Path(save).mkdir(parents=True, exist_ok=True)
            (compare.Path(save) / compare.CKPT).write_text("x")
        return compare.Elapsed(1.0, 1.0)

    def fake_evaluate(checkpoint, out_json, split, log, label, extra, threads=None):
        score, sparsity = score_of(*lr_of[str(checkpoint.parent)])
        out_json.parent.mkdir(parents=True, exist_ok=True)
        out_json.write_text(json.dumps(fake_result(score, split, sparsity)))

    monkeypatch.setattr(compare, "run_commands", fake_run)
    monkeypatch.setattr(compare, "run_test_py", fake_evaluate)
    monkeypatch.setattr(bench.compare_report, "write_report", lambda plan, lrs, wall: tmp_path / "report.md")
    return trained, lr_of


def test_tuning_reuses_identical_runs_and_reruns_cells_of_another_lr(tmp_path, monkeypatch, capsys):
    """A cell run before the grid is the grid's run at its lr; a cell of a learning rate the grid did not
    choose is stale and replaced by the chosen tuning run, never kept as if it were tuned."""
    import bench.compare_report

    scores = {"0.0005": 2.0, "0.001": 1.0}

    def score_of(lr, cmd):
        return (0.0 if "--dense" in cmd else scores[lr]), (0.0 if "--dense" in cmd else 0.9)

    trained, lr_of = _fakes(monkeypatch, tmp_path, score_of)
    args = [*R34, "--methods", "snip", "--seeds", "1", "--out", str(tmp_path / "out"), "--logs", str(tmp_path / "logs")]
    assert compare.main([*args, "--grid_lr", "1e-3"]) == 0
    assert len(trained) == 2  # dense, snip at 1e-3
    book_path = tmp_path / "logs" / "comparison" / "cells.json"
    assert json.loads(book_path.read_text())["resnet34/snip_sp90_seed0"]["lr"] == 1e-3

    trained.clear()
    assert compare.main([*args, "--grid_lr", "1e-3", "5e-4"]) == 0
    # dense's grid (2 runs; the earlier dense cell had no --lr, so it is not one of them) and snip's new lr only:
    # 1e-3 is the finished cell, the chosen 5e-4 run becomes the cell
    assert sorted(lr_of[s][0] for s in trained if "snip" in s) == ["0.0005"]
    book = json.loads(book_path.read_text())
    assert book["resnet34/snip_sp90_seed0_lr0.001"]["reused"] == "resnet34/snip_sp90_seed0"
    assert book["resnet34/snip_sp90_seed0"]["lr"] == 5e-4
    assert book["resnet34/snip_sp90_seed0"]["reused"] == "resnet34/snip_sp90_seed0_lr0.0005"
    assert "--lr 0.0005" in book["resnet34/snip_sp90_seed0"]["commands"][0]
    assert "recorded with other commands" in capsys.readouterr().out

    trained.clear()
    assert compare.main([*args, "--grid_lr", "1e-3", "5e-4"]) == 0
    assert trained == []  # everything is done and consistent

    # the grid's choice flips back (the validation scores change): the lr-1e-3 training still exists (its tuning
    # entry points at it) and is evaluated again, not retrained
    for tuned in (tmp_path / "logs" / "comparison" / "tuning" / "resnet34").glob("snip*_lr*.json"):
        tuned.write_text(json.dumps(fake_result(2.0 if "lr0.001" in tuned.name else 1.0, "val")))
    trained.clear()
    assert compare.main([*args, "--grid_lr", "1e-3", "5e-4"]) == 0
    assert trained == []
    assert json.loads(book_path.read_text())["resnet34/snip_sp90_seed0"]["lr"] == 1e-3

    # --report_only reads the grid's choice from the finished tuning runs (for the report), training nothing
    seen = {}
    monkeypatch.setattr(bench.compare_report, "write_report", lambda plan, lrs, wall: seen.update(lrs) or tmp_path)
    assert compare.main([*args, "--grid_lr", "1e-3", "5e-4", "--report_only"]) == 0
    assert trained == [] and seen[("resnet34", "snip")] == 1e-3 and ("resnet34", "dense") in seen


def test_a_changed_protocol_preset_retrains_every_cell(tmp_path, monkeypatch):
    """The preset's content is not on the command line: a cell trained with another content is another training."""
    preset = tmp_path / "preset.yaml"
    preset.write_text("crop_size: 48\n")
    monkeypatch.setattr(compare, "PROTOCOL_CONFIG", str(preset))
    trained, _ = _fakes(monkeypatch, tmp_path, lambda lr, cmd: (0.0, 0.0 if "--dense" in cmd else 0.9))
    args = [*R34, "--methods", "lth", "--seeds", "1", "--grid_lr", "1e-3", "--out", str(tmp_path / "o"), "--logs",
            str(tmp_path / "logs")]
    assert compare.main(args) == 0
    assert len(trained) == 3  # dense, the shared pre-training, lth
    trained.clear()
    assert compare.main(args) == 0 and trained == []
    preset.write_text("# a comment changes no setting\ncrop_size: 48\n")
    assert compare.main(args) == 0 and trained == []
    preset.write_text("crop_size: 64\n")
    assert compare.main(args) == 0
    assert len(trained) == 3  # all again, the pre-training included


def test_the_chosen_tuning_run_is_the_seed0_cell_even_after_its_folder_is_gone(tmp_path, monkeypatch):
    """Tuning runs are also evaluated on test when they finish, so a fresh machine (no run folders) takes the
    seed-0 cell from that JSON instead of training it again."""
    import shutil

    trained, _ = _fakes(monkeypatch, tmp_path, lambda lr, cmd: ({"0.0005": 2.0, "0.001": 1.0}[lr],
                                                                0.0 if "--dense" in cmd else 0.9))
    args = [*R34, "--methods", "snip", "--seeds", "1", "--grid_lr", "1e-3", "5e-4", "--out", str(tmp_path / "o"),
            "--logs", str(tmp_path / "logs")]
    assert compare.main(args) == 0
    root = tmp_path / "logs" / "comparison"
    assert (root / "tuning" / "resnet34" / "snip_sp90_seed0_lr0.0005.test.json").is_file()
    cell = root / "runs" / "resnet34" / "snip_sp90_seed0.json"
    cell.unlink()
    shutil.rmtree(tmp_path / "o")
    trained.clear()
    assert compare.main(args) == 0
    assert trained == [] and cell.is_file()
    assert json.loads(cell.read_text()) == json.loads(
        (root / "tuning" / "resnet34" / "snip_sp90_seed0_lr0.0005.test.json").read_text())


def test_another_data_seed_is_held_out_with_the_learning_rates_of_data_seed_0(tmp_path, monkeypatch):
    trained, lr_of = _fakes(monkeypatch, tmp_path, lambda lr, cmd: ({"0.0005": 2.0, "0.001": 1.0}[lr],
                                                                     0.0 if "--dense" in cmd else 0.9))
    args = [*R34, "--methods", "snip", "--seeds", "1", "--grid_lr", "1e-3", "5e-4", "--out", str(tmp_path / "o"),
            "--logs", str(tmp_path / "logs")]
    with pytest.raises(UserError, match="run the data-seed-0 comparison first"):
        compare.main([*args, "--data_seed", "2"])
    assert compare.main(args) == 0
    trained.clear()
    assert compare.main([*args, "--data_seed", "2"]) == 0
    # no tuning run on data seed 2: one dense and one snip cell, at the lrs chosen on data seed 0
    assert sorted(lr_of[s][0] for s in trained) == ["0.0005", "0.0005"] and len(trained) == 2
    assert all(lr_of[s][1][lr_of[s][1].index("--data_seed") + 1] == "2" for s in trained)
    assert not (tmp_path / "logs" / "comparison_data_seed2" / "tuning").exists()


def test_tuning_prefers_a_learning_rate_that_reaches_the_target_and_tunes_dense_on_its_own_mean(tmp_path,
                                                                                             monkeypatch):
    """A run that stops short of the target sparsity does not win the grid on Δ_T (it is less sparse); dense
    takes the lr whose validation metrics beat the mean of its grid."""

    def score_of(lr, cmd):
        if "--dense" in cmd:
            return {"0.0005": 1.0, "0.001": -1.0}[lr], 0.0
        # the small lr scores better but ends at 85% (stopped short of 90%); the large one reaches 90.6%
        return {"0.0005": (9.0, 0.85), "0.001": (1.0, 0.906)}[lr]

    _fakes(monkeypatch, tmp_path, score_of)
    assert compare.main([*R34, "--methods", "adapmtl", "--seeds", "1", "--grid_lr", "1e-3", "5e-4",
                         "--out", str(tmp_path / "out"), "--logs", str(tmp_path / "logs")]) == 0
    book = json.loads((tmp_path / "logs" / "comparison" / "cells.json").read_text())
    assert book["resnet34/adapmtl_sp90_seed0"]["lr"] == 1e-3
    assert book["resnet34/dense_seed0"]["lr"] == 5e-4 and book["resnet34/dense_seed0"]["reused"].endswith("lr0.0005")


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
        return compare.Elapsed(1.0, 1.0)

    def fake_evaluate(checkpoint, out_json, split, log, label, extra, threads=None):
        out_json.parent.mkdir(parents=True, exist_ok=True)
        out_json.write_text(json.dumps(fake_result(0.0, split)))

    fail = [False]
    monkeypatch.setattr(compare, "run_commands", fake_run)
    monkeypatch.setattr(compare, "run_test_py", fake_evaluate)
    monkeypatch.setattr(bench.compare_report, "write_report", lambda plan, lrs, wall: tmp_path / "report.md")
    monkeypatch.setattr(compare.os, "cpu_count", lambda: 4)
    args = ["--methods", "snip", "lth", "--seeds", "2", "--grid_lr", "1e-3", "--out", str(tmp_path / "out"),
            "--logs", str(tmp_path / "logs"), "--jobs", "2"]
    assert compare.main(args) == 0
    assert peak[0] == 2 and threads_seen == {2}  # 4 cores, 2 jobs: 2 threads each
    book = json.loads((tmp_path / "logs" / "comparison" / "cells.json").read_text())
    for arch in ("resnet34", "mobilenetv2"):
        assert {f"{arch}/{k}" for k in ("dense_seed0", "dense_seed1", "pretrain_P600_seed0", "pretrain_P600_seed1",
                                        "snip_sp90_seed0", "snip_sp90_seed1", "lth_sp90_seed0", "lth_sp90_seed1")
                } <= set(book)
    assert all(e["jobs"] == 2 and e["threads"] == 2 for e in book.values())

    fail[0] = True
    with pytest.raises(UserError, match="a broken cell"):
        compare.main([*R34, "--methods", "imp", "--seeds", "1", "--grid_lr", "1e-3", "5e-4",
                      "--out", str(tmp_path / "out"), "--logs", str(tmp_path / "logs"), "--jobs", "2"])


def test_job_layout_defaults():
    assert compare.job_layout(compare.parse(["--jobs", "1"])) == (1, None)
    assert compare.job_layout(compare.parse(["--extra", "--device", "cuda"]))[0] == 1
    jobs, threads = compare.job_layout(compare.parse([]))
    assert jobs == min(compare.os.cpu_count() or 1, 8) and (threads is None) == (jobs == 1)


def test_run_commands_measures_the_commands_cpu_time(tmp_path):
    """CPU time (the budget measure) is the children's own: a busy command has it, a sleeping one hardly any."""
    busy = compare.run_commands([["-c", "s = 0\nfor i in range(3_000_000): s += i"]], tmp_path / "busy.log")
    idle = compare.run_commands([["-c", "import time; time.sleep(0.5)"]], tmp_path / "idle.log")
    assert busy.cpu > 0.05 and busy.wall >= busy.cpu * 0.5
    assert idle.wall >= 0.5 and idle.cpu < idle.wall / 2
    with pytest.raises(compare.UserError, match="exit 3"):
        compare.run_commands([["-c", "raise SystemExit(3)"]], tmp_path / "fail.log")


def _children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                out.append(int(entry.name))
    return out


def test_sigterm_stops_the_grids_running_trainings_too(tmp_path):
    """A preempted grid leaves no orphan training behind that would keep writing into a run folder."""
    import signal
    import subprocess
    import sys
    import time

    proc = subprocess.Popen([sys.executable, "-m", "bench.compare", "--quick", *R34, "--methods", "dense", "snip",
                             "--seeds", "2", "--grid_lr", "1e-3", "--out", str(tmp_path / "out"), "--logs",
                             str(tmp_path / "logs"), "--jobs", "2"], cwd=compare.ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    kids: list[int] = []
    while time.time() < deadline and not kids:
        kids = _children(proc.pid)
        time.sleep(0.1)
    assert kids, "no training started"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=150) == 143
    time.sleep(1.0)
    # no training of this grid is left: neither those running at the signal nor one a worker started after it
    left = [p for p in Path("/proc").iterdir() if p.name.isdigit() and _cmdline_has(p, str(tmp_path / "out"))]
    assert not left and all(not Path(f"/proc/{k}").exists() for k in kids)


def _cmdline_has(proc: Path, needle: str) -> bool:
    try:
        return needle in (proc / "cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return False
