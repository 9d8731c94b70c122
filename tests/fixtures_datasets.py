"""Tiny NYUv2 / Tiny-Taskonomy folders in exactly the on-disk formats the real datasets use.

Odd, non-square sizes (37x53, 41x29: height x width) catch transposed or off-by-one resizes; every sample has
ignore pixels in seg, NYUv2 depth has invalid zeros, Taskonomy labels are 16-bit PNGs with values past the
clip points and past the depth mask threshold.  Each function returns the arrays it wrote, per split, so
tests can build expectations by hand.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

SIZES = ((37, 53), (41, 29))  # (height, width)


def _save(root: Path, rel: str, arr: np.ndarray) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    if rel.endswith(".npy"):
        np.save(path, arr)
    else:
        Image.fromarray(arr).save(path)


def nyuv2_sample(rng: np.random.Generator, h: int, w: int) -> dict[str, np.ndarray]:
    """rgb (H,W,3) uint8 RGB, seg (H,W) uint8 0-39 / 255, normal (H,W,3) uint8, depth (H,W) float32 (0 = invalid)."""
    seg = rng.integers(0, 40, (h, w)).astype(np.uint8)
    seg[rng.random((h, w)) < 0.1] = 255
    normal = rng.integers(0, 255, (h, w, 3)).astype(np.uint8)
    normal[rng.random((h, w)) < 0.1] = 255
    depth = rng.uniform(0.5, 9.5, (h, w)).astype(np.float32)
    depth[rng.random((h, w)) < 0.1] = 0.0
    return {"rgb": rng.integers(0, 256, (h, w, 3)).astype(np.uint8), "seg": seg, "normal": normal, "depth": depth}


def make_nyuv2(root: str | Path, n_train: int = 3, n_test: int = 2, seed: int = 0) -> dict[str, list[dict]]:
    """AdaShare layout: nyu_v2_3task.json, img/ seg/ normal_mask/ (PNG) and depth/ (.npy)."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    index: dict[str, list[list[str]]] = {}
    written: dict[str, list[dict]] = {}
    for split, n in (("train", n_train), ("test", n_test)):
        index[split], written[split] = [], []
        for k in range(n):
            h, w = SIZES[k % len(SIZES)]
            sample = nyuv2_sample(rng, h, w)
            rels = [f"img/{split}_{k}.png", f"seg/{split}_{k}.png", f"normal_mask/{split}_{k}.png",
                    f"depth/{split}_{k}.npy"]
            for rel, key in zip(rels, ("rgb", "seg", "normal", "depth")):
                _save(root, rel, sample[key])
            index[split].append(rels)
            written[split].append({**sample, "paths": rels})
    (root / "nyu_v2_3task.json").write_text(json.dumps(index))
    return written


def taskonomy_sample(rng: np.random.Generator, h: int, w: int) -> dict[str, np.ndarray]:
    """rgb uint8; seg uint8 raw ids 0-17 (0 and 1 present); normal uint8; depth / keypoint / edge uint16."""
    seg = rng.integers(0, 18, (h, w)).astype(np.uint8)
    seg[0, :4] = (0, 1, 2, 17)
    depth = rng.integers(0, 20000, (h, w)).astype(np.uint16)
    depth[rng.random((h, w)) < 0.1] = 65535
    depth[0, :3] = (0, 64499, 64500)
    keypoint = rng.integers(0, 700, (h, w)).astype(np.uint16)  # clip point 0.005 * 2^16 = 327.68
    edge = rng.integers(0, 9000, (h, w)).astype(np.uint16)  # clip point 0.08 * 2^16 = 5242.88
    return {"rgb": rng.integers(0, 256, (h, w, 3)).astype(np.uint8), "seg": seg,
            "normal": rng.integers(0, 256, (h, w, 3)).astype(np.uint8), "depth": depth,
            "keypoint": keypoint, "edge": edge}


def make_taskonomy(root: str | Path, n_train: int = 3, n_test: int = 2, n_test_small: int = 1, seed: int = 0,
                   split_folders: bool = False) -> dict[str, list[dict]]:
    """taskonomy.json, semseg_prior_factor.npy and per-modality PNGs (16-bit depth / keypoints / edges).

    ``split_folders`` writes AdaShare's own layout: paths relative to ``root/train`` or ``root/test``
    (``test_small`` is the first ``n_test_small`` test samples, read from ``root/test``).
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    np.save(root / "semseg_prior_factor.npy", rng.uniform(0.5, 2.0, 17).astype(np.float32))
    keys = ("rgb", "seg", "normal", "depth", "keypoint", "edge")
    folders = ("rgb", "segment_semantic", "normal", "depth_zbuffer", "keypoints2d", "edge_texture")
    index: dict[str, list[list[str]]] = {}
    written: dict[str, list[dict]] = {}
    for split, n in (("train", n_train), ("test", n_test)):
        base = root / split if split_folders else root
        index[split], written[split] = [], []
        for k in range(n):
            h, w = SIZES[k % len(SIZES)]
            sample = taskonomy_sample(rng, h, w)
            rels = [f"{folder}/{split}_{k}_{folder}.png" for folder in folders]
            for rel, key in zip(rels, keys):
                _save(base, rel, sample[key])
            index[split].append(rels)
            written[split].append({**sample, "paths": rels})
    index["test_small"] = index["test"][:n_test_small]
    written["test_small"] = written["test"][:n_test_small]
    (root / "taskonomy.json").write_text(json.dumps(index))
    return written
