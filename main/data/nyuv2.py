"""NYUv2 (3 tasks) in the AdaShare layout, preprocessed exactly as the reference (``docs/reference.md`` §5).

Layout: ``root/nyu_v2_3task.json`` = ``{"train": [[img, seg, normal, depth], ...], "test": [...]}`` with paths
relative to ``root``: ``img/*.png`` colour, ``seg/*.png`` uint8 class ids 0-39 (255 = ignore),
``normal_mask/*.png`` 3-channel uint8, ``depth/*.npy`` float metres (0 = invalid).

The reference read images with ``cv2.imread`` (BGR); Pillow gives RGB, so channels are reversed here.
Train: scale s ~ U[0.5, 1.5) (image bilinear, labels nearest), horizontal flip with p = 0.5, centred pad to
``crop_size`` then a random crop (image padded with 0 before mean subtraction, seg / normal with 255, depth
with 0).  Test / val: the whole image resized to ``crop_size``×``crop_size``.  Input = float BGR minus the
reference mean, no /255.

Normals, two conventions (``normals=``):

* ``"parity"`` (default): the reference's quirk, kept for comparable numbers: the raw 0-255 triple in BGR
  order (as ``cv2.imread`` gave it) as floats, not re-centred and not flipped with the image; any channel
  at 255 marks the pixel invalid in the loss.
* ``"unit"``: real vectors ``v / 255 * 2 - 1`` in the file's own channel order (R, G, B as stored in the
  PNG), x = the R channel, negated on a horizontal flip.  Why R = x: it is the standard normal-map encoding,
  and it is the convention of Tiny-Taskonomy's normal PNGs, which the reference reads in RGB order and
  flips by negating channel 0; using it here gives both datasets the same layout.  (``python -m
  main.data.check`` prints per-channel means so the assumption can be checked on the real files: the
  channel with the largest mean is the camera-facing z.)  Pixels with 255 in every channel (the files'
  invalid marker, and all padding) are set to 255 in every channel so the loss's ``max < 255`` validity
  rule still drops them; valid components lie in [-1, 1].

Val is the test split, as in the reference (AdaShare's NYUv2 index has no validation split).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from .real import (
    IGNORE,
    FileDataset,
    check_ids,
    check_same_size,
    chw,
    crop_window,
    normalise_image,
    pad_and_crop,
    read_npy,
    read_png,
    resize_bilinear,
    resize_nearest,
    scaled_size,
)

INDEX_NAME = "nyu_v2_3task.json"
FIELDS = ("img", "seg", "normal", "depth")
TASKS = ("segment_semantic", "normal", "depth_zbuffer")
NUM_CLASSES = 40
NORMAL_MODES = ("parity", "unit")
DEFAULT_CROP = 321


def read_image(path: Path) -> np.ndarray:
    """(H, W, 3) uint8 in BGR order, as ``cv2.imread`` returned it."""
    return read_png(path, ("RGB",), "3-channel colour")[:, :, ::-1]


def read_seg(path: Path) -> np.ndarray:
    """(H, W) uint8 class ids (0-39, 255 = ignore); any other id is refused."""
    seg = read_png(path, ("L",), "8-bit single-channel").astype(np.uint8)
    check_ids(path, seg, NUM_CLASSES, IGNORE)
    return seg


def read_normal(path: Path) -> np.ndarray:
    """(H, W, 3) uint8 in the file's channel order (R, G, B)."""
    return read_png(path, ("RGB",), "3-channel colour")


def read_depth(path: Path) -> np.ndarray:
    """(H, W) float32 metres, 0 = invalid."""
    return read_npy(path, "depth")


def normals_to_unit(raw: np.ndarray, flipped: bool) -> np.ndarray:
    """Raw uint8 (R, G, B) -> float vectors in [-1, 1], x negated if ``flipped``; all-255 pixels stay 255."""
    invalid = (raw == IGNORE).all(axis=-1)
    v = raw.astype(np.float32) / 255.0 * 2.0 - 1.0
    if flipped:
        v[..., 0] = -v[..., 0]
    v[invalid] = IGNORE
    return v


class NYUv2(FileDataset):
    """A split of NYUv2; ``ds[i]`` or ``ds[i, aug_seed]`` -> ``input`` and one key per requested task."""

    INDEX_NAME = INDEX_NAME
    FIELDS = FIELDS
    TASKS = TASKS
    num_classes = NUM_CLASSES

    def __init__(self, root: str | Path, split: str = "train", tasks: Sequence[str] = TASKS,
                 crop_size: int = DEFAULT_CROP, normals: str = "parity", skip_bad: bool = False,
                 augment: bool | None = None) -> None:
        if normals not in NORMAL_MODES:
            raise ValueError(f"normals must be one of {', '.join(NORMAL_MODES)}, got {normals!r}")
        self.normals = normals
        super().__init__(root, split, tasks, crop_size, skip_bad, augment)

    def needed_fields(self) -> set[str]:
        task_field = {"segment_semantic": "seg", "normal": "normal", "depth_zbuffer": "depth"}
        return {"img"} | {task_field[t] for t in self.tasks}

    def _decode(self, entry: list[str]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """The image and the raw labels of the requested tasks, checked for matching sizes."""
        img_rel, seg_rel, normal_rel, depth_rel = entry
        img = read_image(self.path(img_rel))
        readers = {"segment_semantic": (read_seg, seg_rel), "normal": (read_normal, normal_rel),
                   "depth_zbuffer": (read_depth, depth_rel)}
        labels = {}
        for task in self.tasks:
            reader, rel = readers[task]
            labels[task] = reader(self.path(rel))
            check_same_size(self.path(rel), labels[task], img.shape[:2])
        return img, labels

    def _load(self, entry: list[str], aug_seed: int | None) -> dict[str, torch.Tensor]:
        img, labels = self._decode(entry)
        flipped = False
        if self.augment:
            img, labels, flipped = self._augment(img, labels, np.random.default_rng(aug_seed))
        else:
            c = self.crop_size
            img = resize_bilinear(img, c, c)
            labels = {t: resize_nearest(v, c, c) for t, v in labels.items()}
        out = {"input": normalise_image(img)}
        if "segment_semantic" in labels:
            out["segment_semantic"] = chw(labels["segment_semantic"], torch.int64)
        if "normal" in labels:
            raw = labels["normal"]
            normal = normals_to_unit(raw, flipped) if self.normals == "unit" else raw[:, :, ::-1]
            out["normal"] = chw(normal.astype(np.float32))
        if "depth_zbuffer" in labels:
            out["depth_zbuffer"] = chw(labels["depth_zbuffer"])
        return out

    def _augment(self, img: np.ndarray, labels: dict[str, np.ndarray],
                 rng: np.random.Generator) -> tuple[np.ndarray, dict[str, np.ndarray], bool]:
        """Reference train transform: scale, flip (normals untouched here), pad-and-crop."""
        h, w = scaled_size(*img.shape[:2], rng.random() + 0.5)
        img = resize_bilinear(img, h, w)
        labels = {t: resize_nearest(v, h, w) for t, v in labels.items()}
        flipped = bool(rng.random() > 0.5)
        if flipped:
            img = img[:, ::-1]
            labels = {t: v[:, ::-1] for t, v in labels.items()}
        window = crop_window(h, w, self.crop_size, rng)
        img = pad_and_crop(img, window, self.crop_size, 0)
        fills = {"segment_semantic": IGNORE, "normal": IGNORE, "depth_zbuffer": 0.0}
        labels = {t: pad_and_crop(v, window, self.crop_size, fills[t]) for t, v in labels.items()}
        return img, labels, flipped
