"""NYUv2 and Tiny-Taskonomy loaders on tiny fixtures in the real on-disk formats: decoding, augmentation,
determinism, every error path, the ``main.data.check`` tool, and train + test end to end."""

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

import main.cli.test as test_script
import main.cli.train as baseline
from main.config import Config, ConfigError
from main.data import DatasetError, build_dataset, dataset_info
from main.data import check as data_check
from main.data.nyuv2 import NYUv2
from main.data.real import resize_bilinear, resize_nearest
from main.data.taskonomy import TASKS as TASKONOMY_TASKS
from main.data.taskonomy import Taskonomy

ROOT = Path(__file__).resolve().parents[1]
MEAN_BGR = np.array((104.00698793, 116.66876762, 122.67891434))


@pytest.fixture(scope="module")
def nyu(tmp_path_factory):
    root = tmp_path_factory.mktemp("nyu")
    return root, make_nyuv2(root)


@pytest.fixture(scope="module")
def tk(tmp_path_factory):
    root = tmp_path_factory.mktemp("tk")
    return root, make_taskonomy(root)


def expected_input(bgr: np.ndarray) -> np.ndarray:
    return (bgr.astype(np.float64) - MEAN_BGR).transpose(2, 0, 1).astype(np.float32)


# ---------------------------------------------------------------------------------------- resizing


def test_resizes_follow_opencv():
    a = np.arange(4)[None]
    assert resize_nearest(a, 1, 8).tolist() == [[0, 0, 1, 1, 2, 2, 3, 3]]
    assert resize_nearest(a, 1, 2).tolist() == [[0, 2]]
    assert resize_nearest(np.arange(3)[None], 1, 2).tolist() == [[0, 1]]  # floor(1 * 3 / 2)
    # half-pixel centres, clamped edges; uint8 halves round up like OpenCV's fixed point
    assert resize_bilinear(np.array([[0.0, 10.0]]), 1, 4).tolist() == [[0.0, 2.5, 7.5, 10.0]]
    assert resize_bilinear(np.array([[0, 10]], dtype=np.uint8), 1, 4).tolist() == [[0, 3, 8, 10]]
    assert resize_bilinear(np.array([[0.0, 10.0, 20.0, 30.0]]), 1, 2).tolist() == [[5.0, 25.0]]


# ------------------------------------------------------------------------------------------- NYUv2


def test_nyuv2_test_split_decoding(nyu):
    root, data = nyu
    c = 64
    sample = NYUv2(root, "test", crop_size=c)[1]
    raw = data["test"][1]
    assert sample["input"].shape == (3, c, c) and sample["input"].dtype == torch.float32
    # BGR order and mean subtraction, no /255: upsampling keeps the corner pixel exactly
    assert np.allclose(sample["input"][:, 0, 0].numpy(), raw["rgb"][0, 0, ::-1] - MEAN_BGR, atol=1e-4)
    assert np.allclose(sample["input"].numpy(), expected_input(resize_bilinear(raw["rgb"][:, :, ::-1], c, c)),
                       atol=1e-4)
    assert sample["segment_semantic"].dtype == torch.int64
    assert torch.equal(sample["segment_semantic"][0], torch.from_numpy(resize_nearest(raw["seg"], c, c)).long())
    # parity normals: raw 0-255 BGR triple as floats
    assert torch.equal(sample["normal"], torch.from_numpy(resize_nearest(raw["normal"], c, c)[:, :, ::-1]
                                                          .astype(np.float32).transpose(2, 0, 1).copy()))
    assert torch.equal(sample["depth_zbuffer"][0], torch.from_numpy(resize_nearest(raw["depth"], c, c)))
    assert (sample["depth_zbuffer"] == 0).any() and (sample["segment_semantic"] == 255).any()


def test_nyuv2_unit_normals(nyu):
    root, data = nyu
    c = 64
    unit = NYUv2(root, "test", crop_size=c, normals="unit")[0]["normal"].numpy()
    raw = resize_nearest(data["test"][0]["normal"], c, c)
    invalid = (raw == 255).all(-1)
    assert (unit[:, invalid] == 255).all()
    expect = raw.astype(np.float32) / 255 * 2 - 1  # file (R, G, B) order
    assert np.allclose(unit.transpose(1, 2, 0)[~invalid], expect[~invalid], atol=1e-6)
    assert np.abs(unit[:, ~invalid]).max() <= 1.0


def _flip_probe(root: Path, make_ds) -> list[tuple[bool, np.ndarray, np.ndarray]]:
    """Overwrite sample 0 with a left-to-right ramp image and constant normals; return per aug seed
    (flipped?, valid normal values, padding mask) for a crop large enough to always pad."""
    ds = make_ds()
    rgb_path = ds.path(ds.entries[0][0])
    h, w = np.asarray(Image.open(rgb_path)).shape[:2]
    ramp = np.broadcast_to(np.linspace(10, 250, w).astype(np.uint8)[None, :, None], (h, w, 3)).copy()
    Image.fromarray(ramp).save(rgb_path)
    Image.fromarray(np.full((h, w, 3), (200, 100, 50), np.uint8)).save(ds.path(ds.entries[0][2]))
    out = []
    for seed in range(12):
        s = ds[0, seed]
        img = s["input"][0].numpy()  # blue channel: ramp minus mean, padding = -mean
        pad = np.isclose(img, -MEAN_BGR[0])
        row = img[~pad.all(axis=1)][0]
        row = row[~np.isclose(row, -MEAN_BGR[0])]
        normal = s["normal"].numpy()
        valid = (normal < 255).all(axis=0)
        out.append((bool(row[0] > row[-1]), normal[:, valid], pad))
    return out


def test_nyuv2_flip_and_padding(tmp_path):
    make_nyuv2(tmp_path, n_train=1, n_test=1)
    for mode in ("parity", "unit"):
        probes = _flip_probe(tmp_path, lambda m=mode: NYUv2(tmp_path, "train", crop_size=100, normals=m))
        assert {f for f, _, _ in probes} == {True, False}
        for flipped, normal, _ in probes:
            if mode == "parity":  # never sign-flipped: always the raw BGR triple
                assert (normal == np.array([50.0, 100.0, 200.0])[:, None]).all()
            else:
                x = 200 / 255 * 2 - 1
                assert np.allclose(normal[0], -x if flipped else x) and np.allclose(normal[2], 50 / 255 * 2 - 1)
    s = NYUv2(tmp_path, "train", crop_size=100)[0, 3]
    pad = (s["input"] == torch.tensor(-MEAN_BGR, dtype=torch.float32).view(3, 1, 1)).all(0)
    assert pad[0, 0] and pad.sum() >= 100 * 100 - 79 * 79  # scale < 1.5 -> at most 55x79 of image
    assert (s["segment_semantic"][0][pad] == 255).all() and (s["normal"][:, pad] == 255).all()
    assert (s["depth_zbuffer"][0][pad] == 0).all()


def test_determinism_and_shapes(nyu, tk):
    for ds in (NYUv2(nyu[0], "train", crop_size=33), Taskonomy(tk[0], "train", TASKONOMY_TASKS, crop_size=33)):
        a, b, c = ds[1, 7], ds[1, 7], ds[1, 8]
        assert all(torch.equal(a[k], b[k]) for k in a)
        assert not torch.equal(a["input"], c["input"])
        assert all(torch.equal(x, y) for x, y in zip(ds[2].values(), ds[2].values()))  # int key: derived seed
        for k, v in a.items():
            assert v.shape[-2:] == (33, 33), k


# ---------------------------------------------------------------------------------------- Taskonomy


def test_taskonomy_decoding(tk):
    root, data = tk
    s = 48  # test split, crop = base size: the bilinear step is the identity, every value checkable
    ds = Taskonomy(root, "test", TASKONOMY_TASKS, crop_size=s, base_size=s)
    sample = ds[0]
    raw = {k: resize_nearest(v, s, s) for k, v in data["test"][0].items() if k != "paths"}
    prior = np.load(root / "semseg_prior_factor.npy")
    assert np.allclose(sample["input"].numpy(), expected_input(raw["rgb"][:, :, ::-1]), atol=1e-4)
    seg = sample["segment_semantic"][0].numpy()
    assert sample["segment_semantic"].dtype == torch.int64
    assert seg[0, 0] == 0 and seg[0, 1] == 0 and seg[0, 2] == 1 and seg[0, 3] == 16 and seg.max() <= 16
    assert np.array_equal(seg, np.where(raw["seg"] == 0, 1, raw["seg"]).astype(int) - 1)
    assert np.allclose(sample["segment_semantic_mask"][0].numpy(), (raw["seg"] > 0) * prior[seg])
    assert np.allclose(sample["normal"].numpy(), raw["normal"].transpose(2, 0, 1) / 255 * 2 - 1, atol=1e-6)
    depth_mask = (raw["depth"] < 64500).astype(np.float32)
    assert depth_mask[0, 1] == 1 and depth_mask[0, 2] == 0
    assert np.allclose(sample["depth_zbuffer"][0].numpy(), np.log(1 + raw["depth"].astype(float)) / np.log(2**16))
    assert np.array_equal(sample["depth_zbuffer_mask"][0].numpy(), depth_mask)
    assert np.array_equal(sample["normal_mask"].numpy(), np.repeat(depth_mask[None], 3, 0))
    kp = np.clip(raw["keypoint"] / 2**16, 0, 0.005) / 0.005 * 2 - 1
    edge = np.clip(raw["edge"] / 2**16, 0, 0.08) / 0.08 * 2 - 1
    assert np.allclose(sample["keypoints2d"][0].numpy(), kp, atol=1e-6) and kp.max() == 1.0
    assert np.allclose(sample["edge_texture"][0].numpy(), edge, atol=1e-6) and edge.max() == 1.0
    assert torch.allclose(dataset_info(_cfg("taskonomy", root)).class_weights, torch.from_numpy(prior))


def test_taskonomy_flip_and_padding(tmp_path):
    make_taskonomy(tmp_path, n_train=1, n_test=1)
    probes = _flip_probe(tmp_path, lambda: Taskonomy(tmp_path, "train", TASKONOMY_TASKS, crop_size=60,
                                                     base_size=32))
    assert {f for f, _, _ in probes} == {True, False}
    x = 200 / 255 * 2 - 1
    for flipped, normal, _ in probes:
        assert np.allclose(normal[0], -x if flipped else x)  # x negated on flips
    s = Taskonomy(tmp_path, "train", TASKONOMY_TASKS, crop_size=60, base_size=32)[0, 1]
    pad = (s["input"] == torch.tensor(-MEAN_BGR, dtype=torch.float32).view(3, 1, 1)).all(0)
    assert pad.sum() >= 60 * 60 - 48 * 48
    for key, value in s.items():  # every label channel, masks included, padded with 255
        if key != "input":
            assert (value[:, pad] == 255).all(), key


def test_taskonomy_splits_and_adashare_layout(tmp_path):
    make_taskonomy(tmp_path, n_train=2, n_test=3, n_test_small=1, split_folders=True)
    assert Taskonomy(tmp_path, "val").split_key == "test_small" and len(Taskonomy(tmp_path, "val")) == 1
    test = Taskonomy(tmp_path, "test", crop_size=16, base_size=16)
    assert len(test) == 3 and test.base == tmp_path / "test"
    assert Taskonomy(tmp_path, "train", crop_size=16, base_size=16)[1]["input"].shape == (3, 16, 16)


# ------------------------------------------------------------------------------------------- errors


def _one_line_error(fn, needle: str) -> str:
    with pytest.raises(DatasetError) as info:
        fn()
    msg = str(info.value)
    assert "\n" not in msg and needle in msg, msg
    return msg


def test_index_errors(tmp_path):
    _one_line_error(lambda: NYUv2(tmp_path / "nope"), "nope")
    _one_line_error(lambda: NYUv2(tmp_path), "nyu_v2_3task.json")
    (tmp_path / "nyu_v2_3task.json").write_text("{not json")
    _one_line_error(lambda: NYUv2(tmp_path), "nyu_v2_3task.json")
    (tmp_path / "nyu_v2_3task.json").write_text(json.dumps({"train": [["a", "b", "c", "d"]]}))
    _one_line_error(lambda: NYUv2(tmp_path, "test"), "'test'")
    (tmp_path / "nyu_v2_3task.json").write_text(json.dumps({"train": [["a", "b", "c"]]}))
    _one_line_error(lambda: NYUv2(tmp_path, "train"), "entry 0")
    make_taskonomy(tmp_path / "tk", 1, 1)
    (tmp_path / "tk" / "semseg_prior_factor.npy").unlink()
    _one_line_error(lambda: Taskonomy(tmp_path / "tk", "test"), "semseg_prior_factor.npy")


def test_sample_errors_name_the_file(tmp_path):
    data = make_nyuv2(tmp_path, n_train=3, n_test=1)
    paths = data["train"]
    (tmp_path / paths[0]["paths"][3]).unlink()
    ds = NYUv2(tmp_path, "train", crop_size=17)
    _one_line_error(lambda: ds[0], "depth/train_0.npy")
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(tmp_path / paths[1]["paths"][1])  # wrong size seg
    _one_line_error(lambda: ds[1], "seg/train_1.png")
    Image.fromarray(np.zeros((37, 53, 3), np.uint8)).save(tmp_path / paths[2]["paths"][1])  # seg with 3 channels
    _one_line_error(lambda: ds[2], "seg/train_2.png")
    (tmp_path / paths[2]["paths"][0]).write_bytes(b"not a png")
    _one_line_error(lambda: ds[2], "img/train_2.png")
    tk = tmp_path / "tk"
    tk_data = make_taskonomy(tk, 2, 1)
    Image.fromarray(np.zeros((7, 7), np.uint16)).save(tk / tk_data["train"][0]["paths"][3])
    _one_line_error(lambda: Taskonomy(tk, "train", crop_size=17, base_size=17)[0], "train_0_depth_zbuffer.png")


def test_skip_bad_replaces_and_counts(tmp_path):
    data = make_nyuv2(tmp_path, n_train=3, n_test=1)
    (tmp_path / data["train"][0]["paths"][1]).unlink()
    ds = NYUv2(tmp_path, "train", crop_size=17, skip_bad=True)
    a, b = ds[0, 5], ds[1, 5]
    assert all(torch.equal(a[k], b[k]) for k in a)  # the next good sample, same augmentation
    ds[0, 6]
    assert ds.bad_samples == 1 and "seg/train_0.png" in ds.bad[0]
    cfg = _cfg("nyuv2", tmp_path, skip_bad_samples=True)
    assert build_dataset(cfg, "train").skip_bad


# ---------------------------------------------------------------------------------------- config


def _cfg(dataset: str, root: Path, **kw) -> Config:
    tasks = list(TASKONOMY_TASKS) if dataset == "taskonomy" else ["segment_semantic", "normal", "depth_zbuffer"]
    return Config(dataset=dataset, data_root=str(root), tasks=tasks, crop_size=33, **kw).check()


def test_config_wiring(nyu):
    root, _ = nyu
    info = dataset_info(_cfg("nyuv2", root))
    assert (info.num_classes, info.metric_style, info.class_weights) == (40, "nyuv2", None)
    assert len(build_dataset(_cfg("nyuv2", root), "val")) == 2  # val = the test split
    assert build_dataset(_cfg("nyuv2", root, normals="unit"), "test").normals == "unit"
    with pytest.raises(ConfigError, match="segment_semantic, normal, depth_zbuffer"):
        dataset_info(Config(dataset="nyuv2", data_root=str(root), tasks=["keypoints2d"]).check())
    with pytest.raises(ConfigError, match="--normals"):
        Config(normals="bogus").check()
    with pytest.raises(DatasetError, match="nope"):
        build_dataset(Config(dataset="nyuv2", data_root=str(root / "nope")).check(), "train")


# ---------------------------------------------------------------------------------------- check tool


def test_check_tool(tmp_path, capsys):
    data = make_nyuv2(tmp_path / "nyu", n_train=2, n_test=1)
    make_taskonomy(tmp_path / "tk", 2, 1)
    assert data_check.main(["--dataset", "nyuv2", "--data_root", str(tmp_path / "nyu"), "--progress", "off"]) == 0
    out = capsys.readouterr().out
    assert "train 2, test 1" in out and "53x37: 2" in out and "invalid (0)" in out
    assert data_check.main(["--dataset", "taskonomy", "--data_root", str(tmp_path / "tk")]) == 0
    assert "test_small 1" in capsys.readouterr().out
    (tmp_path / "nyu" / data["train"][1]["paths"][2]).unlink()
    assert data_check.main(["--dataset", "nyuv2", "--data_root", str(tmp_path / "nyu")]) == 1
    assert "normal_mask/train_1.png" in capsys.readouterr().out
    proc = subprocess.run([sys.executable, "-m", "main.data.check", "--dataset", "nyuv2", "--data_root",
                           str(tmp_path / "missing")], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "missing" in proc.stderr and "Traceback" not in proc.stderr


# ---------------------------------------------------------------------------------------- end to end


@pytest.mark.parametrize("architecture", ["resnet34", "mobilenetv2"])
@pytest.mark.parametrize("dataset", ["nyuv2", "taskonomy"])
def test_train_then_test(tmp_path, dataset, architecture):
    root = tmp_path / "data"
    (make_nyuv2 if dataset == "nyuv2" else make_taskonomy)(root, 2, 2)
    tasks = list(TASKONOMY_TASKS) if dataset == "taskonomy" else ["segment_semantic", "normal", "depth_zbuffer"]
    run = tmp_path / "run"
    assert baseline.main(["--dataset", dataset, "--data_root", str(root), "--architecture", architecture,
                          "--tasks", *tasks, "--iters", "2", "--batch_size", "2", "--width_mult", "0.0625",
                          "--crop_size", "33", "--val_iters", "2", "--progress", "off", "--no-tensorboard",
                          "--save_dir", str(run)]) == 0
    out = tmp_path / "res.json"
    assert test_script.main(["--path", str(run / ("_".join(tasks) + ".model")), "--json", str(out),
                             "--progress", "off"]) == 0
    res = json.loads(out.read_text())
    assert res["dataset"] == dataset and set(res["metrics"]) == set(tasks)
    if dataset == "taskonomy":
        assert set(res["metrics"]["normal"]) == {"cosine_similarity"}
