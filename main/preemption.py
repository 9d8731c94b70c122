"""Preemption: SIGTERM (what Slurm and Kubernetes send) and SIGINT end a run cleanly at a step boundary.

Why: a cluster job is often stopped from outside.  Dying mid-step loses everything since the last
``--save_iters`` checkpoint; instead the signal is only noted, the current step finishes, the trainer writes a
checkpoint (atomically, like every checkpoint) and raises ``Preempted``, which ``cli_main`` turns into one line
saying how to ``--resume`` and the conventional exit code 128 + signal (143 for SIGTERM, 130 for SIGINT).  A second
signal while that happens is not caught (the default handler acts: Ctrl-C twice still stops at once).

Under torchrun every rank must stop at the same iteration (the checkpoint gathers every rank's RNG), so there the
ranks agree on the stop at each log interval with one all-reduce; a single process stops after the current step.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import TYPE_CHECKING

import torch

from .distributed import all_reduce_mean
from .errors import UserError

if TYPE_CHECKING:
    from .checkpoint_saver import SaveLatest
    from .trainer import Trainer
    from .training_log import StepResult

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Preempted(UserError):
    """The run stopped on a signal after writing its checkpoint; ``exit_code`` is 128 + the signal number."""

    label = "stopped"

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.exit_code = 128 + signum


class StopSignals:
    """Context manager that notes SIGTERM / SIGINT instead of dying; ``signum`` is the first one seen (or None).

    Installed only in the main thread (Python delivers signals there); elsewhere it notes nothing.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    def _note(self, signum: int, frame: FrameType | None) -> None:
        self.signum = signum
        for s, handler in self._previous.items():  # a second signal acts at once
            signal.signal(s, handler)

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for s in SIGNALS:
                self._previous[s] = signal.signal(s, self._note)
        return self

    def __exit__(self, *exc: object) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous.clear()


def signal_name(signum: int) -> str:
    return signal.Signals(signum).name


class Preemption:
    """Training callback: after a step, stop on a noted signal, with the latest checkpoint written first.

    Alone, the run stops as soon as a signal arrived.  Under torchrun the ranks agree at log intervals (one
    all-reduce), so that all of them stop at the same iteration.  ``save_latest`` (the ``SaveLatest`` callback)
    writes the checkpoint first, unless this step already wrote it.
    """

    def __init__(self, save_latest: SaveLatest) -> None:
        self.signals = StopSignals()
        self.save_latest = save_latest

    def __enter__(self) -> Preemption:
        self.signals.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.signals.__exit__(*exc)

    def on_step_end(self, trainer: Trainer, result: StepResult) -> None:
        signum = self._agreed_signal(trainer)
        if signum is None or trainer.iteration >= trainer.cfg.iters:
            return
        if not self.save_latest.due(trainer):  # every rank decides alike (the save gathers every rank's RNG)
            self.save_latest.save(trainer)
        raise Preempted(f"stopped by {signal_name(signum)} after iteration {trainer.iteration}: checkpoint written "
                        f"to {trainer.save_dir}; continue with the same command plus --resume", signum)

    def _agreed_signal(self, trainer: Trainer) -> int | None:
        if not trainer.dist.enabled:
            return self.signals.signum
        if trainer.iteration % trainer.cfg.log_every != 0:
            return None
        seen = torch.tensor([float(self.signals.signum or 0)], device=trainer.device)
        agreed = float(all_reduce_mean(seen, trainer.dist))
        return None if agreed == 0 else (self.signals.signum or int(signal.SIGTERM))
