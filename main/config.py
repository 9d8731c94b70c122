"""The run configuration: one dataclass, the single source of defaults, types and their checks.

``main/cli/args.py`` builds the command-line parser from these fields (grouped by ``metadata["group"]``), YAML
presets in ``configs/`` override the defaults, explicit flags override the presets.  The resolved config is a plain
dict in every checkpoint, so ``test.py --path`` can rebuild the model without the training flags.  The
defaults are the CPU preset on the embedded synthetic benchmark (``configs/synthetic.yaml``); the paper
settings live in ``configs/nyuv2_*.yaml`` and ``configs/taskonomy_*.yaml``.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any

import yaml

from .atomic import atomic_write_text
from .errors import UserError
from .task_registry import DEFAULT_TASKS, known_tasks

DATASETS = ("synthetic", "nyuv2", "taskonomy")
ARCHITECTURES = ("resnet34", "mobilenetv2")


class ConfigError(UserError, ValueError):
    """A user mistake in flags or a config file; the message names the problem and the fix."""


def _f(default: Any, group: str, help: str, **extra: Any) -> Any:
    meta = {"group": group, "help": help, **extra}
    if isinstance(default, list | tuple):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class Config:
    # -- data
    dataset: str = _f("synthetic", "data", "synthetic | nyuv2 | taskonomy")
    data_root: str | None = _f(None, "data", "dataset folder (real datasets only)")
    tasks: list[str] = _f(list(DEFAULT_TASKS), "data", "tasks, in head order", nargs="+")
    crop_size: int = _f(96, "data", "train crop / test resize (synthetic: render size)")
    train_size: int = _f(2000, "data", "synthetic: number of training scenes (0: an unbounded stream, "
                                           "every scene fresh)")
    val_size: int = _f(200, "data", "synthetic: number of validation scenes")
    test_size: int = _f(200, "data", "synthetic: number of test scenes")
    data_seed: int = _f(0, "data", "synthetic: seed of the scenes (kept apart from --seed so splits stay fixed)")
    batch_size: int = _f(8, "data", "batch size for training and evaluation (per process)")
    num_workers: int = _f(0, "data", "DataLoader worker processes (0 = load in the training process)")
    normals: str = _f("parity", "data", "NYUv2 normals: parity (reference raw BGR 0-255 triples, not flipped) | "
                      "unit (vectors in [-1, 1], x negated on flips)")
    skip_bad_samples: bool = _f(False, "data", "replace unreadable samples by the next good one (counted and "
                                "reported) instead of stopping with an error")
    # -- model
    architecture: str = _f("resnet34", "model", "resnet34 | mobilenetv2")
    width_mult: float = _f(0.125, "model", "channel multiplier for backbone and heads (1.0 = paper shapes)")
    head_dropout: float = _f(0.5, "model", "dropout inside the ASPP heads")
    aspp_rates: list[int] = _f([6, 12, 18, 24], "model", "dilation rates of the ASPP branches (reference 6 12 18 "
                               "24, for 41x41 feature maps; rates past the map make taps that only read padding)",
                               nargs="+")
    # -- sparsity
    dense: bool = _f(False, "sparsity", "train without soft thresholds (the dense baseline)")
    sInit_value: float = _f(-6.0, "sparsity", "initial threshold parameter s for every component")
    sInit_type: str = _f("constant", "sparsity", "only 'constant' (kept for reference scripts)")
    sparse_function: str = _f("sigmoid", "sparsity", "only 'sigmoid' (kept for reference scripts)")
    ratio: float = _f(0.9, "sparsity", "target overall sparsity in (0, 1): thresholds freeze while reached")
    sparsity_control: str = _f("stop", "sparsity", "stop (reference: thresholds freeze while sparsity >= --ratio; "
                               "the final sparsity is set by sInit and weight decay) | budget (a controller steers "
                               "the thresholds to --ratio along a ramp; the split between components stays learned)")
    budget_mode: str = _f("band", "sparsity", "budget control: band (act only above --ratio or below a floor "
                          "ramping linearly to it; thresholds learn freely in between) | track (follow a cubic ramp)")
    budget_ramp: float = _f(0.75, "sparsity", "budget control: fraction of --iters over which the floor (band) or "
                            "the target (track) ramps from the initial sparsity to --ratio")
    budget_gain: float = _f(2.0, "sparsity", "budget control: change of every s per step per unit of sparsity error "
                            "(s moves in log-threshold units; the step is clipped to --budget_max_step)")
    budget_max_step: float = _f(0.1, "sparsity", "budget control: largest change of s per step")
    budget_integral: float = _f(0.1, "sparsity", "budget control: integral gain (removes the steady offset that "
                                "weight decay's shrinking weights leave; 0 = proportional only)")
    threshold_scope: str = _f("component", "sparsity", "component (AdapMTL: one threshold per backbone / head) | "
                              "global (ablation: one threshold shared by every component)")
    threshold_travel: float | None = _f(None, "sparsity", "give the thresholds their own Adam group whose lr is "
                                        "scaled so that its sum over the schedule is this (e.g. 7.75, the reference "
                                        "NYUv2 schedule's); unset: the reference's single group")
    # -- optimisation
    iters: int = _f(1500, "optimisation", "training iterations")
    lr: float = _f(1e-3, "optimisation", "Adam learning rate")
    decay_lr_freq: int = _f(600, "optimisation", "StepLR step size (iterations)")
    decay_lr_rate: float = _f(0.5, "optimisation", "StepLR gamma")
    weight_decay: float = _f(4e-3, "optimisation", "coupled L2 on every parameter, thresholds included")
    task_weighting: str = _f("adaptive", "optimisation", "adaptive (reference sliding window) | equal")
    adaptive_begin: int = _f(400, "optimisation", "iteration at which adaptive weighting starts (ref 5000)")
    adaptive_window: int = _f(40, "optimisation", "sliding-window length (ref 500)")
    adaptive_total: float | None = _f(3.0, "optimisation",
                                      "weights sum to this (reference: 3 for any task count; null = #tasks)")
    priority: list[float] | None = _f(None, "optimisation", "per-task loss priorities (default all 1)",
                                      nargs="+")
    weighting_dtype: str = _f("float32", "optimisation", "adaptive weights computed in float32 | float64 (the "
                                                          "reference's precision)")
    seed: int = _f(0, "optimisation", "seed for data order, augmentation, dropout and init")
    max_bad_steps: int = _f(10, "optimisation", "stop after this many consecutive NaN/Inf losses (each is skipped)")
    deterministic: bool = _f(False, "optimisation", "torch.use_deterministic_algorithms (slower on GPU)")
    amp: str = _f("off", "optimisation", "mixed precision of the forward: off | bf16 | fp16 (fp16 adds loss "
                  "scaling; on CPU use bf16). Thresholds, sparsity counts, losses and weights stay fp32")
    channels_last: bool = _f(False, "optimisation", "NHWC memory layout for model and inputs (training and "
                             "evaluation); checkpoints are stored in the usual layout")
    # -- evaluation
    val_iters: int = _f(300, "evaluation", "validate every N iterations (and at the end)")
    metric_definitions: str = _f("parity", "evaluation", "parity (reference metrics) | standard")
    select_by: str = _f("loss", "evaluation", "best checkpoint by: loss (mean val loss) | score (ref score) | "
                                              "metric:<task>/<metric>, e.g. metric:segment_semantic/Pixel Acc")
    val_loss_mean: str = _f("sample", "evaluation", "validation loss averaged per sample | per batch (the "
                                                    "reference's plain mean over batches)")
    best_after: int = _f(0, "evaluation", "only iterations after this can be 'best' (reference NYUv2: 16000)")
    # -- logging
    save_dir: str = _f("outputs/adapmtl", "logging", "run folder: checkpoints, config.yaml, TensorBoard")
    log_every: int = _f(50, "logging", "log per-layer scalars and print every N iterations")
    save_iters: int = _f(300, "logging", "write the resumable checkpoint every N iterations")
    keep_checkpoints: int = _f(2, "logging", "per-iteration snapshots kept in <save_dir>/checkpoints (0 = only latest)")
    progress: str = _f("auto", "logging", "progress bars: auto (only on a terminal) | on | off")
    tensorboard: bool = _f(True, "logging", "write TensorBoard events (--no-tensorboard to skip)")
    # -- run
    device: str = _f("auto", "run", "auto | cpu | cuda | cuda:N")
    resume: bool = _f(False, "run", "continue the run in --save_dir exactly where it stopped")
    reload: str | None = _f(None, "run", "start a new run from a checkpoint's weights (thresholds reset)")
    overwrite: bool = _f(False, "run", "allow --save_dir to hold a previous run")

    def check(self) -> Config:
        """Check ranges and names; raise ``ConfigError`` with a fix for the first problem found."""
        self._check_finite()
        if not str(self.save_dir).strip():  # '' would write the run into the current folder
            raise ConfigError("--save_dir is empty; name a folder, e.g. --save_dir outputs/run1")
        self.dataset = self.dataset.lower()
        for name, allowed in CHOICES.items():
            _one_of(f"--{name}", getattr(self, name), allowed)
        if not str(self.select_by).startswith("metric:"):
            _one_of("--select_by", self.select_by, ("loss", "score", "metric:<task>/<metric>"))
        self._check_tasks()
        self._check_ranges()
        if self.dataset != "synthetic" and not self.data_root:
            raise ConfigError(f"--dataset {self.dataset} needs --data_root pointing at the dataset folder")
        if self.resume and self.reload:
            raise ConfigError("--resume and --reload exclude each other: resume continues a run, "
                              "reload starts a new one from a checkpoint's weights")
        return self

    def _check_tasks(self) -> None:
        if not self.tasks:
            raise ConfigError("--tasks is empty; name at least one task, e.g. --tasks segment_semantic normal")
        for t in self.tasks:
            _one_of("--tasks", t, known_tasks())
        if len(set(self.tasks)) != len(self.tasks):
            raise ConfigError(f"--tasks lists a task twice: {self.tasks}")
        if self.priority is not None and len(self.priority) != len(self.tasks):
            raise ConfigError(f"--priority needs one value per task ({len(self.tasks)}), got {self.priority}")
        if self.priority is not None and (min(self.priority) < 0 or sum(self.priority) <= 0):
            raise ConfigError(f"--priority values are task weights: each >= 0 and not all 0, got {self.priority}")

    def _check_ranges(self) -> None:
        for name, (low, high, meaning) in INTERVALS.items():
            value = getattr(self, name)
            if not ((low[0] < value if low[1] == "(" else low[0] <= value)
                    and (value < high[0] if high[1] == ")" else value <= high[0])):
                raise ConfigError(f"--{name} must be {meaning.format(value)}")
        for name in POSITIVE_INTS:
            if getattr(self, name) <= 0:
                raise ConfigError(f"--{name} must be a positive integer, got {getattr(self, name)}")
        for name in NON_NEGATIVE:
            if getattr(self, name) < 0:
                raise ConfigError(f"--{name} must be >= 0, got {getattr(self, name)}")
        for name in POSITIVE_NUMBERS:
            if not getattr(self, name) > 0 or not math.isfinite(getattr(self, name)):
                raise ConfigError(f"--{name} must be a positive number, got {getattr(self, name)}")
        if not self.aspp_rates or min(self.aspp_rates) < 1:
            raise ConfigError(f"--aspp_rates needs one or more dilation rates >= 1, got {self.aspp_rates}")
        if self.threshold_travel is not None and self.threshold_travel <= 0:
            raise ConfigError(f"--threshold_travel must be a positive sum of learning rates, got "
                              f"{self.threshold_travel}")
        if self.adaptive_total is not None and self.adaptive_total <= 0:
            raise ConfigError(f"--adaptive_total must be positive, got {self.adaptive_total}")

    def _check_finite(self) -> None:
        """No float option may be NaN or infinite (``--weight_decay nan`` would silently ruin a run)."""
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            for x in value if isinstance(value, list | tuple) else [value]:
                if isinstance(x, float) and not math.isfinite(x):
                    raise ConfigError(f"--{f.name} must be a finite number, got {x}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "config") -> Config:
        """Build from a (possibly partial) dict, refusing unknown keys and wrong types."""
        cfg = cls()
        apply_overrides(cfg, values, source)
        return cfg


# What ``Config.check`` checks, one table per kind of rule (the flag named in the error is the field's name).
CHOICES: dict[str, tuple[str, ...]] = {
    "dataset": DATASETS, "architecture": ARCHITECTURES, "task_weighting": ("adaptive", "equal"),
    "metric_definitions": ("parity", "standard"), "val_loss_mean": ("sample", "batch"),
    "weighting_dtype": ("float32", "float64"), "progress": ("auto", "on", "off"), "normals": ("parity", "unit"),
    "amp": ("off", "bf16", "fp16"), "sInit_type": ("constant",), "sparse_function": ("sigmoid",),
    "sparsity_control": ("stop", "budget"), "threshold_scope": ("component", "global"),
    "budget_mode": ("band", "track"),
}
# name -> ((low, "(" open | "[" closed), (high, ")" | "]"), the error's words after "--name must be")
INTERVALS: dict[str, tuple[tuple[float, str], tuple[float, str], str]] = {
    "budget_ramp": ((0.0, "["), (1.0, "]"), "a fraction of --iters in [0, 1], got {}"),
    "ratio": ((0.0, "("), (1.0, ")"), "a fraction in (0, 1), got {}; e.g. --ratio 0.9"),
    "decay_lr_rate": ((0.0, "("), (1.0, "]"), "in (0, 1], got {}"),
    "head_dropout": ((0.0, "["), (1.0, ")"), "in [0, 1), got {}"),
    # seeds feed torch / numpy generators, which take 64-bit integers (seed + rank under torchrun)
    "seed": ((0, "["), (2**63, ")"), "an integer in [0, 2**63), got {}"),
    "data_seed": ((0, "["), (2**63, ")"), "an integer in [0, 2**63), got {}"),
    # below 8 pixels the output-stride-8 backbone has no feature pixel left (the synthetic renderer's minimum too)
    "crop_size": ((8, "["), (math.inf, ")"), "at least 8 pixels, got {}"),
}
POSITIVE_INTS = ("iters", "batch_size", "crop_size", "val_iters", "log_every", "save_iters", "max_bad_steps",
                 "decay_lr_freq", "adaptive_window", "val_size", "test_size")
NON_NEGATIVE = ("num_workers", "adaptive_begin", "best_after", "keep_checkpoints", "train_size", "budget_integral",
                "weight_decay")
POSITIVE_NUMBERS = ("lr", "width_mult", "budget_gain", "budget_max_step")


@dataclasses.dataclass(frozen=True)
class Provenance:
    """Where a ``Config``'s values came from, returned by the parser beside it.

    ``--resume`` may only change what the user did not set (a resumed run keeps its settings), and commands that
    start from a checkpoint let only the flags given on the command line override the checkpoint's config; both
    rules need to know which keys were given explicitly and which came from the ``--config`` preset.
    """

    explicit: frozenset[str] = frozenset()  # flags given on the command line
    preset_file: str | None = None  # the --config YAML, if any
    preset_keys: frozenset[str] = frozenset()  # keys that YAML sets


def _one_of(flag: str, value: Any, allowed: tuple) -> None:
    if value not in allowed:
        raise ConfigError(f"{flag} {value!r} is not known; choose one of: {', '.join(map(str, allowed))}")


def field_types() -> dict[str, Any]:
    hints = typing.get_type_hints(Config)
    return {f.name: hints[f.name] for f in dataclasses.fields(Config)}


def coerce(name: str, value: Any, hint: Any, source: str) -> Any:
    """Check/convert one YAML value against the field's type hint (ints accepted for floats)."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        hint = next(a for a in args if a is not type(None))
        origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{source}: '{name}' must be a list, got {value!r}")
        return [coerce(name, v, args[0], source) for v in value]
    if hint is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str):
        try:
            return float(value)  # YAML 1.1 reads "1e-4" as a string
        except ValueError:
            pass
    if hint in (int, str, bool) and type(value) is hint:
        return value
    raise ConfigError(f"{source}: '{name}' must be of type {getattr(hint, '__name__', hint)}, got {value!r}")


def apply_overrides(cfg: Config, values: dict[str, Any], source: str) -> None:
    types_ = field_types()
    for key, value in values.items():
        if key not in types_:
            raise ConfigError(f"{source}: unknown key '{key}'; see `python baseline.py --help` for valid names")
        setattr(cfg, key, coerce(key, value, types_[key], source))


class _UniqueKeyLoader(yaml.SafeLoader):
    """A safe loader that refuses a mapping with a key twice (PyYAML keeps the last value without a word)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: set = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"the key {key!r} appears twice (line {key_node.start_mark.line + 1}); keep one",
                    key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load_yaml(path: str) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.load(f, Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader subclass)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}; check the --config path (presets are in configs/)") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path} is not valid YAML ({str(e).splitlines()[0]})") from None
    except (OSError, UnicodeDecodeError) as e:  # a folder, a binary file (a checkpoint), unreadable
        reason = e.strerror if isinstance(e, OSError) and e.strerror else "not a UTF-8 text file"
        raise ConfigError(f"--config {path} cannot be read ({reason}); it must be a YAML preset") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of option names to values")
    return data


def dump_yaml(cfg: Config, path: str, header: str = "") -> None:
    """``cfg`` as YAML; ``header``: comment lines first (a run folder's config.yaml says how its run restarts)."""
    atomic_write_text(path, header + yaml.safe_dump(cfg.to_dict(), sort_keys=False))
