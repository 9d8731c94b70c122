"""The command-line interface of every entry script: one parser per script, built from ``main.config.Config``.

``--config FILE.yaml`` loads a preset; explicit flags override it (timm-style two-stage parse).  Reference flag
names are kept (``--sInit_value``, ``--decay_lr_freq``, ``--val_iters``, ``--reload``, ``--path`` ...) so the
original shell scripts still run.  Nothing is parsed at import time.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from collections.abc import Sequence

from main.config import Config, ConfigError, apply_overrides, field_types, load_yaml
from main.errors import ArgumentParser as OneLineParser
from main.errors import UserError

GROUPS = ("data", "model", "sparsity", "optimisation", "evaluation", "logging", "run")


class ArgumentParser(OneLineParser):
    """The entry scripts' parser: a command-line mistake is a ``ConfigError`` (one line, exit 2)."""

    def error(self, message: str):  # type: ignore[override]
        try:
            super().error(message)
        except UserError as e:
            raise ConfigError(str(e)) from None


def _optional(cast):
    def parse(text: str):
        return None if text.lower() in ("none", "null") else cast(text)

    parse.__name__ = cast.__name__
    return parse


def _add_config_fields(parser: argparse.ArgumentParser) -> None:
    groups = {g: parser.add_argument_group(g) for g in GROUPS}
    types_ = field_types()
    for f in dataclasses.fields(Config):
        hint = types_[f.name]
        meta = dict(f.metadata)
        group = groups[meta.pop("group")]
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        help_ = f"{meta.pop('help')} (default: {default})"
        optional = type(None) in typing.get_args(hint)
        base = next((a for a in typing.get_args(hint) if a is not type(None)), hint) if optional else hint
        if base is bool:
            group.add_argument(f"--{f.name}", action=argparse.BooleanOptionalAction, help=help_)
            continue
        if typing.get_origin(base) is list:
            base = typing.get_args(base)[0]
        cast = _optional(base) if optional else base
        group.add_argument(f"--{f.name}", type=cast, help=help_, **meta)


def build_parser(description: str | None = None) -> argparse.ArgumentParser:
    """The training parser (baseline.py)."""
    parser = ArgumentParser(description=description or "Train a dense or AdapMTL multitask model.",
                            argument_default=argparse.SUPPRESS)
    parser.add_argument("--config", metavar="FILE.yaml", help="YAML preset; explicit flags override it")
    _add_config_fields(parser)
    return parser


def parse_args(argv: Sequence[str] | None = None) -> Config:
    """Flags -> validated ``Config``; ``cfg.explicit`` holds the names given on the command line."""
    return config_from_namespace(vars(build_parser().parse_args(argv)))


def build_test_parser() -> argparse.ArgumentParser:
    """test.py: everything about the model comes from the checkpoint; only evaluation options here."""
    p = ArgumentParser(description="Evaluate a checkpoint: metrics, sparsity, parameters, Delta_T.")
    p.add_argument("--path", required=True, help="checkpoint (.model) to evaluate")
    p.add_argument("--split", default="test", help="test | val (default: test)")
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    p.add_argument("--reference", metavar="DENSE.json",
                   help="test.py JSON of the dense model: adds Delta_T against it")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default: auto)")
    p.add_argument("--batch_size", type=int, help="evaluation batch size (default: the training one)")
    p.add_argument("--data_root", help="dataset folder, if it moved since training")
    p.add_argument("--metric_definitions", choices=("parity", "standard"),
                   help="parity | standard (default: the training one)")
    p.add_argument("--progress", default="auto", choices=("auto", "on", "off"), help="auto | on | off (default: auto)")
    p.add_argument("--label", help="name of this model in the table (default: the checkpoint's folder)")
    return p


def parse_test_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ns = build_test_parser().parse_args(argv)
    if ns.split not in ("test", "val"):
        raise ConfigError(f"--split {ns.split!r} is not known; choose test or val")
    if ns.batch_size is not None and ns.batch_size <= 0:
        raise ConfigError(f"--batch_size must be a positive integer, got {ns.batch_size}")
    return ns


def _add_source_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--load_checkpoint", metavar="CKPT",
                        help="checkpoint to start from; its stored config rebuilds the model and data "
                             "(without it: a freshly initialised model from --config / the flags, for at-init methods)")


def build_prune_parser() -> argparse.ArgumentParser:
    """pruning.py: the training flags (used when no checkpoint is given) plus the pruning group."""
    parser = build_parser("Hard-prune a checkpoint (or a fresh initialisation) with one criterion.")
    _add_source_args(parser)
    g = parser.add_argument_group("pruning")
    g.add_argument("--method", help="magnitude | random | snip | disparse_pt | disparse_static | taylor | cosprune")
    g.add_argument("--prune_ratio", type=float,
                   help="target: overall sparsity of the prunable weights (structured: fraction of backbone filters)")
    g.add_argument("--backbone_sparsity", type=float,
                   help="magnitude only: backbone pruned to this, the heads jointly to --prune_ratio")
    g.add_argument("--num_batches", type=int, help="batches for gradient-based scores (default 10)")
    g.add_argument("--disparse_score", help="disparse_pt score: magnitude (NYUv2 reference) | w2grad (Taskonomy)")
    return parser


def parse_prune_args(argv: Sequence[str] | None = None) -> tuple[Config, dict]:
    """-> (config for a fresh model or overrides, pruning options); ``cfg.explicit`` as in ``parse_args``."""
    ns = vars(build_prune_parser().parse_args(argv))
    opts = {k: ns.pop(k, None) for k in ("load_checkpoint", "method", "prune_ratio", "backbone_sparsity",
                                         "num_batches", "disparse_score")}
    if opts["method"] is None:
        raise ConfigError("--method is required, e.g. --method magnitude")
    if opts["prune_ratio"] is None or not 0.0 < opts["prune_ratio"] < 1.0:
        raise ConfigError(f"--prune_ratio must be a fraction in (0, 1), got {opts['prune_ratio']}; e.g. 0.9")
    bs = opts["backbone_sparsity"]
    if bs is not None and not 0.0 <= bs < 1.0:
        raise ConfigError(f"--backbone_sparsity must be in [0, 1), got {bs}")
    opts["num_batches"] = opts["num_batches"] or 10
    if opts["num_batches"] <= 0:
        raise ConfigError("--num_batches must be a positive integer")
    return config_from_namespace(ns), opts


def config_from_namespace(ns: dict) -> Config:
    """Parsed flags (only those given) over the defaults and an optional --config YAML, validated."""
    cfg = Config()
    config_file = ns.pop("config", None)
    preset = load_yaml(config_file) if config_file else {}
    apply_overrides(cfg, preset, config_file)
    for key, value in ns.items():
        setattr(cfg, key, value)
    cfg.validate()
    cfg.explicit = set(ns)  # type: ignore[attr-defined]
    cfg.preset = (config_file, set(preset))  # type: ignore[attr-defined]  # --resume holds these to its rule too
    return cfg


def build_finetune_parser() -> argparse.ArgumentParser:
    parser = build_parser("Fine-tune a pruned checkpoint with its masks enforced (pruned weights stay zero).")
    _add_source_args(parser)
    return parser


def parse_finetune_args(argv: Sequence[str] | None = None) -> tuple[Config, str | None]:
    ns = vars(build_finetune_parser().parse_args(argv))
    ckpt = ns.pop("load_checkpoint", None)
    if ckpt is None and not ns.get("resume"):
        raise ConfigError("--load_checkpoint PRUNED.model is required (or --resume to continue a fine-tuning run)")
    return config_from_namespace(ns), ckpt
