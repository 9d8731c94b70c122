"""Δ_T, the reference selection score and the result table of main.scores."""

from __future__ import annotations

import pytest

from main.scores import NYUV2_REFERENCE_SCORES, delta_t, selection_score
from main.tables import format_table
from main.task_registry import DEPTH, NORMAL, SEG
from main.tasks import metric_directions

NYU_TASKS = [SEG, NORMAL, DEPTH]
DIRS = metric_directions("nyuv2", NYU_TASKS)


def test_delta_t_tiny_example():
    metrics = {"a": {"acc": 0.55, "err": 0.9}, "b": {"err": 2.0}}
    reference = {"a": {"acc": 0.5, "err": 1.0}, "b": {"err": 1.6}}
    directions = {"a": {"acc": 1, "err": -1}, "b": {"err": -1}}
    out = delta_t(metrics, reference, directions)
    # a: +10% acc, +10% (lower err) summed -> 20; b: err up 25% -> -25; overall mean -2.5
    assert out["tasks"] == pytest.approx({"a": 20.0, "b": -25.0})
    assert out["overall"] == pytest.approx(-2.5)


@pytest.mark.parametrize("metrics, reference, message", [
    ({"a": {"x": 1.0}, "b": {"x": 1.0}}, {"a": {"x": 1.0}}, "reference has no task 'b'"),
    ({"a": {"x": 1.0}}, {"a": {"x": 1.0}, "b": {"x": 1.0}}, "metrics have no task 'b'"),
    ({"a": {"x": 1.0, "y": 1.0}}, {"a": {"x": 1.0}}, "reference lacks metric 'y' of task 'a'"),
    ({"a": {"x": 1.0}}, {"a": {"x": 1.0, "y": 1.0}}, "metrics lack 'y' of task 'a'"),
    ({"a": {"z": 1.0}}, {"a": {"z": 1.0}}, "no direction .* 'a' 'z'"),
    ({"a": {"x": 1.0}}, {"a": {"x": 0.0}}, "'a' 'x' is 0"),
    ({}, {}, "no metrics"),
])
def test_delta_t_mismatches_are_named(metrics, reference, message):
    directions = {"a": {"x": 1, "y": -1}, "b": {"x": 1}}
    with pytest.raises(ValueError, match=message):
        delta_t(metrics, reference, directions)


# The paper's Table 2 (docs/reference.md §7; NYUv2, MobileNetV2, 90% sparsity): metric columns as
# printed (mIoU / PixAcc in percent) and the printed Δ_T1, Δ_T2, Δ_T3, Δ_T.
TABLE2 = {
    "Dense": ([19.94, 48.71], [17.85, 16.21, 29.77, 72.19, 86.19], [0.64, 0.24, 58.93, 86.27, 96.16],
              [0.00, 0.00, 0.00, 0.00]),
    "SNIP": ([18.96, 46.93], [18.33, 16.97, 28.93, 71.21, 85.78], [0.64, 0.25, 56.75, 85.71, 95.33],
             [-8.57, -12.03, -9.38, -9.99]),
    "LTH": ([19.14, 47.25], [17.67, 16.32, 29.67, 72.15, 86.22], [0.65, 0.25, 57.68, 85.89, 96.13],
            [-7.01, -0.03, -8.32, -5.12]),
    "IMP": ([18.76, 48.12], [18.71, 16.68, 29.63, 71.76, 85.91], [0.64, 0.23, 59.75, 86.52, 96.31],
            [-7.13, -9.11, 6.00, -3.41]),
    "DiSparse": ([19.87, 48.83], [17.92, 16.79, 29.87, 71.76, 85.64], [0.65, 0.24, 58.42, 85.72, 96.28],
                 [-0.10, -4.87, -2.94, -2.64]),
    "AdapMTL w/o adaptive thresholds": ([18.93, 47.51], [18.16, 16.87, 28.37, 71.53, 86.63],
                                        [0.65, 0.24, 58.26, 85.82, 95.92], [-7.53, -10.91, -3.47, -7.30]),
    "AdapMTL": ([20.16, 49.14], [17.53, 15.96, 30.16, 72.36, 86.51], [0.64, 0.24, 59.03, 86.57, 96.38],
                [1.99, 5.25, 0.75, 2.66]),
}


def table2_metrics(name: str) -> dict:
    seg, normal, depth, _ = TABLE2[name]
    return {task: dict(zip(DIRS[task], values, strict=True))
            for task, values in zip(NYU_TASKS, (seg, normal, depth), strict=True)}


@pytest.mark.parametrize("name", list(TABLE2))
def test_delta_t_reproduces_paper_table2(name):
    out = delta_t(table2_metrics(name), table2_metrics("Dense"), DIRS)
    printed = TABLE2[name][3]
    got = [out["tasks"][t] for t in NYU_TASKS] + [out["overall"]]
    for value, expected in zip(got, printed, strict=True):
        # every entry agrees to the table's 2 decimals (largest gap 0.0047, from the rounded inputs)
        assert abs(value - expected) < 0.005 + 1e-9
        assert round(value, 2) == pytest.approx(expected, abs=1e-9)


def code_test_score(m: dict, r: dict, p: tuple[float, float, float] = (1.0, 1.0, 1.0)) -> float:
    """§6.4's expression, term by term as the reference trainer writes it."""
    s, n, d = m[SEG], m[NORMAL], m[DEPTH]
    rs, rn, rd = r[SEG], r[NORMAL], r[DEPTH]
    seg = 0.5 * (s["mIoU"] / rs["mIoU"] + s["Pixel Acc"] / rs["Pixel Acc"])
    nor = (n["Angle 11.25"] / rn["Angle 11.25"] + n["Angle 22.5"] / rn["Angle 22.5"]
           + n["Angle 30"] / rn["Angle 30"] - n["Angle Mean"] / rn["Angle Mean"]
           - n["Angle Median"] / rn["Angle Median"])
    dep = (d["sigma_1.25"] / rd["sigma_1.25"] + d["sigma_1.25^2"] / rd["sigma_1.25^2"]
           + d["sigma_1.25^3"] / rd["sigma_1.25^3"] - d["abs_err"] / rd["abs_err"]
           - d["rel_err"] / rd["rel_err"])
    return (p[0] * seg + p[1] * nor + p[2] * dep) / sum(p)


# §6.3 row 3 ("independent model", ResNet34) as a point away from the reference
INDEPENDENT_R34 = {
    SEG: {"mIoU": 0.2650, "Pixel Acc": 0.5820},
    NORMAL: {"Angle Mean": 17.70, "Angle Median": 16.30, "Angle 11.25": 29.40, "Angle 22.5": 72.30,
             "Angle 30": 87.30},
    DEPTH: {"abs_err": 0.62, "rel_err": 0.24, "sigma_1.25": 57.80, "sigma_1.25^2": 85.80,
            "sigma_1.25^3": 96.00},
}


@pytest.mark.parametrize("arch", ["resnet34", "mobilenetv2"])
def test_selection_score_is_one_at_the_reference(arch):
    ref = NYUV2_REFERENCE_SCORES[arch]
    assert selection_score(ref, ref, DIRS) == 1.0
    assert code_test_score(ref, ref) == pytest.approx(1.0, abs=1e-12)


def test_selection_score_matches_the_code_expression():
    ref = NYUV2_REFERENCE_SCORES["resnet34"]
    expected = code_test_score(INDEPENDENT_R34, ref)
    assert selection_score(INDEPENDENT_R34, ref, DIRS) == pytest.approx(expected, abs=1e-12)
    assert expected != pytest.approx(1.0, abs=1e-3)  # a point that actually moves the score
    # with priorities, the reference's p-weighted sum divided by Σp
    p = {SEG: 2.0, NORMAL: 1.0, DEPTH: 0.5}
    expected = code_test_score(INDEPENDENT_R34, ref, (2.0, 1.0, 0.5))
    assert selection_score(INDEPENDENT_R34, ref, DIRS, task_priority=p) == pytest.approx(expected, abs=1e-12)
    # without the half weight, segmentation counts like the others: 1 + mean Δ_T / 100
    d = delta_t(INDEPENDENT_R34, ref, DIRS)
    got = selection_score(INDEPENDENT_R34, ref, DIRS, half_weight_first=False)
    assert got == pytest.approx(1 + d["overall"] / 100, abs=1e-12)


def test_selection_score_rejects_unknown_priority():
    ref = NYUV2_REFERENCE_SCORES["resnet34"]
    with pytest.raises(ValueError, match="'albedo'"):
        selection_score(ref, ref, DIRS, task_priority={"albedo": 1.0})


def test_reference_scores_use_metric_names():
    for arch, scores in NYUV2_REFERENCE_SCORES.items():
        assert {t: set(v) for t, v in scores.items()} == {t: set(v) for t, v in DIRS.items()}, arch


def test_format_table_is_generic_and_fits():
    dense, adap = table2_metrics("Dense"), table2_metrics("AdapMTL")
    result = {"metrics": adap, "sparsity": {"overall": 0.9, "components": {"backbone": 0.5274}}}
    text = format_table([("Dense", dense), ("AdapMTL", result)], reference=dense, directions=DIRS)
    lines = text.splitlines()
    assert all(len(line) <= 120 for line in lines)
    for word in ("Dense", "AdapMTL", "mIoU↑", "Angle Mean↓", "sigma_1.25^3↑", "Δ_T", "backbone", "+2.66",
                 "+1.99", "+5.25", "+0.75", "0.5274", "20.1600"):
        assert word in text, word
    # every block repeats the row labels
    assert sum(line.startswith("AdapMTL") for line in lines) == text.count("\nmodel") >= 2
    # a narrow terminal wraps into more blocks, still within the width
    narrow = format_table([("Dense", dense)], width=50)
    assert all(len(line) <= 50 for line in narrow.splitlines())
    assert narrow.count("model") > text.count("model")
    # rows with different task sets: missing cells show "-"
    rows = [("a", {"keypoints2d": {"key_err": 0.2}}), ("b", {"edge_texture": {"edge_err": 0.1}})]
    text = format_table(rows)
    assert "key_err" in text and "edge_err" in text and " -" in text and "Δ_T" not in text
