"""Image batches from uint8 arrays: random crop + flip as a pure function of (seed, view, index), gathered on the
training device.

    loader = VisionLoader(images, labels, batch_size=128, seed=0, augment=True, shuffle=True)
    loader.place(device, "auto")        # the uint8 set moved to the GPU once when it fits (data/placement.py)
    for x, y, key in loader.keyed_epoch(0): ...

Each epoch's plan (order, views, crop offsets, flips: `rnd` hashes of the sample indices) is made on the host in one
vectorised call and copied to the device once; each step slices it there, gathers its images (on the device, or on
the host and copied pinned/non-blocking when the set stays there), crops, flips and normalises on the device. No
step reads anything back from the device. The same functions run on CPU and GPU, so both give the same views; on
CPU they are bit-identical to leankd's earlier per-batch path (tests/test_device_data.py).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from leankd.data import randomness as rnd
from leankd.data.placement import HOST, Placement, place
from leankd.data.shard import Sharded

# CIFAR-10's per-channel statistics, measured on this lossy copy's train split (pixels / 255): the default norm.
MEAN = (0.4913, 0.4821, 0.4465)
STD = (0.2452, 0.2428, 0.2606)
FORMATS = {"channels_last": torch.channels_last, "contiguous": torch.contiguous_format}


def crop_params(seed: int, view, index: np.ndarray, pad: int = 4) -> np.ndarray:
    """(3, len(index)) int64: each sample's crop x offset, y offset and flip (0/1) in `view` (scalar or per sample)."""
    return np.stack([rnd.randint(seed, view, index, rnd.STREAM_CROP_X, 2 * pad + 1),
                     rnd.randint(seed, view, index, rnd.STREAM_CROP_Y, 2 * pad + 1),
                     (rnd.uniform(seed, view, index, rnd.STREAM_FLIP) < 0.5).astype(np.int64)])


def crop_flip(x: torch.Tensor, dx: torch.Tensor, dy: torch.Tensor, flip: torch.Tensor, pad: int = 4) -> torch.Tensor:
    """Crop each image of `x` at (dy, dx) of its `pad`-pixel zero padding, flipped where `flip`: two gathers, on
    whatever device `x` and the offsets are on."""
    b, c, h, w = x.shape
    xp = F.pad(x, (pad, pad, pad, pad))
    rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None].expand(b, c, h, w + 2 * pad)
    cols = torch.arange(w, device=x.device).expand(b, w)
    cols = torch.where(flip.bool()[:, None], cols.flip(1), cols) + dx[:, None]  # flip folded into the gather
    return xp.gather(2, rows).gather(3, cols[:, None, None, :].expand(b, c, h, w))


def augment(x: torch.Tensor, seed: int, epoch: int | np.ndarray, index: np.ndarray, pad: int = 4) -> torch.Tensor:
    """Random crop with `pad`-pixel zero padding + horizontal flip, per sample, from (seed, epoch or view, index)."""
    dx, dy, flip = torch.from_numpy(crop_params(seed, epoch, index, pad)).to(x.device)
    return crop_flip(x, dx, dy, flip, pad)


def pixel_stats(mean: tuple, std: tuple, device: torch.device = torch.device("cpu")) -> tuple[torch.Tensor, ...]:
    """Per-channel (mean, std) of pixels / 255 as (1, 3, 1, 1) tensors in pixel units, on `device`."""
    return tuple(torch.tensor(v).view(1, 3, 1, 1).mul(255).to(device) for v in (mean, std))


def normalise(x_uint8: torch.Tensor, mean: tuple | torch.Tensor = MEAN, std: tuple | torch.Tensor = STD,
              memory_format=torch.channels_last) -> torch.Tensor:
    """uint8 images -> floats normalised per channel by `mean` / `std` (of pixels / 255: a data set's train split;
    or `pixel_stats`' tensors, already on the device: no copy per batch)."""
    if not isinstance(mean, torch.Tensor):
        mean, std = pixel_stats(mean, std, x_uint8.device)
    return ((x_uint8.float() - mean) / std).contiguous(memory_format=memory_format)


class VisionLoader(Sharded):
    """Batches of (normalised float images, labels) from uint8 arrays; no worker processes needed.

    Augmentation is a pure function of (aug_seed, view, sample index); in epoch e sample i gets view
    `view_of(seed, e, i, views)`, so every sample sees each of `views` views once before any repeats and a
    teacher cache of those views holds the teacher's output for exactly the student's input. `norm`: the per-channel
    (mean, std) images are normalised by (CIFAR-10's, or a folder of your own images' train split's)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, batch_size: int, seed: int = 0,
                 augment: bool = False, shuffle: bool = False, views: int = 1, aug_seed: int = 0,
                 norm: tuple = (MEAN, STD), memory_format: str = "channels_last"):
        self.images, self.labels, self.norm = torch.from_numpy(images), torch.from_numpy(labels), norm
        self.batch_size, self.seed, self.augment, self.shuffle = batch_size, seed, augment, shuffle
        self.views, self.aug_seed, self.format = views, aug_seed, FORMATS[memory_format]
        self.where: Placement = HOST
        self._images, self._labels = self.images, self.labels  # where batches are gathered from
        self._stats = pixel_stats(*norm)  # on the device the batches are made on

    def place(self, device: torch.device, on_device: str = "auto") -> "VisionLoader":
        """Batches made on `device`; the uint8 set moved there once if `on_device` (auto: it fits) says so."""
        nbytes = self.images.numel() + 8 * len(self.labels)
        self.where = place(on_device, device, nbytes, f"training set ({self.images.numel() / 1e6:.0f}M uint8)")
        self._images, self._labels = self.where.keep(self.images), self.where.keep(self.labels)
        self._stats = pixel_stats(*self.norm, device)
        return self

    def __len__(self) -> int:
        return -(-len(self.labels) // self.batch_size)

    @property
    def num_samples(self) -> int:
        return len(self.labels)

    def samples_per_shape(self, epochs: int, steps: int | None = None) -> dict:
        """Samples processed per input shape over `epochs`, or over the first `steps` batches (one shape here:
        3 x H x W, 3 x 32 x 32 for CIFAR-10)."""
        n, b = len(self.labels), self.batch_size
        steps = epochs * len(self) if steps is None else steps
        full, last = (len(self.local(np.arange(size))) for size in (b, n - (len(self) - 1) * b))  # this rank's
        per_epoch = (len(self) - 1) * full + last
        rest = steps % len(self)
        return {tuple(self.images.shape[1:]): steps // len(self) * per_epoch + (rest * full if rest else 0)}

    def example(self, shape, batch: int):
        """A real (inputs, labels, key) batch of `batch` samples at `shape` (view 0), for FLOP counting and
        latency; a small slice is tiled up to the batch size."""
        idx = np.arange(batch) % len(self.labels)
        return self.inputs(idx, 0), self.labels[torch.from_numpy(idx)], {"index": idx, "view": np.zeros_like(idx)}

    def _plan(self, idx: np.ndarray, view: np.ndarray) -> np.ndarray:
        """(k, n) int64: sample index, view, and (augmenting) crop x, crop y, flip, one column per sample."""
        rows = [idx, view] + ([*crop_params(self.aug_seed, view, idx)] if self.augment else [])
        return np.stack(rows).astype(np.int64)

    def _batch(self, idx: np.ndarray, plan: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs and labels of samples `idx`, whose plan columns `plan` are on the device."""
        if self.where.resident:
            x, y = self._images[plan[0]], self._labels[plan[0]]
        else:
            pick = torch.from_numpy(idx)
            x, y = self.where.put(self.images[pick]), self.where.put(self.labels[pick])
        if self.augment:
            x = crop_flip(x, plan[2], plan[3], plan[4])
        return normalise(x, *self._stats, memory_format=self.format), y

    def inputs(self, idx: np.ndarray, view: np.ndarray | int) -> torch.Tensor:
        """The normalised inputs of samples `idx` in `view` (a scalar or one view per sample), on the device."""
        plan = self._plan(idx, np.broadcast_to(view, idx.shape))
        return self._batch(idx, self.where.put(torch.from_numpy(plan)))[0]

    def keyed_epoch(self, epoch: int, start: int = 0):
        """(inputs, labels, key) batches from batch `start` on (a resumed epoch skips the batches it already
        trained on, without making them); key = {"index": sample indices, "view": their views this epoch (numpy),
        "on_device": the same two as rows of a tensor on the device}."""
        n = len(self.labels)
        order = rnd.shuffle_order(n, self.seed, epoch) if self.shuffle else np.arange(n)
        plan = self._plan(order, rnd.view_of(self.seed, epoch, order, self.views))
        on_device = self.where.put(torch.from_numpy(plan))  # the epoch's plan: one copy
        for start in range(start * self.batch_size, n, self.batch_size):
            cols = slice(start, start + self.batch_size)
            idx, view, dev = self.local(plan[0, cols]), self.local(plan[1, cols]), self.local(on_device[:, cols])
            x, y = self._batch(idx, dev)
            yield x, y, {"index": idx, "view": view, "on_device": dev[:2]}

    def epoch(self, epoch: int):
        for x, y, _ in self.keyed_epoch(epoch):
            yield x, y
