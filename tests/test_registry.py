"""The method registry: every method declared once and read by pruning.py, the python -m commands and the comparison."""

from __future__ import annotations

from pathlib import Path

import pytest

import SOTA_methods.cli as pruning
from bench import compare_protocol
from main.config import ConfigError
from SOTA_methods import at_init, catalog, commands, imp, registry, structured_train

ROOT = Path(__file__).resolve().parents[1]


def one_shot_names() -> list[str]:
    return [m.name for m in catalog.methods() if m.prune is not None]


def test_every_method_has_a_kind_a_label_and_a_run():
    found = catalog.methods()
    assert {m.name for m in found} >= {"magnitude", "random", "snip", "disparse_pt", "disparse_static",
                                       "disparse_dynamic", "imp", "lth", "taylor", "cosprune"}
    assert len({m.name for m in found}) == len(found)
    for m in found:
        assert m.kind in registry.KINDS and m.label and m.about, m.name
        assert callable(m.run) and (m.prune is None or callable(m.prune)), m.name
        assert m.command == registry.PRUNING_PY or (ROOT / (m.command.replace(".", "/") + ".py")).is_file(), m.name
    order = [list(registry.KINDS).index(m.kind) for m in found]
    assert order == sorted(order)  # listed by kind


def test_the_comparison_takes_labels_and_kinds_from_the_registry():
    for name, row in compare_protocol.METHODS.items():
        if row.kind in ("dense", "adapmtl"):
            continue
        method = catalog.get(name)
        assert (row.label, row.kind) == (method.label, method.kind)


def test_pruning_py_rejects_an_unknown_method_naming_the_known_ones():
    with pytest.raises(ConfigError, match="'lottery' is not known") as err:
        pruning.parse_prune_args(["--method", "lottery", "--target", "0.5"])
    for name in one_shot_names():
        assert name in str(err.value)


def test_pruning_py_sends_a_training_method_to_its_command():
    with pytest.raises(ConfigError, match="python -m SOTA_methods.imp"):
        pruning.parse_prune_args(["--method", "imp", "--target", "0.5"])


def test_target_and_prune_ratio_are_one_option():
    _, _, by_target = pruning.parse_prune_args(["--method", "magnitude", "--target", "0.7"])
    _, _, by_ratio = pruning.parse_prune_args(["--method", "magnitude", "--prune_ratio", "0.7"])
    assert by_target == by_ratio and by_target["target"] == 0.7
    parser, group = commands.method_parser("imp", [imp.IMP])
    for flag in ("--target", "--prune_ratio"):
        _, _, opts = commands.parse_method_args(parser, ["--load_checkpoint", "x.model", flag, "0.8"], group)
        assert opts["target"] == 0.8
    assert structured_train.build_parser().parse_known_args(["--prune_ratio", "0.3", "--window", "1",
                                                             "--per_step", "1"])[0].target == 0.3
    with pytest.raises(ConfigError, match="--prune_ratio must be a fraction"):
        pruning.parse_prune_args(["--method", "magnitude", "--prune_ratio", "90"])


def test_an_option_of_another_method_is_refused():
    with pytest.raises(ConfigError, match="--backbone_sparsity applies to --method magnitude only"):
        pruning.parse_prune_args(["--method", "snip", "--target", "0.5", "--backbone_sparsity", "0.5"])


def test_the_help_lists_the_registry_methods(capsys):
    text = pruning.build_prune_parser()[0].format_help()
    for name in one_shot_names():
        assert name in text
    assert "--prune_ratio" in text and "--target" in text
    hosted = [(at_init.main, ["snip", "disparse_static", "random"]),
              (structured_train.main, ["taylor", "cosprune"])]
    for main, names in hosted:
        with pytest.raises(SystemExit):
            main(["--help"])
        assert " | ".join(names) in capsys.readouterr().out
    assert [m.name for m in at_init.at_init_methods()] == hosted[0][1]


def test_register_refuses_a_second_method_under_a_taken_name(monkeypatch):
    monkeypatch.setattr(registry, "_METHODS", dict(registry._METHODS))
    again = registry.register(imp.IMP)
    assert again is imp.IMP
    clash = registry.Method(name="imp", kind="one-shot", label="other", about="x", run=imp.run_imp, command="x")
    with pytest.raises(ValueError, match="already registered"):
        registry.register(clash)
    with pytest.raises(ValueError, match="kind"):
        registry.register(registry.Method(name="new", kind="someday", label="x", about="x", run=imp.run_imp,
                                          command="x"))


def test_a_new_method_is_one_registration(monkeypatch):
    """Registered, it is a pruning.py --method with its own option, parsed and owned."""
    monkeypatch.setattr(registry, "_METHODS", dict(registry._METHODS))

    def add_args(group):
        group.add_argument("--keep_heads", action="store_true", default=False)

    registry.register(registry.Method(name="toy", kind="one-shot", label="Toy", about="a test method",
                                      run=imp.run_imp, command=registry.PRUNING_PY, add_args=add_args,
                                      prune=lambda inputs: {}))
    _, _, opts = pruning.parse_prune_args(["--method", "toy", "--target", "0.5", "--keep_heads"])
    assert opts["method"] == "toy" and opts["keep_heads"] is True
    assert "toy" in pruning.build_prune_parser()[0].format_help()
    with pytest.raises(ConfigError, match="--keep_heads applies to --method toy only"):
        pruning.parse_prune_args(["--method", "magnitude", "--target", "0.5", "--keep_heads"])
