"""Setting up a trainer from a resolved ``Config``: resume rules, run folder, data, model, checkpoint weights.

The entry scripts stay thin by calling ``build_trainer``; every user mistake found here is a ``ConfigError``
or ``CheckpointError`` whose message names the fix (the scripts print it as one line and exit 2).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

import torch

from .channel_masks import ChannelMasks
from .checkpoint import (
    CheckpointError,
    architecture_of,
    check_weights_fit,
    checkpoint_name,
    config_of,
    load_checkpoint,
    load_weights,
)
from .checkpoint_saver import newest_intact
from .config import Config, ConfigError, Provenance, dump_yaml, load_yaml
from .data import build_dataset, dataset_info, verify_dataset
from .device import resolve_device
from .distributed import DistInfo
from .masks import MaskSet
from .run_dir import CONFIG_NAME, FROM_SETTINGS, check_run_dir, has_checkpoint, restartable, started_only
from .scores import score_references
from .seeding import seed_everything
from .tasks import metric_directions
from .trainer import Trainer
from .validation import parse_metric_selector

# Flags that may change when a run is resumed; any other difference would silently break "exact resume".
RESUMABLE_OVERRIDES = {"iters", "device", "progress", "num_workers", "val_iters", "log_every", "save_iters",
                       "tensorboard", "resume", "data_root", "save_dir", "skip_bad_samples", "keep_checkpoints",
                       "max_bad_steps"}


def config_for_resume(cfg: Config, given: Provenance, from_settings: bool = False) -> tuple[Config, dict | None]:
    """The checkpoint's config, with only the resumable flags the user gave on the command line.

    No checkpoint that loads (the run was killed before its first, or inside its write): ``restart_config``,
    and no state, so the run restarts from iteration 0.  ``from_settings``: this command starts a run from its
    settings alone (baseline.py), so it may restart one from them.
    """
    stem = _resume_stem(Path(cfg.save_dir), cfg, given.explicit)
    found = newest_intact(Path(cfg.save_dir), stem, warn=lambda m: print(f"warning: {m}"))
    if found is None:
        return restart_config(cfg, given, from_settings), None
    path, state = found
    if not isinstance(state.get("config"), dict):
        raise CheckpointError(f"{path} carries no config, so --resume cannot continue it; start a new run")
    if "optimizer" not in state:  # pruning.py writes pruned weights and masks, not a training state
        raise CheckpointError(f"{path} holds no training state (it was written by pruning.py), so --resume cannot "
                              f"continue it; fine-tune it instead: python finetune.py --load_checkpoint {path} "
                              "--save_dir NEW_FOLDER")
    resumed = keep_settings(Config.from_dict(state["config"], source=str(path)), cfg, given)
    resumed.resume, resumed.reload = True, None  # it continues from its checkpoint; --reload was where it began
    return resumed.check(), state


def keep_settings(run: Config, cfg: Config, given: Provenance) -> Config:
    """``run``'s settings, with the resumable flags the user gave; any other flag given must equal the run's."""
    explicit, preset_file = given.explicit, given.preset_file
    for key in sorted(explicit | given.preset_keys):
        ours, theirs = getattr(cfg, key), getattr(run, key)
        if key in RESUMABLE_OVERRIDES:
            setattr(run, key, ours)
        elif ours != theirs and key not in ("config",):
            said = f"--{key} {ours}" if key in explicit else f"--config {preset_file} sets {key}: {ours}, which"
            raise ConfigError(f"{said} differs from the resumed run's {theirs}; a resumed run keeps its "
                              "settings (start a new run with --reload to change them)")
    return run


def restart_config(cfg: Config, given: Provenance, from_settings: bool) -> Config:
    """The config a ``--resume`` restarts a run with when its folder holds no checkpoint that loads.

    Why: a run killed before its first checkpoint (or inside its write, or a start that failed on bad data) must
    not be a dead end where only ``--overwrite`` helps: a requeued job repeats the same ``--resume``.  A run that
    started from its settings alone (its ``config.yaml`` says so, ``FROM_SETTINGS``) restarts from iteration 0
    with that file's settings (the flags given follow the ordinary resume rules); one killed before even that
    file (only the lock is there) with the flags given.  Any other folder gets a message naming what to do.
    """
    save_dir = Path(cfg.save_dir)
    config_file = save_dir / CONFIG_NAME
    if from_settings and restartable(save_dir):
        started = keep_settings(Config.from_dict(load_yaml(str(config_file)), source=str(config_file)), cfg, given)
    elif from_settings and started_only(save_dir):
        started = Config.from_dict(cfg.to_dict())
    else:
        raise no_checkpoint(save_dir)
    started.resume = started.overwrite = False
    print(f"notice: --resume: no checkpoint in {save_dir} loads (the run stopped before its first); restarting it "
          f"from iteration 0 with {'its config.yaml' if config_file.is_file() else 'the flags given'}")
    return started.check()


def no_checkpoint(save_dir: Path) -> CheckpointError:
    """Why ``--resume`` cannot continue or restart ``save_dir``, and what does (agreeing with ``occupied``)."""
    if has_checkpoint(save_dir):
        return CheckpointError(f"--resume: every checkpoint in {save_dir} is unreadable; start a new run with "
                               "--overwrite")
    if (save_dir / CONFIG_NAME).exists():
        return CheckpointError(f"--resume: {save_dir} holds no checkpoint yet and this command cannot rebuild its "
                               "start from config.yaml; start it again with its own command plus --overwrite")
    return CheckpointError(f"--resume: no checkpoint in {save_dir}; start the run without --resume")


def _resume_stem(save_dir: Path, cfg: Config, explicit: frozenset[str]) -> str:
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


def check_batch_fits(cfg: Config, train_set, world_size: int = 1) -> None:
    """The sampler drops incomplete batches: the training split must hold at least one global batch."""
    n, batch = len(train_set), cfg.batch_size * world_size
    if n < batch:
        per_process = f" x {world_size} processes" if world_size > 1 else ""
        raise ConfigError(f"--batch_size {cfg.batch_size}{per_process} is larger than the training split "
                          f"({n} samples; incomplete batches are dropped); lower --batch_size to at most "
                          f"{max(n // world_size, 1)} or add training data")


def start_again_if_nothing_to_resume(cfg: Config, given: Provenance, start: str | None,
                                     missing: str) -> tuple[Config, Provenance]:
    """``--resume`` of a run killed before its first checkpoint, by a command whose start needs more than its
    config.yaml (masks, scores, a source checkpoint): there is nothing to continue, so the run starts again from the
    command line, which carries its start (``start``: what it starts from, for the notice), replacing the dead
    start's files.  ``start`` None: the command line lacks it, and the error says which flag (``missing``).

    Why: a requeued cluster job repeats its own ``--resume`` command; without a checkpoint it would loop.
    """
    save_dir = Path(cfg.save_dir)
    if not (cfg.resume and save_dir.is_dir() and not has_checkpoint(save_dir)):
        return cfg, given
    if start is None:
        raise ConfigError(f"--resume: {save_dir} holds no checkpoint yet (the run stopped before its first); to start "
                          f"it again give {missing} with --resume, or start it with --overwrite")
    print(f"notice: --resume: {save_dir} holds no checkpoint yet (the run stopped before its first); starting it "
          f"again from {start}")
    cfg.resume, cfg.overwrite = False, True
    return cfg, replace(given, explicit=given.explicit | {"resume", "overwrite"})


def resume_point(cfg: Config, given: Provenance, from_settings: bool) -> tuple[Config, dict | None, bool]:
    """(config, checkpoint state or None, restart): a new run, a resumed one, or one ``--resume`` restarts from
    iteration 0 because its folder holds no checkpoint yet (``restart_config``)."""
    if not cfg.resume:
        return cfg, None, False
    if not Path(cfg.save_dir).is_dir():
        raise ConfigError(f"--resume: {cfg.save_dir} does not exist; start the run without --resume")
    cfg, state = config_for_resume(cfg, given, from_settings)
    return cfg, state, state is None


def build_trainer(cfg: Config, given: Provenance | None = None, dist_info: DistInfo | None = None,
                  device: torch.device | None = None, compact: Mapping | None = None,
                  from_settings: bool = False) -> Trainer:
    """Everything ``baseline.py`` needs before ``trainer.train()``, in an order that fails fast.

    Every check a user mistake can fail (flags, run folder, device, checkpoints, dataset files, batch size,
    checkpoint-to-model fit) runs before the run folder is created, so a refused run writes nothing.  A compacted
    architecture (``compact``: a compact checkpoint's widths) comes from the argument, the resumed run or the
    ``--reload`` checkpoint, and is stored in the run's own checkpoints.  ``from_settings``: the caller starts
    runs from their settings alone (baseline.py; not a run that masks or scores after this), so its config.yaml is
    marked and a ``--resume`` before the first checkpoint restarts it (``restart_config``).
    """
    given = given or Provenance()
    dist_info = dist_info or DistInfo()
    cfg, state, restart = resume_point(cfg, given, from_settings)
    marked = from_settings and (state is None or restartable(Path(cfg.save_dir)))  # a resume keeps the mark
    inputs = {"--config": given.preset_file}  # files --overwrite must not delete
    if dist_info.is_main:
        check_run_dir(cfg, create=False, inputs=inputs, restart=restart)
    device = device or resolve_device(cfg.device)
    reload_state = load_checkpoint(cfg.reload) if cfg.reload else None
    seed_everything(cfg.seed, dist_info.rank, cfg.deterministic)
    info = dataset_info(cfg)
    if cfg.select_by.startswith("metric:"):  # a metric this run does not report: refused before any work
        parse_metric_selector(cfg.select_by, metric_directions(info.metric_style, info.tasks))
    if cfg.select_by == "score":  # the reference's denominators exist for these tasks (else: one line, now)
        score_references(cfg.architecture, info.tasks, info.metric_style)
    train_set = build_dataset(cfg, "train")
    val_set = build_dataset(cfg, "val")
    check_batch_fits(cfg, train_set, dist_info.world_size)
    verify_dataset(train_set)
    verify_dataset(val_set)
    compact = compact if compact is not None else (state if state is not None else reload_state or {}).get("compact")
    model = architecture_of(cfg, compact, str(cfg.reload or cfg.save_dir))
    if state is not None:  # the fit only: the weights are loaded once, by resume_from / reload_from below
        check_weights_fit(model, state, f"{cfg.save_dir}", cfg)
    elif reload_state is not None:
        check_weights_fit(model, reload_state, cfg.reload, cfg)
    if dist_info.is_main:
        check_run_dir(cfg, inputs=inputs, restart=restart)  # all checks passed: only now does the folder appear
    trainer = Trainer(cfg, model, info, train_set, val_set, device, dist_info)
    trainer.compact = compact
    if state is not None:
        trainer.resume_from(state, f"{cfg.save_dir}")
    elif reload_state is not None:
        trainer.reload_from(reload_state, cfg.reload)
    if dist_info.is_main:
        dump_yaml(cfg, str(Path(cfg.save_dir) / CONFIG_NAME), header=FROM_SETTINGS if marked else "")
    return trainer


def build_masked_trainer(checkpoint: str, cfg: Config, given: Provenance, dist_info: DistInfo | None = None,
                         device: torch.device | None = None, reinit: bool = False) -> tuple[Trainer, dict]:
    """A new hard-masked run from a (pruned) checkpoint: its config with the given flags on top, masks enforced.

    What ``finetune.py`` and the structured-pruning schedule share: the checkpoint's weights (dense storage, no
    soft thresholds), a fresh optimiser and schedule, and the stored masks (or, for a checkpoint without masks,
    its zero weights) zeroing gradients and re-zeroing weights after every step.  ``reinit``: the weights are a
    fresh seeded initialisation instead, the pruned architecture (masks, and the removed filters, returned in
    ``state["channel_masks"]`` for ``ChannelMasks.from_checkpoint``) is the checkpoint's.
    """
    state = load_checkpoint(checkpoint)
    base = config_of(state, checkpoint, "pass a checkpoint written by pruning.py, baseline.py or finetune.py")
    for key in given.explicit:
        setattr(base, key, getattr(cfg, key))
    base.dense, base.reload, base.resume = True, None if reinit else checkpoint, False
    trainer = build_trainer(base.check(), given, dist_info, device, state.get("compact"))
    source = _pruned_model(state, checkpoint, base) if reinit else trainer.model
    found = MaskSet(source)
    if state.get("masks") is not None:
        found.load_state_dict(state["masks"])
    else:
        found = MaskSet.from_weights(source)
    if reinit:  # what the checkpoint removed, read off its own weights before the fresh ones replace them
        state = {**state, "channel_masks": ChannelMasks.from_checkpoint(source, state, found).state_dict()}
    masks = MaskSet(trainer.model)
    masks.load_state_dict(found.state_dict())
    trainer.set_masks(masks)
    return trainer, state


def _pruned_model(state: dict, source: str, cfg: Config) -> torch.nn.Module:
    """The checkpoint's own (dense-storage) model, on the CPU: where its masks and removed filters are read."""
    model = architecture_of(cfg, state.get("compact"), source)
    load_weights(model, state, source, cfg)
    return model
