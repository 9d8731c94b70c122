"""``python -m bench.noise_floor``: dense seeds trained and evaluated, leave-one-out Δ_T summarised, resumable."""

from __future__ import annotations

import json

import pytest

from bench import noise_floor
from bench.comparison_stats import NoiseFloor
from main.errors import UserError


def test_noise_floor_trains_seeds_summarises_and_resumes(tmp_path, tiny_flags, capsys):
    args = ["--name", "tiny", "--seeds", "3", "--jobs", "2", "--out", str(tmp_path / "out"), "--logs",
            str(tmp_path / "logs"), "--", *tiny_flags, "--iters", "4", "--test_size", "16", "--train_size", "0"]
    assert noise_floor.main(args) == 0
    summary = json.loads((tmp_path / "logs" / "tiny.json").read_text())
    assert summary["seeds"] == [0, 1, 2] and "--train_size 0" in summary["records"][0]["commands"][0]
    curve = summary["val_loss"]["0"]["normal"]  # the validation loss at each evaluation: has it plateaued?
    assert [step for step, _ in curve] == [3, 4] and all(v > 0 for _, v in curve)
    for d in ("standard", "parity"):
        floor = NoiseFloor.of(summary[d]["metrics"])
        assert summary[d]["n"] == 3 and summary[d]["values"] == pytest.approx(floor.values)
    assert f"[noise_floor] wrote {tmp_path / 'logs' / 'tiny.json'}" in capsys.readouterr().out
    before = (tmp_path / "out" / "tiny" / "seed1" / "test.json").stat().st_mtime_ns
    assert noise_floor.main(args) == 0  # finished seeds are not trained again
    assert (tmp_path / "out" / "tiny" / "seed1" / "test.json").stat().st_mtime_ns == before
    with pytest.raises(UserError, match="--seeds"):
        noise_floor.parse(["--name", "x", "--seeds", "1"])
