"""The backbone-against-heads sensitivity experiment (the paper's Figure 5) in quick mode, and its report."""

from __future__ import annotations

import json

from bench import component_sensitivity as cs
from tests.test_compare import fake_result


def test_quick_runs_prune_one_part_and_the_report_names_the_sensitive_one(tmp_path, capsys):
    argv = ["--quick", "--architectures", "resnet34", "--out", str(tmp_path / "out"), "--logs", str(tmp_path / "logs")]
    assert cs.main(argv) == 0
    bench = cs.ComponentSensitivity(cs.parse(argv))
    runs = {r.key: r for r in bench.runs()}
    for key, run in runs.items():
        if run.allocation is None:
            continue
        got = json.loads(bench.json_path(run, "test").read_text())["sparsity"]["components"]
        pruned = [c for c, v in run.allocation.items() if v > 0]
        assert pruned == (["backbone"] if "_backbone" in key else list(cs.TASKS)), key
        assert all(abs(got[c] - run.allocation[c]) < 2e-3 for c in pruned)
        assert all(got[c] < 0.01 for c in run.allocation if c not in pruned)  # the other part stays dense
    capsys.readouterr()
    assert cs.main(argv) == 0 and " ..." not in capsys.readouterr().out  # resumed: nothing trained again
    for key, run in runs.items():  # the backbone is the sensitive part by construction of these results
        if "pretrain" in key:
            continue
        score = 0.0 if "dense" in key else (-5.0 if "backbone" in key else -1.0)
        bench.json_path(run, "test").write_text(json.dumps(fake_result(score)))
    logs = tmp_path / "logs" / "comparison" / "runs" / "resnet34"
    logs.mkdir(parents=True)
    (logs / "adapmtl_budget_sp90_seed0.json").write_text(json.dumps(fake_result(0.0)))
    md = cs.write_report(bench).read_text()
    assert "the sensitive part here is the **backbone**" in md
    assert "AdapMTL (budget control, 90% overall, the comparison's cells) learned: backbone 90.0%" in md
    assert (bench.root / "component_sensitivity_resnet34.png").stat().st_size > 0
