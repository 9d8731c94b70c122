"""Flags, YAML presets and validation."""

from __future__ import annotations

import pytest

from main.cli.args import build_parser, parse_args
from main.config import Config, ConfigError


def test_defaults_validate_and_round_trip():
    cfg, _ = parse_args([])
    assert cfg.dataset == "synthetic" and not cfg.dense
    assert Config.from_dict(cfg.to_dict()).to_dict() == cfg.to_dict()


def test_yaml_then_flags_override(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("iters: 77\nlr: 1e-4\nweight_decay: 5.0e-5\ntasks: [normal, depth_zbuffer]\n")
    cfg, given = parse_args(["--config", str(f), "--iters", "5"])
    assert cfg.iters == 5 and cfg.lr == 1e-4 and cfg.weight_decay == 5e-5
    assert cfg.tasks == ["normal", "depth_zbuffer"]
    assert given.explicit == {"iters"}
    assert given.preset_file == str(f) and given.preset_keys == {"iters", "lr", "weight_decay", "tasks"}


def test_yaml_unknown_key_and_wrong_type(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("iterations: 5\n")
    with pytest.raises(ConfigError, match="unknown key 'iterations'"):
        parse_args(["--config", str(f)])
    f.write_text("iters: many\n")
    with pytest.raises(ConfigError, match="'iters' must be of type int"):
        parse_args(["--config", str(f)])


@pytest.mark.parametrize("flags,match", [
    (["--ratio", "1.5"], "ratio"), (["--ratio", "0"], "ratio"), (["--iters", "0"], "iters"),
    (["--architecture", "vgg"], "architecture"), (["--tasks", "colour"], "tasks"),
    (["--dataset", "nyuv2"], "data_root"), (["--priority", "1", "2"], "priority"),
    (["--resume", "--reload", "x.model"], "exclude"),
])
def test_validation_errors_name_the_flag(flags, match):
    with pytest.raises(ConfigError, match=match):
        parse_args(flags)


def test_reference_flag_names_exist_and_accept_any_value():
    help_text = build_parser().format_help()
    for flag in ("--dataset", "--architecture", "--iters", "--lr", "--decay_lr_freq", "--val_iters",
                 "--batch_size", "--sInit_value", "--weight_decay", "--ratio", "--save_dir", "--reload"):
        assert flag in help_text
    # no two-value `choices` lists: any positive value is accepted
    cfg, _ = parse_args(["--iters", "1234", "--lr", "3e-4", "--decay_lr_freq", "777", "--val_iters", "13"])
    assert (cfg.iters, cfg.lr, cfg.decay_lr_freq, cfg.val_iters) == (1234, 3e-4, 777, 13)


def test_presets_parse_and_synthetic_preset_is_the_default():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    for preset in sorted((root / "configs").glob("*.yaml")):
        parse_args(["--config", str(preset), "--data_root", "any/folder"])  # real presets need a root
    assert parse_args(["--config", str(root / "configs" / "synthetic.yaml")])[0].to_dict() == Config().to_dict()
