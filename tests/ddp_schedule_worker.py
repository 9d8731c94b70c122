"""Run under torchrun by tests/test_ddp_schedules.py: one pruning command on every rank, then each rank's state.

    python -m torch.distributed.run --standalone --nproc_per_node=2 tests/ddp_schedule_worker.py OUT COMMAND [flags]

COMMAND is a module of ``SOTA_methods`` (imp, lth, at_init, disparse, structured_train), run through its ``main``
exactly as ``python -m SOTA_methods.COMMAND`` would (process group joined and left by the command itself).  The
last ``Trainer`` each rank trained is recorded, and every rank saves its own final parameters, buffers and masks
to ``OUT/rank<r>.pt``, so the test can compare the ranks with each other (the command's own files are rank 0's).

COMMAND ``collectives`` instead checks the helpers the commands rely on (``engine.mean_over_ranks`` and
``engine.check_same_on_all_ranks``) with inputs that differ per rank.
"""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path

import torch

from main.distributed import cleanup, init_distributed
from main.trainer import Trainer


def run_command(out: Path, command: str, flags: list[str]) -> None:
    module = importlib.import_module(f"SOTA_methods.{command}")
    trained: list[Trainer] = []
    original = Trainer.train

    def train(trainer: Trainer) -> dict:  # record every stage; the last one holds the final state
        trained.append(trainer)
        return original(trainer)

    Trainer.train = train
    try:
        assert module.main(flags) == 0
    finally:
        Trainer.train = original
    last = trained[-1]
    rank = int(os.environ.get("RANK", "0"))
    torch.save({"state_dict": {k: v.detach().cpu() for k, v in last.model.state_dict().items()},
                "masks": last.masks.state_dict() if last.masks is not None else None,
                "iteration": last.iteration, "stages": len(trained), "world_size": last.dist.world_size},
               out / f"rank{rank}.pt")


def check_collectives(out: Path) -> None:
    """Per-rank inputs: the mean must be the same everywhere, and different masks must be refused."""
    from SOTA_methods.engine import check_same_on_all_ranks, mean_over_ranks

    info, _ = init_distributed("cpu")
    try:
        r = float(info.rank)
        mean = mean_over_ranks({"a": torch.full((2, 3), r), ("t", "b"): torch.arange(4.0, dtype=torch.float64) * r,
                                "c": torch.tensor([r, 2 * r])}, info)
        expected = (info.world_size - 1) / 2
        assert torch.equal(mean["a"], torch.full((2, 3), expected)), mean["a"]
        assert mean[("t", "b")].dtype == torch.float64 and mean[("t", "b")].shape == (4,)
        assert torch.allclose(mean[("t", "b")], torch.arange(4.0, dtype=torch.float64) * expected)
        assert torch.equal(mean["c"], torch.tensor([expected, 2 * expected]))
        same = {"w": torch.tensor([[True, False], [False, True]])}
        check_same_on_all_ranks(same, info, "identical masks")
        differ = {"w": torch.tensor([info.rank == 0, True])}
        try:
            check_same_on_all_ranks(differ, info, "divergent masks")
        except RuntimeError as e:
            assert "divergent masks" in str(e) and "different masks" in str(e), e
        else:
            raise AssertionError("divergent masks were not detected")
        (out / f"collectives{info.rank}.ok").write_text("ok")
    finally:
        cleanup(info)


def main() -> None:
    out, command, flags = Path(sys.argv[1]), sys.argv[2], sys.argv[3:]
    if command == "collectives":
        check_collectives(out)
    else:
        run_command(out, command, flags)


if __name__ == "__main__":
    main()
