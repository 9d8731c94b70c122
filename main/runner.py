"""Setting up a run from a resolved ``Config``: device, seeds, run folder, data, model, trainer.

The entry scripts stay thin by calling ``build_trainer``; every user mistake found here is a ``ConfigError``
or ``CheckpointError`` whose message names the fix (the scripts print it as one line and exit 2).
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import torch

from .checkpoint import CheckpointError, load_checkpoint
from .config import Config, ConfigError, dump_yaml
from .data import build_dataset, dataset_info
from .distributed import DistInfo
from .models import build_model
from .trainer import Trainer, checkpoint_name

# Flags that may change when a run is resumed; any other difference would silently break "exact resume".
RESUMABLE_OVERRIDES = {"iters", "device", "progress", "num_workers", "val_iters", "log_every", "save_iters",
                       "tensorboard", "resume", "data_root", "save_dir", "skip_bad_samples"}


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"--device {name!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {name}: no CUDA GPU is visible to PyTorch; use --device cpu (or auto)")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError(f"--device {name}: only {torch.cuda.device_count()} GPU(s) visible")
    return device


def seed_everything(seed: int, rank: int = 0, deterministic: bool = False) -> None:
    random.seed(seed + rank)
    np.random.seed((seed + rank) % 2**32)
    torch.manual_seed(seed + rank)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False


def holds_run(save_dir: Path) -> bool:
    return save_dir.is_dir() and (any(save_dir.glob("*.model")) or (save_dir / "config.yaml").exists())


def check_run_dir(cfg: Config) -> None:
    """Refuse to clobber another run; make sure the folder is writable before any work is done."""
    save_dir = Path(cfg.save_dir)
    if holds_run(save_dir) and not (cfg.resume or cfg.overwrite):
        raise ConfigError(f"--save_dir {save_dir} already holds a run; pass --resume to continue it, "
                          "--overwrite to replace it, or choose another --save_dir")
    try:
        save_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"cannot create --save_dir {save_dir} ({e.strerror}); choose a writable folder") from None
    if not os.access(save_dir, os.W_OK):
        raise ConfigError(f"--save_dir {save_dir} is not writable; choose a writable folder")


def config_for_resume(cfg: Config, explicit: set[str]) -> tuple[Config, dict]:
    """The checkpoint's config, with only the resumable flags the user gave on the command line."""
    path = Path(cfg.save_dir) / checkpoint_name(cfg.tasks)
    if not path.is_file():
        candidates = sorted(Path(cfg.save_dir).glob("*.model"))
        candidates = [c for c in candidates if not c.name.startswith("best_")]
        if not candidates:
            raise ConfigError(f"--resume: no checkpoint in {cfg.save_dir}; start the run without --resume")
        path = candidates[0]
    state = load_checkpoint(path)
    resumed = Config.from_dict(state["config"], source=str(path))
    for key in explicit:
        ours, theirs = getattr(cfg, key), getattr(resumed, key)
        if key in RESUMABLE_OVERRIDES:
            setattr(resumed, key, ours)
        elif ours != theirs and key not in ("config",):
            raise ConfigError(f"--{key} {ours} differs from the resumed run's {theirs}; a resumed run keeps its "
                              "settings (start a new run with --reload to change them)")
    resumed.resume = True
    return resumed.validate(), state


def build_trainer(cfg: Config, explicit: set[str] | None = None, dist_info: DistInfo | None = None,
                  device: torch.device | None = None) -> Trainer:
    """Everything ``baseline.py`` needs before ``trainer.train()``, in an order that fails fast."""
    explicit = explicit or set()
    dist_info = dist_info or DistInfo()
    state = None
    if cfg.resume:
        if not Path(cfg.save_dir).is_dir():
            raise ConfigError(f"--resume: {cfg.save_dir} does not exist; start the run without --resume")
        cfg, state = config_for_resume(cfg, explicit)
    if dist_info.is_main:
        check_run_dir(cfg)
    device = device or resolve_device(cfg.device)
    reload_state = load_checkpoint(cfg.reload) if cfg.reload else None
    seed_everything(cfg.seed, dist_info.rank, cfg.deterministic)
    info = dataset_info(cfg)
    train_set = build_dataset(cfg, "train")
    val_set = build_dataset(cfg, "val")
    model = build_model(cfg.architecture, info.task_channels, cfg.width_mult, cfg.sInit_value,
                        sparse=not cfg.dense, head_dropout=cfg.head_dropout)
    trainer = Trainer(cfg, model, info, train_set, val_set, device, dist_info)
    if state is not None:
        trainer.resume_from(state, f"{cfg.save_dir}")
    elif reload_state is not None:
        trainer.reload_from(reload_state, cfg.reload)
    if dist_info.is_main:
        dump_yaml(cfg, str(Path(cfg.save_dir) / "config.yaml"))
    return trainer


def model_from_checkpoint(state: dict, source: str, device: torch.device,
                          overrides: dict | None = None) -> tuple[Config, torch.nn.Module]:
    """Rebuild the model a checkpoint was trained with (config read from the file) and load its weights.

    ``overrides`` (e.g. a moved ``data_root``) apply before anything reads the dataset.
    """
    if "config" not in state:
        raise CheckpointError(f"{source} carries no config; it was not written by this code")
    cfg = Config.from_dict(state["config"], source=source)
    for key, value in (overrides or {}).items():
        setattr(cfg, key, value)
    info = dataset_info(cfg)
    model = build_model(cfg.architecture, info.task_channels, cfg.width_mult, cfg.sInit_value,
                        sparse=not cfg.dense, head_dropout=cfg.head_dropout)
    try:
        model.load_state_dict(state["state_dict"])
    except RuntimeError as e:
        raise CheckpointError(f"{source}: weights do not fit the model its config describes "
                              f"({str(e).splitlines()[0]})") from None
    model.set_sparse(not cfg.dense)
    return cfg, model.to(device)
