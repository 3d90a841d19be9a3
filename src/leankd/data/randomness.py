"""Counter-based randomness: every random choice is a pure function of (seed, epoch, sample index).

No generator state is carried from batch to batch, so a run can be resumed at any epoch, split across
processes, or fed cached teacher outputs and still see exactly the same shuffles, crops and flips.

    order = shuffle_order(n, seed=0, epoch=3)          # a permutation of range(n)
    u = uniform(seed=0, epoch=3, index=order[:128], stream=STREAM_CROP_X)   # floats in [0, 1)
"""
from __future__ import annotations

import numpy as np

STREAM_SHUFFLE, STREAM_CROP_X, STREAM_CROP_Y, STREAM_FLIP, STREAM_VIEW = 1, 2, 3, 4, 6  # 5: text batch order
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


def hash64(seed: int, epoch: int | np.ndarray, index: np.ndarray, stream: int) -> np.ndarray:
    """64-bit hash of (seed, epoch, index, stream); vectorised over `index` (and `epoch`, e.g. per-sample views)."""
    with np.errstate(over="ignore"):
        key = (np.uint64((seed * 0x9E3779B97F4A7C15 + stream * 0x8CB92BA72F3D8DD7) & _M)
               + np.asarray(epoch, dtype=np.uint64) * np.uint64(0xD1B54A32D192ED03))  # wraps mod 2**64
        key = _splitmix64(np.atleast_1d(key))
        return _splitmix64(np.asarray(index, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15) ^ key)


def uniform(seed: int, epoch: int, index: np.ndarray, stream: int) -> np.ndarray:
    """Floats in [0, 1), one per index (53 random bits each)."""
    return (hash64(seed, epoch, index, stream) >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def randint(seed: int, epoch: int, index: np.ndarray, stream: int, high: int) -> np.ndarray:
    return np.minimum((uniform(seed, epoch, index, stream) * high).astype(np.int64), high - 1)


def view_of(seed: int, epoch: int, index: np.ndarray, views: int) -> np.ndarray:
    """The augmentation view each sample gets in `epoch`: a per-sample rotation of range(views), so a sample
    sees every view once in epochs 0..views-1 before any repeats (the teacher cache holds one output per view)."""
    offset = (hash64(seed, 0, index, STREAM_VIEW) % np.uint64(views)).astype(np.int64)
    return (epoch + offset) % views


def shuffle_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """A permutation of range(n) that depends only on (seed, epoch)."""
    return np.argsort(hash64(seed, epoch, np.arange(n), STREAM_SHUFFLE), kind="stable")
