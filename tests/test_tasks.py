"""Losses and metrics of main.tasks on tiny hand-computed cases (and one random cross-check)."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from main.config import DATASETS, Config, ConfigError, load_yaml
from main.data import DatasetInfo, dataset_tasks
from main.errors import UserError
from main.monitor import component_tag, component_tags
from main.task_losses import l1_ignore_loss
from main.task_metrics import l1_accumulator
from main.task_registry import (
    DEFAULT_TASKS,
    DEPTH,
    EDGES,
    KEYPOINTS,
    NORMAL,
    SEG,
    STYLES,
    TASKS,
    Metric,
    TaskSpec,
    UnknownTaskError,
    known_tasks,
    register_task,
    task_spec,
)
from main.tasks import TaskMetrics, metric_directions, task_channels, task_loss

LN2, LN43 = math.log(2.0), math.log(4.0 / 3.0)


def t(values, dtype=torch.float32) -> torch.Tensor:
    return torch.tensor(values, dtype=dtype)


def row(*values) -> torch.Tensor:
    """A (1,1,1,W) map."""
    return t([[[list(values)]]])


def vectors(*vecs) -> torch.Tensor:
    """(1,3,1,W) from W 3-vectors."""
    return t(vecs).T.reshape(1, 3, 1, len(vecs))


def at_angle(deg: float, scale: float = 1.0) -> list[float]:
    """A vector at `deg` degrees from +z."""
    r = math.radians(deg)
    return [scale * math.sin(r), 0.0, scale * math.cos(r)]


# --------------------------------------------------------------------------------------------- losses


def test_task_channels():
    fixed = {t: task_channels(t, 40) for t in (NORMAL, DEPTH, KEYPOINTS, EDGES)}
    assert fixed == {"normal": 3, "depth_zbuffer": 1, "keypoints2d": 1, "edge_texture": 1}
    assert task_channels(SEG, 40) == 40 and task_channels(SEG, 13) == 13
    with pytest.raises(ValueError, match="unknown task"):
        task_channels("albedo", 3)


def seg_pred() -> torch.Tensor:
    # pixel 0: p(class 1) = 3/4; pixel 1: uniform
    return t([[[[0.0, 0.0]], [[math.log(3.0), 0.0]]]]).requires_grad_()


def test_seg_loss_nearest_downsampling_picks_floor_indices():
    # (1,4) GT -> (1,2) prediction: legacy nearest reads columns 0 and 2 (row 0).
    gt = t([[[[1, 0, 0, 1], [0, 0, 1, 1]]]], torch.int64)
    loss = task_loss(SEG, seg_pred(), {SEG: gt})
    assert loss.item() == pytest.approx((LN43 + LN2) / 2, abs=1e-6)
    # (B,H,W) labels are accepted as well
    assert task_loss(SEG, seg_pred(), {SEG: gt[:, 0]}).item() == pytest.approx(loss.item())


def test_seg_loss_ignore_and_class_weights():
    gt = t([[[[1, 0, 255, 1]]]], torch.int64)  # column 2 -> ignored
    assert task_loss(SEG, seg_pred(), {SEG: gt}).item() == pytest.approx(LN43, abs=1e-6)
    gt = t([[[[1, 0, 0, 1]]]], torch.int64)
    w = t([1.0, 3.0])
    loss = task_loss(SEG, seg_pred(), {SEG: gt}, class_weights=w)
    assert loss.item() == pytest.approx((3 * LN43 + LN2) / 4, abs=1e-6)
    # same as CrossEntropyLoss(weight, ignore_index=255) on the downsampled labels
    expected = F.cross_entropy(seg_pred(), t([[[1, 0]]], torch.int64), weight=w, ignore_index=255)
    assert loss.item() == pytest.approx(expected.item(), abs=1e-6)


def test_seg_loss_out_of_range_labels_are_ignored():
    gt = t([[[[1, 0, 7, 1]]]], torch.int64)  # 7 >= C would crash the reference; treated as ignore
    assert task_loss(SEG, seg_pred(), {SEG: gt}).item() == pytest.approx(LN43, abs=1e-6)


def test_normal_loss_raw_gt_invalid_and_mask():
    pred = vectors([0, 3, 3], [1, 0, 0]).requires_grad_()
    gt = vectors([0, 0, 200], [255, 255, 255])  # raw NYUv2-style values; pixel 1 invalid
    loss = task_loss(NORMAL, pred, {NORMAL: gt})
    assert loss.item() == pytest.approx(1 - 1 / math.sqrt(2), abs=1e-6)
    # one channel at 255 is enough to invalidate (max over channels)
    gt = vectors([0, 0, 200], [0, 0, 255])
    assert task_loss(NORMAL, pred, {NORMAL: gt}).item() == pytest.approx(1 - 1 / math.sqrt(2), abs=1e-6)
    gt = vectors([0, 0, 200], [10, 0, 0])  # pixel 1 now perfect
    assert task_loss(NORMAL, pred, {NORMAL: gt}).item() == pytest.approx((1 - 1 / math.sqrt(2)) / 2, abs=1e-6)
    mask = vectors([1, 1, 1], [0, 0, 0])  # Taskonomy-style 3-channel mask drops pixel 1
    batch = {NORMAL: gt, "normal_mask": mask}
    assert task_loss(NORMAL, pred, batch).item() == pytest.approx(1 - 1 / math.sqrt(2), abs=1e-6)
    # only directions matter
    assert task_loss(NORMAL, pred * 7, batch).item() == pytest.approx(1 - 1 / math.sqrt(2), abs=1e-6)


def test_depth_loss_valid_pixels_and_downsampling():
    # (1,4) GT -> (1,3) prediction: legacy nearest reads columns floor(j*4/3) = 0, 1, 2 (not 0, 2, 3).
    gt = row(5.0, 1.0, 2.0, 9.0)
    assert task_loss(DEPTH, row(5.0, 1.0, 2.0), {DEPTH: gt}).item() == 0.0
    # NYUv2: GT 0 = invalid, huge errors there do not count
    gt = row(2.0, 0.0, 1.0)
    assert task_loss(DEPTH, row(1.0, 100.0, 3.0), {DEPTH: gt}).item() == pytest.approx(1.5)
    # with a mask (Taskonomy): valid = GT != 255 and mask == 1; GT 0 is then a real value
    gt, mask = row(255.0, 0.0, 3.0), row(1.0, 1.0, 0.0)
    batch = {DEPTH: gt, "depth_zbuffer_mask": mask}
    assert task_loss(DEPTH, row(1.0, 1.0, 1.0), batch).item() == pytest.approx(1.0)


@pytest.mark.parametrize("task", [KEYPOINTS, EDGES])
def test_keypoint_edge_loss_ignores_255(task):
    loss = task_loss(task, row(0.5, 0.5, 0.5), {task: row(1.0, 255.0, 0.25)})
    assert loss.item() == pytest.approx(0.375)


@pytest.mark.parametrize("task", [SEG, NORMAL, DEPTH, KEYPOINTS, EDGES])
def test_all_invalid_batch_gives_zero_with_graph(task):
    channels = task_channels(task, 3)
    pred = torch.randn(2, channels, 3, 3, requires_grad=True)
    if task == SEG:
        gt = torch.full((2, 1, 6, 6), 255, dtype=torch.int64)
    elif task == DEPTH:
        gt = torch.zeros(2, 1, 6, 6)
    else:
        gt = torch.full((2, task_channels(task, 1), 6, 6), 255.0)
    loss = task_loss(task, pred, {task: gt})
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert torch.equal(pred.grad, torch.zeros_like(pred))


def test_seg_loss_all_invalid_with_class_weights():
    pred = torch.randn(1, 3, 2, 2, requires_grad=True)
    loss = task_loss(SEG, pred, {SEG: torch.full((1, 2, 2), 255)}, class_weights=t([1.0, 2.0, 3.0]))
    loss.backward()
    assert loss.item() == 0.0 and torch.isfinite(pred.grad).all()


def test_unknown_task_loss():
    with pytest.raises(ValueError, match="unknown task"):
        task_loss("albedo", torch.zeros(1, 1, 1, 1), {"albedo": torch.zeros(1, 1, 1, 1)})


# -------------------------------------------------------------------------------------- NYUv2 metrics


def logits_for(labels, num_classes: int) -> torch.Tensor:
    """(B,C,H,W) logits whose argmax is `labels` (B,H,W)."""
    return F.one_hot(t(labels, torch.int64), num_classes).permute(0, 3, 1, 2).float()


def test_miou_parity_skips_zero_tp_class_standard_does_not():
    m = TaskMetrics([SEG], num_classes=3)
    m.update({SEG: logits_for([[[0, 0, 0, 0]]], 3)}, {SEG: t([[[[0, 0, 1, 1]]]], torch.int64)})
    # class 0: TP 2, union 4 -> 0.5; class 1: TP 0, union 2 -> 0; class 2 absent everywhere
    assert m.compute()[SEG] == {"mIoU": 0.5, "Pixel Acc": 0.5}
    assert m.compute("standard")[SEG] == {"mIoU": 0.25, "Pixel Acc": 0.5}


def test_pixel_acc_batch_weighted_vs_pixel_weighted():
    m = TaskMetrics([SEG], num_classes=2)
    # batch 1: B=2, 4 labelled pixels, all right -> acc 1, weight 2
    m.update({SEG: logits_for([[[0, 0]], [[1, 1]]], 2)}, {SEG: t([[[0, 0]], [[1, 1]]], torch.int64)})
    # batch 2: B=1, 1 labelled pixel, wrong -> acc 0, weight 1
    m.update({SEG: logits_for([[[1, 1]]], 2)}, {SEG: t([[[0, 255]]], torch.int64)})
    # batch 3: nothing labelled -> skipped (the reference would record NaN)
    m.update({SEG: logits_for([[[1, 1]]], 2)}, {SEG: t([[[255, 255]]], torch.int64)})
    parity, standard = m.compute()[SEG], m.compute("standard")[SEG]
    assert parity["Pixel Acc"] == round(2 / 3, 4)
    assert standard["Pixel Acc"] == 0.8
    # confusion: (0,0)=2, (1,1)=2, (0,1)=1 -> IoU 2/3 for both classes
    assert parity["mIoU"] == standard["mIoU"] == round(2 / 3, 4)


def test_prediction_upsampled_with_legacy_nearest():
    # width 3 -> 4: legacy nearest reads columns 0, 0, 1, 2 ("nearest-exact" would read 0, 1, 1, 2)
    m = TaskMetrics([SEG], num_classes=2)
    m.update({SEG: logits_for([[[0, 1, 1]]], 2)}, {SEG: t([[[0, 0, 1, 1]]], torch.int64)})
    assert m.compute()[SEG]["Pixel Acc"] == 1.0
    # height too: (1,1) prediction covers a whole (2,4) GT
    m = TaskMetrics([DEPTH], num_classes=2)
    m.update({DEPTH: row(2.0)}, {DEPTH: torch.full((1, 1, 2, 4), 2.0)})
    assert m.compute()[DEPTH]["abs_err"] == 0.0


def test_normal_angles_thresholds_median_and_invalid():
    m = TaskMetrics([NORMAL], num_classes=1)
    gt = vectors(*[[0, 0, 100]] * 5, [255, 0, 0])  # raw-style GT; last pixel invalid
    pred = vectors(*(at_angle(a, 3.0) for a in (0, 10, 20, 25, 45)), [0, 1, 0])
    m.update({NORMAL: pred}, {NORMAL: gt})
    out = m.compute()[NORMAL]
    assert out["Angle Mean"] == pytest.approx(20.0, abs=1e-3)
    assert out["Angle Median"] == pytest.approx(20.0, abs=1e-3)
    assert (out["Angle 11.25"], out["Angle 22.5"], out["Angle 30"]) == (40.0, 60.0, 80.0)
    # a second batch makes the count even: numpy-style median = mean of the two middle angles
    m.update({NORMAL: vectors(at_angle(35))}, {NORMAL: vectors([0, 0, 1])})
    out = m.compute()[NORMAL]
    assert out["Angle Median"] == pytest.approx(22.5, abs=1e-3)
    assert out["Angle Mean"] == pytest.approx(22.5, abs=1e-3)
    assert out["Angle 30"] == round(100 * 4 / 6, 4)
    assert m.compute("standard")[NORMAL] == out  # same definition in both modes


def test_normal_metric_mask_and_unit_normals():
    m = TaskMetrics([NORMAL], num_classes=1)
    gt = vectors([0, 0, 1], [0, 0, -1], [0, 1, 0])  # synthetic unit normals, negative values fine
    pred = vectors(at_angle(10), [0, 0, -1], [0, -1, 0])
    mask = vectors([1, 1, 1], [1, 1, 1], [0, 0, 0])
    m.update({NORMAL: pred}, {NORMAL: gt, "normal_mask": mask})
    out = m.compute()[NORMAL]
    assert out["Angle Mean"] == pytest.approx(5.0, abs=1e-3)
    assert out["Angle 11.25"] == 100.0


def depth_batches():
    # batch 1 (B=1): GT 1 everywhere but one invalid pixel (0); ratios 1, 1.25, 1.5, 1.9, 3
    b1 = ({DEPTH: row(1.0, 1.25, 1.5, 1.9, 3.0, 7.0)}, {DEPTH: row(1.0, 1.0, 1.0, 1.0, 1.0, 0.0)})
    # batch 2 (B=3): one valid pixel, abs 1, rel 0.5, ratio 2
    b2 = ({DEPTH: t([1.0, 5.0, 5.0]).view(3, 1, 1, 1)}, {DEPTH: t([2.0, 0.0, 0.0]).view(3, 1, 1, 1)})
    return b1, b2


def test_depth_batch_weighted_vs_pixel_weighted_and_sigma():
    m = TaskMetrics([DEPTH], num_classes=1)
    for preds, batch in depth_batches():
        m.update(preds, batch)
    parity, standard = m.compute()[DEPTH], m.compute("standard")[DEPTH]
    # per batch: abs 3.65/5 = 0.73 (weight 1) and 1 (weight 3); rel 0.73 and 0.5
    assert parity["abs_err"] == round((0.73 + 3 * 1.0) / 4, 4)
    assert parity["rel_err"] == round((0.73 + 3 * 0.5) / 4, 4)
    assert standard["abs_err"] == round(4.65 / 6, 4)
    assert standard["rel_err"] == round(4.15 / 6, 4)
    # 6 valid pixels; ratio 1.25 counts (<=, as the reference's np.less_equal)
    for out in (parity, standard):
        assert out["sigma_1.25"] == round(100 * 2 / 6, 4)
        assert out["sigma_1.25^2"] == 50.0
        assert out["sigma_1.25^3"] == round(100 * 4 / 6, 4)


def test_depth_negative_prediction_quirk_is_kept():
    # max(p/g, g/p) is negative for p < 0, so the reference counts it as within every threshold
    m = TaskMetrics([DEPTH], num_classes=1)
    m.update({DEPTH: row(-1.0)}, {DEPTH: row(1.0)})
    assert m.compute()[DEPTH]["sigma_1.25"] == 100.0
    # the standard definitions count a non-positive prediction as outside every threshold
    assert m.compute("standard")[DEPTH]["sigma_1.25^3"] == 0.0


def test_keypoint_edge_metrics_nyuv2_style():
    m = TaskMetrics([KEYPOINTS, EDGES], num_classes=1)
    preds = {KEYPOINTS: row(0.5, 0.5), EDGES: row(0.0, 0.0)}
    m.update(preds, {KEYPOINTS: row(1.0, 255.0), EDGES: row(0.2, 0.4)})
    assert m.compute() == {KEYPOINTS: {"key_err": 0.5}, EDGES: {"edge_err": 0.3}}


# ----------------------------------------------------------------------------------- Taskonomy metrics


def test_taskonomy_seg_err_class_weighted_and_batch_weighted():
    w = t([1.0, 3.0])
    m = TaskMetrics([SEG], num_classes=2, style="taskonomy", class_weights=w)
    # batch 1 (B=1): CE ln(4/3) on a class-1 pixel (weight 3), ln 2 on a class-0 pixel; 255 ignored
    pred1 = t([[[[0.0, 0.0, 5.0]], [[math.log(3.0), 0.0, 0.0]]]])
    m.update({SEG: pred1}, {SEG: t([[[1, 0, 255]]], torch.int64)})
    # batch 2 (B=2): one class-0 pixel with CE ln 2 (weight 1); the other image unlabelled
    m.update({SEG: torch.zeros(2, 2, 1, 1)}, {SEG: t([[[0]], [[255]]], torch.int64)})
    err1, err2 = (3 * LN43 + LN2) / 4, LN2
    assert m.compute()[SEG] == {"err": round((err1 + 2 * err2) / 3, 4)}
    assert m.compute("standard")[SEG] == {"err": round((3 * LN43 + 2 * LN2) / 5, 4)}


def test_taskonomy_normal_depth_with_masks():
    m = TaskMetrics([NORMAL, DEPTH], num_classes=17, style="taskonomy")
    gt_n = vectors([0, 0, 1], [0, 0, 1], [0, 0, 1], [255, 255, 255])
    pred_n = vectors(at_angle(0), at_angle(60), at_angle(180), [0, 0, 1])
    mask_n = vectors([1, 1, 1], [1, 1, 1], [0, 0, 0], [1, 1, 1])
    gt_d, mask_d = row(0.5, 255.0, 0.2, 0.0), row(1.0, 1.0, 0.0, 1.0)
    pred_d = row(0.25, 0.0, 0.0, 0.5)
    m.update({NORMAL: pred_n, DEPTH: pred_d},
             {NORMAL: gt_n, "normal_mask": mask_n, DEPTH: gt_d, "depth_zbuffer_mask": mask_d})
    out = m.compute()
    assert out[NORMAL] == {"cosine_similarity": 0.75}  # mean of cos 1 and cos 60°
    assert out[DEPTH] == {"abs_err": round((0.25 + 0.5) / 2, 4)}  # GT 0 is valid under a mask


def test_taskonomy_keypoint_batch_weighting():
    m = TaskMetrics([KEYPOINTS], num_classes=17, style="taskonomy")
    m.update({KEYPOINTS: row(0.5, 0.5)}, {KEYPOINTS: row(1.0, 255.0)})  # B=1, err 0.5
    m.update({KEYPOINTS: torch.zeros(2, 1, 1, 1)}, {KEYPOINTS: t([0.1, 255.0]).view(2, 1, 1, 1)})  # B=2
    assert m.compute()[KEYPOINTS] == {"key_err": round((0.5 + 2 * 0.1) / 3, 4)}
    assert m.compute("standard")[KEYPOINTS] == {"key_err": 0.3}


@pytest.mark.parametrize("style", ["nyuv2", "taskonomy"])
def test_metric_names_match_directions(style):
    tasks = [SEG, NORMAL, DEPTH, KEYPOINTS, EDGES]
    m = TaskMetrics(tasks, num_classes=4, style=style)
    preds, batch = random_batch(0, 4)
    m.update(preds, batch)
    out = m.compute()
    dirs = metric_directions(style, tasks)
    assert {k: set(v) for k, v in out.items()} == {k: set(v) for k, v in dirs.items()}
    assert m.directions() == dirs
    assert all(round(v, 4) == v for values in out.values() for v in values.values())


# --------------------------------------------------------------------------- state, devices, errors


def random_batch(seed: int, num_classes: int, b: int = 2, size: int = 12, feat: int = 5):
    g = torch.Generator().manual_seed(seed)
    seg = torch.randint(0, num_classes, (b, 1, size, size), generator=g)
    seg[:, :, :2] = 255
    depth = torch.rand(b, 1, size, size, generator=g) + 0.1
    depth[:, :, :, :2] = 0.0
    normal = torch.randint(0, 255, (b, 3, size, size), generator=g).float()
    normal[:, :, -1] = 255.0
    key = torch.rand(b, 1, size, size, generator=g)
    key[..., 0, 0] = 255.0
    batch = {SEG: seg, NORMAL: normal, DEPTH: depth, KEYPOINTS: key, EDGES: key.clone()}
    preds = {SEG: torch.randn(b, num_classes, feat, feat, generator=g),
             NORMAL: torch.randn(b, 3, feat, feat, generator=g),
             DEPTH: torch.rand(b, 1, feat, feat, generator=g) + 0.1,
             KEYPOINTS: torch.rand(b, 1, feat, feat, generator=g),
             EDGES: torch.rand(b, 1, feat, feat, generator=g)}
    return preds, batch


@pytest.mark.parametrize("style", ["nyuv2", "taskonomy"])
def test_state_dict_merge_equals_single_pass(style):
    tasks = [SEG, NORMAL, DEPTH, KEYPOINTS, EDGES]
    data = [random_batch(s, 5) for s in range(3)]
    whole, part_a, part_b = (TaskMetrics(tasks, 5, style=style) for _ in range(3))
    for i, (preds, batch) in enumerate(data):
        whole.update(preds, batch)
        (part_a if i < 2 else part_b).update(preds, batch)
    part_a.merge(part_b.state_dict())
    for definitions in ("parity", "standard"):
        assert part_a.compute(definitions) == whole.compute(definitions)
    fresh = TaskMetrics(tasks, 5, style=style)
    fresh.merge(whole.state_dict())
    assert fresh.compute() == whole.compute()
    with pytest.raises(ValueError, match="lacks"):
        TaskMetrics([SEG], 5, style=style).merge({})


def test_reset_forgets_batches():
    m = TaskMetrics([SEG, DEPTH, NORMAL], 5)
    preds, batch = random_batch(1, 5)
    m.update(*random_batch(2, 5))
    m.reset()
    m.update(preds, batch)
    fresh = TaskMetrics([SEG, DEPTH, NORMAL], 5)
    fresh.update(preds, batch)
    assert m.compute() == fresh.compute()


def test_bf16_predictions_and_grad_tensors():
    preds, batch = random_batch(3, 4)
    m = TaskMetrics(list(preds), 4)
    m.update({k: v.bfloat16().requires_grad_() for k, v in preds.items()}, batch)
    assert all(math.isfinite(v) for values in m.compute().values() for v in values.values())
    for task, pred in preds.items():
        loss = task_loss(task, pred.bfloat16().requires_grad_(), batch)
        assert torch.isfinite(loss)


def test_bad_arguments():
    with pytest.raises(ValueError, match="style"):
        TaskMetrics([SEG], 3, style="cityscapes")
    with pytest.raises(ValueError, match="definitions"):
        TaskMetrics([SEG], 3, definitions="textbook")
    with pytest.raises(ValueError, match="num_classes"):
        TaskMetrics([SEG], 3).update({SEG: torch.zeros(1, 4, 2, 2)}, {SEG: torch.zeros(1, 1, 2, 2)})


# ------------------------------------------------------------------- random cross-check (§6.2 oracle)


def oracle_nyuv2(data, num_classes: int) -> dict:
    """The §6.2 parity definitions written the obvious way: numpy, boolean indexing, per-batch lists."""
    conf = np.zeros((num_classes, num_classes))
    accs, abs_e, rel_e, sizes, ratios, cos_all = [], [], [], [], [], []
    for preds, batch in data:
        sizes.append(batch[SEG].shape[0])
        size = batch[SEG].shape[-2:]
        up = {k: F.interpolate(v, size=size, mode="nearest") for k, v in preds.items()}
        gt = batch[SEG].numpy().reshape(-1)
        lab = up[SEG].argmax(1).numpy().reshape(-1)
        keep = gt < num_classes
        np.add.at(conf, (gt[keep], lab[keep]), 1)
        accs.append((gt[keep] == lab[keep]).mean())
        g = batch[NORMAL].permute(0, 2, 3, 1).reshape(-1, 3).numpy()
        p = up[NORMAL].permute(0, 2, 3, 1).reshape(-1, 3).numpy()
        keep = g.max(1) != 255
        g, p = g[keep], p[keep]
        cos = (g * p).sum(1) / np.linalg.norm(g, axis=1) / np.linalg.norm(p, axis=1)
        cos_all.append(np.clip(cos, -1, 1))
        g, p = batch[DEPTH].numpy(), up[DEPTH].numpy()
        keep = g > 3e-5
        g, p = g[keep], p[keep]
        abs_e.append(np.abs(p - g).mean())
        rel_e.append((np.abs(p - g) / g).mean())
        ratios.append(np.maximum(p / g, g / p))
    w = np.array(sizes) / sum(sizes)
    tp = np.diag(conf)
    iou = tp / (conf.sum(0) + conf.sum(1) - tp)
    ang = np.degrees(np.arccos(np.concatenate(cos_all)))
    r = np.concatenate(ratios)
    return {
        SEG: {"mIoU": iou[tp != 0].mean(), "Pixel Acc": (np.array(accs) * w).sum()},
        NORMAL: {"Angle Mean": ang.mean(), "Angle Median": np.median(ang),
                 **{f"Angle {a:g}": 100 * (ang <= a).mean() for a in (11.25, 22.5, 30.0)}},
        DEPTH: {"abs_err": (np.array(abs_e) * w).sum(), "rel_err": (np.array(rel_e) * w).sum(),
                "sigma_1.25": 100 * (r <= 1.25).mean(), "sigma_1.25^2": 100 * (r <= 1.25**2).mean(),
                "sigma_1.25^3": 100 * (r <= 1.25**3).mean()},
    }


def test_parity_metrics_match_straightforward_oracle():
    data = []
    for s in range(3):
        preds, batch = random_batch(10 + s, 6, b=s + 1)
        tasks = (SEG, NORMAL, DEPTH)
        data.append(({k: preds[k] for k in tasks}, {k: batch[k] for k in tasks}))
    m = TaskMetrics([SEG, NORMAL, DEPTH], 6)
    for preds, batch in data:
        m.update(preds, batch)
    got, want = m.compute(), oracle_nyuv2(data, 6)
    for task, values in want.items():
        for name, value in values.items():
            assert got[task][name] == pytest.approx(value, abs=2e-4), (task, name)


# ------------------------------------------------------------------------------------------ the task registry
# Every per-task fact is declared once in main.task_registry; these tests check each spec is complete, that an
# unknown name fails clearly everywhere, and that every consumer reads the registry (and so agrees with it).

ALL_TASKS = (SEG, NORMAL, DEPTH, KEYPOINTS, EDGES)


def test_registry_holds_the_five_reference_tasks_in_order():
    assert known_tasks() == tuple(TASKS) == ALL_TASKS
    assert DEFAULT_TASKS == (SEG, NORMAL, DEPTH)
    assert [task_spec(t).name for t in ALL_TASKS] == list(ALL_TASKS)


@pytest.mark.parametrize("call", [
    lambda: task_spec("albedo"),
    lambda: task_channels("albedo", 3),
    lambda: task_loss("albedo", torch.zeros(1, 1, 2, 2), {"albedo": torch.zeros(1, 1, 2, 2)}),
    lambda: TaskMetrics([SEG, "albedo"], 3),
    lambda: metric_directions("nyuv2", [SEG, "albedo"]),
])
def test_unknown_task_is_one_clear_user_error(call):
    with pytest.raises(UnknownTaskError) as err:
        call()
    assert isinstance(err.value, UserError) and isinstance(err.value, ValueError)  # exit 2, one line in the CLIs
    assert str(err.value) == f"unknown task 'albedo'; expected one of {', '.join(ALL_TASKS)}"


def test_config_rejects_an_unknown_task_with_the_registry_choices():
    with pytest.raises(ConfigError, match="--tasks 'albedo' is not known; choose one of: " + ", ".join(ALL_TASKS)):
        Config(tasks=["albedo"]).check()
    assert Config().tasks == list(DEFAULT_TASKS)
    Config(tasks=list(ALL_TASKS)).check()


@pytest.mark.parametrize("task", ALL_TASKS)
def test_every_task_declares_loss_metrics_directions_tag_and_datasets(task):
    spec = task_spec(task)
    assert callable(spec.loss) and callable(spec.accumulator)
    assert spec.tag and spec.label and spec.selection_weight > 0
    assert spec.datasets and set(spec.datasets) <= set(DATASETS)
    assert spec.channels is None or spec.channels > 0
    for style in STYLES:
        metrics = spec.metrics[style]
        assert metrics and all(m.direction in (1, -1) and m.label and m.scale > 0 for m in metrics)
        assert len({m.name for m in metrics}) == len(metrics)
        assert spec.directions(style) == {m.name: m.direction for m in metrics}


@pytest.mark.parametrize("style", STYLES)
def test_accumulators_report_exactly_the_declared_metrics_in_order(style):
    preds, batch = random_batch(3, 5)
    m = TaskMetrics(ALL_TASKS, 5, style=style)
    m.update(preds, batch)
    for definitions in ("parity", "standard"):
        got = m.compute(definitions)
        assert list(got) == list(ALL_TASKS)
        for task in ALL_TASKS:
            assert list(got[task]) == [x.name for x in task_spec(task).metrics[style]], (task, definitions)
    assert m.directions() == metric_directions(style) == {t: task_spec(t).directions(style) for t in ALL_TASKS}


def test_only_per_class_tasks_are_checked_against_num_classes():
    assert [t for t in ALL_TASKS if task_spec(t).channels is None] == [SEG]
    assert all(task_channels(t, 7) == task_spec(t).out_channels(7) for t in ALL_TASKS)


def test_selection_weight_halves_segmentation_only():
    assert {t: task_spec(t).selection_weight for t in ALL_TASKS} == {SEG: 0.5, NORMAL: 1.0, DEPTH: 1.0,
                                                                      KEYPOINTS: 1.0, EDGES: 1.0}


def test_register_task_rejects_duplicates_and_incomplete_specs():
    seg = task_spec(SEG)
    with pytest.raises(ValueError, match="registered twice"):
        register_task(seg)
    with pytest.raises(ValueError, match="no metrics for style taskonomy"):
        register_task(dataclasses.replace(seg, name="half", metrics={"nyuv2": seg.metrics["nyuv2"]}))
    bad = {style: (Metric("x", 0, "X"),) for style in STYLES}
    with pytest.raises(ValueError, match="direction of x"):
        register_task(dataclasses.replace(seg, name="flat", metrics=bad))
    assert "half" not in TASKS and "flat" not in TASKS


def test_a_registered_task_reaches_every_consumer():
    err = Metric("albedo_err", -1, "Alb")
    spec = TaskSpec("albedo", 3, l1_ignore_loss, l1_accumulator(err.name), dict.fromkeys(STYLES, (err,)),
                    tag="Alb", label="albedo", datasets=("synthetic",))
    register_task(spec)
    try:
        Config(tasks=[SEG, "albedo"]).check()
        assert component_tag("albedo") == "Alb" and component_tags()["albedo"] == "Alb"
        assert task_channels("albedo", 40) == 3
        assert metric_directions("nyuv2", ["albedo"]) == {"albedo": {"albedo_err": -1}}
        m = TaskMetrics(["albedo"], 2)
        m.update({"albedo": row(0.5, 0.5)}, {"albedo": row(1.0, 255.0)})
        assert m.compute() == {"albedo": {"albedo_err": 0.5}}
        assert task_loss("albedo", row(0.5, 0.5), {"albedo": row(1.0, 255.0)}).item() == pytest.approx(0.5)
    finally:
        TASKS.pop("albedo")


def test_monitor_tags_are_the_reference_names_from_the_registry():
    assert component_tags() == {"backbone": "Backbone", SEG: "Seg", NORMAL: "Nor", DEPTH: "Dep",
                                KEYPOINTS: "Key", EDGES: "Edge"}
    assert [component_tag(t) for t in ("backbone", *ALL_TASKS, "other")] == [
        "Backbone", "Seg", "Nor", "Dep", "Key", "Edge", "other"]


def test_plots_map_short_tags_back_through_the_registry():
    from bench import plots

    assert [plots._component_name(component_tag(t)) for t in ("backbone", *ALL_TASKS)] == ["backbone", *ALL_TASKS]
    assert plots._ordered(["zz", EDGES, "backbone", SEG]) == ["backbone", SEG, EDGES, "zz"]


def test_datasets_provide_the_tasks_whose_spec_lists_them():
    for dataset in DATASETS:
        assert dataset_tasks(dataset) == tuple(t for t in TASKS if dataset in task_spec(t).datasets), dataset
    info = DatasetInfo("nyuv2", (SEG, NORMAL, DEPTH), 40, "nyuv2")
    assert info.task_channels == {SEG: 40, NORMAL: 3, DEPTH: 1}


def test_comparison_columns_and_checkpoint_come_from_the_registry():
    from bench import compare_protocol, compare_report, gpu_check

    assert compare_protocol.TASKS == DEFAULT_TASKS == tuple(load_yaml(compare_protocol.PROTOCOL_CONFIG)["tasks"])
    assert compare_protocol.CKPT == gpu_check.CKPT == "segment_semantic_normal_depth_zbuffer.model"
    # the layout of the printed Table 2: (task, metric, header, scale), then the Δ_T after each task's last metric
    assert compare_report.COLUMNS == [
        (SEG, "mIoU", "mIoU↑", 100.0), (SEG, "Pixel Acc", "PixAcc↑", 100.0),
        (NORMAL, "Angle Mean", "Mean↓", 1.0), (NORMAL, "Angle Median", "Median↓", 1.0),
        (NORMAL, "Angle 11.25", "11.25↑", 1.0), (NORMAL, "Angle 22.5", "22.5↑", 1.0), (NORMAL, "Angle 30", "30↑", 1.0),
        (DEPTH, "abs_err", "Abs↓", 1.0), (DEPTH, "rel_err", "Rel↓", 1.0), (DEPTH, "sigma_1.25", "δ1.25↑", 1.0),
        (DEPTH, "sigma_1.25^2", "δ1.25²↑", 1.0), (DEPTH, "sigma_1.25^3", "δ1.25³↑", 1.0)]
    assert compare_report.TASK_DELTA_AFTER == {(SEG, "Pixel Acc"), (NORMAL, "Angle 30"), (DEPTH, "sigma_1.25^3")}
    assert compare_report.COMPONENTS == [("backbone", "Sp. backbone"), (SEG, "Sp. seg"), (NORMAL, "Sp. normal"),
                                         (DEPTH, "Sp. depth")]
    assert (compare_report.TASK_LABELS, compare_report.SPARSITY_LABELS, compare_report.DELTA_LABELS) == (
        "seg / normal / depth", "bb / seg / nor / dep", "Δ_T1 / Δ_T2 / Δ_T3")
