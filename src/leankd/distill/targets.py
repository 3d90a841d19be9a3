"""What a teacher cache holds for the losses, and reading it back: logits, and bounded teacher-side targets of
feature losses.

    fields = arm_fields(arm, teacher_layers=["layer1.2", "layer2.2"])   # ["logits", "at.layer1.2", "at.layer2.2"]
    shapes = map_shapes(teacher, example, ["layer1.2"])                 # {"at.layer1.2": (32, 32)}
    cached = CachedTeacher(reader, device).place(["logits", "at.layer1.2"], on_device="auto")  # tables on the GPU
    logits, feats = cached(key, layers=["layer1.2"])                    # feats {"layer1.2": {"map": (B, 1, H, W)}}

Bounded targets: attention-transfer maps (the channel mean of f^2 at the teacher's resolution, H x W floats per
sample and layer) are the tensor the online loss computes from the teacher's feature map (by the same function, on
the build's batches: bit for bit in fp32 on images, within the difference the build measures for the logits
elsewhere), so a cached arm trains like an online one. Losses that compare whole feature maps or token states
(hint_mse, hint_cosine, attention_relation) would store C x H x W or L x D floats per sample and layer: they are not
cached, and their arms run the teacher online.
"""
from __future__ import annotations

import numpy as np
import torch

from leankd.batching import logits_of
from leankd.data.placement import Placement, place
from leankd.distill.losses import attention_map
from leankd.distill.taps import Taps

CACHEABLE_LOSSES = frozenset({"attention_transfer"})
MAP_PREFIX = "at."


def map_field(layer: str) -> str:
    """The cache field holding teacher layer `layer`'s attention maps."""
    return MAP_PREFIX + layer


def uncached_losses(arm) -> list[str]:
    """The arm's feature losses whose teacher targets a cache does not hold (the arm then runs the teacher online)."""
    return sorted(set(arm.feature_losses) - CACHEABLE_LOSSES) if arm.pairs else []


def arm_fields(arm, teacher_layers: list[str]) -> list[str]:
    """The cache fields an arm reads: logits unless it distils features only, and a map per teacher layer."""
    return (["logits"] if arm.method != "features" else []) + [map_field(n) for n in teacher_layers]


def map_summary(module, layer_input, output: torch.Tensor) -> torch.Tensor:
    """Taps summary: a teacher layer's attention map, computed at hook time (what the cache stores)."""
    return attention_map(output)


@torch.no_grad()
def map_shapes(teacher: torch.nn.Module, example, layers: list[str]) -> dict[str, tuple[int, ...]]:
    """Per-sample shape (H, W) of each layer's cached attention map, from one dry forward on `example`."""
    if not layers:
        return {}
    was = teacher.training
    teacher.eval()
    with Taps(teacher, layers, summary=map_summary) as taps:
        logits_of(teacher, example)
        feats = taps.pop()
    teacher.train(was)
    return {map_field(n): tuple(feats[n]["summary"].shape[2:]) for n in layers}


def field_bytes(fields: dict[str, tuple[int, ...]], samples: int, views: int, itemsize: int) -> int:
    """Disk size of a cache holding `fields` (name -> per-sample shape) for samples x views."""
    return samples * views * itemsize * sum(int(np.prod(shape)) for shape in fields.values())


class CachedTeacher:
    """Reads a batch's teacher targets from a cache, by batch key {"index", "view"}, as float32 on `device`.

    `place(fields)` copies those fields' shards to the device once when they fit (`data.on_device`, the check of
    data/placement.py; on CPU only when `on`: the memory-mapped shards are read from the page cache), as one
    (views x samples, ...) table each; a batch is then a gather there, by the key's `on_device` rows (the loader's,
    already on the device). Otherwise its rows are read from the memory-mapped shards and copied pinned and
    non-blocking. Both give the same values."""

    def __init__(self, reader, device: torch.device):
        self.reader, self.device, self.tables = reader, device, {}
        self.where = Placement(device, False, "teacher cache memory-mapped on the host")

    def place(self, fields: list[str], on_device: str = "auto") -> "CachedTeacher":
        """`fields` (those the arm reads) copied to the device once, as `on_device` and the memory check say."""
        if not fields:
            return self
        layout, what = self.reader.layout, f"teacher cache ({', '.join(fields)})"
        if self.device.type == "cpu":  # the page cache serves the memory maps; `on` loads them (tests, small caches)
            on = on_device == "on"
            self.where = Placement(self.device, on, f"{what} {'loaded (on)' if on else 'memory-mapped'} on the host")
        else:
            nbytes = sum(layout.views * layout.num_samples * int(np.prod(shape)) * dtype.itemsize
                         for shape, dtype in map(layout.field, fields))
            self.where = place(on_device, self.device, nbytes, what)
        if self.where.resident:
            every = np.arange(layout.views * layout.num_samples)
            self.tables = {f: torch.from_numpy(self.reader.get(f, every // layout.num_samples,
                                                               every % layout.num_samples)).to(self.device)
                           for f in fields}
        return self

    def _read(self, field: str, key: dict) -> torch.Tensor:
        if field in self.tables and "on_device" in key:
            index, view = key["on_device"]
            return self.tables[field][view * self.reader.layout.num_samples + index].float()
        values = self.reader.get(field, key["view"], key["index"])
        return self.where.put(torch.from_numpy(values)).float()

    def __call__(self, key: dict, layers=(), logits: bool = True) -> tuple[torch.Tensor | None, dict]:
        """(the teacher's logits, or None when not asked; {layer: {"map": (B, 1, H, W)}} for each layer)."""
        out = self._read("logits", key) if logits else None
        feats = {n: {"map": self._read(map_field(n), key).unsqueeze(1)} for n in dict.fromkeys(layers)}
        return out, feats
