"""Check a dataset folder before a long run: ``python -m main.data.check --dataset nyuv2 --data_root DIR``.

Why: the reference loaders skipped unreadable samples silently and never compared label and image sizes, so
a damaged download only showed up as odd metrics days later.  This walks every split of the index, decodes
each listed file once with the same readers the loaders use, and reports split sizes, the image sizes seen,
value ranges per modality (seg ids, depth range and invalid fraction, per-channel normal statistics, ...)
and every missing, unreadable or inconsistent file by name.

Exit code: 0 when all is well, 1 when anything is wrong, 2 for a usage error (bad flags, no such folder).
"""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..errors import ArgumentParser, UserError, one_line
from . import nyuv2, taskonomy
from .errors import DatasetError
from .real import check_root, load_index, split_entries


class Stats:
    """Running value statistics of one modality; ``problem`` names a value that a loader would misuse."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.pixels = 0

    def add(self, arr: np.ndarray) -> str | None:
        self.pixels += arr.shape[0] * arr.shape[1]
        return None

    def summary(self) -> str:
        return f"{self.label}: {self.pixels} pixels"


class IdStats(Stats):
    """Class ids present; ids outside ``valid`` (other than ``ignore``) are problems."""

    def __init__(self, label: str, num_ids: int, ignore: int | None) -> None:
        super().__init__(label)
        self.num_ids, self.ignore = num_ids, ignore
        self.counts: Counter[int] = Counter()

    def add(self, arr: np.ndarray) -> str | None:
        super().add(arr)
        ids, n = np.unique(arr, return_counts=True)
        self.counts.update(dict(zip(ids.tolist(), n.tolist())))
        bad = [i for i in ids.tolist() if i >= self.num_ids and i != self.ignore]
        return f"ids {bad} outside 0..{self.num_ids - 1}" if bad else None

    def summary(self) -> str:
        ids = sorted(i for i in self.counts if i != self.ignore)
        text = f"{self.label}: {len(ids)} ids present ({' '.join(map(str, ids))})"
        if self.ignore is not None:
            text += f"; ignore ({self.ignore}) {_pct(self.counts[self.ignore], self.pixels)}"
        return text


class RangeStats(Stats):
    """Min / max and the fraction of flagged values (``flag`` returns a boolean map).

    With ``flag_is_invalid`` (depth: 0 or the "unknown" code) the range covers unflagged values only.
    """

    def __init__(self, label: str, flag: Callable[[np.ndarray], np.ndarray], flag_name: str, unit: str = "",
                 flag_is_invalid: bool = True) -> None:
        super().__init__(label)
        self.invalid, self.invalid_name, self.unit = flag, flag_name, unit
        self.flag_is_invalid = flag_is_invalid
        self.lo, self.hi, self.n_invalid = np.inf, -np.inf, 0

    def add(self, arr: np.ndarray) -> str | None:
        super().add(arr)
        bad = self.invalid(arr)
        self.n_invalid += int(bad.sum())
        valid = arr[~bad] if self.flag_is_invalid else arr
        if valid.size:
            self.lo, self.hi = min(self.lo, float(valid.min())), max(self.hi, float(valid.max()))
        if not np.isfinite(valid).all():
            return "non-finite values"
        return None

    def summary(self) -> str:
        rng = f"{self.lo:.4g} .. {self.hi:.4g}{self.unit}" if self.lo <= self.hi else "no valid values"
        return f"{self.label}: {rng}; {self.invalid_name} {_pct(self.n_invalid, self.pixels)}"


class NormalStats(Stats):
    """Per-channel range and mean over valid pixels (the largest mean is the camera-facing z channel)."""

    def __init__(self, label: str, invalid_all_255: bool) -> None:
        super().__init__(label)
        self.invalid_all_255 = invalid_all_255
        self.lo = np.full(3, 255)
        self.hi = np.zeros(3, dtype=np.int64)
        self.sums = np.zeros(3)
        self.n_valid = 0

    def add(self, arr: np.ndarray) -> str | None:
        super().add(arr)
        flat = arr.reshape(-1, 3)
        if self.invalid_all_255:
            flat = flat[~(flat == 255).all(axis=1)]
        if len(flat):
            self.lo = np.minimum(self.lo, flat.min(axis=0))
            self.hi = np.maximum(self.hi, flat.max(axis=0))
            self.sums += flat.sum(axis=0, dtype=np.float64)
            self.n_valid += len(flat)
        return None

    def summary(self) -> str:
        means = self.sums / max(self.n_valid, 1)
        chans = ", ".join(f"{c} {lo}..{hi} mean {m:.1f}" for c, lo, hi, m in zip("RGB", self.lo, self.hi, means))
        text = f"{self.label} (file channels): {chans}"
        if self.invalid_all_255:
            text += f"; invalid (255,255,255) {_pct(self.pixels - self.n_valid, self.pixels)}"
        return text


def _pct(n: int, total: int) -> str:
    return f"{100.0 * n / max(total, 1):.2f}% of pixels"


@dataclass
class Spec:
    """How to check one dataset: its index, the per-field readers and statistics."""

    index_name: str
    fields: tuple[str, ...]
    readers: dict[str, Callable[[Path], np.ndarray]]
    make_stats: Callable[[], dict[str, Stats]]
    base: Callable[[Path, str, list[list[str]]], Path] = lambda root, key, entries: root  # noqa: E731
    extra: Callable[[Path], list[str]] = lambda root: []  # noqa: E731


def _taskonomy_extra(root: Path) -> list[str]:
    try:
        w = taskonomy.load_class_weights(root)
    except DatasetError as e:
        return [str(e)]
    print(f"class weights ({taskonomy.PRIOR_NAME}): {w.min():.4g} .. {w.max():.4g}")
    return []


def _clip_stats(label: str, clip: float) -> RangeStats:
    return RangeStats(f"{label} (raw 16-bit)", lambda a: a >= clip * 2**16, f"above the clip ({clip}·2^16)",
                      flag_is_invalid=False)


SPECS: dict[str, Spec] = {
    "nyuv2": Spec(
        nyuv2.INDEX_NAME, nyuv2.FIELDS,
        {"img": nyuv2.read_image, "seg": nyuv2.read_seg, "normal": nyuv2.read_normal, "depth": nyuv2.read_depth},
        lambda: {"seg": IdStats("seg", nyuv2.NUM_CLASSES, 255), "normal": NormalStats("normal", True),
                 "depth": RangeStats("depth", lambda a: ~(a > 0), "invalid (0)", " m")}),
    "taskonomy": Spec(
        taskonomy.INDEX_NAME, taskonomy.FIELDS,
        {"img": taskonomy.read_image, "seg": lambda p: taskonomy.read_gray(p, "single-channel segmentation"),
         "normal": taskonomy.read_normal, "depth": lambda p: taskonomy.read_gray(p, "16-bit depth"),
         "keypoint": lambda p: taskonomy.read_gray(p, "16-bit keypoint"),
         "edge": lambda p: taskonomy.read_gray(p, "16-bit edge")},
        lambda: {"seg": IdStats("seg (raw ids)", taskonomy.NUM_CLASSES + 1, None),
                 "normal": NormalStats("normal", False),
                 "depth": RangeStats("depth (raw 16-bit)", lambda a: a >= taskonomy.DEPTH_MAX_VALID,
                                     f"masked (>= {taskonomy.DEPTH_MAX_VALID})"),
                 "keypoint": _clip_stats("keypoints2d", taskonomy.KEYPOINT_CLIP),
                 "edge": _clip_stats("edge_texture", taskonomy.EDGE_CLIP)},
        taskonomy.Taskonomy.files_base, _taskonomy_extra),
}


@dataclass
class Report:
    splits: dict[str, int] = field(default_factory=dict)
    sizes: Counter = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)


def check_dataset(name: str, data_root: str | Path, progress: bool | None = None) -> Report:
    """Walk every split; print the statistics and return the report (``DatasetError`` if no root)."""
    spec = SPECS[name]
    root = check_root(data_root, spec.index_name)
    report = Report()
    print(f"{name} at {root}")
    report.problems += spec.extra(root)
    try:
        index = load_index(root, spec.index_name)
    except DatasetError as e:
        report.problems.append(str(e))
        return report
    stats = spec.make_stats()
    seen: dict[Path, tuple[int, ...] | None] = {}  # decode each file once, even when splits share it
    for key in index:
        try:
            entries = split_entries(index, root / spec.index_name, key, spec.fields)
        except DatasetError as e:
            report.problems.append(str(e))
            continue
        report.splits[key] = len(entries)
        base = spec.base(root, key, entries)
        disable = None if progress is None else not progress  # None: bars only on a terminal
        for entry in tqdm(entries, desc=f"check {key}", file=sys.stderr, disable=disable, leave=False):
            _check_entry(spec, base, entry, stats, seen, report)
    _print(report, stats)
    return report


def _check_entry(spec: Spec, base: Path, entry: list[str], stats: dict[str, Stats],
                 seen: dict[Path, tuple[int, ...] | None], report: Report) -> None:
    shapes: dict[str, tuple[int, ...] | None] = {}
    for fld, rel in zip(spec.fields, entry):
        path = base / rel
        if path not in seen:
            seen[path] = None
            try:
                arr = spec.readers[fld](path)
            except DatasetError as e:
                report.problems.append(str(e))
                continue
            seen[path] = arr.shape
            if fld == "img":
                report.sizes[f"{arr.shape[1]}x{arr.shape[0]}"] += 1
            elif (issue := stats[fld].add(arr)) is not None:
                report.problems.append(f"{path}: {issue}")
        shapes[fld] = seen[path]
    img = shapes.get("img")
    for fld, shape in shapes.items():
        if img is not None and shape is not None and fld != "img" and shape[:2] != img[:2]:
            report.problems.append(f"{base / entry[spec.fields.index(fld)]}: size {shape[1]}x{shape[0]} differs "
                                   f"from its image's {img[1]}x{img[0]}")


def _print(report: Report, stats: dict[str, Stats]) -> None:
    print("splits: " + ", ".join(f"{k} {n}" for k, n in report.splits.items()))
    print("image sizes (WxH): " + ", ".join(f"{s}: {n}" for s, n in report.sizes.most_common()))
    for s in stats.values():
        print(s.summary())


def main(argv: Sequence[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m main.data.check", description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", required=True, choices=sorted(SPECS))
    parser.add_argument("--data_root", required=True, help="the dataset folder (holding the JSON index)")
    parser.add_argument("--progress", choices=("auto", "on", "off"), default="auto")
    try:
        args = parser.parse_args(argv)
    except UserError as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 2
    progress = {"auto": None, "on": True, "off": False}[args.progress]
    try:
        report = check_dataset(args.dataset, args.data_root, progress)
    except DatasetError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if report.problems:
        print(f"{len(report.problems)} problem(s):")
        for p in report.problems:
            print(f"  {p}")
        return 1
    print("all files readable and consistent")
    return 0


if __name__ == "__main__":
    sys.exit(main())
