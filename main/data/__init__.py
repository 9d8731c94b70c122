"""Datasets behind one contract: every split yields the same batch dict (``input`` and one tensor per task,
docs/datasets.md).

``dataset_info`` says what the trainer must know (tasks, output channels, metric style, class weights) so the
trainer never branches on the dataset; ``build_dataset`` returns a split.  The real datasets (NYUv2,
Tiny-Taskonomy) are read from ``--data_root`` and raise ``DatasetError`` (a ``UserError``: one line, exit 2)
for a missing or malformed folder.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor
from torch.utils.data import Dataset

from ..config import Config, ConfigError
from ..tasks import task_channels
from .errors import DatasetError

__all__ = ["DatasetError", "DatasetInfo", "build_dataset", "dataset_info", "dataset_tasks", "verify_dataset"]


@dataclass
class DatasetInfo:
    name: str
    tasks: tuple[str, ...]
    num_classes: int
    metric_style: str  # "nyuv2" | "taskonomy": which metric set TaskMetrics computes
    class_weights: Tensor | None = None
    class_names: tuple[str, ...] = field(default_factory=tuple)

    @property
    def task_channels(self) -> dict[str, int]:
        return {t: task_channels(t, self.num_classes) for t in self.tasks}


def dataset_tasks(name: str) -> tuple[str, ...]:
    """The tasks a dataset provides."""
    if name == "nyuv2":
        from .nyuv2 import TASKS
    elif name == "taskonomy":
        from .taskonomy import TASKS
    else:
        from .synthetic import TASKS_5 as TASKS
    return TASKS


def _check_tasks(cfg: Config) -> tuple[str, ...]:
    allowed = dataset_tasks(cfg.dataset)
    unknown = [t for t in cfg.tasks if t not in allowed]
    if unknown:
        raise ConfigError(f"--tasks {' '.join(unknown)}: --dataset {cfg.dataset} provides only "
                          f"{', '.join(allowed)}")
    return tuple(cfg.tasks)


def dataset_info(cfg: Config) -> DatasetInfo:
    if cfg.dataset == "synthetic":
        from .synthetic import CLASS_NAMES

        # NYUv2-style metrics for every task (keypoints / edges report key_err / edge_err in either style).
        return DatasetInfo("synthetic", tuple(cfg.tasks), len(CLASS_NAMES), "nyuv2", None, tuple(CLASS_NAMES))
    tasks = _check_tasks(cfg)
    if cfg.dataset == "nyuv2":
        from .nyuv2 import NUM_CLASSES

        return DatasetInfo("nyuv2", tasks, NUM_CLASSES, "nyuv2")
    if cfg.dataset == "taskonomy":
        from .taskonomy import NUM_CLASSES, load_class_weights

        # The reference weighted the Taskonomy seg loss (and its error metric) by the taskbank class priors.
        weights = torch.from_numpy(load_class_weights(_root(cfg))) if "segment_semantic" in tasks else None
        return DatasetInfo("taskonomy", tasks, NUM_CLASSES, "taskonomy", weights)
    raise ConfigError(f"--dataset {cfg.dataset} is not known; choose synthetic, nyuv2 or taskonomy")


def _root(cfg: Config) -> str:
    if not cfg.data_root:
        raise ConfigError(f"--dataset {cfg.dataset} needs --data_root pointing at the dataset folder")
    from .real import check_root

    index = "nyu_v2_3task.json" if cfg.dataset == "nyuv2" else "taskonomy.json"
    return str(check_root(cfg.data_root, index))


def build_dataset(cfg: Config, split: str) -> Dataset:
    """The ``split`` ("train" | "val" | "test") of the configured dataset (real datasets: val = test data)."""
    if cfg.dataset == "synthetic":
        from .synthetic import SyntheticScenes

        length = {"train": cfg.train_size, "val": cfg.val_size, "test": cfg.test_size}[split]
        stream = split == "train" and length == 0  # --train_size 0: every training scene fresh
        return SyntheticScenes(split, tasks=tuple(cfg.tasks), size=cfg.crop_size, length=None if stream else length,
                               seed=cfg.data_seed, stream=stream)
    tasks = _check_tasks(cfg)
    if cfg.dataset == "nyuv2":
        from .nyuv2 import NYUv2

        return NYUv2(_root(cfg), split, tasks, cfg.crop_size, normals=cfg.normals, skip_bad=cfg.skip_bad_samples)
    if cfg.dataset == "taskonomy":
        from .taskonomy import Taskonomy

        return Taskonomy(_root(cfg), split, tasks, cfg.crop_size, skip_bad=cfg.skip_bad_samples)
    raise ConfigError(f"--dataset {cfg.dataset} is not known; choose synthetic, nyuv2 or taskonomy")


def verify_dataset(dataset: Dataset) -> None:
    """Fail now, not mid-run: every listed file of a file-backed split exists and its first sample decodes.

    A no-op for the synthetic scenes, and under ``--skip_bad_samples`` (bad samples are then skipped and counted).
    """
    verify = getattr(dataset, "verify", None)
    if verify is not None:
        verify()
