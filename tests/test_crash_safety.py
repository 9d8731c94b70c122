"""Crash safety: SIGKILL + --resume is exact, rotating snapshots, resume skips a corrupt file, NaN losses skipped."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import main.cli.train as baseline
import main.trainer as trainer_module
from main.checkpoint import load_checkpoint
from main.checkpoint_saver import TrainingDiverged

ROOT = Path(__file__).resolve().parents[1]
CKPT = "segment_semantic_normal_depth_zbuffer.model"


def assert_same_state(a: dict, b: dict) -> None:
    assert a["iter"] == b["iter"]
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]), key
    assert torch.equal(a["weighting"]["weights"], b["weighting"]["weights"])
    assert a["best"] == b["best"]


ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}


def train_uninterrupted(flags: list[str], save_dir) -> None:
    """The reference run an interrupted-and-resumed one must equal (one thread: the same rounding every time)."""
    subprocess.run([sys.executable, "baseline.py", *flags, "--save_dir", str(save_dir)], cwd=ROOT, env=ONE_THREAD,
                   check=True, capture_output=True, timeout=300)


def test_sigkill_then_resume_equals_uninterrupted(tmp_path, tiny_flags):
    flags = tiny_flags + ["--iters", "60", "--save_iters", "5", "--val_iters", "20", "--deterministic",
                          "--no-tensorboard"]
    env = ONE_THREAD
    full, killed = tmp_path / "full", tmp_path / "killed"
    train_uninterrupted(flags, full)
    proc = subprocess.Popen([sys.executable, "baseline.py", *flags, "--save_dir", str(killed)], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    snaps = killed / "checkpoints"
    deadline = time.time() + 120
    while time.time() < deadline and len(list(snaps.glob("*.model"))) < 2 and proc.poll() is None:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)  # at an arbitrary step (after at least two saves)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    stopped_at = load_checkpoint(killed / CKPT)["iter"]
    assert 0 < stopped_at < 60
    subprocess.run([sys.executable, "baseline.py", "--save_dir", str(killed), "--resume"], cwd=ROOT, env=env,
                   check=True, capture_output=True, timeout=300)
    assert_same_state(load_checkpoint(full / CKPT), load_checkpoint(killed / CKPT))


def test_keeps_last_k_snapshots_and_resume_skips_a_corrupt_latest(tmp_path, tiny_flags, capsys):
    run = tmp_path / "r"
    assert baseline.main(tiny_flags + ["--iters", "9", "--save_iters", "3", "--keep_checkpoints", "2",
                                       "--save_dir", str(run)]) == 0
    snaps = sorted(p.name for p in (run / "checkpoints").glob("*.model"))
    assert snaps == [f"segment_semantic_normal_depth_zbuffer_iter{i:08d}.model" for i in (6, 9)]
    (run / CKPT).write_bytes((run / CKPT).read_bytes()[:1000])  # truncated, as by a crash mid-copy
    (run / "checkpoints" / snaps[-1]).write_bytes(b"garbage")
    assert baseline.main(["--save_dir", str(run), "--resume", "--iters", "12"]) == 0
    assert "skipping" in capsys.readouterr().out
    assert load_checkpoint(run / CKPT)["iter"] == 12  # resumed from iteration 6, the newest intact file


def test_nan_loss_steps_are_skipped_then_the_run_stops(tmp_path, tiny_flags, monkeypatch):
    real_loss = trainer_module.task_loss
    calls = {"n": 0}

    def poisoned(task, pred, batch, class_weights=None):
        calls["n"] += 1
        loss = real_loss(task, pred, batch, class_weights)
        # training steps 3 and 4 (3 tasks per step) see a NaN loss; validation is unaffected
        return loss * float("nan") if 7 <= calls["n"] <= 12 else loss

    monkeypatch.setattr(trainer_module, "task_loss", poisoned)
    run = tmp_path / "nan"
    assert baseline.main(tiny_flags + ["--iters", "6", "--val_iters", "100", "--save_dir", str(run)]) == 0
    state = load_checkpoint(run / CKPT)
    assert state["iter"] == 6
    assert all(bool(torch.isfinite(v).all()) for v in state["state_dict"].values() if v.is_floating_point())
    assert bool(torch.isfinite(state["weighting"]["buffer"]).all())

    calls["n"] = 0
    monkeypatch.setattr(trainer_module, "task_loss",
                        lambda t, p, b, c=None: real_loss(t, p, b, c) * (float("nan") if calls.__setitem__(
                            "n", calls["n"] + 1) or calls["n"] > 6 else 1.0))
    run2 = tmp_path / "diverged"
    with pytest.raises(TrainingDiverged, match="consecutive"):
        baseline.main(tiny_flags + ["--iters", "20", "--save_iters", "2", "--max_bad_steps", "3",
                                    "--save_dir", str(run2)])
    last = load_checkpoint(run2 / CKPT)  # written at iteration 4 from the unchanged (skipped-step) weights
    assert last["iter"] == 4
    assert all(bool(torch.isfinite(v).all()) for v in last["state_dict"].values() if v.is_floating_point())


def test_a_crash_during_a_checkpoint_write_leaves_the_good_file(tmp_path, monkeypatch):
    from main import checkpoint

    path = tmp_path / "run.model"
    checkpoint.atomic_save({"state_dict": {"w": torch.ones(3)}, "iter": 1}, path)
    good = path.read_bytes()

    def dies_midway(obj, f):
        f.write(b"PK\x03\x04 half a file")
        raise KeyboardInterrupt  # the process is stopped while writing

    monkeypatch.setattr(checkpoint.torch, "save", dies_midway)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.atomic_save({"state_dict": {"w": torch.zeros(3)}, "iter": 2}, path)
    assert path.read_bytes() == good
    assert [p.name for p in tmp_path.iterdir()] == ["run.model"]  # no temporary file left behind


@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_sigterm_and_sigint_finish_the_step_save_and_resume_exactly(tmp_path, tiny_flags, signum, code):
    """Preemption: the signal ends the run after its current step with a checkpoint (none is due: --save_iters is
    past the end), one line naming --resume, and exit 128 + signal; the resumed run equals an uninterrupted one."""
    flags = tiny_flags + ["--iters", "60", "--save_iters", "1000", "--val_iters", "1000", "--deterministic",
                          "--no-tensorboard"]
    env = ONE_THREAD
    full, stopped = tmp_path / "full", tmp_path / "stopped"
    train_uninterrupted(flags, full)
    proc = subprocess.Popen([sys.executable, "baseline.py", *flags, "--save_dir", str(stopped)], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    log = stopped / "train.log"
    deadline = time.time() + 120
    while time.time() < deadline and "[Iter 6]" not in (log.read_text() if log.is_file() else ""):
        time.sleep(0.01)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("stopped: ") and "--resume" in lines[0], err
    at = load_checkpoint(stopped / CKPT)["iter"]
    assert 6 <= at < 60, at
    subprocess.run([sys.executable, "baseline.py", "--save_dir", str(stopped), "--resume"], cwd=ROOT, env=env,
                   check=True, capture_output=True, timeout=300)
    assert_same_state(load_checkpoint(full / CKPT), load_checkpoint(stopped / CKPT))


def test_a_non_finite_total_loss_is_a_skipped_step(tmp_path, tiny_flags, monkeypatch, caplog):
    """Finite task losses with an infinite task weight: the weighted total is not finite, so the step is skipped."""
    from main import weighting

    cls = weighting.AdaptiveWeighting  # the tiny flags' weighting
    real_update = cls.update
    calls = {"n": 0}

    def update(self, losses, it):
        calls["n"] += 1
        w = real_update(self, losses, it)
        return w * float("inf") if calls["n"] == 3 else w

    monkeypatch.setattr(cls, "update", update)
    run = tmp_path / "inf"
    assert baseline.main(tiny_flags + ["--iters", "5", "--val_iters", "100", "--save_dir", str(run)]) == 0
    state = load_checkpoint(run / CKPT)
    assert state["iter"] == 5
    assert all(bool(torch.isfinite(v).all()) for v in state["state_dict"].values() if v.is_floating_point())
    assert "[Iter 3] non-finite loss" in (run / "train.log").read_text()
    assert calls["n"] >= 5
