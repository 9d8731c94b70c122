"""A run killed at any instant is continued by its command plus ``--resume`` and ends as an uninterrupted one.

Issue 26 (Reliability III), class 2: a run killed before its first checkpoint (or inside its write, or after a
start that failed) used to be a dead end: the plain command said "pass --resume", ``--resume`` said "no
checkpoint", a requeued cluster job looped.  Now a folder whose run started from its settings alone (its
config.yaml says so) and holds no checkpoint that loads is restarted from iteration 0 by ``--resume``.  Each
instant is hit exactly by ``tests/kill_worker.py`` (a real process, a real SIGKILL); the requeued command is the
full command plus ``--resume``, and its checkpoint must equal an uninterrupted run's.
"""

from __future__ import annotations

import signal
import subprocess
import sys

import numpy as np
import pytest
from conftest import TINY_FLAGS
from fixtures_datasets import make_nyuv2
from kill_worker import INSTANTS
from PIL import Image
from test_crash_safety import CKPT, ONE_THREAD, ROOT, assert_same_state, train_uninterrupted
from test_user_errors import SMALL, fails, nyu_flags

import main.cli.finetune as finetune
import main.cli.train as baseline
from main.checkpoint import load_checkpoint
from main.config import Config, dump_yaml
from main.errors import UserError
from main.run_dir import FROM_SETTINGS

# --ratio 0.05: sparse enough at iteration 2 for a best checkpoint, written before the first latest one (4)
FLAGS = TINY_FLAGS + ["--iters", "8", "--save_iters", "4", "--val_iters", "2", "--ratio", "0.05", "--deterministic",
                      "--no-tensorboard"]
# The instants before a checkpoint that loads: --resume restarts these from iteration 0; the others continue.
RESTARTED = {"folder_locked", "inside_config_write", "before_first_step", "after_first_best", "inside_first_write",
             "sigterm_twice_in_first_write"}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> dict:
    run = tmp_path_factory.mktemp("full") / "run"
    train_uninterrupted(FLAGS, run)
    return load_checkpoint(run / CKPT)


def run(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=ONE_THREAD, capture_output=True, text=True,
                          timeout=300)


@pytest.mark.parametrize("instant", list(INSTANTS))
def test_a_run_killed_at_any_instant_continues_with_resume(instant, uninterrupted, tmp_path, capsys):
    folder = tmp_path / "run"
    killed = run(["tests/kill_worker.py", instant, *FLAGS, "--save_dir", str(folder)])
    signum = signal.SIGTERM if instant.startswith("sigterm") else signal.SIGKILL
    assert killed.returncode == -signum, f"the instant was not reached: {killed.stderr}"
    assert baseline.main([*FLAGS, "--save_dir", str(folder), "--resume"]) == 0  # the requeued command, in-process
    out = capsys.readouterr().out
    assert ("restarting it from iteration 0" in out) == (instant in RESTARTED), out
    assert_same_state(uninterrupted, load_checkpoint(folder / CKPT))


def stopped_before_first_checkpoint(folder, marked: bool = True) -> None:
    """The folder a baseline.py run leaves when killed before its first checkpoint (lock, config.yaml, log)."""
    folder.mkdir()
    (folder / ".lock").write_text("12345\n")
    cfg = baseline.parse_args([*SMALL, "--save_dir", str(folder)])[0]
    dump_yaml(cfg, str(folder / "config.yaml"), header=FROM_SETTINGS if marked else "")
    (folder / "train.log").write_text("[Iter 0] started\n")


def test_the_plain_command_says_resume_and_resume_restarts_from_iteration_0(tmp_path, capsys):
    folder = tmp_path / "run"
    stopped_before_first_checkpoint(folder)
    fails(baseline, [*SMALL, "--save_dir", folder], tmp_path, capsys, "stopped before its first checkpoint",
          "pass --resume", "iteration 0")
    fails(baseline, [*SMALL, "--batch_size", "4", "--save_dir", folder, "--resume"], tmp_path, capsys,
          "--batch_size 4 differs from the resumed run's 2")
    assert baseline.main([*SMALL, "--iters", "2", "--save_dir", str(folder), "--resume"]) == 0
    out = capsys.readouterr().out
    assert out.count("notice: --resume:") == 1 and "restarting it from iteration 0 with its config.yaml" in out
    assert load_checkpoint(folder / CKPT)["iter"] == 2  # --iters may change on a resume, as ever
    assert (folder / "config.yaml").read_text().startswith(FROM_SETTINGS)  # still restartable


def test_a_run_whose_checkpoints_are_all_unreadable_restarts_too(tmp_path, capsys):
    folder = tmp_path / "run"
    stopped_before_first_checkpoint(folder)
    (folder / CKPT).write_bytes(b"killed mid-copy")
    fails(baseline, [*SMALL, "--save_dir", folder], tmp_path, capsys, "already holds a run", "pass --resume")
    assert baseline.main([*SMALL, "--save_dir", str(folder), "--resume"]) == 0
    out = capsys.readouterr().out
    assert f"warning: skipping {folder / CKPT}" in out and "restarting it from iteration 0" in out
    assert load_checkpoint(folder / CKPT)["iter"] == 1


def test_a_start_that_needs_more_than_its_settings_names_overwrite_both_ways(tmp_path, capsys):
    """An unmarked folder (a fine-tuning or pruning start, which masks or scores after its config is written)
    cannot be rebuilt from config.yaml: neither command guesses, both say --overwrite."""
    folder = tmp_path / "run"
    stopped_before_first_checkpoint(folder, marked=False)
    fails(baseline, [*SMALL, "--save_dir", folder], tmp_path, capsys, "only its own start", "--overwrite")
    fails(baseline, [*SMALL, "--save_dir", folder, "--resume"], tmp_path, capsys, "no checkpoint yet",
          "--overwrite")
    fails(finetune, ["--save_dir", folder, "--resume"], tmp_path, capsys, "no checkpoint yet", "--overwrite")


def test_a_start_that_failed_on_bad_data_is_resumed_once_the_data_is_fixed(tmp_path, capsys):
    bad, fixed, folder = tmp_path / "bad", tmp_path / "fixed", tmp_path / "run"
    make_nyuv2(bad, n_train=3, n_test=2)
    make_nyuv2(fixed, n_train=3, n_test=2)
    for k in (1, 2):  # past the up-front checks (sample 0 is fine): found by the first batch
        Image.fromarray(np.zeros((10, 12), np.uint8)).save(bad / "seg" / f"train_{k}.png")
    with pytest.raises(UserError, match="differs from its image"):
        baseline.main([str(a) for a in nyu_flags(bad, folder)])
    assert baseline.main([str(a) for a in nyu_flags(fixed, folder)] + ["--resume"]) == 0  # --data_root may move
    assert "restarting it from iteration 0" in capsys.readouterr().out
    assert load_checkpoint(folder / CKPT)["iter"] == 1


def test_a_folder_never_started_in_is_still_refused_by_resume(tmp_path, capsys):
    folder = tmp_path / "empty"
    folder.mkdir()
    fails(baseline, [*SMALL, "--save_dir", folder, "--resume"], tmp_path, capsys, "no checkpoint",
          "without --resume")


def test_a_fine_tuning_run_resumes(tmp_path):
    """Its config records the checkpoint it started from (--reload); a resume continues from its own instead."""
    source, tuned = tmp_path / "source", tmp_path / "tuned"
    assert baseline.main([*SMALL, "--save_dir", str(source)]) == 0
    assert finetune.main([*SMALL, "--load_checkpoint", str(source / CKPT), "--save_dir", str(tuned)]) == 0
    assert Config.from_dict(load_checkpoint(tuned / CKPT)["config"]).reload == str(source / CKPT)
    assert finetune.main(["--save_dir", str(tuned), "--resume", "--iters", "2", "--progress", "off"]) == 0
    assert load_checkpoint(tuned / CKPT)["iter"] == 2


def test_a_fine_tuning_killed_before_its_first_checkpoint_restarts_with_resume(tmp_path, capsys):
    """The requeued job's own command (--load_checkpoint and --resume) starts it again: nothing to lose."""
    source, tuned = tmp_path / "source", tmp_path / "tuned"
    assert baseline.main([*SMALL, "--save_dir", str(source)]) == 0
    stopped_before_first_checkpoint(tuned, marked=False)
    argv = [*SMALL, "--load_checkpoint", str(source / CKPT), "--save_dir", str(tuned), "--resume"]
    assert finetune.main([str(a) for a in argv]) == 0
    assert "starting it again from --load_checkpoint" in capsys.readouterr().out
    assert load_checkpoint(tuned / CKPT)["iter"] == 1
    assert finetune.main([str(a) for a in argv] + ["--iters", "2"]) == 0  # now an ordinary resume
    assert load_checkpoint(tuned / CKPT)["iter"] == 2


@pytest.mark.parametrize("command", ["at_init", "disparse"])
def test_a_pruning_method_killed_before_its_first_checkpoint_restarts_with_resume(tmp_path, capsys, command):
    """Its own command line carries its start (--method, --target): the requeued --resume starts it again."""
    import importlib

    module = importlib.import_module(f"SOTA_methods.{command}")
    folder = tmp_path / "run"
    stopped_before_first_checkpoint(folder, marked=False)
    (folder / "pruning.json").write_text("{}")  # the method record a killed start wrote before any checkpoint
    flags = [*SMALL, "--target", "0.5", "--save_dir", folder, "--resume"]
    if command == "at_init":
        flags += ["--method", "snip", "--num_batches", "1"]
    assert module.main([str(a) for a in flags]) == 0
    assert "starting it again from the fresh initialisation" in capsys.readouterr().out
    state = load_checkpoint(folder / CKPT)
    assert state["iter"] == 1 and state.get("masks") is not None
    assert module.main([str(a) for a in flags] + ["--iters", "2"]) == 0  # now an ordinary resume
    assert load_checkpoint(folder / CKPT)["iter"] == 2
