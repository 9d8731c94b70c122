"""Run baseline.py and kill it at a named instant: ``python tests/kill_worker.py INSTANT FLAGS...``.

Why: "a killed run can always be continued" must hold at every instant, also at those a timed ``kill -9`` hits
only by luck (inside the first checkpoint write, between the snapshot and the latest file).  Each instant wraps
one call on the way to and through the first checkpoints, so that the process sends itself SIGKILL (no handler,
no cleanup: a node failure) exactly there; ``sigterm_twice_in_first_write`` sends two SIGTERMs inside the first
checkpoint write instead (the first is noted, the second acts at once).
"""

from __future__ import annotations

import os
import runpy
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

import main.run_dir as run_dir
import main.trainer as trainer

ROOT = Path(__file__).resolve().parents[1]


def sigkill() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def sigterm_twice() -> None:
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(0.2)  # the first one's Python handler runs (and restores the default action)
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(5)


def at_call(owner: object, name: str, nth: int, act: Callable[[], None], matches=lambda *a: True,
            after: bool = False) -> None:
    """Make the ``nth`` call of ``owner.name`` whose arguments ``matches`` run ``act`` (before it, or after)."""
    real, seen = getattr(owner, name), 0

    def wrapped(*args, **kwargs):
        nonlocal seen
        seen += matches(*args)
        hit = matches(*args) and seen == nth
        if hit and not after:
            act()
        out = real(*args, **kwargs)
        if hit and after:
            act()
        return out

    setattr(owner, name, wrapped)


def renames_to(test: Callable[[Path], bool]):
    return lambda src, dst, *rest: test(Path(dst))


snapshot = renames_to(lambda p: p.parent.name == "checkpoints")
INSTANTS: dict[str, Callable[[], None]] = {
    "folder_locked": lambda: at_call(run_dir, "lock_run_dir", 1, sigkill, after=True),
    "inside_config_write": lambda: at_call(os, "replace", 1, sigkill, renames_to(lambda p: p.name == "config.yaml")),
    "before_first_step": lambda: at_call(trainer.Trainer, "step", 1, sigkill),
    "after_first_best": lambda: at_call(os, "replace", 1, sigkill, renames_to(lambda p: p.name.startswith("best_")),
                                        after=True),
    "inside_first_write": lambda: at_call(os, "replace", 1, sigkill, snapshot),
    "sigterm_twice_in_first_write": lambda: at_call(os, "replace", 1, sigterm_twice, snapshot),
    "snapshot_before_latest": lambda: at_call(os, "link", 1, sigkill),
    "inside_second_write": lambda: at_call(os, "replace", 2, sigkill, snapshot),
}


if __name__ == "__main__":
    INSTANTS[sys.argv[1]]()
    sys.argv = ["baseline.py", *sys.argv[2:]]
    runpy.run_path(str(ROOT / "baseline.py"), run_name="__main__")
