"""The command-line parsers of the training-side entry scripts, built from ``main.config.Config``.

``--config FILE.yaml`` loads a preset; explicit flags override it (timm-style two-stage parse).  Reference flag
names are kept (``--sInit_value``, ``--decay_lr_freq``, ``--val_iters``, ``--reload``, ``--path`` ...) so the
original shell scripts still run.  Nothing is parsed at import time.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from collections.abc import Sequence

from main.config import Config, ConfigError, Provenance, apply_overrides, field_types, load_yaml
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


def parse_args(argv: Sequence[str] | None = None) -> tuple[Config, Provenance]:
    """Flags -> validated ``Config`` and where its values came from (``Provenance``)."""
    return config_from_namespace(vars(build_parser().parse_args(argv)))


def build_test_parser() -> argparse.ArgumentParser:
    """test.py: everything about the model comes from the checkpoint; only evaluation options here."""
    p = ArgumentParser(description="Evaluate a checkpoint: metrics, sparsity, parameters, Delta_T.")
    p.add_argument("--path", required=True, help="checkpoint (.model) to evaluate")
    p.add_argument("--split", default="test", help="test | val (default: test)")
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    p.add_argument("--overwrite", action="store_true",
                   help="let --json replace an existing file that is not a results JSON (e.g. a checkpoint)")
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


def add_source_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--load_checkpoint", metavar="CKPT",
                        help="checkpoint to start from; its stored config rebuilds the model and data "
                             "(without it: a freshly initialised model from --config / the flags, for at-init methods)")


def config_from_namespace(ns: dict) -> tuple[Config, Provenance]:
    """Parsed flags (only those given) over the defaults and an optional --config YAML, validated."""
    cfg = Config()
    config_file = ns.pop("config", None)
    preset = load_yaml(config_file) if config_file else {}
    apply_overrides(cfg, preset, config_file)
    for key, value in ns.items():
        setattr(cfg, key, value)
    cfg.check()
    return cfg, Provenance(frozenset(ns), config_file, frozenset(preset))


def build_finetune_parser() -> argparse.ArgumentParser:
    parser = build_parser("Fine-tune a pruned checkpoint with its masks enforced (pruned weights stay zero).")
    add_source_args(parser)
    parser.add_argument("--reinit", action="store_true", default=False,
                        help="train the pruned architecture from a fresh random initialisation (seeded by --seed) "
                             "instead of the checkpoint's weights: its masks and removed filters are kept (the "
                             "re-training experiment of the structured-pruning paper)")
    return parser


@dataclasses.dataclass(frozen=True)
class Start:
    """Where ``finetune.py`` starts: the pruned checkpoint (None with --resume), its weights or a fresh init."""

    checkpoint: str | None
    reinit: bool = False


def parse_finetune_args(argv: Sequence[str] | None = None) -> tuple[Config, Provenance, Start]:
    """-> (config, provenance, where the run starts)."""
    ns = vars(build_finetune_parser().parse_args(argv))
    start = Start(ns.pop("load_checkpoint", None), bool(ns.pop("reinit", False)))
    if start.checkpoint is None and not ns.get("resume"):
        raise ConfigError("--load_checkpoint PRUNED.model is required (or --resume to continue a fine-tuning run)")
    if start.reinit and ns.get("resume"):
        raise ConfigError("--reinit starts a new run from a fresh initialisation; --resume continues one: drop "
                          "--reinit (a resumed run keeps what it started from)")
    return (*config_from_namespace(ns), start)
