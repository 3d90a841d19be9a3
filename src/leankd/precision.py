"""Precision as one small object: `autocast()`, `backward(loss)`, `step(optimizer)`; resolved once per job.

    prec = Precision.create("auto", torch.device("cpu"))   # -> fp32 or bf16, with prec.reason saying why
    with prec.autocast():
        loss = model(x).float().mean()
    prec.backward(loss); prec.step(opt)

fp32 is a no-op, bf16 is autocast without a scaler, fp16 is autocast + GradScaler (CUDA only: on CPU fp16
autocast runs convolutions ~400x slower, so it is refused). `auto` picks bf16 where the hardware runs it
natively (CUDA with bf16, or a CPU with AMX/AVX512-BF16), else fp16 on older CUDA, else fp32, and says why.
`resolve` is the one place a precision is checked; the config calls it when it is read.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import torch

from leankd.errors import ConfigError

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@lru_cache(maxsize=None)
def cpu_has_native_bf16() -> bool:
    """True when the CPU advertises AMX-BF16 or AVX512-BF16 (bf16 matmuls/convs in hardware)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def resolve(precision: str, device: torch.device) -> tuple[str, str]:
    """(concrete precision, reason) for a requested one on `device`; refuses fp16 on CPU."""
    if precision == "fp16" and device.type == "cpu":
        raise ConfigError("config error: precision=fp16 is refused on CPU (fp16 autocast runs convolutions "
                          "~400x slower there); use precision=bf16 or precision=fp32")
    if precision not in ("auto", "fp32", "bf16", "fp16"):
        raise ConfigError(f"config error: precision '{precision}' is not one of auto, fp32, bf16, fp16")
    if precision != "auto":
        if precision == "bf16" and device.type == "cpu" and not cpu_has_native_bf16():
            return precision, "requested (this CPU has no native bf16: expect it to be slower than fp32)"
        return precision, "requested"
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return "bf16", "auto: CUDA with bf16 support"
        return "fp16", "auto: CUDA without bf16"
    if cpu_has_native_bf16():
        return "bf16", "auto: CPU has AMX/AVX512-BF16"
    return "fp32", "auto: CPU lacks native bf16 (bf16 autocast measured ~2.5x slower than fp32 there)"


@dataclass
class Precision:
    name: str
    device: torch.device
    reason: str = "requested"
    scaler: torch.amp.GradScaler | None = field(default=None, repr=False)

    @classmethod
    def create(cls, precision: str, device: torch.device) -> "Precision":
        name, reason = resolve(precision, device)
        scaler = torch.amp.GradScaler(device.type) if name == "fp16" else None
        return cls(name, device, reason, scaler)

    def autocast(self):
        if self.name == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=_DTYPES[self.name])

    def backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler else loss).backward()

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        if self.scaler:
            self.scaler.step(optimizer)
            self.scaler.update()
        else:
            optimizer.step()


def teacher_precision(setting: str, experiment: str, device: torch.device) -> str:
    """The precision the teacher runs at when distilling: `teacher.precision`, or for `same` the experiment's as
    this device resolves it; never an arm's own (`arms.<name>.precision` sets the student's), so every arm of an
    experiment, cached or online, distils from the same teacher outputs."""
    return setting if setting != "same" else resolve(experiment, device)[0]
