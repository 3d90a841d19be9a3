"""Devices: resolving `auto`, the one device-sync helper, and a training-time timer that never syncs per call.

    dev = resolve_device("auto")                 # cuda when available, else cpu
    sync(dev)                                    # a CPU-GPU sync point on CUDA; a no-op elsewhere
    timer = Timer(dev)
    with timer: teacher(x)                       # CUDA: two events recorded, no sync
    timer.seconds                                # read once (e.g. at the end of training): one sync
"""
from __future__ import annotations

import time

import torch

from leankd.errors import ConfigError


def resolve_device(device: str) -> torch.device:
    """'auto' -> cuda when available, else cpu; an unknown or unavailable device is a ConfigError."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ConfigError(f"config error: device: unknown device '{device}'; use auto, cpu or cuda[:N]") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"config error: device={device} but CUDA is not available; use device=cpu or device=auto")
    return dev


def sync(device: torch.device) -> None:
    """Wait for every queued kernel on `device` (a CPU-GPU sync point on CUDA; free on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Timer:
    """Accumulates the time spent inside `with timer:` blocks.

    On CPU each block is timed with perf_counter (work is synchronous). On CUDA each block records a pair
    of events and nothing waits: the elapsed times are summed when `seconds` is read, which synchronises
    once. So timing a part of every step (the teacher forward) adds no sync to the step loop."""

    def __init__(self, device: torch.device):
        self.device, self._cpu_s, self._events, self._t0 = device, 0.0, [], 0.0

    def __enter__(self) -> "Timer":
        if self.device.type == "cuda":
            start = torch.cuda.Event(enable_timing=True)
            start.record()
            self._events.append([start, None])
        else:
            self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            end = torch.cuda.Event(enable_timing=True)
            end.record()
            self._events[-1][1] = end
        else:
            self._cpu_s += time.perf_counter() - self._t0

    @property
    def seconds(self) -> float:
        if self._events:
            sync(self.device)  # one sync, when the figure is read
            self._cpu_s += sum(a.elapsed_time(b) for a, b in self._events) / 1000.0
            self._events = []
        return self._cpu_s

    def reset(self) -> None:
        self._cpu_s, self._events = 0.0, []
