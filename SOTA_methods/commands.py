"""The command lines of the pruning methods: parsers built from the registry, one pruning vocabulary, one summary.

``pruning.py`` and every ``python -m SOTA_methods.<module>`` command that trains take the training flags
(``baseline.py``'s) plus a group of pruning options: the command's own (``--method``, ``--target`` ...) and then each
method's ``add_args``.  The target is ``--target`` everywhere, with ``--prune_ratio`` (the reference's name) as its
alias, so the same words mean the same thing in every command.  The training stages themselves live in
``SOTA_methods.stages``.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence

import torch

from main.cli.args import build_parser, config_from_namespace
from main.config import Config, ConfigError, Provenance
from main.distributed import DistInfo, cleanup, init_distributed
from main.tables import format_table

from .engine import SCOPES
from .registry import Method, OptionGroup

TARGET_HELP = "final overall sparsity of the prunable weights, e.g. 0.9"


def add_target(group: OptionGroup, help: str = TARGET_HELP, required: bool = False) -> None:
    """``--target`` (alias ``--prune_ratio``): the one name of the pruning target in every command."""
    kwargs = {"required": True} if required else {"default": None}
    group.add_argument("--target", "--prune_ratio", dest="target", type=float, help=help, **kwargs)


def check_target(target: float | None, required: bool = True) -> None:
    if (target is None and required) or (target is not None and not 0.0 < target < 1.0):
        raise ConfigError(f"--target/--prune_ratio must be a fraction in (0, 1), got {target}; e.g. --target 0.9")


def add_rounds(group: OptionGroup, scope_help: str) -> None:
    """Round options shared by IMP and LTH (both prune by magnitude in rounds)."""
    group.add_argument("--per_round", type=float, default=0.2,
                       help="fraction of the remaining weights removed per round; the last round lands exactly "
                            "on --target (default 0.2)")
    group.add_argument("--one_shot", action="store_true", default=False,
                       help="a single round straight to --target")
    group.add_argument("--scope", default="global", help=scope_help)


def method_parser(description: str, methods: Sequence[Method] = (),
                  add_common: Callable[[OptionGroup], None] | None = None,
                  title: str = "method") -> tuple[argparse.ArgumentParser, OptionGroup]:
    """The training parser (every ``baseline.py`` flag) plus one group: ``add_common``'s options, then each of
    ``methods``' own (``Method.add_args``), each remembered as belonging to its methods (``OptionGroup.owner``;
    methods that share one ``add_args``, as Taylor and CosPrune do, share its options)."""
    parser = build_parser(description)
    group = OptionGroup(parser.add_argument_group(title))
    if add_common is not None:
        add_common(group)
    added: dict[Callable, list[str]] = {}
    for method in methods:
        if method.add_args is None:
            continue
        if method.add_args not in added:
            start = len(group.dests)
            method.add_args(group)
            added[method.add_args] = group.dests[start:]
        for dest in added[method.add_args]:
            group.owner.setdefault(dest, []).append(method.name)
    return parser, group


def parse_method_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None,
                      group: OptionGroup) -> tuple[Config, Provenance, dict]:
    """-> (config from --config and the flags, its provenance, the group's options).

    An option that belongs to another method than ``--method`` names is refused rather than silently ignored.
    """
    ns = vars(parser.parse_args(argv))
    opts = {k: ns.pop(k, None) for k in group.dests}
    cfg, given = config_from_namespace(ns)
    for dest, owners in group.owner.items():
        if "method" in opts and opts["method"] not in owners and opts[dest] not in (None, parser.get_default(dest)):
            raise ConfigError(f"--{dest} applies to --method {' / '.join(owners)} only")
    if "target" in opts:
        check_target(opts["target"], required=not cfg.resume)
    if "per_round" in opts and not 0.0 < opts["per_round"] < 1.0:
        raise ConfigError(f"--per_round must be a fraction in (0, 1), got {opts['per_round']}; e.g. 0.2")
    if "scope" in opts and opts["scope"] not in SCOPES:
        raise ConfigError(f"--scope {opts['scope']!r} is not known; choose one of: {', '.join(SCOPES)}")
    return cfg, given, opts


def print_summary(label: str, summary: dict, counted: str = "non-zero") -> None:
    """The sparsity table of a ``masks.json`` summary, the weights ``counted``, and where it was written."""
    sp = summary["sparsity"]
    row = {"sparsity": {"components": {c: 100 * v for c, v in sp["components"].items()},
                        "overall": 100 * sp["overall"]}, "metrics": {}}
    print(format_table([(label, row)]))
    print(f"sparsity in %; {sp['nonzero']:,} of {sp['total']:,} prunable weights {counted}")
    print(f"wrote {summary['checkpoint']} and masks.json beside it")


def run_command(parser: argparse.ArgumentParser, argv: Sequence[str] | None, group: OptionGroup,
                run: Callable[[Config, Provenance, dict, DistInfo, torch.device], dict],
                label: str | Callable[[dict], str]) -> int:
    """A training baseline's ``main``: parse, join the process group once (torchrun; every stage shares it),
    run, print the summary on rank 0, always leave the group."""
    cfg, given, opts = parse_method_args(parser, argv, group)
    dist_info, device = init_distributed(cfg.device)
    try:
        summary = run(cfg, given, opts, dist_info, device)
        if dist_info.is_main:
            print_summary(label(summary) if callable(label) else label, summary)
    finally:
        cleanup(dist_info)
    return 0


def method_main(method: Method, argv: Sequence[str] | None) -> int:
    """The ``main`` of a command that runs one method: its parser is the training flags plus its ``add_args``."""
    parser, group = method_parser(method.about, [method])
    return run_command(parser, argv, group, method.run, method.name)
