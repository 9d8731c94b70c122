"""Machinery shared by the file-backed datasets (NYUv2, Tiny-Taskonomy).

Why one module: both reference loaders (AdaShare's) read a JSON index of per-sample file lists, decode with
OpenCV, augment with the same scale / flip / pad-and-crop recipe and subtract the same BGR mean.  This module
reproduces those pieces with Pillow and numpy only:

* ``resize_bilinear`` / ``resize_nearest`` follow ``cv2.resize`` (half-pixel centres and edge clamping for
  bilinear, floor(dst * src / dst_size) for nearest; no antialiasing, unlike Pillow's own resize), so the
  samples match what the reference fed its networks;
* ``pad_and_crop`` is the reference's centred pad then uniform random crop;
* ``FileDataset`` handles the index (validated when the dataset is built, so a bad ``--data_root`` fails
  before any training), the ``(index, aug_seed)`` key contract of ``SyntheticScenes`` (augmentation is a pure
  function of ``aug_seed``; no global RNG), and ``skip_bad``: the reference silently skipped unreadable
  samples, here they raise ``DatasetError`` unless the user opts in, and then they are counted.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from .errors import DatasetError

#: BGR channel means of the reference (AdaShare's Caffe-era constant); the images are not divided by 255.
IMG_MEAN_BGR = np.array((104.00698793, 116.66876762, 122.67891434), dtype=np.float64)
IGNORE = 255
SPLITS = ("train", "val", "test")
_AUG_TAG = 0x5EED
GRAY_MODES = ("L", "I", "I;16", "I;16B", "I;16L")


# ------------------------------------------------------------------------------------------- index


def check_root(root: str | Path, index_name: str) -> Path:
    """The dataset folder, or a ``DatasetError`` telling the user what ``--data_root`` must hold."""
    path = Path(root)
    if not path.is_dir():
        raise DatasetError(f"--data_root {path} does not exist or is not a folder; point --data_root at the "
                           f"folder holding {index_name}")
    return path


def load_index(root: Path, index_name: str) -> dict[str, Any]:
    """Parse the JSON index at ``root / index_name`` (a mapping of split name to entry lists)."""
    path = root / index_name
    if not path.is_file():
        raise DatasetError(f"{path} not found; --data_root must be the dataset folder holding {index_name}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DatasetError(f"{path} is not valid JSON ({_one_line(e)}); re-download or regenerate it") from None
    if not isinstance(data, dict):
        raise DatasetError(f"{path} must hold a JSON object mapping split names to sample lists; "
                           "re-download or regenerate it")
    return data


def split_entries(data: dict[str, Any], path: Path, split_key: str, fields: Sequence[str]) -> list[list[str]]:
    """The validated entries of one split: non-empty list of ``len(fields)`` relative paths each."""
    if split_key not in data:
        have = ", ".join(sorted(map(str, data))) or "none"
        raise DatasetError(f"{path} has no '{split_key}' split (it has: {have}); use the dataset's original "
                           "index file")
    entries = data[split_key]
    if not isinstance(entries, list) or not entries:
        raise DatasetError(f"{path}: split '{split_key}' must be a non-empty list of samples; regenerate the index")
    for n, entry in enumerate(entries):
        if not (isinstance(entry, list) and len(entry) == len(fields) and all(isinstance(p, str) for p in entry)):
            shown = _one_line(repr(entry))[:80]
            raise DatasetError(f"{path}: entry {n} of '{split_key}' must list {len(fields)} paths "
                               f"[{', '.join(fields)}], got {shown}; fix or regenerate the index")
    return entries


def _one_line(value: object) -> str:
    return " ".join(str(value).split())


# ------------------------------------------------------------------------------------------ decoding


def read_png(path: Path, modes: Iterable[str], what: str) -> np.ndarray:
    """Decode one PNG with Pillow, insisting on one of ``modes`` (e.g. a colour or a single-channel file).

    The reference (OpenCV) silently converted whatever it found; a wrong channel count here is a corrupt or
    misplaced file, so it is an error naming the file.
    """
    modes = tuple(modes)
    try:
        with Image.open(path) as im:
            im.load()
            mode = im.mode
            arr = np.asarray(im)
    except FileNotFoundError:
        raise DatasetError(f"{path}: listed in the index but missing; restore the file or fix the index "
                           "(or pass --skip_bad_samples)") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise DatasetError(f"{path}: cannot decode as PNG ({_one_line(e)}); restore the file "
                           "(or pass --skip_bad_samples)") from None
    if mode not in modes:
        raise DatasetError(f"{path}: expected a {what} PNG (mode {'/'.join(modes)}), found mode {mode}; "
                           "restore the file (or pass --skip_bad_samples)")
    return arr


def read_npy(path: Path, what: str) -> np.ndarray:
    """A float (H, W) map from a ``.npy`` file (``(H, W, 1)`` accepted), without pickles."""
    try:
        arr = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise DatasetError(f"{path}: listed in the index but missing; restore the file or fix the index "
                           "(or pass --skip_bad_samples)") from None
    except (OSError, ValueError, EOFError) as e:
        raise DatasetError(f"{path}: cannot read as .npy ({_one_line(e)}); restore the file "
                           "(or pass --skip_bad_samples)") from None
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim != 2 or not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise DatasetError(f"{path}: expected a 2-D numeric {what} map, got shape {arr.shape} dtype {arr.dtype}; "
                           "restore the file (or pass --skip_bad_samples)")
    arr = arr.astype(np.float32)
    if not np.isfinite(arr).all():  # a NaN is neither valid (> 0) nor flagged invalid (0): masked out silently
        raise DatasetError(f"{path}: {int((~np.isfinite(arr)).sum())} non-finite {what} values (NaN / Inf); mark "
                           "invalid pixels with 0 instead (or pass --skip_bad_samples)")
    return arr


def check_ids(path: Path, ids: np.ndarray, num_classes: int, ignore: int) -> None:
    """Class ids must be 0..num_classes-1 or ``ignore``: ids shifted by one (1..num_classes) would train every class
    as its neighbour and the last one not at all."""
    bad = ids[(ids >= num_classes) & (ids != ignore)]
    if bad.size:
        shifted = " (1-based ids? subtract 1: the reference's ids are 0-based)" if int(bad.max()) == num_classes else ""
        raise DatasetError(f"{path}: segmentation id {int(bad.max())} outside 0..{num_classes - 1} ({ignore} = "
                           f"ignore){shifted}; fix the labels (python -m main.data.check lists every file)")


def check_same_size(path: Path, arr: np.ndarray, size: tuple[int, int]) -> None:
    """Labels must align pixel for pixel with their image; the reference never checked this."""
    if tuple(arr.shape[:2]) != tuple(size):
        raise DatasetError(f"{path}: size {arr.shape[1]}x{arr.shape[0]} differs from its image's "
                           f"{size[1]}x{size[0]}; restore the file (or pass --skip_bad_samples)")


# ---------------------------------------------------------------------------------------- geometry


def resize_nearest(a: np.ndarray, h: int, w: int) -> np.ndarray:
    """``cv2.resize(..., INTER_NEAREST)``: source index floor(dst * src / dst), in exact integer arithmetic."""
    sh, sw = a.shape[:2]
    ys = np.arange(h) * sh // h
    xs = np.arange(w) * sw // w
    return a[ys][:, xs]


def _linear_taps(src: int, dst: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    x = (np.arange(dst) + 0.5) * (src / dst) - 0.5
    x = np.clip(x, 0.0, src - 1)
    i0 = np.floor(x).astype(np.int64)
    i1 = np.minimum(i0 + 1, src - 1)
    return i0, i1, (x - i0).astype(np.float32)


def resize_bilinear(a: np.ndarray, h: int, w: int) -> np.ndarray:
    """``cv2.resize`` default (INTER_LINEAR): half-pixel centres, clamped edges, no antialias.

    uint8 input comes back rounded to uint8 as OpenCV returns it; float input stays float32.
    """
    sh, sw = a.shape[:2]
    f = a.astype(np.float32)
    y0, y1, fy = _linear_taps(sh, h)
    x0, x1, fx = _linear_taps(sw, w)
    fy = fy.reshape((-1, 1) + (1,) * (a.ndim - 2))
    fx = fx.reshape((1, -1) + (1,) * (a.ndim - 2))
    rows = f[y0] * (1 - fy) + f[y1] * fy
    out = rows[:, x0] * (1 - fx) + rows[:, x1] * fx
    if a.dtype == np.uint8:  # OpenCV's fixed-point result rounds halves up
        return np.clip(np.floor(out + 0.5), 0, 255).astype(np.uint8)
    return out.astype(np.float32)


def scaled_size(h: int, w: int, scale: float) -> tuple[int, int]:
    """The reference's ``int(h * scale)`` (at least one pixel)."""
    return max(1, int(h * scale)), max(1, int(w * scale))


def crop_window(h: int, w: int, crop: int, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """(pad_top, pad_left, start_h, start_w): centred padding up to ``crop``, then a uniform crop offset.

    Drawn in the reference's order (height first).
    """
    ph, pw = max(h, crop), max(w, crop)
    start_h = int(rng.integers(0, ph - crop + 1))
    start_w = int(rng.integers(0, pw - crop + 1))
    return (ph - h) // 2, (pw - w) // 2, start_h, start_w


def pad_and_crop(a: np.ndarray, window: tuple[int, int, int, int], crop: int, fill: float) -> np.ndarray:
    """Cut a ``crop``×``crop`` window out of ``a`` padded with ``fill`` (see ``crop_window``)."""
    top, left, sh, sw = window
    h, w = a.shape[:2]
    padded = np.full((max(h, crop), max(w, crop)) + a.shape[2:], fill, dtype=a.dtype)
    padded[top:top + h, left:left + w] = a
    return padded[sh:sh + crop, sw:sw + crop]


def normalise_image(bgr: np.ndarray) -> torch.Tensor:
    """Float BGR minus the reference mean (no /255, no std), channel-first float32."""
    x = bgr.astype(np.float64) - IMG_MEAN_BGR
    return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1), dtype=np.float32))


def chw(a: np.ndarray, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(H, W) or (H, W, C) numpy -> (C, H, W) tensor."""
    if a.ndim == 2:
        a = a[..., None]
    return torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1))).to(dtype)


# ------------------------------------------------------------------------------------------ dataset


def derived_aug_seed(index: int) -> int:
    """Augmentation seed for a plain-int key on an augmented split: fixed per index, independent of any RNG."""
    return int(np.random.SeedSequence([_AUG_TAG, index]).generate_state(1, np.uint32)[0])


class FileDataset(Dataset):
    """A split of a JSON-indexed dataset; ``ds[i]`` or ``ds[i, aug_seed]`` -> dict of tensors.

    Subclasses set ``INDEX_NAME``, ``FIELDS``, ``TASKS`` and implement ``_load(entry, aug_seed)``.
    ``bad_samples`` counts the distinct samples replaced under ``skip_bad`` (in this process: with DataLoader
    workers each worker keeps its own count).
    """

    INDEX_NAME = ""
    FIELDS: tuple[str, ...] = ()
    TASKS: tuple[str, ...] = ()

    def __init__(self, root: str | Path, split: str, tasks: Sequence[str], crop_size: int, skip_bad: bool,
                 augment: bool | None) -> None:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
        unknown = [t for t in tasks if t not in self.TASKS]
        if unknown or not tasks:
            raise ValueError(f"tasks {list(tasks)!r}: {type(self).__name__} provides {', '.join(self.TASKS)}")
        if crop_size < 1:
            raise ValueError(f"crop_size must be positive, got {crop_size}")
        self.root = check_root(root, self.INDEX_NAME)
        self.split = split
        self.tasks = tuple(tasks)
        self.crop_size = int(crop_size)
        self.skip_bad = bool(skip_bad)
        self.augment = split == "train" if augment is None else bool(augment)
        index = load_index(self.root, self.INDEX_NAME)
        self.split_key = self.index_split(index)
        self.entries = split_entries(index, self.root / self.INDEX_NAME, self.split_key, self.FIELDS)
        self.base = self.files_base(self.root, self.split_key, self.entries)
        self.bad: dict[int, str] = {}

    def verify(self) -> None:
        """Every file the requested tasks need exists, and the first sample decodes; else ``DatasetError``.

        Run before training so a damaged folder fails before anything is written.  Existence is checked with
        one directory listing per folder (cheap even for Taskonomy's hundreds of thousands of files); decoding
        every sample is ``python -m main.data.check``'s job.  Skipped under ``skip_bad``.
        """
        if self.skip_bad:
            return
        columns = [i for i, f in enumerate(self.FIELDS) if f in self.needed_fields()]
        listings: dict[str, set[str]] = {}
        missing: list[str] = []
        for entry in self.entries:
            for c in columns:
                folder, name = os.path.split(os.path.join(self.base, entry[c]))
                if folder not in listings:
                    try:
                        listings[folder] = set(os.listdir(folder))
                    except OSError:
                        listings[folder] = set()
                if name not in listings[folder] and not os.path.isfile(os.path.join(folder, name)):
                    missing.append(os.path.join(folder, name))
        if missing:
            total = len(self.entries) * len(columns)
            raise DatasetError(f"{missing[0]}: listed in the index but missing ({len(missing)} of {total} files of "
                               f"the {self.split} split missing); restore the files or fix the index "
                               "(or pass --skip_bad_samples)")
        self.__getitem__(0)  # decodes the first sample: wrong modes and label sizes show up here

    def needed_fields(self) -> set[str]:
        """The index fields the requested tasks read (all of them unless a subclass says otherwise)."""
        return set(self.FIELDS)

    def index_split(self, index: dict[str, Any]) -> str:
        """The index's key for ``self.split`` (the reference validated on the test split)."""
        return "train" if self.split == "train" else "test"

    @staticmethod
    def files_base(root: Path, split_key: str, entries: list[list[str]]) -> Path:
        """The folder the entries' paths are relative to (the dataset root)."""
        return root

    @property
    def bad_samples(self) -> int:
        return len(self.bad)

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, torch.Tensor]:
        i, aug_seed = key if isinstance(key, tuple) else (key, None)
        i = int(i)
        n = len(self.entries)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"index {key!r} out of range for the {self.split} split of length {n}")
        if self.augment and aug_seed is None:
            aug_seed = derived_aug_seed(i)
        if not self.skip_bad:
            return self._load(self.entries[i], aug_seed)
        return self._load_skipping(i, aug_seed)

    def _load_skipping(self, i: int, aug_seed: int | None) -> dict[str, torch.Tensor]:
        """The first good sample at or after ``i`` (wrapping, as the reference did), remembering bad ones."""
        n = len(self.entries)
        for step in range(n):
            j = (i + step) % n
            if j in self.bad:
                continue
            try:
                return self._load(self.entries[j], aug_seed)
            except DatasetError as e:
                self.bad[j] = str(e)
        first = next(iter(self.bad.values()))
        raise DatasetError(f"every sample of the {self.split} split is unreadable (first: {first}); "
                           "check --data_root with python -m main.data.check")

    def path(self, rel: str) -> Path:
        return self.base / rel

    def _load(self, entry: list[str], aug_seed: int | None) -> dict[str, torch.Tensor]:
        raise NotImplementedError
