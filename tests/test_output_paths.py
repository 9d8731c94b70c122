"""A user-named output is a free name or a file of the writer's own kind; anything else is refused up front.

Issue 26 (Reliability III), class 1: a write renames a temp file over its target, and a rename replaces whatever
the name is (as root, ``test.py --json /dev/full`` replaced the device node; ``--json OTHER_RUN/<tasks>.model``
turned a checkpoint into JSON).  Tested by mechanism: every kind of non-regular name (FIFO, socket, folder,
symlinks, a character device where root can make one) is refused by every writer with one line, before any work,
and is left as it was; an existing file of another kind (a checkpoint, a config) is refused unless
``--overwrite``; the writer's own earlier output is replaced, so running a command twice still works.
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import stat
from collections.abc import Callable
from pathlib import Path

import pytest
from test_user_errors import SMALL, fails

import main.cli.test as test_script
import main.cli.train as baseline
import SOTA_methods.compact as structured_compact
from main import export
from main.atomic import WriteError, atomic_write_text
from main.checkpoint import load_checkpoint
from main.output_file import RESULTS_JSON, check_output_file

ROOT = Path(__file__).resolve().parents[1]
CKPT = "segment_semantic_normal_depth_zbuffer.model"


def make_fifo(path: Path) -> None:
    os.mkfifo(path)


def make_socket(path: Path) -> None:
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(path))  # the socket file stays after the socket is closed


def make_char_device(path: Path) -> None:
    """A twin of /dev/null (major 1, minor 3) inside the test folder: a real device node, harmless if written."""
    if os.geteuid() != 0:
        pytest.skip("only root can make a device node")
    os.mknod(path, 0o600 | stat.S_IFCHR, os.makedev(1, 3))


def make_link_to_file(path: Path) -> None:
    (path.parent / "target.json").write_text('{"metrics": {}}')
    os.symlink(path.parent / "target.json", path)


def make_dangling_link(path: Path) -> None:
    os.symlink(path.parent / "nowhere" / "x.json", path)


SPECIAL: dict[str, Callable[[Path], None]] = {
    "FIFO": make_fifo, "socket": make_socket, "character device": make_char_device, "folder": Path.mkdir,
    "symbolic link": make_link_to_file, "dangling symbolic link": make_dangling_link,
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("run") / "r"
    assert baseline.main([*SMALL, "--save_dir", str(run)]) == 0
    return run / CKPT


@pytest.fixture
def no_work(monkeypatch):
    """Any evaluation, export or compaction reached means the refusal came too late."""
    def forbidden(*args, **kwargs):
        raise AssertionError("the command started its work before refusing its output path")
    for owner, name in ((test_script, "evaluate_checkpoint"), (export, "_load_any"), (export, "load_checkpoint"),
                        (structured_compact, "load_pruned")):
        monkeypatch.setattr(owner, name, forbidden)


def file_type(path: Path) -> int:
    return stat.S_IFMT(os.lstat(path).st_mode)


@pytest.mark.parametrize("kind", list(SPECIAL))
def test_a_name_that_is_not_a_regular_file_is_never_replaced(kind, trained, tmp_path, capsys, no_work):
    out = tmp_path / "out"
    SPECIAL[kind](out)
    before = file_type(out)
    for script, argv in ((test_script, ["--path", trained, "--json", out]),
                         (test_script, ["--path", trained, "--json", out, "--overwrite"]),
                         (export, ["--path", trained, "--out", out]),
                         (export, ["--path", trained, "--compact", "--out", out, "--overwrite"]),
                         (structured_compact, ["--path", trained, "--out", out])):
        line = fails(script, argv, tmp_path, capsys, str(out))
        assert ("is a folder" if kind == "folder" else "not a regular file") in line, line
        assert file_type(out) == before


def test_a_symlink_to_standard_output_is_refused(trained, tmp_path_factory):
    link = tmp_path_factory.mktemp("links") / "stdout.json"
    os.symlink("/proc/self/fd/1", link)
    with pytest.raises(Exception, match="symbolic link"):
        check_output_file(link, "--json", RESULTS_JSON, overwrite=True)
    assert os.path.islink(link)


@pytest.mark.parametrize("kind", ["FIFO", "socket", "folder", "symbolic link", "dangling symbolic link"])
def test_the_write_itself_refuses_what_it_would_replace(kind, tmp_path):
    """The last guard, under every writer (run files, reports): the rename never lands on such a name."""
    out = tmp_path / "out"
    SPECIAL[kind](out)
    before = file_type(out)
    with pytest.raises(WriteError, match="nothing was written"):
        atomic_write_text(out, "{}")
    assert file_type(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["out"] + (["target.json"] if kind ==
                                                                           "symbolic link" else []))


def test_another_runs_checkpoint_is_not_turned_into_json(trained, tmp_path, capsys):
    other = tmp_path / "other_run" / CKPT
    other.parent.mkdir()
    other.write_bytes(trained.read_bytes())
    fails(test_script, ["--path", trained, "--json", other], tmp_path, capsys, "is a checkpoint", "--overwrite")
    fails(export, ["--path", trained, "--out", other], tmp_path, capsys, "is a checkpoint", "not a sparse export")
    fails(export, ["--path", trained, "--compact", "--out", other], tmp_path, capsys, "not a compact model")
    fails(structured_compact, ["--path", trained, "--out", other], tmp_path, capsys, "is a checkpoint")
    notes = tmp_path / "notes.yaml"
    notes.write_text("lr: 0.1\n")
    fails(test_script, ["--path", trained, "--json", notes], tmp_path, capsys, "a file of another kind")
    assert load_checkpoint(other)["iter"] == load_checkpoint(trained)["iter"]
    assert test_script.main(["--path", str(trained), "--json", str(other), "--overwrite", "--progress", "off"]) == 0
    assert "metrics" in json.loads(other.read_text())  # --overwrite names the intent


def test_a_writers_own_earlier_output_is_replaced(trained, tmp_path):
    """Running a command twice is fine: the existing file is of the kind the command writes."""
    for _ in range(2):
        assert test_script.main(["--path", str(trained), "--json", str(tmp_path / "r.json"), "--progress",
                                 "off"]) == 0
        assert export.main(["--path", str(trained), "--out", str(tmp_path / "m.safetensors")]) == 0
        assert export.main(["--path", str(trained), "--compact", "--out", str(tmp_path / "small.model")]) == 0
    assert export.is_export(tmp_path / "m.safetensors") and not export.is_export(trained)


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "Scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_scripts_check_their_outputs_first(trained, tmp_path, capsys):
    plots = tmp_path / "plots"
    plots.mkdir()
    os.mkfifo(plots / "task_weights.png")  # a FIFO would block the PNG writer forever
    fails(load_script("plot_tensorboard"), [trained.parent, "--out", plots], tmp_path, capsys, "task_weights.png",
          "FIFO")
    (plots / "task_weights.png").unlink()
    (plots / "thresholds.png").write_text("my notes")
    fails(load_script("plot_tensorboard"), [trained.parent, "--out", plots], tmp_path, capsys, "not a PNG image",
          "remove it first")
    fails(load_script("trivial_baselines"), [*SMALL, "--json", trained], tmp_path, capsys, "is a checkpoint",
          "--overwrite")


@pytest.mark.parametrize("bench_module,key", [("bench.inference", "bench"), ("bench.gpu_check", "gpu")])
def test_bench_outputs_are_checked_before_any_work(bench_module, key, trained, tmp_path):
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    fifo = tmp_path / "pipe.json"
    os.mkfifo(fifo)
    for target in (fifo, trained):  # a FIFO, another run's checkpoint
        before = target.stat().st_mtime_ns
        proc = subprocess.run([sys.executable, "-m", bench_module, "--out", str(target)], cwd=root,
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2 and proc.stderr.startswith("error: --out"), proc.stderr[-500:]
        assert target.stat().st_mtime_ns == before


def test_report_and_plot_writers_never_replace_a_special_file(tmp_path):
    from bench.plots import plot_delta_vs_sparsity
    from main.atomic import WriteError

    link = tmp_path / "plot.png"
    link.symlink_to(tmp_path / "elsewhere.png")
    with pytest.raises(WriteError, match="symbolic link"):
        plot_delta_vs_sparsity([{"method": "a", "sparsity": 90.0, "delta_t": 1.0}], link)
    assert link.is_symlink() and not (tmp_path / "elsewhere.png").exists()
