"""A resumable, rank-aware stream of training batches.

Batch ``k`` of a run is a pure function of (seed, k): epoch ``e = k // batches_per_epoch`` shuffles the
dataset with a generator seeded by (seed, e) and gives every sample an augmentation seed, so resuming at
iteration k reproduces exactly the batches an uninterrupted run would have seen, whatever the number of
DataLoader workers.  Under DDP each rank takes its slice of the global batch.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from ..config import ConfigError

# Stream mode (a dataset too large to shuffle, e.g. ``--train_size 0``: every training scene fresh): sample number
# p of a run reads index (p * _STREAM_STEP + seed * _STREAM_SEED_STEP) mod N.  N = 2**31 - 1 is prime, so each
# seed walks all N scenes without repeating, and different seeds start far apart.
_STREAM_STEP = 48271
_STREAM_SEED_STEP = 1_000_003


class ResumableBatchSampler:
    """Infinite ``batch_sampler`` yielding lists of ``(index, aug_seed)`` keys, starting at ``start_batch``.

    The last incomplete global batch of an epoch is dropped so every step sees ``batch_size × world_size``
    samples.  ``stream=True``: no epochs and no shuffle (the dataset is an unbounded stream of i.i.d. scenes);
    the indices still depend on ``seed``, so seeds see different scenes.
    """

    def __init__(self, num_samples: int, batch_size: int, seed: int, start_batch: int = 0, rank: int = 0,
                 world_size: int = 1, stream: bool = False) -> None:
        global_batch = batch_size * world_size
        if num_samples < global_batch:
            raise ConfigError(f"the training split has {num_samples} samples, fewer than one batch of "
                              f"{global_batch}; lower --batch_size")
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.seed = seed
        self.start_batch = start_batch
        self.rank = rank
        self.world_size = world_size
        self.batches_per_epoch = num_samples // global_batch
        self.stream = stream

    def _epoch(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng([self.seed, epoch])
        return rng.permutation(self.num_samples), rng.integers(0, 2**31 - 1, self.num_samples)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        if self.stream:
            yield from self._stream()
            return
        k = self.start_batch
        epoch = -1
        while True:
            e, b = divmod(k, self.batches_per_epoch)
            if e != epoch:
                epoch = e
                order, aug = self._epoch(e)
            start = (b * self.world_size + self.rank) * self.batch_size
            idx = order[start:start + self.batch_size]
            yield [(int(i), int(aug[i])) for i in idx]
            k += 1

    def _stream(self) -> Iterator[list[tuple[int, int]]]:
        k = self.start_batch
        global_batch = self.batch_size * self.world_size
        while True:
            first = k * global_batch + self.rank * self.batch_size
            positions = np.arange(first, first + self.batch_size, dtype=np.int64)
            idx = (positions * _STREAM_STEP + self.seed * _STREAM_SEED_STEP) % self.num_samples
            aug = np.random.default_rng([self.seed, k, self.rank]).integers(0, 2**31 - 1, self.batch_size)
            yield [(int(i), int(a)) for i, a in zip(idx, aug)]
            k += 1

    def __len__(self) -> int:  # DataLoader asks; the stream is unbounded
        return 2**62
