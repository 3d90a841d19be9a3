"""Measured energy of a block of code, or an explicit "unavailable" -- never a guess.

Usage::

    from leankd.metering.energy import EnergyMeter

    with EnergyMeter("cuda:0") as em:
        train()
    log.info("energy: %s J (source=%s)", em.joules, em.source)

Sources, tried in order:
  * "nvml": the GPU's cumulative energy counter (needs `pip install nvidia-ml-py`
    and a GPU that supports it, Volta or newer). Covers the GPU board only.
  * "rapl": Intel/AMD RAPL package counters under /sys/class/powercap, summed
    over top-level packages (CPU sockets, incl. DRAM where the package counts it).
    Usually root-only readable; covers the whole machine's CPUs, not just us.
  * "unavailable": `joules` is None.
"""

from __future__ import annotations

import glob
import logging
import os

import torch

from leankd.device import sync

log = logging.getLogger(__name__)


class _Rapl:
    """Reader of top-level RAPL package domains (``intel-rapl:N``, not ``intel-rapl:N:M``)."""

    def __init__(self, root: str):
        self.domains = []
        for path in sorted(glob.glob(os.path.join(root, "intel-rapl:*"))):
            if os.path.basename(path).count(":") != 1:
                continue  # sub-domain (core, uncore, dram): already inside its package
            if self._read(path, "energy_uj") is not None:
                self.domains.append(path)

    @staticmethod
    def _read(path: str, name: str) -> int | None:
        try:
            with open(os.path.join(path, name)) as f:
                return int(f.read().strip())
        except (OSError, ValueError):
            return None

    def snapshot(self) -> list[int | None]:
        return [self._read(d, "energy_uj") for d in self.domains]

    def joules_between(self, start: list, end: list) -> float | None:
        """Sum of per-domain deltas in joules; a counter that wrapped adds its range once."""
        total_uj = 0
        for d, a, b in zip(self.domains, start, end):
            if a is None or b is None:
                return None
            delta = b - a
            if delta < 0:
                max_range = self._read(d, "max_energy_range_uj")
                if max_range is None:
                    return None
                delta += max_range
            total_uj += delta
        return total_uj / 1e6


def _nvml_handle(device: torch.device):
    """NVML handle for a CUDA device, or None if NVML cannot measure it."""
    try:
        import pynvml
        pynvml.nvmlInit()
        index = device.index if device.index is not None else torch.cuda.current_device()
        # NVML numbers all GPUs; torch numbers only the visible ones, so match by UUID.
        uuid = getattr(torch.cuda.get_device_properties(index), "uuid", None)
        if uuid is not None:
            handle = pynvml.nvmlDeviceGetHandleByUUID(f"GPU-{uuid}")
        elif "CUDA_VISIBLE_DEVICES" not in os.environ:
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        else:
            return None
        pynvml.nvmlDeviceGetTotalEnergyConsumption(handle)  # raises if unsupported
        return handle
    except Exception as exc:  # ImportError, NVMLError_NotSupported, driver missing, ...
        log.debug("NVML energy unavailable: %s", exc)
        return None


class EnergyMeter:
    """Context manager: after the block, `joules` (float or None) and `source`.

    `rapl_root` is where RAPL domains are looked up (tests point it at a fake tree).
    """

    def __init__(self, device="cpu", rapl_root: str = "/sys/class/powercap"):
        self.device = torch.device(device)
        self.rapl_root = rapl_root
        self.joules: float | None = None
        self.source = "unavailable"
        self._nvml = None
        self._rapl: _Rapl | None = None
        self._start = None

    def __enter__(self) -> "EnergyMeter":
        self.joules, self.source = None, "unavailable"
        if self.device.type == "cuda" and torch.cuda.is_available():
            self._nvml = _nvml_handle(self.device)
        if self._nvml is not None:
            import pynvml
            sync(self.device)  # sync point: start after queued work
            self._start = pynvml.nvmlDeviceGetTotalEnergyConsumption(self._nvml)  # mJ
            self.source = "nvml"
            return self
        rapl = _Rapl(self.rapl_root)
        if rapl.domains:
            self._rapl, self._start = rapl, rapl.snapshot()
            self.source = "rapl"
        return self

    def __exit__(self, *exc) -> None:
        if self.source == "nvml":
            import pynvml
            sync(self.device)  # sync point: count the block's kernels
            end = pynvml.nvmlDeviceGetTotalEnergyConsumption(self._nvml)
            self.joules = (end - self._start) / 1000.0
        elif self.source == "rapl":
            self.joules = self._rapl.joules_between(self._start, self._rapl.snapshot())
            if self.joules is None:
                log.warning("RAPL counters became unreadable; energy reported as unavailable")
                self.source = "unavailable"
        return None
