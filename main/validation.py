"""Validation during training and the choice of the best checkpoint (``--select_by``).

``Validation`` is the training callback that evaluates the model on the validation split every ``--val_iters``
iterations (and at the end), writes the results to TensorBoard and the log, and saves ``best_<tasks>.model`` when
the selection value improves.  A sparse model can only be "best" once its sparsity control says it is on target
(``may_be_best``), so the best checkpoint of an AdapMTL run is never a half-pruned one.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING

from .checkpoint_saver import TrainingDiverged
from .config import Config, ConfigError
from .distributed import gather_objects
from .evaluate import evaluate
from .monitor import progress
from .scores import score_references, selection_score

if TYPE_CHECKING:
    from .trainer import Trainer
    from .training_log import StepResult

Directions = dict[str, dict[str, int]]


def parse_metric_selector(select_by: str, directions: Directions) -> tuple[str, str]:
    """``metric:<task>/<metric>`` -> (task, metric), checked against the run's metrics."""
    task, _, metric = select_by[len("metric:"):].partition("/")
    if task not in directions or metric not in directions[task]:
        known = ", ".join(f"metric:{t}/{m}" for t, ms in directions.items() for m in ms)
        raise ConfigError(f"--select_by {select_by}: this run has no such metric; choose one of: {known}")
    return task, metric


def selection_rule(cfg: Config, tasks: tuple[str, ...], directions: Directions,
                   metric_style: str = "nyuv2") -> Callable[[dict], float]:
    """``--select_by`` as a function of a validation result, higher is better: one validation metric (signed by
    its direction: S004 picks by Pixel Acc), the reference test score, or minus the mean validation loss.  Parsed
    once per run, so a bad selector fails before training."""
    if cfg.select_by.startswith("metric:"):
        task, metric = parse_metric_selector(cfg.select_by, directions)
        sign = directions[task][metric]
        return lambda result: sign * result["metrics"][task][metric]
    if cfg.select_by == "score":
        refs = score_references(cfg.architecture, tasks, metric_style)
        priority = dict(zip(tasks, cfg.priority)) if cfg.priority else None  # as the reference
        return lambda result: selection_score(result["metrics"], refs, directions, task_priority=priority)
    return lambda result: -sum(result["losses"].values()) / len(result["losses"])


def diverged(result: dict, trainer: Trainer) -> str | None:
    """Why a validation result means the run diverged (a non-finite loss or metric), or None.

    A training loss can stay finite while the model's outputs overflow on held-out data (``--lr 1e6``): the run
    then stops with an error instead of ending "done" with NaN metrics.
    """
    bad = [t for t, v in result["losses"].items() if not math.isfinite(v)]
    bad += [f"{t}/{m}" for t, ms in result["metrics"].items() for m, v in ms.items() if not math.isfinite(v)]
    if not bad:
        return None
    return (f"validation at iteration {trainer.iteration} is not finite ({', '.join(bad[:4])}): the training "
            f"diverged; the checkpoints in {trainer.save_dir} are those written before it; start again with a lower "
            "--lr (or --reload one of them)")


class Validation:
    """Training callback: validate every ``--val_iters`` iterations and at the end; keep the best checkpoint."""

    def __init__(self, trainer: Trainer) -> None:
        self.select = selection_rule(trainer.cfg, trainer.tasks, trainer.directions, trainer.info.metric_style)

    def on_step_end(self, trainer: Trainer, result: StepResult) -> None:
        if trainer.iteration % trainer.cfg.val_iters == 0 or trainer.iteration == trainer.cfg.iters:
            problem = None
            if trainer.is_main:  # parameters are identical on every rank: one evaluation suffices
                problem = diverged(self.validate(trainer), trainer)
            problem = gather_objects(problem, trainer.dist)[0]  # every rank stops together (also the barrier)
            if problem is not None:  # before SaveLatest: the checkpoints on disk are those of earlier steps
                raise TrainingDiverged(problem)

    def validate(self, trainer: Trainer) -> dict:
        cfg = trainer.cfg
        batches = progress(trainer.val_loader(), desc="val", enabled=trainer.show_progress, leave=False)
        result = evaluate(trainer.model, batches, trainer.tasks, trainer.metrics, trainer.device,
                          trainer.class_weights, amp=cfg.amp, channels_last=cfg.channels_last,
                          loss_mean=cfg.val_loss_mean)
        step = trainer.iteration
        score = self.select(result)
        overall = trainer.sparsity_report().overall
        self._log(trainer, result, score, overall)
        control = trainer.control
        finite = diverged(result, trainer) is None
        eligible = finite and step > cfg.best_after and (control is None or control.may_be_best(overall, step))
        if eligible and (trainer.best is None or score > trainer.best["score"]):
            trainer.best = {"score": score, "iter": step, "sparsity": overall, "select_by": cfg.select_by}
            if trainer.is_main:
                trainer.save(best=True)
        return result

    @staticmethod
    def _log(trainer: Trainer, result: dict, score: float, overall: float) -> None:
        if not trainer.is_main:
            return
        step, writer = trainer.iteration, trainer.writer
        for t, v in result["losses"].items():
            writer.scalar(f"Loss/val/{t}", v, step)
        for t, ms in result["metrics"].items():
            for m, v in ms.items():
                writer.scalar(f"Metric/{t}/{m}", v, step)
        writer.scalar("Loss/avg_score", score, step)
        writer.flush()
        metrics_txt = "; ".join(f"{t}: " + ", ".join(f"{m} {v:.4f}" for m, v in ms.items())
                                for t, ms in result["metrics"].items())
        trainer.log.info(f"[Iter {step}] val {metrics_txt} | selection {score:.4f} | sparsity {100 * overall:.2f}%")
