"""PyTorch DDP under ``torchrun``: process-group setup and the few collectives the trainer needs.

``torchrun`` sets RANK / LOCAL_RANK / WORLD_SIZE; without them everything here is a no-op, so a plain
``python baseline.py`` is a single process.  NCCL on GPUs, gloo on CPUs.  Only rank 0 writes anything.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist

from .config import ConfigError


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device_name: str) -> tuple[DistInfo, torch.device | None]:
    """Join the process group when launched by torchrun; return the info and the device this rank must use."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistInfo(), None
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device_name != "cpu" and torch.cuda.is_available()
    if device_name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {device_name}: no CUDA GPU is visible; use --device cpu for gloo training")
    if use_cuda:
        if local_rank >= torch.cuda.device_count():
            raise ConfigError(f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} GPU(s) visible; "
                              "lower --nproc_per_node")
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return DistInfo(rank, world_size, local_rank), device


def all_reduce_mean(tensor: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Mean over ranks (a copy; the input is untouched).  Identity in a single process."""
    if not info.enabled:
        return tensor
    out = tensor.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out / info.world_size


def gather_objects(obj: object, info: DistInfo) -> list:
    """Every rank's ``obj`` (e.g. its RNG state), in rank order, on every rank."""
    if not info.enabled:
        return [obj]
    out: list = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def cleanup(info: DistInfo) -> None:
    """Leave the group together: a rank tearing down while another still talks to it aborts the other.

    Called from ``finally`` blocks: while an exception propagates the barrier is skipped, since the other ranks
    may be stuck in a different collective and would never reach it.
    """
    if info.enabled and dist.is_initialized():
        try:
            if sys.exc_info()[0] is None:
                dist.barrier()
        finally:
            dist.destroy_process_group()
