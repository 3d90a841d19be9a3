"""speed.compile: torch.compile the student (and an online teacher) in place before training, warmed up so that no
compilation falls inside `train_s`; the seconds it took are reported apart, as extra.compile.compile_s.

    with compiled_models(job) as info:   # info: None when cfg.speed.compile is false; else {"compile_s", ...}
        stats = fit(...)                 # runs the compiled graphs: no compilation inside train_s
    # left: the modules call eagerly again (evaluation, latency and saving see the eager model)

`nn.Module.compile()` compiles a module's call in place, so its parameters, state_dict keys (no `_orig_mod.`),
forward hooks (leankd's taps) and optimiser references stay as they were. Compilation is lazy: it happens on the
first call with each new input shape, so the warm-up runs one forward + backward through the distiller (as fit()
runs it) on the first training batch, and on the epoch's last batch when its shapes differ (a smaller last batch;
text: another padded length, after which dynamo marks the sizes that changed dynamic). Nothing the run depends on
changes: weights, buffers (BatchNorm statistics), grads, optimiser state and RNG are put back (`preserved_state`),
the LR schedule is never stepped, the modules' train/eval modes are restored and the teacher's seconds are zeroed.
Each job starts from an empty dynamo cache (`torch._dynamo.reset()`, in-process runs included). A features-only arm's
teacher stays eager (recorded in extra.compile.eager): its forward is cut short by an exception from a hook.
"""
from __future__ import annotations

import contextlib
import logging
import time
from typing import Iterator

import torch
from torch import nn

from leankd.batching import to_device
from leankd.device import sync
from leankd.metering.flops import preserved_state

log = logging.getLogger(__name__)
BACKEND = "inductor"  # torch.compile's default; tests use "aot_eager" (the same tracing, no code generation: faster)


@contextlib.contextmanager
def compiled_models(job) -> Iterator[dict | None]:
    """speed.compile: the distiller's student and online teacher compiled in place and warmed up on real training
    batches; yields (and stores as job.extra["compile"]) {"compile_s", "compiled", "warmup_batches", "backend"}.
    On exit each module calls as it did before (a caller's own module is handed back as it came)."""
    if not job.cfg.speed.compile:
        yield None
        return
    d = job.distiller
    models, eager = _to_compile(d)
    before = {name: m._compiled_call_impl for name, m in models.items()}  # what nn.Module.compile() replaces
    try:
        sync(job.device)
        t0 = time.perf_counter()
        torch._dynamo.reset()  # an earlier job's graphs in this process (isolate_arms=false) are never reused
        for m in models.values():
            m.compile(backend=BACKEND)
        batches = _warm_up(job, d if job.parallel is None else job.parallel)
        sync(job.device)
        info = {"compile_s": time.perf_counter() - t0, "compiled": list(models), "warmup_batches": batches,
                "backend": getattr(BACKEND, "__name__", BACKEND), **({"eager": eager} if eager else {})}
        log.info("%s: compiled the %s in %.1f s (warm-up on %d batch(es); not in train_s)", job.spec.tag,
                 " and the ".join(models), info["compile_s"], batches)
        job.extra["compile"] = info
        yield info
    finally:
        for name, m in models.items():
            m._compiled_call_impl = before[name]
        torch._dynamo.reset()  # this job's graphs freed


def _to_compile(d) -> tuple[dict[str, nn.Module], dict[str, str]]:
    """({name: module} to compile, {name: why it runs eager}): the student, and the teacher when it runs online."""
    models, eager = {"student": d.student}, {}
    if d.teacher is not None and d.t_taps is not None and d.t_taps.truncate:
        eager["teacher"] = ("features-only arm: its forward stops at an exception after the last tapped layer, which "
                            "dynamo cannot compile (it would fall back to eager every step)")
    elif d.teacher is not None:
        models["teacher"] = d.teacher
    return models, eager


def _shapes(x, y) -> tuple:
    return tuple(t.shape for t in (*(x.values() if isinstance(x, dict) else [x]), y))


def _warm_up(job, runner: nn.Module) -> int:
    """One forward + backward of `runner` (the distiller, or its DDP wrapper) on the first batch of epoch 0, and on
    its last when that one's shapes differ, with everything the run depends on put back; returns the batches run."""
    d, loader = job.distiller, job.loader
    batches = [next(iter(loader.keyed_epoch(0)))]
    if len(loader) > 1:  # `start` skips the batches before the last one without making them
        last = next(iter(loader.keyed_epoch(0, len(loader) - 1)))
        if _shapes(*last[:2]) != _shapes(*batches[0][:2]):
            batches.append(last)
    modes = {m: m.training for m in d.modules()}
    with preserved_state(d, optimizers=[job.optimizer]):  # weights, buffers, grads, optimiser state, RNG
        runner.train()  # as fit() runs it: BatchNorm in training mode (the teacher stays in eval mode)
        for x, y, key in batches:
            x, y = to_device(x, job.device), y.to(job.device)
            with job.prec.autocast():
                out = runner(x, y, key)
            out["loss"].backward()  # unscaled: a GradScaler only multiplies the loss, outside the compiled graphs
            del out
    for m, mode in modes.items():
        m.training = mode
    d.reset_teacher_time()  # warm-up is not training: its teacher seconds are not charged
    return len(batches)
