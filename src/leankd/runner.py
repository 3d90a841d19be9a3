"""One job: train (or load) the teacher, or train one student arm x seed; evaluate, meter, save.

The experiment runs each job in its own child process so that the job's peak memory is its own:

    python -m leankd.runner JOB.json RESULT.json

JOB.json holds {"role": "teacher"|"student", "arm", "seed", "config" (resolved), "data_dir", "out_dir",
"teacher_key"}; RESULT.json receives the metrics, the ledger (less peak memory, which the parent reads
from the child's rusage) and provenance. `run_job(job)` is the same thing in-process.
"""
from __future__ import annotations

import collections
import copy
import json
import logging
import sys
from pathlib import Path

import numpy as np
import torch

from leankd.config import ArmConfig, build_config
from leankd.data.cifar10 import VisionLoader, cifar10_splits, normalise
from leankd.distill.distiller import Distiller
from leankd.metering.energy import EnergyMeter
from leankd.metering.flops import count_flops
from leankd.metering.latency import measure_latency
from leankd.metering.memory import cuda_peak_mb, current_rss_mb, reset_cuda_peak
from leankd.metering.provenance import now_iso, provenance
from leankd.metrics import agreement, classification_metrics
from leankd.models import create_model
from leankd.models.registry import count_params, model_size_mb
from leankd.precision import Precision, resolve_device
from leankd.teacher import load_stored, load_weights, save_model, teacher_dir
from leankd.train import build_optimizer, build_scheduler, fit, predict

log = logging.getLogger(__name__)


def count_train_flops(distiller, teacher, optimizer, precision, loader, epochs: int) -> dict[str, int]:
    """FLOPs of the whole training run: one counted step per distinct batch shape, times its count.

    Counted on real batches with weights, optimiser and RNG state restored afterwards."""
    total = teacher_total = 0
    for bs, count in collections.Counter(loader.batch_sizes()).items():
        x = normalise(loader.images[:bs]).to(next(distiller.student.parameters()).device)
        y = loader.labels[:bs].to(x.device)

        def step():
            with precision.autocast():
                out = distiller(x, y)
            out["loss"].backward()

        total += count * count_flops(step, distiller.student, *( [teacher] if teacher else []), optimizers=[optimizer])
        if distiller.needs_teacher:
            with torch.no_grad():
                teacher_total += count * count_flops(lambda: teacher(x), teacher)
    distiller.teacher_s = 0.0
    return {"train_flops": total * epochs, "teacher_flops": teacher_total * epochs}


def latency_figures(model, images: np.ndarray, batch_size: int, precision, device, cfg) -> dict:
    out = {"infer_batch_size": batch_size}
    for bs, suffix in ((batch_size, ""), (1, "_b1")):
        reps = -(-bs // len(images))  # tile a small test slice up to the batch size
        x = normalise(torch.from_numpy(np.concatenate([images] * reps)[:bs])).to(device)
        lat = measure_latency(model, x, batches=cfg.metering.latency_batches, warmup=cfg.metering.latency_warmup,
                              autocast=precision.autocast)
        out[f"infer_ms_p50{suffix}"], out[f"infer_ms_p90{suffix}"] = lat["p50_ms"], lat["p90_ms"]
    return out


def _user_model(student) -> torch.nn.Module:
    return copy.deepcopy(student) if isinstance(student, torch.nn.Module) else student()


def run_job(job: dict, student=None, teacher_module: torch.nn.Module | None = None) -> dict:
    """Run one job. `student` (an nn.Module, copied per job, or a zero-arg factory) and `teacher_module`
    (a trained nn.Module, evaluated and used as is) replace the registry models named in the config."""
    cfg = build_config(job["config"])
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    baseline_mb = current_rss_mb()  # after imports: subtracted from the child's peak by the parent
    started = now_iso()
    device = resolve_device(cfg.device)
    prec = Precision.create(cfg.precision, device)
    reset_cuda_peak(device)
    splits = cifar10_splits(Path(job["data_dir"]), cfg.data)
    out_dir, role, seed = Path(job["out_dir"]), job["role"], job["seed"]
    tdir = teacher_dir(out_dir, job["teacher_key"])

    if role == "teacher":
        model_name, optim, arm, teacher = cfg.teacher.model, cfg.teacher.train, ArmConfig(method="plain"), None
    else:
        model_name, optim, arm = cfg.student.model, cfg.train, cfg.arms[job["arm"]]
        teacher = None
        if arm.method != "plain":
            teacher = teacher_module.to(device) if teacher_module is not None else \
                load_stored(out_dir, job["teacher_key"], cfg, device)[0]
    torch.manual_seed(seed)  # student/teacher init; data randomness is a pure function of (seed, epoch, index)
    user = teacher_module if role == "teacher" else (_user_model(student) if student is not None else None)
    model = user if user is not None else create_model(model_name, 10)
    model_name = type(user).__name__ if user is not None else model_name
    model = model.to(device, memory_format=torch.channels_last)
    train_loader = VisionLoader(*splits["train"], batch_size=optim.batch_size, seed=seed,
                                augment=cfg.data.augment, shuffle=True)
    test_loader = VisionLoader(*splits["test"], batch_size=optim.batch_size)
    distiller = Distiller(model, teacher, arm, optim.label_smoothing)
    opt = build_optimizer(model, optim)
    sched = build_scheduler(opt, optim, optim.epochs * len(train_loader))
    log.info("%s: %s, %d train images, %d epochs, precision %s (%s), device %s", job["arm"], model_name,
             train_loader.num_samples, optim.epochs, prec.name, prec.reason, device)

    train_only_from_ckpt = role == "teacher" and (cfg.teacher.checkpoint or teacher_module is not None)
    flops = {"train_flops": 0, "teacher_flops": 0}
    if train_only_from_ckpt:
        if teacher_module is None:
            load_weights(model, cfg.teacher.checkpoint)
        stats, energy = {"train_s": 0.0, "epoch_loss": []}, {"joules": None, "source": "unavailable"}
    else:
        flops = count_train_flops(distiller, teacher, opt, prec, train_loader, optim.epochs)
        with EnergyMeter(device) as meter:
            stats = fit(distiller, train_loader, opt, sched, prec, optim.epochs, device, tag=f"{job['arm']}/s{seed}")
        energy = {"joules": meter.joules, "source": meter.source}

    logits, labels = predict(model, test_loader, prec, device)
    metrics = classification_metrics(logits, labels)
    extra = {"method": arm.method, "arm_config": arm.model_dump(), "epochs": optim.epochs,
             "epoch_loss": stats["epoch_loss"], "precision": prec.name, "precision_reason": prec.reason,
             "train_images": train_loader.num_samples, "teacher_flops": flops["teacher_flops"],
             "from_checkpoint": bool(train_only_from_ckpt)}
    if splits["val"] is not None:
        val_loader = VisionLoader(*splits["val"], batch_size=optim.batch_size)
        extra["val_accuracy"] = classification_metrics(*predict(model, val_loader, prec, device))["accuracy"]
    if role == "teacher":
        np.save(tdir / "test_logits.npy" if tdir.exists() else _mkdir(tdir) / "test_logits.npy", logits)
    elif (tdir / "test_logits.npy").is_file():
        metrics["agreement"] = agreement(logits, np.load(tdir / "test_logits.npy"))

    ledger = {"train_s": stats["train_s"], "teacher_s": distiller.teacher_s, "cache_share_s": 0.0,
              "total_s": stats["train_s"] + 0.0, **flops,
              **latency_figures(model, splits["test"][0][:256], optim.batch_size, prec, device, cfg),
              "energy_j": energy["joules"], "energy_source": energy["source"],
              "params": count_params(model), "size_mb": model_size_mb(model)}
    ledger.pop("teacher_flops")
    meta = {"model": model_name, "num_classes": 10, "task": cfg.data.dataset, "arm": job["arm"], "seed": seed,
            "data": cfg.data.model_dump(mode="json"), "precision": prec.name, "metrics": metrics}
    if role == "teacher":
        save_model(model, tdir / "model.safetensors", {**meta, "ledger": ledger, "extra": extra, "key": job["teacher_key"]})
        ckpt = tdir / "model.safetensors"
    else:
        ckpt = out_dir / "students" / cfg.name / f"{job['arm']}-seed{seed}.safetensors"
        save_model(model, ckpt, meta)
    extra["checkpoint"] = str(ckpt)
    gpu_peak = cuda_peak_mb(device)
    return {"metrics": metrics, "ledger": ledger, "extra": extra, "model": model_name,
            "baseline_rss_mb": baseline_mb, "cuda_peak_mb": gpu_peak,
            "provenance": {**provenance(str(device), prec.name), "seed": seed, "started_at": started,
                           "ended_at": now_iso()}}


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


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
