"""The known-sensitivity benchmark in quick mode: every run, resumable, allocations at the target, the report."""

from __future__ import annotations

import json

import pytest

from bench import sensitivity


def fake(depth_err: float, edge_err: float, comps: dict[str, float]) -> dict:
    table = {"depth_zbuffer": {"abs_err": depth_err, "rel_err": depth_err / 2, "sigma_1.25": 50.0,
                               "sigma_1.25^2": 80.0, "sigma_1.25^3": 90.0},
             "edge_texture": {"edge_err": edge_err}}
    return {"metrics": table, "metrics_by_definition": {"standard": table, "parity": table},
            "sparsity": {"overall": 0.9, "components": comps}}


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    root = tmp_path_factory.mktemp("sens")
    argv = ["--quick", "--out", str(root / "out"), "--logs", str(root / "logs")]
    assert sensitivity.main(argv) == 0
    return root, argv


def test_every_run_trains_once_and_a_second_call_resumes(quick, capsys):
    root, argv = quick
    bench = sensitivity.Sensitivity(sensitivity.parse(argv))
    runs = bench.runs()
    assert all(bench.done(r) for r in runs)
    families = {r.key.rsplit("_seed", 1)[0] for r in runs}
    assert {"pretrain", "dense", "adapmtl", "uniform", "magnitude"} <= families
    assert len([f for f in families if f.startswith("oracle")]) == len(bench.allocations()) >= 5
    capsys.readouterr()
    assert sensitivity.main(argv) == 0
    assert " ..." not in capsys.readouterr().out  # nothing trained again
    assert bench.book["adapmtl_seed0"]["mechanism"]["threshold_sum_lr"] > 0


def test_allocations_are_at_the_target_and_the_runs_reach_them(quick):
    root, argv = quick
    bench = sensitivity.Sensitivity(sensitivity.parse(argv))
    sizes = bench.component_sizes()
    for alloc in bench.allocations():
        kept = sum((1 - alloc[c]) * n for c, n in sizes.items())
        assert kept / sum(sizes.values()) == pytest.approx(1 - sensitivity.TARGET, abs=1e-4)
    for run in bench.runs():
        if run.allocation is not None:
            got = json.loads(bench.json_path(run, "test").read_text())["sparsity"]["components"]
            assert all(got[c] == pytest.approx(v, abs=2e-3) for c, v in run.allocation.items()), run.key


def test_the_oracle_is_chosen_on_validation_and_compared_with_adapmtl(quick, tmp_path):
    root, argv = quick
    bench = sensitivity.Sensitivity(sensitivity.parse(argv))
    comps = {"backbone": 0.9, "depth_zbuffer": 0.9, "edge_texture": 0.9}
    best = "oracle4"
    for run in bench.runs():
        if run.key.startswith("pretrain"):
            continue
        family = run.key.rsplit("_seed", 1)[0]
        alloc = run.allocation or ({"backbone": 0.95, "depth_zbuffer": 0.97, "edge_texture": 0.8}
                                   if family == "adapmtl" else comps)
        err = 1.0 if family == "dense" else 0.9 if family == best else 1.2
        for split in sensitivity.SPLITS:  # the best allocation on validation is the worst on test: test-blind
            e = err if split == "val" or family in ("dense", "adapmtl") else 2.2 - err
            bench.json_path(run, split).write_text(json.dumps(fake(e, e, alloc)))
    md = sensitivity.write_report(bench).read_text()
    assert f"**{best} (oracle)**" in md
    assert f"| Oracle ({best}) |" in md and "| AdapMTL (budget control) |" in md and "| Uniform" in md
    assert "| depth > backbone > edges |" in md  # AdapMTL's order, sparsest first
    assert "## Does AdapMTL's mechanism act?" in md


def test_bad_arguments_are_user_errors():
    from main.errors import UserError

    with pytest.raises(UserError):
        sensitivity.parse(["--seeds", "0"])
