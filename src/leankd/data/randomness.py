"""Counter-based randomness: every random choice is a pure function of (seed, epoch, sample index).

No generator state is carried from batch to batch, so a run can be resumed at any epoch, split across
processes, or fed cached teacher outputs and still see exactly the same shuffles, crops and flips.

    order = shuffle_order(n, seed=0, epoch=3)          # a permutation of range(n)
    u = uniform(seed=0, epoch=3, index=order[:128], stream=STREAM_CROP_X)   # floats in [0, 1)
"""
from __future__ import annotations

import numpy as np

STREAM_SHUFFLE, STREAM_CROP_X, STREAM_CROP_Y, STREAM_FLIP = 1, 2, 3, 4
_M = 0xFFFFFFFFFFFFFFFF


def _splitmix64(z: np.ndarray) -> np.ndarray:
    z = z.astype(np.uint64, copy=True)
    with np.errstate(over="ignore"):
        z ^= z >> np.uint64(30)
        z *= np.uint64(0xBF58476D1CE4E5B9)
        z ^= z >> np.uint64(27)
        z *= np.uint64(0x94D049BB133111EB)
        z ^= z >> np.uint64(31)
    return z


def hash64(seed: int, epoch: int, index: np.ndarray, stream: int) -> np.ndarray:
    """64-bit hash of (seed, epoch, index, stream); vectorised over `index`."""
    key = _splitmix64(np.array([(seed * 0x9E3779B97F4A7C15 + epoch * 0xD1B54A32D192ED03
                                 + stream * 0x8CB92BA72F3D8DD7) & _M], dtype=np.uint64))[0]
    with np.errstate(over="ignore"):
        return _splitmix64(np.asarray(index, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15) ^ key)


def uniform(seed: int, epoch: int, index: np.ndarray, stream: int) -> np.ndarray:
    """Floats in [0, 1), one per index (53 random bits each)."""
    return (hash64(seed, epoch, index, stream) >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def randint(seed: int, epoch: int, index: np.ndarray, stream: int, high: int) -> np.ndarray:
    return np.minimum((uniform(seed, epoch, index, stream) * high).astype(np.int64), high - 1)


def shuffle_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """A permutation of range(n) that depends only on (seed, epoch)."""
    return np.argsort(hash64(seed, epoch, np.arange(n), STREAM_SHUFFLE), kind="stable")
