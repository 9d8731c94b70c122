"""Datasets behind one contract: every split yields the batch dict of DESIGN.md §3, keyed by task.

``dataset_info`` says what the trainer must know (tasks, output channels, metric style, class weights) so the
trainer never branches on the dataset; ``build_dataset`` returns a split.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor
from torch.utils.data import Dataset

from ..config import Config, ConfigError
from ..tasks import TASK_CHANNELS_FIXED


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
        return {t: self.num_classes if t == "segment_semantic" else TASK_CHANNELS_FIXED[t] for t in self.tasks}


def dataset_info(cfg: Config) -> DatasetInfo:
    if cfg.dataset == "synthetic":
        from .synthetic import CLASS_NAMES

        # NYUv2-style metrics for every task (keypoints / edges report key_err / edge_err in either style).
        return DatasetInfo("synthetic", tuple(cfg.tasks), len(CLASS_NAMES), "nyuv2", None, tuple(CLASS_NAMES))
    raise ConfigError(f"--dataset {cfg.dataset}: the real-dataset loaders are not in this version yet; "
                      "use --dataset synthetic")


def build_dataset(cfg: Config, split: str) -> Dataset:
    """The ``split`` ("train" | "val" | "test") of the configured dataset."""
    if cfg.dataset == "synthetic":
        from .synthetic import SyntheticScenes

        length = {"train": cfg.train_size, "val": cfg.val_size, "test": cfg.test_size}[split]
        return SyntheticScenes(split, tasks=tuple(cfg.tasks), size=cfg.crop_size, length=length,
                               seed=cfg.data_seed)
    raise ConfigError(f"--dataset {cfg.dataset}: the real-dataset loaders are not in this version yet; "
                      "use --dataset synthetic")
