"""Tiny-Taskonomy (5 tasks), decoded and augmented exactly as the reference (``docs/reference.md`` §5).

Layout: ``root/taskonomy.json`` = ``{"train": [...], "test": [...], "test_small": [...]}``, entries
``[img, seg, normal, depth, keypoint, edge]``; ``root/semseg_prior_factor.npy`` (17 class weights, Taskonomy's
taskbank ``lib/data`` file).  Entry paths are relative to ``root``; AdaShare's own index is relative to
``root/train`` (train) or ``root/test`` (test, test_small), so when that folder exists and holds the split's
first image, it is used as the base instead.

Decoding (every modality first resized to 256×256 with nearest, the RGB image included):
RGB -> float BGR; seg ids 0 and 1 -> class 0, else id - 1 (17 classes), ``segment_semantic_mask`` =
(raw > 0) · prior[class] (the loss ignores it, as in the reference); normal png / 255 -> [-1, 1];
depth 16-bit d -> log(1 + d) / log(2^16), mask d < 64500; keypoints2d png / 2^16 clipped to [0, 0.005]
and edge_texture png / 2^16 clipped to [0, 0.08], both rescaled to [-1, 1]; ``normal_mask`` = the depth
mask on 3 channels.  Train: scale [0.5, 1.5) (image bilinear, labels nearest), flip p = 0.5 (normal x
negated), centred pad and random crop to ``crop_size`` with every label channel (masks included) padded
with 255 and the image with 0.  Test / val: resize to ``crop_size`` (image bilinear from the 256×256 copy,
labels nearest).

Val uses ``test_small`` when the index has it (AdaShare's smaller held-out list, a cheaper validation),
otherwise ``test``, like the reference which validated on the test data.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import DatasetError
from .real import (
    GRAY_MODES,
    IGNORE,
    FileDataset,
    check_same_size,
    chw,
    crop_window,
    normalise_image,
    pad_and_crop,
    read_png,
    resize_bilinear,
    resize_nearest,
    scaled_size,
)

INDEX_NAME = "taskonomy.json"
PRIOR_NAME = "semseg_prior_factor.npy"
FIELDS = ("img", "seg", "normal", "depth", "keypoint", "edge")
TASKS = ("segment_semantic", "normal", "depth_zbuffer", "keypoints2d", "edge_texture")
NUM_CLASSES = 17
BASE_SIZE = 256
DEFAULT_CROP = 224
DEPTH_MAX_VALID = 64500  # Taskonomy writes 65535 (and values near it) where the depth is unknown
LOG_NORMALISER = float(np.log(2.0**16))
KEYPOINT_CLIP = 0.005
EDGE_CLIP = 0.08


def load_class_weights(root: str | Path) -> np.ndarray:
    """The 17 segmentation class weights from ``semseg_prior_factor.npy``."""
    path = Path(root) / PRIOR_NAME
    try:
        w = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise DatasetError(f"{path} not found; copy Taskonomy's taskbank lib/data/{PRIOR_NAME} into "
                           "--data_root") from None
    except (OSError, ValueError, EOFError) as e:
        raise DatasetError(f"{path} is not a readable .npy file ({' '.join(str(e).split())}); "
                           f"restore Taskonomy's {PRIOR_NAME}") from None
    w = np.asarray(w)
    if w.size == NUM_CLASSES:
        w = w.reshape(-1)  # (17,), (1, 17) and (17, 1) all occur in the wild
    if w.shape != (NUM_CLASSES,) or not np.issubdtype(w.dtype, np.number) or not np.isfinite(w).all():
        raise DatasetError(f"{path}: expected {NUM_CLASSES} finite class weights, got shape {w.shape} "
                           f"dtype {w.dtype}; restore Taskonomy's {PRIOR_NAME}")
    return w.astype(np.float32)


# ------------------------------------------------------------------------------------ raw readers


def read_image(path: Path) -> np.ndarray:
    """(H, W, 3) float32 BGR."""
    return read_png(path, ("RGB",), "3-channel colour")[:, :, ::-1].astype(np.float32)


def read_gray(path: Path, what: str) -> np.ndarray:
    """(H, W) integer map of a single-channel PNG (8 or 16 bit; palette indices for seg)."""
    return read_png(path, GRAY_MODES + ("P",), what).astype(np.int64)


def read_normal(path: Path) -> np.ndarray:
    return read_png(path, ("RGB",), "3-channel colour")


# ---------------------------------------------------------------------------------- decoders (256²)


def decode_seg(raw: np.ndarray, prior: np.ndarray, path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Taskbank rule: ids 0 and 1 -> class 0, others id - 1; mask = (raw > 0) · prior[class]."""
    if raw.max(initial=0) > NUM_CLASSES:
        raise DatasetError(f"{path}: segmentation id {int(raw.max())} outside 0..{NUM_CLASSES}; restore the file "
                           "(or pass --skip_bad_samples)")
    cls = np.where(raw == 0, 1, raw) - 1
    mask = (raw > 0).astype(np.float32) * prior[cls]
    return cls.astype(np.float32), mask.astype(np.float32)


def decode_normal(raw: np.ndarray) -> np.ndarray:
    return raw.astype(np.float32) / 255.0 * 2.0 - 1.0


def decode_depth(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    depth = (np.log1p(raw.astype(np.float64)) / LOG_NORMALISER).astype(np.float32)
    return depth, (raw < DEPTH_MAX_VALID).astype(np.float32)


def decode_clipped(raw: np.ndarray, clip: float) -> np.ndarray:
    """png / 2^16 clipped to [0, clip], then rescaled to [-1, 1] (keypoints2d, edge_texture)."""
    v = np.clip(raw.astype(np.float32) / 2.0**16, 0.0, clip)
    return (v / clip * 2.0 - 1.0).astype(np.float32)


class Taskonomy(FileDataset):
    """A split of Tiny-Taskonomy; ``ds[i]`` or ``ds[i, aug_seed]`` -> ``input``, task maps and their masks."""

    INDEX_NAME = INDEX_NAME
    FIELDS = FIELDS
    TASKS = TASKS
    num_classes = NUM_CLASSES

    def __init__(self, root: str | Path, split: str = "train", tasks: Sequence[str] = TASKS,
                 crop_size: int = DEFAULT_CROP, skip_bad: bool = False, augment: bool | None = None,
                 base_size: int = BASE_SIZE) -> None:
        super().__init__(root, split, tasks, crop_size, skip_bad, augment)
        self.base_size = int(base_size)
        self.prior = load_class_weights(self.root) if "segment_semantic" in self.tasks else None

    def index_split(self, index: dict[str, Any]) -> str:
        if self.split == "train":
            return "train"
        if self.split == "val" and "test_small" in index:
            return "test_small"
        return "test"

    def needed_fields(self) -> set[str]:
        # normal reads the depth file too (its validity mask)
        per_task = {"segment_semantic": {"seg"}, "normal": {"normal", "depth"}, "depth_zbuffer": {"depth"},
                    "keypoints2d": {"keypoint"}, "edge_texture": {"edge"}}
        return {"img"}.union(*(per_task[t] for t in self.tasks))

    @staticmethod
    def files_base(root: Path, split_key: str, entries: list[list[str]]) -> Path:
        """``root/train`` or ``root/test`` when the index is relative to it (AdaShare's), else ``root``."""
        sub = root / ("train" if split_key == "train" else "test")
        if sub.is_dir() and (sub / entries[0][0]).is_file() and not (root / entries[0][0]).is_file():
            return sub
        return root

    def _decode(self, entry: list[str]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Image and label maps (H, W, C) float32 at ``base_size``², keyed by output name."""
        paths = dict(zip(FIELDS, (self.path(p) for p in entry)))
        img = read_image(paths["img"])
        size = img.shape[:2]
        s = self.base_size

        def gray(field: str, what: str) -> np.ndarray:
            raw = read_gray(paths[field], what)
            check_same_size(paths[field], raw, size)
            return resize_nearest(raw, s, s)

        out: dict[str, np.ndarray] = {}
        if "segment_semantic" in self.tasks:
            seg, mask = decode_seg(gray("seg", "single-channel segmentation"), self.prior, paths["seg"])
            out["segment_semantic"], out["segment_semantic_mask"] = seg[..., None], mask[..., None]
        if "normal" in self.tasks or "depth_zbuffer" in self.tasks:
            depth, mask = decode_depth(gray("depth", "16-bit depth"))
            if "depth_zbuffer" in self.tasks:
                out["depth_zbuffer"], out["depth_zbuffer_mask"] = depth[..., None], mask[..., None]
            if "normal" in self.tasks:
                raw = read_normal(paths["normal"])
                check_same_size(paths["normal"], raw, size)
                out["normal"] = decode_normal(resize_nearest(raw, s, s))
                out["normal_mask"] = np.repeat(mask[..., None], 3, axis=-1)
        if "keypoints2d" in self.tasks:
            out["keypoints2d"] = decode_clipped(gray("keypoint", "16-bit keypoint"), KEYPOINT_CLIP)[..., None]
        if "edge_texture" in self.tasks:
            out["edge_texture"] = decode_clipped(gray("edge", "16-bit edge"), EDGE_CLIP)[..., None]
        return resize_nearest(img, s, s), out

    def _load(self, entry: list[str], aug_seed: int | None) -> dict[str, torch.Tensor]:
        img, labels = self._decode(entry)
        if self.augment:
            img, labels = self._augment(img, labels, np.random.default_rng(aug_seed))
        else:
            c = self.crop_size
            img = resize_bilinear(img, c, c)
            labels = {k: resize_nearest(v, c, c) for k, v in labels.items()}
        out = {"input": normalise_image(img)}
        for key, value in labels.items():
            out[key] = chw(value, torch.int64 if key == "segment_semantic" else torch.float32)
        return out

    def _augment(self, img: np.ndarray, labels: dict[str, np.ndarray],
                 rng: np.random.Generator) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Reference train transform: scale, flip (normal x negated), pad-and-crop (labels padded with 255)."""
        h, w = scaled_size(*img.shape[:2], rng.random() + 0.5)
        img = resize_bilinear(img, h, w)
        labels = {k: resize_nearest(v, h, w) for k, v in labels.items()}
        if rng.random() > 0.5:
            img = img[:, ::-1]
            labels = {k: v[:, ::-1].copy() for k, v in labels.items()}
            if "normal" in labels:
                labels["normal"][..., 0] *= -1
        window = crop_window(h, w, self.crop_size, rng)
        img = pad_and_crop(img, window, self.crop_size, 0.0)
        labels = {k: pad_and_crop(v, window, self.crop_size, IGNORE) for k, v in labels.items()}
        return img, labels
