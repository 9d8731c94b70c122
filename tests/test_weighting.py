"""Adaptive task weighting: equal to a line-by-line Python transcription of the reference loop."""

from __future__ import annotations

import random

import torch

from main.weighting import AdaptiveWeighting, EqualWeighting


def reference_weights(loss_seq, tasks, begin, window, total):
    """The original trainer's lists-and-floats algorithm (docs/reference.md §2)."""
    weight = dict.fromkeys(tasks, 1.0)
    prev = dict.fromkeys(tasks)
    diffs = {t: [] for t in tasks}
    out = []
    for i, losses in enumerate(loss_seq):
        for t, loss in zip(tasks, losses):
            if i >= begin:
                if prev[t] is not None:
                    diffs[t].append(abs(prev[t] - loss) / loss)
                prev[t] = loss
                if len(diffs[t]) > window:
                    diffs[t].pop(0)
                    weight[t] = sum(diffs[t]) / len(diffs[t])
        s = sum(weight.values())
        for t in tasks:
            weight[t] = weight[t] * total / s
        out.append([weight[t] for t in tasks])
    return out


def test_matches_reference_transcription():
    rng = random.Random(0)
    tasks = ("segment_semantic", "normal", "depth_zbuffer")
    seq = [[rng.uniform(0.2, 2.0) for _ in tasks] for _ in range(60)]
    expected = reference_weights(seq, tasks, begin=10, window=7, total=3.0)
    w = AdaptiveWeighting(tasks, begin=10, window=7, total=3.0)
    got = [w.update(torch.tensor(losses), i).tolist() for i, losses in enumerate(seq)]
    for i, (g, e) in enumerate(zip(got, expected)):
        assert all(abs(a - b) < 1e-5 for a, b in zip(g, e)), i
    # first adaptive weights exactly at begin + window + 1 (reference: 5501 for 5000/500)
    assert all(abs(x - 1.0) < 1e-6 for x in got[10 + 7])
    assert any(abs(x - 1.0) > 1e-3 for x in got[10 + 7 + 1])


def test_reference_normaliser_is_three_for_five_tasks_and_fix_is_task_count():
    tasks = tuple("abcde")
    parity = AdaptiveWeighting(tasks, begin=100, window=5, total=3.0)
    assert torch.allclose(parity.update(torch.ones(5), 0), torch.full((5,), 0.6))
    fixed = AdaptiveWeighting(tasks, begin=100, window=5, total=5.0)
    assert torch.allclose(fixed.update(torch.ones(5), 0), torch.ones(5))


def test_volatile_task_gets_more_weight():
    w = AdaptiveWeighting(("steady", "noisy"), begin=0, window=4, total=2.0)
    for i in range(20):
        out = w.update(torch.tensor([1.0, 1.0 + 0.5 * (i % 2)]), i)
    assert out[1] > out[0]


def test_state_round_trip_continues_identically():
    tasks = ("a", "b", "c")
    seq = [torch.rand(3) + 0.1 for _ in range(30)]
    full = AdaptiveWeighting(tasks, begin=3, window=5)
    ref = [full.update(x, i) for i, x in enumerate(seq)]
    first = AdaptiveWeighting(tasks, begin=3, window=5)
    for i, x in enumerate(seq[:12]):
        first.update(x, i)
    second = AdaptiveWeighting(tasks, begin=3, window=5)
    second.load_state_dict(first.state_dict())
    for i, x in enumerate(seq[12:], start=12):
        assert torch.equal(second.update(x, i), ref[i])


def test_equal_weighting():
    assert EqualWeighting(("a", "b")).update(torch.tensor([3.0, 1.0]), 0).tolist() == [1.0, 1.0]
