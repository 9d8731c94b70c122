"""User mistakes end in exit code 2 and one line on stderr naming the problem and the fix (docs/usage.md, "Errors").

Each test makes one distinct mistake through an entry script's ``main`` wrapped in ``cli_main`` (exactly what
``python baseline.py ...`` runs) and checks: exit code 2, exactly one line ``error: ...`` on stderr, nothing on
stdout, no traceback, and nothing written or overwritten anywhere under ``tmp_path`` (the whole tree, bytes
included, is compared before and after).  A few cases run as real subprocesses to prove the behaviour end to end.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from fixtures_datasets import make_nyuv2, make_taskonomy
from PIL import Image

import main.cli.finetune as finetune
import main.cli.test as test_script
import main.cli.train as baseline
import SOTA_methods.cli as pruning
from main.config import Config
from main.data import dataset_info
from main.errors import cli_main
from main.models import build_model

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["--width_mult", "0.0625", "--crop_size", "32", "--train_size", "8", "--val_size", "4", "--test_size", "4",
         "--batch_size", "2", "--iters", "1", "--progress", "off", "--no-tensorboard"]


class Payload:
    """Any non-plain object: pickling it into a checkpoint makes the file carry code references."""


def snapshot(root: Path) -> dict[str, bytes | None]:
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}


def fails(script, argv: list[str], tmp_path: Path, capsys, *needles: str) -> str:
    """Run ``script.main(argv)`` as the command line does; assert the one-line exit-2 contract, return the line."""
    before = snapshot(tmp_path)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        cli_main(lambda _: script.main([str(a) for a in argv]))
    out, err = capsys.readouterr()
    assert exc.value.code == 2, err
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 1, err
    line = lines[0]
    assert line.startswith("error: ") and "Traceback" not in line
    for needle in needles:
        assert needle in line, line
    assert snapshot(tmp_path) == before, "something was written or overwritten"
    return line


def make_ckpt(path: Path, **values) -> Path:
    """A checkpoint as this code writes it (weights + config), for a tiny model."""
    cfg = Config.from_dict({"width_mult": 0.0625, "crop_size": 32, "train_size": 8, "val_size": 4,
                            "test_size": 4, "batch_size": 2, **values}).check()
    info = dataset_info(cfg)
    model = build_model(cfg.architecture, info.task_channels, cfg.width_mult, cfg.sInit_value,
                        sparse=not cfg.dense, head_dropout=cfg.head_dropout)
    torch.save({"iter": 0, "state_dict": model.state_dict(), "config": cfg.to_dict(), "version": 1}, path)
    return path


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return make_ckpt(tmp_path_factory.mktemp("ckpt") / "resnet.model")


@pytest.fixture
def nyu(tmp_path) -> Path:
    root = tmp_path / "nyu"
    make_nyuv2(root, n_train=3, n_test=2)
    return root


def nyu_flags(root: Path, save_dir: Path) -> list:
    return [*SMALL, "--dataset", "nyuv2", "--data_root", root, "--save_dir", save_dir]


# ------------------------------------------------------------------------------------------------ datasets


def test_missing_data_root(tmp_path, capsys):
    sd = tmp_path / "run"
    fails(baseline, nyu_flags(tmp_path / "nowhere", sd), tmp_path, capsys, "does not exist", "point --data_root")
    assert not sd.exists()


def test_empty_data_root(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    sd = tmp_path / "run"
    fails(baseline, nyu_flags(tmp_path / "empty", sd), tmp_path, capsys, "nyu_v2_3task.json not found",
          "--data_root must be")
    assert not sd.exists()


def test_malformed_index_json(tmp_path, nyu, capsys):
    (nyu / "nyu_v2_3task.json").write_text('{"train": [["img/a.png", ')
    sd = tmp_path / "run"
    fails(baseline, nyu_flags(nyu, sd), tmp_path, capsys, "not valid JSON", "regenerate")
    assert not sd.exists()


def test_index_without_train_split(tmp_path, nyu, capsys):
    index = json.loads((nyu / "nyu_v2_3task.json").read_text())
    (nyu / "nyu_v2_3task.json").write_text(json.dumps({"test": index["test"]}))
    sd = tmp_path / "run"
    fails(baseline, nyu_flags(nyu, sd), tmp_path, capsys, "no 'train' split", "original index")
    assert not sd.exists()


def test_listed_image_missing(tmp_path, nyu, capsys):
    (nyu / "img" / "train_2.png").unlink()  # not the first sample: every listed file is checked up front
    sd = tmp_path / "run"
    fails(baseline, nyu_flags(nyu, sd), tmp_path, capsys, "train_2.png", "missing", "restore")
    assert not sd.exists()


def test_label_of_wrong_size(tmp_path, nyu, capsys):
    Image.fromarray(np.zeros((10, 12), np.uint8)).save(nyu / "seg" / "train_0.png")
    sd = tmp_path / "run"
    fails(baseline, nyu_flags(nyu, sd), tmp_path, capsys, "seg/train_0.png", "differs from its image", "restore")
    assert not sd.exists()


def test_taskonomy_without_class_prior(tmp_path, capsys):
    root = tmp_path / "tk"
    make_taskonomy(root, n_train=3, n_test=2)
    (root / "semseg_prior_factor.npy").unlink()
    sd = tmp_path / "run"
    fails(baseline, [*SMALL, "--dataset", "taskonomy", "--data_root", root, "--save_dir", sd], tmp_path, capsys,
          "semseg_prior_factor.npy not found", "copy")
    assert not sd.exists()


def test_task_the_dataset_does_not_provide(tmp_path, nyu, capsys):
    sd = tmp_path / "run"
    fails(baseline, [*nyu_flags(nyu, sd), "--tasks", "keypoints2d"], tmp_path, capsys, "keypoints2d",
          "provides only")
    assert not sd.exists()


def test_batch_larger_than_synthetic_training_set(tmp_path, capsys):
    sd = tmp_path / "run"
    fails(baseline, [*SMALL, "--train_size", "3", "--batch_size", "4", "--save_dir", sd], tmp_path, capsys,
          "--batch_size 4", "3 samples", "lower --batch_size")
    assert not sd.exists()


def test_batch_larger_than_real_training_set(tmp_path, nyu, capsys):
    sd = tmp_path / "run"
    fails(baseline, [*nyu_flags(nyu, sd), "--batch_size", "4"], tmp_path, capsys, "3 samples", "lower --batch_size")
    assert not sd.exists()


def test_pruning_scores_with_batch_larger_than_dataset(tmp_path, nyu, capsys):
    sd = tmp_path / "pruned"
    fails(pruning, [*nyu_flags(nyu, sd), "--batch_size", "4", "--method", "snip", "--prune_ratio", "0.5"],
          tmp_path, capsys, "3 samples", "lower --batch_size")
    assert not sd.exists()


def test_bad_sample_found_mid_run_by_a_worker_is_one_line(tmp_path, nyu, capsys):
    """Past the up-front checks (sample 0 is fine), a DataLoader worker hits a bad label: still one line, exit 2.

    The run had started, so its folder exists; the message is the worker's, without torch's traceback text.
    """
    for k in (1, 2):  # any batch of 2 out of 3 samples holds one of them
        Image.fromarray(np.zeros((10, 12), np.uint8)).save(nyu / "seg" / f"train_{k}.png")
    with pytest.raises(SystemExit) as exc:
        cli_main(lambda _: baseline.main([str(a) for a in [*nyu_flags(nyu, tmp_path / "run"), "--num_workers", "1"]]))
    err = capsys.readouterr().err
    assert exc.value.code == 2
    lines = err.splitlines()
    assert len(lines) == 1 and "differs from its image" in lines[0] and "Traceback" not in lines[0], err
    assert lines[0].startswith("error: ") and "DataLoader worker" not in lines[0]


# ---------------------------------------------------------------------------------------------- checkpoints


def test_checkpoint_not_found(tmp_path, capsys):
    fails(test_script, ["--path", tmp_path / "no" / "such.model"], tmp_path, capsys, "checkpoint not found")


def test_reload_checkpoint_not_found(tmp_path, capsys):
    sd = tmp_path / "run"
    fails(baseline, [*SMALL, "--reload", tmp_path / "nope.model", "--save_dir", sd], tmp_path, capsys,
          "checkpoint not found", "--reload")
    assert not sd.exists()


def test_truncated_checkpoint(tmp_path, ckpt, capsys):
    bad = tmp_path / "truncated.model"
    data = ckpt.read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    fails(test_script, ["--path", bad], tmp_path, capsys, "truncated, corrupt", "use another file")


def test_garbage_checkpoint_on_reload(tmp_path, capsys):
    bad = tmp_path / "garbage.model"
    bad.write_bytes(b"\x80\x02not a checkpoint at all" * 50)
    sd = tmp_path / "run"
    fails(baseline, [*SMALL, "--reload", bad, "--save_dir", sd], tmp_path, capsys, "truncated, corrupt")
    assert not sd.exists()


def test_checkpoint_carrying_pickled_code(tmp_path, capsys):
    bad = tmp_path / "pickled.model"
    torch.save({"state_dict": {}, "x": Payload()}, bad)
    fails(test_script, ["--path", bad], tmp_path, capsys, "refusing to load", "pickled code", "Payload")


def test_checkpoint_not_of_this_project(tmp_path, capsys):
    bad = tmp_path / "plain.model"
    torch.save({"weights": torch.zeros(3)}, bad)
    fails(test_script, ["--path", bad], tmp_path, capsys, "not a checkpoint of this project")


def test_finetune_checkpoint_without_config(tmp_path, capsys):
    bad = tmp_path / "noconfig.model"
    torch.save({"state_dict": {}}, bad)
    sd = tmp_path / "ft"
    fails(finetune, [*SMALL, "--load_checkpoint", bad, "--save_dir", sd], tmp_path, capsys, "carries no config")
    assert not sd.exists()


def test_reload_checkpoint_of_another_architecture(tmp_path, capsys):
    other = make_ckpt(tmp_path / "mobile.model", architecture="mobilenetv2")
    sd = tmp_path / "run"
    fails(baseline, [*SMALL, "--architecture", "resnet34", "--reload", other, "--save_dir", sd], tmp_path, capsys,
          "mobilenetv2", "--architecture mobilenetv2")
    assert not sd.exists()


def test_reload_checkpoint_of_another_task_set(tmp_path, capsys):
    other = make_ckpt(tmp_path / "two.model", tasks=["segment_semantic", "normal"])
    sd = tmp_path / "run"
    fails(baseline, [*SMALL, "--reload", other, "--save_dir", sd], tmp_path, capsys,
          "segment_semantic normal", "--tasks segment_semantic normal")
    assert not sd.exists()


def test_reload_checkpoint_of_another_width(tmp_path, capsys):
    other = make_ckpt(tmp_path / "wide.model", width_mult=0.125)
    sd = tmp_path / "run"
    fails(baseline, [*SMALL, "--reload", other, "--save_dir", sd], tmp_path, capsys, "does not fit", "width_mult")
    assert not sd.exists()


# ------------------------------------------------------------------------------------------- flags, configs


@pytest.mark.parametrize("ratio", ["0", "1", "1.5", "-0.2"])
def test_ratio_outside_unit_interval(tmp_path, capsys, ratio):
    sd = tmp_path / "run"
    fails(baseline, [*SMALL, "--ratio", ratio, "--save_dir", sd], tmp_path, capsys, "--ratio must be a fraction",
          "--ratio 0.9")
    assert not sd.exists()


def test_unknown_pruning_method(tmp_path, capsys):
    sd = tmp_path / "pruned"
    fails(pruning, [*SMALL, "--method", "magnitud", "--prune_ratio", "0.5", "--save_dir", sd], tmp_path, capsys,
          "'magnitud' is not known", "magnitude")
    assert not sd.exists()


def test_prune_ratio_outside_unit_interval(tmp_path, ckpt, capsys):
    sd = tmp_path / "pruned"
    fails(pruning, ["--load_checkpoint", ckpt, "--method", "magnitude", "--prune_ratio", "90", "--save_dir", sd],
          tmp_path, capsys, "--prune_ratio must be a fraction", "0.9")
    assert not sd.exists()


def test_unknown_architecture(tmp_path, capsys):
    sd = tmp_path / "run"
    fails(baseline, [*SMALL, "--architecture", "resnet50", "--save_dir", sd], tmp_path, capsys,
          "'resnet50' is not known", "resnet34, mobilenetv2")
    assert not sd.exists()


def test_unknown_task(tmp_path, capsys):
    sd = tmp_path / "run"
    fails(baseline, [*SMALL, "--tasks", "segment_semantic", "depth", "--save_dir", sd], tmp_path, capsys,
          "'depth' is not known", "depth_zbuffer")
    assert not sd.exists()


@pytest.mark.parametrize("iters", ["0", "-3"])
def test_iters_not_positive(tmp_path, capsys, iters):
    sd = tmp_path / "run"
    fails(baseline, [*SMALL, "--iters", iters, "--save_dir", sd], tmp_path, capsys, "--iters must be a positive")
    assert not sd.exists()


def test_misspelt_flag(tmp_path, capsys):
    sd = tmp_path / "run"
    fails(baseline, [*SMALL, "--itres", "5", "--save_dir", sd], tmp_path, capsys, "--itres", "--help")
    assert not sd.exists()


def test_flag_value_of_wrong_type(tmp_path, capsys):
    sd = tmp_path / "run"
    fails(baseline, [*SMALL, "--batch_size", "four", "--save_dir", sd], tmp_path, capsys, "--batch_size", "'four'")
    assert not sd.exists()


def test_yaml_config_with_unknown_key(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("iters: 5\nlearning_rate: 0.1\n")
    sd = tmp_path / "run"
    fails(baseline, ["--config", cfg, *SMALL, "--save_dir", sd], tmp_path, capsys, "unknown key 'learning_rate'",
          "--help")
    assert not sd.exists()


def test_yaml_config_with_wrong_type(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("iters: many\n")
    sd = tmp_path / "run"
    fails(baseline, ["--config", cfg, *SMALL, "--save_dir", sd], tmp_path, capsys,
          "'iters' must be of type int", "'many'")
    assert not sd.exists()


def test_yaml_config_not_found(tmp_path, capsys):
    sd = tmp_path / "run"
    fails(baseline, ["--config", tmp_path / "missing.yaml", *SMALL, "--save_dir", sd], tmp_path, capsys,
          "config file not found")
    assert not sd.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_device_cuda_without_gpu(tmp_path, capsys):
    sd = tmp_path / "run"
    fails(baseline, [*SMALL, "--device", "cuda", "--save_dir", sd], tmp_path, capsys, "no CUDA GPU",
          "--device cpu")
    assert not sd.exists()


def test_unknown_device(tmp_path, ckpt, capsys):
    fails(test_script, ["--path", ckpt, "--device", "gpu0"], tmp_path, capsys, "is not a device", "cuda:N")


def test_resume_without_run_folder(tmp_path, capsys):
    sd = tmp_path / "run"
    fails(baseline, [*SMALL, "--resume", "--save_dir", sd], tmp_path, capsys, "does not exist",
          "without --resume")
    assert not sd.exists()


def test_resume_with_no_checkpoint(tmp_path, capsys):
    sd = tmp_path / "run"
    sd.mkdir()
    fails(baseline, [*SMALL, "--resume", "--save_dir", sd], tmp_path, capsys, "no checkpoint", "without --resume")
    assert list(sd.iterdir()) == []


def test_resume_and_reload_together(tmp_path, ckpt, capsys):
    sd = tmp_path / "run"
    fails(baseline, [*SMALL, "--resume", "--reload", ckpt, "--save_dir", sd], tmp_path, capsys,
          "exclude each other")
    assert not sd.exists()


# -------------------------------------------------------------------------------------------------- save_dir


def test_save_dir_under_a_regular_file(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("a file, not a folder")
    sd = tmp_path / "notes.txt" / "run"
    fails(baseline, [*SMALL, "--save_dir", sd], tmp_path, capsys, "notes.txt", "not a folder",
          "choose another --save_dir")


def test_save_dir_is_a_regular_file(tmp_path, capsys):
    (tmp_path / "run").write_text("a file, not a folder")
    fails(baseline, [*SMALL, "--save_dir", tmp_path / "run"], tmp_path, capsys, "not a folder", "--save_dir")


def test_save_dir_holding_another_run(tmp_path, capsys):
    sd = tmp_path / "run"
    sd.mkdir()
    (sd / "config.yaml").write_text("iters: 7\n")
    (sd / "segment_semantic_normal_depth_zbuffer.model").write_bytes(b"previous run")
    fails(baseline, [*SMALL, "--save_dir", sd], tmp_path, capsys, "already holds a run", "--resume", "--overwrite")


def test_pruning_into_a_folder_holding_another_run(tmp_path, ckpt, capsys):
    sd = tmp_path / "pruned"
    sd.mkdir()
    (sd / "segment_semantic_normal_depth_zbuffer.model").write_bytes(b"previous pruning")
    fails(pruning, ["--load_checkpoint", ckpt, "--method", "magnitude", "--prune_ratio", "0.5", "--save_dir", sd],
          tmp_path, capsys, "already holds a run", "--overwrite")


def test_json_output_under_a_regular_file(tmp_path, ckpt, capsys):
    (tmp_path / "notes.txt").write_text("a file")
    fails(test_script, ["--path", ckpt, "--json", tmp_path / "notes.txt" / "out.json"], tmp_path, capsys,
          "--json folder", "not a folder")


def test_json_output_is_a_folder(tmp_path, ckpt, capsys):
    (tmp_path / "results").mkdir()
    fails(test_script, ["--path", ckpt, "--json", tmp_path / "results"], tmp_path, capsys, "is a folder",
          "name a file")


# ----------------------------------------------------------------------------------------- test.py reference


def reference_json(path: Path, metrics: dict) -> Path:
    path.write_text(json.dumps({"checkpoint": "dense.model", "metrics": metrics}))
    return path


def test_reference_of_other_tasks(tmp_path, ckpt, capsys):
    ref = reference_json(tmp_path / "dense.json", {"segment_semantic": {"mIoU": 0.3, "Pixel Acc": 0.6}})
    out = tmp_path / "res.json"
    fails(test_script, ["--path", ckpt, "--reference", ref, "--json", out], tmp_path, capsys,
          "covers tasks", "same tasks")
    assert not out.exists()


def test_reference_of_other_metrics(tmp_path, ckpt, capsys):
    tasks = ("segment_semantic", "normal", "depth_zbuffer")
    ref = reference_json(tmp_path / "dense.json", {t: {"accuracy": 0.5} for t in tasks})
    out = tmp_path / "res.json"
    fails(test_script, ["--path", ckpt, "--reference", ref, "--json", out], tmp_path, capsys,
          "['accuracy']", "same dataset and tasks")
    assert not out.exists()


def test_reference_not_json(tmp_path, ckpt, capsys):
    ref = tmp_path / "dense.json"
    ref.write_text("mIoU 0.3\n")
    fails(test_script, ["--path", ckpt, "--reference", ref], tmp_path, capsys, "not valid JSON")


# ------------------------------------------------------------------------------------------- end to end


def test_end_to_end_exit_2_one_line_no_traceback(tmp_path, ckpt):
    """Real processes: the exit code, the single stderr line and the untouched folder, as a user sees them."""
    (tmp_path / "notes.txt").write_text("a file")
    garbage = tmp_path / "garbage.model"
    garbage.write_bytes(b"garbage" * 100)
    pickled = tmp_path / "pickled.model"
    torch.save({"state_dict": {}, "x": Payload()}, pickled)
    cases = [
        (["baseline.py", *SMALL, "--dataset", "nyuv2", "--data_root", tmp_path / "none", "--save_dir",
          tmp_path / "run"], "does not exist"),
        (["baseline.py", *SMALL, "--save_dir", tmp_path / "notes.txt" / "run"], "not a folder"),
        (["pruning.py", "--load_checkpoint", ckpt, "--method", "lottery", "--prune_ratio", "0.5", "--save_dir",
          tmp_path / "pruned"], "is not known"),
        (["test.py", "--path", garbage], "truncated, corrupt"),
        (["test.py", "--path", pickled], "pickled code"),
    ]
    before = snapshot(tmp_path)
    for args, needle in cases:
        proc = subprocess.run([sys.executable, *map(str, args)], cwd=ROOT, capture_output=True, text=True,
                              timeout=120)
        assert proc.returncode == 2, proc.stderr
        assert "Traceback" not in proc.stderr and proc.stdout == ""
        lines = proc.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], proc.stderr
    assert snapshot(tmp_path) == before
