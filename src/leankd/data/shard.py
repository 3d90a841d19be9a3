"""One rank's share of every global batch, for data parallel training.

    loader.shard(rank, world)       # rank r of `world` gets samples r, r + world, ... of each global batch

The global batch (train.batch_size) and its samples are exactly the single-process run's, since the order and
augmentation are pure functions of (seed, epoch, index); each rank takes every `world`-th sample of it (a
length-sorted text batch splits into ranks of similar lengths), so every rank runs the same number of steps.
"""
from __future__ import annotations

import numpy as np

from leankd.errors import ConfigError


class Sharded:
    """Mixin for loaders with `batch_size` and `num_samples`: `local(idx)` is this rank's part of a batch."""
    rank, world = 0, 1

    def shard(self, rank: int, world: int):
        n, b = self.num_samples, self.batch_size
        if b % world:
            raise ConfigError(f"config error: train.batch_size={b} does not split evenly over {world} processes; "
                              f"use a multiple of {world} (it is the global batch, the same as one process's)")
        if 0 < n % b < world:
            raise ConfigError(f"config error: the last batch of {n} training samples holds {n % b}, fewer than the "
                              f"{world} processes; change data.train_limit or train.batch_size")
        self.rank, self.world = rank, world
        return self

    def local(self, idx: np.ndarray) -> np.ndarray:
        return idx[..., self.rank::self.world] if self.world > 1 else idx  # columns of a (k, n) plan too
