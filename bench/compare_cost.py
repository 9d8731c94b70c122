"""The real cost of every finished comparison cell: its checkpoint compacted, then parameters, FLOPs and latency.

Unstructured sparsity runs on dense kernels, so a 90%-sparse model costs what the dense one costs; what a pruned
model saves at run time is what ``main.compaction`` can remove physically (dead channels, with their constants
folded).  For each cell of ``cells.json`` whose checkpoint exists, this writes ``cost/<architecture>/<cell>.json``:
the compacted model's parameters and conv FLOPs per image at the protocol's crop, its forward latency (batch 1,
one thread, eval mode, ``torch.no_grad()``), and the same for the uncompacted network (thresholds baked; the cost
of the dense model, since the shapes are the dense ones), with the ratios from one interleaved run per cell.  The
comparison report (``bench.compare_report``) puts each method's test Δ_T beside these ratios.

    python -m bench.compare_cost [--logs logs/comparison] [--root .] [--repeats 20]

``--root`` is where the grid ran (the ``run_dir`` of ``cells.json`` is relative to it).  Resumable: a cell whose
cost JSON exists is skipped.  Latency is machine-dependent and noisy on a shared machine; params and FLOPs are
exact.  Run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Sequence
from pathlib import Path

import torch

from bench.compare_protocol import CKPT
from bench.inference import forward_fn, time_all
from main.atomic import atomic_write_text
from main.checkpoint import load_checkpoint, model_from_checkpoint
from main.compaction import compact_model
from main.errors import UserError, cli_main
from SOTA_methods.compact import count_flops, count_params

COST_DIR = "cost"


def cell_cost(checkpoint: Path, repeats: int, warmup: int = 3) -> dict:
    """Params, FLOPs and latency of ``checkpoint``'s network before and after compaction, ratios from one run."""
    state = load_checkpoint(checkpoint)
    cfg, model = model_from_checkpoint(state, str(checkpoint), torch.device("cpu"))
    model.eval()
    full = model
    small, report = compact_model(model)
    full.bake_thresholds()
    side = cfg.crop_size
    x = torch.randn((1, 3, side, side), generator=torch.Generator().manual_seed(0))
    times = time_all({"full": forward_fn(full, x, "off", x.device), "compact": forward_fn(small, x, "off", x.device)},
                     warmup, repeats, cuda=False)
    latency = {k: 1e3 * statistics.median(v) for k, v in times.items()}
    shape = (1, 3, side, side)
    out = {"input_side": side, "threads": torch.get_num_threads(), "repeats": repeats,
           "params": count_params(full), "params_compact": count_params(small),
           "flops": count_flops(full, shape), "flops_compact": count_flops(small, shape),
           "latency_ms": latency["full"], "latency_ms_compact": latency["compact"], "dead_filters": report}
    out["ratios"] = {"params": out["params_compact"] / out["params"], "flops": out["flops_compact"] / out["flops"],
                     "latency": latency["compact"] / latency["full"]}
    return out


def pending(logs: Path, root: Path) -> list[tuple[str, Path, Path]]:
    """(cell key, checkpoint as ``cells.json`` names it, cost JSON) of every test-split cell whose checkpoint is
    under ``root`` and that has no cost JSON yet."""
    book = json.loads((logs / "cells.json").read_text())
    todo = []
    for key, entry in sorted(book.items()):
        if entry.get("split") != "test" or "run_dir" not in entry:
            continue
        out = logs / COST_DIR / f"{key}.json"
        ckpt = Path(entry["run_dir"]) / CKPT
        if not out.is_file() and (root / ckpt).is_file():
            todo.append((key, ckpt, out))
    return todo


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--logs", default="logs/comparison", help="the comparison's logs folder (with cells.json)")
    p.add_argument("--root", default=".", help="the folder the grid ran in (run_dir is relative to it)")
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--threads", type=int, default=1)
    ns = p.parse_args(argv)
    logs = Path(ns.logs)
    if not (logs / "cells.json").is_file():
        raise UserError(f"{logs / 'cells.json'} not found: run python -m bench.compare first (or pass --logs)")
    torch.set_num_threads(ns.threads)
    todo = pending(logs, Path(ns.root))
    for i, (key, ckpt, out) in enumerate(todo, 1):
        cost = cell_cost(Path(ns.root) / ckpt, ns.repeats)
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out, json.dumps({"cell": key, "checkpoint": str(ckpt), **cost}, indent=1) + "\n")
        r = cost["ratios"]
        print(f"[cost] {i}/{len(todo)} {key}: params x{r['params']:.3f}, FLOPs x{r['flops']:.3f}, "
              f"latency x{r['latency']:.3f}", flush=True)
    return 0


if __name__ == "__main__":
    cli_main(main)
