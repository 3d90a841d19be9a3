"""What a job measures besides training itself: FLOPs of the whole training run and inference latency.

    flops = count_train_flops(distiller, optimizer, precision, loader, epochs)  # nothing it touches changes
    latency = latency_figures(model, eval_loader, batch_size, precision, device, cfg.metering)
"""
from __future__ import annotations

from leankd.batching import to_device
from leankd.metering.flops import count_flops
from leankd.metering.latency import measure_latency


def count_train_flops(distiller, optimizer, precision, loader, epochs: int, steps: int | None = None
                      ) -> dict[str, int]:
    """FLOPs of the whole training run (`epochs`, or its first `steps` batches), summed over the real input shapes
    it will see.

    Every counted op is linear in the batch size, so each distinct shape is counted once, on a real
    2-sample batch, and scaled by the number of samples processed at that shape. The distiller's state
    (student and adapters: weights, buffers, grads), the optimiser and the RNG are restored after
    counting. The teacher is not snapshotted: it is frozen (eval mode, no grad), so its forward changes
    nothing, and a copy of it would inflate the job's peak memory."""
    total = teacher_total = 0
    b0 = 2
    device = next(distiller.student.parameters()).device
    for shape, n_samples in loader.samples_per_shape(epochs, steps).items():
        x, y, key = loader.example(shape, b0)
        x, y = to_device(x, device), y.to(device)

        def step():
            with precision.autocast():
                out = distiller(x, y, key)
            out["loss"].backward()

        total += n_samples * count_flops(step, distiller, optimizers=[optimizer]) // b0
        if distiller.teacher is not None:  # the online teacher forward (truncated when features-only)
            teacher_total += n_samples * count_flops(lambda: distiller.teacher_outputs(x)) // b0
    distiller.reset_teacher_time()  # counting is not training: its teacher seconds are not charged
    return {"train_flops": total, "teacher_flops": teacher_total}


def latency_figures(model, loader, batch_size: int, precision, device, metering) -> dict:
    """p50/p90 ms per batch at the training batch size and at batch 1, on real samples."""
    out = {"infer_batch_size": batch_size}
    for bs, suffix in ((batch_size, ""), (1, "_b1")):
        x = to_device(loader.example(None, bs)[0], device)  # real samples (text: padded to their longest)
        lat = measure_latency(model, x, batches=metering.latency_batches, warmup=metering.latency_warmup,
                              autocast=precision.autocast)
        out[f"infer_ms_p50{suffix}"], out[f"infer_ms_p90{suffix}"] = lat["p50_ms"], lat["p90_ms"]
    return out
