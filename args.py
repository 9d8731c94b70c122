"""The command-line parsers live in ``main/cli/args.py`` (installable, imported by every entry script).

This alias keeps ``from args import parse_args`` working for scripts written against the project's first layout.
"""

from main.cli.args import build_parser, config_from_namespace, parse_args, parse_finetune_args, parse_test_args

__all__ = ["build_parser", "config_from_namespace", "parse_args", "parse_finetune_args", "parse_test_args"]
