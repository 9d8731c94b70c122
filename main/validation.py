"""One evaluation pass (validation during training, test.py afterwards): losses and metrics, no gradients."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from torch import Tensor, nn

from .precision import autocast, predictions_fp32, to_channels_last
from .tasks import TaskMetrics, task_loss


def to_device(batch: Mapping[str, Tensor], device: torch.device) -> dict[str, Tensor]:
    non_blocking = device.type == "cuda"
    return {k: v.to(device, non_blocking=non_blocking) if isinstance(v, Tensor) else v for k, v in batch.items()}


@torch.no_grad()
def evaluate(model: nn.Module, batches: Iterable[Mapping[str, Tensor]], tasks: tuple[str, ...],
             metrics: TaskMetrics, device: torch.device, class_weights: Tensor | None = None, *,
             amp: str = "off", channels_last: bool = False, loss_mean: str = "sample") -> dict:
    """Mean per-task loss (sample-weighted) and the metric set over all ``batches``.

    The model is put in eval mode and restored afterwards; nothing here builds an autograd graph.  ``amp`` and
    ``channels_last`` are the run's ``--amp`` / ``--channels_last`` (the model is expected to be converted
    already): the forward runs under the same autocast as training, losses and metrics on fp32 predictions.
    ``loss_mean="batch"``: the plain mean of the per-batch losses (the reference's; a smaller last batch then
    counts as much as a full one) instead of the mean over samples.
    """
    was_training = model.training
    model.eval()
    metrics.reset()
    loss_sums = torch.zeros(len(tasks), device=device, dtype=torch.float64)
    samples = 0
    n_batches = 0
    try:
        for batch in batches:
            batch = to_device(batch, device)
            with autocast(amp, device):
                preds = model(to_channels_last(batch["input"], channels_last))
            preds = predictions_fp32(preds)
            n = batch["input"].shape[0]
            weight = n if loss_mean == "sample" else 1
            loss_sums += torch.stack([task_loss(t, preds[t], batch, class_weights) for t in tasks]).double() * weight
            samples += n
            n_batches += 1
            metrics.update(preds, batch)
    finally:
        model.train(was_training)
    if samples == 0:
        raise ValueError("the evaluation split is empty")
    losses = (loss_sums / (samples if loss_mean == "sample" else n_batches)).tolist()
    return {"losses": dict(zip(tasks, losses)), "metrics": metrics.compute()}
