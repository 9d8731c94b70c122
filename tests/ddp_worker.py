"""Run under torchrun by tests: train like baseline.py, then every rank saves its own parameters."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from main.cli.args import parse_args
from main.distributed import cleanup, init_distributed
from main.trainer_setup import build_trainer


def main() -> None:
    out = Path(sys.argv[1])
    cfg, given = parse_args(sys.argv[2:])
    info, device = init_distributed(cfg.device)
    trainer = build_trainer(cfg, given, info, device)
    trainer.train()
    torch.save({k: v.detach().cpu() for k, v in trainer.model.state_dict().items()}, out / f"rank{info.rank}.pt")
    cleanup(info)


if __name__ == "__main__":
    main()
