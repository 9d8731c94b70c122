"""Run under torchrun by tests: train like baseline.py, then every rank saves its own parameters."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from args import parse_args  # noqa: E402
from main.distributed import cleanup, init_distributed  # noqa: E402
from main.runner import build_trainer  # noqa: E402


def main() -> None:
    out = Path(sys.argv[1])
    cfg = parse_args(sys.argv[2:])
    info, device = init_distributed(cfg.device)
    trainer = build_trainer(cfg, cfg.explicit, info, device)
    trainer.train()
    torch.save({k: v.detach().cpu() for k, v in trainer.model.state_dict().items()}, out / f"rank{info.rank}.pt")
    cleanup(info)


if __name__ == "__main__":
    main()
