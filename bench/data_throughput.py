"""Data-loading throughput on NYUv2-format files at the paper's 321 crop, printed as JSON.

Writes N synthetic samples in the exact AdaShare NYUv2 layout at NYUv2's native 480×640 (PNG image, seg and
normal, .npy depth) into a temporary folder, then measures training samples/s (random scale, flip, pad-and-crop
to 321) through a DataLoader for each worker count, and test samples/s (resize to 321).

    python -m bench.data_throughput [--samples 48] [--workers 0 2] [--batch_size 16]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from main.data.nyuv2 import NYUv2
from main.data.sampler import ResumableBatchSampler


def write_nyuv2(root: Path, n: int, h: int = 480, w: int = 640, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for sub in ("img", "seg", "normal_mask", "depth"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    entries = []
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / f"img/{i}.png")
        Image.fromarray(rng.integers(0, 40, (h, w), dtype=np.uint8)).save(root / f"seg/{i}.png")
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(root / f"normal_mask/{i}.png")
        np.save(root / f"depth/{i}.npy", rng.uniform(0.5, 10.0, (h, w)).astype(np.float32))
        entries.append([f"img/{i}.png", f"seg/{i}.png", f"normal_mask/{i}.png", f"depth/{i}.npy"])
    (root / "nyu_v2_3task.json").write_text(json.dumps({"train": entries, "test": entries}))


def measure(dataset, loader_kwargs: dict, batches: int) -> float:
    loader = torch.utils.data.DataLoader(dataset, generator=torch.Generator(), **loader_kwargs)
    it = iter(loader)
    next(it)  # worker start-up is not throughput
    start, seen = time.perf_counter(), 0
    for _ in range(batches):
        seen += next(it)["input"].shape[0]
    return seen / (time.perf_counter() - start)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=48)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--batches", type=int, default=6)
    ns = parser.parse_args()
    torch.set_num_threads(1)
    results = {"crop": 321, "native_size": [480, 640], "batch_size": ns.batch_size, "machine": platform.machine(),
               "cpus": torch.get_num_threads() and __import__("os").cpu_count(), "train_samples_per_s": {},
               "test_samples_per_s": {}}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_nyuv2(root, ns.samples)
        train = NYUv2(root, "train", crop_size=321)
        test = NYUv2(root, "test", crop_size=321)
        for w in ns.workers:
            sampler = ResumableBatchSampler(len(train), ns.batch_size, seed=0)
            kw = {"batch_sampler": sampler, "num_workers": w, "persistent_workers": w > 0}
            results["train_samples_per_s"][f"workers_{w}"] = round(measure(train, kw, ns.batches), 1)
            kw = {"batch_size": ns.batch_size, "num_workers": w, "shuffle": False}
            results["test_samples_per_s"][f"workers_{w}"] = round(
                measure(test, kw, min(ns.batches, ns.samples // ns.batch_size - 1)), 1)
    print(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
