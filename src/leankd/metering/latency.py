"""Inference latency of one batch, as p50 / p90 over repeated timed calls.

Usage::

    from leankd.metering.latency import measure_latency

    stats = measure_latency(student, x[:32], batches=50, warmup=5,
                            autocast=lambda: torch.autocast("cpu", dtype=torch.bfloat16))
    # {"p50_ms": 3.1, "p90_ms": 3.4, "n": 50}

Warm-up calls are run and discarded (allocator, kernel selection, lazy init).
On CUDA the device is synchronised before every clock read, so the figure is
the time the work took, not the time it took to enqueue it.
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Callable, ContextManager

import numpy as np
import torch

from leankd.device import sync

log = logging.getLogger(__name__)


def measure_latency(model: torch.nn.Module, example, *, batches: int = 20, warmup: int = 3,
                    autocast: Callable[[], ContextManager] | None = None) -> dict:
    """Time `model(example)` `batches` times in eval/inference mode.

    `example` is the full batch (a tensor, or a dict of tensors passed as keyword arguments), already on
    the model's device. `autocast` is a
    zero-arg callable returning a context manager (a fresh one per call), or
    None for full precision. Returns ``{"p50_ms", "p90_ms", "n"}``; the model's
    train/eval mode is restored afterwards.
    """
    if batches < 1:
        raise ValueError(f"batches must be >= 1, got {batches}")
    make_ctx = autocast if autocast is not None else contextlib.nullcontext
    call = (lambda: model(**example)) if isinstance(example, dict) else (lambda: model(example))
    device = next(iter(example.values())).device if isinstance(example, dict) else example.device
    was_training = model.training
    model.eval()
    times_ms = []
    try:
        with torch.inference_mode():
            for _ in range(warmup):
                with make_ctx():
                    call()
            for _ in range(batches):
                sync(device)  # a CPU-GPU sync point: the clock covers the work, not its enqueueing
                t0 = time.perf_counter()
                with make_ctx():
                    call()
                sync(device)  # a CPU-GPU sync point: the clock covers the work, not its enqueueing
                times_ms.append((time.perf_counter() - t0) * 1000.0)
    finally:
        model.train(was_training)
    arr = np.asarray(times_ms)
    out = {"p50_ms": float(np.percentile(arr, 50)), "p90_ms": float(np.percentile(arr, 90)), "n": len(times_ms)}
    log.debug("measure_latency: %s", out)
    return out
