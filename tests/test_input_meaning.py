"""Inputs are checked for meaning where they are read, and a plausible mistake ends in one `error:` line, exit 2,
nothing written: label ranges, non-finite targets, checkpoint format versions, state dicts and masks that do not
fit, duplicate YAML keys, a diverging run, out-of-range seeds and crops, names too long for the file system."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from fixtures_datasets import make_nyuv2
from PIL import Image

import main.cli.train as baseline
import SOTA_methods.cli as pruning
from main.data.errors import DatasetError
from main.data.nyuv2 import NYUv2

ROOT = Path(__file__).resolve().parents[1]
CKPT = "segment_semantic_normal_depth_zbuffer.model"


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / args[0]), *args[1:]], cwd=cwd, capture_output=True, text=True,
                          timeout=300)


def refused(proc: subprocess.CompletedProcess, needle: str) -> None:
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], proc.stderr[-2000:]


@pytest.mark.parametrize("shift", [1, 2])
def test_segmentation_ids_outside_the_classes_are_refused_naming_the_file(tmp_path, shift):
    data = make_nyuv2(tmp_path, n_train=2, n_test=1)
    rel = data["train"][1]["paths"][1]
    seg = np.array(Image.open(tmp_path / rel))
    seg[seg != 255] = np.minimum(seg[seg != 255].astype(int) + shift, 254).astype(np.uint8)
    seg[0, 0] = 39 + shift
    Image.fromarray(seg).save(tmp_path / rel)
    ds = NYUv2(tmp_path, "train", crop_size=17)
    ds[0]  # a good sample still loads
    with pytest.raises(DatasetError, match="seg/train_1.png") as e:
        ds[1]
    assert f"id {39 + shift}" in str(e.value) and ("1-based" in str(e.value)) == (shift == 1)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_depth_is_refused(tmp_path, bad):
    data = make_nyuv2(tmp_path, n_train=1, n_test=1)
    rel = data["train"][0]["paths"][3]
    depth = np.load(tmp_path / rel)
    depth[:] = bad  # an all-NaN map would otherwise be masked out entirely: depth loss 0, no word
    np.save(tmp_path / rel, depth)
    with pytest.raises(DatasetError, match="non-finite"):
        NYUv2(tmp_path, "train", crop_size=17)[0]


def test_training_on_bad_labels_stops_before_writing(tmp_path):
    data = make_nyuv2(tmp_path / "data", n_train=2, n_test=1)
    rel = data["train"][0]["paths"][1]
    seg = np.array(Image.open(tmp_path / "data" / rel))
    seg[0, 0] = 40
    Image.fromarray(seg).save(tmp_path / "data" / rel)
    proc = cli("baseline.py", "--dataset", "nyuv2", "--data_root", str(tmp_path / "data"), "--crop_size", "17",
               "--batch_size", "1", "--width_mult", "0.0625", "--iters", "1", "--save_dir", str(tmp_path / "run"),
               cwd=tmp_path)
    refused(proc, "segmentation id 40")
    assert not (tmp_path / "run").exists()


@pytest.fixture(scope="module")
def pruned(tmp_path_factory):
    from conftest import TINY_FLAGS

    root = tmp_path_factory.mktemp("ck")
    assert baseline.main(TINY_FLAGS + ["--iters", "2", "--dense", "--save_dir", str(root / "dense")]) == 0
    assert pruning.main(["--load_checkpoint", str(root / "dense" / CKPT), "--method", "magnitude", "--target", "0.5",
                         "--save_dir", str(root / "pruned"), "--progress", "off"]) == 0
    return root / "pruned" / CKPT


def _variant(pruned: Path, tmp_path: Path, change) -> Path:
    state = torch.load(pruned, weights_only=True)
    change(state)
    out = tmp_path / "variant.model"
    torch.save(state, out)
    return out


def _first_mask(state) -> str:
    return next(iter(state["masks"]))


def _shrink(state):
    k = _first_mask(state)
    state["masks"][k] = state["masks"][k][:1]


def _drop(state):
    del state["masks"][_first_mask(state)]


def _contradict(state):
    k = _first_mask(state)
    where = tuple((~state["masks"][k]).nonzero()[0].tolist())
    w = state["state_dict"][f"{k}.weight"].clone()
    w[where] = 0.5
    state["state_dict"][f"{k}.weight"] = w


@pytest.mark.parametrize("change,needle", [
    (lambda s: s.update(version=99), "format 99"),
    (lambda s: s.update(state_dict=[1, 2]), "not a mapping"),
    (lambda s: s.update(masks=[1, 2]), "not a mapping"),
    (_shrink, "has shape"),
    (_drop, "masks lack"),
    (_contradict, "contradict"),
])
@pytest.mark.parametrize("command", ["finetune.py", "test.py", "export"])
def test_checkpoints_that_do_not_fit_are_refused_by_every_reader(pruned, tmp_path, change, needle, command):
    bad = _variant(pruned, tmp_path, change)
    from conftest import TINY_FLAGS

    if command == "finetune.py":
        proc = cli("finetune.py", "--load_checkpoint", str(bad), "--iters", "1", "--save_dir", str(tmp_path / "ft"),
                   *TINY_FLAGS, cwd=tmp_path)
    elif command == "test.py":
        proc = cli("test.py", "--path", str(bad), "--json", str(tmp_path / "ft.json"), cwd=tmp_path)
    else:
        proc = subprocess.run([sys.executable, "-m", "main.export", "--path", str(bad), "--compact", "--out",
                               str(tmp_path / "ft.model")], cwd=ROOT, capture_output=True, text=True, timeout=300)
    refused(proc, needle)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["variant.model"]  # nothing written


def test_a_weight_mismatch_names_the_key(pruned, tmp_path):
    from main.checkpoint import CheckpointError, load_weights
    from main.config import Config
    from main.models import model_for

    state = torch.load(pruned, weights_only=True)
    cfg = Config.from_dict(state["config"])
    cfg.width_mult = 0.125
    with pytest.raises(CheckpointError, match=r"backbone\.conv1\.weight has shape"):
        load_weights(model_for(cfg, {"segment_semantic": 8, "normal": 3, "depth_zbuffer": 1}), state, "x.model", cfg)
    from main.checkpoint import model_from_checkpoint

    state["state_dict"]["backbone.conv1.weight"] = torch.zeros(5, 3, 7, 7)
    with pytest.raises(CheckpointError, match=r"backbone\.conv1\.weight has shape \(5, 3, 7, 7\)"):
        model_from_checkpoint({**state, "masks": None}, "x.model", torch.device("cpu"))
    del state["state_dict"]["backbone.conv1.weight"]
    with pytest.raises(CheckpointError, match=r"lacks backbone\.conv1\.weight"):
        model_from_checkpoint({**state, "masks": None}, "x.model", torch.device("cpu"))


def test_duplicate_yaml_keys_are_refused(tmp_path):
    (tmp_path / "dup.yaml").write_text("iters: 10\nlr: 0.1\niters: 20\n")
    refused(cli("baseline.py", "--config", str(tmp_path / "dup.yaml"), "--save_dir", str(tmp_path / "r"),
                cwd=tmp_path), "'iters' appears twice")
    assert not (tmp_path / "r").exists()


def test_a_diverging_run_stops_with_an_error_and_keeps_its_earlier_checkpoint(tmp_path, tiny_flags):
    from main.errors import UserError

    run = tmp_path / "run"
    with pytest.raises(UserError, match="not finite"):
        baseline.main(tiny_flags + ["--iters", "8", "--val_iters", "4", "--save_iters", "2", "--lr", "1e6",
                                    "--save_dir", str(run)])
    state = torch.load(run / CKPT, weights_only=True)
    assert state["iter"] < 4 and not (run / f"best_{CKPT}").exists()


@pytest.mark.parametrize("flags,needle", [
    (["--data_seed", "-1"], "--data_seed"),
    (["--seed", str(2**64 + 5)], "--seed"),
    (["--seed", "-3"], "--seed"),
    (["--crop_size", "1"], "--crop_size"),
    (["--save_dir", "x" * 300], "File name too long"),
])
def test_flag_mistakes_end_in_one_line(tmp_path, flags, needle):
    proc = cli("baseline.py", "--iters", "1", "--save_dir", str(tmp_path / "run"), *flags, cwd=tmp_path)
    refused(proc, needle)
    assert not list(tmp_path.iterdir())


def test_a_path_too_long_for_the_file_system_is_one_line(tmp_path):
    proc = cli("test.py", "--path", "/tmp/" + "b" * 5000, cwd=tmp_path)
    refused(proc, "5005 characters")
    assert len(proc.stderr) < 400
