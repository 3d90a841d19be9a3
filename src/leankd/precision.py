"""Precision as one small object: `autocast()`, `backward(loss)`, `step(optimizer)`, `state_dict()`.

    prec = Precision.create("auto", torch.device("cpu"))
    with prec.autocast():
        loss = model(x).float().mean()
    prec.backward(loss); prec.step(opt)

fp32 is a no-op, bf16 is autocast without a scaler, fp16 is autocast + GradScaler (CUDA only: on CPU
fp16 autocast runs convolutions ~400x slower, so it is refused when the config is read).
`auto` picks bf16 where the hardware runs it natively (CUDA with bf16, or a CPU with AMX/AVX512-BF16),
else fp16 on older CUDA, else fp32, and says why.
"""
from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import torch

log = logging.getLogger(__name__)
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@lru_cache(maxsize=None)
def cpu_has_native_bf16() -> bool:
    """True when the CPU advertises AMX-BF16 or AVX512-BF16 (bf16 matmuls/convs in hardware)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def check_precision(precision: str, device: str) -> None:
    """Refuse unsupported combinations at config time (raises ValueError with the fix)."""
    dev = resolve_device(device)
    if precision == "fp16" and dev.type == "cpu":
        raise ValueError("precision=fp16 is refused on CPU (fp16 autocast runs convolutions ~400x slower "
                         "there); use precision=bf16 or precision=fp32")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device} but CUDA is not available; use device=cpu or device=auto")


def resolve_precision(precision: str, device: torch.device) -> tuple[str, str]:
    """Map `auto` to a concrete precision; returns (precision, reason)."""
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
        check_precision(precision, str(device))
        name, reason = resolve_precision(precision, device)
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

    def state_dict(self) -> dict:
        return {"name": self.name, "scaler": self.scaler.state_dict() if self.scaler else None}

    def load_state_dict(self, state: dict) -> None:
        if self.scaler and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
