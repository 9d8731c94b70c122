"""What a run shows its user: TensorBoard scalars (reference tag names), a text log, progress bars.

Only the main process (rank 0) writes; other ranks get a silent monitor.  Tag names follow the original
code so existing dashboards and plotting scripts keep working: ``sparsity/<Component>``,
``sparsity/overall_sparsity``, ``Layer_sparsity/<Comp>_<layer>``, ``Layer_thresh/<Comp>_<layer>``,
``LR/<task>/weights``, ``Loss/train/<task>``, ``Loss/val/<task>``, ``Metric/<task>/<metric>``.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from tqdm import tqdm

from .models import BACKBONE
from .task_registry import TASKS

BACKBONE_TAG = "Backbone"


def component_tags() -> dict[str, str]:
    """``{component: short name}`` of the reference's tags: the backbone, then every task (its ``TaskSpec.tag``).

    Built from the registry on each call, so a task registered later gets its tag too; the order (backbone, then
    registry order) fixes the order and colours of components in ``bench.plots``.
    """
    return {BACKBONE: BACKBONE_TAG, **{name: spec.tag for name, spec in TASKS.items()}}


def component_tag(name: str) -> str:
    """Short name of a component in the reference's tags (``sparsity/Seg``); unknown components keep their name."""
    if name == BACKBONE:
        return BACKBONE_TAG
    spec = TASKS.get(name)
    return name if spec is None else spec.tag


def want_progress(mode: str) -> bool:
    """``auto`` shows bars only on a terminal, so batch-job logs are not flooded with carriage returns."""
    return mode == "on" or (mode == "auto" and sys.stderr.isatty())


def progress(iterable=None, *, total: int | None = None, initial: int = 0, desc: str = "", enabled: bool = True,
             leave: bool = True):
    return tqdm(iterable, total=total, initial=initial, desc=desc, disable=not enabled, leave=leave,
                dynamic_ncols=True, mininterval=0.5)


def get_logger(save_dir: str | None, name: str = "adapmtl", enabled: bool = True) -> logging.Logger:
    """Console + ``<save_dir>/train.log`` logger; a disabled one (other ranks) drops everything."""
    logger = logging.getLogger(f"{name}.{save_dir}")
    logger.handlers.clear()
    logger.propagate = False
    if not enabled:
        logger.addHandler(logging.NullHandler())
        return logger
    logger.setLevel(logging.INFO)
    fmt = logging.Formatter("[%(asctime)s] %(message)s", datefmt="%Y-%m-%d %H:%M:%S")
    console = _TqdmHandler()
    console.setFormatter(fmt)
    logger.addHandler(console)
    if save_dir:
        Path(save_dir).mkdir(parents=True, exist_ok=True)
        fh = logging.FileHandler(Path(save_dir) / "train.log")
        fh.setFormatter(fmt)
        logger.addHandler(fh)
    return logger


class _TqdmHandler(logging.Handler):
    """Console lines that do not break an active progress bar."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=sys.stdout)
        except Exception:  # logging must never kill training
            self.handleError(record)


class ScalarWriter:
    """Thin TensorBoard wrapper that is a no-op when disabled (other ranks, ``--no-tensorboard``)."""

    def __init__(self, log_dir: str | None, purge_step: int | None = None) -> None:
        self._writer = None
        if log_dir:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(log_dir=log_dir, purge_step=purge_step)

    def scalar(self, tag: str, value: float, step: int) -> None:
        if self._writer is not None:
            self._writer.add_scalar(tag, value, step)

    def scalars(self, values: dict[str, float], step: int) -> None:
        for tag, value in values.items():
            self.scalar(tag, value, step)

    def flush(self) -> None:
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
