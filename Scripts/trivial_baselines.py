"""Trivial predictors on the synthetic benchmark: is the benchmark learnable at all?

The majority class (segmentation), the mean depth and the mean normal of the TRAINING split, predicted
everywhere on the TEST split and scored with the same metrics as the models.  A trained dense model must beat
these clearly, or the benchmark cannot rank pruning methods.

    python Scripts/trivial_baselines.py --config configs/synthetic.yaml --json logs/trivial_baselines.json
"""

from __future__ import annotations

import argparse
import json

import torch

from main.atomic import atomic_write_text
from main.cli.args import parse_args
from main.data import build_dataset, dataset_info
from main.errors import cli_main
from main.output_file import RESULTS_JSON, check_output_file
from main.tables import format_table
from main.task_registry import DEPTH, NORMAL, SEG
from main.tasks import TaskMetrics

#: The tasks a trivial predictor exists for (the others are left out of the table).
TRIVIAL_TASKS = (SEG, NORMAL, DEPTH)


def train_statistics(dataset, tasks, num_classes) -> dict[str, torch.Tensor]:
    counts = torch.zeros(num_classes, dtype=torch.float64)
    depth_sum, depth_n = 0.0, 0
    normal_sum = torch.zeros(3, dtype=torch.float64)
    for i in range(len(dataset)):
        s = dataset[i]
        if SEG in tasks:
            seg = s[SEG].flatten()
            counts += torch.bincount(seg[seg < num_classes], minlength=num_classes).double()
        if DEPTH in tasks:
            d = s[DEPTH]
            depth_sum += float(d[d > 0].double().sum())
            depth_n += int((d > 0).sum())
        if NORMAL in tasks:
            normal_sum += s[NORMAL].double().flatten(1).sum(1)
    return {SEG: counts.argmax(), DEPTH: torch.tensor(depth_sum / max(depth_n, 1)),
            NORMAL: normal_sum / normal_sum.norm()}


def trivial_prediction(task: str, stats: dict, gt: torch.Tensor, num_classes: int) -> torch.Tensor:
    b, _, h, w = gt.shape if gt.dim() == 4 else (gt.shape[0], 1, *gt.shape[-2:])
    if task == SEG:
        logits = torch.zeros(b, num_classes, h, w)
        logits[:, int(stats[task])] = 1.0
        return logits
    if task == NORMAL:
        return stats[task].float().view(1, 3, 1, 1).expand(b, 3, h, w)
    return stats[task].float().view(1, 1, 1, 1).expand(b, 1, h, w)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="write the metrics as JSON")
    ns, rest = parser.parse_known_args(argv)
    cfg, _ = parse_args(rest)
    if ns.json:  # before the work: a free name or an earlier results JSON, never a checkpoint, device or link
        check_output_file(ns.json, "--json", RESULTS_JSON, overwrite=cfg.overwrite)
    info = dataset_info(cfg)
    tasks = [t for t in info.tasks if t in TRIVIAL_TASKS]
    stats = train_statistics(build_dataset(cfg, "train"), tasks, info.num_classes)
    test = build_dataset(cfg, "test")
    metrics = TaskMetrics(tasks, info.num_classes, info.metric_style, cfg.metric_definitions)
    loader = torch.utils.data.DataLoader(test, batch_size=cfg.batch_size, shuffle=False)
    for batch in loader:
        metrics.update({t: trivial_prediction(t, stats, batch[t], info.num_classes) for t in tasks}, batch)
    result = metrics.compute()
    print(format_table([("trivial", result)]))
    if ns.json:
        atomic_write_text(ns.json, json.dumps({"metrics": result, "predictors": {
            SEG: f"majority class {int(stats[SEG])}",
            DEPTH: f"mean depth {float(stats[DEPTH]):.4f}",
            NORMAL: f"mean normal {[round(v, 4) for v in stats[NORMAL].tolist()]}"}}, indent=1))
    return 0


if __name__ == "__main__":
    cli_main(main)
