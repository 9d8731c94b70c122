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

from .allocator import keep_freed_memory
from .checkpoint import CheckpointError, load_checkpoint, load_newest_intact
from .config import Config, ConfigError, dump_yaml
from .data import build_dataset, dataset_info, verify_dataset
from .distributed import DistInfo
from .models import build_model
from .run_dir import check_run_dir
from .tasks import metric_directions
from .trainer import Trainer, checkpoint_name, parse_metric_selector

# Flags that may change when a run is resumed; any other difference would silently break "exact resume".
RESUMABLE_OVERRIDES = {"iters", "device", "progress", "num_workers", "val_iters", "log_every", "save_iters",
                       "tensorboard", "resume", "data_root", "save_dir", "skip_bad_samples", "keep_checkpoints",
                       "max_bad_steps"}


def resolve_device(name: str) -> torch.device:
    """The device of ``--device``; for a CPU run, also the allocator settings of ``main.allocator``."""
    device = _parse_device(name)
    if device.type == "cpu":
        keep_freed_memory()
    return device


def _parse_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"--device {name!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda"):  # meta, mps, xpu ...: not paths this project trains or tests on
        raise ConfigError(f"--device {name}: this project runs on cpu or cuda; use auto, cpu, cuda or cuda:N")
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


def config_for_resume(cfg: Config, explicit: set[str]) -> tuple[Config, dict]:
    """The checkpoint's config, with only the resumable flags the user gave on the command line."""
    stem = _resume_stem(Path(cfg.save_dir), cfg, explicit)
    path, state = load_newest_intact(Path(cfg.save_dir), stem, warn=lambda m: print(f"warning: {m}"))
    if not isinstance(state.get("config"), dict):
        raise CheckpointError(f"{path} carries no config, so --resume cannot continue it; start a new run")
    if "optimizer" not in state:  # pruning.py writes pruned weights and masks, not a training state
        raise CheckpointError(f"{path} holds no training state (it was written by pruning.py), so --resume cannot "
                              f"continue it; fine-tune it instead: python finetune.py --load_checkpoint {path} "
                              "--save_dir NEW_FOLDER")
    resumed = Config.from_dict(state["config"], source=str(path))
    preset_file, preset_keys = getattr(cfg, "preset", (None, set()))
    for key in sorted(set(explicit) | set(preset_keys)):
        ours, theirs = getattr(cfg, key), getattr(resumed, key)
        if key in RESUMABLE_OVERRIDES:
            setattr(resumed, key, ours)
        elif ours != theirs and key not in ("config",):
            given = f"--{key} {ours}" if key in explicit else f"--config {preset_file} sets {key}: {ours}, which"
            raise ConfigError(f"{given} differs from the resumed run's {theirs}; a resumed run keeps its "
                              "settings (start a new run with --reload to change them)")
    resumed.resume = True
    return resumed.validate(), state


def _resume_stem(save_dir: Path, cfg: Config, explicit: set[str]) -> str:
    """The checkpoint name ``--resume`` continues.  The name follows the tasks: a run of other tasks than the
    current defaults is found by its own file; other ``--tasks`` given explicitly get the true reason."""
    stem = Path(checkpoint_name(cfg.tasks)).stem
    if (save_dir / f"{stem}.model").is_file() or any((save_dir / "checkpoints").glob(f"{stem}_iter*.model")):
        return stem
    others = sorted(p.stem for p in save_dir.glob("*.model") if not p.name.startswith("best_"))
    if others and "tasks" in explicit:
        raise ConfigError(f"--tasks {' '.join(cfg.tasks)} differs from the run in {save_dir} ({others[0]}.model); "
                          "a resumed run keeps its tasks: drop --tasks")
    return others[0] if len(others) == 1 else stem


def check_fits(model: torch.nn.Module, state: dict, source: str, cfg: Config) -> None:
    """``state``'s weights load into ``model``, or a ``CheckpointError`` naming the difference and the fix."""
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
    try:
        model.load_state_dict(state["state_dict"])
    except (RuntimeError, TypeError, ValueError) as e:
        lines = [line for line in str(e).splitlines() if line.strip()] or ["mismatched weights"]
        detail = " ".join(lines[min(1, len(lines) - 1)].split())[:200]  # line 0 is "Error(s) in loading ..."
        raise CheckpointError(f"{source} does not fit this model (it has dataset {theirs.get('dataset')!r}, "
                              f"width_mult {theirs.get('width_mult')}; this run {cfg.dataset!r}, {cfg.width_mult}: "
                              f"{detail}); pass the checkpoint's --dataset / --width_mult or use a matching "
                              "checkpoint") from None


def check_batch_fits(cfg: Config, train_set, world_size: int = 1) -> None:
    """The sampler drops incomplete batches: the training split must hold at least one global batch."""
    n, batch = len(train_set), cfg.batch_size * world_size
    if n < batch:
        per_process = f" x {world_size} processes" if world_size > 1 else ""
        raise ConfigError(f"--batch_size {cfg.batch_size}{per_process} is larger than the training split "
                          f"({n} samples; incomplete batches are dropped); lower --batch_size to at most "
                          f"{max(n // world_size, 1)} or add training data")


def build_trainer(cfg: Config, explicit: set[str] | None = None, dist_info: DistInfo | None = None,
                  device: torch.device | None = None) -> Trainer:
    """Everything ``baseline.py`` needs before ``trainer.train()``, in an order that fails fast.

    Every check a user mistake can fail (flags, run folder, device, checkpoints, dataset files, batch size,
    checkpoint-to-model fit) runs before the run folder is created, so a refused run writes nothing.
    """
    explicit = explicit or set()
    dist_info = dist_info or DistInfo()
    state = None
    if cfg.resume:
        if not Path(cfg.save_dir).is_dir():
            raise ConfigError(f"--resume: {cfg.save_dir} does not exist; start the run without --resume")
        cfg, state = config_for_resume(cfg, explicit)
    if dist_info.is_main:
        check_run_dir(cfg, create=False)
    device = device or resolve_device(cfg.device)
    reload_state = load_checkpoint(cfg.reload) if cfg.reload else None
    seed_everything(cfg.seed, dist_info.rank, cfg.deterministic)
    info = dataset_info(cfg)
    if cfg.select_by.startswith("metric:"):  # a metric this run does not report: refused before any work
        parse_metric_selector(cfg.select_by, metric_directions(info.metric_style, info.tasks))
    train_set = build_dataset(cfg, "train")
    val_set = build_dataset(cfg, "val")
    check_batch_fits(cfg, train_set, dist_info.world_size)
    verify_dataset(train_set)
    verify_dataset(val_set)
    model = build_model(cfg.architecture, info.task_channels, cfg.width_mult, cfg.sInit_value,
                        sparse=not cfg.dense, head_dropout=cfg.head_dropout, threshold_scope=cfg.threshold_scope)
    if state is not None:
        check_fits(model, state, f"{cfg.save_dir}", cfg)
    elif reload_state is not None:
        check_fits(model, reload_state, cfg.reload, cfg)
    if dist_info.is_main:
        check_run_dir(cfg)  # all checks passed: only now does the run folder appear
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
    if not isinstance(state.get("config"), dict):
        raise CheckpointError(f"{source} carries no config; it was not written by this code, use a checkpoint "
                              "written by baseline.py, pruning.py or finetune.py")
    cfg = Config.from_dict(state["config"], source=source)
    for key, value in (overrides or {}).items():
        setattr(cfg, key, value)
    try:  # a stored config with an unknown architecture, task or dataset: one line naming the checkpoint
        cfg.validate()
    except ConfigError as e:
        raise CheckpointError(f"{source}: its stored config is not usable here ({e})") from None
    info = dataset_info(cfg)
    model = build_model(cfg.architecture, info.task_channels, cfg.width_mult, cfg.sInit_value,
                        sparse=not cfg.dense, head_dropout=cfg.head_dropout, threshold_scope=cfg.threshold_scope)
    try:
        model.load_state_dict(state["state_dict"])
    except (RuntimeError, TypeError, ValueError) as e:
        raise CheckpointError(f"{source}: weights do not fit the model its config describes "
                              f"({str(e).splitlines()[0]})") from None
    model.set_sparse(not cfg.dense)
    return cfg, model.to(device)


def build_masked_trainer(checkpoint: str, cfg: Config, explicit: set[str], dist_info: DistInfo | None = None,
                         device: torch.device | None = None) -> tuple[Trainer, dict]:
    """A new hard-masked run from a (pruned) checkpoint: its config with the given flags on top, masks enforced.

    What ``finetune.py`` and the structured-pruning schedule share: the checkpoint's weights (dense storage, no
    soft thresholds), a fresh optimiser and schedule, and the stored masks (or, for a checkpoint without masks,
    its zero weights) zeroing gradients and re-zeroing weights after every step.
    """
    from .masks import MaskSet

    state = load_checkpoint(checkpoint)
    if not isinstance(state.get("config"), dict):
        raise CheckpointError(f"{checkpoint} carries no config; pass a checkpoint written by pruning.py, "
                              "baseline.py or finetune.py")
    base = Config.from_dict(state["config"], source=checkpoint)
    for key in explicit:
        setattr(base, key, getattr(cfg, key))
    base.dense, base.reload, base.resume = True, checkpoint, False
    trainer = build_trainer(base.validate(), explicit, dist_info, device)
    masks = MaskSet(trainer.model)
    if state.get("masks") is not None:
        masks.load_state_dict(state["masks"])
    else:
        masks = MaskSet.from_weights(trainer.model)
    trainer.set_masks(masks)
    return trainer, state
