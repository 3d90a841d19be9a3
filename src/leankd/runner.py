"""One job: train (or load) the teacher, or train one student arm x seed; evaluate, meter, save.

The experiment runs each job in its own child process so that the job's peak memory is its own:

    python -m leankd.runner JOB.json RESULT.json

JOB.json holds {"role": "teacher"|"student", "arm", "seed", "config" (resolved), "data_dir", "out_dir",
"teacher_key"}; RESULT.json receives the metrics, the ledger (less peak memory, which the parent reads
from the child's rusage) and provenance. `run_job(job)` is the same thing in-process.
"""
from __future__ import annotations

import copy
import json
import logging
import sys
from pathlib import Path

import numpy as np
import torch

from leankd.config import ArmConfig, build_config
from leankd.batching import to_device
from leankd.distill.distiller import Distiller
from leankd.distill.ranking import load_or_rank
from leankd.distill.selection import build_pairs, describe, init_layer_indices, teacher_indices
from leankd.metering.energy import EnergyMeter
from leankd.metering.flops import count_flops
from leankd.metering.latency import measure_latency
from leankd.metering.memory import cuda_peak_mb, current_rss_mb, reset_cuda_peak
from leankd.metering.provenance import now_iso, provenance
from leankd.metrics import agreement
from leankd.models.registry import count_params, model_size_mb
from leankd.precision import Precision, resolve_device
from leankd.tasks import build_task
from leankd.teacher import load_weights, teacher_dir
from leankd.train import build_optimizer, build_scheduler, fit, predict

log = logging.getLogger(__name__)


def count_train_flops(distiller, teacher, optimizer, precision, loader, epochs: int) -> dict[str, int]:
    """FLOPs of the whole training run, summed over the real input shapes it will see.

    Every counted op is linear in the batch size, so each distinct shape is counted once, on a real
    2-sample batch, and scaled by the number of samples processed at that shape. Weights, optimiser and
    RNG state are restored after counting."""
    total = teacher_total = 0
    b0 = 2
    device = next(distiller.student.parameters()).device
    for shape, n_samples in loader.samples_per_shape(epochs).items():
        x, y = loader.example(shape, b0)
        x, y = to_device(x, device), y.to(device)

        def step():
            with precision.autocast():
                out = distiller(x, y)
            out["loss"].backward()

        total += n_samples * count_flops(step, distiller.student, *([teacher] if teacher else []),
                                         optimizers=[optimizer]) // b0
        if distiller.needs_teacher:  # the distiller's own teacher forward: truncated when features-only
            with torch.no_grad():
                teacher_total += n_samples * count_flops(lambda: distiller.teacher_outputs(x), teacher) // b0
    distiller.teacher_s = 0.0
    return {"train_flops": total, "teacher_flops": teacher_total}


def latency_figures(model, loader, batch_size: int, precision, device, cfg) -> dict:
    out = {"infer_batch_size": batch_size}
    for bs, suffix in ((batch_size, ""), (1, "_b1")):
        x = to_device(loader.example(None, bs)[0], device)  # real samples (text: padded to their longest)
        lat = measure_latency(model, x, batches=cfg.metering.latency_batches, warmup=cfg.metering.latency_warmup,
                              autocast=precision.autocast)
        out[f"infer_ms_p50{suffix}"], out[f"infer_ms_p90{suffix}"] = lat["p50_ms"], lat["p90_ms"]
    return out


def _user_model(student) -> torch.nn.Module:
    return copy.deepcopy(student) if isinstance(student, torch.nn.Module) else student()


def run_job(job: dict, student=None, teacher_module: torch.nn.Module | None = None) -> dict:
    """Run one job. `student` (an nn.Module, copied per job, or a zero-arg factory) and `teacher_module`
    (a trained nn.Module, evaluated and used as is) replace the models named in the config."""
    cfg = build_config(job["config"])
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    baseline_mb = current_rss_mb()  # after imports: subtracted from the child's peak by the parent
    started = now_iso()
    device = resolve_device(cfg.device)
    prec = Precision.create(cfg.precision, device)
    reset_cuda_peak(device)
    out_dir, role, seed = Path(job["out_dir"]), job["role"], job["seed"]
    task = build_task(cfg, Path(job["data_dir"]), out_dir / "cache")
    tdir = teacher_dir(out_dir, job["teacher_key"])

    teacher = None
    if role == "teacher":
        optim, arm = cfg.teacher.train, ArmConfig(method="plain")
    else:
        optim, arm = cfg.train, cfg.arms[job["arm"]]
        if arm.method != "plain" or arm.layers is not None or cfg.student.layers is not None:
            teacher = teacher_module if teacher_module is not None else task.load(tdir / "model")[0]
            teacher = teacher.to(device)
    torch.manual_seed(seed)  # model init; data randomness is a pure function of (seed, epoch, index)
    user = teacher_module if role == "teacher" else (_user_model(student) if student is not None else None)
    layers = arm.layers if arm.layers is not None else cfg.student.layers
    if layers is not None and role == "student":
        layers = init_layer_indices(teacher, layers)
    model = user if user is not None else task.build_model(role, layers=layers, teacher=teacher)
    model_name = type(user).__name__ if user is not None else (
        cfg.teacher.model if role == "teacher" else
        f"{cfg.teacher.model}{layers}" if layers is not None else cfg.student.model)
    model = model.to(device)
    if optim.freeze_embeddings and hasattr(model, "get_input_embeddings"):
        model.get_input_embeddings().requires_grad_(False)  # the optimiser then skips it (build_optimizer)
    if arm.method == "plain":
        teacher = None  # only used to initialise the student's layers
    train_loader = task.train_loader(optim.batch_size, seed)
    eval_loader = task.eval_loader(task.eval_split, optim.batch_size)
    pairs, ranking = [], None
    if arm.pairs:
        if arm.pairs == "auto":
            ranking = load_or_rank(task, teacher, tdir, cfg.ranking, prec, device)
        pairs = build_pairs(arm, model, teacher, ranking["ranked"] if ranking else None)
    example = to_device(train_loader.example(None, 2)[0], device) if pairs else None
    distiller = Distiller(model, teacher, arm, optim.label_smoothing, regression=task.is_regression,
                          pairs=pairs, example=example)
    if pairs:
        log.info("%s layer pairs (student <- teacher): %s", job["arm"], describe(pairs))
    opt = build_optimizer(distiller, optim)  # the student's parameters and the pairs' adapters
    sched = build_scheduler(opt, optim, optim.epochs * len(train_loader))
    log.info("%s: %s, %d train samples, %d epochs, precision %s (%s), device %s", job["arm"], model_name,
             train_loader.num_samples, optim.epochs, prec.name, prec.reason, device)

    from_ckpt = role == "teacher" and (cfg.teacher.checkpoint or teacher_module is not None)
    flops = {"train_flops": 0, "teacher_flops": 0}
    try:
        if from_ckpt:
            if teacher_module is None:
                load_weights(model, cfg.teacher.checkpoint)
            stats, energy = {"train_s": 0.0, "epoch_loss": []}, {"joules": None, "source": "unavailable"}
        else:
            flops = count_train_flops(distiller, teacher, opt, prec, train_loader, optim.epochs)
            with EnergyMeter(device) as meter:
                stats = fit(distiller, train_loader, opt, sched, prec, optim.epochs, device,
                            tag=f"{job['arm']}/s{seed}")
            energy = {"joules": meter.joules, "source": meter.source}
    finally:
        distiller.close()  # every hook removed before evaluation, latency and saving

    logits, labels = predict(model, eval_loader, prec, device)
    metrics = task.metrics(logits, labels)
    for split in task.extra_eval_splits:  # reported as <metric>_<split>, e.g. accuracy_dev_mismatched
        scores = task.metrics(*predict(model, task.eval_loader(split, optim.batch_size), prec, device))
        metrics.update({f"{k}_{split}": v for k, v in scores.items()})
    extra = {"method": arm.method, "arm_config": arm.model_dump(), "layers": layers, "epochs": optim.epochs,
             "epoch_loss": stats["epoch_loss"], "precision": prec.name, "precision_reason": prec.reason,
             "train_samples": train_loader.num_samples, "teacher_flops": flops["teacher_flops"],
             "from_checkpoint": bool(from_ckpt)}
    if pairs:
        extra.update(layer_pairs=[p.to_dict() for p in pairs], layer_map=describe(pairs),
                     teacher_layers=teacher_indices(pairs))
    if ranking:
        extra["ranking"] = {k: ranking[k] for k in ("by", "samples", "seconds", "path", "reused")}
    val_loader = task.eval_loader("val", optim.batch_size)
    if val_loader is not None:
        extra["val_metrics"] = task.metrics(*predict(model, val_loader, prec, device))
    if role == "teacher":
        tdir.mkdir(parents=True, exist_ok=True)
        np.save(tdir / "eval_logits.npy", logits)
    elif (tdir / "eval_logits.npy").is_file() and not task.is_regression:
        metrics["agreement"] = agreement(logits, np.load(tdir / "eval_logits.npy"))

    ledger = {"train_s": stats["train_s"], "teacher_s": distiller.teacher_s, "cache_share_s": 0.0,
              "total_s": stats["train_s"] + 0.0, "train_flops": flops["train_flops"],
              **latency_figures(model, eval_loader, optim.batch_size, prec, device, cfg),
              "energy_j": energy["joules"], "energy_source": energy["source"],
              "params": count_params(model), "size_mb": model_size_mb(model)}
    meta = {"model": model_name, "task": task.name, "arm": job["arm"], "seed": seed, "layers": layers,
            "config": cfg.model_dump(mode="json"),
            "precision": prec.name, "metrics": metrics}
    if role == "teacher":
        ckpt = task.save(model, tdir / "model", {**meta, "key": job["teacher_key"]})
    else:
        ckpt = task.save(model, out_dir / "students" / cfg.name / f"{job['arm']}-seed{seed}", meta)
    extra["checkpoint"] = str(ckpt)
    return {"metrics": metrics, "ledger": ledger, "extra": extra, "model": model_name, "task": task.name,
            "split": task.eval_split, "baseline_rss_mb": baseline_mb, "cuda_peak_mb": cuda_peak_mb(device),
            "provenance": {**provenance(str(device), prec.name), "seed": seed, "started_at": started,
                           "ended_at": now_iso()}}


def main(argv: list[str] | None = None) -> int:
    from leankd.cli import setup_logging, user_error_types

    argv = sys.argv[1:] if argv is None else argv
    setup_logging()
    job = json.loads(Path(argv[0]).read_text())
    try:
        result = run_job(job)
    except user_error_types() as err:
        log.error("%s", err)
        return 2
    Path(argv[1]).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
