"""Where a job's training data lives: on the training device (moved once, batches gathered there) or on the host
(batches made there and copied each step, from pinned memory, without waiting).

    where = place("auto", device, nbytes=images.nbytes, what="training set (uint8)")
    where.resident      # CPU: True (host memory is the device's); CUDA: True when it fits (auto), or on
    where.put(t)        # a host tensor on the device: pinned + non-blocking on CUDA, as is on CPU
    where.reason        # "training set (uint8) on the device: 147 MB <= 25% of 79.3 GB free"

The check (auto): the data's bytes are at most `FRACTION` of the GPU's free memory at the time the job places it
(`torch.cuda.mem_get_info`, after the models are on the device), so training keeps the rest.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

FRACTION = 0.25  # of the device's free memory that data placed on it may take


@dataclass(frozen=True)
class Placement:
    device: torch.device
    resident: bool
    reason: str

    def put(self, t: torch.Tensor) -> torch.Tensor:
        """A host tensor on the device: pinned and copied without waiting on CUDA; as is on CPU."""
        if self.device.type == "cpu":
            return t
        if self.device.type == "cuda":
            return t.pin_memory().to(self.device, non_blocking=True)
        return t.to(self.device)

    def keep(self, t: torch.Tensor) -> torch.Tensor:
        """A host tensor kept for the whole job: moved once if resident, else left on the host."""
        return t.to(self.device) if self.resident else t


HOST = Placement(torch.device("cpu"), True, "host memory")


def _gb(nbytes: float) -> str:
    return f"{nbytes / 1e9:.1f} GB" if nbytes >= 1e9 else f"{nbytes / 1e6:.0f} MB"


def place(on_device: str, device: torch.device, nbytes: int, what: str) -> Placement:
    """`data.on_device` (auto, on, off) for `nbytes` of `what` on `device`, with the reason stated."""
    if device.type == "cpu":
        return Placement(device, True, f"{what} in host memory, the CPU's own: batches gathered in place")
    if on_device == "off":
        return Placement(device, False, f"{what} on the host (data.on_device=off): batches copied each step, "
                                        "pinned, non-blocking")
    if on_device == "on" or device.type != "cuda":
        return Placement(device, on_device == "on", f"{what} {'on the device' if on_device == 'on' else 'on the host'}"
                                                    f" (data.on_device={on_device})")
    free, _ = torch.cuda.mem_get_info(device)
    fits = nbytes <= FRACTION * free
    return Placement(device, fits, f"{what} {'on the device' if fits else 'on the host'}: {_gb(nbytes)} "
                                   f"{'<=' if fits else '>'} {FRACTION:.0%} of {_gb(free)} free")
