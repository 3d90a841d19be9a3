"""The teacher-cache step of a job: open the cache its spec names, building it first if no valid one exists.

    teacher_cache(job)   # job.cached: batch key -> the teacher's logits for exactly those inputs and views

The build runs the teacher once, in inference mode at its own batch size, over every training sample in
each of the cache's views (the same augmented inputs the students get), stores logits, and records its
seconds and FLOPs in the cache manifest; the ledger charges them to the jobs that share the cache.
"""
from __future__ import annotations

import logging
import time

import numpy as np
import torch

from leankd.batching import logits_of, to_device
from leankd.device import sync
from leankd.distill.cache import TeacherCache
from leankd.metering.flops import count_flops

log = logging.getLogger(__name__)


class CachedLogits:
    """Reads the teacher's logits for a batch key {"index", "view"} from a cache, as float32 on `device`."""

    def __init__(self, reader, device: torch.device):
        self.reader, self.device = reader, device

    def __call__(self, key: dict) -> torch.Tensor:
        values = self.reader.get("logits", key["view"], key["index"])
        return torch.from_numpy(values).to(self.device, non_blocking=True).float()


def _shape_of(x) -> tuple:
    return tuple(x["input_ids"].shape[1:]) if isinstance(x, dict) else tuple(x.shape[1:])


def _build_order(loader) -> np.ndarray:
    """Sample order of the build: by length for text (less padding), else by index."""
    lengths = getattr(loader, "lengths", None)
    return np.argsort(lengths, kind="stable") if lengths is not None else np.arange(loader.num_samples)


def _fill(job, loader, views: int, batch_size: int):
    def fill(writer) -> None:
        teacher, order, shapes = job.teacher, _build_order(loader), {}
        sync(job.device)
        t0 = time.perf_counter()
        with torch.inference_mode():
            for view in range(views):
                for start in range(0, len(order), batch_size):
                    idx = order[start:start + batch_size]
                    x = to_device(loader.inputs(idx, view), job.device)
                    with job.prec.autocast():
                        logits = logits_of(teacher, x)
                    writer.write("logits", view, idx, logits.float().cpu().numpy())
                    shapes[_shape_of(x)] = shapes.get(_shape_of(x), 0) + len(idx)
        sync(job.device)
        seconds = time.perf_counter() - t0
        flops = 0
        for shape, n in shapes.items():  # every op is linear in the batch: count 2 samples per shape
            x2 = to_device(loader.example(shape[0] if len(shape) == 1 else shape, 2)[0], job.device)
            with torch.inference_mode(), job.prec.autocast():
                flops += n * count_flops(lambda: logits_of(teacher, x2)) // 2
        writer.info.update(seconds=seconds, flops=flops, experiment=job.cfg.name, samples=len(order), views=views,
                           batch_size=batch_size, precision=job.prec.name, device=str(job.device))
        log.info("teacher cache: %d samples x %d view(s) in %.1f s, %.3g FLOP", len(order), views, seconds, flops)
    return fill


def teacher_cache(job) -> None:
    """Open (or build, then open) the spec's teacher cache; a job without one runs the teacher online."""
    spec = job.spec
    if spec.cache is None:
        return
    cache = TeacherCache(spec.cache["root"], spec.cache["key"])
    if not cache.is_valid():
        loader = job.task.train_loader(job.optim.batch_size, spec.seed, views=spec.views)
        num_outputs = job.task.num_outputs
        job.teacher.eval()
        cache.build(loader.num_samples, spec.views, {"logits": ((num_outputs,), spec.cache["dtype"])},
                    _fill(job, loader, spec.views, spec.cache["batch_size"]))
    reader = cache.reader()
    job.cached = CachedLogits(reader, job.device)
    info = reader.manifest.get("info", {})
    job.extra["cache"] = {"path": str(cache.path), "build_s": info.get("seconds"), "build_flops": info.get("flops"),
                          "made_for": info.get("experiment"), "users": spec.cache["users"],
                          "views": spec.views, "dtype": spec.cache["dtype"], "bytes": cache.size_bytes()}
    job.teacher = None  # training reads the cache: the teacher is not kept in memory
