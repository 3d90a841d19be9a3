"""fit() and predict(): the one hot loop, used for the teacher and for every student arm; optimiser and LR schedule.

    stats = fit(distiller, loader, optimizer, scheduler, precision, epochs=3, device=dev, tag="kd/s0")
    logits, labels = predict(model, test_loader, precision, device=dev)

`stats["train_s"]` covers the whole step loop (batch assembly and augmentation, teacher forwards, student
forward/backward/step) with the device synchronised before the clock is read; evaluation is outside it.
The loop never waits for the device per step: on CUDA the NaN check reads a device flag every
`CHECK_EVERY` steps (when the progress bar reads the loss anyway), on CPU every step (free there). Every
`CHECK_EVERY` steps the window's mean loss is also compared with the first window's (divergence stops the job).
With a `resume.Resume`, the loop checkpoints its whole state and a rerun continues from the last checkpoint,
bit-identical to an uninterrupted run (data order and augmentation are pure functions of (seed, epoch, index)).
"""
from __future__ import annotations

import logging
import math
import sys
import time
from itertools import islice

import numpy as np
import torch
from tqdm import tqdm

from leankd import dist, faults
from leankd.batching import logits_of, to_device
from leankd.device import sync
from leankd.errors import TrainingError
from leankd.resume import Resume, rng_state, set_rng_state

log = logging.getLogger(__name__)
CHECK_EVERY = 20  # CUDA: steps between reads of the loss (each read is a CPU-GPU sync point)


def build_optimizer(params_model: torch.nn.Module, cfg) -> torch.optim.Optimizer:
    """SGD/Adam/AdamW; weight decay on weights only (not on BN/LayerNorm gains or biases)."""
    params = [p for p in params_model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.ndim > 1], "weight_decay": cfg.weight_decay},
              {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0}]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0)
    opt_cls = torch.optim.Adam if cfg.optimizer == "adam" else torch.optim.AdamW
    return opt_cls(groups, lr=cfg.lr)


def build_scheduler(optimizer, cfg, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-step LR multiplier: linear warm-up, then linear decay to 0 (onecycle), cosine, or constant."""
    warm = int(cfg.warmup_frac * total_steps)

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        if cfg.schedule == "constant":
            return 1.0
        frac = (step - warm) / max(1, total_steps - warm)
        return max(0.0, 1 - frac) if cfg.schedule == "onecycle" else 0.5 * (1 + math.cos(math.pi * min(frac, 1.0)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _check_finite(bad_step: torch.Tensor, tag: str, epoch: int) -> None:
    """Raise for the first step whose loss was not finite (reading `bad_step` syncs on CUDA)."""
    step = int(bad_step.item())
    if step >= 0:
        raise TrainingError(f"{tag}: loss became nan or inf at epoch {epoch + 1} step {step + 1}; "
                            "lower the learning rate (train.lr=...) or use precision=fp32")


def _loop_state(distiller, optimizer, scheduler, precision, epoch: int, step: int, train_s: float,
                loss_sum: torch.Tensor, n_steps: int, history: list, loss_ref: float | None) -> dict:
    """Everything the loop needs to go on from (epoch, step) exactly as if it had never stopped."""
    return {"epoch": epoch, "step": step, "train_s": train_s, "teacher_s": distiller.teacher_s,
            "model": distiller.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "scaler": precision.scaler.state_dict() if precision.scaler else None, "rng": rng_state(),
            "loss_sum": loss_sum.detach().cpu(), "n_steps": n_steps, "history": list(history), "loss_ref": loss_ref}


def _restore(state: dict, distiller, optimizer, scheduler, precision) -> None:
    distiller.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    if precision.scaler and state["scaler"]:
        precision.scaler.load_state_dict(state["scaler"])
    set_rng_state(state["rng"])


def _start(resume: Resume | None, distiller, optimizer, scheduler, precision, tag: str) -> dict:
    """Where the loop starts: from scratch, or from this job's newest intact checkpoint (restored in place)."""
    state = resume.load() if resume is not None else None
    if state is None:
        return {"epoch": 0, "step": 0, "history": [], "loss_ref": None, "train_s": 0.0, "teacher_s": 0.0,
                "loss_sum": None, "n_steps": 0, "resumed": None}
    _restore(state, distiller, optimizer, scheduler, precision)
    resumed = {"epoch": state["epoch"] + 1, "step": state["step"], "lost_s": resume.lost_s(state),
               "train_s": state["train_s"], "teacher_s": state["teacher_s"]}
    log.info("%s: resuming at epoch %d step %d from %s (%.1f s of training kept, %.1f s lost)", tag,
             resumed["epoch"], resumed["step"], resume.path, resumed["train_s"], resumed["lost_s"])
    return {**state, "resumed": resumed}


def _check_growth(mean: float, ref: float, max_growth: float, tag: str, epoch: int, step: int) -> None:
    if max_growth and mean > max_growth * ref:
        raise TrainingError(f"{tag}: loss diverged at epoch {epoch + 1} step {step + 1} (mean {mean:.4g} over the "
                            f"last {CHECK_EVERY} steps, {mean / ref:.3g}x the first {CHECK_EVERY} steps' {ref:.4g}); "
                            "lower the learning rate (train.lr=...) or raise guard.max_loss_growth")


def _bar(loader, steps: int, first: int, desc: str) -> tqdm:
    """The epoch's progress bar in samples (this rank's share; shown by rank 0 only)."""
    share = getattr(loader, "world", 1)
    return tqdm(total=min(loader.num_samples, steps * loader.batch_size) // share, desc=desc, unit="sample",
                unit_scale=True, leave=False, mininterval=1.0 if sys.stderr.isatty() else 10.0,
                disable=getattr(loader, "rank", 0) > 0,
                initial=min(loader.num_samples, first * loader.batch_size) // share)


def fit(distiller, loader, optimizer, scheduler, precision, epochs: int, device: torch.device,
        tag: str = "", resume: Resume | None = None, max_growth: float = 0.0, max_steps: int | None = None) -> dict:
    """Train `epochs` epochs (the last cut at `max_steps` steps in all, if given); with `resume`, from the job's last
    checkpoint, writing one as `resume` says and at each epoch end. `max_growth` > 0: stop at a diverging loss.
    `distiller` may be wrapped in DistributedDataParallel (its `.module` is the Distiller; `loader` is sharded)."""
    core = getattr(distiller, "module", distiller)  # checkpoints hold the bare Distiller's state, on any world size
    distiller.train()
    every = CHECK_EVERY if device.type == "cuda" else 1
    start = _start(resume, core, optimizer, scheduler, precision, tag)
    history, loss_ref = start["history"], start["loss_ref"]
    sync(device)
    t0 = time.perf_counter() - start["train_s"]

    def snapshot(epoch: int, step: int, loss_sum: torch.Tensor, n_steps: int) -> None:
        sync(device)
        resume.save(_loop_state(core, optimizer, scheduler, precision, epoch, step, time.perf_counter() - t0,
                                loss_sum, n_steps, history, loss_ref))

    for epoch in range(start["epoch"], epochs):
        first = start["step"] if epoch == start["epoch"] else 0
        steps = len(loader) if max_steps is None else min(len(loader), max_steps - epoch * len(loader))
        bar = _bar(loader, steps, first, f"{tag} epoch {epoch + 1}/{epochs}")
        loss_sum, n_steps = (start["loss_sum"].to(device), start["n_steps"]) if first else (torch.zeros(()), 0)
        bad_step = torch.full((), -1, dtype=torch.long, device=device)  # first non-finite step, on device
        window = torch.zeros((), device=device)
        for step, (x, y, key) in enumerate(islice(loader.keyed_epoch(epoch, first), steps - first), start=first):
            x, y = to_device(x, device), y.to(device, non_blocking=True)
            with precision.autocast():
                out = distiller(x, y, key)  # key (sample indices, views): for a cached teacher's lookups
            loss = faults.at(tag, epoch * len(loader) + step + 1, out["loss"])
            bad_step = torch.where((bad_step < 0) & ~torch.isfinite(loss.detach()), step, bad_step)
            if step % every == 0:
                _check_finite(bad_step, tag, epoch)  # before a NaN reaches the weights on CPU
            precision.backward(loss)
            precision.step(optimizer)
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            loss_sum, window, n_steps = loss_sum + loss.detach(), window + loss.detach(), n_steps + 1
            bar.update(len(y))
            if (step + 1) % CHECK_EVERY == 0:  # one read per window: the progress bar and the divergence check
                mean, window = window.item() / CHECK_EVERY, torch.zeros((), device=device)
                loss_ref = mean if loss_ref is None else loss_ref
                bar.set_postfix(loss=f"{mean:.3f}", lr=f"{scheduler.get_last_lr()[0]:.3g}", refresh=False)
                _check_growth(mean, loss_ref, max_growth, tag, epoch, step)
            del out, loss
            if resume is not None:
                resume.beat(time.perf_counter() - t0)
                if step + 1 < steps and resume.due(step + 1):
                    _check_finite(bad_step, tag, epoch)  # never checkpoint a NaN
                    snapshot(epoch, step + 1, loss_sum, n_steps)
        bar.close()
        _check_finite(bad_step, tag, epoch)
        history.append(dist.mean((loss_sum / max(1, n_steps)).item()))  # data parallel: over every rank
        log.info("%s epoch %d/%d: mean loss %.4f, %.0f s elapsed", tag, epoch + 1, epochs, history[-1],
                 time.perf_counter() - t0)
        if resume is not None:  # the last one too: a crash in evaluation or saving never redoes training
            snapshot(epoch + 1, 0, torch.zeros(()), 0)
    sync(device)
    return {"train_s": time.perf_counter() - t0, "epoch_loss": history, "resumed": start["resumed"],
            "teacher_s": start["teacher_s"] + core.teacher_s}


@torch.inference_mode()
def predict(model, loader, precision, device: torch.device) -> tuple[np.ndarray, np.ndarray]:
    """Logits (float32 numpy, N x C) and labels of `model` over `loader` in order, in eval mode."""
    was_training = model.training
    model.eval()
    logits, labels = [], []
    for x, y in loader.epoch(0):
        with precision.autocast():
            out = logits_of(model, to_device(x, device))
        logits.append(out.float().cpu())
        labels.append(y)
    model.train(was_training)
    return torch.cat(logits).numpy(), torch.cat(labels).numpy()
