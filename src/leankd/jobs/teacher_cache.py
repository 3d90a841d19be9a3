"""The teacher side of a job: the teacher's own precision (and what it costs in fidelity), and its output cache.

    teacher_setup(job)   # job.teacher_autocast; a reduced precision's fidelity: extra["teacher_fidelity"]
    teacher_cache(job)   # job.cached: batch key -> the teacher's targets for exactly those inputs and views

The build runs the teacher once, in inference mode at its own batch size, over every training sample in
each of the cache's views (the same augmented inputs the students get), stores logits and the attention maps of
the layers its users distil (`spec.cache["maps"]`, decided at planning), and records its seconds and FLOPs in
the cache manifest; the ledger charges them to the jobs that share the cache.

The cache is not exact in every precision: the build pads its own length-sorted batches (text) where training pads
the training loader's, so bf16 matmuls see other shapes, and int8 quantises activations per batch. After a build
`online_check` measures the difference on the first CHECK_BATCHES training batches (max and mean |online - cached|
logit, top-1 agreement) into the manifest's info["online_check"]; every job reading the cache carries it in
extra["cache"]["online_check"]. fp32 images on CPU: 0.0 (bit for bit).
"""
from __future__ import annotations

import copy
import itertools
import logging
import time
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from torch.ao.quantization import quantize_dynamic

from leankd import dist
from leankd.batching import logits_of, to_device
from leankd.device import sync
from leankd.distill.cache import TeacherCache
from leankd.distill.taps import Taps
from leankd.distill.targets import CachedTeacher, map_field, map_summary
from leankd.errors import CheckpointError
from leankd.metering.flops import count_flops
from leankd.precision import teacher_precision
from leankd.train import predict

log = logging.getLogger(__name__)
CHECK_BATCHES = 8  # training batches the cache is compared on with the online teacher after a build (8 forwards)
NOT_MEASURED_DP = "not measured (data parallel build)"
NOT_MEASURED_OLD = "not measured (cache built by an older leankd)"


def _autocast(name: str, device: torch.device):
    """The teacher's autocast context factory: bf16 runs under bf16 autocast; fp32 and int8 (fp32 activations
    into quantised Linear layers) turn off any outer autocast."""
    if name == "bf16":
        return lambda: torch.autocast(device.type, dtype=torch.bfloat16)
    return lambda: torch.autocast(device.type, enabled=False)


class _Autocast:  # predict() takes a precision-like object with autocast()
    def __init__(self, factory):
        self.autocast = factory


def fidelity(reference, reduced, autocast, loader, device: torch.device) -> dict:
    """Top-1 agreement and mean KL(reference in fp32 || reduced under `autocast`) on `loader` (the same module
    for a reduced precision; a different one, e.g. a quantised copy, works too)."""
    ref, _ = predict(reference, loader, _Autocast(_autocast("fp32", device)), device)
    red, _ = predict(reduced, loader, _Autocast(autocast), device)
    ref_t, red_t = torch.from_numpy(ref), torch.from_numpy(red)
    kl = F.kl_div(F.log_softmax(red_t, -1), F.log_softmax(ref_t, -1), log_target=True, reduction="batchmean")
    return {"agreement": float((ref.argmax(-1) == red.argmax(-1)).mean()), "mean_kl": float(kl),
            "samples": len(ref)}


def quantize_int8(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of `model` whose Linear layers are dynamically quantised to int8 (weights int8, activations
    quantised per batch; CPU). Module names are kept, so layer pairs and hooks resolve as on the original."""
    with warnings.catch_warnings():  # torch.ao.quantization's deprecation notices (it still ships in torch 2.x)
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        return quantize_dynamic(copy.deepcopy(model).eval(), {torch.nn.Linear}, dtype=torch.qint8)


def teacher_setup(job) -> None:
    """The teacher's precision for distilling (teacher.precision; `same` = the experiment's); a reduced one is
    measured against the fp32 teacher on the eval split (agreement, mean KL) and recorded. int8 replaces
    job.teacher by its quantised copy; the fp32 one stays as job.reference_teacher (layer ranking uses it)."""
    if job.teacher is None or not job.spec.distil:
        return
    name = teacher_precision(job.cfg.teacher.precision, job.cfg.precision, job.device)
    job.teacher_precision, job.teacher_autocast = name, _autocast(name, job.device)
    job.extra["teacher_precision"] = name
    reference = job.teacher
    if name == "int8":
        job.reference_teacher, job.teacher = reference, quantize_int8(reference)
    if name != "fp32" and not job.task.is_regression:
        loader = job.task.eval_loader(job.task.eval_split, 4 * job.optim.batch_size)
        job.extra["teacher_fidelity"] = fidelity(reference, job.teacher, job.teacher_autocast, loader, job.device)


def _shape_of(x) -> tuple:
    return tuple(x["input_ids"].shape[1:]) if isinstance(x, dict) else tuple(x.shape[1:])


def _build_order(loader) -> np.ndarray:
    """Sample order of the build: by length for text (less padding), else by index."""
    lengths = getattr(loader, "lengths", None)
    return np.argsort(lengths, kind="stable") if lengths is not None else np.arange(loader.num_samples)


def _run_teacher(job, loader, order: np.ndarray, views: int, batch_size: int, layers, sink) -> dict:
    """The teacher over samples `order` in every view: each output to sink(field, view, index, values);
    returns {"seconds", "flops"} of these forwards."""
    teacher, shapes = job.teacher, {}
    sync(job.device)
    t0 = time.perf_counter()
    with torch.inference_mode(), Taps(teacher, list(layers), summary=map_summary) as taps:
        for view in range(views):
            for start in range(0, len(order), batch_size):
                idx = order[start:start + batch_size]
                x = to_device(loader.inputs(idx, view), job.device)
                with job.teacher_autocast():
                    logits = logits_of(teacher, x)
                sink("logits", view, idx, logits.float().cpu().numpy())
                for name, feats in taps.pop().items():
                    sink(map_field(name), view, idx, feats["summary"][:, 0].cpu().numpy())
                shapes[_shape_of(x)] = shapes.get(_shape_of(x), 0) + len(idx)
    sync(job.device)
    return {"seconds": time.perf_counter() - t0, "flops": _forward_flops(job, loader, shapes)}


def _forward_flops(job, loader, shapes: dict) -> int:
    """FLOPs of the teacher's forwards over `shapes` (input shape -> samples run at it)."""
    flops = 0
    for shape, n in shapes.items():  # every op is linear in the batch: count 2 samples per shape
        x2 = to_device(loader.example(shape[0] if len(shape) == 1 else shape, 2)[0], job.device)
        with torch.inference_mode(), job.teacher_autocast():
            flops += n * count_flops(lambda: logits_of(job.teacher, x2)) // 2
    return flops


def online_check(job, loader, reader, batches: int = CHECK_BATCHES) -> dict:
    """The cache against the online teacher on the first `batches` batches of epoch 0 of the training `loader`,
    each formed as training forms it (its samples, views and padding) and run as the online Distiller runs the
    teacher (job.teacher_autocast, no autograd, then .float()); the cached logits are read for the same keys
    through CachedTeacher. Returns max and mean |online - cached| over the logits, top-1 agreement (None for a
    single output: regression), and the check's own seconds and FLOPs (recorded apart: not charged)."""
    cached, shapes, diffs, agree = CachedTeacher(reader, job.device), {}, [], []
    sync(job.device)
    t0 = time.perf_counter()
    with torch.inference_mode():
        for x, _, key in itertools.islice(loader.keyed_epoch(0), batches):
            x = to_device(x, job.device)
            with job.teacher_autocast():
                online = logits_of(job.teacher, x).float()
            stored = cached(key)[0]
            diffs.append((online - stored).abs().flatten(1))
            agree.append(online.argmax(-1) == stored.argmax(-1))
            shapes[_shape_of(x)] = shapes.get(_shape_of(x), 0) + len(key["index"])
        diff, agree = torch.cat(diffs).cpu(), torch.cat(agree).cpu()  # the one device sync of the check
    sync(job.device)
    seconds = time.perf_counter() - t0
    return {"batches": len(diffs), "samples": len(diff), "max_abs": float(diff.max()), "mean_abs": float(diff.mean()),
            "agreement": float(agree.float().mean()) if diff.shape[1] > 1 else None, "seconds": seconds,
            "flops": _forward_flops(job, loader, shapes)}


def _describe(writer, job, cost: dict, samples: int, views: int, batch_size: int, check) -> None:
    """The manifest's info. Seconds and FLOPs are the teacher passes that build the cache; the online check is a
    measurement of it (like FLOP counting or latency, not charged to any row): its own seconds and FLOPs stay in
    `online_check`, so a one-process and a data parallel build cost the same. `check` is online_check()'s dict, or
    why there is none."""
    writer.info.update(**cost, experiment=job.cfg.name, samples=samples, views=views, batch_size=batch_size,
                       precision=job.teacher_precision, device=str(job.device),
                       world_size=getattr(job, "world", dist.World()).size, online_check=check,
                       flops_note="teacher forwards of the build; the attention maps' channel means are not counted")
    log.info("teacher cache: %d samples x %d view(s) in %.1f s, %.3g FLOP", samples, views, cost["seconds"],
             cost["flops"])
    if isinstance(check, dict):
        log.info("teacher cache vs online teacher on %d training batches: max |Δlogit| %.3g, mean %.3g, "
                 "agreement %s (%d samples, %.1f s)", check["batches"], check["max_abs"], check["mean_abs"],
                 "n/a" if check["agreement"] is None else f"{check['agreement']:.4f}", check["samples"],
                 check["seconds"])


def _fill(job, loader, views: int, batch_size: int, layers=()):
    """The build in one process: logits, and the attention maps of `layers` (captured by hooks), for every sample
    and view, written as they come; then the online check of what was written (`loader` is the training loader)."""
    def fill(writer) -> None:
        cost = _run_teacher(job, loader, _build_order(loader), views, batch_size, layers, writer.write)
        reader = writer.reader()
        try:
            check = online_check(job, loader, reader)
        finally:
            reader.close()
        _describe(writer, job, cost, loader.num_samples, views, batch_size, check)
    return fill


def _build_sharded(job, cache: TeacherCache, loader, fields: dict, views: int, batch_size: int, layers) -> None:
    """The build split over the ranks of a data parallel job: each runs the teacher on its shard of the samples
    (every world-th in build order), rank 0 gathers the outputs and writes the cache; the others wait for it.
    Seconds are the slowest rank's (wall clock of the build), FLOPs the sum over ranks."""
    world = job.world
    parts: list = []
    t0 = time.perf_counter()
    cost = _run_teacher(job, loader, _build_order(loader)[world.rank::world.size], views, batch_size, layers,
                        lambda *part: parts.append(part))
    gathered = dist.gather(parts)
    cost = {"seconds": dist.all_reduce({"s": time.perf_counter() - t0}, op="max")["s"],
            "flops": int(dist.all_reduce({"f": cost["flops"]})["f"])}
    if world.main:
        def fill(writer) -> None:
            for part in (p for rank_parts in gathered for p in rank_parts):
                writer.write(*part)
            _describe(writer, job, cost, loader.num_samples, views, batch_size, NOT_MEASURED_DP)
        cache.build(loader.num_samples, views, fields, fill)
    dist.barrier()  # the cache is complete before any rank reads it


def teacher_cache(job) -> None:
    """Open (or build, then open) the spec's teacher cache; a job without one runs the teacher online. The teacher
    stays loaded until the distiller is built (its layer names resolve the pairs), then it is dropped."""
    spec = job.spec
    if spec.cache is None:
        return
    cache = TeacherCache(spec.cache["root"], spec.cache["key"])
    try:  # validates (hashes every shard) once; data parallel: every rank decides as rank 0 found it
        if job.world.size > 1 and not dist.broadcast(cache.is_valid() if job.world.main else None):
            raise CheckpointError("absent or damaged")
        reader = cache.reader()
    except CheckpointError:  # absent or damaged: build it (under a lock; another process may finish it first)
        loader = job.task.train_loader(job.optim.batch_size, spec.seed, views=spec.views)
        loader.place(job.device, job.cfg.data.on_device)  # views made on the device, as training makes them
        job.teacher.eval()
        dtype, maps = spec.cache["dtype"], spec.cache.get("maps", {})
        fields = {"logits": ((job.task.num_outputs,), dtype),
                  **{map_field(n): (tuple(shape), dtype) for n, shape in maps.items()}}
        if job.world.size > 1:
            _build_sharded(job, cache, loader, fields, spec.views, spec.cache["batch_size"], list(maps))
        else:
            cache.build(loader.num_samples, spec.views, fields, _fill(job, loader, spec.views,
                                                                      spec.cache["batch_size"], list(maps)))
        reader = cache.reader()
    job.cached = CachedTeacher(reader, job.device)
    info = reader.manifest.get("info", {})
    job.extra["cache"] = {"path": str(cache.path), "build_s": info.get("seconds"), "build_flops": info.get("flops"),
                          "made_for": info.get("experiment"), "users": spec.cache["users"],
                          "views": spec.views, "dtype": spec.cache["dtype"], "bytes": cache.size_bytes(),
                          "fields": sorted(reader.manifest["fields"]),
                          "online_check": info.get("online_check", NOT_MEASURED_OLD)}
