"""Shared fixtures: a tiny configuration that trains in seconds on one CPU core."""

from __future__ import annotations

import pytest
import torch

torch.set_num_threads(1)

# Tiny but complete: every component, every task, adaptive weighting active from iteration 1.
TINY_FLAGS = [
    "--width_mult", "0.0625", "--crop_size", "32", "--train_size", "16", "--val_size", "8", "--test_size", "8",
    "--batch_size", "4", "--adaptive_begin", "1", "--adaptive_window", "2", "--log_every", "2",
    "--val_iters", "3", "--save_iters", "3", "--progress", "off", "--sInit_value", "-4.5",
    "--weight_decay", "1e-3",
]


@pytest.fixture
def tiny_flags() -> list[str]:
    return list(TINY_FLAGS)
