"""What a config's full run would cost, projected from a few training steps measured here (`leankd plan`).

    proj = project_config(cfg, data_dir, steps=5)      # teacher + each arm: FLOPs, seconds, peak memory per step
    print(format_projection(proj, gpu_tflops=312, gpu_util=0.4, gpu_mem_gb=80))

Each job (the teacher, one seed of each arm) is set up by the same steps a real job runs (`jobs/steps.py`:
prepare, teacher setup, distiller and optimiser) on a slice of the real training data, with an untrained teacher
(nothing is trained or stored). Its FLOPs per step are counted as the ledger counts them (`count_train_flops`:
torch's flop counter, the online teacher forward included) over the slice's batches; its seconds per step are
timed over `steps` steps after one warm-up step (batch assembly included, as in `train_s`); its peak memory is
the resident-set growth of the job's own child process (CUDA: `max_memory_allocated`). The full run is
steps per epoch (full training set / batch) x epochs x runs (seeds) of those steps: FLOPs and seconds are
per-step figures times steps, memory does not grow with the run's length. A GPU time is FLOPs / an assumed
throughput: a projection, not a measurement.
"""
from __future__ import annotations

import dataclasses
import gc
import logging
import math
import multiprocessing
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from leankd.config import build_config
from leankd.device import resolve_device
from leankd.experiment.plan import Plan, uses_teacher
from leankd.jobs.measure import count_train_flops
from leankd.jobs.steps import Job, build_distiller, prepare, teacher_setup
from leankd.metering.memory import cuda_peak_mb, current_rss_mb, peak_rss_mb
from leankd.precision import Precision
from leankd.tasks import build_task
from leankd.train import fit

log = logging.getLogger(__name__)


@dataclass
class StepMeasure:
    """One job's training step, measured here."""
    job: str
    model: str
    batch_size: int
    steps: int                  # timed steps (after one warm-up step)
    flops_per_step: int         # mean over the slice's batches, teacher forward included
    teacher_flops_per_step: int  # the online teacher forward's part of it
    s_per_step: float            # wall seconds
    teacher_s_per_step: float
    cpu_s_per_step: float        # this process's CPU seconds (wall minus waiting for a shared core, on CPU)
    peak_mb: float | None
    peak_source: str


@dataclass
class JobProjection:
    """One job's full run: `runs` x `epochs` x `steps_per_epoch` of the measured step."""
    measure: StepMeasure
    steps_per_epoch: int
    epochs: int
    runs: int
    teacher_source: str = ""    # what a real run of the config would do with the teacher
    cache: dict | None = None   # a distilled arm with the teacher cache instead (see `cache_alternative`)

    @property
    def steps(self) -> int:
        return self.steps_per_epoch * self.epochs * self.runs

    @property
    def flops(self) -> int:
        return self.measure.flops_per_step * self.steps

    @property
    def seconds(self) -> float:
        return self.measure.s_per_step * self.steps


@dataclass
class Projection:
    name: str
    train_samples: int          # the full training set
    slice_samples: int
    precision: str
    device: str
    jobs: list[JobProjection] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def flops(self) -> int:
        return sum(j.flops for j in self.jobs)

    @property
    def seconds(self) -> float:
        return sum(j.seconds for j in self.jobs)


def project(measure: StepMeasure, train_samples: int, epochs: int, runs: int, **kw) -> JobProjection:
    """The full run of a measured step: ceil(train_samples / batch) steps per epoch, x epochs x runs."""
    return JobProjection(measure, math.ceil(train_samples / measure.batch_size), epochs, runs, **kw)


def cache_alternative(job: JobProjection, train_samples: int, views: int, num_outputs: int) -> dict:
    """A distilled arm with the teacher cache: one teacher forward over views x samples (built once, shared by the
    jobs that use it), then student-only steps. Per-sample teacher figures are the measured per-step ones / batch."""
    m = job.measure
    passes = views * train_samples
    return {"views": views, "samples": train_samples, "build_flops": m.teacher_flops_per_step * passes // m.batch_size,
            "build_s": m.teacher_s_per_step * passes / m.batch_size,
            "student_flops": (m.flops_per_step - m.teacher_flops_per_step) * job.steps,
            "student_s": (m.s_per_step - m.teacher_s_per_step) * job.steps,
            "logits_bytes": passes * num_outputs * 4}


# ---------------------------------------------------------------------------- measuring here

def slice_config(cfg, steps: int):
    """`cfg` on the first (steps + 1) x batch training samples (every measured batch full), few eval samples."""
    need = max(cfg.train.batch_size, cfg.teacher.train.batch_size) * (steps + 1)
    data = {**cfg.data.model_dump(mode="json"), "train_limit": min(cfg.data.train_limit or need, need),
            "test_limit": min(cfg.data.test_limit or 16, 16), "val_size": 0}
    return build_config({**cfg.model_dump(mode="json"), "data": data})


def _reset_rss_peak() -> bool:
    """Reset this process's resident-set high-water mark (Linux: /proc/self/clear_refs), so the next peak is the
    next job's; False where it cannot be reset."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _timed_steps(job: Job, steps: int) -> tuple[float, float, float]:
    """(seconds, teacher seconds, CPU seconds of this process) per step over `steps` training steps of the real loop
    (`train.fit`: batch assembly, forward, backward, optimiser, schedule, loss checks), after one untimed warm-up
    step (allocations, kernel selection)."""
    def run(n: int) -> dict:
        return fit(job.distiller, job.loader, job.optimizer, job.scheduler, job.prec, -(-n // len(job.loader)),
                   job.device, tag=f"plan/{job.spec.arm}", max_steps=n)

    run(1)
    job.distiller.reset_teacher_time()
    c0 = time.process_time()
    stats = run(steps)
    return stats["train_s"] / steps, stats["teacher_s"] / steps, (time.process_time() - c0) / steps


def measure_isolated(spec, steps: int, teacher_name: str | None) -> StepMeasure:
    """`measure_job` in a fresh child process, as a real job runs: memory freed by an earlier job stays resident in
    this process's heap and would be reused unseen, so an in-process peak after the first job reads too low."""
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(measure_job, (spec, steps, teacher_name))


def measure_job(spec, steps: int, teacher_name: str | None) -> StepMeasure:
    """Set up `spec`'s job (an untrained `teacher_name` teacher when it uses one), count its FLOPs per step, time
    `steps` steps and read its peak memory."""
    gc.collect()
    hwm = _reset_rss_peak()
    base = current_rss_mb()
    job = Job(spec)
    if teacher_name is not None:
        job.user_teacher = build_task(build_config(spec.config), Path(spec.data_dir)).build_model(teacher_name)
    for step in (prepare, teacher_setup, build_distiller):
        step(job)
    try:
        flops = count_train_flops(job.distiller, job.optimizer, job.prec, job.loader, 1)
        n_batches = len(job.loader)
        s, teacher_s, cpu_s = _timed_steps(job, steps)
    finally:
        job.distiller.close()
    cuda = cuda_peak_mb(job.device)
    if cuda is not None:
        peak, source = cuda, "torch.cuda.max_memory_allocated"
    else:
        peak, source = (peak_rss_mb() - base, "peak RSS growth of the job's own process") if hwm else \
            (None, "unavailable")
    return StepMeasure(spec.arm, job.model_name, job.optim.batch_size, steps, flops["train_flops"] // n_batches,
                       flops["teacher_flops"] // n_batches, s, teacher_s, cpu_s, peak, source)


class _ProjectionPlan(Plan):
    """The experiment's plan, with no stored teacher behind it (nothing is trained, stored or resumed)."""

    def row_identity(self, arm: str) -> str | None:
        return None

    def cache_key(self) -> dict:
        return {}  # no stored teacher to key a cache on; the jobs measured here run their teacher online


def project_config(cfg, data_dir: Path, steps: int = 5) -> Projection:
    """Measure the teacher and one seed of every arm of `cfg` here and project the full run of each."""
    small = slice_config(cfg, steps)
    full_task = build_task(cfg, data_dir)
    with tempfile.TemporaryDirectory(prefix="leankd-plan-") as out:
        plan = _ProjectionPlan.make(cfg, data_dir, Path(out), full_task)
        n, here = plan.train_samples, dict(config=small.model_dump(mode="json"), checkpoint=None, cache=None)
        proj = Projection(cfg.name, n, small.data.train_limit, "", "")
        teacher = plan.teacher_job()
        if teacher.train:
            log.info("plan: measuring the teacher (%s), %d steps", cfg.teacher.model, steps)
            m = measure_isolated(dataclasses.replace(teacher, **here), steps, None)
            proj.jobs.append(project(m, n, cfg.teacher.train.epochs, 1, teacher_source="trained once"))
        else:
            proj.notes.append("the teacher is loaded (teacher.checkpoint), not trained: no teacher job")
        for arm in cfg.arms:
            spec = plan.student_job(arm, cfg.seeds[0])
            needs = uses_teacher(cfg, cfg.arms[arm])
            log.info("plan: measuring arm %s, %d steps", arm, steps)
            m = measure_isolated(dataclasses.replace(spec, **here, teacher_path=None, user_teacher=needs), steps,
                            cfg.teacher.model if needs else None)
            job = project(m, n, cfg.train.epochs, len(cfg.seeds), teacher_source=plan.teacher_source(arm)[1])
            if spec.distil:
                job.cache = cache_alternative(job, n, plan.cache_views(), full_task.num_outputs)
            proj.jobs.append(job)
    prec = Precision.create(cfg.precision, resolve_device(cfg.device))
    proj.precision, proj.device = f"{prec.name} ({prec.reason})", str(prec.device)
    return proj


# ---------------------------------------------------------------------------- the printed plan

def _flops(n: float) -> str:
    for unit, scale in (("EFLOP", 1e18), ("PFLOP", 1e15), ("TFLOP", 1e12), ("GFLOP", 1e9)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n / 1e6:.3g} MFLOP"


def _dur(s: float) -> str:
    for unit, scale in (("d", 86400), ("h", 3600), ("min", 60)):
        if s >= scale:
            return f"{s / scale:.3g} {unit}"
    return f"{s:.3g} s" if s >= 1 else f"{s * 1e3:.3g} ms"


def _job_line(j: JobProjection, gpu: float | None) -> str:
    m = j.measure
    peak = f"{m.peak_mb:,.0f}" if m.peak_mb is not None else "unavailable"
    cells = [f"{m.job:<9}", f"{m.model:<15}", f"{m.batch_size:>5}", f"{j.steps_per_epoch:>7,}",
             f"{j.epochs:>3} x {j.runs:<2}", f"{j.steps:>10,}", f"{_flops(m.flops_per_step):>11}",
             f"{m.s_per_step:>8.3g}", f"{m.cpu_s_per_step:>8.3g}", f"{peak:>8}", f"{_flops(j.flops):>11}",
             f"{_dur(j.seconds):>9}"]
    return "  ".join(cells + ([f"{_dur(j.flops / gpu):>9}"] if gpu else []))


def _cache_line(j: JobProjection, gpu: float | None) -> str:
    c, m = j.cache, j.measure
    on_gpu = lambda f: f" ({_dur(f / gpu)} on the GPU)" if gpu else ""  # noqa: E731
    return (f"  {m.job} with the teacher cache instead: build = one teacher forward over {c['views']} view(s) x "
            f"{c['samples']:,} samples = "
            f"{_flops(c['build_flops'])}, {_dur(c['build_s'])} here{on_gpu(c['build_flops'])}, "
            f"{c['logits_bytes'] / 2**20:,.1f} MiB of fp32 logits, paid once by all the jobs that share it; then "
            f"student-only steps: {_flops(c['student_flops'])}, {_dur(c['student_s'])} here"
            f"{on_gpu(c['student_flops'])} (online: {_flops(j.flops)}, {_dur(j.seconds)}). A real run of this "
            f"config: {j.teacher_source}.")


def format_projection(p: Projection, gpu_tflops: float | None = None, gpu_util: float = 1.0,
                      gpu_mem_gb: float | None = None) -> str:
    """The plan as text: one line per job, the total, what the teacher cache would change, and what each
    figure is (measured here, or projected)."""
    gpu = gpu_tflops * gpu_util * 1e12 if gpu_tflops else None
    head = ["job", "model", "batch", "steps/ep", "ep x runs", "steps", "FLOP/step", "s/step", "cpu s", "peak MiB",
            "run FLOPs", "time here"] + (["time GPU"] if gpu else [])
    widths = [9, 15, 5, 7, 8, 10, 11, 8, 8, 8, 11, 9, 9]
    lines = [f"plan for {p.name}: measured on {p.device}, precision {p.precision}, on a {p.slice_samples}-sample "
             f"slice of the training data; the full run trains on {p.train_samples:,} samples",
             "  ".join(f"{h:>{w}}" if i > 1 else f"{h:<{w}}" for i, (h, w) in enumerate(zip(head, widths))),
             *(_job_line(j, gpu) for j in p.jobs),
             f"{'total':<9}  {'':<15}  {'':>5}  {'':>7}  {'':>8}  {sum(j.steps for j in p.jobs):>10,}  {'':>11}  "
             f"{'':>8}  {'':>8}  {'':>8}  {_flops(p.flops):>11}  {_dur(p.seconds):>9}" + (f"  {_dur(p.flops / gpu):>9}"
                                                                                 if gpu else "")]
    lines += [_cache_line(j, gpu) for j in p.jobs if j.cache]
    m0 = p.jobs[0].measure if p.jobs else None
    if m0:
        lines.append(f"FLOP/step: torch.utils.flop_counter as in the ledger, mean over the slice's batches (distilled "
                     f"arms: the online teacher forward included); s/step: mean of {m0.steps} steps after 1 warm-up "
                     "step, measured here (wall; cpu s: this process's CPU seconds, less than wall when the core is "
                     f"shared); peak MiB: {m0.peak_source} over the job, at the config's batch size (it does not grow "
                     "with the run's length). run FLOPs = FLOP/step x steps; time here = s/step x steps.")
    if gpu:
        lines.append(f"time GPU = run FLOPs / {gpu_tflops:g} TFLOP/s x {gpu_util:g} = {gpu / 1e12:.4g} TFLOP/s "
                     "sustained: a projection from an assumed throughput, not a measurement"
                     + (" (the given figure is taken as sustained; a datasheet peak is not)" if gpu_util == 1 else ""))
    if gpu_mem_gb:
        big = [j.measure.job for j in p.jobs if (j.measure.peak_mb or 0) > gpu_mem_gb * 1024]
        lines.append(f"memory vs a {gpu_mem_gb:g} GB GPU: " + (f"over for {', '.join(big)}" if big else "every job "
                     "fits") + " (judged from this machine's peak, at its precision; a GPU's allocation differs)")
    return "\n".join(lines + p.notes)
