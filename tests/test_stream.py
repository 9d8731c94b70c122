"""``--train_size 0``: an unbounded stream of fresh training scenes, resumable and seed-dependent."""

from __future__ import annotations

import itertools

import pytest

from main.config import Config, ConfigError
from main.data import build_dataset
from main.data.sampler import ResumableBatchSampler
from main.data.synthetic import STREAM_LENGTH


def batches(sampler: ResumableBatchSampler, n: int) -> list[list[tuple[int, int]]]:
    return list(itertools.islice(iter(sampler), n))


def test_stream_sampler_never_repeats_a_scene_resumes_exactly_and_depends_on_the_seed():
    make = lambda seed, start=0: ResumableBatchSampler(STREAM_LENGTH, 8, seed, start_batch=start, stream=True)  # noqa: E731
    run = batches(make(3), 500)
    indices = [i for b in run for i, _ in b]
    assert len(set(indices)) == len(indices) == 4000  # every scene fresh
    assert all(0 <= i < STREAM_LENGTH for i in indices)
    assert batches(make(3, start=250), 250) == run[250:]  # batch k is a pure function of (seed, k)
    other = {i for b in batches(make(4), 500) for i, _ in b}
    assert not other & set(indices)  # another seed sees other scenes
    # under DDP the ranks split each global batch without overlap
    ranks = [ResumableBatchSampler(STREAM_LENGTH, 4, 3, rank=r, world_size=2, stream=True) for r in (0, 1)]
    first = [set(i for i, _ in batches(s, 1)[0]) for s in ranks]
    assert not first[0] & first[1] and first[0] | first[1] == {i for i, _ in run[0]}


def test_train_size_zero_builds_an_uncached_stream_and_other_splits_stay_finite():
    cfg = Config(train_size=0, crop_size=16)
    cfg.check()
    train = build_dataset(cfg, "train")
    assert train.stream and len(train) == STREAM_LENGTH and train.cache is None
    assert train[123_456_789, 5]["input"].shape == (3, 16, 16)
    assert not build_dataset(cfg, "test").stream and len(build_dataset(cfg, "test")) == cfg.test_size
    with pytest.raises(ConfigError, match="train_size"):
        Config(train_size=-1).check()
