"""The DataLoaders of a training run: the resumable training order and the fixed validation order."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset

from ..config import Config
from ..distributed import DistInfo
from .sampler import ResumableBatchSampler


def train_loader(dataset: Dataset, cfg: Config, start_batch: int, dist: DistInfo, device: torch.device) -> DataLoader:
    """Batches from ``start_batch`` of the run's seeded order (this rank's share under torchrun), so a resumed run
    sees exactly the batches the interrupted one would have."""
    sampler = ResumableBatchSampler(len(dataset), cfg.batch_size, cfg.seed, start_batch=start_batch, rank=dist.rank,
                                    world_size=dist.world_size, stream=getattr(dataset, "stream", False))
    return DataLoader(dataset, batch_sampler=sampler, num_workers=cfg.num_workers,
                      pin_memory=device.type == "cuda", generator=torch.Generator(), persistent_workers=False)


def val_loader(dataset: Dataset, cfg: Config, device: torch.device) -> DataLoader:
    """In order; with workers they persist between validations.  Its own generator: creating the iterator must
    not consume the global RNG (exact resume)."""
    workers = cfg.num_workers
    return DataLoader(dataset, batch_size=cfg.batch_size, shuffle=False, num_workers=workers,
                      generator=torch.Generator(), pin_memory=device.type == "cuda", persistent_workers=workers > 0)
