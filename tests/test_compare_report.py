"""The comparison's statistics and report: noise floor, Δ_T against the dense mean, t intervals, paired tests."""

from __future__ import annotations

import json
import statistics

import pytest
from scipy import stats

from bench import compare, compare_report, compare_summary
from bench.compare_protocol import PAPER_TABLE2
from bench.comparison_stats import NoiseFloor, delta, holm, mean_table, metric_noise, paired, t_interval
from main.errors import UserError
from tests.test_compare import fake_metrics, fake_result


def test_delta_against_the_mean_and_leave_one_out_noise_floor():
    tables = [fake_metrics(s) for s in (1.0, -1.0, 3.0, -3.0)]
    ref = mean_table(tables)
    # every metric 1 % (relative) better than 1 → each task's Δ is the number of metrics × about 1 %
    assert delta(tables[0], ref)["tasks"]["segment_semantic"] == pytest.approx(2 * 1.0, rel=0.01)
    floor = NoiseFloor.of(tables)
    expected = [delta(t, mean_table([o for o in tables if o is not t]))["overall"] for t in tables]
    assert floor.values == pytest.approx(expected)
    assert floor.std == pytest.approx(statistics.stdev(expected)) and floor.n == 4
    assert floor.max_abs == pytest.approx(max(abs(x) for x in expected))
    assert NoiseFloor.of(tables[:1]).std is None  # one seed has no noise floor


def test_metric_noise_traces_a_task_noise_floor_to_its_metric():
    """One metric scattering (small-valued, as the 11.25° share) makes all of its task's leave-one-out noise."""
    tables = [fake_metrics(0.0) for _ in range(5)]
    for t, v in zip(tables, (12.0, 15.5, 13.0, 11.0, 14.0), strict=True):
        t["normal"]["Angle 11.25"] = v
    noise = metric_noise(tables)
    floor = NoiseFloor.of(tables)
    assert noise["normal"]["Angle 11.25"] == pytest.approx(floor.task_std["normal"])
    assert noise["normal"]["Angle Mean"] == pytest.approx(0.0) and noise["depth_zbuffer"]["abs_err"] == 0.0
    # relative: scaling the metric leaves its noise unchanged, the same absolute scatter on a larger value shrinks it
    for t in tables:
        t["normal"]["Angle 11.25"] *= 5
    assert metric_noise(tables)["normal"]["Angle 11.25"] == pytest.approx(noise["normal"]["Angle 11.25"], rel=1e-9)
    for t, v in zip(tables, (12.0, 15.5, 13.0, 11.0, 14.0), strict=True):
        t["normal"]["Angle 11.25"] = v + 48.0
    assert metric_noise(tables)["normal"]["Angle 11.25"] < noise["normal"]["Angle 11.25"] / 4
    assert metric_noise(tables[:1]) == {}


def test_t_interval_and_paired_test_match_scipy():
    a = {0: 1.0, 1: 3.0, 2: 2.5, 3: 4.0, 4: 0.5}
    b = {0: 0.0, 1: 1.0, 2: 2.0, 3: 1.5, 4: 1.0, 9: 7.0}  # seed 9 has no partner: left out
    res = paired(a, b)
    diffs = [a[s] - b[s] for s in range(5)]
    assert res.seeds == [0, 1, 2, 3, 4]
    assert res.p == pytest.approx(stats.ttest_rel(list(a.values()), [b[s] for s in range(5)]).pvalue)
    lo, hi = stats.t.interval(0.95, 4, loc=statistics.fmean(diffs), scale=stats.sem(diffs))
    assert res.diff.mean == pytest.approx(statistics.fmean(diffs)) and res.diff.half == pytest.approx((hi - lo) / 2)
    assert t_interval([2.0]).half is None and paired({0: 1.0}, {1: 1.0}) is None
    assert str(t_interval([-1e-16, -2e-16, 1e-17])).startswith("+0.00 ± ")  # dense against its own mean: no -0.00


def write_cells(root, cells):
    """cells: (arch, method, target, seed, score) → runs/<arch>/<key>.json and the book entry."""
    book = {}
    for arch, method, target, seed, score in cells:
        key = f"{method}{'' if target is None else f'_sp{target}'}_seed{seed}"
        path = root / "runs" / arch / f"{key}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(fake_result(score, sparsity=0.0 if target is None else 0.9)))
        book[f"{arch}/{key}"] = {"architecture": arch, "method": method, "target": target, "seed": seed,
                                 "commands": ["python x"], "wall_s": 60.0}
    (root / "cells.json").write_text(json.dumps(book))


def test_report_prints_noise_floor_cis_paired_tests_and_the_ceiling_check(tmp_path, monkeypatch):
    monkeypatch.setattr(compare_report, "_plots", lambda plan, runs, groups: [])
    plan = compare.Plan(compare.parse(["--architectures", "resnet34", "--logs", str(tmp_path)]))
    dense = [0.5, -0.5, 1.0, -1.0, 0.0]
    adap = [2.0, 2.5, 1.5, 2.2, 1.8]
    snip = [a - 1.0 + 0.1 * i for i, a in enumerate(adap)]  # consistently about 1 point below AdapMTL
    imp = [30.0, 29.0, 31.0, 30.5, 29.5]  # far above dense: the ceiling check must say so
    cells = [("resnet34", "dense", None, s, v) for s, v in enumerate(dense)]
    cells += [("resnet34", m, 90, s, v) for m, vs in (("adapmtl", adap), ("snip", snip), ("imp", imp))
              for s, v in enumerate(vs)]
    write_cells(plan.root, cells)
    md = compare_report.write_report(plan, {}, 0.0).read_text()
    floor = NoiseFloor.of([fake_metrics(v) for v in dense])
    assert f"| resnet34 | standard (ranking) | 5 | {floor.std:.2f} | {floor.max_abs:.2f} |" in md
    runs = compare_report.load_runs(plan.root)
    snip_d = {r.seed: r.delta["standard"]["overall"] for r in runs if r.method == "snip"}
    adap_d = {r.seed: r.delta["standard"]["overall"] for r in runs if r.method == "adapmtl"}
    res = paired(snip_d, adap_d)
    assert res.p < 0.05 and f"{res.diff} (n=5)" in md
    assert "Holm-corrected over the 2): significantly better than SNIP (" in md
    assert "significantly worse than IMP (" in md
    assert "beat(s) the dense mean by more than twice the noise floor" in md and "IMP (+" in md
    ci = t_interval(list(adap_d.values()))
    assert f"| {ci} |" in md  # the AdapMTL row's Δ_T ± 95 % CI
    assert "**resnet34, AdapMTL (stop rule), seed by seed**" in md  # each AdapMTL seed on its own
    assert f"| 4 | {adap_d[4]:+.2f} |" in md


def test_holm_rejects_exactly_what_the_step_down_procedure_rejects():
    import random

    rng = random.Random(3)
    for _ in range(50):
        ps = {f"m{i}": rng.random() ** 3 for i in range(rng.randint(1, 8))}
        adj = holm(ps)
        order = sorted(ps, key=ps.get)
        assert all(adj[m] >= ps[m] for m in ps) and all(adj[m] <= 1 for m in ps)
        for alpha in (0.01, 0.05, 0.2):
            rejected = set()
            for i, m in enumerate(order):  # Holm's step-down: stop at the first p above alpha / (k - i)
                if ps[m] > alpha / (len(order) - i):
                    break
                rejected.add(m)
            assert {m for m in ps if adj[m] <= alpha} == rejected


def test_readme_summary_is_spliced_between_the_markers_only(tmp_path):
    plan = compare.Plan(compare.parse(["--architectures", "resnet34", "--logs", str(tmp_path)]))
    cells = [("resnet34", "dense", None, s, v) for s, v in enumerate([0.5, -0.5, 1.0])]
    cells += [("resnet34", "adapmtl", 90, s, v) for s, v in enumerate([2.0, 2.5, 1.5])]
    cells += [("resnet34", "snip", 90, s, v) for s, v in enumerate([1.0, 1.4, 0.6])]
    write_cells(plan.root, cells)
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{compare_summary.BEGIN}\nstale numbers\n{compare_summary.END}\noutro\n")
    text = compare_summary.write_readme(readme, plan).read_text()
    assert text.startswith(f"intro\n{compare_summary.BEGIN}\n") and text.endswith(f"{compare_summary.END}\noutro\n")
    assert "stale numbers" not in text and "leave-one-out Δ_T of 3 dense seeds" in text
    runs = compare_report.load_runs(plan.root)
    snip = {r.seed: r.delta["standard"]["overall"] for r in runs if r.method == "snip"}
    adap = {r.seed: r.delta["standard"]["overall"] for r in runs if r.method == "adapmtl"}
    assert f"| SNIP | {t_interval(list(snip.values()))} (3) | {paired(snip, adap).diff}, p=" in text
    assert compare_summary.write_readme(readme, plan).read_text() == text  # idempotent
    readme.write_text("no markers\n")
    with pytest.raises(UserError, match="marker"):
        compare_summary.write_readme(readme, plan)
    report = plan.report
    report.unlink(missing_ok=True)
    with pytest.raises(UserError, match="marker"):  # checked before the report is (re)written
        compare.main(["--architectures", "resnet34", "--logs", str(tmp_path), "--report_only", "--readme",
                      str(readme)])
    assert not report.exists()


def test_cpu_budget_bounds_single_thread_cells_without_cpu_time_by_their_wall_time():
    book = {"a": {"cpu_s": 3600.0, "wall_s": 4000.0}, "b": {"cpu_s": 1800.0, "wall_s": 1900.0},
            "c": {"wall_s": 0.0, "cpu_s": 0.0, "reused": "a"},  # a reused run has no time of its own
            "d": {"wall_s": 720.0, "threads": 1}, "e": {"wall_s": 999.0}}  # e: threads unknown, no bound
    (line,) = compare_report.cpu_budget(book)
    assert "CPU time of the 2 cells that record it: 1.50 CPU-hours, i.e. 0.75 h on 2 cores" in line
    assert "2 earlier cells recorded wall time only, 1 of them at one thread each" in line
    assert "at most 1.70 CPU-hours for the 3 cells, i.e. at most 0.85 h on 2 cores." in line
    del book["e"]
    assert "at most 1.70 CPU-hours in all" in compare_report.cpu_budget(book)[0]
    assert compare_report.cpu_budget({"a": {"cpu_s": 7200.0}}) == [
        "CPU time of the 1 cells that record it: 2.00 CPU-hours, i.e. 1.00 h on 2 cores."]


def test_summary_puts_the_papers_table_2_beside_our_mobilenetv2_rows(tmp_path):
    plan = compare.Plan(compare.parse(["--architectures", "mobilenetv2", "--logs", str(tmp_path)]))
    cells = [("mobilenetv2", "dense", None, s, v) for s, v in enumerate([0.5, -0.5, 1.0])]
    cells += [("mobilenetv2", "adapmtl", 90, s, v) for s, v in enumerate([2.0, 2.5, 1.5])]
    write_cells(plan.root, cells)
    groups = compare_report.group_runs(compare_report.load_runs(plan.root))
    text = "\n".join(compare_summary.paper_lines(groups, 90, "standard"))
    adap = compare_report.per_seed_delta(groups, "mobilenetv2", "adapmtl", 90, "standard")
    paper = {row[0]: row for row in PAPER_TABLE2}
    # fake_result's components are all 90 % sparse; the paper's AdapMTL backbone is its own number
    assert (f"| AdapMTL | {paper['AdapMTL'][-1]:+.2f} | {t_interval(list(adap.values()))} (3) "
            f"| {paper['AdapMTL'][6]:.2f}% | 90.0% |") in text
    assert f"| SNIP | {paper['SNIP'][-1]:+.2f} | not run |" in text
    assert "| Dense | +0.00 | " in text and "| AdapMTL w/o adaptive thresholds |" in text


def test_ablations_are_paired_with_budget_control_at_their_seeds(tmp_path):
    ns = compare.parse(["--architectures", "resnet34", "--logs", str(tmp_path)])
    plan = compare.Plan(ns)
    budget = [-3.0, -4.0, -2.5, -3.5, -5.0]
    cells = [("resnet34", "dense", None, s, v) for s, v in enumerate([0.5, -0.5, 1.0, -1.0, 0.0])]
    cells += [("resnet34", "adapmtl_budget", 90, s, v) for s, v in enumerate(budget)]
    cells += [("resnet34", "adapmtl_global_threshold", 90, s, v + 2.0 + 0.1 * s) for s, v in enumerate(budget)]
    cells += [("resnet34", "adapmtl_equal_weights", 90, s, v) for s, v in enumerate(budget[:2])]
    write_cells(plan.root, cells)
    groups = compare_report.group_runs(compare_report.load_runs(plan.root))
    md = "\n".join(compare_report._ablations(groups, ns, "standard"))
    assert "## Ablations (resnet34, 90%, budget control, seeds 0, 1, 2, 3, 4)" in md
    per = {m: compare_report.per_seed_delta(groups, "resnet34", m, 90, "standard")
           for m in ("adapmtl_budget", "adapmtl_global_threshold", "adapmtl_equal_weights")}
    glob = paired(per["adapmtl_global_threshold"], per["adapmtl_budget"])
    eq = paired(per["adapmtl_equal_weights"], per["adapmtl_budget"])
    adjusted = holm({"g": glob.p, "e": eq.p})
    assert f"| AdapMTL, one global threshold | {glob.diff} (n=5) |" in md and f"{adjusted['g']:.3f}" in md
    assert f"| AdapMTL w/o adaptive weighting | {eq.diff} (n=2) |" in md
    assert "Holm over the 2 ablations" in md


def test_other_targets_get_curve_seeds_and_the_stop_rule_only_where_it_has_a_setting(tmp_path):
    plan = compare.Plan(compare.parse(["--architectures", "resnet34", "--out", str(tmp_path), "--sparsities", "70",
                                       "90", "98", "--curve_seeds", "3", "--methods", "adapmtl", "snip"]))
    cells = plan.cells({})
    assert sorted({c.seed for c in cells if c.target == 70}) == [0, 1, 2]
    assert {(c.method, c.target) for c in cells if c.target not in (90, None)} == {("adapmtl", 70), ("snip", 70),
                                                                              ("snip", 98)}
    with pytest.raises(UserError):  # the main target needs the stop rule's setting
        compare.parse(["--seed_sparsity", "98", "--sparsities", "98", "--methods", "adapmtl"])


def test_curves_table_plot_and_where_the_ranking_changes(tmp_path, monkeypatch):
    monkeypatch.setattr(compare_report, "_plots", lambda plan, runs, groups: [])
    plan = compare.Plan(compare.parse(["--architectures", "resnet34", "--logs", str(tmp_path), "--sparsities", "70",
                                       "90", "--methods", "snip", "imp"]))
    cells = [("resnet34", "dense", None, s, v) for s, v in enumerate([0.5, -0.5, 0.0])]
    # SNIP ahead at 70 %, IMP ahead at 90 %
    cells += [("resnet34", "snip", 70, s, 5.0 + s) for s in range(3)] + [("resnet34", "imp", 70, s, 1.0) for s in
                                                                         range(3)]
    cells += [("resnet34", "snip", 90, s, -5.0 - s) for s in range(3)] + [("resnet34", "imp", 90, s, 2.0) for s in
                                                                          range(3)]
    write_cells(plan.root, cells)
    md = compare_report.write_report(plan, {}, 0.0).read_text()
    assert "## Accuracy against sparsity" in md and "| method | 70% | 90% |" in md
    assert "SNIP is ahead of IMP at 70% and behind at 90%" in md
    assert "Best mean at each target: 70%: SNIP; 90%: IMP." in md
    assert (plan.root / "delta_vs_sparsity_resnet34.png").stat().st_size > 0
