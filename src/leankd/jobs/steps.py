"""The steps every job runs, in order, teacher and student alike: prepare -> teacher setup -> teacher cache ->
distiller -> train -> evaluate -> meter -> save. Each reads the job spec (data decided at planning) and fills in
the job's state.

    job = Job(spec)
    for step in STEPS:
        step(job)
    job.result()     # metrics, what was measured, extra, provenance: sent to the parent, which builds the row
"""
from __future__ import annotations

import copy
import gc
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel

from leankd import dist
from leankd.batching import to_device
from leankd.config import ArmConfig, build_config
from leankd.data.images import FORMATS
from leankd.device import resolve_device
from leankd.distill.distiller import Distiller
from leankd.distill.ranking import load_or_rank
from leankd.distill.selection import build_pairs, describe, teacher_indices
from leankd.distill.targets import arm_fields
from leankd.errors import CheckpointError, ConfigError, TrainingError
from leankd.jobs.compiled import compiled_models
from leankd.jobs.measure import count_train_flops, latency_figures
from leankd.jobs.spec import JobSpec
from leankd.jobs.teacher_cache import teacher_cache, teacher_setup
from leankd.metering.energy import EnergyMeter
from leankd.metering.flops import forward_flops
from leankd.metering.ledger import job_costs
from leankd.metering.memory import cuda_peak_mb, current_rss_mb, reset_cuda_peak
from leankd.metering.provenance import now_iso, provenance
from leankd.models.checkpoint import load_weights, state_identity
from leankd.models.registry import count_params, model_size_mb
from leankd.precision import Precision
from leankd.resume import Resume
from leankd.tasks import build_task
from leankd.tasks.metrics import agreement, below_min, chance_level
from leankd.train import build_optimizer, build_scheduler, fit, predict

log = logging.getLogger(__name__)


@dataclass
class Job:
    """One job's state, filled in step by step. `user_model` / `user_teacher`: the caller's modules."""
    spec: JobSpec
    user_model: object = None
    user_teacher: torch.nn.Module | None = None
    world: dist.World = field(default_factory=dist.World.from_env)  # data parallel: this rank, of how many
    # filled by prepare: the resolved config, device, precision, optimiser settings, loss, task, models
    cfg: object = None
    device: torch.device | None = None
    prec: Precision | None = None
    optim: object = None
    arm: ArmConfig | None = None
    task: object = None
    teacher: torch.nn.Module | None = None
    model: torch.nn.Module | None = None
    model_name: str = ""
    baseline_mb: float = 0.0
    started: str = ""
    # filled by build_distiller, train, evaluate, meter, save
    loader: object = None
    distiller: Distiller | None = None
    cached: object = None  # teacher_cache: batch key -> the teacher's logits and attention maps
    teacher_precision: str = "fp32"  # teacher_setup: the teacher's own precision when distilling
    teacher_autocast: object = None
    reference_teacher: torch.nn.Module | None = None  # teacher_setup: the fp32 teacher when job.teacher is int8
    parallel: torch.nn.Module | None = None  # train: the distiller as the loop runs it (DDP-wrapped, data parallel)
    optimizer: torch.optim.Optimizer | None = None
    scheduler: object = None
    ranking: dict | None = None
    metrics: dict = field(default_factory=dict)
    measured: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)

    @property
    def steps(self) -> int | None:
        """A budget-matched arm's steps in all (None: whole epochs)."""
        return self.spec.budget["steps"] if self.spec.budget else None

    @property
    def epochs(self) -> int:
        """Epochs the loop runs: the last one cut short for a budget-matched arm."""
        return -(-self.steps // len(self.loader)) if self.steps else self.optim.epochs

    def result(self) -> dict:
        spec = self.spec
        memory = {"baseline_rss_mb": self.baseline_mb, "cuda_peak_mb": cuda_peak_mb(self.device)}
        if not self.world.main:  # rank 0 reports the job; the launcher adds this rank's memory to its row
            return {"rank": self.world.rank, "costs": memory}
        self.extra.update(method=self.arm.method, arm_config=_recorded_loss(self.arm, self.task.is_regression),
                          layers=spec.init_layers, epochs=spec.budget["epochs"] if spec.budget else self.optim.epochs,
                          precision=self.prec.name,
                          precision_reason=self.prec.reason, device=str(self.device), from_checkpoint=not spec.train,
                          teacher_source=spec.teacher_source, views=spec.views,
                          train_samples=self.loader.num_samples, world_size=self.world.size,
                          **({"budget": spec.budget} if spec.budget else {}))
        return {"metrics": self.metrics, "costs": job_costs(memory=memory, world_size=self.world.size, **self.measured),
                "extra": self.extra,
                "model": self.model_name, "task": self.task.name, "split": self.task.eval_split,
                "ranking": self.ranking, "provenance": {**provenance(str(self.device), self.prec.name),
                                                         "seed": spec.seed, "started_at": self.started,
                                                         "ended_at": now_iso()}}


def _recorded_loss(arm: ArmConfig, regression: bool) -> dict:
    """The arm's loss settings as recorded; a regression task's kd has no temperature (it is an MSE)."""
    out = arm.model_dump(mode="json")
    if regression:
        out["temperature"] = None
    return out


def prepare(job: Job) -> None:
    """Config, device and precision (resolved once), the task, the teacher if the job uses one, the model."""
    spec = job.spec
    job.cfg = build_config(spec.config)
    if job.cfg.threads:
        torch.set_num_threads(job.cfg.threads)
    job.baseline_mb, job.started = current_rss_mb(), now_iso()  # baseline after imports
    job.device = dist.device_for(job.world, resolve_device(job.cfg.device))
    dist.join(job.world, job.device)  # the job's process group (data parallel), left when training ends
    if not job.world.main:  # rank 0 speaks for the job; the others' lines would repeat it
        logging.getLogger("leankd").setLevel(logging.WARNING)
    job.arm = ArmConfig.model_validate(spec.loss)
    job.prec = Precision.create(job.arm.precision or job.cfg.precision, job.device)  # the arm's, if it sets one
    reset_cuda_peak(job.device)
    job.optim = job.cfg.teacher.train if spec.optim == "teacher.train" else job.cfg.train
    job.task = build_task(job.cfg, Path(spec.data_dir), Path(spec.out_dir) / "cache")
    if spec.user_teacher or spec.teacher_path:
        teacher = job.user_teacher if spec.user_teacher else job.task.load(spec.teacher_path)[0]
        job.teacher = teacher.to(job.device, memory_format=FORMATS[job.cfg.speed.memory_format])
    torch.manual_seed(spec.seed)  # model init; data randomness is a pure function of (seed, epoch, index)
    if spec.model == "user":  # an nn.Module (copied per job) or a zero-arg factory
        um = job.user_model
        job.model = copy.deepcopy(um) if isinstance(um, torch.nn.Module) else um()
        job.model_name = type(job.model).__name__
    else:
        job.model = job.task.build_model(spec.model, spec.init_layers, job.teacher)
        job.model_name = spec.model if spec.init_layers is None else f"{spec.model}{spec.init_layers}"
    if spec.weights:
        load_weights(job.model, spec.weights)
    job.model = job.model.to(job.device, memory_format=FORMATS[job.cfg.speed.memory_format])  # 4-d weights only
    if job.optim.freeze_embeddings and hasattr(job.model, "get_input_embeddings"):
        job.model.get_input_embeddings().requires_grad_(False)  # the optimiser then skips it (build_optimizer)


def build_distiller(job: Job) -> None:
    """The loss as a module (labels, teacher logits, layer pairs), its optimiser and LR schedule."""
    spec, arm = job.spec, job.arm
    teacher = job.teacher if spec.distil else None  # else the teacher only initialised the student's layers
    job.loader = job.task.train_loader(job.optim.batch_size, spec.seed, views=spec.views)
    job.loader.shard(job.world.rank, job.world.size)  # this rank's share of each global batch
    job.loader.place(job.device, job.cfg.data.on_device)  # the training set on the GPU once, when it fits
    pairs = []
    if arm.pairs:
        if arm.pairs == "auto":
            ranker = teacher if job.reference_teacher is None else job.reference_teacher  # fp32, never int8
            for turn in (True, False):  # rank 0 ranks (or reuses the stored ranking); the others then read it
                if job.world.main == turn:
                    job.ranking = load_or_rank(job.task, ranker, Path(spec.ranking_dir), job.cfg.ranking, job.prec,
                                               job.device, experiment=job.cfg.name, flops_of=forward_flops(ranker))
                dist.barrier()
        pairs = build_pairs(arm, job.model, teacher, job.ranking["ranked"] if job.ranking else None)
    example = to_device(job.loader.example(None, 2)[0], job.device) if pairs else None
    job.distiller = Distiller(job.model, teacher, arm, job.optim.label_smoothing,
                              regression=job.task.is_regression, pairs=pairs, example=example, cached=job.cached,
                              teacher_autocast=job.teacher_autocast)
    job.reference_teacher = None
    if job.cached is not None:  # the fields this arm reads, copied to the device once when they fit
        job.cached.place(arm_fields(arm, list(dict.fromkeys(p.teacher for p in pairs))), job.cfg.data.on_device)
    job.extra["data_placement"] = [job.loader.where.reason] + ([job.cached.where.reason] if job.cached else [])
    _shard_teacher(job)
    if job.cached is not None:
        job.teacher = None  # training reads the cache: the teacher is not kept in memory
    if pairs:
        log.info("%s layer pairs (student <- teacher): %s", spec.arm, describe(pairs))
        job.extra.update(layer_pairs=[p.to_dict() for p in pairs], layer_map=describe(pairs),
                         teacher_layers=teacher_indices(pairs))
    if job.ranking:
        job.extra["ranking"] = {k: job.ranking.get(k) for k in ("by", "samples", "seconds", "flops", "path", "reused",
                                                                 "experiment")}
    job.optimizer = build_optimizer(job.distiller, job.optim)  # the student's parameters and the adapters
    job.scheduler = build_scheduler(job.optimizer, job.optim, job.steps or job.optim.epochs * len(job.loader))
    log.info("%s: %s, %d train samples, %s, precision %s (%s), device %s", spec.arm, job.model_name,
             job.loader.num_samples, f"{job.epochs} epochs" if not job.steps else
             f"{job.steps} steps ({spec.budget['epochs']:.3g} epochs: {spec.arm} matches {spec.budget['match']}'s "
             f"{spec.budget['by']})", job.prec.name, job.prec.reason, job.device)


def _shard_teacher(job: Job) -> None:
    """teacher.shard in a data parallel job: the online teacher's parameters split over the ranks (FSDP) for
    training; the cache build, the layer ranking and the adapters' dry forward ran before, on the whole teacher."""
    teacher = job.distiller.teacher
    if not (job.cfg.teacher.shard and job.world.size > 1 and teacher is not None):
        return
    if job.teacher_precision == "int8":
        raise ConfigError("config error: teacher.shard=true cannot shard an int8 (quantised) teacher; use "
                          "teacher.precision=same, fp32 or bf16")
    if job.distiller.t_taps is not None:
        job.distiller.t_taps.truncate = False  # a forward stopped midway would leave its FSDP blocks gathered
    dist.shard(teacher, job.device)
    job.extra["teacher_sharded"] = f"FSDP fully_shard over {job.world.size} ranks"


def train(job: Job) -> None:
    """Count the run's FLOPs (nothing changes), then train under the energy meter; hooks removed after."""
    try:
        if not job.spec.train:  # a loaded or given model: evaluated and metered, not trained
            flops = {"train_flops": 0, "teacher_flops": 0}
            stats = {"train_s": 0.0, "teacher_s": 0.0, "epoch_loss": [], "resumed": None}
            energy = {"joules": None, "source": "unavailable"}
        else:
            flops = count_train_flops(job.distiller, job.optimizer, job.prec, job.loader, job.epochs, job.steps)
            ckpt = job.spec.checkpoint
            resume = Resume(ckpt["path"], ckpt["identity"], ckpt["every_s"], ckpt["every_steps"],
                            write=job.world.main) if ckpt else None
            job.parallel = _parallel(job)
            # speed.compile: compiled and warmed up before the meter and fit()'s clock start (extra.compile)
            with compiled_models(job), EnergyMeter(job.device) as meter:
                stats = fit(job.parallel, job.loader, job.optimizer, job.scheduler, job.prec, job.epochs,
                            job.device, tag=job.spec.tag, resume=resume, max_growth=job.cfg.guard.max_loss_growth,
                            max_steps=job.steps)
            energy = {"joules": meter.joules, "source": meter.source}
            if stats["resumed"] and meter.joules is not None:  # the meter saw only the part after the resume
                energy = {"joules": None, "source": "unavailable"}
    finally:
        job.distiller.close()  # every hook removed before evaluation, latency and saving
    flops, stats, energy = _summed(job, flops, stats, energy)
    resumed = stats["resumed"]
    job.measured.update(train={"train_s": stats["train_s"], "teacher_s": stats["teacher_s"],
                               "lost_s": resumed["lost_s"] if resumed else 0.0, "resumed": resumed is not None},
                        flops=flops, energy=energy)
    job.extra.update(epoch_loss=stats["epoch_loss"], teacher_flops=flops["teacher_flops"])
    if resumed:
        job.extra["resumed"] = resumed


def _parallel(job: Job) -> torch.nn.Module:
    """The distiller as the loop runs it: one process, as is; data parallel, wrapped in DDP (the student and the
    adapters: the teacher sits outside the Distiller's module tree, so it is never wrapped, broadcast or synced)."""
    if job.world.size == 1:
        return job.distiller
    ids = [job.device.index] if job.device.type == "cuda" else None
    return DistributedDataParallel(job.distiller, device_ids=ids)


def _summed(job: Job, flops: dict, stats: dict, energy: dict) -> tuple[dict, dict, dict]:
    """Data parallel: the work of every rank (FLOPs, joules) summed, seconds the slowest rank's (each rank's in
    extra.ranks); then the job's process group is left (evaluation and saving run on rank 0 alone)."""
    if job.world.size == 1:
        return flops, stats, energy
    summed = dist.all_reduce({**flops, "joules": energy["joules"]})
    slowest = dist.all_reduce({"train_s": stats["train_s"], "teacher_s": stats["teacher_s"]}, op="max")
    ranks = dist.gather({"train_s": stats["train_s"], "teacher_s": stats["teacher_s"]})
    # DDP's reducer and a sharded teacher hold the group: freed before it is left, never after (a C++ abort)
    job.parallel = job.teacher = job.distiller.s_taps = job.distiller.t_taps = None
    job.distiller.__dict__["teacher"] = None
    gc.collect()
    dist.barrier()
    dist.leave()
    if job.world.main:
        job.extra["ranks"] = {k: [r[k] for r in ranks] for k in ("train_s", "teacher_s")}
    flops = {k: int(summed[k]) for k in flops}
    energy = {"joules": summed["joules"], "source": energy["source"] if summed["joules"] is not None else
              "unavailable"}
    return flops, {**stats, **slowest}, energy


def evaluate(job: Job) -> None:
    """Metrics of the final model on the report split (and any extra dev split), val, teacher agreement."""
    if not job.world.main:  # data parallel: the model is the same on every rank; rank 0 evaluates, meters, saves
        return
    spec, task, bs = job.spec, job.task, job.optim.batch_size
    logits, labels = predict(job.model, task.eval_loader(task.eval_split, bs), job.prec, job.device)
    job.metrics = task.metrics(logits, labels)
    if spec.refuse is not None:  # a teacher at chance level (or below min_metric) is refused: never saved or used
        why = (spec.refuse["chance"] and chance_level(logits, labels, task.is_regression)) or \
            below_min(job.metrics, spec.refuse["min_metric"])
        if why:
            raise TrainingError(f"{spec.tag}: refusing this model as a teacher: {why}; train it longer or with a "
                                "lower learning rate (teacher.train.epochs=..., teacher.train.lr=...)")
    for split in task.extra_eval_splits:  # reported as <metric>_<split>, e.g. accuracy_dev_mismatched
        scores = task.metrics(*predict(job.model, task.eval_loader(split, bs), job.prec, job.device))
        job.metrics.update({f"{k}_{split}": v for k, v in scores.items()})
    val_loader = task.eval_loader("val", bs)
    if val_loader is not None:
        job.extra["val_metrics"] = task.metrics(*predict(job.model, val_loader, job.prec, job.device))
    if spec.eval_logits_out:
        Path(spec.eval_logits_out).parent.mkdir(parents=True, exist_ok=True)
        np.save(spec.eval_logits_out, logits)
    if spec.agreement_with and Path(spec.agreement_with).is_file() and not task.is_regression:
        job.metrics["agreement"] = agreement(logits, _teacher_logits(spec.agreement_with, logits.shape))


def _teacher_logits(path: str, shape: tuple) -> np.ndarray:
    """The stored teacher's eval logits (a teacher stored before leankd checksummed its files may have damaged ones)."""
    try:
        stored = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as err:
        stored, why = None, str(err).splitlines()[0][:80]
    else:
        why = f"shape {stored.shape}, expected {shape}"
    if stored is None or stored.shape != shape:
        raise CheckpointError(f"checkpoint error: '{path}' is not the stored teacher's eval logits ({why}); remove "
                              f"its folder ({Path(path).parent}) and rerun to train the teacher again")
    return stored


def meter(job: Job) -> None:
    """Inference latency at the training batch size and at 1; parameter count and size."""
    if not job.world.main:
        return
    loader = job.task.eval_loader(job.task.eval_split, job.optim.batch_size)
    job.measured["latency"] = latency_figures(job.model, loader, job.optim.batch_size, job.prec, job.device,
                                              job.cfg.metering)
    job.measured["model_facts"] = {"params": count_params(job.model), "size_mb": model_size_mb(job.model)}


def save(job: Job) -> None:
    """The model (safetensors, or a save_pretrained folder for text) with a sidecar naming its weights hash."""
    if not job.world.main:
        return
    spec = job.spec
    meta = {"model": job.model_name, "task": job.task.name, "arm": spec.arm, "seed": spec.seed,
            "layers": spec.init_layers, "config": job.cfg.model_dump(mode="json"), "precision": job.prec.name,
            "metrics": job.metrics, "key": spec.teacher_key, "weights": state_identity(job.model)}
    job.extra["checkpoint"] = str(job.task.save(job.model, Path(spec.save_path), meta))
    job.extra["weights"] = meta["weights"]


STEPS = (prepare, teacher_setup, teacher_cache, build_distiller, train, evaluate, meter, save)
