"""Checkpoint files: names, atomic writes, safe loads, the RNG state for exact resume, and the model a file holds.

Everything that reads a checkpoint goes through here (``load_checkpoint``, ``config_of``, ``load_weights``,
``model_from_checkpoint``), so evaluation and export never import the training loop; writing the files of a
running training is ``main.checkpoint_saver``.

Everything stored is a plain type (tensors, numbers, strings, lists, dicts) so ``torch.load(...,
weights_only=True)`` reads it: a checkpoint can never execute code on load.  Writes go to a temporary file in
the same folder and are moved into place with ``os.replace``, so a crash mid-write leaves the previous good
file intact.
"""

from __future__ import annotations

import os
import pickle
import random
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .atomic import atomic_write
from .compact_arch import apply_compact_spec
from .config import Config, ConfigError
from .data import dataset_info
from .errors import UserError
from .masks import check_masks
from .models import MultiTaskModel, model_for

CHECKPOINT_VERSION = 1


class CheckpointError(UserError, RuntimeError):
    """A checkpoint is missing, unreadable or does not fit the model; the message says what to do."""


def atomic_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` atomically (``atomic_write``: new inode, umask mode, old file intact on a crash)."""
    atomic_write(path, lambda f: torch.save(obj, f))


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint safely (``weights_only=True``), turning every failure into a ``CheckpointError``."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path} (check --path / --reload / --resume)")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
        if found is None:
            raise CheckpointError(f"checkpoint {path} is truncated, corrupt or unreadable; use another file") from None
        raise CheckpointError(
            f"refusing to load {path}: it contains pickled code or objects ({found.group(1)}) that could run on "
            "load; use a checkpoint written by this code, or re-save yours as a plain dict of tensors") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError):
        raise CheckpointError(f"checkpoint {path} is truncated, corrupt or unreadable; use another file") from None
    if not isinstance(state, dict) or "state_dict" not in state:
        raise CheckpointError(f"{path} is not a checkpoint of this project (no 'state_dict' entry)")
    if not isinstance(state["state_dict"], Mapping) or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state["state_dict"].items()):
        raise CheckpointError(f"{path}: its 'state_dict' is not a mapping of parameter names to tensors; it was not "
                              "written by this code")
    version = state.get("version", CHECKPOINT_VERSION)
    if not isinstance(version, int) or version > CHECKPOINT_VERSION:
        raise CheckpointError(f"{path} has checkpoint format {version!r}, newer than this code reads (format "
                              f"{CHECKPOINT_VERSION} and older); update the code to the version that wrote it")
    if state.get("masks") is not None:  # every reader refuses masks that do not fit or contradict the weights
        check_masks(state["masks"], state["state_dict"], str(path))
    bad = next((k for k, v in state["state_dict"].items() if isinstance(v, torch.Tensor) and v.is_floating_point()
                and not bool(torch.isfinite(v).all())), None)
    if bad is not None:  # training never writes one (NaN steps are skipped); a damaged or foreign file
        raise CheckpointError(f"{path} holds NaN/Inf weights ({bad}); it cannot be evaluated or trained from; use "
                              "an earlier snapshot (checkpoints/ beside it) or another checkpoint")
    return state


def rng_state() -> dict:
    """Every RNG the training loop touches, as plain types."""
    state = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": _numpy_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(_as_tuple(state["python"]))
    np_state = state["numpy"]
    np.random.set_state((np_state["name"], np_state["keys"].numpy(), np_state["pos"], np_state["has_gauss"],
                         np_state["cached_gaussian"]))
    if "cuda" in state and torch.cuda.is_available():
        cuda = state["cuda"]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)


def _numpy_state() -> dict:
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
            "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}


def _as_tuple(x: Any) -> Any:
    return tuple(_as_tuple(v) for v in x) if isinstance(x, list | tuple) else x


def checkpoint_name(tasks: tuple[str, ...] | list[str], best: bool = False) -> str:
    """Reference file names: ``<tasks joined by _>.model`` and ``best_<...>.model``."""
    return ("best_" if best else "") + "_".join(tasks) + ".model"


def config_of(state: dict, source: str, use: str = "use a checkpoint written by baseline.py, pruning.py or "
              "finetune.py") -> Config:
    """The run config stored in a checkpoint (``use``: what the error message tells the user to do instead)."""
    if not isinstance(state.get("config"), dict):
        raise CheckpointError(f"{source} carries no config; it was not written by this code, {use}")
    return Config.from_dict(state["config"], source=source)


def state_dict_mismatch(model: torch.nn.Module, state_dict: Mapping[str, torch.Tensor]) -> str | None:
    """The first difference between ``state_dict`` and ``model``'s, naming the key; None when they fit."""
    ours = model.state_dict()
    missing = [k for k in ours if k not in state_dict]
    extra = [k for k in state_dict if k not in ours]
    shaped = [k for k in ours if k in state_dict and tuple(ours[k].shape) != tuple(state_dict[k].shape)]
    if shaped:
        k = shaped[0]
        return (f"{k} has shape {tuple(state_dict[k].shape)} in the checkpoint, {tuple(ours[k].shape)} in the "
                f"model; {len(shaped)} tensor(s) differ in shape")
    if missing:
        return f"the checkpoint lacks {missing[0]} ({len(missing)} tensor(s) missing)"
    if extra:
        return f"the checkpoint has {extra[0]}, which the model has not ({len(extra)} unexpected tensor(s))"
    return None


def load_weights(model: MultiTaskModel, state: dict, source: str, cfg: Config) -> None:
    """Load ``state``'s weights into ``model`` (built from ``cfg``), or a ``CheckpointError`` naming the difference
    (architecture, tasks, dataset / width) and the flag that fixes it."""
    check_weights_fit(model, state, source, cfg)
    model.load_state_dict(state["state_dict"])


def check_weights_fit(model: MultiTaskModel, state: dict, source: str, cfg: Config) -> None:
    """What ``load_weights`` refuses, without loading: a run checks the fit before its folder appears and loads
    the weights once, when it restores them."""
    theirs = state["config"] if isinstance(state.get("config"), dict) else {}
    arch = theirs.get("architecture")
    if arch is not None and arch != cfg.architecture:
        raise CheckpointError(f"{source} is a {arch} checkpoint but this run builds {cfg.architecture}; pass "
                              f"--architecture {arch} or use a {cfg.architecture} checkpoint")
    tasks = theirs.get("tasks")
    if tasks is not None and set(tasks) != set(cfg.tasks):
        raise CheckpointError(f"{source} was trained on tasks {' '.join(tasks)} but this run has "
                              f"{' '.join(cfg.tasks)}; pass --tasks {' '.join(tasks)} or use a checkpoint of "
                              "these tasks")
    problem = state_dict_mismatch(model, state["state_dict"])
    if problem is not None:
        raise CheckpointError(f"{source} does not fit this model ({problem}; it has dataset "
                              f"{theirs.get('dataset')!r}, width_mult {theirs.get('width_mult')}; this run "
                              f"{cfg.dataset!r}, {cfg.width_mult}); pass the checkpoint's --dataset / --width_mult "
                              "or use a matching checkpoint")


def architecture_of(cfg: Config, spec: Mapping | None, source: str) -> MultiTaskModel:
    """The (freshly initialised) model a run's config describes, narrowed to a compacted checkpoint's per-layer
    widths when ``spec`` (its ``compact`` entry, ``main.compaction``) is given: how every reader of a checkpoint,
    evaluation and training alike, rebuilds a compact model."""
    model = model_for(cfg, dataset_info(cfg).task_channels)
    if spec is None:
        return model
    try:
        return apply_compact_spec(model, spec)
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise CheckpointError(f"{source}: its compact architecture does not fit the model its config describes "
                              f"({e}); compact the original checkpoint again") from None


def model_from_checkpoint(state: dict, source: str, device: torch.device,
                          overrides: dict | None = None) -> tuple[Config, MultiTaskModel]:
    """Rebuild the model a checkpoint was trained with (config read from the file) and load its weights.

    A compacted checkpoint (``main.compaction``) carries its per-layer widths in ``state["compact"]``; the model
    is built from the config and then narrowed to them (``main.compact_arch.apply_compact_spec``).

    ``overrides`` (e.g. a moved ``data_root``) apply before anything reads the dataset.
    """
    cfg = config_of(state, source)
    for key, value in (overrides or {}).items():
        setattr(cfg, key, value)
    try:  # a stored config with an unknown architecture, task or dataset: one line naming the checkpoint
        cfg.check()
    except ConfigError as e:
        raise CheckpointError(f"{source}: its stored config is not usable here ({e})") from None
    model = architecture_of(cfg, state.get("compact"), source)
    problem = state_dict_mismatch(model, state["state_dict"])
    if problem is not None:
        raise CheckpointError(f"{source}: weights do not fit the model its config describes ({problem})")
    try:
        model.load_state_dict(state["state_dict"])
    except (RuntimeError, TypeError, ValueError) as e:
        raise CheckpointError(f"{source}: weights do not fit the model its config describes "
                              f"({str(e).splitlines()[0]})") from None
    model.set_sparse(not cfg.dense)
    return cfg, model.to(device)
