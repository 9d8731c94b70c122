"""No output overwrites an input, writes replace files (never in place), one run per folder, clean --overwrite.

Classes of issue "Reliability II" tested by mechanism: an output path equal to (or a hard link of) an input is
refused before any work; every write gives the file a new inode with the umask's mode; a second process on a run
folder is refused with the holder's PID and a dead holder does not block; ``--overwrite`` removes every file of the
previous run and a kill's orphan temporary files.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_user_errors import SMALL, fails

import main.cli.test as test_script
import main.cli.train as baseline
from main import export
from main.atomic import atomic_write_text
from main.checkpoint import atomic_save, load_checkpoint
from main.config import Config
from main.run_dir import RunFolderBusy, check_run_dir

ROOT = Path(__file__).resolve().parents[1]
CKPT = "segment_semantic_normal_depth_zbuffer.model"


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A finished tiny run with a snapshot (hard link of the latest checkpoint)."""
    run = tmp_path_factory.mktemp("run") / "r"
    assert baseline.main([*SMALL, "--iters", "2", "--save_iters", "2", "--save_dir", str(run)]) == 0
    return run


def test_an_output_that_is_an_input_is_refused_before_any_work(trained, tmp_path, capsys):
    ckpt = trained / CKPT
    before = ckpt.read_bytes()
    fails(test_script, ["--path", ckpt, "--json", ckpt], tmp_path, capsys, "--json", "--path input")
    snap = next((trained / "checkpoints").glob("*.model"))
    assert os.path.samefile(snap, ckpt)  # the snapshot is a hard link: writing through it would change both
    fails(test_script, ["--path", ckpt, "--json", snap], tmp_path, capsys, "--path input")
    ref = tmp_path / "ref.json"
    ref.write_text("{}")
    fails(test_script, ["--path", ckpt, "--reference", ref, "--json", ref], tmp_path, capsys, "--reference input")
    fails(test_script, ["--path", ckpt, "--json", ""], tmp_path, capsys, "--json is empty")
    fails(export, ["--path", ckpt, "--out", ckpt], tmp_path, capsys, "--out", "--path input")
    assert ckpt.read_bytes() == before


def test_export_and_data_check_flag_mistakes_are_one_line(tmp_path, capsys):
    fails(export, ["--path"], tmp_path, capsys, "--path", "python -m main.export --help")
    fails(export, ["--path", "a", "--out", "b", "--bogus", "1"], tmp_path, capsys, "unrecognized")
    proc = subprocess.run([sys.executable, "-m", "main.data.check", "--dataset", "nope"], cwd=ROOT,
                          capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stdout == ""
    assert len(proc.stderr.splitlines()) == 1 and proc.stderr.startswith("error: "), proc.stderr


def test_writes_replace_the_file_with_the_umask_mode(tmp_path):
    target = tmp_path / "x.model"
    atomic_save({"state_dict": {}}, target)
    link = tmp_path / "link.model"
    os.link(target, link)
    umask = 0o027
    old = os.umask(umask)
    try:
        atomic_save({"state_dict": {}, "new": 1}, target)
        atomic_write_text(tmp_path / "t.json", "{}")
    finally:
        os.umask(old)
    assert "new" not in load_checkpoint(link)  # the hard link kept the old content: a new inode was written
    assert load_checkpoint(target)["new"] == 1
    for path in (target, tmp_path / "t.json"):
        assert path.stat().st_mode & 0o777 == 0o666 & ~umask


HOLDER = """
import sys, time
from main.config import Config
from main.run_dir import check_run_dir
check_run_dir(Config(save_dir=sys.argv[1]))
print("locked", flush=True)
time.sleep(60)
"""


def test_one_run_per_folder_and_a_dead_holder_does_not_block(tmp_path):
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(run)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        with pytest.raises(RunFolderBusy, match=f"process {proc.pid}"):
            check_run_dir(Config(save_dir=str(run), overwrite=True))
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert (run / ".lock").is_file()  # the killed holder's lock file is still there ...
    check_run_dir(Config(save_dir=str(run), overwrite=True))  # ... and does not block


def test_a_second_training_on_the_same_folder_is_refused(tmp_path):
    run = tmp_path / "run"
    cmd = [sys.executable, "baseline.py", *SMALL, "--iters", "400", "--log_every", "1", "--save_dir", str(run)]
    first = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 120
        while not (run / "config.yaml").exists() and time.time() < deadline:
            time.sleep(0.2)
        second = subprocess.run([*cmd, "--overwrite"], cwd=ROOT, capture_output=True, text=True)
        assert second.returncode == 2 and f"process {first.pid}" in second.stderr, second.stderr
        assert len(second.stderr.splitlines()) == 1
    finally:
        first.kill()
        first.wait()


def test_overwrite_removes_the_previous_run_and_orphans(tmp_path, trained):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained, run)
    (run / "checkpoints" / "segment_semantic_normal_depth_zbuffer_iter99999999.model").write_bytes(b"old run")
    (run / "best_segment_semantic_normal_depth_zbuffer.model").write_bytes(b"old best")
    (run / f".{CKPT}.abc123.tmp").write_bytes(b"half a write")
    (run / "notes.txt").write_text("mine")
    check_run_dir(Config(save_dir=str(run), overwrite=True))
    left = sorted(p.name for p in run.iterdir())
    assert left == [".lock", "notes.txt"]  # the old run is gone, unrelated files stay


def test_non_finite_flags_and_checkpoints_are_refused(trained, tmp_path, capsys):
    import torch

    for flag, value in (("--weight_decay", "nan"), ("--sInit_value", "inf"), ("--budget_gain", "-inf"),
                        ("--lr", "nan")):
        fails(baseline, [*SMALL, flag, value, "--save_dir", tmp_path / "x"], tmp_path, capsys, flag)
    fails(baseline, [*SMALL, "--priority", "-1", "1", "1", "--save_dir", tmp_path / "x"], tmp_path, capsys,
          "--priority")
    fails(baseline, [*SMALL, "--priority", "nan", "1", "1", "--save_dir", tmp_path / "x"], tmp_path, capsys,
          "--priority")
    for device in ("meta", "mps"):
        fails(baseline, [*SMALL, "--device", device, "--save_dir", tmp_path / "x"], tmp_path, capsys, "--device")
    state = load_checkpoint(trained / CKPT)
    name = next(k for k, v in state["state_dict"].items() if v.is_floating_point())
    state["state_dict"][name] = state["state_dict"][name] * float("nan")
    bad = tmp_path / "nan.model"
    torch.save(state, bad)
    fails(test_script, ["--path", bad], tmp_path, capsys, "NaN/Inf weights", name)
    fails(export, ["--path", bad, "--out", tmp_path / "e.safetensors"], tmp_path, capsys, "NaN/Inf")
    fails(baseline, [*SMALL, "--reload", bad, "--save_dir", tmp_path / "y"], tmp_path, capsys, "NaN/Inf")


@pytest.mark.parametrize("keep", [0, 1, 100, 2000, -1])
def test_resume_falls_back_from_a_latest_checkpoint_truncated_anywhere(tmp_path, trained, keep, capsys):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained, run)
    latest = run / CKPT
    data = latest.read_bytes()
    latest.unlink()  # a new inode: the snapshot (its hard link) stays intact
    latest.write_bytes(data[:keep] if keep >= 0 else data[:-1])
    assert baseline.main(["--save_dir", str(run), "--resume", "--iters", "3", "--progress", "off"]) == 0
    assert "warning: skipping" in capsys.readouterr().out
    assert load_checkpoint(latest)["iter"] == 3


def test_resume_refuses_preset_changes_pruning_folders_and_says_why_tasks_differ(tmp_path, trained, capsys):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained, run)
    preset = tmp_path / "p.yaml"
    preset.write_text("lr: 0.5\n")
    fails(baseline, ["--config", preset, "--save_dir", run, "--resume"], tmp_path, capsys, f"--config {preset}",
          "lr")
    fails(baseline, ["--save_dir", run, "--resume", "--tasks", "normal", "depth_zbuffer"], tmp_path, capsys,
          "--tasks normal depth_zbuffer differs", "drop --tasks")
    import SOTA_methods.cli as pruning

    pruned = tmp_path / "pruned"
    assert pruning.main(["--load_checkpoint", str(run / CKPT), "--method", "magnitude", "--prune_ratio", "0.5",
                         "--save_dir", str(pruned), "--progress", "off"]) == 0
    fails(baseline, ["--save_dir", pruned, "--resume"], tmp_path, capsys, "pruning.py", "finetune.py")


def test_wrong_kinds_of_files_and_inconsistent_inputs_are_one_line(trained, tmp_path, capsys):
    import json

    import SOTA_methods.cli as pruning

    ckpt = trained / CKPT
    fails(baseline, [*SMALL, "--config", ckpt, "--save_dir", tmp_path / "x"], tmp_path, capsys, "--config",
          "cannot be read")
    fails(baseline, [*SMALL, "--config", tmp_path, "--save_dir", tmp_path / "x"], tmp_path, capsys, "--config")
    fails(baseline, [*SMALL, "--save_dir", ""], tmp_path, capsys, "--save_dir is empty")
    fails(test_script, ["--path", ckpt, "--reference", ckpt], tmp_path, capsys, "--reference", "cannot be read")
    ref = tmp_path / "ref.json"
    out = tmp_path / "dense.json"
    assert test_script.main(["--path", str(ckpt), "--json", str(out), "--progress", "off"]) == 0
    other = json.loads(out.read_text())
    other["architecture"] = "mobilenetv2"
    ref.write_text(json.dumps(other))
    fails(test_script, ["--path", ckpt, "--reference", ref], tmp_path, capsys, "mobilenetv2", "architecture")
    half = tmp_path / "half"
    assert pruning.main(["--load_checkpoint", str(ckpt), "--method", "magnitude", "--prune_ratio", "0.6",
                         "--save_dir", str(half), "--progress", "off"]) == 0
    fails(pruning, ["--load_checkpoint", half / CKPT, "--method", "magnitude", "--prune_ratio", "0.3",
                    "--save_dir", tmp_path / "p2", "--progress", "off"], tmp_path, capsys, "below the checkpoint")


def test_under_torchrun_a_user_error_is_printed_once_by_rank_0(tmp_path):
    torchrun = Path(sys.executable).with_name("torchrun")
    proc = subprocess.run([str(torchrun), "--nproc_per_node=2", "baseline.py", "--iters", "abc"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error")]
    assert errors == ["error: argument --iters: invalid int value: 'abc'; see `python baseline.py --help`"]
    assert "exitcode: 2" in proc.stderr and proc.returncode == 1  # torchrun's own summary and exit code


def test_a_mistake_of_another_rank_alone_is_printed_with_its_rank(monkeypatch, capsys):
    from main import errors

    monkeypatch.setenv("RANK", "1")
    monkeypatch.setattr(errors, "RANK_ERROR_DELAY_S", 0.0)

    def main(_):
        raise errors.UserError("only here")

    with pytest.raises(SystemExit) as exc:
        errors.cli_main(main)
    assert exc.value.code == 2 and capsys.readouterr().err == "error (rank 1): only here\n"


def test_paths_even_root_cannot_write_and_foreign_configs_are_refused_up_front(trained, tmp_path, capsys):
    import torch

    ckpt = trained / CKPT
    fails(test_script, ["--path", ckpt, "--json", "/proc/x.json"], tmp_path, capsys, "--json folder", "/proc")
    fails(baseline, [*SMALL, "--save_dir", "/proc/run"], tmp_path, capsys, "--save_dir", "cannot write")
    state = load_checkpoint(ckpt)
    state["config"]["architecture"] = "vgg16"
    foreign = tmp_path / "vgg.model"
    torch.save(state, foreign)
    fails(test_script, ["--path", foreign], tmp_path, capsys, "stored config", "vgg16")


def test_a_full_disk_is_one_line_and_keeps_the_previous_file(tmp_path, monkeypatch):
    import errno

    from main import atomic

    target = tmp_path / "x.json"
    atomic_write_text(target, "old")

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(atomic.os, "fsync", full)
    with pytest.raises(atomic.WriteError, match="No space left on device"):
        atomic_write_text(target, "new")
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["x.json"]


def test_overwrite_never_deletes_an_input_of_the_command(trained, tmp_path, capsys):
    import shutil

    import SOTA_methods.cli as pruning

    run = tmp_path / "run"
    shutil.copytree(trained, run)
    fails(baseline, [*SMALL, "--reload", run / CKPT, "--save_dir", run, "--overwrite"], tmp_path, capsys,
          "--reload", "lies in --save_dir")
    fails(baseline, ["--config", run / "config.yaml", "--save_dir", run, "--overwrite"], tmp_path, capsys,
          "--config", "lies in --save_dir")
    fails(pruning, ["--load_checkpoint", run / CKPT, "--method", "magnitude", "--prune_ratio", "0.5",
                    "--save_dir", run, "--overwrite"], tmp_path, capsys, "--load_checkpoint", "lies in --save_dir")


def test_test_py_choice_values_are_refused_up_front(trained, tmp_path, capsys):
    fails(test_script, ["--path", trained / CKPT, "--progress", "bogus"], tmp_path, capsys, "--progress")
    fails(test_script, ["--path", trained / CKPT, "--metric_definitions", "textbook"], tmp_path, capsys,
          "--metric_definitions")
    fails(test_script, ["--path", trained / CKPT, "--device", "meta"], tmp_path, capsys, "--device")
