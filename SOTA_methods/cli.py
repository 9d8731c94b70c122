"""``pruning.py``: its parser (the training flags plus the pruning group) and its entry point.

The ``--method`` choices are the registered methods with a one-shot step (``SOTA_methods.catalog``); each adds its
own options to the pruning group, and the chosen one's step is applied by ``oneshot.prune_once``.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from main.cli.args import add_source_args
from main.config import Config, ConfigError, Provenance

from . import catalog
from .catalog import one_shot_methods
from .commands import add_target, check_target, method_parser, parse_method_args, print_summary
from .oneshot import prune_once
from .registry import KINDS, OptionGroup, choose, names

TARGET_HELP = "target: overall sparsity of the prunable weights (structured: fraction of backbone filters)"


def add_pruning_options(group: OptionGroup) -> None:
    """The options every one-shot method shares; each method's own follow (``Method.add_args``)."""
    group.add_argument("--method", help=names(one_shot_methods()))
    add_target(group, TARGET_HELP)
    group.add_argument("--num_batches", type=int, help="batches for gradient-based scores (default 10)")


def build_prune_parser() -> tuple[argparse.ArgumentParser, OptionGroup]:
    """pruning.py: the training flags (used when no checkpoint is given), the source, the pruning group."""
    parser, group = method_parser("Hard-prune a checkpoint (or a fresh initialisation) with one criterion.",
                                  one_shot_methods(), add_pruning_options, title="pruning")
    add_source_args(parser)
    parser.epilog = "methods: " + "; ".join(f"{m.name} ({m.kind}): {m.about}" for m in one_shot_methods())
    return parser, group


def parse_prune_args(argv: Sequence[str] | None = None) -> tuple[Config, Provenance, dict]:
    """-> (config for a fresh model or overrides, its provenance, pruning options)."""
    parser, group = build_prune_parser()
    group.dests.append("load_checkpoint")  # add_source_args' flag, parsed with the pruning options
    cfg, given, opts = parse_method_args(parser, argv, group)
    trains = {m.name: m for m in catalog.methods() if m.prune is None}.get(opts["method"])
    if trains is not None:  # a known method that only exists as a training schedule
        raise ConfigError(f"--method {trains.name} {KINDS[trains.kind]}, so pruning.py cannot apply it once; run "
                          f"it with `{trains.usage}`")
    choose(opts["method"], one_shot_methods())
    check_target(opts["target"])
    opts["num_batches"] = opts["num_batches"] or 10
    if opts["num_batches"] <= 0:
        raise ConfigError("--num_batches must be a positive integer")
    return cfg, given, opts


def main(argv: list[str] | None = None) -> int:
    cfg, given, opts = parse_prune_args(argv)
    summary = prune_once(cfg, given, opts)
    print_summary(opts["method"], summary, counted="kept")
    return 0
