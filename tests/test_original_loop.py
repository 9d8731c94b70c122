"""``python -m bench.original_loop``: the parts that need no checkout of the original code (its argument checks)."""

from __future__ import annotations

import pytest

from bench import original_loop


@pytest.mark.parametrize("args, message", [
    ([], "--original PATH is required"),
    (["--original", "/nonexistent/adapmtl"], "no such folder"),
])
def test_refuses_to_run_without_the_original_checkout(args, message, capsys):
    assert original_loop.main(args) == 2
    err = capsys.readouterr().err
    assert message in err and "github.com/MitchellX/AdapMTL" in err


def test_refuses_a_folder_that_is_not_the_original_code(tmp_path, capsys):
    (tmp_path / "main").mkdir()
    (tmp_path / "main" / "trainer.py").write_text("")
    assert original_loop.main(["--original", str(tmp_path)]) == 2
    assert "lacks main/auto_models.py" in capsys.readouterr().err


def test_refuses_a_warmup_that_leaves_nothing_to_time(tmp_path, capsys):
    for f in original_loop.ORIGINAL_FILES:
        (tmp_path / f).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / f).write_text("")
    assert original_loop.main(["--original", str(tmp_path), "--iters", "3", "--warmup", "3"]) == 2
    assert "--warmup 3 must be at least 1 and below --iters 3" in capsys.readouterr().err
